//! `Decoder::decode_response` on what a real HTTP client reads off a socket on 127.0.0.1: a
//! proxy's page, a body the server cut, a body that never ends.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use periscope_error::{ApiError, Decoder, ErrorClass};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts one connection, reads the request head, then lets `answer` write what it likes.
async fn serve_once<F, Fut>(answer: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        answer(stream).await;
        // Dropping the stream closes the connection.
    });
    addr
}

/// `GET /` with hyper's HTTP/1.1 client, the response decoded by `decoder`.
async fn get(addr: SocketAddr, decoder: Decoder) -> ApiError {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri("/")
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    decoder.decode_response(response).await
}

const ENVELOPE: &str =
    r#"{"error":{"code":"node_draining","message":"Node is draining","request_id":"req_1"}}"#;

#[tokio::test]
async fn a_proxy_page_keeps_the_status_request_id_and_page() {
    let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let addr = serve_once(move |mut stream| async move {
        let head = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\nx-request-id: req_lb\r\ncontent-length: {}\r\n\r\n",
            page.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(page.as_bytes()).await.unwrap();
    })
    .await;
    let error = get(addr, Decoder::new()).await;
    assert_eq!(error.code(), "upstream_error");
    assert_eq!(error.class(), ErrorClass::Unavailable);
    assert!(error.is_retryable());
    assert_eq!(error.request_id(), Some("req_lb"));
    assert_eq!(error.raw_body(), Some(page.as_bytes()));
    assert!(!error.is_raw_body_truncated());
}

