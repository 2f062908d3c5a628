//! Hot reload: a good file is swapped in atomically, a bad one changes
//! nothing, budgets of unchanged keys survive, and 20 reloads under a load of
//! streams and requests fail nothing; a worker removed by reload drains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use vllm_gateway::config::reload::ReloadOutcome;
use vllm_gateway::config::Config;
use vllm_gateway::gateway::{self, GatewayHandle, StartOptions};

fn start_from_file(path: &Path) -> GatewayHandle {
    init_test_logs();
    let config = Config::load(path).unwrap();
    gateway::start(
        config,
        StartOptions {
            config_path: Some(path.to_path_buf()),
            ..StartOptions::embedded()
        },
    )
    .unwrap()
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and config managers do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn chat_count(s: &vllm_gateway::sim::SimHandle) -> usize {
    s.received()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_file_applies_and_a_bad_one_changes_nothing() {
    let (a, b) = (sim(), sim());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    write(&path, &config_text(&[a.url()], "", ""));
    let gw = start_from_file(&path);
    wait_ready(&gw).await;
    post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(chat_count(&a), 1);

    // The file changes: the watcher reloads it.
    write(&path, &config_text(&[b.url()], "", ""));
    wait_until(Duration::from_secs(10), || async {
        let (status, _, _) = post_chat(&gw, &chat_body(json!({}))).await;
        status == 200 && chat_count(&b) > 0
    })
    .await
    .expect("the new worker list applies");

    // A bad file: refused with the key named, the running config serves on.
    write(&path, &config_text(&["not a url".into()], "", ""));
    let err = gw.reload().await.unwrap_err().to_string();
    assert!(err.contains("models[0].workers[0]: not a URL"), "{err}");
    let before = chat_count(&b);
    let (status, _, _) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(chat_count(&b), before + 1);
    let text = metrics_text(&gw).await;
    assert!(
        metric_value(&text, "vllm_gateway_config_reloads_total{result=\"error\"}").unwrap() >= 1.0
    );
    assert!(
        metric_value(&text, "vllm_gateway_config_reloads_total{result=\"ok\"}").unwrap() >= 1.0
    );

    // A listener change needs a restart: the running address is kept.
    let moved = config_text(&[b.url()], "", "")
        .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"127.0.0.1:1\"");
    write(&path, &moved);
    assert!(matches!(gw.reload().await.unwrap(), ReloadOutcome::Applied));
    let (status, _, _) = post_chat(&gw, &chat_body(json!({}))).await;
    assert_eq!(status, 200, "still serving on the original address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_of_unchanged_keys_survive_a_reload() {
    let s = sim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let keys = "[[api_keys]]\nname = \"k\"\nkey = \"sk-k\"\nrequests_per_minute = 3\n";
    write(
        &path,
        &format!("{}\n{keys}", config_text(&[s.url()], "", "")),
    );
    let gw = start_from_file(&path);
    wait_ready(&gw).await;
    let send = || async {
        client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .header("authorization", "Bearer sk-k")
            .json(&chat_body(json!({})))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..3 {
        assert_eq!(send().await, 200);
    }
    // Something else changes; the key does not.
    write(
        &path,
        &format!(
            "{}\n{keys}",
            config_text(&[s.url()], "idle_timeout = \"61s\"", "")
        ),
    );
    assert!(matches!(gw.reload().await.unwrap(), ReloadOutcome::Applied));
    assert_eq!(
        send().await,
        429,
        "a reload must not hand out a fresh budget"
    );
}

/// 20 reloads while 64 streams and a request load run: nothing fails,
/// nothing is cut; the worker a reload removes drains its streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_nothing() {
    let slow = |_: ()| {
        sim_with(|c| {
            // 2.4 s streams: still running on worker c when the reloads
            // are done and it is removed.
            c.itl = Duration::from_millis(40);
            c.output_tokens = (60, 60);
            c.max_num_seqs = 512;
        })
    };
    let (a, b, c) = (slow(()), slow(()), slow(()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let three = config_text(&[a.url(), b.url(), c.url()], "", "");
    write(&path, &three);
    let gw = Arc::new(start_from_file(&path));
    wait_ready(&gw).await;

    let failures = Arc::new(AtomicUsize::new(0));
    let done_streams = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let gw = Arc::clone(&gw);
        let failures = Arc::clone(&failures);
        let done_streams = Arc::clone(&done_streams);
        tasks.push(tokio::spawn(async move {
            let (status, _, body) =
                post_chat(&gw, &chat_body(json!({"stream": true, "seed": i}))).await;
            let events = sse_data(&body);
            if status != 200
                || events.last().map(String::as_str) != Some("[DONE]")
                || sse_content(&body).is_empty()
            {
                failures.fetch_add(1, Ordering::Relaxed);
            } else {
                done_streams.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let plain_ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..4 {
        let gw = Arc::clone(&gw);
        let failures = Arc::clone(&failures);
        let plain_ok = Arc::clone(&plain_ok);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, _, _) = post_chat(&gw, &chat_body(json!({"max_tokens": 2}))).await;
                if status == 200 {
                    plain_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // 20 reloads, alternating settings that touch pools, routing and limits.
    let reloading = Instant::now();
    for i in 0..20 {
        let keys = if i % 2 == 0 {
            "routing = \"prefix_affinity\"\nmax_retries = 3"
        } else {
            "idle_timeout = \"30s\""
        };
        write(&path, &config_text(&[a.url(), b.url(), c.url()], keys, ""));
        assert!(
            matches!(gw.reload().await.unwrap(), ReloadOutcome::Applied),
            "reload {i}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each write also wakes the file watcher, whose 200 ms settling time
    // must not hold up a reload asked for meanwhile (20 x 200 ms = 4 s).
    assert!(
        reloading.elapsed() < Duration::from_secs(3),
        "20 reloads took {:?}",
        reloading.elapsed()
    );
    // The last reload removes worker c while streams run on it: they finish
    // (drain), and nothing new goes there.
    let on_c = c.stats().running;
    write(&path, &config_text(&[a.url(), b.url()], "", ""));
    assert!(matches!(gw.reload().await.unwrap(), ReloadOutcome::Applied));
    let c_requests = c.stats().requests;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert_eq!(done_streams.load(Ordering::Relaxed), 64);
    assert!(plain_ok.load(Ordering::Relaxed) > 0);
    assert!(on_c > 0, "worker c had streams when it was removed");
    assert_eq!(
        c.stats().aborted,
        0,
        "removed worker's streams were not cut"
    );
    assert_eq!(
        c.stats().requests,
        c_requests,
        "no new request went to the removed worker"
    );
}
