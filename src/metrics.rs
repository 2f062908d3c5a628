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
/// Buckets for the gap between two streamed events (seconds).
const GAP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets for the gateway's own time per request (seconds): microseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub inter_token_gap: HistogramVec,
    pub overhead: HistogramVec,
    pub tokens: IntCounterVec,
    pub worker_in_flight: IntGaugeVec,
    pub worker_healthy: IntGaugeVec,
    pub worker_state: IntGaugeVec,
    pub upstream_errors: IntCounterVec,
    pub client_disconnects: IntCounterVec,
    pub routing_decisions: IntCounterVec,
    pub retries: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub validation_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Build and register every metric. Registration only fails on duplicate
    /// or malformed names, which would be a bug caught by the unit test below.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        Ok(Metrics {
            requests: counter(
                &r,
                "vllm_gateway_requests_total",
                "Requests answered, by model, API key name, endpoint and status class (2xx, 4xx, 5xx; 499 = client closed).",
                &["model", "key", "endpoint", "status"],
            )?,
            request_duration: histogram(
                &r,
                "vllm_gateway_request_duration_seconds",
                "Time from the request head to the last byte of the answer.",
                DURATION_BUCKETS,
                &["model", "endpoint"],
            )?,
            time_to_first_token: histogram(
                &r,
                "vllm_gateway_time_to_first_token_seconds",
                "Time from the request head to the first generated token sent to the client.",
                TTFT_BUCKETS,
                &["model"],
            )?,
            inter_token_gap: histogram(
                &r,
                "vllm_gateway_inter_token_gap_seconds",
                "Time between two consecutive pieces of a streamed answer reaching the client.",
                GAP_BUCKETS,
                &["model"],
            )?,
            overhead: histogram(
                &r,
                "vllm_gateway_overhead_seconds",
                "Time spent in the gateway itself per request (parsing, validation, keys, limits, routing, stream scanning), excluding waits on the client and the worker.",
                OVERHEAD_BUCKETS,
                &["endpoint"],
            )?,
            tokens: counter(
                &r,
                "vllm_gateway_tokens_total",
                "Tokens by model and key; kind = prompt|completion; source = exact (the worker's usage) or estimated (no usage arrived).",
                &["model", "key", "kind", "source"],
            )?,
            worker_in_flight: gauge(
                &r,
                "vllm_gateway_worker_in_flight",
                "Requests this gateway has in flight on each worker.",
                &["worker"],
            )?,
            worker_healthy: gauge(
                &r,
                "vllm_gateway_worker_healthy",
                "1 while the worker takes traffic, 0 while it is out (failed checks or ejected).",
                &["model", "worker"],
            )?,
            worker_state: gauge(
                &r,
                "vllm_gateway_worker_state",
                "1 for each worker's current state (healthy, unhealthy, ejected, half_open), per model.",
                &["model", "worker", "state"],
            )?,
            upstream_errors: counter(
                &r,
                "vllm_gateway_upstream_errors_total",
                "Failed exchanges with workers, by kind (connect, stale_connection, reset, timeout, status_503, status_5xx, status_4xx, malformed, response_too_large).",
                &["model", "kind"],
            )?,
            client_disconnects: counter(
                &r,
                "vllm_gateway_client_disconnects_total",
                "Clients that left before their answer was complete (the worker's request was aborted).",
                &["model"],
            )?,
            routing_decisions: counter(
                &r,
                "vllm_gateway_routing_decisions_total",
                "Worker picks, by reason: least_loaded, affinity_hit, affinity_spill, retry.",
                &["model", "reason"],
            )?,
            retries: counter(
                &r,
                "vllm_gateway_retries_total",
                "Requests sent again to another worker after a failed attempt.",
                &["model"],
            )?,
            rate_limited: counter(
                &r,
                "vllm_gateway_rate_limited_total",
                "Requests refused with 429, by key name and the budget that ran out (requests, tokens).",
                &["key", "kind"],
            )?,
            rate_limit_store_errors: counter(
                &r,
                "vllm_gateway_rate_limit_store_errors_total",
                "Rate-limit decisions the shared store (Redis) could not make, by kind; requests then follow on_store_error.",
                &["kind"],
            )?,
            auth_failures: counter(
                &r,
                "vllm_gateway_auth_failures_total",
                "Requests refused with 401, by reason (missing, invalid).",
                &["reason"],
            )?,
            validation_errors: counter(
                &r,
                "vllm_gateway_validation_errors_total",
                "Requests refused with 400 by validation, by field (JSON path without indexes).",
                &["model", "field"],
            )?,
            config_reloads: counter(
                &r,
                "vllm_gateway_config_reloads_total",
                "Configuration reloads, by result (ok, error).",
                &["result"],
            )?,
            registry: r,
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
        m.requests
            .with_label_values(&["m", "-", "chat", "2xx"])
            .inc();
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            "vllm_gateway_requests_total{endpoint=\"chat\",key=\"-\",model=\"m\",status=\"2xx\"} 1"
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

/// The `field` label of a validation error: the JSON path without indexes,
/// and without any part the client chose (unknown keys, logit_bias token
/// ids, metadata keys), so the label set stays bounded whatever is sent.
pub fn field_label(param: &str, code: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in param.split('.') {
        let name = segment.split('[').next().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        parts.push(name);
        if matches!(
            name,
            "logit_bias" | "metadata" | "vllm_xargs" | "chat_template_kwargs"
        ) {
            parts.push("*");
            break;
        }
    }
    if code == "unknown_parameter" {
        if let Some(last) = parts.last_mut() {
            *last = "*";
        }
    }
    let label = parts.join(".");
    let ok = label.len() <= 80
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.*".contains(&b));
    if label.is_empty() {
        "(body)".to_string()
    } else if ok {
        label
    } else {
        "(other)".to_string()
    }
}

#[cfg(test)]
mod label_tests {
    use super::field_label;

    #[test]
    fn fields_lose_indexes_and_client_chosen_parts() {
        assert_eq!(
            field_label("messages[2].content[0].type", "invalid_value"),
            "messages.content.type"
        );
        assert_eq!(
            field_label("temperature", "decimal_above_max_value"),
            "temperature"
        );
        assert_eq!(
            field_label("logit_bias.50256", "invalid_value"),
            "logit_bias.*"
        );
        assert_eq!(
            field_label("metadata.secret-key", "string_above_max_length"),
            "metadata.*"
        );
        assert_eq!(
            field_label("messages[0].bogus_key", "unknown_parameter"),
            "messages.*"
        );
        assert_eq!(
            field_label("messages[0].\u{1f600}", "invalid_type"),
            "(other)"
        );
        assert_eq!(field_label("", "invalid_json"), "(body)");
    }
}
