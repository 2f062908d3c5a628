//! Active health checks and load polling.
//!
//! Every worker of the current configuration gets its own loop: `GET /health`
//! every `health_interval` (ejected after `unhealthy_after` failures, back
//! after `healthy_after` successes), `GET /v1/models` to learn each model's
//! `max_model_len`, and `GET /metrics` every `load_poll_interval` for the
//! worker's own queue depth and KV-cache use (vllm.md §7, §8), so routing
//! counts load that other gateway replicas put on it. A supervisor starts a
//! loop for each worker that appears (reload, discovery) and loops end when
//! their worker leaves every pool.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use crate::config::HealthPolicy;
use crate::pool::Worker;
use crate::state::Shared;
use crate::upstream;
use crate::upstream::http1::{self, WorkerResponse};

/// Largest `/health`, `/v1/models` or `/metrics` answer read; a worker
/// sending more fails the check rather than growing the gateway's memory.
const MAX_PROBE_BODY: usize = 4 * 1024 * 1024;

/// How often the supervisor looks for workers without a loop.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// Run the checks until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let mut loops: HashMap<Arc<str>, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut next_sweep = Instant::now();
    loop {
        let snapshot = shared.snapshot();
        if Instant::now() >= next_sweep {
            // Close idle connections that expired or that a worker closed.
            next_sweep = Instant::now() + Duration::from_secs(1);
            for pool in snapshot.pools() {
                for m in &pool.members {
                    m.worker.connections.sweep(pool.timeouts.keepalive_idle);
                    m.worker.probes.sweep(PROBE_IDLE);
                }
            }
        }
        for pool in snapshot.pools() {
            for m in &pool.members {
                let running = loops.get(&m.worker.url).is_some_and(|h| !h.is_finished());
                if !running {
                    let task = tokio::spawn(worker_loop(
                        Arc::clone(&shared),
                        Arc::downgrade(&m.worker),
                        shutdown.clone(),
                    ));
                    loops.insert(Arc::clone(&m.worker.url), task);
                }
            }
        }
        loops.retain(|_, h| !h.is_finished());
        tokio::select! {
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
    }
    for (_, h) in loops {
        h.abort();
    }
}

/// The strictest health settings among the models a worker serves in the
/// current configuration; None once it serves none.
fn settings_for(shared: &Shared, worker: &Arc<Worker>) -> Option<HealthPolicy> {
    let snapshot = shared.snapshot();
    let mut policy: Option<HealthPolicy> = None;
    for pool in snapshot.pools() {
        if pool.members.iter().any(|m| Arc::ptr_eq(&m.worker, worker)) {
            let h = snapshot.config.model(&pool.model).map(|c| c.health)?;
            policy = Some(match policy {
                None => h,
                Some(p) => HealthPolicy {
                    interval: p.interval.min(h.interval),
                    timeout: p.timeout.min(h.timeout),
                    unhealthy_after: p.unhealthy_after.min(h.unhealthy_after),
                    healthy_after: p.healthy_after.max(h.healthy_after),
                    load_poll_interval: p.load_poll_interval.min(h.load_poll_interval),
                },
            });
        }
    }
    policy
}

async fn worker_loop(shared: Arc<Shared>, worker: Weak<Worker>, mut shutdown: ShutdownWatch) {
    let mut next_health = Instant::now();
    let mut next_load = Instant::now();
    loop {
        let Some(worker) = worker.upgrade() else {
            return;
        };
        let Some(policy) = settings_for(&shared, &worker) else {
            // The worker left every pool: requests still in flight on it
            // finish (they hold their own reference); checking it is over.
            return;
        };
        let now = Instant::now();
        if now >= next_health {
            next_health = now + policy.interval;
            let ok = get(&worker, "/health", policy.timeout)
                .await
                .is_some_and(|(status, _)| status == 200);
            if ok {
                if let Some((200, body)) = get(&worker, "/v1/models", policy.timeout).await {
                    worker.set_max_model_lens(parse_model_lens(&body));
                }
            }
            if worker.record_check(ok, policy.unhealthy_after, policy.healthy_after) {
                tracing::warn!(worker = %worker.url, healthy = ok, "worker health changed (active check)");
            }
        }
        if now >= next_load {
            next_load = now + policy.load_poll_interval;
            let mark = worker.load_mark();
            if let Some((200, body)) = get(&worker, "/metrics", policy.timeout).await {
                if let Some(load) = parse_load(&body) {
                    worker.record_load(mark, load.running, load.waiting, load.kv_usage);
                }
            }
        }
        let wake = next_health.min(next_load);
        drop(worker);
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}

/// `max_model_len` per model id from a `/v1/models` answer; LoRA entries have
/// none and inherit their parent's (vllm.md §7).
pub fn parse_model_lens(body: &[u8]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return out;
    };
    let Some(data) = v.get("data").and_then(|d| d.as_array()) else {
        return out;
    };
    for entry in data {
        if let (Some(id), Some(len)) = (
            entry.get("id").and_then(|i| i.as_str()),
            entry.get("max_model_len").and_then(|l| l.as_u64()),
        ) {
            out.insert(id.to_string(), len);
        }
    }
    for entry in data {
        if let (Some(id), Some(parent)) = (
            entry.get("id").and_then(|i| i.as_str()),
            entry.get("parent").and_then(|p| p.as_str()),
        ) {
            if let Some(len) = out.get(parent).copied() {
                out.entry(id.to_string()).or_insert(len);
            }
        }
    }
    out
}

