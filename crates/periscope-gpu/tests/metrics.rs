//! The `gpu_*` exposition with the fake source, parsed back from a real registry scrape.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::scrape;
use periscope_gpu::{
    DeviceSample, FakeSource, GpuCollector, GpuError, GpuProcess, GpuSample, ProcessFilter,
    demo_device,
};

const GIB: f64 = (1u64 << 30) as f64;

/// A collector over `source` with process lists and PCIe on, and its sampler (no thread).
fn collector(source: FakeSource) -> (GpuCollector, periscope_gpu::GpuSampler) {
    GpuCollector::builder()
        .processes(true)
        .pcie(true)
        .build(source)
}

#[test]
fn fake_source_exports_every_gpu_family_with_units_and_labels() {
    let (gpu, mut sampler) = collector(FakeSource::demo(2));
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);

    // (sample name, TYPE family name, TYPE, UNIT or "")
    let families = [
        ("gpu_info", "gpu_info", "gauge", ""),
        (
            "gpu_utilization_ratio",
            "gpu_utilization_ratio",
            "gauge",
            "ratio",
        ),
        (
            "gpu_memory_utilization_ratio",
            "gpu_memory_utilization_ratio",
            "gauge",
            "ratio",
        ),
        (
            "gpu_memory_used_bytes",
            "gpu_memory_used_bytes",
            "gauge",
            "bytes",
        ),
        (
            "gpu_memory_total_bytes",
            "gpu_memory_total_bytes",
            "gauge",
            "bytes",
        ),
        (
            "gpu_temperature_celsius",
            "gpu_temperature_celsius",
            "gauge",
            "celsius",
        ),
        (
            "gpu_power_usage_watts",
            "gpu_power_usage_watts",
            "gauge",
            "watts",
        ),
        (
            "gpu_power_limit_watts",
            "gpu_power_limit_watts",
            "gauge",
            "watts",
        ),
        (
            "gpu_energy_joules_total",
            "gpu_energy_joules",
            "counter",
            "joules",
        ),
        ("gpu_sm_clock_hertz", "gpu_sm_clock_hertz", "gauge", "hertz"),
        (
            "gpu_memory_clock_hertz",
            "gpu_memory_clock_hertz",
            "gauge",
            "hertz",
        ),
        ("gpu_ecc_errors_total", "gpu_ecc_errors", "counter", ""),
        (
            "gpu_throttle_reason_active",
            "gpu_throttle_reason_active",
            "gauge",
            "",
        ),
        (
            "gpu_process_memory_used_bytes",
            "gpu_process_memory_used_bytes",
            "gauge",
            "bytes",
        ),
        (
            "gpu_pcie_throughput_bytes_per_second",
            "gpu_pcie_throughput_bytes_per_second",
            "gauge",
            "bytes_per_second",
        ),
        ("gpu_collector_up", "gpu_collector_up", "gauge", ""),
        (
            "gpu_collector_errors_total",
            "gpu_collector_errors",
            "counter",
            "",
        ),
        (
            "gpu_collector_last_success_timestamp_seconds",
            "gpu_collector_last_success_timestamp_seconds",
            "gauge",
            "seconds",
        ),
    ];
    for (sample, family, kind, unit) in families {
        assert!(!exp.named(sample).is_empty(), "{sample} missing in\n{text}");
        assert_eq!(
            exp.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
        assert_eq!(
            exp.units.get(family).map(String::as_str),
            (!unit.is_empty()).then_some(unit),
            "{family}"
        );
    }
    let gpu_families: Vec<_> = exp
        .lines
        .iter()
        .filter(|l| l.name.starts_with("gpu_") && !l.name.starts_with("gpu_collector_"))
        .collect();
    for line in &gpu_families {
        assert!(
            line.labels.contains_key("gpu") && line.labels.contains_key("uuid"),
            "{line:?}"
        );
    }

    let gpu0 = [
        ("gpu", "0"),
        ("uuid", "GPU-00000000-0000-4000-8000-000000000000"),
    ];
    let info = exp
        .find("gpu_info", &[("gpu", "1")])
        .expect("gpu_info for gpu 1");
    assert_eq!(info.value, 1.0);
    assert_eq!(info.labels["name"], "Fake GPU 80GB");
    assert_eq!(info.labels["driver_version"], "550.54.15");
    assert_eq!(info.labels["pci_bus_id"], "00000000:3C:00.0");
    assert_eq!(info.labels.len(), 5, "{:?}", info.labels);

    assert_eq!(exp.value("gpu_utilization_ratio", &gpu0), Some(0.37));
    for line in exp
        .named("gpu_utilization_ratio")
        .into_iter()
        .chain(exp.named("gpu_memory_utilization_ratio"))
    {
        assert!(
            (0.0..=1.0).contains(&line.value),
            "ratio out of range: {line:?}"
        );
    }
    assert_eq!(exp.value("gpu_memory_total_bytes", &gpu0), Some(80.0 * GIB));
    assert_eq!(exp.value("gpu_memory_used_bytes", &gpu0), Some(20.0 * GIB));
    assert_eq!(exp.value("gpu_temperature_celsius", &gpu0), Some(41.0));
    assert_eq!(exp.value("gpu_power_usage_watts", &gpu0), Some(123.5));
    assert_eq!(exp.value("gpu_power_limit_watts", &gpu0), Some(400.0));
    assert_eq!(
        exp.value("gpu_energy_joules_total", &gpu0),
        Some(1_234_567.891)
    );
    assert_eq!(exp.value("gpu_sm_clock_hertz", &gpu0), Some(1.41e9));
    assert_eq!(exp.value("gpu_memory_clock_hertz", &gpu0), Some(1.593e9));
    assert_eq!(
        exp.value(
            "gpu_ecc_errors_total",
            &[("gpu", "0"), ("type", "corrected")]
        ),
        Some(3.0)
    );
    assert_eq!(
        exp.value(
            "gpu_ecc_errors_total",
            &[("gpu", "0"), ("type", "uncorrected")]
        ),
        Some(0.0)
    );
    assert_eq!(
        exp.value(
            "gpu_throttle_reason_active",
            &[("gpu", "0"), ("reason", "sw_power_cap")]
        ),
        Some(1.0)
    );
    assert_eq!(
        exp.value(
            "gpu_throttle_reason_active",
            &[("gpu", "0"), ("reason", "gpu_idle")]
        ),
        Some(0.0)
    );
    assert_eq!(exp.named("gpu_throttle_reason_active").len(), 2 * 9);
    let own = std::process::id().to_string();
    assert_eq!(
        exp.value(
            "gpu_process_memory_used_bytes",
            &[("gpu", "1"), ("pid", own.as_str())]
        ),
        Some(8.0 * GIB)
    );
    assert_eq!(
        exp.value(
            "gpu_pcie_throughput_bytes_per_second",
            &[("gpu", "0"), ("direction", "rx")]
        ),
        Some(4_194_304.0)
    );
    assert_eq!(
        exp.value(
            "gpu_pcie_throughput_bytes_per_second",
            &[("gpu", "0"), ("direction", "tx")]
        ),
        Some(1_048_576.0)
    );

    assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0));
    assert_eq!(exp.value("gpu_collector_errors_total", &[]), Some(0.0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = exp
        .value("gpu_collector_last_success_timestamp_seconds", &[])
        .unwrap();
    assert!(
        (now - last).abs() < 60.0,
        "last success {last} vs now {now}"
    );
    for line in &exp.named("gpu_collector_up") {
        assert!(line.labels.is_empty());
    }
}

#[test]
fn unsupported_values_are_absent_never_sentinels() {
    let bare = DeviceSample {
        id: "0".into(),
        uuid: "GPU-bare".into(),
        name: "Old GPU".into(),
        memory_total_bytes: Some(1 << 30),
        ..DeviceSample::default()
    };
    let (gpu, mut sampler) = collector(FakeSource::new(GpuSample {
        devices: vec![bare],
        ..GpuSample::default()
    }));
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);

    assert_eq!(
        exp.value("gpu_memory_total_bytes", &[("gpu", "0")]),
        Some(GIB)
    );
    for absent in [
        "gpu_utilization",
        "gpu_memory_utilization",
        "gpu_memory_used",
        "gpu_temperature",
        "gpu_power",
        "gpu_energy",
        "gpu_sm_clock",
        "gpu_memory_clock",
        "gpu_ecc",
        "gpu_throttle",
        "gpu_process",
        "gpu_pcie",
    ] {
        assert!(
            !exp.has_family(absent),
            "{absent} should be absent:\n{text}"
        );
        assert!(
            !text.contains(&format!("# TYPE {absent}")),
            "{absent} metadata without samples"
        );
    }
    let info = exp.find("gpu_info", &[("gpu", "0")]).unwrap();
    assert_eq!(info.labels["driver_version"], "");
    assert_eq!(info.labels["pci_bus_id"], "");
    assert!(
        exp.lines
            .iter()
            .all(|l| l.value.is_finite() && l.value >= 0.0),
        "{text}"
    );
}

