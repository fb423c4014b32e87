//! A blocking output that logs while it writes. In its own file: it needs the global default
//! subscriber, the only one that passes on a line logged from inside the layer.

mod common;

use std::io::{self, Write};
use std::sync::mpsc;
use std::time::Duration;

use common::Captured;
use periscope_log::LogLayer;
use tracing_subscriber::prelude::*;

/// Logs during its second write and panics on its third.
struct Chatty {
    out: Captured,
    writes: usize,
}

impl Write for Chatty {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        match self.writes {
            2 => tracing::warn!("the output logs"),
            3 => panic!("the output panicked"),
            _ => {}
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        tracing::warn!("the output logs while flushing");
        Ok(())
    }
}

/// A line logged from inside a blocking output, by the output itself or by a panic hook (as
/// periscope's logs every panic), is counted as dropped instead of waiting for the output's
/// lock, which its own thread holds, forever.
#[test]
fn a_line_logged_from_inside_a_blocking_output_is_counted_not_waited_for() {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(Chatty {
            out: out.clone(),
            writes: 0,
        })
        .blocking(true)
        .build();
    let dropped = layer.dropped_lines();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic.message = %info, "panicked");
        previous(info);
    }));
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        for message in ["one", "two", "three", "four"] {
            tracing::info!("{message}");
        }
        drop(guard);
        done.send(()).unwrap();
    });
    let finished = finished.recv_timeout(Duration::from_secs(10)).is_ok();
    // Back to the default hook, so a failure below does not log into a stuck output.
    drop(std::panic::take_hook());
    assert!(
        finished,
        "a line logged from inside the output waits for itself"
    );
    let messages: Vec<_> = out.lines().iter().map(|l| l["message"].clone()).collect();
    assert_eq!(messages, ["one", "two", "four"]);
    // The output's own line, the panic hook's, the line the output panicked on, and the
    // output's line while the guard flushes.
    assert_eq!(dropped.get(), 4);
}
