//! ResourceTracker: a child that burns CPU and holds memory shows in the CSV and the summary.
#![cfg(feature = "tracker")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use periscope_gpu::{
    CSV_HEADER, DeviceSample, FakeSource, GpuAttribution, GpuError, GpuProcess, GpuSample,
    GpuSource, ResourceReport, ResourceTracker, SampleRequest, TrackerError, demo_device,
};

const BURN_ENV: &str = "PERISCOPE_GPU_TEST_BURN";
const HOLD_BYTES: usize = 256 << 20;

/// Not a test on its own: re-run as a child with `BURN_ENV` set, it holds 256 MiB of
/// touched memory and spins on one core for about 2.5 s.
#[test]
#[ignore = "the child process of a_burning_child_shows_in_the_csv_and_the_summary"]
fn burner_child() {
    if std::env::var_os(BURN_ENV).is_none() {
        return;
    }
    let memory = vec![1u8; HOLD_BYTES];
    let until = Instant::now() + Duration::from_millis(2500);
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    std::hint::black_box((x, &memory));
}

/// A shell running the burner as its child: a tree of its own, apart from the children the
/// other tests of this binary start beside it.
fn spawn_burner() -> std::process::Child {
    let this = std::env::current_exe().expect("this test binary");
    Command::new("sh")
        .args([
            "-c",
            // Not the script's last command: a shell that would run that one in its place
            // (bash as `sh`) forks it.
            "\"$0\" burner_child --exact --ignored --test-threads=1; exit $?",
        ])
        .arg(this)
        .env(BURN_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a shell re-running this test binary as the burner")
}

fn column(header: &str, name: &str) -> usize {
    header
        .split(',')
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

#[test]
fn a_burning_child_shows_in_the_csv_and_the_summary() {
    let csv = std::env::temp_dir().join(format!("periscope-tracker-{}.csv", std::process::id()));
    let mut child = spawn_burner();
    let tracker = ResourceTracker::builder()
        .pid(child.id())
        .interval(Duration::from_millis(250))
        .csv_path(&csv)
        .start()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let report = tracker.finish().unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::remove_file(&csv).ok();

    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert_eq!(header, CSV_HEADER);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let width = header.split(',').count();
    assert!(rows.iter().all(|r| r.len() == width), "{text}");
    assert_eq!(rows.len() as u64, report.summary.samples);
    assert!(rows.len() >= 4, "about 2.5 s at 250 ms: {text}");

    let num = |row: &Vec<&str>, name: &str| -> f64 { row[column(header, name)].parse().unwrap() };
    let max = |name: &str| rows.iter().map(|r| num(r, name)).fold(0.0, f64::max);
    // The child is seen as part of the tree, with its memory and its CPU.
    assert!(max("processes") >= 2.0, "the child is counted: {text}");
    let memory = max("memory_bytes");
    assert!(
        (HOLD_BYTES as f64..2.0 * HOLD_BYTES as f64).contains(&memory),
        "{text}"
    );
    // A loaded 2-core machine may give the burner only a small part of a core.
    assert!(max("cpu_cores") >= 0.1, "{text}");
    assert!(max("host_memory_total_bytes") > 0.0);
    for row in &rows {
        assert_eq!(
            row[column(header, "gpu_count")],
            "",
            "no GPU source: empty cells"
        );
    }

    let s = &report.summary;
    assert!(s.duration_s >= 2.0, "{s:?}");
    assert!(s.processes_max >= 2, "{s:?}");
    assert!(s.memory_bytes_max >= HOLD_BYTES as u64, "{s:?}");
    assert!(s.cpu_cores_max >= 0.1 && s.cpu_cores_mean > 0.0, "{s:?}");
    assert!(s.cpu_cores_max >= s.cpu_cores_mean);
    assert_eq!(s.gpu_count, 0);
    assert_eq!(s.gpu_utilization_percent_mean, None);

    let r = &report.recommendation;
    assert!(r.cpu_cores >= 1);
    assert_eq!(
        r.memory_bytes,
        (s.memory_bytes_max as f64 * 1.2).ceil() as u64
    );
    assert_eq!(r.gpus, 0);
    assert_eq!(r.gpu_memory_bytes, None);

    let json = serde_json::to_value(&report).unwrap();
    assert!(json["summary"]["cpu_cores_mean"].is_number());
    assert!(json["recommendation"]["memory_bytes"].is_u64());
}

#[test]
fn gpu_readings_find_the_trees_own_vram() {
    let own = std::process::id();
    let mut device = demo_device(0);
    device.processes = Some(vec![
        GpuProcess {
            pid: own,
            used_memory_bytes: Some(3 << 30),
        },
        GpuProcess {
            pid: u32::MAX - 1,
            used_memory_bytes: Some(50 << 30),
        },
    ]);
    let idle = {
        let mut idle = demo_device(1);
        idle.processes = Some(Vec::new());
        idle.utilization_ratio = Some(0.0);
        idle
    };
    let source = FakeSource::new(GpuSample {
        devices: vec![device, idle],
        ..GpuSample::default()
    });

    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .gpu_source(source)
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let report = tracker.finish().unwrap();

    let s = &report.summary;
    assert_eq!(s.gpu_count, 2);
    assert_eq!(s.gpus_used, 1, "only device 0 runs this process");
    assert_eq!(
        s.gpu_memory_bytes_max,
        Some(3 << 30),
        "the tree's VRAM, not the other process's"
    );
    // Mean over both devices: (37 % + 0 %) / 2.
    let mean = s.gpu_utilization_percent_mean.unwrap();
    assert!((mean - 18.5).abs() < 1e-9, "{mean}");
    let r = &report.recommendation;
    assert_eq!(r.gpus, 1);
    assert_eq!(
        r.gpu_memory_bytes,
        Some(((3u64 << 30) as f64 * 1.2).ceil() as u64)
    );
}

/// A custom source listing a device or a pid twice counts each once, as the collector does.
#[test]
fn repeated_devices_and_pids_from_a_source_count_once() {
    let own = std::process::id();
    let mut device = demo_device(0);
    device.processes = Some(vec![
        GpuProcess {
            pid: own,
            used_memory_bytes: Some(1 << 30),
        },
        GpuProcess {
            pid: own,
            used_memory_bytes: Some(2 << 30),
        },
    ]);
    let source = FakeSource::new(GpuSample {
        devices: vec![device.clone(), device],
        ..GpuSample::default()
    });
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .gpu_source(source)
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let s = tracker.finish().unwrap().summary;
    assert_eq!(s.gpu_count, 1);
    assert_eq!(s.gpus_used, 1);
    assert_eq!(
        s.gpu_memory_bytes_max,
        Some(2 << 30),
        "the larger figure, once"
    );
}

/// A writer the test can read after the tracker is done.
#[derive(Clone)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn gpu_columns_are_filled_from_the_source() {
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .csv_writer(buf.clone())
        .gpu_source(FakeSource::demo(2))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    tracker.finish().unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let row: Vec<&str> = lines.next().expect("a row").split(',').collect();
    assert_eq!(row[column(header, "gpu_count")], "2");
    assert_eq!(row[column(header, "gpu_utilization_percent")], "42.0");
    assert_eq!(
        row[column(header, "gpu_memory_used_bytes")],
        ((41u64) << 30).to_string()
    );
    assert_eq!(
        row[column(header, "gpu_process_memory_bytes")],
        ((16u64) << 30).to_string()
    );
}

#[test]
fn a_missing_process_or_unwritable_csv_is_a_clear_error() {
    let error = ResourceTracker::builder()
        .pid(u32::MAX - 7)
        .start()
        .unwrap_err();
    assert!(
        matches!(error, TrackerError::ProcessNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("does not exist"));

    let error = ResourceTracker::builder()
        .csv_path("/nonexistent-dir/for/sure/run.csv")
        .start()
        .unwrap_err();
    assert!(matches!(error, TrackerError::Csv(_)), "{error}");
    assert!(error.to_string().contains("writable"), "{error}");
}

/// A tracker that cannot start (the job already exited) leaves the CSV an earlier run wrote
/// at the same path as it was, instead of truncating it to a header.
#[test]
fn a_missing_process_leaves_an_existing_csv_untouched() {
    let csv =
        std::env::temp_dir().join(format!("periscope-tracker-keep-{}.csv", std::process::id()));
    let earlier = format!("{CSV_HEADER}\n1.000,0.000,1,0.000,1,0,0,0.0,1,1,0,0,,,,\n");
    std::fs::write(&csv, &earlier).unwrap();
    let error = ResourceTracker::builder()
        .pid(u32::MAX - 7)
        .csv_path(&csv)
        .start()
        .unwrap_err();
    let left = std::fs::read_to_string(&csv).unwrap();
    std::fs::remove_file(&csv).ok();
    assert!(
        matches!(error, TrackerError::ProcessNotFound { .. }),
        "{error}"
    );
    assert_eq!(left, earlier);
}

#[test]
fn a_short_run_still_has_one_reading() {
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_secs(60))
        .start()
        .unwrap();
    let started = Instant::now();
    let report = tracker.finish().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "finish does not wait out the interval"
    );
    assert_eq!(report.summary.samples, 1);
    assert!(
        report.summary.memory_bytes_max > 0,
        "this process has memory"
    );
}

