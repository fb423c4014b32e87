//! `examples/inference_gateway`, the template service.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Service, get, jpeg, metric, png, send, wait_for_status};

const TOKEN: &str = "a-test-admin-token-0123456789";

fn start(env: &[(&str, &str)]) -> Service {
    let mut all = vec![("PORT", "0"), ("SHUTDOWN_DRAIN_S", "0.2")];
    all.extend_from_slice(env);
    Service::start("inference_gateway", &all)
}

/// A multipart form with one field; `file`: a file field, named `x.jpg`.
fn multipart(field: &str, file: bool, content: &[u8]) -> (String, Vec<u8>) {
    form(&[(field, file, content)])
}

/// A multipart form with these fields, in order: name, whether it is a file, content.
fn form(fields: &[(&str, bool, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "periscope-test-boundary";
    let mut body = Vec::new();
    for (field, file, content) in fields {
        let file_name = if *file { "; filename=\"x.jpg\"" } else { "" };
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{field}\"{file_name}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn is_hex(value: &Value, len: usize) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn predicts_images_with_ids_in_logs_and_counts_in_metrics() {
    let service = start(&[]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;

    // A raw PNG body, with the client's request id.
    let red = send(
        addr,
        "POST",
        "/predict",
        &[("content-type", "image/png"), ("x-request-id", "gw-red-1")],
        png(64, 48, [220, 20, 25]),
    )
    .await;
    assert_eq!(red.status, 200, "{}", red.text());
    assert_eq!(red.request_id(), "gw-red-1");
    let answer = red.json();
    assert_eq!(answer["label"], "red");
    assert!(answer["confidence"].as_f64().unwrap() > 0.5, "{answer}");
    assert_eq!(answer["request_id"], "gw-red-1");
    assert_eq!(answer["model"]["name"], "color-classifier");

    // A JPEG as the `image` field of a multipart form; a generated request id.
    let (content_type, body) = multipart("image", true, &jpeg(32, 32, [20, 50, 210]));
    let blue = send(
        addr,
        "POST",
        "/predict",
        &[("content-type", &content_type)],
        body,
    )
    .await;
    assert_eq!(blue.status, 200, "{}", blue.text());
    assert_eq!(blue.json()["label"], "blue");
    assert_eq!(blue.json()["request_id"], blue.request_id());
    assert!(blue.request_id().starts_with("req_"));

    // Media types are case-insensitive: this is a form too, not a raw body.
    let (content_type, body) = multipart("image", true, &png(16, 16, [30, 170, 45]));
    let content_type = content_type.replace("multipart/form-data", "Multipart/Form-Data");
    let green = send(
        addr,
        "POST",
        "/predict",
        &[("content-type", &content_type)],
        body,
    )
    .await;
    assert_eq!(green.status, 200, "{}", green.text());
    assert_eq!(green.json()["label"], "green");

    let models = get(addr, "/v1/models").await;
    assert_eq!(models.status, 200);
    let model = &models.json()["models"][0];
    assert_eq!(model["loaded"], true);
    assert!(model["labels"].as_array().unwrap().contains(&"red".into()));

    // /metrics counts the requests, the predictions by label and the forward passes.
    let predict_ok = [("method", "POST"), ("route", "/predict"), ("status", "2xx")];
    assert_eq!(
        metric(addr, "http_server_requests_total", &predict_ok).await,
        Some(3.0)
    );
    for label in ["red", "blue", "green"] {
        assert_eq!(
            metric(addr, "model_predictions_total", &[("label", label)]).await,
            Some(1.0),
            "{label}"
        );
    }
    assert_eq!(
        metric(
            addr,
            "model_inference_duration_seconds",
            &[("model", "color-classifier")]
        )
        .await,
        Some(3.0)
    );
    // Its bounds read as written, so a query for `le="0.00015"` matches.
    let exposition = get(addr, "/metrics").await.text();
    let bounds: Vec<&str> = exposition
        .lines()
        .filter(|line| line.starts_with("model_inference_duration_seconds_bucket"))
        .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        bounds,
        [
            "0.00005", "0.00015", "0.0005", "0.0015", "0.005", "0.015", "0.05", "0.15", "0.5",
            "1.5", "5.0", "+Inf"
        ],
        "{exposition}"
    );

    // The log: every line parses; the request's lines carry its ids.
    let lines = service.lines_of("gw-red-1", 1).await;
    let prediction = lines
        .iter()
        .find(|line| line["message"] == "prediction")
        .unwrap_or_else(|| panic!("no prediction line: {lines:#?}"));
    assert_eq!(prediction["data"]["label"], "red");
    assert_eq!(prediction["span"], "postprocess");
    let access = lines
        .iter()
        .find(|line| line["target"] == "periscope::access")
        .unwrap_or_else(|| panic!("no access line: {lines:#?}"));
    assert_eq!(access["data"]["status"], 200);
    assert_eq!(access["data"]["route"], "/predict");
    for line in &lines {
        assert_eq!(line["service"], "inference-gateway");
        assert!(is_hex(&line["trace_id"], 32), "{line}");
        assert!(is_hex(&line["span_id"], 16), "{line}");
        assert_eq!(line["trace_id"], access["trace_id"], "{line}");
    }
    assert!(service.log_lines().iter().all(|line| {
        line["timestamp"].is_string() && line["level"].is_string() && line["message"].is_string()
    }));
}

#[tokio::test]
async fn bad_input_gets_an_envelope() {
    let service = start(&[]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;

    let text = send(addr, "POST", "/predict", &[], "not an image").await;
    text.envelope(400, "invalid_image");

    let mut truncated = png(64, 64, [1, 2, 3]);
    truncated.truncate(60);
    let broken = send(addr, "POST", "/predict", &[], truncated).await;
    let error = broken.envelope(400, "invalid_image");
    assert_eq!(error["details"]["format"], "png", "{error}");

    send(addr, "POST", "/predict", &[], "")
        .await
        .envelope(400, "invalid_image");
    let (content_type, body) = multipart("comment", false, b"a form without the image");
    let no_image = send(
        addr,
        "POST",
        "/predict",
        &[("content-type", &content_type)],
        body,
    )
    .await;
    let error = no_image.envelope(400, "invalid_image");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no `image` field"),
        "{error}"
    );

    // Over 10 MiB, declared up front: refused before the body is sent (curl sends
    // `Expect: 100-continue` for large uploads and waits for the answer).
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /predict HTTP/1.1\r\nhost: gateway\r\ncontent-type: image/png\r\n\
                content-length: 10485761\r\nexpect: 100-continue\r\nx-request-id: too-big-1\r\n\
                connection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(crate::support::PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the 413 answer")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 413 "), "{raw}");
    assert!(!raw.contains("100 Continue"), "{raw}");
    let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(body["error"]["request_id"], "too-big-1");
    assert_eq!(body["error"]["details"]["limit_bytes"], 10 * 1024 * 1024);

    let refused = [("method", "POST"), ("route", "/predict"), ("status", "4xx")];
    assert_eq!(
        metric(addr, "http_server_requests_total", &refused).await,
        Some(5.0)
    );
    assert_eq!(metric(addr, "model_predictions_total", &[]).await, None);
    let access = service
        .wait_for_line("for the 413", |line| {
            line["request_id"] == "too-big-1" && line["target"] == "periscope::access"
        })
        .await;
    assert_eq!(access["data"]["status"], 413);
}

/// A form's `image` field is the image, wherever it is in the form; without one, the first
/// file is (the form a client sends with `curl -F photo=@x.jpg`).
#[tokio::test]
async fn a_form_s_image_field_wins_over_the_files_before_it() {
    let service = start(&[]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;
    let post_form = async |fields: &[(&str, bool, &[u8])]| {
        let (content_type, body) = form(fields);
        send(
            addr,
            "POST",
            "/predict",
            &[("content-type", &content_type)],
            body,
        )
        .await
    };

    let red = png(16, 16, [220, 20, 25]);
    let notes: &[u8] = b"taken at noon, no filter";
    let answer = post_form(&[("notes", true, notes), ("image", true, &red)]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["label"], "red");
    let answer = post_form(&[("caption", false, notes), ("image", false, &red)]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["label"], "red");

    // No `image` field: the first file, wherever it is.
    let blue = jpeg(16, 16, [20, 50, 210]);
    let answer = post_form(&[("caption", false, notes), ("photo", true, &blue)]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["label"], "blue");
}

#[tokio::test]
async fn bodies_in_memory_are_bounded_by_the_upload_buffer() {
    // Room for one whole body: a slow upload of 10 MiB holds all of it.
    let service = start(&[("UPLOAD_BUFFER_MIB", "10")]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;

    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /predict HTTP/1.1\r\nhost: gateway\r\ncontent-type: image/png\r\n\
                content-length: 10485760\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0; 4096]).await.unwrap();
    // The slow upload is taken first: in flight, it holds the buffer.
    let predicting = [("method", "POST"), ("route", "/predict")];
    let in_flight = || metric(addr, "http_server_requests_in_flight", &predicting);
    wait_until_in_flight(&in_flight, 1.0).await;

    // A small image waits for the memory, unread, instead of being buffered beside it.
    let waiting = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/predict",
            &[("content-type", "image/png")],
            png(8, 8, [220, 20, 25]),
        )
        .await
    });
    // In flight beside the slow one (so it surely came), and still unanswered a while later.
    wait_until_in_flight(&in_flight, 2.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered while the buffer was full");

    // The slow client gives up: its share is freed and the waiting image is served.
    drop(slow);
    let answer = tokio::time::timeout(crate::support::PATIENCE, waiting)
        .await
        .expect("served once the buffer had room")
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// Waits (for the support's patience at most) until `in_flight` reads `count`.
async fn wait_until_in_flight<F, Fut>(in_flight: &F, count: f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<f64>>,
{
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while in_flight().await != Some(count) {
        assert!(
            std::time::Instant::now() < deadline,
            "never {count} in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An upload that stalls, or trickles, is answered 408 `upload_stalled` and gives its share of
/// the upload buffer back: a few clients announcing 10 MiB and sending nothing more held the
/// whole buffer until the request timeout, and every honest upload waited behind them.
#[tokio::test]
async fn a_stalled_or_trickling_upload_gives_its_share_back() {
    use tokio::io::AsyncReadExt;

    let service = start(&[("UPLOAD_BUFFER_MIB", "10"), ("UPLOAD_IDLE_S", "1")]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;
    let head = |content_type: &str, chunked: bool| {
        let length = if chunked {
            "transfer-encoding: chunked"
        } else {
            "content-length: 10485760"
        };
        format!(
            "POST /predict HTTP/1.1\r\nhost: gateway\r\ncontent-type: {content_type}\r\n\
             {length}\r\nconnection: close\r\n\r\n"
        )
    };
    let form = "multipart/form-data; boundary=b";
    // A chunk of `bytes` as chunked transfer coding frames it.
    let framed = |chunked: bool, bytes: Vec<u8>| {
        if !chunked {
            return bytes;
        }
        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
        chunk.extend(bytes);
        chunk.extend(b"\r\n");
        chunk
    };

    // Stalled: 4 KiB, then nothing. Trickling: a byte every 200 ms, under 16 KiB/s; or
    // 20 KiB/s, over that floor but far under the pace 10 MiB needs to arrive within the
    // request timeout, with its length declared or not (chunked: it holds a share of 10 MiB
    // all the same). A form's field stalls alike.
    for (content_type, trickle, chunked) in [
        ("image/png", 0, false),
        ("image/png", 1, false),
        ("image/png", 2048, false),
        ("image/png", 2048, true),
        (form, 0, false),
    ] {
        let head = head(content_type, chunked);
        let first: Vec<u8> = if content_type == form {
            let mut part = b"--b\r\ncontent-disposition: form-data; name=\"image\"; \
                             filename=\"a.png\"\r\ncontent-type: image/png\r\n\r\n"
                .to_vec();
            part.resize(4096, 0);
            part
        } else {
            vec![0; 4096]
        };
        let started = std::time::Instant::now();
        let mut upload = tokio::net::TcpStream::connect(addr).await.unwrap();
        upload.write_all(head.as_bytes()).await.unwrap();
        upload.write_all(&framed(chunked, first)).await.unwrap();
        let (mut reader, mut writer) = upload.into_split();
        let dripping = tokio::spawn(async move {
            let (chunk, every) = if trickle == 1 {
                (1, 200)
            } else {
                (trickle, 100)
            };
            while trickle > 0
                && writer
                    .write_all(&framed(chunked, vec![0; chunk]))
                    .await
                    .is_ok()
            {
                tokio::time::sleep(std::time::Duration::from_millis(every)).await;
            }
            writer
        });
        let mut answer = Vec::new();
        tokio::time::timeout(crate::support::PATIENCE, reader.read_to_end(&mut answer))
            .await
            .expect("answered")
            .ok();
        dripping.abort();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"upload_stalled\""), "{answer}");
        // Cut by its pace, well before the 30 s request timeout.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{content_type} {trickle} chunked: {chunked}"
        );
    }

    // The buffer is free again: an image is served at once.
    let answer = send(
        addr,
        "POST",
        "/predict",
        &[("content-type", "image/png")],
        png(8, 8, [220, 20, 25]),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// An upload the client stops sending (4 KiB of a declared 10 MiB, then its write side
/// closed) is answered 400 `request_body_incomplete`, not `invalid_request`: the request was
/// not malformed, the client went away. A closed connection and a reset one are logged alike.
#[tokio::test]
async fn an_upload_the_client_stops_sending_is_not_a_malformed_request() {
    let service = start(&[]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;
    for how in ["half-close", "close", "reset"] {
        let mut upload = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /predict HTTP/1.1\r\nhost: gateway\r\ncontent-type: image/png\r\n\
             content-length: 10485760\r\nx-request-id: cut-{how}\r\n\r\n"
        );
        upload.write_all(head.as_bytes()).await.unwrap();
        upload.write_all(&[0; 4096]).await.unwrap();
        match how {
            "half-close" => {
                upload.shutdown().await.unwrap();
                let mut answer = Vec::new();
                upload.read_to_end(&mut answer).await.unwrap();
                let answer = String::from_utf8_lossy(&answer);
                assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
                assert!(
                    answer.contains("\"code\":\"request_body_incomplete\""),
                    "{answer}"
                );
            }
            "close" => drop(upload),
            _ => {
                // A zero linger: the close sends RST, as a crashed client's kernel does.
                upload.set_zero_linger().unwrap();
                drop(upload);
            }
        }
        let lines = service.lines_of(&format!("cut-{how}"), 1).await;
        let access = lines
            .iter()
            .find(|line| line["target"] == "periscope::access")
            .unwrap();
        assert_eq!(access["data"]["status"], 400, "{how}: {access}");
        assert_eq!(
            access["data"]["error_code"], "request_body_incomplete",
            "{how}: {access}"
        );
    }
    // A body that is complete but not an image is still the client's mistake.
    let answer = send(
        addr,
        "POST",
        "/predict",
        &[("content-type", "image/png")],
        b"not an image".to_vec(),
    )
    .await;
    answer.envelope(400, "invalid_image");
}

#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn ready_waits_for_the_model_and_drains_on_sigterm() {
    // Loading long enough for the first probes to find it loading on a loaded machine.
    let mut service = start(&[("MODEL_LOAD_DELAY_MS", "4000"), ("SHUTDOWN_DRAIN_S", "3")]);
    let addr = service.addr("http").await;

    // Loading: not ready, not started, but alive.
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["status"], "starting");
    assert_eq!(
        ready.json()["waiting_for"],
        serde_json::json!(["model_loaded"])
    );
    assert_eq!(get(addr, "/startup").await.status, 503);
    assert_eq!(get(addr, "/health").await.status, 200);

    wait_for_status(addr, "/ready", 200).await;
    assert_eq!(get(addr, "/startup").await.status, 200);
    let loaded = service
        .wait_for_line("model loaded", |line| line["message"] == "model loaded")
        .await;
    assert!(loaded["data"]["duration_ms"].as_u64().unwrap() >= 4000);

    // SIGTERM: readiness drains first, liveness stays up, then the process exits cleanly.
    service.terminate();
    let draining = wait_for_status(addr, "/ready", 503).await;
    assert_eq!(draining.json()["status"], "draining");
    assert_eq!(get(addr, "/health").await.status, 200);
    let status = service.exit_status().await;
    assert!(status.success(), "{status}");
    let lines = service.log_lines();
    let stopping = lines
        .iter()
        .find(|line| line["message"] == "shutting down: /ready answers draining")
        .expect("the shutdown line");
    assert_eq!(stopping["data"]["cause"], "SIGTERM");
    assert_eq!(stopping["target"], "periscope_health::shutdown");
    assert_eq!(lines.last().unwrap()["message"], "stopped");
}

#[tokio::test]
async fn deferred_loading_is_ready_at_once_and_loads_on_first_request() {
    let service = start(&[("MODEL_WARMUP", "false"), ("MODEL_LOAD_DELAY_MS", "300")]);
    let addr = service.addr("http").await;
    assert_eq!(get(addr, "/ready").await.status, 200);
    assert_eq!(
        get(addr, "/v1/models").await.json()["models"][0]["loaded"],
        false
    );

    let answer = send(addr, "POST", "/predict", &[], png(8, 8, [250, 250, 250])).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["label"], "white");
    assert_eq!(
        get(addr, "/v1/models").await.json()["models"][0]["loaded"],
        true
    );
}

#[tokio::test]
async fn a_deferred_load_longer_than_the_request_timeout_still_finishes() {
    let service = start(&[
        ("MODEL_WARMUP", "false"),
        ("MODEL_LOAD_DELAY_MS", "3000"),
        // Room for the second, loaded request on a loaded machine.
        ("REQUEST_TIMEOUT_S", "1"),
    ]);
    let addr = service.addr("http").await;
    let image = || png(8, 8, [250, 250, 250]);
    // The first request gives up waiting, but not the load it started.
    send(addr, "POST", "/predict", &[], image())
        .await
        .envelope(504, "timeout");
    service
        .wait_for_line("model loaded", |line| line["message"] == "model loaded")
        .await;
    let answer = send(addr, "POST", "/predict", &[], image()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let loads = service
        .log_lines()
        .iter()
        .filter(|line| line["message"] == "loading the model")
        .count();
    assert_eq!(loads, 1);
}

#[tokio::test]
async fn debug_endpoints_refuse_a_missing_or_wrong_token() {
    let service = start(&[("ADMIN_TOKEN", TOKEN)]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;

    for path in [
        "/debug/status",
        "/debug/config",
        "/debug/logs",
        "/debug/memory",
    ] {
        get(addr, path).await.envelope(401, "token_missing");
        let wrong = send(
            addr,
            "GET",
            path,
            &[("authorization", "Bearer not-the-admin-token-at-all")],
            "",
        )
        .await;
        wrong.envelope(401, "token_invalid");
        assert!(!wrong.text().contains(TOKEN));
    }

    let bearer = format!("Bearer {TOKEN}");
    let status = send(
        addr,
        "GET",
        "/debug/status",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.text());
    let status = status.json();
    assert_eq!(status["service"], "inference-gateway");
    assert_eq!(status["sections"]["model"]["name"], "color-classifier");
    assert_eq!(status["sections"]["model"]["state"], "loaded");

    let config = send(
        addr,
        "GET",
        "/debug/config",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(config.status, 200);
    assert!(!config.text().contains(TOKEN), "{}", config.text());
    assert_eq!(config.json()["admin_token"], "[REDACTED]");
    // The template bounds every request (and so every share of the upload buffer) by default.
    assert_eq!(config.json()["request_timeout_s"], 30.0);
    // Its own settings beside periscope's.
    assert_eq!(config.json()["gateway"]["upload_buffer_mib"], 64);
    assert_eq!(config.json()["gateway"]["model_warmup"], true);
}

#[tokio::test]
async fn admin_port_serves_the_debug_endpoints_on_loopback_only() {
    let service = start(&[("ADMIN_PORT", "0")]);
    let public = service.addr("http").await;
    let admin = service.addr("admin").await;
    assert!(admin.ip().is_loopback());
    wait_for_status(public, "/ready", 200).await;

    // The public port keeps the probes and /metrics, without any /debug path.
    get(public, "/debug/status")
        .await
        .envelope(404, "route_not_found");
    assert_eq!(get(public, "/metrics").await.status, 200);

    // The admin listener answers the debug endpoints without a token.
    let status = get(admin, "/debug/status").await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["sections"]["model"]["state"], "loaded");
    let logs = get(admin, "/debug/logs?lines=50").await;
    assert_eq!(logs.status, 200);
    assert!(
        logs.json()["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|line| line["message"] == "model loaded")
    );
    assert_eq!(get(admin, "/ready").await.status, 200);
}

/// The admin surface on the service's own port: refused at startup naming both variables, not
/// left to the second bind, whose error blamed another process holding the port.
#[tokio::test]
async fn an_admin_port_equal_to_the_port_is_refused_naming_both() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut service = start(&[("PORT", port.as_str()), ("ADMIN_PORT", port.as_str())]);
    assert_eq!(service.exit_status().await.code(), Some(1));
    let stderr = service.stderr();
    assert!(
        stderr.contains("ADMIN_PORT") && stderr.contains("other than PORT's"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot listen on"), "{stderr}");
}

#[tokio::test]
async fn invalid_configuration_fails_at_startup_naming_the_variable() {
    for (var, value, expected) in [
        ("PORT", "eighty", "a port number"),
        ("MODEL_WARMUP", "maybe", "true or false"),
        ("LOG_FORMAT", "xml", "json or pretty"),
        ("SHUTDOWN_DRAIN_S", "-1", "from 0 to 300"),
        ("SHUTDOWN_DRAIN_S", "nan", "from 0 to 300"),
        ("UPLOAD_BUFFER_MIB", "9", "from 10 to 65536"),
        ("UPLOAD_BUFFER_MIB", "lots", "from 10 to 65536"),
        ("DECODE_MEMORY_MIB", "259", "from 260 to 65536"),
        ("UPLOAD_IDLE_S", "0", "from 1 to 300"),
    ] {
        let mut service = start(&[(var, value)]);
        let status = service.exit_status().await;
        assert_eq!(status.code(), Some(1), "{var}={value}");
        let stderr = service.stderr();
        assert!(
            stderr.contains(var) && stderr.contains(expected),
            "{var}={value}: {stderr}"
        );
        assert!(
            !service
                .log_lines()
                .iter()
                .any(|line| line["message"] == "listening")
        );
    }
}

/// A port already taken (the template still running from the last try, a copy started beside
/// it) or an address this machine does not have stops the service naming the variable to
/// change, at once: before the model's warm-up starts (a real model takes minutes to load).
#[tokio::test]
async fn a_listener_that_cannot_bind_fails_naming_the_variable_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (env, expected) in [
        (("PORT", port.as_str()), "set PORT to a free port"),
        (
            ("ADMIN_PORT", port.as_str()),
            "set ADMIN_PORT to a free port",
        ),
        // TEST-NET-1 (RFC 5737): assigned to no machine.
        (
            ("HOST", "192.0.2.1"),
            "set HOST to an address of this machine",
        ),
    ] {
        for warmup in ["true", "false"] {
            let mut service = start(&[env, ("MODEL_WARMUP", warmup)]);
            let status = service.exit_status().await;
            assert_eq!(status.code(), Some(1), "{env:?}");
            let stderr = service.stderr();
            assert!(
                stderr.contains("cannot listen on") && stderr.contains(expected),
                "{env:?}: {stderr}"
            );
            let model_lines: Vec<_> = service
                .log_lines()
                .into_iter()
                .filter(|line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("model"))
                })
                .collect();
            assert!(
                model_lines.is_empty(),
                "{env:?} MODEL_WARMUP={warmup}: {model_lines:?}"
            );
        }
    }
    drop(taken);
}

/// The listeners are bound (and say so) before the model starts loading, and readiness waits
/// for the model all the same.
#[tokio::test]
async fn the_listeners_are_bound_before_the_model_loads() {
    let service = start(&[("MODEL_LOAD_DELAY_MS", "2000"), ("ADMIN_PORT", "0")]);
    let addr = service.addr("http").await;
    assert_eq!(get(addr, "/ready").await.json()["status"], "starting");
    service
        .wait_for_line("model loaded", |line| line["message"] == "model loaded")
        .await;
    let messages: Vec<String> = service
        .log_lines()
        .iter()
        .filter_map(|line| line["message"].as_str().map(str::to_owned))
        .collect();
    let at = |message: &str| {
        messages
            .iter()
            .position(|m| m == message)
            .unwrap_or_else(|| panic!("no {message:?} line: {messages:?}"))
    };
    let listening: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| *m == "listening")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(listening.len(), 2, "admin and http: {messages:?}");
    let started = at("model warm-up started in the background");
    assert!(listening.iter().all(|&i| i < started), "{messages:?}");
    assert!(started < at("loading the model"), "{messages:?}");
    assert!(at("loading the model") < at("model loaded"));
    assert_eq!(get(addr, "/ready").await.status, 200);
}

#[cfg(unix)] // values that are not UTF-8
#[tokio::test]
async fn a_value_that_is_not_utf8_fails_at_startup_in_every_example() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    // Not UTF-8 is malformed, not unset: the default must not be used silently.
    let bad = OsStr::from_bytes(b"\xff\xfe");
    let zero = OsStr::new("0");
    for (example, var) in [
        ("inference_gateway", "HOST"),
        ("inference_gateway", "MODEL_WARMUP"),
        ("multi_service", "HOST"),
        ("hyper_minimal", "HOST"),
    ] {
        let env = [
            ("PORT", zero),
            ("PORT_API", zero),
            ("PORT_WORKER", zero),
            (var, bad),
        ];
        let mut service = Service::start(example, &env);
        let status = service.exit_status().await;
        assert_eq!(status.code(), Some(1), "{example} {var}");
        let stderr = service.stderr();
        assert!(stderr.contains(var), "{example} {var}: {stderr}");
    }
}

#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn bare_mode_serves_the_same_routes_without_the_stack() {
    let mut service = start(&[("PERISCOPE_BARE", "true")]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;
    let answer = send(addr, "POST", "/predict", &[], png(8, 8, [10, 10, 10])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["label"], "black");
    assert!(!answer.headers.contains_key("x-request-id"));
    // Stopped, every line is written: the handler's, and no access line.
    service.terminate();
    assert!(service.exit_status().await.success());
    let lines = service.log_lines();
    assert!(lines.iter().any(|line| line["message"] == "prediction"));
    assert!(
        !lines
            .iter()
            .any(|line| line["target"] == "periscope::access")
    );
}

/// `HOST=::`, as the deployment sets it: the probes reach the pod's IP whether the cluster
/// gives it an IPv6 or an IPv4 one. Where this machine has no IPv6, the gateway says so and
/// listens on every IPv4 address.
#[tokio::test]
async fn host_unspecified_ipv6_serves_ipv6_and_ipv4() {
    let service = start(&[("HOST", "::")]);
    let addr = service.addr("http").await;
    let ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert_eq!(get(ipv4, "/health").await.status, 200);
    let fell_back = service
        .log_lines()
        .iter()
        .any(|line| line["message"] == "IPv6 is not available here: listening on IPv4 only");
    if fell_back {
        assert!(addr.is_ipv4(), "{addr}");
    } else {
        assert!(addr.is_ipv6(), "{addr}");
        let ipv6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()));
        assert_eq!(get(ipv6, "/health").await.status, 200);
    }
}

