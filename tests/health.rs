//! Worker health against real simulators: active `GET /health` checks take
//! a worker out after `unhealthy_after` failures and back after
//! `healthy_after` passes; the circuit breaker ejects a worker whose requests
//! fail, with exponential back-off and one half-open probe; `/readyz` and
//! `/metrics` tell what the pool looks like.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pool_common;

use std::time::{Duration, Instant};

use common::*;
use pool_common::*;
use serde_json::json;
use vllm_gateway::sim::{FaultPlan, SimHandle};

fn health_checks(s: &SimHandle) -> usize {
    s.received().iter().filter(|r| r.path == "/health").count()
}

fn failing(status: u16) -> FaultPlan {
    FaultPlan {
        fail_rate: 1.0,
        fail_status: status,
        ..FaultPlan::default()
    }
}

async fn readyz(gw: &vllm_gateway::gateway::GatewayHandle) -> (u16, String) {
    let r = client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_worker_out_and_back_after_consecutive_results() {
    let (a, b) = (sim(), sim());
    let gw = gateway_with(
        &[&a, &b],
        "health_interval = \"40ms\"\nunhealthy_after = 3\nhealthy_after = 3",
    )
    .await;

    // Checks are counted from before the fault, so a check that passed in
    // between can only make the count larger, never smaller.
    let before = health_checks(&a);
    a.set_faults(FaultPlan {
        unhealthy: true,
        ..FaultPlan::default()
    });
    wait_state(&gw, &a.url(), "unhealthy", Duration::from_secs(10)).await;
    let failed = health_checks(&a) - before;
    assert!(failed >= 3, "out after {failed} failed checks");
    assert_eq!(
        reported_state(&gw, &b.url()).await.as_deref(),
        Some("healthy")
    );

    let served = a.stats().requests;
    for _ in 0..10 {
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        a.stats().requests,
        served,
        "an unhealthy worker gets no traffic"
    );

    let before = health_checks(&a);
    a.set_faults(FaultPlan::default());
    wait_state(&gw, &a.url(), "healthy", Duration::from_secs(10)).await;
    let passed = health_checks(&a) - before;
    assert!(passed >= 3, "back after {passed} passed checks");
    // And it takes traffic again.
    wait_until(Duration::from_secs(10), || async {
        post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        a.stats().requests > served
    })
    .await
    .expect("the restored worker serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_eject_a_worker_with_backoff_and_a_probe_restores_it() {
    let s = sim();
    // Active checks stay green (only generation fails), so every state
    // change here is the circuit breaker's.
    let gw = gateway_with(
        &[&s],
        "failures_to_eject = 3\nejection_base = \"300ms\"\nejection_max = \"10s\"",
    )
    .await;
    s.set_faults(failing(500));
    // Each ejection clock is read before the request that trips the
    // breaker: the gateway starts the ejection before its 502 reaches us,
    // so a clock read after the answer would undercount the ejection.
    let mut ejected_at = None;
    for _ in 0..3 {
        ejected_at = Some(Instant::now());
        let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
        // The worker's 500 reaches the client as an OpenAI-shaped 502 with
        // the worker's message; it counts against the worker.
        assert_eq!(status, 502, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_error", "{body}");
    }
    let ejected_at = ejected_at.expect("three requests were sent");
    assert_eq!(
        reported_state(&gw, &s.url()).await.as_deref(),
        Some("ejected")
    );
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 503);
    assert_eq!(openai_error(&body)["code"], "no_healthy_upstream");
    assert_eq!(s.stats().requests, 3, "nothing reaches an ejected worker");
    let (status, text) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert!(text.contains(MODEL), "{text}");
    assert_eq!(
        metric(
            &gw,
            &format!(
                "vllm_gateway_worker_healthy{{model=\"{MODEL}\",worker=\"{}\"}}",
                s.url()
            )
        )
        .await,
        0.0
    );

    // After the ejection the breaker half-opens; the probe fails: ejected
    // again, for twice as long.
    wait_state(&gw, &s.url(), "half_open", Duration::from_secs(10)).await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(300));
    let again_at = Instant::now();
    let (status, _, _) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 502);
    assert_eq!(
        reported_state(&gw, &s.url()).await.as_deref(),
        Some("ejected")
    );
    wait_state(&gw, &s.url(), "half_open", Duration::from_secs(10)).await;
    assert!(
        again_at.elapsed() >= Duration::from_millis(600),
        "second ejection lasted {:?}",
        again_at.elapsed()
    );

    // The worker recovers. Exactly one probe is let through: while it runs
    // (slowly), another request finds no worker.
    s.set_faults(FaultPlan::default());
    let probe = hold(
        format!("{}/v1/chat/completions", gw.url()),
        chat_body(json!({})),
        &[("x-sim-fault", "slow_headers=400ms")],
    );
    wait_until(Duration::from_secs(5), || async { s.stats().requests == 5 })
        .await
        .expect("the probe reached the worker");
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(s.stats().requests, 5);
    wait_state(&gw, &s.url(), "healthy", Duration::from_secs(10)).await;
    probe.abort();
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(readyz(&gw).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_probe_does_not_leave_the_worker_out_for_good() {
    let s = sim();
    let gw = gateway_with(
        &[&s],
        "failures_to_eject = 1\nejection_base = \"100ms\"\nejection_max = \"10s\"",
    )
    .await;
    s.set_faults(failing(500));
    let (status, _, _) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 502);
    s.set_faults(FaultPlan::default());
    wait_state(&gw, &s.url(), "half_open", Duration::from_secs(10)).await;

    // The probe's client leaves before the answer: the probe proved nothing
    // either way, and the next request must be allowed to probe again.
    let probe = hold(
        format!("{}/v1/chat/completions", gw.url()),
        chat_body(json!({"stream": true})),
        &[("x-sim-fault", "stall")],
    );
    wait_until(Duration::from_secs(5), || async { s.stats().requests == 2 })
        .await
        .expect("the probe reached the worker");
    probe.abort();
    wait_until(Duration::from_secs(5), || async { s.stats().aborted == 1 })
        .await
        .expect("the probe was aborted");
    let got = wait_until(Duration::from_secs(5), || async {
        post_chat(&gw, &chat_body(json!({}))).await.0 == 200
    })
    .await;
    assert!(
        got.is_ok(),
        "worker still out: {:?}",
        reported_state(&gw, &s.url()).await
    );
    assert_eq!(
        reported_state(&gw, &s.url()).await.as_deref(),
        Some("healthy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_model_without_a_healthy_worker_and_metrics_show_states() {
    let good = sim();
    let other = sim_with(|c| c.models = vec!["other-model".into()]);
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
threads = 1

[[models]]
name = "{MODEL}"
workers = ["{}"]
health_interval = "40ms"
unhealthy_after = 1
healthy_after = 1

[[models]]
name = "other-model"
workers = ["{}"]
health_interval = "40ms"
unhealthy_after = 1
healthy_after = 1
"#,
        good.url(),
        other.url()
    );
    let gw = start(&text);
    wait_ready(&gw).await;
    other.set_faults(FaultPlan {
        unhealthy: true,
        ..FaultPlan::default()
    });
    wait_until(Duration::from_secs(10), || async {
        readyz(&gw).await.0 == 503
    })
    .await
    .expect("not ready while other-model has no healthy worker");
    let (_, why) = readyz(&gw).await;
    assert!(why.contains("other-model") && !why.contains(MODEL), "{why}");
    let m = metrics_text(&gw).await;
    assert_eq!(
        reported_state_in(&m, "other-model", &other.url()).as_deref(),
        Some("unhealthy")
    );
    assert_eq!(
        reported_state_in(&m, MODEL, &good.url()).as_deref(),
        Some("healthy")
    );
    // The healthy model still serves.
    let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
    assert_eq!(status, 200, "{body}");
    other.set_faults(FaultPlan::default());
    wait_until(Duration::from_secs(10), || async {
        readyz(&gw).await.0 == 200
    })
    .await
    .expect("ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_and_timeouts_count_against_a_worker() {
    // One worker refuses connections, one never produces a first token;
    // active checks stay out of it (one check at start, 2 needed).
    let dead_worker = dead_worker();
    let dead = dead_worker.url.clone();
    let silent = sim_with(|c| c.ttft = Duration::from_secs(30));
    let live = sim();
    let gw = start(&config_text(
        &[dead.clone(), silent.url(), live.url()],
        "failures_to_eject = 2\nejection_base = \"1h\"\nejection_max = \"1h\"\nhealth_interval = \"1h\"\nfirst_token_timeout = \"200ms\"\nmax_retries = 2",
        "",
    ));
    wait_ready(&gw).await;
    // Streams: a connect failure is retried elsewhere; a first-token
    // timeout is a 504. Each counts against its worker until both are out.
    let mut sent = 0;
    while reported_state(&gw, &dead).await.as_deref() != Some("ejected")
        || reported_state(&gw, &silent.url()).await.as_deref() != Some("ejected")
    {
        sent += 1;
        assert!(sent <= 60, "not ejected after {sent} requests");
        let (status, _, body) =
            post_chat(&gw, &chat_body(json!({"stream": true, "max_tokens": 1}))).await;
        assert!(status == 200 || status == 504, "{status}: {body}");
    }
    assert_eq!(
        reported_state(&gw, &live.url()).await.as_deref(),
        Some("healthy")
    );
    // From now on everything goes to the live worker at the first try.
    let before = live.stats().requests;
    for _ in 0..5 {
        let (status, _, body) =
            post_chat(&gw, &chat_body(json!({"stream": true, "max_tokens": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(live.stats().requests, before + 5);
    assert!(silent.stats().requests >= 2);
}
