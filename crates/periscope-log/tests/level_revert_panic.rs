//! A temporary level change still reverts after an earlier revert's line made a layer of the
//! application's panic. Alone in its binary: the reverter logs through the global subscriber.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use periscope_log::{LEVEL_CHANGE_TARGET, LevelControl};
use tracing_subscriber::prelude::*;

/// Panics on the first revert line it sees, as a buggy layer of the application's might.
struct PanicsOnFirstRevert(AtomicUsize);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicsOnFirstRevert {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == LEVEL_CHANGE_TARGET
            && self.0.fetch_add(1, Ordering::SeqCst) == 0
        {
            panic!("a layer failed on the revert line");
        }
    }
}

fn wait_for_revert(level: &LevelControl) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while level.status().reverts_in.is_some() {
        assert!(
            Instant::now() < deadline,
            "never reverted: {:?}",
            level.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_change_after_a_revert_line_panicked_still_reverts() {
    let level = LevelControl::new("info".parse().unwrap());
    tracing_subscriber::registry()
        .with(PanicsOnFirstRevert(AtomicUsize::new(0)))
        .init();

    level.set_for("debug".parse().unwrap(), Duration::from_millis(50));
    wait_for_revert(&level);
    assert_eq!(level.status().current, "info");
    // Right after the panic (the reverter may still be on its way out of the line): the next
    // change must revert all the same.
    // A second: the status is read before the revert however slow the machine.
    level.set_for("trace".parse().unwrap(), Duration::from_secs(1));
    assert_eq!(level.status().current, "trace");
    wait_for_revert(&level);
    assert_eq!(level.status().current, "info");
}
