//! Fault injection: every fault, set on the worker (`set_faults`) or per request
//! (`x-sim-fault` header), and the counters it moves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim_common::*;
use tokio::io::AsyncReadExt;
use vllm_gateway::sim::{FaultPlan, SimConfig};

fn stream_body(seed: u64) -> Value {
    json!({"messages": [{"role": "user", "content": "faulty"}], "stream": true, "seed": seed})
}

fn with_fault(spec: &str) -> String {
    format!("x-sim-fault: {spec}\r\nConnection: close\r\n")
}

/// Content chunks (chat deltas with content, not the role chunk) in raw SSE text.
fn content_events(text: &str) -> usize {
    text.matches("\"delta\":{\"content\":").count()
}

#[tokio::test]
async fn fail_rate_answers_with_vllm_error_bodies() {
    let sim = start(fast());
    let url = sim.url();
    sim.set_faults(FaultPlan {
        fail_rate: 1.0,
        fail_status: 503,
        ..FaultPlan::default()
    });
    let resp = post(format!("{url}/v1/chat/completions"), &chat("x")).await;
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "Service Unavailable");
    assert_eq!(v["error"]["code"], 503);
    assert!(v["error"]["param"].is_null());
    // Control endpoints are never faulted.
    let r = client().get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    sim.set_faults(FaultPlan {
        fail_rate: 1.0,
        ..FaultPlan::default()
    });
    let resp = post(format!("{url}/v1/completions"), &json!({"prompt": "x"})).await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "InternalServerError");

    sim.set_faults(FaultPlan {
        fail_rate: 0.5,
        fail_status: 502,
        ..FaultPlan::default()
    });
    let mut failed = 0;
    for _ in 0..200 {
        let r = post(format!("{url}/v1/chat/completions"), &chat("coin")).await;
        match r.status().as_u16() {
            200 => {}
            502 => failed += 1,
            other => panic!("status {other}"),
        }
        r.bytes().await.unwrap();
    }
    assert!(
        (40..=160).contains(&failed),
        "{failed} of 200 failed at rate 0.5"
    );

    sim.set_faults(FaultPlan::default());
    let r = post(format!("{url}/v1/chat/completions"), &chat("ok")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // `completed` is counted when the simulator's request task ends, which
    // can be just after the client has read the last byte.
    wait_stats(&sim, Duration::from_secs(5), "completed count", |s| {
        s.completed == 200 - failed + 1
    })
    .await;
    let s = sim.stats();
    assert_eq!(s.errors_injected, 2 + failed);
    assert_eq!(s.completed, 200 - failed + 1);

    // The per-request header alone: fail_status implies failing this request.
    let r = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-sim-fault", "fail_status=429")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn stall_never_answers_until_the_client_leaves() {
    let sim = start(fast());
    let mut s = send_raw(
        sim.addr(),
        &post_bytes("/v1/chat/completions", &chat("x"), &with_fault("stall")),
    )
    .await;
    let mut buf = [0u8; 64];
    let silent = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(silent.is_err(), "stalled request must not answer");
    assert_eq!(sim.stats().errors_injected, 1);
    drop(s);
    wait_stats(
        &sim,
        Duration::from_secs(1),
        "stalled request aborted",
        |s| s.aborted == 1,
    )
    .await;
}