/// A NaN utilisation from a source leaves its cell empty ("not available") and does not
/// spoil the other devices' mean; memory that cannot be added up saturates.
#[test]
fn odd_readings_leave_cells_empty_or_saturated() {
    let mut odd = demo_device(0);
    odd.utilization_ratio = Some(f64::NAN);
    odd.memory_used_bytes = Some(u64::MAX);
    let mut fine = demo_device(1);
    fine.memory_used_bytes = Some(u64::MAX);
    let fine_percent = format!("{:.1}", fine.utilization_ratio.unwrap() * 100.0);
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .csv_writer(buf.clone())
        .gpu_source(FakeSource::new(GpuSample {
            driver_version: None,
            devices: vec![odd, fine],
            unreadable_devices: 0,
        }))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    tracker.finish().expect("the tracker thread survived");
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let row: Vec<&str> = lines.next().expect("a row").split(',').collect();
    // The mean of the devices that gave a number: the NaN one is left out.
    assert_eq!(
        row[column(header, "gpu_utilization_percent")],
        fine_percent,
        "{text}"
    );
    assert_eq!(
        row[column(header, "gpu_memory_used_bytes")],
        u64::MAX.to_string()
    );
}

/// Utilisations too large to add up (a custom source's garbage) never reach the CSV or the
/// summary as `inf`: a ratio whose percent is not finite is left out like a NaN, and finite
/// percents are averaged without overflowing.
#[test]
fn huge_utilisations_never_write_inf() {
    let run = |ratios: &[f64]| {
        let devices = ratios
            .iter()
            .enumerate()
            .map(|(i, &ratio)| {
                let mut device = demo_device(u32::try_from(i).unwrap());
                device.utilization_ratio = Some(ratio);
                device
            })
            .collect();
        let buf = SharedBuf(Default::default());
        let tracker = ResourceTracker::builder()
            .interval(Duration::from_millis(200))
            .csv_writer(buf.clone())
            .gpu_source(FakeSource::new(GpuSample {
                driver_version: None,
                devices,
                unreadable_devices: 0,
            }))
            .start()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let report = tracker.finish().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let (header, rows) = rows(&text);
        let at = column(&header, "gpu_utilization_percent");
        let cells: Vec<String> = rows.iter().map(|row| row[at].clone()).collect();
        (cells, report.summary, text)
    };

    // 1e308 is a finite ratio but no finite percent: left out, the other device is the mean.
    let (cells, summary, text) = run(&[1e308, 0.5]);
    assert!(cells.iter().all(|cell| cell == "50.0"), "{text}");
    assert_eq!(summary.gpu_utilization_percent_mean, Some(50.0));

    // Finite percents whose sum overflows: the cell and the summary stay finite numbers.
    let (cells, summary, text) = run(&[1e306, 1e306]);
    assert!(summary.samples >= 2, "{text}");
    for cell in &cells {
        let percent: f64 = cell.parse().unwrap_or_else(|_| panic!("{cell:?}: {text}"));
        assert!(percent.is_finite(), "{cell}: {text}");
    }
    let mean = summary.gpu_utilization_percent_mean.expect("a mean");
    assert!(mean.is_finite(), "{summary:?}");
    let json = serde_json::to_value(&summary).unwrap();
    assert!(json["gpu_utilization_percent_mean"].is_f64(), "{json}");
}