#[test]
fn failing_source_flips_up_to_zero_and_counts_errors() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let (gpu, mut sampler) = collector(source);

    sampler.sample_once();
    assert!(gpu.is_up());
    let (_, before) = scrape(&gpu);
    let last_success = before.value("gpu_collector_last_success_timestamp_seconds", &[]);

    control.set_failure(Some(GpuError::read("GPU is lost")));
    sampler.sample_once();
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0));
    assert_eq!(exp.value("gpu_collector_errors_total", &[]), Some(2.0));
    assert_eq!(
        exp.value("gpu_collector_last_success_timestamp_seconds", &[]),
        last_success
    );
    assert!(
        !exp.has_family("gpu_info"),
        "no stale device metrics while down:\n{text}"
    );
    assert!(
        !exp.has_family("gpu_memory"),
        "no stale device metrics while down:\n{text}"
    );
    assert!(gpu.snapshot().last_error.unwrap().contains("GPU is lost"));

    control.set_failure(None);
    sampler.sample_once();
    let (_, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0));
    assert_eq!(
        exp.value("gpu_collector_errors_total", &[]),
        Some(2.0),
        "errors is a counter"
    );
    assert!(exp.has_family("gpu_info"));
}

#[test]
fn unreadable_devices_count_as_errors_while_the_rest_is_exported() {
    let mut sample = GpuSample {
        devices: vec![demo_device(0)],
        ..GpuSample::default()
    };
    sample.unreadable_devices = 1;
    let (gpu, mut sampler) = collector(FakeSource::new(sample));
    sampler.sample_once();
    let (_, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0));
    assert_eq!(exp.value("gpu_collector_errors_total", &[]), Some(1.0));
    assert_eq!(exp.named("gpu_info").len(), 1);
}

