//! Exact usage, streams included: the gateway asks the worker for usage on
//! every stream and hides the usage chunk the client did not ask for; a
//! stream cut short is counted from what was delivered, labelled estimated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

fn tokens(text: &str, kind: &str, source: &str) -> f64 {
    metric_value(
        text,
        &format!(
            "vllm_gateway_tokens_total{{key=\"-\",kind=\"{kind}\",model=\"{MODEL}\",source=\"{source}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_stream_that_did_not_ask_for_usage_is_counted_exactly_without_seeing_it() {
    let s = sim_with(|c| c.output_tokens = (7, 7));
    let gw = gateway_for(&[&s]).await;
    let (status, _, body) = post_chat(&gw, &chat_body(json!({"stream": true}))).await;
    assert_eq!(status, 200);
    let events = sse_data(&body);
    assert!(
        !body.contains("\"usage\""),
        "the client did not ask for usage: {body}"
    );
    assert!(events.iter().all(|e| !e.contains("\"choices\":[]")));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // The worker was asked for it.
    let sent = last_chat(&s).json().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // Counters move in the logging phase, just after the last byte.
    wait_logged(&gw, 1.0).await;
    let text = metrics_text(&gw).await;
    assert_eq!(tokens(&text, "completion", "exact"), 7.0, "{text}");
    assert!(tokens(&text, "prompt", "exact") > 0.0);
}

#[tokio::test]
async fn usage_the_client_asked_for_passes_through() {
    let s = sim_with(|c| c.output_tokens = (5, 5));
    let gw = gateway_for(&[&s]).await;
    let (_, _, body) = post_chat(
        &gw,
        &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    let events = sse_data(&body);
    let usage: Vec<Value> = events
        .iter()
        .filter(|e| e.contains("\"usage\""))
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(usage.len(), 1, "{body}");
    assert_eq!(usage[0]["choices"], json!([]));
    assert_eq!(usage[0]["usage"]["completion_tokens"], 5);
    // Non-streaming: usage read from the answer.
    post_chat(&gw, &chat_body(json!({}))).await;
    wait_logged(&gw, 2.0).await;
    let text = metrics_text(&gw).await;
    assert_eq!(tokens(&text, "completion", "exact"), 10.0, "{text}");
}

#[tokio::test]
async fn a_cut_stream_is_billed_from_what_was_delivered_and_marked_estimated() {
    let s = sim_with(|c| c.output_tokens = (20, 20));
    let gw = gateway_for(&[&s]).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-sim-fault", "cut_after_tokens=4")
        .json(&chat_body(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap_or_default();
    // The client learns the stream broke: an in-band error event.
    assert!(body.contains("\"error\""), "{body}");
    wait_logged(&gw, 1.0).await;
    let text = metrics_text(&gw).await;
    assert_eq!(tokens(&text, "completion", "estimated"), 4.0, "{text}");
    assert!(tokens(&text, "prompt", "estimated") > 0.0);
    assert_eq!(tokens(&text, "completion", "exact"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_sees_usage_only_when_it_asks() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let out = common::openai::run_client(&gw.url(), "usage", None).await;
    assert_eq!(out["plain_usage_chunks"], 0, "{out}");
    assert_eq!(out["plain_empty_choice_chunks"], 0, "{out}");
    assert_eq!(out["asked_usage"].as_array().unwrap().len(), 1, "{out}");
    assert!(out["asked_usage"][0]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(out["asked_last_choices"], 0);
}
