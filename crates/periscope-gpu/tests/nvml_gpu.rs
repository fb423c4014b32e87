//! Real NVIDIA GPU tests, ignored by default. On a machine with a GPU and its driver run:
//!
//! ```sh
//! cargo test -p periscope-gpu --all-features --test nvml_gpu -- --ignored --nocapture
//! ```
#![cfg(feature = "nvml")]

mod common;

use std::time::Duration;

use periscope_gpu::{GpuCollector, GpuSource, NvmlSource, SampleRequest};

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn nvml_reads_every_device_with_name_uuid_and_memory() {
    let mut source = NvmlSource::new();
    let sample = source
        .sample(SampleRequest {
            processes: true,
            pcie: true,
        })
        .expect("NVML loads and reads the GPUs");
    println!(
        "driver {:?}, {} device(s)",
        sample.driver_version,
        sample.devices.len()
    );
    assert!(sample.driver_version.is_some());
    assert!(!sample.devices.is_empty(), "at least one GPU");
    assert_eq!(sample.unreadable_devices, 0);
    for d in &sample.devices {
        println!("{d:#?}");
        assert!(!d.name.is_empty());
        assert!(
            d.uuid.starts_with("GPU-") || d.uuid.starts_with("MIG-"),
            "{}",
            d.uuid
        );
        let total = d.memory_total_bytes.expect("memory total");
        assert!(total > 0);
        assert!(d.memory_used_bytes.expect("memory used") <= total);
        for ratio in [d.utilization_ratio, d.memory_utilization_ratio]
            .into_iter()
            .flatten()
        {
            assert!((0.0..=1.0).contains(&ratio), "{ratio}");
        }
        if let Some(t) = d.temperature_celsius {
            assert!((0.0..150.0).contains(&t), "{t}");
        }
        if let Some(w) = d.power_usage_watts {
            assert!((0.0..2000.0).contains(&w), "{w}");
        }
        if let Some(hz) = d.sm_clock_hertz {
            assert!(hz >= 1e6, "{hz}");
        }
        assert!(d.processes.is_some(), "process listing works on a real GPU");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn nvml_collector_scrape_contains_gpu_info_and_memory() {
    let gpu = GpuCollector::builder()
        .processes(true)
        .pcie(true)
        .start_nvml()
        .expect("spawn");
    assert!(gpu.refresh(Duration::from_secs(30)));
    let (text, exp) = common::scrape(&gpu);
    println!("{text}");
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0));
    let infos = exp.named("gpu_info");
    assert!(!infos.is_empty());
    for info in infos {
        assert!(!info.labels["name"].is_empty());
        assert!(!info.labels["driver_version"].is_empty());
        let gpu_label = [("gpu", info.labels["gpu"].as_str())];
        assert!(exp.value("gpu_memory_total_bytes", &gpu_label).unwrap() > 0.0);
    }
    let snapshot = serde_json::to_string_pretty(&gpu.snapshot()).unwrap();
    println!("{snapshot}");
    assert!(
        gpu.snapshot()
            .devices
            .iter()
            .all(|d| d.memory_total_mib.unwrap_or(0) > 0)
    );
}

#[cfg(feature = "tracker")]
#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn nvml_resource_tracker_reads_the_gpus() {
    let csv =
        std::env::temp_dir().join(format!("periscope-nvml-tracker-{}.csv", std::process::id()));
    let tracker = periscope_gpu::ResourceTracker::builder()
        .interval(Duration::from_millis(250))
        .csv_path(&csv)
        .gpu_source(NvmlSource::new())
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let report = tracker.finish().unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{}", std::fs::read_to_string(&csv).unwrap());
    assert!(report.summary.gpu_count > 0);
    assert!(report.summary.gpu_utilization_percent_mean.is_some());
    std::fs::remove_file(csv).ok();
}
