//! Upstream timeouts against real simulators: connect (moves on to another
//! worker), first token and total before anything was sent (a 504 OpenAI
//! error), idle and total mid-stream (an in-band error event, then the
//! stream ends and the connection closes cleanly). Every timeout drops the
//! worker's connection, so the worker aborts the request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pool_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pool_common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vllm_gateway::sim::SimHandle;

/// A listening socket whose accept queue is full: connection attempts get
/// no answer at all (the kernel drops the SYN), as with a lost host.
struct Blackhole {
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
    addr: SocketAddr,
}

fn blackhole() -> Blackhole {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "could not fill the accept queue of {addr}"
    );
    Blackhole {
        _listener: listener,
        _fillers: fillers,
        addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_moves_on_to_another_worker() {
    let hole = blackhole();
    let live = sim();
    let text = config_text(
        &[format!("http://{}", hole.addr), live.url()],
        "connect_timeout = \"300ms\"\nfailures_to_eject = 1000\nhealth_interval = \"1h\"",
        "",
    );
    let gw = start(&text);
    wait_ready(&gw).await;
    let mut sent = 0.0;
    loop {
        sent += 1.0;
        assert!(sent <= 40.0, "the unreachable worker was never picked");
        let started = Instant::now();
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        wait_logged(&gw, sent).await;
        if metric(&gw, &upstream_errors("connect")).await >= 1.0 {
            // This request waited out the connect timeout, then went on.
            assert!(took >= Duration::from_millis(300), "{took:?}");
            assert!(took < Duration::from_secs(5), "{took:?}");
            break;
        }
    }
    assert_metric(&gw, &retries(), 1.0).await;
}

/// A streaming request answered by a 504 in time (before the worker's
/// first token), and the worker saw its request aborted.
async fn expect_first_token_504(
    s: &SimHandle,
    gw: &vllm_gateway::gateway::GatewayHandle,
    fault: &str,
) {
    let before = s.stats().aborted;
    let started = Instant::now();
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-sim-fault", fault)
        .json(&chat_body(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert_eq!(status, 504, "{fault}: {body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    let e = openai_error(&body);
    assert_eq!(e["code"], "upstream_timeout");
    assert!(
        e["message"].as_str().unwrap().contains("first token"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    wait_until(Duration::from_secs(5), || async {
        s.stats().aborted > before
    })
    .await
    .expect("the worker's request was aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_token_in_time_is_a_504_before_anything_is_sent() {
    // vLLM sends a stream's head at once and its first event with the first
    // token, after the queue and the prefill. With `first_event` the client's
    // head waits for that event, so a silent worker is still a plain 504.
    let s = sim_with(|c| c.ttft = Duration::from_secs(10));
    let gw = gateway_with(
        &[&s],
        "first_token_timeout = \"300ms\"\nfailures_to_eject = 1000\nstream_head = \"first_event\"",
    )
    .await;
    expect_first_token_504(&s, &gw, "none").await;
    // A worker that does not even send the head.
    expect_first_token_504(&s, &gw, "slow_headers=10s").await;
    assert_eq!(s.stats().running, 0);
    assert_metric(&gw, &upstream_errors("timeout"), 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_answer_over_the_request_timeout_is_a_504() {
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(50);
        c.output_tokens = (200, 200);
    });
    let gw = gateway_with(&[&s], "request_timeout = \"400ms\"").await;
    let started = Instant::now();
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(openai_error(&body)["code"], "upstream_timeout");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_secs(8));
    wait_until(Duration::from_secs(5), || async { s.stats().aborted == 1 })
        .await
        .expect("the worker's request was aborted");
}

/// POST a streaming chat request over a raw connection and read until the
/// gateway closes it. Returns the raw response and whether it closed.
async fn raw_stream(gw: &vllm_gateway::gateway::GatewayHandle) -> (String, bool) {
    let body = serde_json::to_vec(&chat_body(json!({"stream": true, "max_tokens": 100}))).unwrap();
    let mut c = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break false,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).to_string(), closed)
}

/// The answer was a 200 stream that carried some tokens, then one in-band
/// OpenAI error event, then `[DONE]`, with its chunked framing complete.
fn assert_in_band_error(raw: &str, closed: bool) {
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(closed, "the gateway kept the connection open:\n{raw}");
    assert!(
        raw.ends_with("0\r\n\r\n"),
        "the chunked body was not terminated:\n{raw}"
    );
    let events = sse_data(raw);
    let err_at = events
        .iter()
        .position(|e| e.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event:\n{raw}"));
    assert!(err_at >= 2, "tokens came first:\n{raw}");
    let err_json = events[err_at].split("\r\n").next().unwrap();
    let err: serde_json::Value = serde_json::from_str(err_json).unwrap_or_else(|_| panic!("{raw}"));
    assert_eq!(err["error"]["type"], "server_error");
    assert!(events[err_at + 1].starts_with("[DONE]"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_stream_ends_it_with_an_in_band_error_and_a_clean_close() {
    let s = sim();
    s.set_faults(vllm_gateway::sim::FaultPlan {
        stall_after_tokens: Some(3),
        ..Default::default()
    });
    let gw = gateway_with(&[&s], "idle_timeout = \"300ms\"").await;
    let started = Instant::now();
    let (raw, closed) = raw_stream(&gw).await;
    assert_in_band_error(&raw, closed);
    assert!(raw.contains("went silent"), "{raw}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    wait_until(Duration::from_secs(5), || async { s.stats().aborted == 1 })
        .await
        .expect("the stalled worker request was aborted");
    assert_metric(&gw, &upstream_errors("timeout"), 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_the_request_timeout_ends_with_an_in_band_error() {
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(50);
        c.output_tokens = (100, 100);
    });
    let gw = gateway_with(&[&s], "request_timeout = \"500ms\"").await;
    let (raw, closed) = raw_stream(&gw).await;
    assert_in_band_error(&raw, closed);
    assert!(raw.contains("request timeout"), "{raw}");
    wait_until(Duration::from_secs(5), || async { s.stats().aborted == 1 })
        .await
        .expect("the worker's request was aborted");
}

/// Time until the response head arrives, then the whole body.
async fn head_then_body(gw: &vllm_gateway::gateway::GatewayHandle) -> (Duration, u16, String) {
    let started = Instant::now();
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&chat_body(json!({"stream": true, "max_tokens": 3})))
        .send()
        .await
        .unwrap();
    let head_at = started.elapsed();
    let status = r.status().as_u16();
    (head_at, status, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_streams_head_goes_out_before_the_first_token() {
    let s = sim_with(|c| c.ttft = Duration::from_millis(600));
    // With `first_event` the head waits for the first event.
    let gw = gateway_with(&[&s], "stream_head = \"first_event\"").await;
    let (head_at, status, body) = head_then_body(&gw).await;
    assert_eq!(status, 200);
    assert!(head_at >= Duration::from_millis(550), "{head_at:?}");
    assert!(body.contains("data: [DONE]"), "{body}");
    drop(gw);

    // By default (`immediate`) it goes out as soon as the worker's does.
    let gw = gateway_with(&[&s], "").await;
    let (head_at, status, body) = head_then_body(&gw).await;
    assert_eq!(status, 200);
    assert!(head_at < Duration::from_millis(300), "{head_at:?}");
    assert!(
        body.contains("data: [DONE]") && !body.contains("\"error\""),
        "{body}"
    );
    assert_eq!(s.stats().aborted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_missing_first_token_is_an_in_band_error() {
    let s = sim_with(|c| c.ttft = Duration::from_secs(10));
    let gw = gateway_with(
        &[&s],
        "first_token_timeout = \"300ms\"\nfailures_to_eject = 1000",
    )
    .await;
    let started = Instant::now();
    let (raw, closed) = raw_stream(&gw).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(closed, "the gateway kept the connection open:\n{raw}");
    assert!(
        raw.ends_with("0\r\n\r\n"),
        "chunked body not terminated:\n{raw}"
    );
    let events = sse_data(&raw);
    let err = events
        .iter()
        .find(|e| e.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event:\n{raw}"));
    assert!(err.contains("first token"), "{raw}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    wait_until(Duration::from_secs(5), || async { s.stats().aborted == 1 })
        .await
        .expect("the silent worker's request was aborted");
    assert_metric(&gw, &upstream_errors("timeout"), 1.0).await;
}
