//! Replays the validation table (tests/fixtures/validation_cases.json)
//! against the live gateway: every rejected case gets a 400 with the exact
//! `param` and `code` and never reaches the worker; every accepted case is
//! answered by the worker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::*;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    body: Option<Value>,
    raw: Option<String>,
    raw_hex: Option<String>,
    status: u16,
    param: Option<String>,
    code: Option<String>,
    policy: Option<Value>,
    limits: Option<Value>,
    error: Option<String>,
    offset: Option<usize>,
}

/// A TOML inline table from a JSON object of scalars.
fn inline_table(v: &Value) -> String {
    let fields: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_table_through_the_gateway() {
    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/validation_cases.json"
        ))
        .unwrap(),
    )
    .unwrap();
    // Cases that need a prompt of an exact token count are covered by the
    // rewrite tests against the simulator's tokenizer (tests/rewrite.rs).
    let cases: Vec<Case> = fixture
        .cases
        .into_iter()
        .filter(|c| c.limits.is_none())
        .collect();
    assert!(cases.len() >= 150, "{}", cases.len());

    // One gateway per distinct validation policy.
    let mut groups: BTreeMap<String, Vec<Case>> = BTreeMap::new();
    for c in cases {
        let key = c.policy.as_ref().map_or(String::new(), inline_table);
        groups.entry(key).or_default().push(c);
    }
    let mut checked = 0;
    for (policy, cases) in groups {
        let s = sim_with(|c| c.models = vec!["m".into()]);
        let extra = if policy.is_empty() {
            String::new()
        } else {
            format!("validation = {policy}")
        };
        let text = config_text(&[s.url()], &extra, "")
            .replace(&format!("name = \"{MODEL}\""), "name = \"m\"");
        let gw = start(&text);
        wait_ready(&gw).await;
        let c = client();
        for case in cases {
            let body: Vec<u8> = match (&case.body, &case.raw, &case.raw_hex) {
                (Some(b), _, _) => serde_json::to_vec(b).unwrap(),
                (_, Some(r), _) => r.clone().into_bytes(),
                (_, _, Some(h)) => hex(h),
                _ => panic!("case {} has no body", case.name),
            };
            let before = s.stats().requests;
            let r = c
                .post(format!("{}/v1/chat/completions", gw.url()))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            let reached = s.stats().requests - before;
            if case.status == 200 && case.policy.is_some() {
                // A relaxed rule lets through what the operator's workers
                // accept (say, more stop strings with VLLM_MAX_STOP_STRINGS
                // raised); the simulator is a default vLLM 0.33 and may still
                // refuse it. What matters here is that the gateway forwarded it.
                assert_eq!(
                    reached, 1,
                    "case {:?} did not reach the worker: {answer}",
                    case.name
                );
                checked += 1;
                continue;
            }
            assert_eq!(status, case.status, "case {:?}: {answer}", case.name);
            if case.status == 400 {
                let err = &answer["error"];
                assert_eq!(err["type"], "invalid_request_error", "case {:?}", case.name);
                assert_eq!(
                    err["param"].as_str(),
                    case.param.as_deref(),
                    "case {:?}: {answer}",
                    case.name
                );
                if let Some(code) = case.code.as_deref().or(case.error.as_deref()) {
                    assert_eq!(err["code"], code, "case {:?}: {answer}", case.name);
                }
                if let Some(offset) = case.offset {
                    // Malformed JSON: the message names the byte position.
                    let message = err["message"].as_str().unwrap();
                    assert!(
                        message.contains(&format!("byte {offset}")),
                        "case {:?}: {message}",
                        case.name
                    );
                }
                assert_eq!(reached, 0, "case {:?} reached the worker", case.name);
            } else {
                assert_eq!(reached, 1, "case {:?} did not reach the worker", case.name);
            }
            checked += 1;
        }
    }
    assert!(checked >= 150);
}
