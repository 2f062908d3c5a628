//! Hostile clients against the real gateway, over raw TCP: every limit of
//! `[server]` (each configured small here) and every kind of malformed HTTP
//! gets a 4xx or a clean close, never a 5xx, never a hang, and the same
//! gateway answers a good request afterwards.
//!
//! What Pingora 0.9.1 itself does with the framing cases (read in
//! pingora-core `protocols/http/v1/server.rs`, checked by the tests below):
//! - a head it cannot parse (bad request line, NUL or bare CR in a header,
//!   more than 256 headers, more than 1 MiB) gets Pingora's own empty 400 and
//!   the connection closes, before the gateway sees it;
//! - `Content-Length` and `Transfer-Encoding` together: the body is read as
//!   chunked, `Content-Length` is dropped and keep-alive is turned off, so
//!   bytes smuggled after the chunked body are never read as a request;
//!   differing duplicate `Content-Length`s, a non-chunked final
//!   `Transfer-Encoding` and `Transfer-Encoding` on HTTP/1.0 get a 400;
//! - pipelining: by default Pingora answers the first request and closes,
//!   dropping the ones queued behind it when they came in the same read; one
//!   that arrives while the first is being served is read as "data after the
//!   end of the body", which abandoned the first. The gateway's listener turns
//!   on Pingora's pipelining, so they are answered in order (see
//!   [`pipelined_requests_are_answered_in_order`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::raw::{chat_request, chunked, request, NoAnswer, RawConn, RawResponse, Trickled};
use common::*;
use vllm_gateway::gateway::GatewayHandle;
use vllm_gateway::sim::SimHandle;

/// A valid chat body the simulator answers quickly.
const GOOD: &[u8] =
    br#"{"model":"test-model","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;

/// Upper bound for anything the gateway should do "at once".
const PROMPT: Duration = Duration::from_secs(5);

fn fast_sim() -> SimHandle {
    sim_with(|c| {
        c.ttft = Duration::from_millis(1);
        c.itl = Duration::ZERO;
        c.output_tokens = (1, 2);
    })
}

/// A gateway with `server_keys` in `[server]` and `model_keys` in the model.
async fn gateway(server_keys: &str, model_keys: &str) -> (SimHandle, GatewayHandle) {
    let s = fast_sim();
    let gw = start(&config_text(&[s.url()], model_keys, server_keys));
    wait_ready(&gw).await;
    (s, gw)
}

