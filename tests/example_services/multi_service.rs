//! `examples/multi_service`: one request id and one trace through the api, the worker and the
//! job; a worker failure back to the client as an envelope.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{PATIENCE, Service, metric, send};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn start() -> Service {
    Service::start(
        "multi_service",
        &[
            ("PORT_API", "0"),
            ("PORT_WORKER", "0"),
            ("SHUTDOWN_DRAIN_S", "0.2"),
        ],
    )
}

fn from(lines: &[Value], component: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|line| {
            line["target"]
                .as_str()
                .is_some_and(|target| target.ends_with(&format!("::{component}")))
        })
        .cloned()
        .collect()
}

fn access(lines: &[Value], route: &str) -> Value {
    lines
        .iter()
        .find(|line| line["target"] == "periscope::access" && line["data"]["route"] == route)
        .cloned()
        .unwrap_or_else(|| panic!("no access line for {route}: {lines:#?}"))
}

#[tokio::test]
async fn one_request_id_and_trace_through_the_api_the_worker_and_the_job() {
    let service = start();
    let api = service.addr("api").await;
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let answer = send(
        api,
        "POST",
        "/v1/tasks",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "ms-request-1"),
            ("traceparent", &traceparent),
        ],
        r#"{"text":"one request through thrée plâces"}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.request_id(), "ms-request-1");
    let body = answer.json();
    assert_eq!(body["request_id"], "ms-request-1");
    assert_eq!(body["result"]["words"], 5);
    let job_id = body["job_id"].as_str().unwrap().to_owned();

    let done = service
        .wait_for_line("job done", |line| {
            line["message"] == "job done" && line["job_id"] == job_id.as_str()
        })
        .await;
    assert_eq!(done["data"]["words"], 5);

    let lines = service.lines_of("ms-request-1", 2).await;
    let api_lines = from(&lines, "api");
    let worker_lines = from(&lines, "worker");
    let job_lines = from(&lines, "jobs");
    // `chars` counts characters, not the bytes of their UTF-8.
    let chars = "one request through thrée plâces".chars().count();
    let received = api_lines.iter().find(|l| l["message"] == "task received");
    assert_eq!(received.unwrap()["data"]["chars"], chars, "{api_lines:#?}");
    let processing = worker_lines.iter().find(|l| l["message"] == "processing");
    assert_eq!(
        processing.unwrap()["data"]["chars"],
        chars,
        "{worker_lines:#?}"
    );
    for message in ["job enqueued", "job started", "job done"] {
        assert!(
            job_lines.iter().any(|l| l["message"] == message),
            "{message}: {job_lines:#?}"
        );
    }
    let api_access = access(&lines, "/v1/tasks");
    let worker_access = access(&lines, "/v1/process");

    // One trace: the client's; each service its own span in it; the job its own too.
    for line in &lines {
        assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    }
    assert_ne!(api_access["span_id"], worker_access["span_id"]);
    assert_eq!(worker_lines[0]["span_id"], worker_access["span_id"]);
    let job_span = job_lines
        .iter()
        .find(|l| l["message"] == "job done")
        .unwrap()["span_id"]
        .clone();
    assert_ne!(job_span, api_access["span_id"]);
    assert_ne!(job_span, worker_access["span_id"]);
    assert!(
        job_lines
            .iter()
            .filter(|l| l["span"] == "job")
            .all(|l| l["job_id"] == job_id.as_str() && l["job_name"] == "index_text")
    );

    // Both services' requests are counted.
    for route in ["/v1/tasks", "/v1/process"] {
        let labels = [("method", "POST"), ("route", route), ("status", "2xx")];
        assert_eq!(
            metric(api, "http_server_requests_total", &labels).await,
            Some(1.0),
            "{route}"
        );
    }
    // And the api's call to the worker, by the worker's address.
    let worker = service.addr("worker").await;
    let port = worker.port().to_string();
    let labels = [
        ("method", "POST"),
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
        ("status", "2xx"),
    ];
    assert_eq!(
        metric(api, "http_client_requests_total", &labels).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_worker_failure_reaches_the_client_as_an_envelope_with_its_request_id() {
    let service = start();
    let api = service.addr("api").await;
    let answer = send(
        api,
        "POST",
        "/v1/tasks",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "ms-fail-1"),
        ],
        r#"{"text":"this one fails","fail":true}"#,
    )
    .await;
    let error = answer.envelope(502, "upstream_error");
    assert_eq!(error["request_id"], "ms-fail-1");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["details"]["upstream"], "worker");
    assert_eq!(error["details"]["upstream_status"], 500);
    assert_eq!(error["details"]["upstream_code"], "internal_error");
    // The cause stays in the worker's log, never in the answer.
    assert!(!answer.text().contains("simulated failure"));

    let lines = service.lines_of("ms-fail-1", 2).await;
    let cause = lines
        .iter()
        .find(|l| l.to_string().contains("simulated failure"))
        .unwrap_or_else(|| panic!("the cause is logged with the request id: {lines:#?}"));
    assert_eq!(cause["level"], "error");
    assert_eq!(access(&lines, "/v1/process")["data"]["status"], 500);
    assert_eq!(access(&lines, "/v1/tasks")["data"]["status"], 502);
    assert_eq!(error["trace_id"], cause["trace_id"]);
    // No job for a failed task.
    assert!(from(&lines, "jobs").is_empty(), "{lines:#?}");
}

