//! Failures and retries against real simulators: connection refused, a
//! reset before the answer head and a worker's 503 are retried on another
//! worker with the same body, at most `max_retries` times; nothing is
//! retried once the first byte went to the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pool_common;

use common::*;
use pool_common::*;
use serde_json::json;
use vllm_gateway::sim::{FaultPlan, SimHandle};

fn failing(status: u16) -> FaultPlan {
    FaultPlan {
        fail_rate: 1.0,
        fail_status: status,
        ..FaultPlan::default()
    }
}

fn chat_bodies(s: &SimHandle) -> Vec<bytes::Bytes> {
    s.received()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| r.body)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_retried_on_a_live_one_with_the_same_body() {
    let live = sim_with(|c| c.max_model_len = 1_000_000);
    let dead_worker = dead_worker();
    let dead = dead_worker.url.clone();
    // The breaker is kept out of the way so the dead worker keeps being
    // picked; one active check at start (of 2 needed) does not take it out.
    let text = config_text(
        &[dead.clone(), live.url()],
        "failures_to_eject = 1000\nhealth_interval = \"1h\"",
        "",
    );
    let gw = start(&text);
    wait_ready(&gw).await;
    // 100 KB: larger than Pingora's 64 KiB retry buffer, replayed all the same.
    let big = "lorem ipsum dolor sit amet ".repeat(4000);
    let mut sent = 0;
    while metric(&gw, &retries()).await < 3.0 {
        sent += 1;
        assert!(sent <= 40, "the dead worker was never picked");
        let body = chat_body(json!({
            "messages": [{"role": "user", "content": format!("{sent}: {big}")}],
            "max_tokens": 2,
        }));
        let (status, _, answer) = post_chat(&gw, &body).await;
        assert_eq!(status, 200, "{answer}");
        let got = chat_bodies(&live).pop().unwrap();
        let got: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(got, body, "the worker got the body as sent");
    }
    wait_logged(&gw, sent as f64).await;
    let retried = metric(&gw, &retries()).await;
    assert_eq!(live.stats().requests, sent);
    assert_metric(&gw, &upstream_errors("connect"), retried).await;
    assert_metric(&gw, &decisions("retry"), retried).await;
    // One first pick per request.
    assert_metric(&gw, &decisions("least_loaded"), sent as f64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_worker_a_refused_connection_is_a_503_and_no_retry() {
    let dead = dead_worker();
    let gw = start(&config_text(
        std::slice::from_ref(&dead.url),
        "health_interval = \"1h\"",
        "",
    ));
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(openai_error(&body)["type"], "server_error");
    wait_logged(&gw, 1.0).await;
    assert_metric(&gw, &upstream_errors("connect"), 1.0).await;
    // There was nowhere to retry: no retry may be counted.
    assert_metric(&gw, &retries(), 0.0).await;
    assert_metric(&gw, &decisions("retry"), 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_503_is_retried_elsewhere_and_retries_are_bounded() {
    let (busy, ok) = (sim(), sim());
    busy.set_faults(failing(503));
    let gw = gateway_with(&[&busy, &ok], "failures_to_eject = 1000").await;
    let mut sent = 0;
    while busy.stats().requests < 3 {
        sent += 1;
        assert!(sent <= 40, "the busy worker was never picked");
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    // Every request was answered by `ok`.
    assert_eq!(ok.stats().completed, sent);
    wait_logged(&gw, sent as f64).await;
    assert_metric(&gw, &retries(), busy.stats().requests as f64).await;
    assert_metric(
        &gw,
        &upstream_errors("status_503"),
        busy.stats().requests as f64,
    )
    .await;

    // Every worker busy: one try each (1 + max_retries = 3 >= 2 workers),
    // then the gateway's own 503.
    ok.set_faults(failing(503));
    let (b0, o0) = (busy.stats().requests, ok.stats().requests);
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 503);
    assert_eq!(openai_error(&body)["code"], "upstream_unavailable");
    assert_eq!(
        (busy.stats().requests - b0, ok.stats().requests - o0),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_caps_the_attempts() {
    let sims: Vec<SimHandle> = (0..4).map(|_| sim()).collect();
    for s in &sims {
        s.set_faults(failing(503));
    }
    let refs: Vec<&SimHandle> = sims.iter().collect();
    let gw = gateway_with(&refs, "max_retries = 1\nfailures_to_eject = 1000").await;
    let (status, _, _) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 503);
    assert_eq!(requests_of(&refs).iter().sum::<u64>(), 2, "1 try + 1 retry");
    assert_metric(&gw, &retries(), 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_head_is_retried_even_on_a_pooled_connection() {
    // `resets` drops the connection at the first token of every answer,
    // before any head. Frequent health checks keep pooled connections to it,
    // so requests meet it on reused connections too.
    let (resets, ok) = (sim(), sim());
    resets.set_faults(FaultPlan {
        cut_after_tokens: Some(0),
        ..FaultPlan::default()
    });
    let gw = gateway_with(
        &[&resets, &ok],
        "max_retries = 1\nfailures_to_eject = 1000\nhealth_interval = \"20ms\"",
    )
    .await;
    let mut sent = 0;
    while resets.stats().requests < 6 {
        sent += 1;
        assert!(sent <= 60, "the resetting worker was never picked");
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        assert_eq!(status, 200, "request {sent}: {body}");
    }
    // Every request was answered by `ok`.
    assert_eq!(ok.stats().completed, sent);
    wait_logged(&gw, sent as f64).await;
    assert!(metric(&gw, &retries()).await >= 1.0);
    // Every attempt on it was classified: a reset on a pooled connection is
    // first taken for a stale connection and tried once more (not a retry),
    // and that second failure counts as the worker's reset.
    let stale = metric(&gw, &upstream_errors("stale_connection")).await;
    let reset = metric(&gw, &upstream_errors("reset")).await;
    assert_eq!(stale + reset, resets.stats().requests as f64);
    assert_metric(&gw, &retries(), reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_retried_after_the_first_byte() {
    let (a, b) = (sim(), sim());
    // Whichever worker takes the stream cuts it after two tokens.
    for s in [&a, &b] {
        s.set_faults(FaultPlan {
            cut_after_tokens: Some(2),
            ..FaultPlan::default()
        });
    }
    let gw = gateway_with(&[&a, &b], "").await;
    let (status, headers, body) =
        post_chat(&gw, &chat_body(json!({"stream": true, "max_tokens": 50}))).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(a.stats().requests + b.stats().requests, 1, "not retried");
    let events = sse_data(&body);
    let err_at = events
        .iter()
        .position(|e| e.contains("\"error\""))
        .expect(&body);
    let tokens = events[..err_at]
        .iter()
        .filter(|e| e.contains("\"content\":\"") && !e.contains("\"content\":\"\""))
        .count();
    assert_eq!(tokens, 2, "{body}");
    let err: serde_json::Value = serde_json::from_str(&events[err_at]).unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(events.len(), err_at + 2, "the stream ends after the error");
    wait_logged(&gw, 1.0).await;
    assert_metric(&gw, &upstream_errors("reset"), 1.0).await;
    assert_metric(&gw, &retries(), 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_before_its_first_event_continues_on_another_worker() {
    // With the default `stream_head = "immediate"` the client has the
    // stream's head as soon as the first worker sends its own; that worker
    // then closes. Nothing of the body went out, so another worker takes the
    // request and the client gets one whole, ordinary stream.
    let (breaks, ok) = (sim(), sim());
    breaks.set_faults(FaultPlan {
        close_after_headers: true,
        ..FaultPlan::default()
    });
    let gw = gateway_with(&[&breaks, &ok], "failures_to_eject = 1000").await;
    let mut sent = 0;
    while breaks.stats().requests < 3 {
        sent += 1;
        assert!(sent <= 60, "the breaking worker was never picked");
        let (status, headers, body) =
            post_chat(&gw, &chat_body(json!({"stream": true, "max_tokens": 5}))).await;
        assert_eq!(status, 200, "{body}");
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = sse_data(&body);
        assert!(!body.contains("\"error\""), "{body}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
        let roles = events.iter().filter(|e| e.contains("\"role\"")).count();
        assert_eq!(roles, 1, "one stream, not two spliced: {body}");
    }
    assert_eq!(ok.stats().completed, sent);
    wait_logged(&gw, sent as f64).await;
    let broke = breaks.stats().requests as f64;
    assert_metric(&gw, &retries(), broke).await;
    let failures = metric(&gw, &upstream_errors("reset")).await
        + metric(&gw, &upstream_errors("stale_connection")).await;
    assert!(failures >= broke, "{failures} < {broke}");
}
