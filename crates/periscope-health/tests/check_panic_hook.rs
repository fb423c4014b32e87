//! A check that panics is reported by the runner's line alone (masked, once while it stays the
//! same), not also by the process's panic hook on every run: the default hook prints the
//! message whole on stderr, and `Observability::init`'s writes it to the log unmasked. A
//! binary of its own: it installs the process's panic hook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use periscope_health::{Health, Status};

static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_check_does_not_reach_the_process_panic_hook() {
    std::panic::set_hook(Box::new(|_| {
        HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
    }));
    let health = Health::builder()
        .check("database", || async {
            tokio::task::yield_now().await;
            if std::env::var_os("PERISCOPE_NEVER_SET").is_none() {
                panic!("connect to postgres://svc:hunter2@db:5432/app failed");
            }
            Ok::<_, String>(())
        })
        .check(
            "ready-made panic",
            || -> std::future::Ready<Result<(), String>> {
                panic!("the check's closure panicked before its future")
            },
        )
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();

    for _ in 0..3 {
        let report = health.readiness().await;
        assert_eq!(report.status(), Status::Fail);
        for check in report.checks() {
            assert_eq!(check.error.as_deref(), Some("check panicked"), "{check:?}");
        }
    }
    assert_eq!(HOOK_CALLS.load(Ordering::SeqCst), 0);
}
