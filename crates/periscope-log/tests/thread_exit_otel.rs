//! With feature `otel`: a line logged outside any request from a thread-local destructor,
//! after the thread's other lines read OpenTelemetry's context (destroyed by then), is written,
//! not a panic that aborts the process. In its own file: it needs the global default
//! subscriber, the only one a dying thread's destructors still reach.
#![cfg(feature = "otel")]

mod common;

/// Logs, outside any request, when the thread that holds it ends.
struct LogsOnDrop;

impl Drop for LogsOnDrop {
    fn drop(&mut self) {
        tracing::info!(pool = "db", "connection pool closed");
    }
}

thread_local! {
    static LOGS_ON_DROP: LogsOnDrop = const { LogsOnDrop };
}

#[test]
fn a_line_outside_requests_from_a_thread_local_destructor_is_written_with_otel() {
    // Ours first; the line after it reads OpenTelemetry's context (no request gives it ids),
    // first used after ours, so destroyed before ours logs.
    let lines = common::lines_of_an_ending_thread(|| {
        LOGS_ON_DROP.with(|_| {});
        tracing::info!("thread started");
    });
    let messages: Vec<_> = lines.iter().map(|l| l["message"].clone()).collect();
    assert_eq!(messages, ["thread started", "connection pool closed"]);
    assert_eq!(lines[1]["data"]["pool"], "db");
}