/// The CSV rows (after the header) as cells, by column name.
fn rows(text: &str) -> (String, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines.next().expect("a header").to_owned();
    let rows = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// A source that panics on every sample.
struct Panicking;

impl GpuSource for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }

    fn sample(&mut self, _: SampleRequest) -> Result<GpuSample, GpuError> {
        panic!("driver bug");
    }
}

/// A panicking GPU source costs the GPU columns, not the run's readings and report.
#[test]
fn a_panicking_gpu_source_leaves_the_gpu_cells_empty_and_the_report_whole() {
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .csv_writer(buf.clone())
        .gpu_source(Panicking)
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // `finish` answers only when the thread survived every panic; how many readings fit in the
    // wait depends on the machine's load, so at least one.
    let report = tracker.finish().expect("the tracker thread survived");
    assert!(report.summary.samples >= 1, "{:?}", report.summary);
    assert_eq!(report.summary.gpu_count, 0);
    assert_eq!(report.summary.gpu_utilization_percent_mean, None);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let (header, rows) = rows(&text);
    assert_eq!(rows.len() as u64, report.summary.samples, "{text}");
    for row in &rows {
        assert_eq!(row.len(), header.split(',').count(), "{text}");
        assert_eq!(row[column(&header, "gpu_count")], "", "{text}");
        assert!(row[column(&header, "memory_bytes")].parse::<u64>().unwrap() > 0);
    }
}