/// A worker's own load, from its Prometheus text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerLoad {
    pub running: u32,
    pub waiting: u32,
    pub kv_usage: f64,
}

/// Sum `vllm:num_requests_running` and `vllm:num_requests_waiting` over all
/// engines and models; take the highest `vllm:kv_cache_usage_perc` (a 0..1
/// fraction despite its name, vllm.md §8). None when none of them is there.
pub fn parse_load(body: &[u8]) -> Option<WorkerLoad> {
    let text = std::str::from_utf8(body).ok()?;
    let mut running = None::<f64>;
    let mut waiting = None::<f64>;
    let mut kv = None::<f64>;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        match name {
            "vllm:num_requests_running" => *running.get_or_insert(0.0) += value,
            "vllm:num_requests_waiting" => *waiting.get_or_insert(0.0) += value,
            "vllm:kv_cache_usage_perc" => kv = Some(kv.map_or(value, |k: f64| k.max(value))),
            _ => {}
        }
    }
    if running.is_none() && waiting.is_none() && kv.is_none() {
        return None;
    }
    let clamp = |v: Option<f64>| v.unwrap_or(0.0).clamp(0.0, f64::from(u32::MAX)) as u32;
    Some(WorkerLoad {
        running: clamp(running),
        waiting: clamp(waiting),
        kv_usage: kv.unwrap_or(0.0),
    })
}

/// A small GET to a worker, bounded in time and size.
pub async fn get(worker: &Worker, path: &str, timeout: Duration) -> Option<(u16, Bytes)> {
    call(worker, "GET", path, None, timeout).await
}

/// A small request to a worker outside the proxied traffic (health, load,
/// token counting), bounded in time and answer size, on the worker's probe
/// connections. None on any failure.
pub async fn call(
    worker: &Worker,
    method: &str,
    path: &str,
    json_body: Option<&[u8]>,
    timeout: Duration,
) -> Option<(u16, Bytes)> {
    tokio::time::timeout(timeout, async {
        let stream = match worker.probes.take(PROBE_IDLE) {
            Some(s) => s,
            None => upstream::connect(worker.addr, timeout).await.ok()?,
        };
        let mut stream = stream;
        let body = json_body.unwrap_or_default();
        let json: &[(&str, &[u8])] = if json_body.is_some() {
            &[("content-type", b"application/json")]
        } else {
            &[]
        };
        let host = worker.addr.to_string();
        let wire = http1::encode_request(method, path, &host, json.iter().copied(), body, true);
        stream.write_all(&wire).await.ok()?;
        stream.flush().await.ok()?;
        let mut answer_of = WorkerResponse::new(stream);
        let status = answer_of.read_head().await.ok()?.status;
        let mut answer = BytesMut::new();
        while let Some(chunk) = answer_of.read_body().await.ok()? {
            if answer.len() + chunk.len() > MAX_PROBE_BODY {
                return None;
            }
            answer.extend_from_slice(&chunk);
        }
        if let Some(stream) = answer_of.into_reusable() {
            worker.probes.put(stream);
        }
        Some((status, answer.freeze()))
    })
    .await
    .ok()
    .flatten()
}

/// Probe connections idle longer than this are not reused (below vLLM's 5 s
/// keep-alive, pingora.md §6).
const PROBE_IDLE: Duration = Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_lens_and_lora_inherits() {
        let lens = parse_model_lens(
            br#"{"object":"list","data":[
                {"id":"base","object":"model","max_model_len":8192,"parent":null},
                {"id":"lora1","object":"model","parent":"base"},
                {"id":"other","object":"model"}]}"#,
        );
        assert_eq!(lens.get("base"), Some(&8192));
        assert_eq!(lens.get("lora1"), Some(&8192));
        assert_eq!(lens.get("other"), None);
        assert!(parse_model_lens(b"garbage").is_empty());
    }

    #[test]
    fn parses_vllm_load_metrics() {
        let text =
            b"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 4.0
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.5
vllm:num_requests_running_total 99
";
        let load = parse_load(text).unwrap();
        assert_eq!(load.running, 5);
        assert_eq!(load.waiting, 4);
        assert!((load.kv_usage - 0.5).abs() < 1e-9);
        assert!(parse_load(b"other_metric 1\n").is_none());
        assert!(parse_load(b"\xff\xfe").is_none());
        let hostile =
            parse_load(b"vllm:num_requests_waiting NaN\nvllm:num_requests_running 1e300\n")
                .unwrap();
        assert_eq!(hostile.waiting, 0);
        assert_eq!(hostile.running, u32::MAX);
    }
}