/// NVML lists a GPU that fell off the bus (Xid 79, `GPU_IS_LOST`) in its device count but
/// cannot open it: the source reports it as unreadable. With no device left to read, that is
/// the "lost GPU" row of docs/gpu.md (`gpu_collector_up 0`, `last_error` set, one warning),
/// not "some devices cannot be read, others can" (`up 1` with no device at all).
#[test]
fn every_device_unreadable_is_down_not_up_with_no_devices() {
    let source = FakeSource::new(GpuSample {
        driver_version: Some("550.54.15".into()),
        devices: Vec::new(),
        unreadable_devices: 1,
    });
    let (gpu, mut sampler) = collector(source);
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0), "{text}");
    assert_eq!(
        exp.value("gpu_collector_errors_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(!gpu.is_up());
    let snapshot = gpu.snapshot();
    assert!(snapshot.devices.is_empty());
    assert!(
        snapshot
            .last_error
            .is_some_and(|e| e.contains("could be read")),
        "the snapshot says why it is down"
    );
}

/// A driver that loads but lists no GPU (`nvidia-smi`: "No devices were found"; a pod given
/// the driver libraries but no GPU) leaves the collector blind: that is down with the reason,
/// retried on the unavailable back-off, as the runbook says; not `up 1` with no device at all.
#[test]
fn a_source_listing_no_gpu_is_down_and_backs_off() {
    let source = FakeSource::new(GpuSample {
        driver_version: Some("550.54.15".into()),
        ..GpuSample::default()
    });
    let control = source.control();
    let (gpu, mut sampler) = GpuCollector::builder()
        .interval(Duration::from_secs(10))
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(3600))
        .build(source);
    assert_eq!(sampler.sample_once(), Duration::from_secs(60));
    assert_eq!(sampler.sample_once(), Duration::from_secs(120));
    let (text, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0), "{text}");
    assert_eq!(
        exp.value("gpu_collector_errors_total", &[]),
        Some(2.0),
        "{text}"
    );
    assert!(
        exp.named("gpu_collector_last_success_timestamp_seconds")
            .is_empty(),
        "{text}"
    );
    let snapshot = gpu.snapshot();
    assert!(!snapshot.up && snapshot.devices.is_empty());
    let last_error = snapshot.last_error.unwrap();
    assert!(last_error.contains("no GPU"), "{last_error}");

    control.set_sample(GpuSample {
        devices: vec![demo_device(0)],
        ..GpuSample::default()
    });
    assert_eq!(sampler.sample_once(), Duration::from_secs(10));
    assert!(gpu.is_up());
}