#[tokio::test]
async fn stall_after_tokens_goes_silent_mid_stream() {
    let sim = start(fast());
    let req = post_bytes(
        "/v1/chat/completions",
        &stream_body(1),
        &with_fault("stall_after_tokens=2"),
    );
    let mut s = send_raw(sim.addr(), &req).await;
    let got = read_until(
        &mut s,
        b"\"finish_reason\":null}]}\n\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let mut got = String::from_utf8(got).unwrap();
    // Collect whatever else arrives in a short while: nothing beyond 2 tokens.
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(300);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
        if n == 0 {
            panic!("connection closed; a stall keeps it open");
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(content_events(&got), 2, "{got}");
    assert!(!got.contains("[DONE]"));
    drop(s);
    wait_stats(&sim, Duration::from_secs(1), "aborted", |s| {
        s.aborted == 1 && s.running == 0
    })
    .await;
    assert_eq!(sim.stats().errors_injected, 1);
}

#[tokio::test]
async fn cut_after_tokens_resets_mid_stream() {
    let sim = start(fast());
    let req = post_bytes(
        "/v1/chat/completions",
        &stream_body(2),
        &with_fault("cut_after_tokens=3"),
    );
    let mut s = send_raw(sim.addr(), &req).await;
    let (bytes, _) = read_to_end(&mut s, Duration::from_secs(5)).await;
    let r = parse_response(&bytes);
    assert_eq!(r.status, 200);
    assert!(!r.complete, "no terminating chunk");
    let text = r.text();
    assert_eq!(content_events(&text), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    // reqwest sees a broken body.
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-sim-fault", "cut_after_tokens=1")
        .json(&stream_body(2))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.is_err());
    // Non-streaming: the connection dies without a response.
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-sim-fault", "cut_after_tokens=1")
        .json(&chat("x"))
        .send()
        .await;
    assert!(resp.is_err());
    let s = sim.stats();
    assert_eq!((s.errors_injected, s.completed, s.running), (3, 0, 0));
}

#[tokio::test]
async fn malformed_after_tokens_breaks_one_event_then_goes_on() {
    let sim = start(fast());
    let clean = raw_exchange(
        sim.addr(),
        &post_bytes(
            "/v1/chat/completions",
            &stream_body(3),
            "Connection: close\r\n",
        ),
    )
    .await;
    let req = post_bytes(
        "/v1/chat/completions",
        &stream_body(3),
        &with_fault("malformed_after_tokens=2"),
    );
    let r = raw_exchange(sim.addr(), &req).await;
    assert!(r.complete);
    let text = r.text();
    let payloads: Vec<String> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    let broken: Vec<&String> = payloads
        .iter()
        .filter(|p| {
            serde_json::from_str::<Value>(p.trim_start_matches("data: ")).is_err()
                && !p.contains("[DONE]")
        })
        .collect();
    assert_eq!(broken.len(), 1, "{text}");
    // Role chunk + 2 tokens precede the broken event.
    let pos = payloads.iter().position(|p| p == broken[0]).unwrap();
    assert_eq!(pos, 3);
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        content_events(&text),
        content_events(&clean.text()) + 1,
        "the broken event looks like content"
    );
    assert_eq!(sim.stats().errors_injected, 1);
}

#[tokio::test]
async fn in_band_error_after_tokens_like_vllm() {
    let sim = start(fast());
    let req = post_bytes(
        "/v1/chat/completions",
        &stream_body(4),
        &with_fault("in_band_error_after_tokens=2"),
    );
    let r = raw_exchange(sim.addr(), &req).await;
    assert_eq!(r.status, 200);
    assert!(r.complete, "the stream ends properly");
    let payloads = sse_payloads(&r.text());
    assert_eq!(payloads.len(), 1 + 2 + 2, "{payloads:?}");
    let err: Value = serde_json::from_str(&payloads[3]).unwrap();
    assert_eq!(err["error"]["code"], 500);
    assert_eq!(err["error"]["type"], "InternalServerError");
    assert_eq!(payloads[4], "[DONE]");
    // Non-streaming: HTTP 500 with the same body shape.
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-sim-fault", "in_band_error_after_tokens=2")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 500);
    assert_eq!(sim.stats().errors_injected, 2);
}

#[tokio::test]
async fn close_after_headers() {
    let sim = start(fast());
    for (body, ct) in [
        (stream_body(5), "text/event-stream"),
        (chat("x"), "application/json"),
    ] {
        let req = post_bytes(
            "/v1/chat/completions",
            &body,
            "x-sim-fault: close_after_headers\r\n",
        );
        let mut s = send_raw(sim.addr(), &req).await;
        let (bytes, _) = read_to_end(&mut s, Duration::from_secs(5)).await;
        let r = parse_response(&bytes);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with(ct));
        assert!(r.body.is_empty() && !r.complete, "{}", r.text());
    }
    assert_eq!(sim.stats().errors_injected, 2);
}

#[tokio::test]
async fn garbage_is_not_http() {
    let sim = start(fast());
    let req = post_bytes(
        "/v1/chat/completions",
        &chat("x"),
        "x-sim-fault: garbage\r\n",
    );
    let mut s = send_raw(sim.addr(), &req).await;
    let (bytes, _) = read_to_end(&mut s, Duration::from_secs(5)).await;
    assert!(!bytes.is_empty());
    assert!(!bytes.starts_with(b"HTTP/"));
    sim.set_faults("garbage".parse().unwrap());
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(&chat("x"))
        .send()
        .await;
    assert!(resp.is_err());
    assert_eq!(sim.stats().errors_injected, 2);
}

#[tokio::test]
async fn huge_body_is_valid_json_of_the_requested_size() {
    let sim = start(fast());
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-sim-fault", "huge_body_bytes=5000000")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(5_000_000));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), 5_000_000);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 4_900_000
    );
    assert_eq!(sim.stats().errors_injected, 1);
}

#[tokio::test]
async fn unhealthy_fails_health_only() {
    let sim = start(SimConfig {
        faults: "unhealthy".parse().unwrap(),
        ..fast()
    });
    let r = client()
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = post(format!("{}/v1/chat/completions", sim.url()), &chat("x")).await;
    assert_eq!(r.status(), 200);
    sim.set_faults(FaultPlan::default());
    let r = client()
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn slow_headers_delays_the_response_head() {
    let sim = start(fast());
    for body in [chat("x"), stream_body(6)] {
        let sent = Instant::now();
        let resp = client()
            .post(format!("{}/v1/chat/completions", sim.url()))
            .header("x-sim-fault", "slow_headers=300ms")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            sent.elapsed() >= Duration::from_millis(300),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(sim.stats().errors_injected, 2);
}

#[tokio::test]
async fn fault_header_is_validated_and_merged() {
    let sim = start(fast());
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-sim-fault", "explode=1")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("explode"));
    // `none` clears the worker's plan for one request.
    sim.set_faults("fail_status=503".parse().unwrap());
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-sim-fault", "none")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = post(format!("{}/v1/chat/completions", sim.url()), &chat("x")).await;
    assert_eq!(resp.status(), 503);
}