/// The gateway still works: a good chat on a fresh connection gets 200, and
/// the admin listener says it is alive.
async fn still_serves(gw: &GatewayHandle) {
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(GOOD)).await.unwrap();
    let r = c
        .response(PROMPT)
        .await
        .expect("a good request is answered");
    assert_eq!(r.status, 200, "good request after abuse: {}", r.text());
    let health = client()
        .get(format!("{}/healthz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// One answer, which must be a 4xx.
async fn expect_4xx(c: &mut RawConn, what: &str) -> RawResponse {
    let r = c
        .response(PROMPT)
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
    assert!(
        (400..500).contains(&r.status),
        "{what}: status {} {}",
        r.status,
        r.text()
    );
    r
}

/// A 4xx answer followed by a close, or a close with nothing sent: never a
/// 5xx, never silence past the deadline.
async fn refused_or_closed(c: &mut RawConn, what: &str) -> Option<u16> {
    match c.response(PROMPT).await {
        Ok(r) => {
            assert!(
                (400..500).contains(&r.status),
                "{what}: status {} {}",
                r.status,
                r.text()
            );
            Some(r.status)
        }
        Err(NoAnswer::Closed(rest)) => {
            assert!(rest.is_empty(), "{what}: partial answer {rest:?}");
            None
        }
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// Send `bytes` on a fresh connection; the answer must be a 4xx or a clean
/// close. Returns the status, if any.
async fn send_hostile(gw: &GatewayHandle, bytes: &[u8], what: &str) -> Option<u16> {
    let mut c = RawConn::connect(gw.public_addr).await;
    // The server may close before reading everything: a failed write is fine.
    let _ = c.send(bytes).await;
    refused_or_closed(&mut c, what).await
}

fn get(path: &str) -> Vec<u8> {
    request("GET", path, &[], b"")
}

// --- Limits -------------------------------------------------------------------

#[tokio::test]
async fn slowloris_head_is_cut_off_at_header_read_timeout() {
    let (_s, gw) = gateway("header_read_timeout = \"600ms\"", "").await;
    // One byte every 50 ms: each read is quick, the head never completes.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n",
        "a".repeat(200)
    );
    let mut c = RawConn::connect(gw.public_addr).await;
    match c
        .trickle(head.as_bytes(), 1, Duration::from_millis(50))
        .await
    {
        Trickled::Closed(after) => {
            assert!(
                after >= Duration::from_millis(500),
                "closed early: {after:?}"
            );
            assert!(after < Duration::from_secs(3), "closed late: {after:?}");
        }
        Trickled::Sent(after) => panic!("a head trickled for {after:?} was accepted"),
    }
    // A connection that sends nothing at all is closed on the same clock.
    let mut idle = RawConn::connect(gw.public_addr).await;
    let opened = Instant::now();
    let sent = idle.closed_within(Duration::from_secs(3)).await.unwrap();
    assert!(sent.is_empty());
    assert!(opened.elapsed() >= Duration::from_millis(500));
    still_serves(&gw).await;
}

#[tokio::test]
async fn the_header_timeout_stops_counting_once_the_head_is_in() {
    // A stream that runs three times the header timeout, on a connection
    // whose head arrived at once: the head's timer no longer matters.
    let s = sim_with(|c| {
        c.ttft = Duration::from_millis(50);
        c.itl = Duration::from_millis(100);
        c.output_tokens = (9, 9);
    });
    let gw = start(&config_text(
        &[s.url()],
        "",
        "header_read_timeout = \"300ms\"",
    ));
    wait_ready(&gw).await;
    let body =
        br#"{"model":"test-model","stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(body)).await.unwrap();
    let started = Instant::now();
    let r = c.response(PROMPT).await.expect("the whole stream");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slowloris_second_head_on_a_kept_alive_connection_is_cut_off() {
    let (_s, gw) = gateway(
        "header_read_timeout = \"500ms\"\nkeepalive_idle_timeout = \"1s\"",
        "",
    )
    .await;
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&get("/v1/models")).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    // The next head may take the idle time plus the header time, no more.
    let head = format!("GET /v1/models HTTP/1.1\r\nX-Slow: {}\r\n", "a".repeat(200));
    match c
        .trickle(head.as_bytes(), 1, Duration::from_millis(50))
        .await
    {
        Trickled::Closed(after) => {
            assert!(
                after >= Duration::from_millis(1300),
                "closed early: {after:?}"
            );
            assert!(after < Duration::from_secs(4), "closed late: {after:?}");
        }
        Trickled::Sent(after) => panic!("a head trickled for {after:?} was accepted"),
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn slow_body_gets_408_and_a_close() {
    let (s, gw) = gateway("body_read_timeout = \"500ms\"", "").await;
    let mut c = RawConn::connect(gw.public_addr).await;
    let req = chat_request(GOOD);
    let (head_and_some, rest) = req.split_at(req.len() - GOOD.len() + 10);
    c.send(head_and_some).await.unwrap();
    let started = Instant::now();
    let trickled = c.trickle(rest, 1, Duration::from_millis(100)).await;
    assert!(matches!(trickled, Trickled::Closed(_)), "{trickled:?}");
    let r = c
        .response(PROMPT)
        .await
        .expect("an answer before the close");
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("request_timeout"));
    assert!(
        r.text().contains("500ms"),
        "the message names the configured timeout: {}",
        r.text()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Nothing reached the worker.
    assert!(s
        .received()
        .iter()
        .all(|r| r.path != "/v1/chat/completions"));
    still_serves(&gw).await;
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed() {
    let (_s, gw) = gateway("keepalive_idle_timeout = \"1s\"", "").await;
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(GOOD)).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    // Used again within the idle time: still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(&chat_request(GOOD)).await.unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    let idle_from = Instant::now();
    let sent = c
        .closed_within(Duration::from_secs(4))
        .await
        .expect("an idle connection is closed");
    assert!(sent.is_empty());
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    still_serves(&gw).await;
}

#[tokio::test]
async fn max_requests_per_connection_closes_after_n() {
    let (_s, gw) = gateway("max_requests_per_connection = 3", "").await;
    let mut c = RawConn::connect(gw.public_addr).await;
    for i in 1..=3 {
        c.send(&chat_request(GOOD)).await.unwrap();
        let r = c.response(PROMPT).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
        // The last one says so.
        assert_eq!(r.closes(), i == 3, "request {i}: {:?}", r.headers);
    }
    let sent = c
        .closed_within(PROMPT)
        .await
        .expect("closed after the third request");
    assert!(sent.is_empty());
    still_serves(&gw).await;
}

#[tokio::test]
async fn max_connections_closes_the_extra_one_at_once() {
    let (_s, gw) = gateway("max_connections = 3", "").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = RawConn::connect(gw.public_addr).await;
        c.send(&get("/v1/models")).await.unwrap();
        assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
        open.push(c);
    }
    let mut extra = RawConn::connect(gw.public_addr).await;
    let t = Instant::now();
    let sent = extra
        .closed_within(Duration::from_secs(2))
        .await
        .expect("the fourth connection is closed");
    assert!(sent.is_empty());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The others keep working.
    for c in &mut open {
        c.send(&chat_request(GOOD)).await.unwrap();
        assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    }
    // A slot frees when a connection closes.
    drop(open.pop());
    let addr = gw.public_addr;
    wait_until(PROMPT, || async move {
        let mut c = RawConn::connect(addr).await;
        if c.send(&get("/v1/models")).await.is_err() {
            return false;
        }
        matches!(c.response(Duration::from_secs(1)).await, Ok(r) if r.status == 200)
    })
    .await
    .expect("a new connection is served once one closed");
    drop(open);
    // Closed connections are counted until the gateway has seen them close.
    wait_until(PROMPT, || async move {
        let mut c = RawConn::connect(addr).await;
        c.send(&get("/v1/models")).await.is_ok()
            && matches!(c.response(Duration::from_secs(1)).await, Ok(r) if r.status == 200)
    })
    .await
    .expect("all slots free again");
    still_serves(&gw).await;
}

#[tokio::test]
async fn oversized_heads_get_431_or_400() {
    let (_s, gw) = gateway("max_header_bytes = 4096\nmax_headers = 20", "").await;
    let big_value = "v".repeat(5000);
    let r = send_hostile(
        &gw,
        &request(
            "POST",
            "/v1/chat/completions",
            &[("X-Big", &big_value)],
            GOOD,
        ),
        "one huge header",
    )
    .await;
    assert_eq!(r, Some(431));

    let names: Vec<String> = (0..25).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = send_hostile(&gw, &request("GET", "/v1/models", &many, b""), "25 headers").await;
    assert_eq!(r, Some(431));

    let long_path = format!("/v1/models?{}", "q".repeat(5000));
    let r = send_hostile(&gw, &get(&long_path), "a 5000-byte URI").await;
    assert_eq!(r, Some(431));

    // Beyond Pingora's own limits (256 headers, 1 MiB head): its 400.
    let names: Vec<String> = (0..300).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = send_hostile(
        &gw,
        &request("GET", "/v1/models", &many, b""),
        "300 headers",
    )
    .await;
    assert!(matches!(r, Some(400) | None), "{r:?}");
    let huge = "h".repeat(2 << 20);
    let r = send_hostile(
        &gw,
        &request("GET", "/v1/models", &[("X-Huge", &huge)], b""),
        "a 2 MiB head",
    )
    .await;
    assert!(matches!(r, Some(400) | None), "{r:?}");
    still_serves(&gw).await;
}

#[tokio::test]
async fn declared_body_over_limit_is_refused_before_it_is_sent() {
    let (s, gw) = gateway("max_body_bytes = 1024", "").await;
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await
    .unwrap();
    // No body byte was sent: the answer can only come from the declaration.
    let r = expect_4xx(&mut c, "declared 10 MB").await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code().as_deref(), Some("request_too_large"));
    c.closed_within(PROMPT)
        .await
        .expect("closed: the body was never read");
    assert!(s
        .received()
        .iter()
        .all(|r| r.path != "/v1/chat/completions"));
    still_serves(&gw).await;
}

#[tokio::test]
async fn chunked_body_over_limit_gets_413() {
    let (_s, gw) = gateway("max_body_bytes = 1024", "").await;
    let mut body = GOOD.to_vec();
    body.extend(std::iter::repeat_n(b' ', 3000));
    let mut req = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    req.extend(chunked(&body, 500));
    let r = send_hostile(&gw, &req, "chunked 3 KB").await;
    assert_eq!(r, Some(413));

    // Exactly at the limit is fine, chunked or not.
    let mut at_limit = GOOD.to_vec();
    at_limit.resize(1024, b' ');
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(&at_limit)).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    let mut req = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    req.extend(chunked(&at_limit, 100));
    c.send(&req).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    still_serves(&gw).await;
}

// --- Framing ------------------------------------------------------------------

#[tokio::test]
async fn content_length_shorter_than_the_body() {
    let (_s, gw) = gateway("", "").await;
    let mut req = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "20"),
        ],
        b"",
    );
    req.extend_from_slice(GOOD);
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&req).await.unwrap();
    // The first 20 bytes are the body: truncated JSON.
    let r = expect_4xx(&mut c, "first answer").await;
    assert_eq!(r.status, 400);
    // The rest is never served as a request of its own.
    refused_or_closed(&mut c, "the leftover bytes").await;
    c.closed_within(PROMPT).await.expect("closed");
    still_serves(&gw).await;
}

