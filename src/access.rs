//! What every request leaves behind: its metrics and one structured access
//! line (`target: "access"`). Both name the key by its configured name and
//! never carry the key, a raw path or message content.

use std::time::{Duration, Instant};

use crate::forward::ExchangeReport;
use crate::metering::Metered;
use crate::metrics::{status_class, Metrics};

/// Everything the access line and the metrics need about one request.
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub key: &'a str,
    pub endpoint: &'static str,
    /// A configured model name or `unknown`.
    pub model: &'a str,
    pub status: u16,
    pub started: Instant,
    pub report: &'a ExchangeReport,
    pub usage: Option<Metered>,
    pub overhead: Duration,
    pub limit_note: Option<&'static str>,
    pub error: Option<&'static str>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Record the request's metrics and write its access line.
pub fn record(m: &Metrics, r: &AccessRecord<'_>) {
    let elapsed = r.started.elapsed();
    m.requests
        .with_label_values(&[r.model, r.key, r.endpoint, status_class(r.status)])
        .inc();
    m.request_duration
        .with_label_values(&[r.model, r.endpoint])
        .observe(elapsed.as_secs_f64());
    m.overhead
        .with_label_values(&[r.endpoint])
        .observe(r.overhead.as_secs_f64());
    let ttft = r.report.first_token.map(|t| t.duration_since(r.started));
    if let Some(ttft) = ttft {
        m.time_to_first_token
            .with_label_values(&[r.model])
            .observe(ttft.as_secs_f64());
    }
    for kind in &r.report.upstream_errors {
        m.upstream_errors.with_label_values(&[r.model, kind]).inc();
    }
    if r.report.client_gone {
        m.client_disconnects.with_label_values(&[r.model]).inc();
    }
    for reason in &r.report.picks {
        m.routing_decisions
            .with_label_values(&[r.model, reason.label()])
            .inc();
    }
    if r.report.retries > 0 {
        m.retries
            .with_label_values(&[r.model])
            .inc_by(u64::from(r.report.retries));
    }
    if let Some(u) = r.usage {
        let source = if u.exact { "exact" } else { "estimated" };
        m.tokens
            .with_label_values(&[r.model, r.key, "prompt", source])
            .inc_by(u.prompt_tokens);
        m.tokens
            .with_label_values(&[r.model, r.key, "completion", source])
            .inc_by(u.completion_tokens);
    }
    tracing::info!(
        target: "access",
        request_id = %r.request_id,
        key = r.key,
        endpoint = r.endpoint,
        model = r.model,
        worker = r.report.worker.as_deref().unwrap_or("-"),
        // Why the worker that answered was chosen (a retry says "retry").
        routing = r.report.picks.last().map_or("-", |p| p.label()),
        status = r.status,
        duration_ms = ms(elapsed),
        ttft_ms = ttft.map(ms),
        overhead_us = (r.overhead.as_secs_f64() * 1e6).round(),
        attempts = r.report.attempts,
        retries = r.report.retries,
        client_gone = r.report.client_gone,
        prompt_tokens = r.usage.map(|u| u.prompt_tokens),
        completion_tokens = r.usage.map(|u| u.completion_tokens),
        usage = r.usage.map(|u| if u.exact { "exact" } else { "estimated" }),
        limit = r.limit_note,
        error = r.error.or(r.report.failed_mid_answer),
    );
}
