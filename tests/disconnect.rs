//! A client that leaves makes the gateway drop the worker's connection at
//! once, so vLLM aborts the request and frees the GPU (vllm.md §5): during a
//! long prefill, mid-stream, and while waiting for a non-streaming answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;

/// Send `body`, wait until the simulator has it running, drop the client,
/// and return how long the simulator took to see the abort.
async fn abort_after_drop(
    s: &vllm_gateway::sim::SimHandle,
    gw_url: &str,
    body: serde_json::Value,
    read_some: bool,
) -> Duration {
    let c = client();
    let url = format!("{gw_url}/v1/chat/completions");
    let task = tokio::spawn(async move {
        let r = c.post(url).json(&body).send().await.unwrap();
        let mut s = r.bytes_stream();
        if read_some {
            s.next().await;
            s.next().await;
        }
        // Hold the response until aborted by the test.
        std::future::pending::<()>().await;
    });
    wait_until(Duration::from_secs(5), || async { s.stats().running == 1 })
        .await
        .expect("request running on the worker");
    if read_some {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = s.stats().aborted;
    let dropped = Instant::now();
    task.abort();
    let _ = task.await;
    wait_until(Duration::from_secs(5), || async {
        s.stats().aborted > before
    })
    .await
    .expect("worker saw the abort");
    let took = dropped.elapsed();
    assert_eq!(s.stats().running, 0);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_during_prefill_aborts_the_worker() {
    let s = sim_with(|c| c.ttft = Duration::from_secs(30));
    let gw = gateway_for(&[&s]).await;
    let took = abort_after_drop(&s, &gw.url(), chat_body(json!({"stream": true})), false).await;
    assert!(took < Duration::from_millis(100), "abort took {took:?}");
    let took = abort_after_drop(&s, &gw.url(), chat_body(json!({})), false).await;
    assert!(took < Duration::from_millis(100), "abort took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_stream_aborts_the_worker() {
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(500);
        c.output_tokens = (100, 100);
    });
    let gw = gateway_for(&[&s]).await;
    let took = abort_after_drop(&s, &gw.url(), chat_body(json!({"stream": true})), true).await;
    assert!(took < Duration::from_millis(100), "abort took {took:?}");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric_value(
            &text,
            &format!("vllm_gateway_client_disconnects_total{{model=\"{MODEL}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_while_queued_on_the_worker_aborts_it() {
    // One sequence at a time: the first request holds the slot (a 30 s
    // prefill), the second waits in the worker's own queue.
    let s = sim_with(|c| {
        c.ttft = Duration::from_secs(30);
        c.max_num_seqs = 1;
    });
    let gw = gateway_for(&[&s]).await;
    let url = format!("{}/v1/chat/completions", gw.url());
    let spawn = |body: serde_json::Value| {
        let (c, url) = (client(), url.clone());
        tokio::spawn(async move {
            let _r = c.post(url).json(&body).send().await;
            std::future::pending::<()>().await;
        })
    };
    let first = spawn(chat_body(json!({"stream": true})));
    wait_until(Duration::from_secs(5), || async { s.stats().running == 1 })
        .await
        .expect("first request running");
    let queued = spawn(chat_body(json!({})));
    wait_until(Duration::from_secs(5), || async { s.stats().waiting == 1 })
        .await
        .expect("second request queued on the worker");
    let dropped = Instant::now();
    queued.abort();
    let _ = queued.await;
    wait_until(Duration::from_secs(5), || async { s.stats().aborted == 1 })
        .await
        .expect("worker saw the abort");
    let took = dropped.elapsed();
    assert!(took < Duration::from_millis(100), "abort took {took:?}");
    assert_eq!(s.stats().waiting, 0, "it left the queue");
    assert_eq!(s.stats().running, 1, "the running request is untouched");
    first.abort();
}