#[tokio::test]
async fn content_length_longer_than_the_body() {
    let (_s, gw) = gateway("body_read_timeout = \"500ms\"", "").await;
    let declared = (GOOD.len() + 50).to_string();
    let req = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &declared),
        ],
        GOOD,
    );
    // The client waits for an answer: 408 when the body timeout passes.
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&req).await.unwrap();
    let r = expect_4xx(&mut c, "short body, client waits").await;
    assert_eq!(r.status, 408);
    c.closed_within(PROMPT).await.expect("closed");

    // The client stops sending: the body ends early, 400 at once.
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&req).await.unwrap();
    c.shutdown_write().await;
    let t = Instant::now();
    refused_or_closed(&mut c, "short body, client half-closed").await;
    assert!(
        t.elapsed() < Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    still_serves(&gw).await;
}

#[tokio::test]
async fn content_length_and_chunked_together_read_as_chunked_and_close() {
    let (s, gw) = gateway("", "").await;
    // A good chunked body with a lying Content-Length: served (as chunked),
    // then the connection closes.
    let mut req = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "4"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    req.extend(chunked(GOOD, 16));
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&req).await.unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.closes());
    c.closed_within(PROMPT).await.expect("closed after CL+TE");
    assert_eq!(last_chat(&s).body.as_ref(), GOOD);

    // Smuggling: Content-Length covers a second request hidden after the
    // chunked body. One answer, then a close; the hidden request never runs.
    let smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut body = b"0\r\n\r\n".to_vec();
    body.extend_from_slice(smuggled);
    let declared = body.len().to_string();
    let mut req = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", &declared),
        ],
        b"",
    );
    req.extend_from_slice(&body);
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&req).await.unwrap();
    let r = expect_4xx(&mut c, "empty chunked body").await;
    assert_eq!(r.status, 400);
    let rest = c.closed_within(PROMPT).await.expect("closed");
    assert!(
        rest.is_empty(),
        "the smuggled request was answered: {rest:?}"
    );

    // Ambiguous framings Pingora refuses outright.
    for (what, headers) in [
        (
            "two different Content-Lengths",
            vec![("Content-Length", "5"), ("Content-Length", "6")],
        ),
        (
            "a non-chunked final Transfer-Encoding",
            vec![("Transfer-Encoding", "chunked, gzip")],
        ),
        (
            "Transfer-Encoding gzip",
            vec![("Transfer-Encoding", "gzip")],
        ),
        ("Content-Length -1", vec![("Content-Length", "-1")]),
        ("Content-Length abc", vec![("Content-Length", "abc")]),
        (
            "Content-Length beyond u64",
            vec![("Content-Length", "99999999999999999999999")],
        ),
    ] {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend(headers);
        let mut req = request("POST", "/v1/chat/completions", &h, b"");
        req.extend_from_slice(GOOD);
        let r = send_hostile(&gw, &req, what).await;
        assert!(
            r.is_some() || what.contains("u64"),
            "{what}: closed without an answer"
        );
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn bad_chunked_framing_is_refused() {
    let (_s, gw) = gateway("body_read_timeout = \"1s\"", "").await;
    let head = request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("non-hex size", b"zz\r\n{}\r\n0\r\n\r\n".to_vec()),
        ("negative size", b"-5\r\nhello\r\n0\r\n\r\n".to_vec()),
        (
            "size overflowing u64",
            b"fffffffffffffffffffffff\r\nx\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "data longer than its size",
            b"2\r\n{}}}}}}\r\n0\r\n\r\n".to_vec(),
        ),
        ("no CRLF after the size", b"5{}{}{}0\r\n\r\n".to_vec()),
        ("bare LF", b"5\n{\"a\":\n0\n\n".to_vec()),
        (
            "huge size, little data",
            b"7fffffff\r\n{\"model\":1}\r\n".to_vec(),
        ),
        ("NUL in the size", b"5\0\r\nhello\r\n0\r\n\r\n".to_vec()),
    ];
    for (what, body) in cases {
        let mut req = head.clone();
        req.extend_from_slice(&body);
        send_hostile(&gw, &req, what).await;
    }
    // Truncated, then the client stops sending.
    let mut req = head.clone();
    req.extend_from_slice(b"10\r\n{\"model\":");
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&req).await.unwrap();
    c.shutdown_write().await;
    refused_or_closed(&mut c, "truncated chunked body").await;
    still_serves(&gw).await;
}

