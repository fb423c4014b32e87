//! Lines logged while a thread ends, from thread-local destructors. In its own file: it needs
//! the global default subscriber, the only one a dying thread's destructors still reach.

mod common;
/// Logs when the thread that holds it ends.
struct LogsOnDrop;

impl Drop for LogsOnDrop {
    fn drop(&mut self) {
        let span = tracing::info_span!("teardown", request_id = "req_exit");
        let _entered = span.enter();
        tracing::info!(pool = "db", "connection pool closed");
    }
}

thread_local! {
    static LOGS_ON_DROP: LogsOnDrop = const { LogsOnDrop };
}

#[test]
fn a_line_logged_from_a_thread_local_destructor_is_written() {
    // Destructors run in reverse order of registration: the registry's thread id first (so it
    // outlives ours), then ours, then the layer's buffers (destroyed before ours runs).
    let lines = common::lines_of_an_ending_thread(|| {
        LOGS_ON_DROP.with(|_| {});
        tracing::info!("thread started");
    });
    let messages: Vec<_> = lines.iter().map(|l| l["message"].clone()).collect();
    assert_eq!(messages, ["thread started", "connection pool closed"]);
    assert_eq!(lines[1]["request_id"], "req_exit");
    assert_eq!(lines[1]["data"]["pool"], "db");
}