/// A full job queue refuses a task (503, retryable) before the worker does its work: a client
/// that retries must not have the work done twice.
/// A text the api takes always gets the worker's answer: one whose answer would not fit what
/// the api reads of it is refused up front, as the client's error, before the worker works.
#[tokio::test]
async fn a_text_too_long_is_refused_before_the_worker_is_called() {
    let service = start();
    let api = service.addr("api").await;
    let task = |text: &str| serde_json::json!({ "text": text }).to_string();
    let post = async |body: String| {
        send(
            api,
            "POST",
            "/v1/tasks",
            &[("content-type", "application/json")],
            body,
        )
        .await
    };

    // 1.5 MB: within the api's JSON body limit, and the worker's answer is as long.
    let answer = post(task(&"word ".repeat(300_000))).await;
    let error = answer.envelope(422, "validation_error");
    assert_eq!(error["retryable"], false, "{error}");
    assert_eq!(error["violations"][0]["field"], "text", "{error}");
    assert_eq!(
        metric(api, "http_client_requests_total", &[]).await,
        None,
        "the worker is not called"
    );

    // At the limit, in letters whose upper case is three times longer: answered.
    let longest = "ΐ".repeat(32 * 1024);
    let answer = post(task(&longest)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["result"]["upper"], longest.to_uppercase());
}

#[tokio::test]
async fn a_full_queue_refuses_a_task_before_the_worker_does_the_work() {
    let service = start();
    let api = service.addr("api").await;
    let worker = service.addr("worker").await;
    // More at once than the queue (64 jobs, 10 ms each) can take.
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(send(
                api,
                "POST",
                "/v1/tasks",
                &[("content-type", "application/json")],
                r#"{"text":"one of many"}"#,
            ))
        })
        .collect();
    let (mut accepted, mut refused) = (0.0, 0);
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            200 => accepted += 1.0,
            _ => {
                let error = answer.envelope(503, "service_unavailable");
                assert_eq!(error["retryable"], true);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the queue never filled: nothing tested");
    // The worker processed exactly the accepted tasks.
    let processed = [("route", "/v1/process"), ("status", "2xx")];
    assert_eq!(
        metric(worker, "http_server_requests_total", &processed).await,
        Some(accepted)
    );
}

#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn a_task_in_flight_at_shutdown_still_reaches_the_worker() {
    let mut service = start();
    let api = service.addr("api").await;

    // A task whose body is still arriving when SIGTERM comes.
    let body = r#"{"text":"sent across the shutdown"}"#;
    let mut stream = TcpStream::connect(api).await.unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
         x-request-id: ms-inflight-1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..5]).await.unwrap();
    let started = tokio::time::Instant::now();
    terminate_with_a_task_in_flight(&service, api).await;

    // The rest once the api has stopped accepting: the worker must still answer it.
    while TcpStream::connect(api).await.is_ok() {
        assert!(
            started.elapsed() < PATIENCE,
            "the api never stopped accepting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the answer")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    let answer: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(answer["result"]["words"], 4, "{answer}");
    let job_id = answer["job_id"].as_str().unwrap().to_owned();

    // The job queued on the way out is done before the process exits.
    let status = service.exit_status().await;
    assert!(status.success(), "{status}");
    assert!(
        service
            .log_lines()
            .iter()
            .any(|line| { line["message"] == "job done" && line["job_id"] == job_id.as_str() })
    );
}