#[test]
fn unavailable_source_backs_off_and_read_errors_retry_at_the_interval() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let (_gpu, mut sampler) = GpuCollector::builder()
        .interval(Duration::from_secs(10))
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(200))
        .build(source);

    control.set_failure(Some(GpuError::unavailable(
        "libnvidia-ml.so.1: cannot open",
    )));
    let waits: Vec<u64> = (0..4).map(|_| sampler.sample_once().as_secs()).collect();
    assert_eq!(waits, [60, 120, 200, 200]);

    control.set_failure(Some(GpuError::read("transient")));
    assert_eq!(sampler.sample_once(), Duration::from_secs(10));

    control.set_failure(None);
    assert_eq!(sampler.sample_once(), Duration::from_secs(10));
    control.set_failure(Some(GpuError::unavailable("driver unloaded")));
    assert_eq!(
        sampler.sample_once(),
        Duration::from_secs(60),
        "back-off restarts after a success"
    );
}

#[test]
fn expensive_readings_run_at_their_own_cadence_and_are_kept_between() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .pcie(true)
        .expensive_interval(Duration::from_secs(3600))
        .build(source);

    sampler.sample_once();
    let first = control.last_request().unwrap();
    assert!(
        first.processes && first.pcie,
        "the first sample takes the expensive readings"
    );
    sampler.sample_once();
    let second = control.last_request().unwrap();
    assert!(
        !second.processes && !second.pcie,
        "not again before the expensive interval"
    );
    let (text, exp) = scrape(&gpu);
    assert!(
        exp.has_family("gpu_process_memory_used_bytes"),
        "kept between: {text}"
    );
    assert!(
        exp.has_family("gpu_pcie_throughput_bytes_per_second"),
        "kept between: {text}"
    );
}

#[test]
fn expensive_readings_are_taken_again_after_an_outage() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .expensive_interval(Duration::from_secs(3600))
        .build(source);
    sampler.sample_once();
    control.set_failure(Some(GpuError::read("blip")));
    sampler.sample_once();
    control.set_failure(None);
    sampler.sample_once();
    assert!(control.last_request().unwrap().processes);
    assert!(scrape(&gpu).1.has_family("gpu_process_memory_used_bytes"));
}

#[test]
fn expensive_readings_are_off_by_default() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let (gpu, mut sampler) = GpuCollector::builder().build(source);
    sampler.sample_once();
    let request = control.last_request().unwrap();
    assert!(!request.processes && !request.pcie);
    let (_, exp) = scrape(&gpu);
    assert!(!exp.has_family("gpu_process"));
    assert!(!exp.has_family("gpu_pcie"));
    assert!(exp.has_family("gpu_memory_used_bytes"));
}

fn device_with_processes(pids: &[u32]) -> GpuSample {
    let mut device = demo_device(0);
    device.processes = Some(
        pids.iter()
            .map(|&pid| GpuProcess {
                pid,
                used_memory_bytes: Some(u64::from(pid) * 1024),
            })
            .collect(),
    );
    GpuSample {
        devices: vec![device],
        ..GpuSample::default()
    }
}

#[test]
fn only_this_services_processes_are_exported_by_default() {
    let own = std::process::id();
    let other = if own == 1 { 2 } else { 1 };
    let (gpu, mut sampler) = collector(FakeSource::new(device_with_processes(&[own, other])));
    sampler.sample_once();
    let (_, exp) = scrape(&gpu);
    let pids: Vec<_> = exp
        .named("gpu_process_memory_used_bytes")
        .iter()
        .map(|l| l.labels["pid"].clone())
        .collect();
    assert_eq!(pids, [own.to_string()]);

    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .process_filter(ProcessFilter::All)
        .build(FakeSource::new(device_with_processes(&[own, other])));
    sampler.sample_once();
    assert_eq!(
        scrape(&gpu).1.named("gpu_process_memory_used_bytes").len(),
        2
    );

    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .process_filter(ProcessFilter::Custom(std::sync::Arc::new(move |pid| {
            pid == other
        })))
        .build(FakeSource::new(device_with_processes(&[own, other])));
    sampler.sample_once();
    let exp = scrape(&gpu).1;
    assert_eq!(
        exp.named("gpu_process_memory_used_bytes")[0].labels["pid"],
        other.to_string()
    );
}