#[tokio::test]
async fn http_1_0_is_served_and_closed() {
    let (_s, gw) = gateway("", "").await;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        GOOD.len()
    );
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(req.as_bytes()).await.unwrap();
    c.send(GOOD).await.unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    c.closed_within(PROMPT).await.expect("HTTP/1.0 closes");

    // HTTP/1.0 with Connection: keep-alive stays open for a second request.
    let mut c = RawConn::connect(gw.public_addr).await;
    for _ in 0..2 {
        c.send(b"GET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    }

    // Chunked framing does not exist in HTTP/1.0 (RFC 9112 §6.1).
    let mut req = b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend(chunked(GOOD, 32));
    assert_eq!(send_hostile(&gw, &req, "HTTP/1.0 chunked").await, Some(400));
    // HTTP/0.9 and unknown versions.
    send_hostile(&gw, b"GET /v1/models\r\n\r\n", "HTTP/0.9").await;
    send_hostile(&gw, b"GET /v1/models HTTP/2.0\r\n\r\n", "HTTP/2.0 in text").await;
    send_hostile(&gw, b"GET /v1/models HTTP/1.2\r\n\r\n", "HTTP/1.2").await;
    still_serves(&gw).await;
}

/// Pipelined requests (sent before the previous answer was read) are
/// answered one after another, in order, on the same connection, whether
/// they arrive in one segment with the first or while the first is being
/// served.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = sim_with(|c| {
        c.ttft = Duration::from_millis(300);
        c.itl = Duration::ZERO;
        c.output_tokens = (1, 2);
    });
    let gw = start(&config_text(&[s.url()], "", ""));
    wait_ready(&gw).await;

    // Three requests in one write.
    let mut all = get("/v1/models");
    all.extend(chat_request(GOOD));
    all.extend(request("GET", "/nope", &[], b""));
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&all).await.unwrap();
    let statuses = answered(&mut c).await;
    assert_eq!(statuses, vec![200, 200, 404], "in one write");

    // The second request arrives while the worker is still computing the
    // first (300 ms to the first token): the first must not be abandoned.
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(GOOD)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&get("/v1/models")).await.unwrap();
    let statuses = answered(&mut c).await;
    assert_eq!(statuses, vec![200, 200], "second sent mid-flight");
    still_serves(&gw).await;
}