/// A GPU source unavailable for a while in the middle of a run (a driver reloaded, a
/// permission lost) costs only the readings taken meanwhile: later ones are read again, and the
/// summary counts the GPUs.
#[test]
fn an_unavailable_gpu_read_mid_run_leaves_only_its_own_cells_empty() {
    let source = FakeSource::demo(1);
    let control = source.control();
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(50))
        .csv_writer(buf.clone())
        .gpu_source(source)
        .start()
        .unwrap();
    let wait_for_calls = |calls: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while control.calls() < calls {
            assert!(
                Instant::now() < deadline,
                "the source was asked {} times",
                control.calls()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_calls(2);
    control.set_failure(Some(GpuError::unavailable("driver reloading")));
    let failing_from = control.calls();
    wait_for_calls(failing_from + 2);
    control.set_failure(None);
    let recovered_from = control.calls();
    wait_for_calls(recovered_from + 3);
    let report = tracker.finish().unwrap();
    assert_eq!(report.summary.gpu_count, 1, "{:?}", report.summary);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let (header, rows) = rows(&text);
    let gpu_counts: Vec<&str> = rows
        .iter()
        .map(|row| row[column(&header, "gpu_count")].as_str())
        .collect();
    assert!(
        gpu_counts.contains(&""),
        "no reading without the GPU: {text}"
    );
    assert_eq!(gpu_counts.last(), Some(&"1"), "{text}");
}

/// NVML reports a GPU in MIG mode in aggregate (its memory in use and its processes include
/// its instances'), then each MIG instance: the tracker counts each byte and GPU once.
#[test]
fn mig_instances_are_not_counted_twice_with_their_gpu() {
    const GIB: u64 = 1 << 30;
    let own = std::process::id();
    let mut parent = demo_device(0);
    parent.utilization_ratio = None;
    parent.memory_used_bytes = Some(10 * GIB);
    parent.processes = Some(vec![GpuProcess {
        pid: own,
        used_memory_bytes: Some(8 * GIB),
    }]);
    let mig = |slot: u32, used: u64, pids: Vec<GpuProcess>| DeviceSample {
        id: format!("0:mig{slot}"),
        uuid: format!("MIG-00000000-0000-4000-8000-00000000000{slot}"),
        name: "Fake GPU 80GB MIG 3g.40gb".into(),
        mig_parent: Some("0".into()),
        memory_used_bytes: Some(used),
        memory_total_bytes: Some(40 * GIB),
        processes: Some(pids),
        ..DeviceSample::default()
    };
    let mine = mig(
        0,
        8 * GIB,
        vec![GpuProcess {
            pid: own,
            used_memory_bytes: Some(8 * GIB),
        }],
    );
    let other = mig(1, 2 * GIB, Vec::new());
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .csv_writer(buf.clone())
        .gpu_source(FakeSource::new(GpuSample {
            driver_version: None,
            devices: vec![parent, mine, other],
            unreadable_devices: 0,
        }))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let report = tracker.finish().unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let (header, rows) = rows(&text);
    let row = rows.first().expect("a row");
    assert_eq!(
        row[column(&header, "gpu_memory_used_bytes")],
        (10 * GIB).to_string(),
        "the GPU's figure already holds its instances': {text}"
    );
    assert_eq!(
        row[column(&header, "gpu_process_memory_bytes")],
        (8 * GIB).to_string(),
        "{text}"
    );
    let s = &report.summary;
    assert_eq!(s.gpus_used, 1, "one MIG instance, not it and its GPU");
    assert_eq!(s.gpu_memory_bytes_max, Some(8 * GIB));
    assert_eq!(report.recommendation.gpus, 1);
}

/// A source that answers its first call, then blocks on every later one until the test
/// releases it (a wedged driver); it tells the test when each call starts.
struct Wedging {
    calls: u32,
    started: std::sync::mpsc::Sender<u32>,
    release: std::sync::mpsc::Receiver<()>,
    /// Whether the wedged call, once released, answers that the driver is gone.
    ends_unavailable: bool,
}

impl GpuSource for Wedging {
    fn name(&self) -> &'static str {
        "wedging"
    }

    fn sample(&mut self, request: SampleRequest) -> Result<GpuSample, GpuError> {
        self.calls += 1;
        let _ = self.started.send(self.calls);
        if self.calls == 2 {
            // Blocks until the test sends or drops its sender.
            let _ = self.release.recv();
            if self.ends_unavailable {
                return Err(GpuError::unavailable("driver reloaded"));
            }
        }
        FakeSource::demo(2).sample(request)
    }
}

/// A wedging source, the receiver of its call numbers and the sender that releases it.
fn wedging() -> (
    Wedging,
    std::sync::mpsc::Receiver<u32>,
    std::sync::mpsc::Sender<()>,
) {
    let (started, calls) = std::sync::mpsc::channel();
    let (release, wait) = std::sync::mpsc::channel();
    let source = Wedging {
        calls: 0,
        started,
        release: wait,
        ends_unavailable: false,
    };
    (source, calls, release)
}

/// Waits (generously) until the source has started its `n`th call.
fn wait_for_call(calls: &std::sync::mpsc::Receiver<u32>, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match calls.recv_timeout(left) {
            Ok(call) if call >= n => return,
            Ok(_) => {}
            Err(error) => panic!("the source's call {n} never started: {error}"),
        }
    }
}