/// `ProcessFilter::All` on a busy shared node: many processes, each listed twice (as compute
/// and as graphics), are merged into one entry per pid in first-seen order with the larger
/// memory figure. (The merge is linear: 100,000 processes took 12 s a sample when it was not.)
#[test]
fn many_processes_listed_twice_are_merged_one_per_pid() {
    const COUNT: u32 = 20_000;
    let mut sample = device_with_processes(&(1..=COUNT).collect::<Vec<_>>());
    let processes = sample.devices[0].processes.as_mut().unwrap();
    processes.extend((1..=COUNT).rev().map(|pid| GpuProcess {
        pid,
        used_memory_bytes: Some(u64::from(pid) << 20),
    }));
    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .process_filter(ProcessFilter::All)
        .build(FakeSource::new(sample));
    sampler.sample_once();
    let merged = &gpu.snapshot().devices[0].processes;
    assert_eq!(merged.len(), COUNT as usize);
    for (at, process) in merged.iter().enumerate() {
        let pid = u32::try_from(at).unwrap() + 1;
        assert_eq!(process.pid, pid);
        assert_eq!(process.memory_used_mib, Some(u64::from(pid)));
    }
}

#[test]
fn mig_devices_are_exported_beside_their_parent() {
    let mut parent = demo_device(0);
    // A GPU in MIG mode reports no utilisation of its own.
    parent.utilization_ratio = None;
    parent.memory_utilization_ratio = None;
    let mig = DeviceSample {
        id: "0:mig1".into(),
        uuid: "MIG-11111111-2222-3333-4444-555555555555".into(),
        name: "Fake GPU 80GB MIG 1g.10gb".into(),
        mig_parent: Some("0".into()),
        memory_used_bytes: Some(1 << 30),
        memory_total_bytes: Some(10 << 30),
        ..DeviceSample::default()
    };
    let (gpu, mut sampler) = collector(FakeSource::new(GpuSample {
        driver_version: Some("550.54.15".into()),
        devices: vec![parent, mig],
        unreadable_devices: 0,
    }));
    sampler.sample_once();
    let (_, exp) = scrape(&gpu);
    assert_eq!(exp.named("gpu_info").len(), 2);
    assert_eq!(
        exp.value("gpu_memory_total_bytes", &[("gpu", "0:mig1")]),
        Some(10.0 * GIB)
    );
    assert!(exp.find("gpu_utilization_ratio", &[("gpu", "0")]).is_none());
    let snapshot = gpu.snapshot();
    assert_eq!(snapshot.devices[1].mig_parent.as_deref(), Some("0"));
}

#[test]
fn label_values_are_escaped() {
    let mut device = demo_device(0);
    device.name = "Quote \" backslash \\ newline \n end".into();
    let (gpu, mut sampler) = collector(FakeSource::new(GpuSample {
        devices: vec![device.clone()],
        ..GpuSample::default()
    }));
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);
    assert_eq!(
        exp.find("gpu_info", &[]).unwrap().labels["name"],
        device.name,
        "{text}"
    );
}

