//! Limits shared through a real Redis (the `redis-server` Debian package,
//! installed by tests/run.sh): two gateways enforce one budget, not two; a
//! Redis outage follows `on_store_error`; a restarted Redis is used again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use vllm_gateway::gateway::GatewayHandle;

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash tests/run.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keys_and_store(redis_port: u16, key_extra: &str, on_error: &str) -> String {
    format!(
        "[[api_keys]]\nname = \"shared\"\nkey_sha256 = \"{}\"\n{key_extra}\n\
         [rate_limit]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}\"\n\
         redis_timeout = \"500ms\"\non_store_error = \"{on_error}\"\n",
        hex::encode(vllm_gateway::auth::digest(b"sk-shared"))
    )
}

async fn gateway(sim_url: &str, top: &str) -> GatewayHandle {
    let text = format!("{}\n{top}", config_text(&[sim_url.to_string()], "", ""));
    let gw = start(&text);
    wait_ready(&gw).await;
    gw
}

async fn send(gw: &GatewayHandle, body: serde_json::Value) -> reqwest::Response {
    chat_with(gw, Some(("authorization", "Bearer sk-shared")), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_request_budget() {
    let redis = Redis::start(free_port());
    let s = sim();
    let top = keys_and_store(redis.port, "requests_per_minute = 4", "deny");
    let a = gateway(&s.url(), &top).await;
    let b = gateway(&s.url(), &top).await;
    for (i, gw) in [&a, &b, &a, &b].into_iter().enumerate() {
        let r = send(gw, chat_body(json!({}))).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (3 - i).to_string().as_str()
        );
    }
    // Each gateway alone has seen only 2 of its 4: the shared count says no.
    for gw in [&a, &b] {
        let r = send(gw, chat_body(json!({}))).await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
    }
    assert_eq!(s.stats().requests, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_token_budget() {
    let redis = Redis::start(free_port());
    let s = sim_with(|c| c.output_tokens = (5, 5));
    let top = keys_and_store(redis.port, "tokens_per_minute = 500", "deny");
    let a = gateway(&s.url(), &top).await;
    let b = gateway(&s.url(), &top).await;
    // A stalled request on gateway A holds a reservation of ~455 tokens...
    let before = s.stats().requests;
    let url = format!("{}/v1/chat/completions", a.url());
    let held = tokio::spawn(async move {
        client()
            .post(url)
            .header("authorization", "Bearer sk-shared")
            .header("x-sim-fault", "stall")
            .json(&chat_body(json!({"max_tokens": 450})))
            .send()
            .await
    });
    wait_until(Duration::from_secs(5), || async {
        s.stats().requests == before + 1
    })
    .await
    .unwrap();
    // ...so gateway B cannot reserve ~105 more.
    let r = send(&b, chat_body(json!({"max_tokens": 100}))).await;
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "tokens");
    // Gateway A's client leaves; the refund reaches Redis; B may go on.
    held.abort();
    wait_until(Duration::from_secs(5), || async {
        send(&b, chat_body(json!({"max_tokens": 100})))
            .await
            .status()
            == 200
    })
    .await
    .expect("refund shared through Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_follows_on_store_error_and_a_restart_is_picked_up() {
    let port = free_port();
    let mut redis = Redis::start(port);
    let s = sim();
    let allow = gateway(
        &s.url(),
        &keys_and_store(port, "requests_per_minute = 1000", "allow"),
    )
    .await;
    let deny = gateway(
        &s.url(),
        &keys_and_store(port, "requests_per_minute = 1000", "deny"),
    )
    .await;
    let r = send(&allow, chat_body(json!({}))).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));

    redis.stop();
    let r = send(&allow, chat_body(json!({}))).await;
    assert_eq!(r.status(), 200, "allow: requests go on while Redis is away");
    let r = send(&deny, chat_body(json!({}))).await;
    assert_eq!(r.status(), 503, "deny: refused while Redis is away");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_store_unavailable");
    let text = metrics_text(&allow).await;
    assert!(
        text.lines().any(
            |l| l.starts_with("vllm_gateway_rate_limit_store_errors_total") && !l.ends_with(" 0")
        ),
        "{text}"
    );

    // Redis comes back on the same port: decisions are made there again.
    let _redis = Redis::start(port);
    wait_until(Duration::from_secs(15), || async {
        send(&deny, chat_body(json!({}))).await.status() == 200
    })
    .await
    .expect("the gateway reconnects to a restarted Redis");
    let r = send(&allow, chat_body(json!({}))).await;
    assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
}
