//! Every metric the gateway exports, defined in one place with its help text.
//!
//! Each gateway instance owns its own `Registry` (not the process-global
//! default), so two gateways in one test process never mix their counts.
//! Label values are bounded: configured model names (anything else is
//! `unknown`), configured worker URLs, key names, status classes and fixed
//! enums. Never a raw path, a parameter or a key.

use std::cell::{OnceCell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pool::{PickReason, WorkerState};
use crate::state::Snapshot;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// Tells this instance's series apart in the per-thread cache (tests run
    /// several gateways in one process).
    id: u64,
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let r = Registry::new();
        Ok(Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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

/// The series one request of a (model, key, endpoint) touches, looked up
/// once per thread and then reused.
///
/// `with_label_values` hashes every label and takes the vector's lock; a
/// request touched eight series that way, about 2% of its CPU at 64
/// connections. The handles stay valid for good: the per-request vectors are
/// never reset (only the worker gauges are, on each scrape), so a cached
/// series is the one `/metrics` exports. A series is created on first use,
/// as `with_label_values` would, so no empty series appear that the
/// traffic never touched.
pub struct RequestSeries {
    metrics_id: u64,
    model: Box<str>,
    key: Box<str>,
    endpoint: &'static str,
    requests: [OnceCell<IntCounter>; STATUS_CLASSES.len()],
    duration: OnceCell<Histogram>,
    overhead: OnceCell<Histogram>,
    ttft: OnceCell<Histogram>,
    gap: OnceCell<Histogram>,
    routing: [OnceCell<IntCounter>; PickReason::ALL.len()],
    /// prompt/exact, prompt/estimated, completion/exact, completion/estimated.
    tokens: [OnceCell<IntCounter>; 4],
}

/// What [`status_class`] returns, in a fixed order.
const STATUS_CLASSES: [&str; 6] = ["499", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Series per thread before the cache starts over: far more (model, key,
/// endpoint) triples than a gateway serves at once, and a bound on what a
/// long run of reloads renaming keys could leave behind.
const SERIES_PER_THREAD: usize = 4096;

thread_local! {
    /// Series by a hash of their labels; a bucket holds the rare collisions.
    static SERIES: RefCell<foldhash::HashMap<u64, Vec<std::rc::Rc<RequestSeries>>>> =
        RefCell::new(foldhash::HashMap::default());
}

impl RequestSeries {
    fn matches(&self, metrics_id: u64, model: &str, key: &str, endpoint: &str) -> bool {
        self.metrics_id == metrics_id
            && self.endpoint == endpoint
            && &*self.model == model
            && &*self.key == key
    }

    pub fn request(&self, m: &Metrics, status: u16) -> &IntCounter {
        let class = status_class(status);
        let i = STATUS_CLASSES.iter().position(|c| *c == class).unwrap_or(5);
        self.requests[i].get_or_init(|| {
            m.requests
                .with_label_values(&[&*self.model, &*self.key, self.endpoint, class])
        })
    }

    pub fn duration(&self, m: &Metrics) -> &Histogram {
        self.duration.get_or_init(|| {
            m.request_duration
                .with_label_values(&[&*self.model, self.endpoint])
        })
    }

    pub fn overhead(&self, m: &Metrics) -> &Histogram {
        self.overhead
            .get_or_init(|| m.overhead.with_label_values(&[self.endpoint]))
    }

    pub fn ttft(&self, m: &Metrics) -> &Histogram {
        self.ttft
            .get_or_init(|| m.time_to_first_token.with_label_values(&[&*self.model]))
    }

    pub fn gap(&self, m: &Metrics) -> &Histogram {
        self.gap
            .get_or_init(|| m.inter_token_gap.with_label_values(&[&*self.model]))
    }

    pub fn routing(&self, m: &Metrics, reason: PickReason) -> &IntCounter {
        let i = PickReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.routing[i].get_or_init(|| {
            m.routing_decisions
                .with_label_values(&[&*self.model, reason.label()])
        })
    }

    /// `completion`: completion tokens (else prompt); `exact`: the worker's
    /// own count (else an estimate).
    pub fn tokens(&self, m: &Metrics, completion: bool, exact: bool) -> &IntCounter {
        let i = usize::from(completion) * 2 + usize::from(!exact);
        self.tokens[i].get_or_init(|| {
            m.tokens.with_label_values(&[
                &*self.model,
                &*self.key,
                if completion { "completion" } else { "prompt" },
                if exact { "exact" } else { "estimated" },
            ])
        })
    }
}

impl Metrics {
    /// Run `f` with the series of (`model`, `key`, `endpoint`), from this
    /// thread's cache.
    pub fn with_series<R>(
        &self,
        model: &str,
        key: &str,
        endpoint: &'static str,
        f: impl FnOnce(&RequestSeries) -> R,
    ) -> R {
        let hash = {
            let mut h = xxhash_rust::xxh3::Xxh3::with_seed(self.id);
            // Lengths first: ("ab", "c") and ("a", "bc") hash apart.
            h.update(&(model.len() as u64).to_le_bytes());
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(model.as_bytes());
            h.update(key.as_bytes());
            h.update(endpoint.as_bytes());
            h.digest()
        };
        let series = SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(s) = cache
                .get(&hash)
                .and_then(|b| b.iter().find(|s| s.matches(self.id, model, key, endpoint)))
            {
                return std::rc::Rc::clone(s);
            }
            if cache.len() >= SERIES_PER_THREAD {
                cache.clear();
            }
            let s = std::rc::Rc::new(RequestSeries {
                metrics_id: self.id,
                model: model.into(),
                key: key.into(),
                endpoint,
                requests: Default::default(),
                duration: OnceCell::new(),
                overhead: OnceCell::new(),
                ttft: OnceCell::new(),
                gap: OnceCell::new(),
                routing: Default::default(),
                tokens: Default::default(),
            });
            cache.entry(hash).or_default().push(std::rc::Rc::clone(&s));
            s
        });
        f(&series)
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

    /// Cached series count exactly what `with_label_values` would, apart
    /// per gateway and per label set, and survive the cache starting over.
    #[test]
    fn cached_series_are_the_exported_ones() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        for _ in 0..3 {
            a.with_series("ab", "c", "chat_completions", |s| {
                s.request(&a, 200).inc();
                s.tokens(&a, true, true).inc_by(5);
                s.routing(&a, PickReason::Retry).inc();
            });
        }
        a.with_series("a", "bc", "chat_completions", |s| s.request(&a, 503).inc());
        b.with_series("ab", "c", "chat_completions", |s| s.request(&b, 499).inc());
        let text = String::from_utf8(a.encode()).unwrap();
        for line in [
            "vllm_gateway_requests_total{endpoint=\"chat_completions\",key=\"c\",model=\"ab\",status=\"2xx\"} 3",
            "vllm_gateway_requests_total{endpoint=\"chat_completions\",key=\"bc\",model=\"a\",status=\"5xx\"} 1",
            "vllm_gateway_tokens_total{key=\"c\",kind=\"completion\",model=\"ab\",source=\"exact\"} 15",
            "vllm_gateway_routing_decisions_total{model=\"ab\",reason=\"retry\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // Only what was touched exists: no empty series for other classes.
        assert!(!text.contains("status=\"4xx\""), "{text}");
        assert!(!text.contains("source=\"estimated\""), "{text}");
        assert!(!text.contains("status=\"499\""), "{text}");
        let text_b = String::from_utf8(b.encode()).unwrap();
        assert!(text_b.contains("status=\"499\"} 1"), "{text_b}");
        assert!(!text_b.contains("status=\"2xx\""), "{text_b}");

        // Past the bound the cache starts over; counting goes on.
        for i in 0..SERIES_PER_THREAD + 10 {
            a.with_series("m", &format!("k{i}"), "models", |_| ());
        }
        a.with_series("ab", "c", "chat_completions", |s| s.request(&a, 201).inc());
        let text = String::from_utf8(a.encode()).unwrap();
        assert!(text.contains(
            "vllm_gateway_requests_total{endpoint=\"chat_completions\",key=\"c\",model=\"ab\",status=\"2xx\"} 4"
        ));
        SERIES.with(|c| assert!(c.borrow().len() <= SERIES_PER_THREAD));
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