/// A custom source can return what NVML never does; the scrape must stay valid, since one
/// duplicate series makes a scraper reject the whole `/metrics` page, RED metrics included.
#[test]
fn a_custom_source_cannot_write_duplicate_series_or_a_negative_counter() {
    use periscope_gpu::ThrottleReason;

    let mut first = demo_device(0);
    first.energy_joules_total = Some(-5.0);
    first.throttle_reasons = vec![
        (ThrottleReason::SwPowerCap, true),
        (ThrottleReason::SwPowerCap, false),
    ];
    first.processes = Some(vec![
        GpuProcess {
            pid: std::process::id(),
            used_memory_bytes: Some(1024),
        },
        GpuProcess {
            pid: std::process::id(),
            used_memory_bytes: Some(4096),
        },
    ]);
    let same_id = DeviceSample {
        uuid: "GPU-another".into(),
        ..demo_device(0)
    };
    let same_uuid = DeviceSample {
        id: "7".into(),
        ..demo_device(0)
    };
    let (gpu, mut sampler) = collector(FakeSource::new(GpuSample {
        devices: vec![first, same_id, same_uuid, demo_device(1)],
        ..GpuSample::default()
    }));
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);

    let mut seen = std::collections::HashSet::new();
    for line in &exp.lines {
        assert!(
            seen.insert((line.name.clone(), line.labels.clone())),
            "duplicate series {} {:?} in\n{text}",
            line.name,
            line.labels
        );
    }
    // The first device of each id and uuid is kept; the two others are counted as errors.
    assert_eq!(exp.named("gpu_info").len(), 2, "{text}");
    assert_eq!(exp.value("gpu_collector_errors_total", &[]), Some(2.0));
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0));
    // A negative counter is not available rather than a value that goes backwards.
    assert_eq!(
        exp.value("gpu_energy_joules_total", &[("gpu", "0")]),
        None,
        "{text}"
    );
    // The first reading of a repeated reason wins; a repeated pid keeps its largest figure,
    // as the NVML source merges compute and graphics processes.
    assert_eq!(
        exp.value(
            "gpu_throttle_reason_active",
            &[("gpu", "0"), ("reason", "sw_power_cap")]
        ),
        Some(1.0)
    );
    assert_eq!(
        exp.value("gpu_process_memory_used_bytes", &[("gpu", "0")]),
        Some(4096.0)
    );
    assert_eq!(gpu.snapshot().devices.len(), 2);
}

/// NVML always gives a UUID; a custom source may not know it (`""`, as docs/gpu.md allows for
/// unknown identity labels). Devices told apart by their `gpu` id are distinct devices, not
/// repeats, and each keeps its own process list between expensive readings.
#[test]
fn devices_without_a_uuid_are_told_apart_by_their_gpu_id() {
    let own = std::process::id();
    let device = |index: u32, bytes: u64| DeviceSample {
        uuid: String::new(),
        processes: Some(vec![GpuProcess {
            pid: own,
            used_memory_bytes: Some(bytes),
        }]),
        ..demo_device(index)
    };
    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .expensive_interval(Duration::from_secs(3600))
        .build(FakeSource::new(GpuSample {
            devices: vec![device(0, 1024), device(1, 2048)],
            ..GpuSample::default()
        }));
    sampler.sample_once();
    sampler.sample_once(); // processes not read again: carried over from the first
    let (text, exp) = scrape(&gpu);
    assert_eq!(exp.named("gpu_info").len(), 2, "{text}");
    assert_eq!(
        exp.value("gpu_collector_errors_total", &[]),
        Some(0.0),
        "{text}"
    );
    for (gpu_id, bytes) in [("0", 1024.0), ("1", 2048.0)] {
        assert_eq!(
            exp.value("gpu_process_memory_used_bytes", &[("gpu", gpu_id)]),
            Some(bytes),
            "{text}"
        );
    }
}

/// Only kept devices count as seen: a device dropped as a repeat of an earlier `gpu` id does
/// not make a later device with another id a repeat as well.
#[test]
fn a_dropped_repeat_does_not_drop_a_later_device() {
    let first = demo_device(0);
    let repeat = DeviceSample {
        uuid: "GPU-repeat".into(),
        ..demo_device(0)
    };
    let later = DeviceSample {
        id: "1".into(),
        uuid: "GPU-repeat".into(),
        ..demo_device(0)
    };
    let (gpu, mut sampler) = collector(FakeSource::new(GpuSample {
        devices: vec![first, repeat, later],
        ..GpuSample::default()
    }));
    sampler.sample_once();
    let (text, exp) = scrape(&gpu);
    let kept: Vec<_> = exp
        .named("gpu_info")
        .iter()
        .map(|l| (l.labels["gpu"].clone(), l.labels["uuid"].clone()))
        .collect();
    assert_eq!(
        kept,
        [
            ("0".to_owned(), demo_device(0).uuid),
            ("1".to_owned(), "GPU-repeat".to_owned())
        ],
        "{text}"
    );
    assert_eq!(exp.value("gpu_collector_errors_total", &[]), Some(1.0));
}

