//! Routing against real simulators: least_loaded reserves a slot at pick
//! time (a burst spreads evenly), breaks ties without bias, counts load that
//! other clients put on a worker and skips deep queues; prefix_affinity keeps
//! a prompt's prefix on one worker and spills within its load bound. Every
//! decision is counted by reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pool_common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use pool_common::*;
use serde_json::json;
use vllm_gateway::sim::SimHandle;

/// Long-running requests sent straight to a worker, as another gateway
/// replica would: they show up in its `/metrics`, not in our counts.
fn other_replica_load(s: &SimHandle, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            hold(
                format!("{}/v1/chat/completions", s.url()),
                chat_body(json!({"stream": true, "max_tokens": 1000, "seed": i})),
                &[],
            )
        })
        .collect()
}

/// A worker whose answers run for `output` tokens 20 ms apart.
fn long_answers(max_num_seqs: usize) -> SimHandle {
    sim_with(|c| {
        c.itl = Duration::from_millis(20);
        c.output_tokens = (1000, 1000);
        c.max_num_seqs = max_num_seqs;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_lands_25_on_each_of_4_workers() {
    let sims: Vec<SimHandle> = (0..4).map(|_| sim()).collect();
    let refs: Vec<&SimHandle> = sims.iter().collect();
    // Default load polling stays on: the worker's own figures are blended in.
    let gw = gateway_with(&refs, "").await;
    let url = format!("{}/v1/chat/completions", gw.url());
    // Each request stalls on its worker until its client leaves, so all 100
    // are in flight at once and nothing finishes early to even things out.
    let held: Vec<_> = (0..100)
        .map(|_| {
            hold(
                url.clone(),
                chat_body(json!({})),
                &[("x-sim-fault", "stall")],
            )
        })
        .collect();
    wait_until(Duration::from_secs(15), || async {
        requests_of(&refs).iter().sum::<u64>() == 100
    })
    .await
    .unwrap_or_else(|_| panic!("only {:?} arrived", requests_of(&refs)));
    assert_eq!(requests_of(&refs), vec![25, 25, 25, 25]);
    let in_flight: Vec<u32> = workers(&gw).iter().map(|w| w.in_flight()).collect();
    assert_eq!(in_flight, vec![25, 25, 25, 25]);

    for h in &held {
        h.abort();
    }
    // Every reservation is given back when the clients leave.
    wait_until(Duration::from_secs(5), || async {
        workers(&gw).iter().all(|w| w.in_flight() == 0)
    })
    .await
    .expect("in-flight counts return to 0");
    wait_until(Duration::from_secs(5), || async {
        metric(&gw, &decisions("least_loaded")).await == 100.0
    })
    .await
    .expect("100 least_loaded decisions counted");
    for s in &sims {
        wait_until(Duration::from_secs(5), || async { s.stats().aborted == 25 })
            .await
            .expect("each worker saw its 25 requests aborted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_between_idle_workers_break_without_bias() {
    let sims: Vec<SimHandle> = (0..4).map(|_| sim()).collect();
    let refs: Vec<&SimHandle> = sims.iter().collect();
    let gw = gateway_with(&refs, "").await;
    // One at a time: every pick sees four idle workers.
    for _ in 0..120 {
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let got = requests_of(&refs);
    assert_eq!(got.iter().sum::<u64>(), 120);
    // Binomial(120, 1/4): mean 30, sd 4.7; 12 is almost 4 sd below.
    assert!(got.iter().all(|&n| n >= 12), "biased: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_from_other_replicas_steers_traffic_away() {
    let busy = long_answers(256);
    let idle = long_answers(256);
    let gw = gateway_with(&[&busy, &idle], "load_poll_interval = \"50ms\"").await;
    let _other = other_replica_load(&busy, 6);
    let w = worker(&gw, &busy.url());
    wait_until(Duration::from_secs(10), || async { w.foreign_load() >= 6 })
        .await
        .expect("the gateway scraped the busy worker's /metrics");
    assert_eq!(w.in_flight(), 0, "none of that load is ours");
    for _ in 0..10 {
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        busy.stats().requests,
        6,
        "only the other replica's requests"
    );
    assert_eq!(idle.stats().requests, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_is_skipped_while_another_worker_has_room() {
    // `queued` runs one sequence at a time: 3 requests = 1 running + 2
    // waiting (load 3). `busy` runs 6 at once (load 6, no queue). Least
    // loaded alone would pick `queued`; max_waiting = 2 rules it out.
    let queued = long_answers(1);
    let busy = long_answers(256);
    let gw = gateway_with(
        &[&queued, &busy],
        "load_poll_interval = \"50ms\"\nmax_waiting = 2",
    )
    .await;
    let _a = other_replica_load(&queued, 3);
    let _b = other_replica_load(&busy, 6);
    let (wq, wb) = (worker(&gw, &queued.url()), worker(&gw, &busy.url()));
    wait_until(Duration::from_secs(10), || async {
        wq.remote_waiting() == 2 && wb.foreign_load() == 6
    })
    .await
    .expect("both workers scraped");
    assert!(wq.effective_load() < wb.effective_load());
    for _ in 0..8 {
        let (status, _, body) = post_chat(&gw, &chat_body(json!({"max_tokens": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(queued.stats().requests, 3, "the deep queue got nothing");
    assert_eq!(busy.stats().requests, 6 + 8);
}

/// Which simulator each tenant's requests reached, from what they received.
fn landings(
    sims: &[&SimHandle],
    marker: impl Fn(usize) -> String,
    tenants: usize,
) -> Vec<HashSet<usize>> {
    let mut out = vec![HashSet::new(); tenants];
    for (i, s) in sims.iter().enumerate() {
        for r in s.received() {
            if r.path != "/v1/chat/completions" {
                continue;
            }
            let body = String::from_utf8_lossy(&r.body).to_string();
            for (t, set) in out.iter_mut().enumerate() {
                if body.contains(&marker(t)) {
                    set.insert(i);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_each_prompt_on_one_worker() {
    let sims: Vec<SimHandle> = (0..4).map(|_| sim()).collect();
    let refs: Vec<&SimHandle> = sims.iter().collect();
    let gw = gateway_with(
        &refs,
        "routing = \"prefix_affinity\"\naffinity_prefix_bytes = 1024",
    )
    .await;
    let prompts: Vec<String> = (0..8).map(|t| system_prompt(t, 1500)).collect();
    let mut cached = HashMap::new();
    for round in 0..3 {
        for (t, p) in prompts.iter().enumerate() {
            // The user turn differs every time; only the system prompt is shared.
            let body = tenant_chat(
                p,
                &format!("question {round} of tenant {t}?"),
                json!({"max_tokens": 1}),
            );
            let (status, _, text) = post_chat(&gw, &body).await;
            assert_eq!(status, 200, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let c = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            if round > 0 {
                cached.insert((t, round), c);
            }
        }
    }
    let by_tenant = landings(&refs, |t| format!("assistant number {t} of tenant {t}."), 8);
    for (t, set) in by_tenant.iter().enumerate() {
        assert_eq!(set.len(), 1, "tenant {t} went to workers {set:?}");
    }
    let used: HashSet<usize> = by_tenant.iter().flatten().copied().collect();
    assert!(
        used.len() >= 2,
        "8 prefixes all on one worker: {by_tenant:?}"
    );
    // The point of it: repeats are served from the worker's prefix cache.
    assert!(cached.values().all(|&c| c >= 256), "{cached:?}");
    wait_logged(&gw, 24.0).await;
    assert_metric(&gw, &decisions("affinity_hit"), 24.0).await;
    assert_metric(&gw, &decisions("affinity_spill"), 0.0).await;
    assert_metric(&gw, &decisions("least_loaded"), 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_spills_past_the_load_bound_and_returns_home() {
    let sims: Vec<SimHandle> = (0..4).map(|_| sim()).collect();
    let refs: Vec<&SimHandle> = sims.iter().collect();
    let gw = gateway_with(
        &refs,
        "routing = \"prefix_affinity\"\naffinity_prefix_bytes = 1024",
    )
    .await;
    let prompt = system_prompt(99, 1500);
    let body = |i: usize| tenant_chat(&prompt, &format!("turn {i}"), json!({"max_tokens": 1}));
    // Find the prefix's home worker.
    let (status, _, _) = post_chat(&gw, &body(0)).await;
    assert_eq!(status, 200);
    let home = requests_of(&refs).iter().position(|&n| n == 1).unwrap();

    // 12 held requests with the same prefix: the home worker takes its share
    // up to 1.25x the average, the rest spill along the ring.
    let url = format!("{}/v1/chat/completions", gw.url());
    let held: Vec<_> = (1..=12)
        .map(|i| hold(url.clone(), body(i), &[("x-sim-fault", "stall")]))
        .collect();
    wait_until(Duration::from_secs(10), || async {
        workers(&gw).iter().map(|w| w.in_flight()).sum::<u32>() == 12
    })
    .await
    .expect("12 requests in flight");
    let loads: Vec<u32> = workers(&gw).iter().map(|w| w.in_flight()).collect();
    let max = *loads.iter().max().unwrap();
    assert_eq!(
        loads[home], max,
        "the home worker carries the most: {loads:?}"
    );
    assert!(
        f64::from(max) <= 1.25 * 12.0 / 4.0,
        "over the bound: {loads:?}"
    );
    for h in &held {
        h.abort();
    }
    wait_until(Duration::from_secs(5), || async {
        workers(&gw).iter().all(|w| w.in_flight() == 0)
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), || async {
        metric(&gw, &decisions("affinity_hit")).await
            + metric(&gw, &decisions("affinity_spill")).await
            == 13.0
    })
    .await
    .expect("13 decisions counted");
    assert!(metric(&gw, &decisions("affinity_spill")).await >= 1.0);

    // Idle again: the prefix goes home.
    let before = requests_of(&refs)[home];
    let (status, _, _) = post_chat(&gw, &body(100)).await;
    assert_eq!(status, 200);
    assert_eq!(requests_of(&refs)[home], before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_requests_never_pass_for_other_replicas_load() {
    // No other client: whatever the scrapes see is ours, however the
    // requests and the scrapes interleave.
    let (a, b) = (sim(), sim());
    let gw = gateway_with(&[&a, &b], "load_poll_interval = \"2ms\"").await;
    let ws = workers(&gw);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (ws, stop) = (ws.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                worst = ws
                    .iter()
                    .map(|w| w.foreign_load())
                    .max()
                    .unwrap()
                    .max(worst);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            worst
        })
    };
    let url = format!("{}/v1/chat/completions", gw.url());
    for _ in 0..10 {
        // Bursts of short requests, so many end while a scrape is out.
        let burst: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    client()
                        .post(url)
                        .json(&chat_body(json!({"max_tokens": 2})))
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for r in burst {
            assert_eq!(r.await.unwrap(), 200);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(watcher.await.unwrap(), 0, "phantom foreign load");
}
