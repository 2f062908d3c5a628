//! Every metric the gateway exports, defined in one place with its help text.
//!
//! Each gateway instance owns its own `Registry` (not the process-global
//! default), so two gateways in one test process never mix their counts.
//! Label values are bounded: configured model names (anything else is
//! `unknown`), configured worker URLs, key names, status classes and fixed
//! enums. Never a raw path, a parameter or a key.

use crate::pool::WorkerState;
use crate::state::Snapshot;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label used for a model name the configuration does not know.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Buckets for whole-request latency (seconds): LLM answers run from
/// milliseconds (errors, cached) to minutes (long generations).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets for time to first token (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub worker_in_flight: IntGaugeVec,
    pub worker_healthy: IntGaugeVec,
    pub worker_state: IntGaugeVec,
    pub upstream_errors: IntCounterVec,
    pub client_disconnects: IntCounterVec,
    pub routing_decisions: IntCounterVec,
    pub retries: IntCounterVec,
}

impl Metrics {
    /// Build and register every metric. Registration only fails on duplicate
    /// or malformed names, which would be a bug caught by the unit test below.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "vllm_gateway_requests_total",
                "Requests answered, by model, endpoint and status class (2xx, 4xx, 5xx; 499 = client closed).",
            ),
            &["model", "endpoint", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "vllm_gateway_request_duration_seconds",
                "Time from the request head to the last byte of the answer.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "endpoint"],
        )?;
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "vllm_gateway_time_to_first_token_seconds",
                "Time from the request head to the first answer byte sent to the client.",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
            &["model"],
        )?;
        let worker_in_flight = IntGaugeVec::new(
            Opts::new(
                "vllm_gateway_worker_in_flight",
                "Requests this gateway has in flight on each worker.",
            ),
            &["worker"],
        )?;
        let worker_healthy = IntGaugeVec::new(
            Opts::new(
                "vllm_gateway_worker_healthy",
                "1 while the worker takes traffic, 0 while it is ejected.",
            ),
            &["model", "worker"],
        )?;
        let worker_state = IntGaugeVec::new(
            Opts::new(
                "vllm_gateway_worker_state",
                "1 for each worker's current state (healthy, unhealthy, ejected, half_open), per model.",
            ),
            &["model", "worker", "state"],
        )?;
        let routing_decisions = IntCounterVec::new(
            Opts::new(
                "vllm_gateway_routing_decisions_total",
                "Worker picks, by reason: least_loaded, affinity_hit, affinity_spill, retry.",
            ),
            &["model", "reason"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "vllm_gateway_retries_total",
                "Requests sent again to another worker after a failed attempt.",
            ),
            &["model"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "vllm_gateway_upstream_errors_total",
                "Failed exchanges with workers, by kind (connect, timeout, protocol, status_5xx, reset).",
            ),
            &["model", "kind"],
        )?;
        let client_disconnects = IntCounterVec::new(
            Opts::new(
                "vllm_gateway_client_disconnects_total",
                "Clients that left before their answer was complete (the worker's request was aborted).",
            ),
            &["model"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(worker_in_flight.clone()))?;
        registry.register(Box::new(worker_healthy.clone()))?;
        registry.register(Box::new(worker_state.clone()))?;
        registry.register(Box::new(routing_decisions.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(client_disconnects.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            worker_in_flight,
            worker_healthy,
            worker_state,
            upstream_errors,
            client_disconnects,
            routing_decisions,
            retries,
        })
    }

    /// Set the per-worker gauges from the live pools. Called on every scrape,
    /// so gauges of workers that left (reload, discovery) disappear.
    pub fn refresh_workers(&self, snapshot: &Snapshot) {
        self.worker_in_flight.reset();
        self.worker_healthy.reset();
        self.worker_state.reset();
        for pool in snapshot.pools() {
            for m in &pool.members {
                let w = &m.worker;
                let url = &*w.url;
                self.worker_in_flight
                    .with_label_values(&[url])
                    .set(i64::from(w.in_flight()));
                let state = w.state();
                self.worker_healthy
                    .with_label_values(&[&*pool.model, url])
                    .set(i64::from(state == WorkerState::Healthy));
                for s in [
                    WorkerState::Healthy,
                    WorkerState::Unhealthy,
                    WorkerState::Ejected,
                    WorkerState::HalfOpen,
                ] {
                    self.worker_state
                        .with_label_values(&[&*pool.model, url, s.label()])
                        .set(i64::from(state == s));
                }
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on a malformed metric family, which
        // registration already rules out; an empty answer beats a panic.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// `2xx`, `4xx`, `5xx`; 499 (nginx's "client closed request") stays exact.
pub fn status_class(status: u16) -> &'static str {
    match status {
        499 => "499",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_encodes() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["m", "chat", "2xx"]).inc();
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            "vllm_gateway_requests_total{endpoint=\"chat\",model=\"m\",status=\"2xx\"} 1"
        ));
    }

    #[test]
    fn classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(499), "499");
        assert_eq!(status_class(503), "5xx");
    }
}