#[test]
fn background_thread_samples_and_scrapes_read_the_last_sample() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let gpu = GpuCollector::builder()
        .interval(Duration::from_secs(3600))
        .start(source)
        .expect("spawn");
    assert!(gpu.refresh(Duration::from_secs(10)), "a sample completes");
    let calls = control.calls();
    assert!(calls >= 1);

    // Scrapes and snapshots never call the source.
    for _ in 0..5 {
        let (_, exp) = scrape(&gpu);
        assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0));
        assert_eq!(gpu.snapshot().devices.len(), 1);
    }
    assert_eq!(control.calls(), calls);

    assert!(gpu.refresh(Duration::from_secs(10)));
    assert_eq!(control.calls(), calls + 1);

    gpu.shutdown();
    assert!(
        !gpu.refresh(Duration::from_millis(300)),
        "no sampling after shutdown"
    );
    assert_eq!(control.calls(), calls + 1);
}

/// After `shutdown` no sample can come: `refresh` says so at once instead of blocking its
/// caller for the whole timeout.
#[test]
fn refresh_after_shutdown_returns_at_once() {
    let gpu = GpuCollector::builder()
        .interval(Duration::from_secs(3600))
        .start(FakeSource::demo(1))
        .expect("spawn");
    assert!(gpu.refresh(Duration::from_secs(10)));
    gpu.shutdown();
    let started = std::time::Instant::now();
    assert!(!gpu.refresh(Duration::from_secs(30)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refresh waited {:?} for a sampler that had stopped",
        started.elapsed()
    );
}

#[test]
fn dropping_the_last_handle_stops_the_thread() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let gpu = GpuCollector::builder()
        .interval(Duration::from_millis(100))
        .start(source)
        .expect("spawn");
    assert!(gpu.refresh(Duration::from_secs(10)));
    drop(gpu);
    // Time for the thread to see it (a loaded machine may take a while), then no more calls.
    std::thread::sleep(Duration::from_secs(1));
    let calls = control.calls();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(control.calls(), calls, "sampling stopped");
}

#[test]
fn collector_works_under_a_prefixed_sub_registry() {
    let (gpu, mut sampler) = collector(FakeSource::demo(1));
    sampler.sample_once();
    let mut registry = prometheus_client::registry::Registry::default();
    registry
        .sub_registry_with_prefix("node")
        .register_collector(Box::new(gpu));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let exp = common::parse(&text);
    assert_eq!(exp.value("node_gpu_collector_up", &[]), Some(1.0));
    assert!(exp.has_family("node_gpu_memory_used_bytes"));
}

/// A source that panics on every sample.
struct Panicking;

impl periscope_gpu::GpuSource for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }

    fn sample(&mut self, _: periscope_gpu::SampleRequest) -> Result<GpuSample, GpuError> {
        panic!("driver bug");
    }
}

#[test]
fn a_panicking_source_is_a_failed_sample_and_the_thread_keeps_running() {
    let gpu = GpuCollector::builder()
        .interval(Duration::from_secs(3600))
        .start(Panicking)
        .expect("spawn");
    assert!(gpu.refresh(Duration::from_secs(10)));
    assert!(
        gpu.refresh(Duration::from_secs(10)),
        "the sampler survived the panic"
    );
    let (_, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0));
    assert!(exp.value("gpu_collector_errors_total", &[]).unwrap() >= 2.0);
    assert!(gpu.snapshot().last_error.unwrap().contains("panicked"));
}

/// A custom process filter that panics fails the sample like a panicking source: the
/// thread survives, and the last good sample is not left behind as `up 1`.
#[test]
fn a_panicking_process_filter_is_a_failed_sample_and_the_thread_keeps_running() {
    let gpu = GpuCollector::builder()
        .interval(Duration::from_secs(3600))
        .processes(true)
        .process_filter(ProcessFilter::Custom(std::sync::Arc::new(|_| {
            panic!("filter bug")
        })))
        .start(FakeSource::demo(1))
        .expect("spawn");
    assert!(
        gpu.refresh(Duration::from_secs(10)),
        "first sample answered"
    );
    assert!(
        gpu.refresh(Duration::from_secs(10)),
        "the sampler survived the panic"
    );
    let (_, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0));
    assert!(exp.value("gpu_collector_errors_total", &[]).unwrap() >= 2.0);
    assert!(!exp.has_family("gpu_info"), "no device series while down");
    let last_error = gpu.snapshot().last_error.unwrap();
    assert!(
        last_error.contains("process filter panicked"),
        "{last_error}"
    );
}

