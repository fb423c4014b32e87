//! The `/debug/status` GPU snapshot: its JSON shape, parsed back.

use periscope_gpu::{DeviceSample, FakeSource, GpuCollector, GpuError, GpuSample, GpuSnapshot};
use serde_json::Value;

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn snapshot_json_has_the_documented_shape() {
    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .build(FakeSource::demo(2));
    sampler.sample_once();
    let json = serde_json::to_string(&gpu.snapshot()).unwrap();
    let value: Value = serde_json::from_str(&json).unwrap();

    assert_eq!(
        keys(&value),
        [
            "age_s",
            "devices",
            "driver_version",
            "errors_total",
            "last_error",
            "sampled_at_unix_s",
            "source",
            "up"
        ]
    );
    assert_eq!(value["up"], true);
    assert_eq!(value["source"], "fake");
    assert_eq!(value["driver_version"], "550.54.15");
    assert_eq!(value["errors_total"], 0);
    assert!(value["last_error"].is_null());
    let age_s = value["age_s"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&age_s), "{age_s}");
    assert!(value["sampled_at_unix_s"].as_f64().unwrap() > 1.7e9);

    let devices = value["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let d = &devices[0];
    assert_eq!(
        keys(d),
        [
            "gpu",
            "memory_total_mib",
            "memory_used_mib",
            "mig_parent",
            "name",
            "power_limit_watts",
            "power_watts",
            "process_memory_used_mib",
            "processes",
            "temperature_celsius",
            "utilization_percent",
            "uuid"
        ]
    );
    assert_eq!(d["gpu"], "0");
    assert_eq!(d["name"], "Fake GPU 80GB");
    assert_eq!(d["uuid"], "GPU-00000000-0000-4000-8000-000000000000");
    assert_eq!(d["utilization_percent"], 37.0);
    assert_eq!(devices[1]["utilization_percent"], 47.0);
    assert_eq!(d["memory_used_mib"], 20 * 1024);
    assert_eq!(d["memory_total_mib"], 80 * 1024);
    assert_eq!(d["temperature_celsius"], 41.0);
    assert_eq!(d["power_watts"], 123.5);
    assert_eq!(d["power_limit_watts"], 400.0);
    assert_eq!(d["process_memory_used_mib"], 8 * 1024);
    assert!(d["mig_parent"].is_null());
    let processes = d["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1);
    assert_eq!(keys(&processes[0]), ["memory_used_mib", "pid"]);
    assert_eq!(processes[0]["pid"], std::process::id());
    assert_eq!(processes[0]["memory_used_mib"], 8 * 1024);

    // Clients can read it back into the typed form. `age_s` moves with time, and serde_json
    // may parse a float one ulp off, so the times are compared apart.
    let back: GpuSnapshot = serde_json::from_str(&json).unwrap();
    let now = gpu.snapshot();
    let sampled_at = |s: &GpuSnapshot| s.sampled_at_unix_s.unwrap();
    assert!((sampled_at(&back) - sampled_at(&now)).abs() < 1e-3);
    let without_times = |s: GpuSnapshot| GpuSnapshot {
        age_s: None,
        sampled_at_unix_s: None,
        ..s
    };
    assert_eq!(without_times(back), without_times(now));
}

#[test]
fn unsupported_values_are_null_and_processes_null_when_not_listed() {
    let bare = DeviceSample {
        id: "0".into(),
        uuid: "GPU-bare".into(),
        name: "Old GPU".into(),
        ..DeviceSample::default()
    };
    let (gpu, mut sampler) = GpuCollector::builder().build(FakeSource::new(GpuSample {
        devices: vec![bare],
        ..GpuSample::default()
    }));
    sampler.sample_once();
    let value = serde_json::to_value(gpu.snapshot()).unwrap();
    let d = &value["devices"][0];
    for key in [
        "utilization_percent",
        "memory_used_mib",
        "memory_total_mib",
        "temperature_celsius",
        "power_watts",
        "power_limit_watts",
        "process_memory_used_mib",
    ] {
        assert!(d[key].is_null(), "{key} should be null: {d}");
    }
    assert_eq!(d["processes"], serde_json::json!([]));
    assert!(value["driver_version"].is_null());
}

#[test]
fn snapshot_while_down_says_why_and_lists_no_devices() {
    let source = FakeSource::demo(1);
    source.control().set_failure(Some(GpuError::unavailable(
        "libnvidia-ml.so.1: cannot open shared object file",
    )));
    let (gpu, mut sampler) = GpuCollector::builder().build(source);
    sampler.sample_once();
    let value = serde_json::to_value(gpu.snapshot()).unwrap();
    assert_eq!(value["up"], false);
    assert_eq!(value["errors_total"], 1);
    assert_eq!(value["devices"], serde_json::json!([]));
    assert!(value["sampled_at_unix_s"].is_null());
    assert!(value["age_s"].is_null());
    let error = value["last_error"].as_str().unwrap();
    assert!(
        error.contains("libnvidia-ml.so.1") && error.contains("check that the driver is installed"),
        "{error}"
    );
}

#[test]
fn snapshot_before_the_first_sample_is_down_and_empty() {
    let (gpu, _sampler) = GpuCollector::builder().build(FakeSource::demo(1));
    let snapshot = gpu.snapshot();
    assert!(!snapshot.up);
    assert!(snapshot.devices.is_empty());
    assert_eq!(snapshot.errors_total, 0);
}

/// Values no real driver gives must not take the sampler or a request down.
#[test]
fn absurd_memory_figures_saturate_instead_of_panicking() {
    let mut device = periscope_gpu::demo_device(0);
    let pid = std::process::id();
    device.processes = Some(vec![
        periscope_gpu::GpuProcess {
            pid,
            used_memory_bytes: Some(u64::MAX),
        },
        periscope_gpu::GpuProcess {
            pid,
            used_memory_bytes: Some(1),
        },
    ]);
    let (gpu, mut sampler) = GpuCollector::builder()
        .processes(true)
        .process_filter(periscope_gpu::ProcessFilter::All)
        .build(FakeSource::new(GpuSample {
            driver_version: None,
            devices: vec![device],
            unreadable_devices: 0,
        }));
    sampler.sample_once();
    let snapshot = gpu.snapshot();
    assert_eq!(
        snapshot.devices[0].process_memory_used_mib,
        Some(u64::MAX >> 20)
    );
}

/// Durations past what `Instant` can hold are cut, not a panic in the caller or the thread.
#[test]
fn endless_durations_keep_the_collector_working() {
    let gpu = GpuCollector::builder()
        .interval(std::time::Duration::MAX)
        .start(FakeSource::demo(1))
        .unwrap();
    assert!(gpu.refresh(std::time::Duration::MAX), "first refresh");
    assert!(
        gpu.refresh(std::time::Duration::from_secs(5)),
        "the sampling thread still answers after a sample with an endless interval"
    );

    let source = FakeSource::demo(1);
    let control = source.control();
    control.set_failure(Some(GpuError::unavailable("no driver")));
    let gpu = GpuCollector::builder()
        .retry_backoff(std::time::Duration::MAX, std::time::Duration::MAX)
        .start(source)
        .unwrap();
    assert!(gpu.refresh(std::time::Duration::from_secs(5)));
    let snapshot = gpu.snapshot();
    assert!(!snapshot.up);
    // The first attempt, or a second one the refresh asked for when the first had already
    // begun: either way a failed attempt was published.
    assert!(
        (1..=2).contains(&snapshot.errors_total),
        "the failed attempt was published: {}",
        snapshot.errors_total
    );
}

/// `refresh` is answered by a sampler driven by hand, as by the collector's own thread.
#[test]
fn refresh_is_answered_by_a_hand_driven_sampler() {
    let (gpu, mut sampler) = GpuCollector::builder().build(FakeSource::demo(1));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sampler.sample_once();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    });
    let refreshed = gpu.refresh(std::time::Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    driver.join().unwrap();
    assert!(refreshed);
    assert!(gpu.is_up());
}
