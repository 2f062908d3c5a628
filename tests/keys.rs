//! API keys and per-key limits: 401, 403/404 allow-lists, 429 with
//! OpenAI's headers, token budgets reserved at admission and refunded from
//! the real usage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use vllm_gateway::gateway::GatewayHandle;
use vllm_gateway::sim::SimHandle;

fn sha(key: &str) -> String {
    hex::encode(vllm_gateway::auth::digest(key.as_bytes()))
}

async fn gateway(keys: &str) -> (SimHandle, GatewayHandle) {
    let s = sim_with(|c| c.output_tokens = (10, 10));
    let text = format!("{}\n{keys}", config_text(&[s.url()], "", ""));
    let gw = start(&text);
    wait_ready(&gw).await;
    (s, gw)
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401_and_good_ones_pass() {
    let keys = format!(
        "[[api_keys]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\n",
        sha("sk-alpha-secret")
    );
    let (s, gw) = gateway(&keys).await;
    let r = chat_with(&gw, None, &chat_body(json!({}))).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let r = chat_with(
        &gw,
        Some(("authorization", "Bearer sk-wrong-guess")),
        &chat_body(json!({})),
    )
    .await;
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("sk-wrong-guess"),
        "a key is never echoed: {text}"
    );
    assert_eq!(s.stats().requests, 0);

    let r = chat_with(
        &gw,
        Some(("authorization", "Bearer sk-alpha-secret")),
        &chat_body(json!({})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = chat_with(
        &gw,
        Some(("api-key", "sk-alpha-secret")),
        &chat_body(json!({})),
    )
    .await;
    assert_eq!(r.status(), 200, "Azure-style api-key header");
    // The worker never sees the client's credentials.
    let sent = last_chat(&s);
    assert!(sent.header("authorization").is_none() && sent.header("api-key").is_none());
    // /v1/models needs a key too.
    let r = client()
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric_value(
            &text,
            "vllm_gateway_auth_failures_total{reason=\"missing\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "vllm_gateway_auth_failures_total{reason=\"invalid\"}"
        ),
        Some(1.0)
    );
    assert!(text.contains("key=\"alpha\""), "{text}");
}

#[tokio::test]
async fn a_model_outside_the_keys_list_is_not_found() {
    let keys = format!(
        "[[api_keys]]\nname = \"narrow\"\nkey = \"sk-narrow\"\nmodels = [\"{MODEL}\"]\n\
         [[api_keys]]\nname = \"none\"\nkey = \"sk-none\"\nmodels = []\n"
    );
    let (s, gw) = gateway(&keys).await;
    let ok = chat_with(
        &gw,
        Some(("authorization", "Bearer sk-narrow")),
        &chat_body(json!({})),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let r = chat_with(
        &gw,
        Some(("authorization", "Bearer sk-none")),
        &chat_body(json!({})),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(s.stats().requests, 1);
    let models: Value = client()
        .get(format!("{}/v1/models", gw.url()))
        .header("authorization", "Bearer sk-none")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"], json!([]));
}

#[tokio::test]
async fn requests_per_minute_then_429_with_openai_headers() {
    let (s, gw) =
        gateway("[[api_keys]]\nname = \"rpm\"\nkey = \"sk-rpm\"\nrequests_per_minute = 3\n").await;
    let auth = Some(("authorization", "Bearer sk-rpm"));
    for i in 0..3 {
        let r = chat_with(&gw, auth, &chat_body(json!({"stream": i == 1}))).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            h["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
        assert!(h.contains_key("x-ratelimit-reset-requests"));
        r.text().await.unwrap();
    }
    let r = chat_with(&gw, auth, &chat_body(json!({}))).await;
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    let retry_ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(retry_ms > 0 && retry_ms <= retry * 1000);
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(
        s.stats().requests,
        3,
        "a limited request never reaches a GPU"
    );
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric_value(
            &text,
            "vllm_gateway_rate_limited_total{key=\"rpm\",kind=\"requests\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn token_budget_is_reserved_up_front_and_refunded_from_usage() {
    // 600 tokens a minute. Each request reserves its prompt estimate plus
    // max_tokens (400), but uses ~30 (10 completion tokens + a short prompt).
    let (s, gw) =
        gateway("[[api_keys]]\nname = \"tpm\"\nkey = \"sk-tpm\"\ntokens_per_minute = 600\n").await;
    let auth = Some(("authorization", "Bearer sk-tpm"));
    let body = chat_body(json!({"max_tokens": 400}));
    for i in 0..5 {
        // Without the refund the second request would already be refused.
        let r = chat_with(&gw, auth, &body).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "600");
        r.text().await.unwrap();
    }
    // About 495 of the 600 are left (the five answers used ~21 each). A
    // request in flight holds its reservation (~455): the next one, wanting
    // ~55 of the ~40 left, is refused before any GPU work.
    let sent_before = s.stats().requests;
    let held = {
        let c = client();
        let url = format!("{}/v1/chat/completions", gw.url());
        tokio::spawn(async move {
            c.post(url)
                .header("authorization", "Bearer sk-tpm")
                .header("x-sim-fault", "stall")
                .json(&chat_body(json!({"max_tokens": 450})))
                .send()
                .await
        })
    };
    // The stall fault holds the request before it is admitted to a batch.
    wait_until(std::time::Duration::from_secs(5), || async {
        s.stats().requests == sent_before + 1
    })
    .await
    .unwrap();
    let before = s.stats().requests;
    let r = chat_with(&gw, auth, &chat_body(json!({"max_tokens": 50}))).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "tokens");
    assert_eq!(
        s.stats().requests,
        before,
        "refused before reaching the worker"
    );
    // The held request's client leaves: nothing was used, all is refunded.
    held.abort();
    let body = chat_body(json!({"max_tokens": 400}));
    wait_until(std::time::Duration::from_secs(5), || async {
        chat_with(&gw, Some(("authorization", "Bearer sk-tpm")), &body)
            .await
            .status()
            == 200
    })
    .await
    .expect("the refund makes room again");
    let text = metrics_text(&gw).await;
    assert!(
        metric_value(
            &text,
            "vllm_gateway_rate_limited_total{key=\"tpm\",kind=\"tokens\"}"
        )
        .unwrap()
            >= 1.0
    );
}