/// A task waiting on a slow worker when SIGTERM comes still gets its answer: the api's shutdown
/// waits as long as `WORKER_TIMEOUT_S` allows a worker call, past the default 10 s.
#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn a_task_waiting_on_a_slow_worker_at_shutdown_still_gets_its_answer() {
    let worker_url = worker_answering_after(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"words\":2}",
        std::time::Duration::from_secs(11),
    )
    .await;
    let mut service = Service::start(
        "multi_service",
        &[
            ("PORT_API", "0"),
            ("PORT_WORKER", "0"),
            ("WORKER_URL", worker_url.as_str()),
            ("WORKER_TIMEOUT_S", "13"),
            ("SHUTDOWN_DRAIN_S", "0"),
        ],
    );
    let api = service.addr("api").await;
    let body = r#"{"text":"slow work"}"#;
    let mut stream = TcpStream::connect(api).await.unwrap();
    let request = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
         x-request-id: ms-slow-1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    terminate_with_a_task_in_flight(&service, api).await;
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the answer")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    let status = service.exit_status().await;
    assert!(status.success(), "{status}");
}

/// Sends SIGTERM once the api has a task in flight.
#[cfg(unix)]
async fn terminate_with_a_task_in_flight(service: &Service, api: std::net::SocketAddr) {
    let in_flight = [("method", "POST"), ("route", "/v1/tasks")];
    let started = tokio::time::Instant::now();
    while metric(api, "http_server_requests_in_flight", &in_flight).await != Some(1.0) {
        assert!(started.elapsed() < PATIENCE, "the task never got in flight");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    service.terminate();
}

/// A port already taken stops the service naming the variable to change, for either listener.
#[tokio::test]
async fn a_listener_that_cannot_bind_fails_naming_the_variable_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (variable, other) in [("PORT_API", "PORT_WORKER"), ("PORT_WORKER", "PORT_API")] {
        let mut service =
            Service::start("multi_service", &[(variable, port.as_str()), (other, "0")]);
        let status = service.exit_status().await;
        assert_eq!(status.code(), Some(1), "{variable}");
        let stderr = service.stderr();
        let expected = format!("set {variable} to a free port");
        assert!(
            stderr.contains("cannot listen on") && stderr.contains(&expected),
            "{variable}: {stderr}"
        );
    }
    drop(taken);
}

/// A worker on 127.0.0.1 that answers every request with `answer` (raw HTTP/1.1), then keeps
/// the connection open without another word.
async fn misbehaving_worker(answer: &'static str) -> String {
    worker_answering_after(answer, std::time::Duration::ZERO).await
}