/// Answers on `c` until it closes or goes quiet for a second.
async fn answered(c: &mut RawConn) -> Vec<u16> {
    let mut statuses = Vec::new();
    loop {
        match c.response(Duration::from_secs(2)).await {
            Ok(r) => {
                assert!(r.status < 500, "{} {}", r.status, r.text());
                statuses.push(r.status);
            }
            Err(NoAnswer::Closed(rest)) | Err(NoAnswer::TimedOut(rest)) if rest.is_empty() => {
                return statuses
            }
            Err(e) => panic!("after {statuses:?}: {e:?}"),
        }
    }
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let (_s, gw) = gateway("max_body_bytes = 1024", "").await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        GOOD.len()
    );
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(head.as_bytes()).await.unwrap();
    let r = c
        .response(Duration::from_secs(2))
        .await
        .expect("100 Continue before the body is sent");
    assert_eq!(r.status, 100);
    c.send(GOOD).await.unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert_eq!(r.status, 200);
    // The 100 did not cost the connection its keep-alive.
    assert!(!r.closes(), "{:?}", r.headers);
    c.send(&get("/v1/models")).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);

    // Too large: the final answer instead of 100.
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 413);
    still_serves(&gw).await;
}

#[tokio::test]
async fn malformed_request_heads_get_400_or_a_close() {
    let (s, gw) = gateway("", "").await;
    let cases: &[(&str, &[u8])] = &[
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        ("no version", b"GET /v1/models\r\nHost: x\r\n\r\n"),
        ("lowercase version", b"GET /v1/models http/1.1\r\n\r\n"),
        (
            "header without colon",
            b"GET /v1/models HTTP/1.1\r\nHost x\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET /v1/models HTTP/1.1\r\nHost : x\r\n\r\n",
        ),
        (
            "obsolete line folding",
            b"GET /v1/models HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET /v1/models HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "NUL in a header name",
            b"GET /v1/models HTTP/1.1\r\nX\0A: a\r\n\r\n",
        ),
        ("NUL in the path", b"GET /v1/mo\0dels HTTP/1.1\r\n\r\n"),
        ("bare CR", b"GET /v1/models HTTP/1.1\rX-A: a\r\n\r\n"),
        ("empty method", b" /v1/models HTTP/1.1\r\n\r\n"),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ),
        (
            "two Host headers",
            b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "absolute URI with another host",
            b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let mut c = RawConn::connect(gw.public_addr).await;
        let _ = c.send(bytes).await;
        // Some of these are fine HTTP the gateway answers (200 for a
        // models list); what matters is: no 5xx, no hang.
        match c.response(PROMPT).await {
            Ok(r) => assert!(r.status < 500, "{what}: {} {}", r.status, r.text()),
            Err(NoAnswer::Closed(rest)) => assert!(rest.is_empty(), "{what}: {rest:?}"),
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
    // An Upgrade request is an ordinary request to the gateway.
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert_ne!(r.status, 101);
    assert!(r.status < 500);
    assert!(s
        .received()
        .iter()
        .all(|r| r.path != "/v1/chat/completions"));
    still_serves(&gw).await;
}

/// CONNECT asks for a tunnel, which the gateway never opens: an OpenAI-shaped
/// 405 and a close, since what a client sends after a CONNECT head is tunnel
/// bytes, not a next request (RFC 9110 §9.3.6).
#[tokio::test]
async fn connect_gets_a_405_and_the_connection_closes() {
    let (s, gw) = gateway("", "").await;
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("method_not_allowed"));
    assert!(r.closes(), "{:?}", r.headers);
    // Whatever follows is never read as a request.
    let _ = c.send(&chat_request(GOOD)).await;
    let rest = c
        .closed_within(PROMPT)
        .await
        .expect("the connection closes");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(s
        .received()
        .iter()
        .all(|r| r.path != "/v1/chat/completions"));
    still_serves(&gw).await;
}

// --- Bodies -------------------------------------------------------------------

/// POST each body on one fresh connection; each must get a 400 with `code`.
async fn expect_400s(gw: &GatewayHandle, cases: &[(&str, Vec<u8>, &str)]) {
    let mut wrong = Vec::new();
    for (what, body, code) in cases {
        let mut c = RawConn::connect(gw.public_addr).await;
        c.send(&chat_request(body)).await.unwrap();
        let r = expect_4xx(&mut c, what).await;
        if r.status != 400 || r.error_code().as_deref() != Some(*code) {
            wrong.push(format!("{what}: {} {}", r.status, r.text()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

fn with_content(content: &[u8]) -> Vec<u8> {
    let mut b = br#"{"model":"test-model","messages":[{"role":"user","content":""#.to_vec();
    b.extend_from_slice(content);
    b.extend_from_slice(br#""}],"max_tokens":2}"#);
    b
}

#[tokio::test]
async fn nul_bytes_in_bodies_get_400() {
    let (s, gw) = gateway("", "").await;
    expect_400s(
        &gw,
        &[
            (
                "raw NUL in a string",
                with_content(b"a\0b"),
                "control_character",
            ),
            (
                "NUL outside a string",
                b"{\"model\":\"test-model\",\0}".to_vec(),
                "invalid_json",
            ),
            ("NUL body", vec![0u8; 64], "not_an_object"),
            (
                "NUL after the object",
                {
                    let mut b = GOOD.to_vec();
                    b.push(0);
                    b
                },
                "trailing_characters",
            ),
        ],
    )
    .await;
    // An escaped NUL is a valid JSON string: the worker gets it.
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(&with_content(br"a\u0000b")))
        .await
        .unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    assert_eq!(
        s.received()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count(),
        1
    );
    still_serves(&gw).await;
}

#[tokio::test]
async fn invalid_utf8_gets_400() {
    let (_s, gw) = gateway("", "").await;
    expect_400s(
        &gw,
        &[
            ("0xff", with_content(b"a\xffb"), "invalid_utf8"),
            ("overlong slash", with_content(b"\xc0\xaf"), "invalid_utf8"),
            (
                "UTF-8 encoded surrogate",
                with_content(b"\xed\xa0\x80"),
                "invalid_utf8",
            ),
            (
                "truncated sequence",
                with_content(b"\xe2\x82"),
                "invalid_utf8",
            ),
            (
                "above U+10FFFF",
                with_content(b"\xf4\x90\x80\x80"),
                "invalid_utf8",
            ),
            (
                "in a key",
                b"{\"mod\xffel\":\"test-model\"}".to_vec(),
                "invalid_utf8",
            ),
            (
                "escaped lone surrogate",
                with_content(br"\ud800"),
                "invalid_json",
            ),
            (
                "escaped low surrogate first",
                with_content(br"\udc00\ud800"),
                "invalid_json",
            ),
            (
                "UTF-16 body",
                {
                    let s: String = String::from_utf8(GOOD.to_vec()).unwrap();
                    let mut b = vec![0xff, 0xfe];
                    for u in s.encode_utf16() {
                        b.extend_from_slice(&u.to_le_bytes());
                    }
                    b
                },
                "invalid_utf8",
            ),
        ],
    )
    .await;
    still_serves(&gw).await;
}

#[tokio::test]
async fn huge_numbers_get_400_quickly() {
    let (_s, gw) = gateway("", "").await;
    let digits400 = "9".repeat(400);
    let body = |field: &str, value: &str| {
        format!(
            r#"{{"model":"test-model","messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#
        )
        .into_bytes()
    };
    expect_400s(
        &gw,
        &[
            ("1e999", body("temperature", "1e999"), "invalid_json"),
            ("-1e999", body("temperature", "-1e999"), "invalid_json"),
            ("400 digits", body("max_tokens", &digits400), "invalid_json"),
            (
                "400 digits, unknown key",
                body("x_extra", &digits400),
                "invalid_json",
            ),
            (
                "2^64",
                body("max_tokens", "18446744073709551616"),
                "integer_above_max_value",
            ),
            (
                "1e300 tokens",
                body("max_tokens", "1e300"),
                "integer_above_max_value",
            ),
            (
                "-1 tokens",
                body("max_tokens", "-1"),
                "integer_below_min_value",
            ),
            (
                "1e308 temperature",
                body("temperature", "1e308"),
                "decimal_above_max_value",
            ),
            (
                "huge n",
                body("n", "10000000000"),
                "integer_above_max_value",
            ),
            (
                "seed below i64",
                body("seed", "-9223372036854775809"),
                "integer_below_min_value",
            ),
        ],
    )
    .await;
    // A megabyte of digits: refused, and fast (no quadratic parsing).
    let mut c = RawConn::connect(gw.public_addr).await;
    let t = Instant::now();
    c.send(&chat_request(&body("max_tokens", &"1".repeat(1 << 20))))
        .await
        .unwrap();
    assert_eq!(expect_4xx(&mut c, "1 MiB of digits").await.status, 400);
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(&body(
        "temperature",
        &format!("0.{}", "1".repeat(1 << 20)),
    )))
    .await
    .unwrap();
    let r = c.response(PROMPT).await.unwrap();
    assert!(r.status == 200 || r.status == 400, "{}", r.status);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    still_serves(&gw).await;
}

#[tokio::test]
async fn duplicate_keys_get_400() {
    let (s, gw) = gateway("", "").await;
    expect_400s(
        &gw,
        &[
            (
                "top level",
                br#"{"model":"test-model","model":"other","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
                "duplicate_key",
            ),
            (
                "escaped spelling",
                br#"{"model":"test-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max\u005ftokens":99999}"#.to_vec(),
                "duplicate_key",
            ),
            (
                "inside a message",
                br#"{"model":"test-model","messages":[{"role":"user","role":"system","content":"hi"}]}"#.to_vec(),
                "duplicate_key",
            ),
        ],
    )
    .await;
    assert!(s
        .received()
        .iter()
        .all(|r| r.path != "/v1/chat/completions"));
    still_serves(&gw).await;
}

#[tokio::test]
async fn ten_thousand_deep_nesting_gets_400() {
    let (_s, gw) = gateway("", "").await;
    let n = 10_000;
    let arrays = format!(
        r#"{{"model":"test-model","messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
        "[".repeat(n),
        "]".repeat(n)
    );
    let objects = format!(
        r#"{{"model":"test-model","messages":[{{"role":"user","content":"hi"}}],"x":{}1{}}}"#,
        "{\"a\":".repeat(n),
        "}".repeat(n)
    );
    let unclosed = format!(r#"{{"x":{}"#, "[".repeat(n));
    expect_400s(
        &gw,
        &[
            ("10k arrays", arrays.into_bytes(), "too_deep"),
            ("10k objects", objects.into_bytes(), "too_deep"),
            ("10k unclosed", unclosed.into_bytes(), "too_deep"),
        ],
    )
    .await;
    still_serves(&gw).await;
}

#[tokio::test]
async fn json_depth_limit_is_configurable() {
    let (_s, gw) = gateway("max_json_depth = 6", "").await;
    // The top level is depth 1, so "x" holds five more levels.
    let at = |depth: usize| {
        format!(
            r#"{{"model":"test-model","messages":[{{"role":"user","content":"hi"}}],"max_tokens":2,"x":{}{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
        .into_bytes()
    };
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(&at(6))).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    expect_400s(&gw, &[("depth 7", at(7), "too_deep")]).await;
    still_serves(&gw).await;
}

#[tokio::test]
async fn enormous_strings_get_400() {
    let (_s, gw) = gateway("max_string_bytes = 1000\nmax_body_bytes = 1048576", "").await;
    let key = format!(
        r#"{{"model":"test-model","messages":[{{"role":"user","content":"hi"}}],"{}":1}}"#,
        "k".repeat(100_000)
    );
    let escaped = with_content("\\u0041".repeat(1001).as_bytes());
    expect_400s(
        &gw,
        &[
            (
                "1001-byte content",
                with_content(&[b'a'; 1001]),
                "string_too_long",
            ),
            (
                "900 KB content",
                with_content(&vec![b'a'; 900_000]),
                "string_too_long",
            ),
            ("100 KB key", key.into_bytes(), "string_too_long"),
            ("1001 escaped chars", escaped, "string_too_long"),
        ],
    )
    .await;
    // 1000 bytes after unescaping is fine (the escapes take 6000).
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(&with_content(
        "\\u0041".repeat(1000).as_bytes(),
    )))
    .await
    .unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    still_serves(&gw).await;
}

#[tokio::test]
async fn too_many_messages_get_400() {
    let (_s, gw) = gateway("", "[models.validation]\nmax_messages = 4").await;
    let body = |n: usize| {
        let msgs: Vec<String> = (0..n)
            .map(|_| r#"{"role":"user","content":"hi"}"#.to_string())
            .collect();
        format!(
            r#"{{"model":"test-model","messages":[{}],"max_tokens":2}}"#,
            msgs.join(",")
        )
        .into_bytes()
    };
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(&body(4))).await.unwrap();
    assert_eq!(c.response(PROMPT).await.unwrap().status, 200);
    expect_400s(&gw, &[("5 messages", body(5), "array_above_max_length")]).await;
    still_serves(&gw).await;
}

/// A client that stops reading its answer: the gateway's writes block once
/// the socket buffers fill; after `send_timeout` the exchange ends as for a
/// departed client, and the worker's request is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    let s = sim_with(|c| {
        c.ttft = Duration::from_millis(1);
        c.itl = Duration::ZERO;
        // Far more than the socket buffers hold, at full speed.
        c.output_tokens = (200_000, 200_000);
        c.max_model_len = 1_000_000;
    });
    let gw = start(&config_text(
        &[s.url()],
        "max_response_bytes = 1000000000",
        "send_timeout = \"500ms\"",
    ));
    wait_ready(&gw).await;
    let mut c = RawConn::connect(gw.public_addr).await;
    c.send(&chat_request(
        br#"{"model":"test-model","stream":true,"messages":[{"role":"user","content":"go"}]}"#,
    ))
    .await
    .unwrap();
    // Never read. The worker's request ends (aborted) once the gateway's
    // write has been stuck for send_timeout.
    wait_until(Duration::from_secs(20), || async { s.stats().aborted == 1 })
        .await
        .expect("the stuck client's request was aborted on the worker");
    assert_eq!(s.stats().running, 0);
    drop(c);
    still_serves(&gw).await;
}
