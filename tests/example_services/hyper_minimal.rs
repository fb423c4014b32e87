//! `examples/hyper_minimal`: the same stack on plain hyper and Tower.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{PATIENCE, Service, get, metric, send, wait_for_status};
use periscope::DEFAULT_HEADER_READ_TIMEOUT as HEADER_READ_TIMEOUT;

#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn the_stack_works_without_axum() {
    let mut service = Service::start("hyper_minimal", &[("PORT", "0"), ("SHUTDOWN_DRAIN_S", "2")]);
    let addr = service.addr("http").await;

    let hello = send(addr, "GET", "/hello/world", &[("x-request-id", "hm-1")], "").await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.text(), "hello, world\n");
    assert_eq!(hello.request_id(), "hm-1");

    let long = format!("/hello/{}", "x".repeat(65));
    let error = get(addr, &long).await.envelope(422, "validation_error");
    assert_eq!(error["violations"][0]["field"], "name");
    // The path parameter is percent-decoded; 64 characters, not bytes.
    let encoded = get(addr, "/hello/J%C3%BCrgen%20M").await;
    assert_eq!(encoded.text(), "hello, Jürgen M\n");
    assert_eq!(
        get(addr, &format!("/hello/{}", "%C3%BC".repeat(64)))
            .await
            .status,
        200
    );
    let error = get(addr, "/hello/%FF")
        .await
        .envelope(422, "validation_error");
    assert_eq!(error["violations"][0]["reason"], "utf8", "{error}");
    // The service's own 404, not the admin surface's (which would list its paths): also under
    // `/debug/` while debug access is off (no `ADMIN_TOKEN`), as an axum app's router has it.
    for path in ["/no/such/path", "/debug/status", "/debug/anything"] {
        let error = get(addr, path).await.envelope(404, "route_not_found");
        assert_eq!(
            error["message"],
            format!("No route matches GET {path}"),
            "{error}"
        );
        assert!(
            error
                .get("help")
                .is_none_or(|help| !help.to_string().contains("/metrics")),
            "{error}"
        );
    }
    // HEAD answers like GET without the body, as HTTP requires of a GET resource.
    let head = send(
        addr,
        "HEAD",
        "/hello/world",
        &[("x-request-id", "hm-head")],
        "",
    )
    .await;
    assert_eq!(head.status, 200);
    // hyper sends no body for a HEAD whatever the service gives it: the length is what counts.
    assert_eq!(head.headers["content-length"], "13");
    assert_eq!(head.request_id(), "hm-head");
    // Only GET and HEAD, and only one path segment, is `/hello/{name}`.
    let post = send(addr, "POST", "/hello/world", &[], "").await;
    assert_eq!(post.headers["allow"], "GET, HEAD");
    post.envelope(405, "method_not_allowed");
    get(addr, "/hello/a/b")
        .await
        .envelope(404, "route_not_found");
    send(addr, "POST", "/hello/a/b", &[], "")
        .await
        .envelope(404, "route_not_found");
    // An empty segment is no name: the route templates do not match it either.
    get(addr, "/hello/").await.envelope(404, "route_not_found");
    assert_eq!(get(addr, "/ready").await.status, 200);

    // Route templates stand in for a router's matched path.
    for (status, count) in [("2xx", 3.0), ("4xx", 2.0)] {
        let labels = [
            ("method", "GET"),
            ("route", "/hello/{name}"),
            ("status", status),
        ];
        assert_eq!(
            metric(addr, "http_server_requests_total", &labels).await,
            Some(count),
            "{status}"
        );
    }
    // `/debug/status` is counted under its own route, one of the admin paths the facade
    // declares as route templates.
    for (method, count) in [("GET", 4.0), ("POST", 1.0)] {
        let unmatched = [
            ("method", method),
            ("route", "__unmatched__"),
            ("status", "4xx"),
        ];
        assert_eq!(
            metric(addr, "http_server_requests_total", &unmatched).await,
            Some(count),
            "{method}"
        );
    }

    let lines = service.lines_of("hm-1", 1).await;
    let greeting = lines
        .iter()
        .find(|l| l["message"] == "greeting")
        .expect("the handler's line");
    let access = lines
        .iter()
        .find(|l| l["target"] == "periscope::access")
        .expect("the access line");
    assert_eq!(access["data"]["path"], "/hello/world");
    // Without a router, the declared template names the route on the access line too.
    assert_eq!(access["data"]["route"], "/hello/{name}");
    assert_eq!(access["data"]["status"], 200);
    assert_eq!(greeting["trace_id"], access["trace_id"]);

    // SIGTERM: draining, then a clean exit.
    service.terminate();
    let draining = wait_for_status(addr, "/ready", 503).await;
    assert_eq!(draining.json()["status"], "draining");
    let status = service.exit_status().await;
    assert!(status.success(), "{status}");
    assert_eq!(service.log_lines().last().unwrap()["message"], "stopped");
}

#[tokio::test]
async fn a_request_head_never_finished_does_not_hold_the_connection() {
    let service = Service::start("hyper_minimal", &[("PORT", "0")]);
    let addr = service.addr("http").await;

    // Slowloris: half a request head, then silence. Such connections, held forever, run the
    // service out of file descriptors and keep a SIGTERM from ever finishing.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /hello/world HTTP/1.1\r\nhost: hyper\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let closed =
        tokio::time::timeout(HEADER_READ_TIMEOUT + PATIENCE, stream.read_to_end(&mut raw)).await;
    assert!(closed.is_ok(), "the connection is still open");
    assert!(!String::from_utf8_lossy(&raw).contains("hello, world"));
    assert_eq!(get(addr, "/health").await.status, 200);
}

/// A port already taken stops the service naming the variable to change.
#[tokio::test]
async fn a_listener_that_cannot_bind_fails_naming_the_variable_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut service = Service::start("hyper_minimal", &[("PORT", port.as_str())]);
    let status = service.exit_status().await;
    assert_eq!(status.code(), Some(1));
    let stderr = service.stderr();
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("set PORT to a free port"),
        "{stderr}"
    );
    drop(taken);
}