/// A GPU read that never answers (a wedged driver) costs the GPU cells of the readings from
/// then on, not the run: `finish` returns within about one reading plus the GPU timeout.
#[test]
fn a_hung_gpu_source_does_not_hang_finish() {
    let (source, calls, release) = wedging();
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .gpu_timeout(Duration::from_millis(200))
        .csv_writer(buf.clone())
        .gpu_source(source)
        .start()
        .unwrap();
    // The second reading's GPU read is now stuck for good.
    wait_for_call(&calls, 2);
    std::thread::sleep(Duration::from_millis(500));
    let (done, report) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(tracker.finish());
    });
    let report = report
        .recv_timeout(Duration::from_secs(10))
        .expect("finish returns although the GPU source hangs")
        .expect("a report");
    // About one reading (200 ms) plus the GPU timeout (200 ms); 3 s leaves room for a loaded
    // machine, and none for a wait on the hung read.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let (header, rows) = rows(&text);
    let s = &report.summary;
    // The first reading, and the one whose GPU read hung.
    assert!(rows.len() >= 2, "{text}");
    assert_eq!(rows.len() as u64, s.samples, "{text}");
    let gpu = column(&header, "gpu_count");
    // Only the first call answered: no row after it has GPU cells.
    assert!(rows[1..].iter().all(|r| r[gpu].is_empty()), "{text}");
    for row in &rows {
        assert_eq!(row.len(), header.split(',').count(), "{text}");
        assert!(row[column(&header, "memory_bytes")].parse::<u64>().unwrap() > 0);
    }
    assert!(s.memory_bytes_max > 0, "{s:?}");
    assert!(s.duration_s > 0.0, "{s:?}");
    assert!(report.recommendation.memory_bytes > 0);
    drop((calls, release));
}

/// Once a stuck GPU read answers, the next readings read the GPUs again.
#[test]
fn gpu_readings_resume_after_a_stuck_read_answers() {
    resume_after_a_stuck_read(false);
}

/// A hung read that ends with the driver gone (reloaded): that answer empties its reading's
/// GPU cells, and later readings ask again (they stopped for good).
#[test]
fn gpu_readings_resume_after_a_stuck_read_answers_unavailable() {
    resume_after_a_stuck_read(true);
}

fn resume_after_a_stuck_read(ends_unavailable: bool) {
    let (mut source, calls, release) = wedging();
    source.ends_unavailable = ends_unavailable;
    let buf = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .gpu_timeout(Duration::from_millis(500))
        .csv_writer(buf.clone())
        .gpu_source(source)
        .start()
        .unwrap();
    wait_for_call(&calls, 2);
    // Past the GPU timeout: that reading is recorded without GPU cells.
    std::thread::sleep(Duration::from_millis(1200));
    release.send(()).unwrap();
    // A later reading starts a fresh read; give it time to be recorded.
    wait_for_call(&calls, 3);
    std::thread::sleep(Duration::from_millis(1000));
    let report = tracker.finish().unwrap();

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let (header, rows) = rows(&text);
    let gpu = column(&header, "gpu_count");
    let hung = rows
        .iter()
        .position(|r| r[gpu].is_empty())
        .unwrap_or_else(|| panic!("a reading without GPU cells: {text}"));
    assert!(
        rows[hung..].iter().any(|r| r[gpu] == "2"),
        "GPU cells again after the stuck read answered: {text}"
    );
    assert_eq!(report.summary.gpu_count, 2);
    // No read was asked for while the stuck one was under way (some six readings): once it
    // answered, the source was not run a burst of stale reads, only one per reading after.
    let calls = calls.try_iter().max().unwrap_or(3);
    let answered = rows.iter().filter(|r| !r[gpu].is_empty()).count() as u32;
    assert!(
        calls <= answered + 2,
        "{calls} reads for {answered} readings with GPU cells: {text}"
    );
}

/// Two busy GPUs (37 % and 47 %, 20 and 21 GiB in use), each listing one process that is
/// not this test's.
fn busy_with_others() -> Vec<DeviceSample> {
    (0..2)
        .map(|i| {
            let mut device = demo_device(i);
            device.processes = Some(vec![GpuProcess {
                pid: u32::MAX - 1 - i,
                used_memory_bytes: Some(30 << 30),
            }]);
            device
        })
        .collect()
}

/// Tracks this process (which uses no GPU) over `devices`, in the host pid namespace or
/// not, and returns the report as a user reads it: JSON, parsed back.
fn report_over(devices: Vec<DeviceSample>, host_pid_namespace: bool) -> serde_json::Value {
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .host_pid_namespace(host_pid_namespace)
        .gpu_source(FakeSource::new(GpuSample {
            devices,
            ..GpuSample::default()
        }))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let report = tracker.finish().unwrap();
    serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap()
}