/// [`misbehaving_worker`], answering each request `delay` after it came.
async fn worker_answering_after(answer: &'static str, delay: std::time::Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0; 4096];
                if stream.read(&mut request).await.unwrap_or(0) > 0 {
                    tokio::time::sleep(delay).await;
                    let _ = stream.write_all(answer.as_bytes()).await;
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    url
}

/// Starts the example with its api calling `worker_url`, waiting at most 0.5 s for it.
fn start_with_worker(worker_url: &str) -> Service {
    Service::start(
        "multi_service",
        &[
            ("PORT_API", "0"),
            ("PORT_WORKER", "0"),
            ("WORKER_URL", worker_url),
            ("WORKER_TIMEOUT_S", "0.5"),
        ],
    )
}

async fn post_task(service: &Service, request_id: &str) -> crate::support::Answer {
    send(
        service.addr("api").await,
        "POST",
        "/v1/tasks",
        &[
            ("content-type", "application/json"),
            ("x-request-id", request_id),
        ],
        r#"{"text":"hello"}"#,
    )
    .await
}

/// A worker that sends its head and then stalls is a timeout too: `WORKER_TIMEOUT_S` bounds
/// the whole answer, not only its head.
#[tokio::test]
async fn a_worker_stalling_after_its_head_is_a_timeout() {
    let worker = misbehaving_worker(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"result\":",
    )
    .await;
    let service = start_with_worker(&worker);
    let started = std::time::Instant::now();
    let answer = post_task(&service, "ms-stall-1").await;
    let error = answer.envelope(504, "timeout");
    assert_eq!(error["details"]["upstream"], "worker");
    assert!(started.elapsed() < PATIENCE / 2, "{:?}", started.elapsed());
}

/// A successful answer the api cannot use is the worker's fault (502), not the api's (500).
#[tokio::test]
async fn a_worker_answer_that_is_not_json_is_an_upstream_error() {
    let worker = misbehaving_worker(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\nnot json",
    )
    .await;
    let service = start_with_worker(&worker);
    let answer = post_task(&service, "ms-garbled-1").await;
    let error = answer.envelope(502, "upstream_error");
    assert_eq!(error["details"]["upstream"], "worker");
    // The parse error stays in the log, with the request id.
    assert!(!answer.text().contains("expected"), "{}", answer.text());
    let lines = service.lines_of("ms-garbled-1", 1).await;
    assert!(
        lines
            .iter()
            .any(|l| l.to_string().contains("expected ident")),
        "{lines:#?}"
    );
}

/// A worker that refuses the request (4xx) would refuse it again: the api's 502 is retryable
/// only where the worker's answer is, and carries the delay the worker asks for.
#[tokio::test]
async fn a_worker_refusal_is_retryable_only_where_the_worker_says_so() {
    let refused = misbehaving_worker(concat!(
        "HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\n",
        "content-length: 70\r\n\r\n",
        r#"{"error":{"code":"validation_error","message":"no","retryable":false}}"#,
    ))
    .await;
    let service = start_with_worker(&refused);
    let answer = post_task(&service, "ms-refused-1").await;
    let error = answer.envelope(502, "upstream_error");
    assert_eq!(error["details"]["upstream_status"], 422);
    assert_eq!(error["retryable"], false, "{error}");
    assert!(
        !error["help"].as_str().unwrap().contains("Retry"),
        "{error}"
    );

    let limited = misbehaving_worker(concat!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n",
        "retry-after: 7\r\ncontent-length: 90\r\n\r\n",
        r#"{"error":{"code":"rate_limited","message":"slow down","retryable":true,"retry_after_s":7}}"#,
    ))
    .await;
    let service = start_with_worker(&limited);
    let answer = post_task(&service, "ms-limited-1").await;
    let error = answer.envelope(502, "upstream_error");
    assert_eq!(error["details"]["upstream_status"], 429);
    assert_eq!(error["retryable"], true, "{error}");
    assert_eq!(error["retry_after_s"], 7, "{error}");
}

/// A worker that redirects the call (a move the api's configuration missed) is a 502 that is
/// not retryable, as the same call would be redirected again; where it points, an address of
/// the worker's, stays in the api's log, out of the answer.
#[tokio::test]
async fn a_worker_redirect_is_an_upstream_error_not_retried_and_its_location_stays_in_the_log() {
    let moved = misbehaving_worker(concat!(
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: http://10.1.2.3:8081/v2/process\r\n",
        "content-type: text/html\r\ncontent-length: 13\r\n\r\n<a>moved</a>\n",
    ))
    .await;
    let service = start_with_worker(&moved);
    let answer = post_task(&service, "ms-moved-1").await;
    let error = answer.envelope(502, "upstream_error");
    assert_eq!(error["details"]["upstream_status"], 308, "{error}");
    assert_eq!(
        error["details"]["upstream_code"], "invalid_request",
        "{error}"
    );
    assert_eq!(error["retryable"], false, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("redirected"), "{message}");
    assert!(!answer.text().contains("10.1.2.3"), "{}", answer.text());
    let lines = service.lines_of("ms-moved-1", 1).await;
    let warned = lines
        .iter()
        .find(|l| l["message"] == "the worker failed")
        .unwrap_or_else(|| panic!("the worker's redirect is logged: {lines:#?}"));
    let logged = warned["data"]["upstream_message"].as_str().unwrap();
    assert!(
        logged.contains("redirected to http://10.1.2.3:8081/v2/process"),
        "{warned}"
    );
}

/// A worker URL the api cannot call stops the service at startup, naming the variable.
#[tokio::test]
async fn a_worker_url_that_is_not_plain_http_fails_naming_the_variable() {
    for url in [
        "https://worker:8443",
        "http://worker:8002/v1",
        "worker:8002",
        "http://",
    ] {
        let mut service = start_with_worker(url);
        assert_eq!(service.exit_status().await.code(), Some(1), "{url}");
        let stderr = service.stderr();
        assert!(
            stderr.contains("WORKER_URL=") && stderr.contains("http:// URL"),
            "{url}: {stderr}"
        );
    }
}
