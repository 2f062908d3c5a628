//! Property: requests generated from the specs' shapes, written with
//! irregular formatting, all pass the live gateway and reach the worker
//! unchanged but for the limit fields (and `stream_options`, which the
//! gateway sets on streams to count usage).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/chat_shapes.rs"]
mod chat_shapes;
mod common;

use chat_shapes::*;
use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use vllm_gateway::request::splice::top_level_members;

/// Top-level members the gateway may edit.
const EDITABLE: &[&str] = &["max_tokens", "max_completion_tokens", "stream_options"];

fn key_of(body: &[u8], m: &vllm_gateway::request::splice::Member) -> String {
    serde_json::from_slice::<String>(&body[m.key.clone()]).unwrap()
}

/// Keep the simulated answers short: the strategies draw limits up to a
/// million tokens (with `min_tokens` forcing half of them), which a real
/// worker would take minutes to produce. Smaller values keep every request
/// spec-shaped and valid.
fn bound_generation(body: &mut Value) {
    let obj = body.as_object_mut().unwrap();
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = obj.get(key).and_then(Value::as_u64) {
            obj.insert(key.into(), (v.min(64)).into());
        }
    }
    if obj.contains_key("min_tokens") {
        obj.insert("min_tokens".into(), 1.into());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_reach_the_worker_unchanged_but_for_the_limit() {
    let s = sim_with(|c| {
        c.models = vec!["m".into()];
        c.max_model_len = 1_000_000;
        c.output_tokens = (1, 2);
        c.itl = std::time::Duration::ZERO;
    });
    let text =
        config_text(&[s.url()], "", "").replace(&format!("name = \"{MODEL}\""), "name = \"m\"");
    let gw = start(&text);
    wait_ready(&gw).await;
    let c = client();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let strategy = valid_request();
    for i in 0..96u64 {
        let mut body = strategy.new_tree(&mut runner).unwrap().current();
        bound_generation(&mut body);
        let mut text = String::new();
        write_irregular(&body, &mut Rng(i + 1), &mut text);
        s.clear_received();
        let r = c
            .post(format!("{}/v1/chat/completions", gw.url()))
            .header("content-type", "application/json")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer = r.text().await.unwrap();
        // The gateway must not refuse a valid request; the worker answers it.
        let got = s
            .received()
            .into_iter()
            .find(|r| r.path == "/v1/chat/completions")
            .unwrap_or_else(|| {
                panic!("case {i} did not reach the worker ({status}): {answer}\n{text}")
            });
        let sent = text.as_bytes();
        let before = top_level_members(sent).unwrap();
        let after = top_level_members(&got.body).unwrap();
        for m in &before.members {
            let key = key_of(sent, m);
            if EDITABLE.contains(&key.as_str()) {
                continue;
            }
            let twin = after
                .members
                .iter()
                .find(|a| got.body[a.key.clone()] == sent[m.key.clone()])
                .unwrap_or_else(|| panic!("case {i}: member {key} lost"));
            assert_eq!(
                &got.body[twin.value.clone()],
                &sent[m.value.clone()],
                "case {i}: member {key} changed"
            );
        }
        // And nothing was added but the editable members.
        for a in &after.members {
            let key = key_of(&got.body, a);
            assert!(
                EDITABLE.contains(&key.as_str())
                    || before.members.iter().any(|m| key_of(sent, m) == key),
                "case {i}: member {key} added"
            );
        }
        // At most one limit field leaves the gateway.
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        assert!(
            !(v.get("max_tokens").is_some_and(|x| !x.is_null())
                && v.get("max_completion_tokens").is_some_and(|x| !x.is_null())),
            "case {i}: both limit fields sent"
        );
    }
}