/// SIGTERM while the model is still loading (blocking work, as reading weights is): the gateway
/// drains, stops and exits at once, without waiting for the load to end (a load on the
/// runtime's blocking pool held the process at exit until the kubelet killed it).
#[tokio::test]
async fn sigterm_during_a_long_model_load_exits_at_once() {
    let mut service = start(&[("MODEL_LOAD_DELAY_MS", "120000")]);
    service.addr("http").await;
    service
        .wait_for_line("loading the model", |line| {
            line["message"] == "loading the model"
        })
        .await;
    let sent = std::time::Instant::now();
    service.terminate();
    let status = service.exit_status().await;
    assert!(status.success(), "{status}");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(service.log_lines().last().unwrap()["message"], "stopped");
}

/// The crates `docs/getting-started.md` tells a copy of the template to depend on, section 6:
/// every crate the template's files name, their tests included, so that `cargo test` builds
/// in the copy as it does in this workspace (whose root has more dev-dependencies).
#[test]
fn the_copy_guide_names_every_crate_the_template_uses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let start = guide
        .find("Then, in `my-gateway/Cargo.toml`")
        .expect("section 6");
    let end = start + guide[start..].find("and:\n").expect("the list's end");
    let listed: std::collections::BTreeSet<String> = guide[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| name.replace('-', "_"))
        .collect();

    let dir = root.join("examples/inference_gateway");
    let mut used = std::collections::BTreeSet::new();
    let mut local = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let code = std::fs::read_to_string(path).unwrap();
        for line in code.lines().map(str::trim) {
            if line.starts_with("//") {
                continue;
            }
            if let Some(module) = line.strip_prefix("mod ") {
                local.insert(module.trim_end_matches([';', '{', ' ']).to_owned());
            }
            // What a `use` brings in (`use std::fmt;` makes `fmt::` local) is not a crate.
            if let Some(path) = line.strip_prefix("use ") {
                local.extend(
                    path.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .skip(1)
                        .map(str::to_owned),
                );
            }
            // The first segment of each path: `tracing::info!`, `use image::ImageFormat`.
            let bytes = line.as_bytes();
            for (at, _) in line.match_indices("::") {
                let begin = line[..at]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |i| i + 1);
                let name = &line[begin..at];
                let follows_path = begin >= 2 && &line[begin - 2..begin] == "::";
                let turbofish = bytes.get(at + 2) == Some(&b'<');
                if !name.is_empty()
                    && !follows_path
                    && !turbofish
                    && name.starts_with(char::is_lowercase)
                {
                    used.insert(name.to_owned());
                }
            }
        }
    }
    let builtin = [
        "std", "core", "alloc", "super", "self", "crate", "u8", "u16", "u32", "u64", "usize",
        "i32", "i64", "f32", "f64", "str",
    ];
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !builtin.contains(&name.as_str()))
        .filter(|name| !local.contains(*name) && !listed.contains(*name))
        .collect();
    assert!(
        used.contains("tracing") && used.contains("image"),
        "{used:?}"
    );
    assert!(
        missing.is_empty(),
        "docs/getting-started.md section 6 does not name {missing:?} (it names {listed:?})"
    );
}