/// A CPU-only job on a node where other processes keep the GPUs busy, in the host pid
/// namespace (where the driver's pids are the tree's): it is recommended no GPU.
#[test]
fn a_cpu_only_job_on_a_busy_host_is_recommended_no_gpu() {
    let json = report_over(busy_with_others(), true);
    let (summary, recommendation) = (&json["summary"], &json["recommendation"]);
    assert_eq!(summary["gpu_attribution"], "none", "{json}");
    assert_eq!(summary["gpu_count"], 2, "{json}");
    assert_eq!(summary["gpus_used"], 0, "{json}");
    assert_eq!(
        summary["gpu_memory_bytes_max"], 0,
        "the tree's own VRAM, not the others': {json}"
    );
    assert_eq!(recommendation["gpus"], 0, "{json}");
    assert!(recommendation["gpu_memory_bytes"].is_null(), "{json}");
}

/// The same node seen from another pid namespace (or one that cannot be told): the tree's
/// processes could not have been found, so the busy GPUs stay the guess, and say so.
#[test]
fn outside_the_host_pid_namespace_the_busy_gpus_stay_the_guess() {
    const GIB: u64 = 1 << 30;
    let json = report_over(busy_with_others(), false);
    let (summary, recommendation) = (&json["summary"], &json["recommendation"]);
    assert_eq!(summary["gpu_attribution"], "busy_gpus", "{json}");
    assert_eq!(summary["gpus_used"], 0, "{json}");
    assert_eq!(summary["gpu_memory_bytes_max"], 41 * GIB, "{json}");
    assert_eq!(recommendation["gpus"], 2, "{json}");
    assert_eq!(
        recommendation["gpu_memory_bytes"],
        ((41 * GIB) as f64 * 1.2).ceil() as u64,
        "{json}"
    );
}

/// In the host pid namespace, a busy GPU that lists no process (listing unavailable: MIG,
/// permissions) may be hiding the job's: the busy-GPU guess stays, for every busy GPU.
#[test]
fn a_busy_gpu_without_a_process_list_keeps_the_guess() {
    // No process listed anywhere.
    let mut silent = busy_with_others();
    silent[0].processes = Some(Vec::new());
    silent[1].processes = None;
    let json = report_over(silent, true);
    assert_eq!(json["summary"]["gpu_attribution"], "busy_gpus", "{json}");
    assert_eq!(json["recommendation"]["gpus"], 2, "{json}");
    assert!(
        json["recommendation"]["gpu_memory_bytes"].is_u64(),
        "{json}"
    );

    // One busy GPU lists another's process, the other busy GPU lists nothing.
    let mut partial = busy_with_others();
    partial[1].processes = None;
    let json = report_over(partial, true);
    assert_eq!(json["summary"]["gpu_attribution"], "busy_gpus", "{json}");
    assert_eq!(json["recommendation"]["gpus"], 2, "{json}");
}

/// The tree's own processes on a GPU decide, in whatever pid namespace (a driver that gives
/// container pids finds them too).
#[test]
fn the_trees_own_processes_decide_in_any_namespace() {
    const GIB: u64 = 1 << 30;
    for host in [true, false] {
        let mut devices = busy_with_others();
        devices[1].processes.as_mut().unwrap().push(GpuProcess {
            pid: std::process::id(),
            used_memory_bytes: Some(3 * GIB),
        });
        let json = report_over(devices, host);
        let (summary, recommendation) = (&json["summary"], &json["recommendation"]);
        assert_eq!(summary["gpu_attribution"], "processes", "{json}");
        assert_eq!(summary["gpus_used"], 1, "{json}");
        assert_eq!(summary["gpu_memory_bytes_max"], 3 * GIB, "{json}");
        assert_eq!(recommendation["gpus"], 1, "{json}");
    }
}

/// Without GPUs there is no attribution to make; a report written before the field existed
/// still reads back.
#[test]
fn no_gpu_means_no_attribution_and_older_reports_still_parse() {
    let json = report_over(Vec::new(), true);
    assert!(json["summary"]["gpu_attribution"].is_null(), "{json}");
    assert_eq!(json["recommendation"]["gpus"], 0, "{json}");

    let mut older = json.clone();
    older["summary"]
        .as_object_mut()
        .unwrap()
        .remove("gpu_attribution");
    let report: ResourceReport = serde_json::from_value(older).unwrap();
    assert_eq!(report.summary.gpu_attribution, None);
    let report: ResourceReport =
        serde_json::from_value(report_over(busy_with_others(), true)).expect("a report reads back");
    assert_eq!(report.summary.gpu_attribution, Some(GpuAttribution::NoGpu));
}