#[tokio::test]
async fn an_envelope_whose_chunked_encoding_is_cut_before_its_end_still_decodes() {
    let addr = serve_once(|mut stream| async move {
        let answer = format!(
            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{ENVELOPE}\r\n",
            ENVELOPE.len()
        );
        // No last chunk: the connection closes.
        stream.write_all(answer.as_bytes()).await.unwrap();
    })
    .await;
    let error = get(addr, Decoder::new()).await;
    assert_eq!(error.code(), "node_draining");
    assert_eq!(error.class(), ErrorClass::Provisioning);
    assert!(error.is_retryable());
    assert_eq!(error.request_id(), Some("req_1"));
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_keeps_status_request_id_and_what_arrived() {
    let addr = serve_once(|mut stream| async move {
        let head = "HTTP/1.1 409 Conflict\r\nx-request-id: req_cut\r\ncontent-length: 1000\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&ENVELOPE.as_bytes()[..30]).await.unwrap();
    })
    .await;
    let error = get(addr, Decoder::new()).await;
    assert_eq!(error.status(), 409);
    assert_eq!(error.code(), "conflict");
    assert_eq!(error.request_id(), Some("req_cut"));
    assert_eq!(error.raw_body(), Some(&ENVELOPE.as_bytes()[..30]));
    assert!(error.is_raw_body_truncated());
}

#[tokio::test]
async fn an_endless_body_is_read_only_up_to_the_bound() {
    let addr = serve_once(|mut stream| async move {
        let head = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("2000\r\n{}\r\n", "<".repeat(0x2000));
        // Until the client hangs up.
        while stream.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    let decoder = Decoder::new()
        .max_body_bytes(100_000)
        .max_raw_body_bytes(1_000);
    let error = get(addr, decoder).await;
    assert_eq!(error.code(), "service_unavailable");
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(std::time::Duration::from_secs(7)));
    assert_eq!(error.raw_body().map(<[u8]>::len), Some(1_000));
    assert!(error.is_raw_body_truncated());
}

/// A server whose clock is an hour ahead of this machine's, or an hour behind, asks for two
/// minutes with a `Retry-After` date: the delay is that date less the answer's own `Date`
/// (RFC 9110, 10.2.3), not less this machine's clock (an hour and two minutes, or none).
#[tokio::test]
async fn a_retry_after_date_counts_from_the_answers_own_date() {
    use std::time::{Duration, SystemTime};

    let hour = Duration::from_secs(3600);
    for server_now in [SystemTime::now() + hour, SystemTime::now() - hour] {
        let date = httpdate::fmt_http_date(server_now);
        let retry_at = httpdate::fmt_http_date(server_now + Duration::from_secs(120));
        let addr = serve_once(move |mut stream| async move {
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\ndate: {date}\r\nretry-after: {retry_at}\r\n\
                 content-length: 0\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
        })
        .await;
        let error = get(addr, Decoder::new()).await;
        assert_eq!(error.code(), "service_unavailable");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    }
}

/// A server that numbers its requests sends the id as a JSON number: the decoder keeps it as
/// its decimal text, ahead of the `x-request-id` a proxy in front added.
#[tokio::test]
async fn a_request_id_sent_as_a_json_number_is_kept() {
    let envelope =
        r#"{"error":{"code":"node_draining","message":"Node is draining","request_id":90210}}"#;
    let addr = serve_once(move |mut stream| async move {
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-request-id: req_proxy\r\ncontent-length: {}\r\n\r\n",
            envelope.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(envelope.as_bytes()).await.unwrap();
    })
    .await;
    let error = get(addr, Decoder::new()).await;
    assert_eq!(error.code(), "node_draining");
    assert_eq!(error.request_id(), Some("90210"));
    assert_eq!(error.envelope().unwrap().request_id, "90210");
    assert_eq!(
        error.to_string(),
        "node_draining: Node is draining (request_id: 90210)"
    );
}

/// `body` compressed as `coding` (`gzip` or `deflate`) sends it.
fn compressed(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let level = flate2::Compression::default();
    match coding {
        "gzip" => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            encoder.write_all(body).unwrap();
            encoder.finish().unwrap()
        }
        _ => {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
            encoder.write_all(body).unwrap();
            encoder.finish().unwrap()
        }
    }
}

/// An answer with `body` compressed as `coding`, behind the head `status_line`.
async fn serve_compressed(
    status_line: &'static str,
    coding: &'static str,
    body: Vec<u8>,
) -> SocketAddr {
    let body = compressed(coding, &body);
    serve_once(move |mut stream| async move {
        let head = format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-encoding: {coding}\r\nx-request-id: req_proxy\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
    })
    .await
}

/// A proxy in front compresses error answers (the caller forwarded an `Accept-Encoding`, or the
/// proxy ignores it): the envelope's code, retryability, delay and request id still come
/// through, and a page that is not an envelope is kept as its text, not as gzip bytes.
#[tokio::test]
async fn a_compressed_envelope_decodes_as_one() {
    let envelope = br#"{"error":{"code":"node_draining","message":"Node is draining","request_id":"req_gz","retryable":true,"retry_after_s":30}}"#;
    for coding in ["gzip", "deflate"] {
        let addr = serve_compressed("503 Service Unavailable", coding, envelope.to_vec()).await;
        let error = get(addr, Decoder::new()).await;
        assert_eq!(error.code(), "node_draining", "{coding}");
        assert_eq!(error.message(), "Node is draining", "{coding}");
        assert_eq!(error.request_id(), Some("req_gz"), "{coding}");
        assert_eq!(
            error.retry_after(),
            Some(std::time::Duration::from_secs(30)),
            "{coding}"
        );
        assert!(error.raw_body().is_none(), "{coding}");
    }
    let page = b"<html><body><h1>502 Bad Gateway</h1></body></html>";
    let addr = serve_compressed("502 Bad Gateway", "gzip", page.to_vec()).await;
    let error = get(addr, Decoder::new()).await;
    assert_eq!(error.code(), "upstream_error");
    assert_eq!(error.request_id(), Some("req_proxy"));
    assert_eq!(error.raw_body(), Some(&page[..]));
}

/// A small compressed body that inflates to megabytes is inflated only up to the decoder's
/// bound, as a plain body is read only up to it: it is not parsed, and what is kept is bounded.
#[tokio::test]
async fn a_compressed_body_is_inflated_only_up_to_the_bound() {
    let mut huge = br#"{"error":{"code":"node_draining","message":""#.to_vec();
    huge.resize(16 << 20, b' ');
    huge.extend_from_slice(br#""}}"#);
    let addr = serve_compressed("503 Service Unavailable", "gzip", huge).await;
    let error = get(addr, Decoder::new().max_raw_body_bytes(100)).await;
    assert_eq!(error.code(), "service_unavailable");
    assert_eq!(error.request_id(), Some("req_proxy"));
    let kept = error.raw_body().unwrap();
    assert_eq!(kept.len(), 100);
    assert!(kept.starts_with(br#"{"error""#), "{kept:?}");
    assert!(error.is_raw_body_truncated());
}

/// A `Retry-After` too large for any clock (more digits than a `u64` holds) means "not for a
/// very long time", not "no delay given": the caller must not retry at once.
#[tokio::test]
async fn a_retry_after_too_large_to_count_is_the_longest_delay() {
    let addr = serve_once(|mut stream| async move {
        let head = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 99999999999999999999999\r\ncontent-length: 0\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
    })
    .await;
    let error = get(addr, Decoder::new()).await;
    assert_eq!(error.code(), "rate_limited");
    assert_eq!(error.retry_after(), Some(periscope_error::MAX_RETRY_AFTER));
}

/// An upstream whose envelope carries a 100 KiB message, help and violation (an echoed input, a
/// stack dump): what the decoder hands a service, that relays or logs it, is cut as the
/// server side cuts what it renders (`MAX_MESSAGE_LEN` bytes, on a character boundary, ending
/// with `…`), with the default 64 KiB read and with a decoder that reads more.
#[tokio::test]
async fn a_huge_upstream_message_is_cut_as_the_server_cuts_it() {
    use periscope_error::{HttpError, MAX_MESSAGE_LEN, Violation, codes};

    for (decoder, kib) in [
        (Decoder::new(), 10),
        (Decoder::new().max_body_bytes(1 << 20), 100),
    ] {
        // Two-byte characters, so a cut in the middle of one would show.
        let huge = "é".repeat(kib * 512);
        let envelope = serde_json::json!({"error": {
            "code": "conflict",
            "message": huge,
            "request_id": "req_huge",
            "help": huge,
            "violations": [{"field": huge, "reason": "too_long", "message": huge}],
        }})
        .to_string();
        let addr = serve_once(move |mut stream| async move {
            let head = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                envelope.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(envelope.as_bytes()).await.unwrap();
        })
        .await;
        let error = get(addr, decoder).await;
        assert_eq!(error.code(), "conflict", "{kib} KiB");
        assert_eq!(error.request_id(), Some("req_huge"), "{kib} KiB");
        // What the server side renders of the same text.
        let server = HttpError::new(codes::CONFLICT, huge.clone()).with_violation(Violation::new(
            huge.clone(),
            "too_long",
            huge.clone(),
        ));
        let cut = server.message();
        assert!(cut.len() <= MAX_MESSAGE_LEN && cut.ends_with("é…"), "{cut}");
        assert_eq!(error.message(), cut, "{kib} KiB");
        assert_eq!(error.envelope().unwrap().message, cut, "{kib} KiB");
        assert_eq!(error.help(), Some(cut), "{kib} KiB");
        assert_eq!(error.violations(), server.violations(), "{kib} KiB");
        assert!(error.to_string().len() < 2 * MAX_MESSAGE_LEN, "{kib} KiB");
    }
}

/// An upstream's list of violations is kept as long as a service's (`MAX_VIOLATIONS`), and a
/// reason longer than a code is left out: thousands of tiny violations in a 64 KiB body would
/// be megabytes once decoded, and again once relayed by the error layer.
#[tokio::test]
async fn an_upstream_list_of_violations_is_bounded_as_a_services_is() {
    use periscope_error::MAX_VIOLATIONS;

    let mut list = vec![serde_json::json!({"field": "name", "reason": "r".repeat(65)})];
    list.extend((0..3_000).map(|i| serde_json::json!({"field": format!("f{i}")})));
    let envelope = serde_json::json!({"error": {"code": "validation_error", "violations": list}});
    let error = decode_conflict(envelope).await;
    assert_eq!(error.code(), "validation_error");
    let violations = error.violations();
    assert_eq!(violations.len(), MAX_VIOLATIONS);
    assert_eq!(
        (&*violations[0].field, &*violations[0].reason),
        ("name", "")
    );
    assert_eq!(violations[1].field, "f0");
    assert_eq!(
        violations[MAX_VIOLATIONS - 1].field,
        format!("f{}", MAX_VIOLATIONS - 2)
    );
}

/// An envelope `answer` sends as a 409, with `x-request-id: req_header`, decoded.
async fn decode_conflict(envelope: serde_json::Value) -> ApiError {
    let envelope = envelope.to_string();
    let addr = serve_once(move |mut stream| async move {
        let head = format!(
            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n\
             x-request-id: req_header\r\ncontent-length: {}\r\n\r\n",
            envelope.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(envelope.as_bytes()).await.unwrap();
    })
    .await;
    get(addr, Decoder::new()).await
}

/// Every member of an upstream's envelope is bounded, not only its texts for humans: a
/// service that relays or logs what it decoded relays or logs a bounded error, whatever the
/// upstream sent within the 64 KiB read. Ids and URLs are not cut (a cut one names something
/// else): one over its bound is left out, and the request id falls back to the header's.
/// `details` keeps its members in order while its JSON stays within its bound.
#[tokio::test]
async fn every_member_of_an_upstream_envelope_is_bounded() {
    use periscope_error::{MAX_CODE_LEN, MAX_DETAILS_LEN, MAX_ID_LEN, MAX_MESSAGE_LEN};

    let huge = "x".repeat(30 * 1024);
    let error = decode_conflict(serde_json::json!({"error": {
        "code": "job_already_terminal",
        "message": "Job is gone",
        "request_id": "r".repeat(MAX_ID_LEN + 1),
        "trace_id": "4".repeat(MAX_ID_LEN + 1),
        "docs_url": format!("https://docs.example.com/{}", "d".repeat(MAX_MESSAGE_LEN)),
        "details": {"a_job_id": "job_1", "b_dump": huge, "c_state": "done"},
    }}))
    .await;
    assert_eq!(error.code(), "job_already_terminal");
    assert_eq!(error.request_id(), Some("req_header"));
    assert_eq!(error.trace_id(), None);
    assert_eq!(error.docs_url(), None);
    let details = error.details().unwrap();
    assert_eq!(
        serde_json::Value::Object(details.clone()),
        serde_json::json!({"a_job_id": "job_1", "c_state": "done"})
    );

    // Many small members: the first ones, within the bound.
    let many: serde_json::Map<_, _> = (0..2000)
        .map(|i| (format!("k{i:04}"), serde_json::Value::from("v".repeat(20))))
        .collect();
    let error = decode_conflict(serde_json::json!({"error": {
        "code": "conflict", "message": "m", "request_id": "req_1", "details": many,
    }}))
    .await;
    let details = error.details().unwrap();
    let text = serde_json::to_string(details).unwrap();
    assert!(
        text.len() <= MAX_DETAILS_LEN && text.len() > MAX_DETAILS_LEN - 40,
        "{}",
        text.len()
    );
    assert!(details.keys().eq(many.keys().take(details.len())));

    // At their bounds, members are kept whole.
    let id = "r".repeat(MAX_ID_LEN);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let docs_url = format!(
        "https://docs.example.com/{}",
        "d".repeat(MAX_MESSAGE_LEN - 25)
    );
    let code = "c".repeat(MAX_CODE_LEN);
    let error = decode_conflict(serde_json::json!({"error": {
        "code": code, "message": "m", "request_id": id, "trace_id": trace_id,
        "docs_url": docs_url,
    }}))
    .await;
    assert_eq!(error.code(), code);
    assert_eq!(error.request_id(), Some(id.as_str()));
    assert_eq!(error.trace_id(), Some(trace_id));
    assert_eq!(error.docs_url(), Some(docs_url.as_str()));

    // A code longer than any code can be is not a code: the body is not an envelope (as one
    // without a code), decoded by its status, its words and request id kept.
    let error = decode_conflict(serde_json::json!({"error": {
        "code": "c".repeat(MAX_CODE_LEN + 1), "message": "Job is gone", "request_id": "req_2",
    }}))
    .await;
    assert_eq!(error.code(), "conflict");
    assert_eq!(error.class(), ErrorClass::Conflict);
    assert!(error.envelope().is_none());
    assert_eq!(error.request_id(), Some("req_2"));
    assert_eq!(
        error.message(),
        "HTTP 409 Conflict without an error envelope: Job is gone"
    );
    assert!(error.raw_body().is_some());
}