/// A source that blocks while its gate is closed, as a hung driver call does.
#[derive(Clone, Default)]
struct Gate {
    closed: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.0.lock().unwrap() = closed;
        self.closed.1.notify_all();
    }

    /// Waits until the source was called `n` times.
    fn wait_for_calls(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.calls.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} calls within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

struct Hanging {
    gate: Gate,
    inner: FakeSource,
}

impl periscope_gpu::GpuSource for Hanging {
    fn name(&self) -> &'static str {
        "hanging"
    }

    fn sample(&mut self, request: periscope_gpu::SampleRequest) -> Result<GpuSample, GpuError> {
        self.gate
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (closed, opened) = &*self.gate.closed;
        drop(
            opened
                .wait_while(closed.lock().unwrap(), |closed| *closed)
                .unwrap(),
        );
        self.inner.sample(request)
    }
}

/// A hung driver call must not leave the last readings exported as current with
/// `gpu_collector_up 1`: past the sample timeout the collector shows down, and once the
/// call returns it is up again without its error counter going back.
#[test]
fn a_hung_source_shows_down_after_the_sample_timeout() {
    let gate = Gate::default();
    let gpu = GpuCollector::builder()
        .interval(Duration::from_secs(3600))
        .sample_timeout(Duration::from_millis(200))
        .start(Hanging {
            gate: gate.clone(),
            inner: FakeSource::demo(1),
        })
        .expect("spawn");
    assert!(gpu.refresh(Duration::from_secs(10)));
    assert_eq!(scrape(&gpu).1.value("gpu_collector_up", &[]), Some(1.0));

    gate.set_closed(true);
    assert!(!gpu.refresh(Duration::from_millis(600)), "the source hangs");
    let (text, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0), "{text}");
    assert_eq!(exp.value("gpu_collector_errors_total", &[]), Some(1.0));
    assert!(
        !exp.has_family("gpu_info"),
        "no frozen device series: {text}"
    );
    assert!(
        exp.value("gpu_collector_last_success_timestamp_seconds", &[])
            .is_some(),
        "the last good sample's time stays"
    );
    let snapshot = gpu.snapshot();
    assert!(!snapshot.up && snapshot.devices.is_empty());
    let last_error = snapshot.last_error.unwrap();
    assert!(last_error.contains("has not answered"), "{last_error}");
    assert!(!gpu.is_up() && gpu.last_sample().is_none());

    gate.set_closed(false);
    assert!(gpu.refresh(Duration::from_secs(10)), "the call returned");
    let (text, exp) = scrape(&gpu);
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0), "{text}");
    assert_eq!(
        exp.value("gpu_collector_errors_total", &[]),
        Some(1.0),
        "the stalled sample stays counted once"
    );
    assert!(exp.has_family("gpu_info"));
}

/// `shutdown` with a hung source returns after the sample timeout instead of never.
#[test]
fn shutdown_does_not_wait_for_a_hung_source_past_the_sample_timeout() {
    let gate = Gate::default();
    gate.set_closed(true);
    let gpu = GpuCollector::builder()
        .sample_timeout(Duration::from_millis(300))
        .start(Hanging {
            gate: gate.clone(),
            inner: FakeSource::demo(1),
        })
        .expect("spawn");
    gate.wait_for_calls(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handle = gpu.clone();
    std::thread::spawn(move || {
        handle.shutdown();
        let _ = done_tx.send(());
    });
    // 300 ms of sample timeout; 3 s leaves room for a loaded machine, and none for a wait on
    // the hung call itself or a whole sampling interval (10 s by default).
    let returned = done_rx.recv_timeout(Duration::from_secs(3)).is_ok();
    gate.set_closed(false);
    assert!(
        returned,
        "shutdown did not return within 3 s of a source hung past its 300 ms sample timeout"
    );
}

/// `metric_names` lists exactly the families a full scrape writes, so that reserving them
/// keeps every other metric off them.
#[test]
fn metric_names_are_the_families_the_collector_writes() {
    let (gpu, mut sampler) = collector(FakeSource::demo(2));
    sampler.sample_once();
    let (_, exp) = scrape(&gpu);
    let mut written: Vec<String> = exp
        .types
        .iter()
        .map(|(family, kind)| match kind.as_str() {
            "counter" => format!("{family}_total"),
            _ => family.clone(),
        })
        .collect();
    written.sort();
    let mut named: Vec<String> = GpuCollector::metric_names()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    named.sort();
    assert_eq!(named, written);
}
