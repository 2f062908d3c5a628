//! Workers that fail in every way the simulator can: each time the client of
//! that one request gets a clean OpenAI error (or, mid-stream, an in-band
//! error event and [DONE]), and requests running beside it never notice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use vllm_gateway::gateway::GatewayHandle;

/// Healthy streams that run beside the fault: all must complete whole.
fn bystanders(gw: &Arc<GatewayHandle>, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let gw = Arc::clone(gw);
            tokio::spawn(async move {
                let (status, _, body) =
                    post_chat(&gw, &chat_body(json!({"stream": true, "seed": i}))).await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(
                    sse_data(&body).last().map(String::as_str),
                    Some("[DONE]"),
                    "{body}"
                );
                assert!(
                    !body.contains("\"error\""),
                    "a bystander saw an error: {body}"
                );
                assert!(!sse_content(&body).is_empty());
            })
        })
        .collect()
}

async fn faulty(gw: &GatewayHandle, fault: &str, body: Value) -> (u16, String) {
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-sim-fault", fault)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn openai_error(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let e = &v["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "missing {key}: {body}");
    }
    assert!(
        e["code"].is_null() || e["code"].is_string(),
        "code must be a string or null: {body}"
    );
    e.clone()
}

/// A stream that broke: some tokens, then an in-band error event, then
/// [DONE]; nothing after, nothing malformed.
fn assert_in_band_error(body: &str) {
    let events = sse_data(body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let error = &events[events.len() - 2];
    let v: Value = serde_json::from_str(error).unwrap_or_else(|_| panic!("{body}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    for e in &events[..events.len() - 1] {
        assert!(
            serde_json::from_str::<Value>(e).is_ok(),
            "a malformed event reached the client: {e}"
        );
    }
}

async fn setup(model_keys: &str) -> Arc<GatewayHandle> {
    let s = Box::leak(Box::new(sim_with(|c| {
        c.itl = Duration::from_millis(10);
        c.output_tokens = (12, 12);
    })));
    let gw = start(&config_text(&[s.url()], model_keys, ""));
    wait_ready(&gw).await;
    Arc::new(gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_stream_is_an_in_band_error() {
    let gw = setup("").await;
    let side = bystanders(&gw, 6);
    let (status, body) = faulty(
        &gw,
        "cut_after_tokens=3",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_in_band_error(&body);
    for t in side {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_times_out_cleanly() {
    let gw = setup("idle_timeout = \"300ms\"\nrequest_timeout = \"2s\"").await;
    let side = bystanders(&gw, 6);
    let (status, body) = faulty(
        &gw,
        "stall_after_tokens=2",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_in_band_error(&body);
    // Non-streaming: nothing was sent yet, so a 504.
    let (status, body) = faulty(&gw, "stall", chat_body(json!({}))).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(openai_error(&body)["code"], "upstream_timeout");
    for t in side {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sse_never_reaches_the_client() {
    let gw = setup("").await;
    let side = bystanders(&gw, 6);
    let (status, body) = faulty(
        &gw,
        "malformed_after_tokens=2",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_in_band_error(&body);
    assert!(
        sse_content(&body).len() > 1,
        "the tokens before the break arrived: {body}"
    );
    for t in side {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_any_sane_one_is_refused() {
    let gw = setup("max_response_bytes = 100000").await;
    let side = bystanders(&gw, 6);
    let (status, body) = faulty(&gw, "huge_body_bytes=5000000", chat_body(json!({}))).await;
    assert_eq!(status, 502, "{}", &body[..body.len().min(300)]);
    assert_eq!(openai_error(&body)["code"], "upstream_response_too_large");
    for t in side {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_errors_are_rewritten_in_openai_shape() {
    let gw = setup("failures_to_eject = 100").await;
    let side = bystanders(&gw, 6);
    // A worker's 500: vLLM's body has an integer code; the client gets
    // OpenAI's shape, as a 502 (the upstream failed).
    let (status, body) = faulty(&gw, "fail_status=500", chat_body(json!({}))).await;
    assert_eq!(status, 502, "{body}");
    let e = openai_error(&body);
    assert_eq!(e["code"], "upstream_error");
    assert_eq!(e["type"], "server_error");
    // A worker's own 400 keeps its status and message, in OpenAI's shape.
    let (status, body) = faulty(&gw, "fail_status=400", chat_body(json!({}))).await;
    assert_eq!(status, 400, "{body}");
    let e = openai_error(&body);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(!e["message"].as_str().unwrap().is_empty());
    for t in side {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_closes_after_headers_or_speaks_garbage_is_a_clean_error() {
    for stream_head in ["immediate", "first_event"] {
        let gw = setup(&format!(
            "failures_to_eject = 100\nstream_head = {stream_head:?}"
        ))
        .await;
        let side = bystanders(&gw, 6);
        for fault in ["close_after_headers", "garbage"] {
            for stream in [false, true] {
                let (status, body) = faulty(&gw, fault, chat_body(json!({"stream": stream}))).await;
                let case = format!("{stream_head} {fault} stream={stream}: {status} {body}");
                if stream && fault == "close_after_headers" && stream_head == "immediate" {
                    // The stream's head went out with the worker's; the
                    // retries broke the same way, so the error is in-band.
                    assert_eq!(status, 200, "{case}");
                    assert_in_band_error(&body);
                } else {
                    assert!((502..=503).contains(&status), "{case}");
                    openai_error(&body);
                }
            }
        }
        for t in side {
            t.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_own_in_band_error_passes_through() {
    let gw = setup("").await;
    let side = bystanders(&gw, 4);
    let (status, body) = faulty(
        &gw,
        "in_band_error_after_tokens=2",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_in_band_error(&body);
    for t in side {
        t.await.unwrap();
    }
}
