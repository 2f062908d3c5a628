//! What operators see: every metric present and moving after a varied run,
//! `promtool check metrics` clean, and no key in any log line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

const KEY: &str = "sk-observability-test-key-9f3c";

fn key_config() -> String {
    format!(
        "[[api_keys]]\nname = \"team-a\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 1000\ntokens_per_minute = 1000000\n",
        hex::encode(vllm_gateway::auth::digest(KEY.as_bytes()))
    )
}

async fn post(
    gw_url: &str,
    auth: Option<&str>,
    body: serde_json::Value,
    fault: Option<&str>,
) -> reqwest::Response {
    let mut r = client()
        .post(format!("{gw_url}/v1/chat/completions"))
        .json(&body);
    if let Some(a) = auth {
        r = r.header("authorization", format!("Bearer {a}"));
    }
    if let Some(f) = fault {
        r = r.header("x-sim-fault", f);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_and_promtool_accepts_the_output() {
    let live = sim_with(|c| c.output_tokens = (6, 6));
    let dead = sim();
    let dead_url = dead.url();
    dead.stop();
    let text = format!(
        "{}\n{}",
        config_text(
            &[live.url(), dead_url],
            "unhealthy_after = 100\nfailures_to_eject = 100",
            ""
        ),
        key_config()
    );
    let gw = start(&text);
    wait_ready(&gw).await;
    let url = gw.url();
    // Successes, streaming (TTFT, gaps, exact tokens); the dead worker makes
    // some attempts retry.
    for _ in 0..4 {
        post(&url, Some(KEY), chat_body(json!({})), None)
            .await
            .text()
            .await
            .unwrap();
        post(&url, Some(KEY), chat_body(json!({"stream": true})), None)
            .await
            .text()
            .await
            .unwrap();
    }
    // A 400 (validation), a 401, a 404.
    post(&url, Some(KEY), chat_body(json!({"temperature": 9})), None).await;
    post(&url, Some("sk-wrong"), chat_body(json!({})), None).await;
    post(&url, Some(KEY), chat_body(json!({"model": "nope"})), None).await;
    // A cut stream (estimated tokens).
    post(
        &url,
        Some(KEY),
        chat_body(json!({"stream": true})),
        Some("cut_after_tokens=2"),
    )
    .await
    .text()
    .await
    .ok();
    // A client that leaves mid-stream.
    let r = post(
        &url,
        Some(KEY),
        chat_body(json!({"stream": true})),
        Some("stall_after_tokens=1"),
    )
    .await;
    let mut s = r.bytes_stream();
    s.next().await;
    drop(s);
    // A 429: a second key with a tiny budget.
    let text2 = format!(
        "{}\n[[api_keys]]\nname = \"tiny\"\nkey = \"sk-tiny\"\nrequests_per_minute = 1\n",
        config_text(&[live.url()], "", "")
    );
    let gw2 = start(&text2);
    wait_ready(&gw2).await;
    for _ in 0..2 {
        post(&gw2.url(), Some("sk-tiny"), chat_body(json!({})), None).await;
    }

    let metrics = metrics_text(&gw).await;
    let wait_for = |name: &str, text: &str| {
        text.lines().filter(|l| l.starts_with(name)).any(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                > 0.0
        })
    };
    // The disconnect is recorded once the gateway notices; give it a moment.
    let c = client();
    let admin = format!("{}/metrics", gw.admin_url());
    wait_until(Duration::from_secs(5), || {
        let c = c.clone();
        let admin = admin.clone();
        async move {
            let t = c.get(&admin).send().await.unwrap().text().await.unwrap();
            t.contains("vllm_gateway_client_disconnects_total{")
        }
    })
    .await
    .expect("client disconnect counted");
    let metrics = if metrics.contains("client_disconnects_total{") {
        metrics
    } else {
        metrics_text(&gw).await
    };
    for family in [
        "vllm_gateway_requests_total{",
        "vllm_gateway_request_duration_seconds_count{",
        "vllm_gateway_time_to_first_token_seconds_count{",
        "vllm_gateway_inter_token_gap_seconds_count{",
        "vllm_gateway_overhead_seconds_count{",
        "vllm_gateway_tokens_total{key=\"team-a\",kind=\"completion\",model=\"test-model\",source=\"exact\"}",
        "vllm_gateway_tokens_total{key=\"team-a\",kind=\"completion\",model=\"test-model\",source=\"estimated\"}",
        "vllm_gateway_worker_healthy{",
        "vllm_gateway_worker_state{",
        "vllm_gateway_upstream_errors_total{",
        "vllm_gateway_client_disconnects_total{",
        "vllm_gateway_routing_decisions_total{",
        "vllm_gateway_retries_total{",
        "vllm_gateway_auth_failures_total{",
        "vllm_gateway_validation_errors_total{",
    ] {
        assert!(wait_for(family, &metrics), "{family} missing or zero:\n{metrics}");
    }
    assert!(
        metrics.contains("vllm_gateway_worker_in_flight{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllm_gateway_validation_errors_total{field=\"temperature\""),
        "{metrics}"
    );
    let limited = metrics_text(&gw2).await;
    assert!(
        wait_for(
            "vllm_gateway_rate_limited_total{key=\"tiny\",kind=\"requests\"}",
            &limited
        ),
        "{limited}"
    );
    // Labels are bounded: the wrong key and the unknown model never appear.
    assert!(!metrics.contains("sk-wrong") && !metrics.contains("nope") && !metrics.contains(KEY));

    for text in [&metrics, &limited] {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed (bash tests/run.sh installs the prometheus package)");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_the_logs() {
    let s = sim();
    let dir = tempfile::tempdir().unwrap();
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (public, admin) = (port(()), port(()));
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"2s\"\n\
         [[models]]\nname = \"{MODEL}\"\nworkers = [\"{}\"]\n\
         [[api_keys]]\nname = \"team-env\"\nkey_env = \"OBS_TEST_KEY\"\n\
         [[api_keys]]\nname = \"team-plain\"\nkey = \"sk-plain-in-file-7d1e\"\n",
        s.url()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vllm-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("OBS_TEST_KEY", KEY)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{public}");
    let c = client();
    wait_until(Duration::from_secs(10), || {
        let c = c.clone();
        let u = format!("http://127.0.0.1:{admin}/readyz");
        async move { c.get(u).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await
    .expect("gateway up");
    for auth in [KEY, "sk-plain-in-file-7d1e", "sk-guess-that-is-wrong-42"] {
        post(&url, Some(auth), chat_body(json!({})), None).await;
        post(&url, Some(auth), chat_body(json!({"stream": true})), None)
            .await
            .text()
            .await
            .ok();
        client()
            .post(format!("{url}/v1/chat/completions"))
            .header("api-key", auth)
            .json(&chat_body(json!({"temperature": 5})))
            .send()
            .await
            .unwrap();
    }
    // SIGTERM: a graceful stop, then read everything it logged.
    unsafe_kill_term(child.id());
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("\"key\":\"team-env\""),
        "access lines name the key:\n{logs}"
    );
    assert!(logs.contains("\"key\":\"team-plain\""));
    for secret in [KEY, "sk-plain-in-file-7d1e", "sk-guess-that-is-wrong-42"] {
        assert!(!logs.contains(secret), "a key appeared in the logs");
    }
    // Nor the digest of one.
    assert!(!logs.contains(&hex::encode(vllm_gateway::auth::digest(KEY.as_bytes()))));
}

fn unsafe_kill_term(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