/// Tracks the shell command `script` (run by `sh -c`) to its end, every `interval`: the
/// report, the CSV and what the script wrote on stdout.
fn track_shell(script: &str, interval: Duration) -> (ResourceReport, String, String) {
    let mut child = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh");
    let csv = SharedBuf(Default::default());
    let tracker = ResourceTracker::builder()
        .pid(child.id())
        .interval(interval)
        .csv_writer(csv.clone())
        .start()
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(child.wait().unwrap().success(), "{script}");
    let report = tracker.finish().unwrap();
    let csv = String::from_utf8(csv.0.lock().unwrap().clone()).unwrap();
    (report, csv, stdout)
}

/// A child reaped inside the tree hands its storage I/O to its parent (the kernel adds it to
/// the parent's `/proc/<pid>/io`): counted once, not again in the parent.
#[test]
fn a_reaped_childs_storage_writes_count_once() {
    const WRITTEN: u64 = 64 << 20;
    // On the disk (not a tmpfs, whose writes are not storage I/O).
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("periscope-tracker-io-{}", std::process::id()));
    // The first half second lets the tracker take its first reading before any write.
    let script = format!(
        "sleep 0.5; sh -c 'head -c {WRITTEN} /dev/zero > {}; sleep 0.6'; sleep 0.6",
        file.display()
    );
    let (report, _, _) = track_shell(&script, Duration::from_millis(200));
    std::fs::remove_file(&file).ok();
    let written = report.summary.disk_written_bytes;
    assert!(
        (WRITTEN * 9 / 10..WRITTEN * 3 / 2).contains(&written),
        "{written} bytes counted for {WRITTEN} written: {:?}",
        report.summary
    );
}

/// Children that each end between two readings: their CPU time reaches the tree through the
/// parent that reaps them (`cutime`), where a process seen at fewer than two readings showed
/// none. Compared with the children's CPU time as their shell counts it (`times`), whatever
/// share of the machine they got; the time after the last reading, before the shell exits, is
/// not seen (at most one interval of the run).
#[test]
fn the_cpu_of_children_that_end_between_readings_is_counted() {
    let busy = "timeout 0.15 sh -c 'while :; do :; done'";
    let script = format!("sleep 0.5; for i in $(seq 16); do {busy}; done; times");
    let (_, csv, times) = track_shell(&script, Duration::from_secs(1));
    // `times`: the shell's own user and system time, then its children's.
    let seconds = |field: &str| -> f64 {
        let (minutes, rest) = field.split_once('m').unwrap();
        minutes.parse::<f64>().unwrap() * 60.0 + rest.trim_end_matches('s').parse::<f64>().unwrap()
    };
    let children: f64 = times
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no children's line in {times:?}"))
        .split_whitespace()
        .map(seconds)
        .sum();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let (cores, elapsed) = (column(header, "cpu_cores"), column(header, "elapsed_s"));
    let mut previous = 0.0;
    let mut tracked = 0.0;
    for row in lines {
        let cells: Vec<&str> = row.split(',').collect();
        let at: f64 = cells[elapsed].parse().unwrap();
        tracked += cells[cores].parse::<f64>().unwrap_or(0.0) * (at - previous);
        previous = at;
    }
    assert!(children > 0.2, "the children ran: {times:?}");
    assert!(
        tracked >= 0.3 * children,
        "{tracked:.2} s tracked of the children's {children:.2} s\n{csv}"
    );
}

/// A parent and its forked workers share the parent's pages: counted once (their proportional
/// set sizes), as the cgroup that limits them charges them, not once per process.
#[test]
fn memory_shared_with_forked_children_counts_once() {
    const HELD: u64 = 256 << 20;
    let python = "import os, time\n\
                  held = bytearray(b'\\x01') * (256 << 20)\n\
                  for _ in range(3):\n    \
                      if os.fork() == 0:\n        time.sleep(2.5)\n        os._exit(0)\n\
                  time.sleep(2.5)\n\
                  os.wait(); os.wait(); os.wait()\n";
    // python3 runs the forking parent: skipped where it is not installed (a machine with only
    // the Rust toolchain), never in CI, which installs it.
    let mut child = match Command::new("python3").args(["-c", python]).spawn() {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 is not installed: CI must install it"
            );
            println!("python3 not found: skipping the forked-children memory test");
            return;
        }
        Err(error) => panic!("running python3 failed: {error}"),
    };
    let tracker = ResourceTracker::builder()
        .pid(child.id())
        .interval(Duration::from_millis(250))
        .start()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let s = tracker.finish().unwrap().summary;
    assert!(s.processes_max >= 4, "{s:?}");
    assert!(
        (HELD * 9 / 10..2 * HELD).contains(&s.memory_bytes_max),
        "{} bytes for {HELD} shared by 4 processes: {s:?}",
        s.memory_bytes_max
    );
}

/// `children(false)` tracks the process alone: the CPU of a child it reaps does not reach it
/// (the kernel adds it to the parent's `cutime`, which a tree of one does not read).
#[test]
fn a_tree_of_one_leaves_its_reaped_childrens_cpu_out() {
    let mut child = Command::new("sh")
        .args(["-c", "timeout 1 sh -c 'while :; do :; done'; sleep 0.6"])
        .spawn()
        .expect("sh");
    let tracker = ResourceTracker::builder()
        .pid(child.id())
        .children(false)
        .interval(Duration::from_millis(250))
        .start()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let s = tracker.finish().unwrap().summary;
    assert_eq!(s.processes_max, 1, "{s:?}");
    assert!(s.cpu_cores_max < 0.3, "the shell alone barely runs: {s:?}");
}

/// A GPU in MIG mode, whose utilisation NVML does not read (on it or on its instances): an
/// instance listing a process is busy, so a job in a container on a MIG slice is recommended
/// that slice, not 0 GPUs; an instance that cannot list its processes keeps the guess in the
/// host pid namespace, where one that lists none is idle.
#[test]
fn a_mig_instance_in_use_counts_as_busy() {
    const GIB: u64 = 1 << 30;
    let mig = |slot: u32, processes: Option<Vec<GpuProcess>>| DeviceSample {
        id: format!("0:mig{slot}"),
        uuid: format!("MIG-00000000-0000-4000-8000-00000000000{slot}"),
        name: "Fake GPU 80GB MIG 3g.40gb".into(),
        mig_parent: Some("0".into()),
        memory_used_bytes: Some(8 * GIB),
        memory_total_bytes: Some(40 * GIB),
        processes,
        ..DeviceSample::default()
    };
    let parent = || {
        let mut parent = demo_device(0);
        parent.utilization_ratio = None;
        parent.memory_used_bytes = Some(10 * GIB);
        parent.processes = None;
        parent
    };
    let others = Some(vec![GpuProcess {
        pid: u32::MAX - 1,
        used_memory_bytes: Some(8 * GIB),
    }]);

    // In a container: the host pid of the job's process is not the tree's.
    let json = report_over(
        vec![parent(), mig(0, others.clone()), mig(1, Some(Vec::new()))],
        false,
    );
    assert_eq!(json["summary"]["gpu_attribution"], "busy_gpus", "{json}");
    assert_eq!(json["recommendation"]["gpus"], 1, "{json}");
    assert!(
        json["recommendation"]["gpu_memory_bytes"].is_u64(),
        "{json}"
    );

    // In the host pid namespace, beside a busy GPU listing another job's process: the
    // instance that cannot list its processes may hide the job's.
    let mut busy = busy_with_others().remove(1);
    busy.processes = others;
    let json = report_over(vec![parent(), mig(0, None), busy.clone()], true);
    assert_eq!(json["summary"]["gpu_attribution"], "busy_gpus", "{json}");
    assert_eq!(json["recommendation"]["gpus"], 2, "{json}");
    // An instance that lists no process is idle: the job used no GPU.
    let json = report_over(vec![parent(), mig(0, Some(Vec::new())), busy], true);
    assert_eq!(json["summary"]["gpu_attribution"], "none", "{json}");
}

/// A job shorter than one interval, tracked to its end with `finish_at_exit`: its last (here
/// its only) interval is read before it is reaped, so its CPU time and storage writes are
/// counted, where a reading after `child.wait()` finds nothing left to read.
#[cfg(target_os = "linux")]
#[test]
fn finish_at_exit_counts_the_last_interval_of_a_child() {
    const WRITTEN: u64 = 32 << 20;
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("periscope-tracker-exit-{}", std::process::id()));
    // The pause lets the tracker take its first reading before any write.
    let script = format!(
        "sleep 0.5; head -c {WRITTEN} /dev/zero > {}; timeout 0.4 sh -c 'while :; do :; done'; \
         exit 3",
        file.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("sh");
    let tracker = ResourceTracker::builder()
        .pid(child.id())
        .interval(Duration::from_secs(5))
        .start()
        .unwrap();
    let started = std::time::Instant::now();
    let report = tracker.finish_at_exit().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited for the job, not an interval"
    );
    // Not reaped by the tracker: the caller gets the exit status.
    assert_eq!(child.wait().unwrap().code(), Some(3));
    std::fs::remove_file(&file).ok();
    let summary = &report.summary;
    let written = summary.disk_written_bytes;
    assert!(
        (WRITTEN * 9 / 10..WRITTEN * 3 / 2).contains(&written),
        "{written} bytes counted for {WRITTEN} written: {summary:?}"
    );
    // 0.4 s of a core in a run of about a second.
    assert!(
        summary.cpu_cores_max * summary.duration_s > 0.2,
        "{summary:?}"
    );
}

/// Tracking this process itself, `finish_at_exit` waits for nothing: it is `finish`.
#[test]
fn finish_at_exit_of_this_process_is_finish() {
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .start()
        .unwrap();
    let report = tracker.finish_at_exit().unwrap();
    assert!(report.summary.processes_max >= 1, "{:?}", report.summary);
}
