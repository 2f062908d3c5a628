//! What every request leaves behind: its metrics and one structured access
//! line (`target: "access"`). Both name the key by its configured name and
//! never carry the key, a raw path or message content.

use std::time::{Duration, Instant};

use crate::forward::ExchangeReport;
use crate::metering::Metered;
use crate::metrics::Metrics;
use crate::telemetry;

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
    let ttft = r.report.first_token.map(|t| t.duration_since(r.started));
    m.with_series(r.model, r.key, r.endpoint, |s| {
        s.request(m, r.status).inc();
        s.duration(m).observe(elapsed.as_secs_f64());
        s.overhead(m).observe(r.overhead.as_secs_f64());
        if let Some(ttft) = ttft {
            s.ttft(m).observe(ttft.as_secs_f64());
        }
        for reason in &r.report.picks {
            s.routing(m, *reason).inc();
        }
        if let Some(u) = r.usage {
            s.tokens(m, false, u.exact).inc_by(u.prompt_tokens);
            s.tokens(m, true, u.exact).inc_by(u.completion_tokens);
        }
    });
    for kind in &r.report.upstream_errors {
        m.upstream_errors.with_label_values(&[r.model, kind]).inc();
    }
    if r.report.client_gone {
        m.client_disconnects.with_label_values(&[r.model]).inc();
    }
    if r.report.retries > 0 {
        m.retries
            .with_label_values(&[r.model])
            .inc_by(u64::from(r.report.retries));
    }
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let line = AccessLine {
        r,
        worker: r.report.worker.as_deref().unwrap_or("-"),
        // Why the worker that answered was chosen (a retry says "retry").
        routing: r.report.picks.last().map_or("-", |p| p.label()),
        duration_ms: ms(elapsed),
        ttft_ms: ttft.map(ms),
        overhead_us: (r.overhead.as_secs_f64() * 1e6).round(),
        usage: r.usage.map(|u| if u.exact { "exact" } else { "estimated" }),
        error: r.error.or(r.report.failed_mid_answer),
    };
    if telemetry::json_line(|out| line.write_json(out)) {
        return;
    }
    tracing::info!(
        target: "access",
        request_id = %r.request_id,
        key = r.key,
        endpoint = r.endpoint,
        model = r.model,
        worker = line.worker,
        routing = line.routing,
        status = r.status,
        duration_ms = line.duration_ms,
        ttft_ms = line.ttft_ms,
        overhead_us = line.overhead_us,
        attempts = r.report.attempts,
        retries = r.report.retries,
        client_gone = r.report.client_gone,
        prompt_tokens = r.usage.map(|u| u.prompt_tokens),
        completion_tokens = r.usage.map(|u| u.completion_tokens),
        usage = line.usage,
        limit = r.limit_note,
        error = line.error,
    );
}

/// The access line's derived values; written as JSON directly, or through
/// `tracing` when another subscriber or the text format is in use. Both carry
/// the same fields, and like `tracing` the JSON omits those that are `None`.
struct AccessLine<'r, 'a> {
    r: &'r AccessRecord<'a>,
    worker: &'r str,
    routing: &'static str,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    overhead_us: f64,
    usage: Option<&'static str>,
    error: Option<&'static str>,
}

/// `,"name":value` (`name` is a plain identifier): the name and its
/// punctuation are one literal, so a field is two appends.
macro_rules! field {
    ($out:expr, $name:literal, $value:expr $(,)?) => {
        put($out, concat!(",\"", $name, "\":"), $value)
    };
}

/// [`field!`] for a value that is there, nothing for `None`, as `tracing`
/// records optional fields.
macro_rules! opt_field {
    ($out:expr, $name:literal, $value:expr $(,)?) => {
        if let Some(v) = $value {
            field!($out, $name, v);
        }
    };
}

impl AccessLine<'_, '_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        let r = self.r;
        out.extend_from_slice(b"{\"timestamp\":\"");
        telemetry::write_timestamp(out, std::time::SystemTime::now());
        out.extend_from_slice(b"\",\"level\":\"INFO\"");
        field!(out, "request_id", r.request_id);
        field!(out, "key", r.key);
        field!(out, "endpoint", r.endpoint);
        field!(out, "model", r.model);
        field!(out, "worker", self.worker);
        field!(out, "routing", self.routing);
        field!(out, "status", r.status);
        field!(out, "duration_ms", self.duration_ms);
        opt_field!(out, "ttft_ms", self.ttft_ms);
        field!(out, "overhead_us", self.overhead_us);
        field!(out, "attempts", r.report.attempts);
        field!(out, "retries", r.report.retries);
        field!(out, "client_gone", r.report.client_gone);
        opt_field!(out, "prompt_tokens", r.usage.map(|u| u.prompt_tokens));
        opt_field!(
            out,
            "completion_tokens",
            r.usage.map(|u| u.completion_tokens)
        );
        opt_field!(out, "usage", self.usage);
        opt_field!(out, "limit", r.limit_note);
        opt_field!(out, "error", self.error);
        out.extend_from_slice(b",\"target\":\"access\"}");
    }
}

fn put(out: &mut Vec<u8>, name: &str, value: impl JsonValue) {
    out.extend_from_slice(name.as_bytes());
    value.write(out);
}

/// A value of the access line, written as JSON straight into the line.
/// Going through `serde_json::to_writer` for each of the twenty fields was
/// about 3% of a request's instructions (its serializer setup and `io::Write`
/// per field); integers and strings are the whole line but the two timings.
trait JsonValue {
    fn write(&self, out: &mut Vec<u8>);
}

impl JsonValue for &str {
    fn write(&self, out: &mut Vec<u8>) {
        write_json_str(out, self);
    }
}

impl JsonValue for bool {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

macro_rules! json_integer {
    ($($t:ty),*) => {$(
        impl JsonValue for $t {
            fn write(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
            }
        }
    )*};
}
json_integer!(u16, u32, u64);

impl JsonValue for f64 {
    fn write(&self, out: &mut Vec<u8>) {
        // serde_json's float form (`1.0`, `0.25`), as `tracing` writes it; a
        // value JSON cannot express (NaN, infinite) is `null`, and the line
        // stays valid JSON.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.extend_from_slice(b"null");
        }
    }
}

/// The bytes a JSON string cannot hold as they are: control characters,
/// `"` and `\` (a table: one load a byte on the hot path).
const ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// `s` as a JSON string: quotes, backslashes and control characters escaped
/// (RFC 8259 §7), everything else, UTF-8 included, copied as it is.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| ESCAPED[usize::from(b)]) {
        // Names, ids and URLs: nothing to escape.
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use crate::pool::PickReason;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn without_timestamp(mut v: Value) -> Value {
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
        if let Some(o) = v.as_object_mut() {
            o.remove("timestamp");
        }
        v
    }

    /// Every byte a string can hold comes back unchanged through a JSON
    /// parser, and the line's integers and floats read as serde's do.
    #[test]
    fn hand_written_values_are_json_that_parses_back() {
        let mut nasty: String = (0u8..0x80).map(char::from).collect();
        nasty.push_str("é€😀\\\"end");
        for s in [nasty.as_str(), "", "plain", "\u{7f}", "tab\tquote\"", "\\"] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
        let mut out = Vec::new();
        field!(&mut out, "a", u64::MAX);
        field!(&mut out, "b", 0u16);
        field!(&mut out, "c", true);
        field!(&mut out, "d", 0.25f64);
        field!(&mut out, "e", f64::NAN);
        opt_field!(&mut out, "f", None::<u32>);
        out[0] = b'{';
        out.push(b'}');
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": u64::MAX, "b": 0, "c": true, "d": 0.25, "e": null})
        );
    }

    /// The hand-written JSON line and `tracing`'s JSON formatter agree on
    /// every field, with and without the optional ones.
    #[test]
    fn the_direct_json_line_matches_tracing_s() {
        let mut report = ExchangeReport::default();
        report.worker = Some(Arc::from("http://10.0.0.5:8000"));
        report.attempts = 2;
        report.retries = 1;
        report.picks.push(PickReason::AffinityHit);
        report.picks.push(PickReason::Retry);
        let usage = Metered {
            prompt_tokens: 12,
            completion_tokens: 34,
            cached_tokens: None,
            exact: false,
        };
        let started = Instant::now();
        let full = AccessRecord {
            request_id: "req-\"quoted\"\n",
            key: "team-a",
            endpoint: "chat_completions",
            model: "meta-llama/Llama-3.1-8B-Instruct",
            status: 200,
            started,
            report: &report,
            usage: Some(usage),
            overhead: Duration::from_micros(87),
            limit_note: Some("clamped"),
            error: Some("timeout"),
        };
        let bare_report = ExchangeReport::default();
        let bare = AccessRecord {
            request_id: "r2",
            key: "-",
            endpoint: "models",
            model: "unknown",
            status: 404,
            started,
            report: &bare_report,
            usage: None,
            overhead: Duration::ZERO,
            limit_note: None,
            error: None,
        };
        let metrics = Metrics::new().unwrap();
        for record_ in [&full, &bare] {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || record(&metrics, record_));
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let via_tracing: Value = serde_json::from_str(text.trim()).unwrap();

            let line = AccessLine {
                r: record_,
                worker: via_tracing["worker"].as_str().unwrap(),
                routing: record_.report.picks.last().map_or("-", |p| p.label()),
                duration_ms: via_tracing["duration_ms"].as_f64().unwrap(),
                ttft_ms: None,
                overhead_us: (record_.overhead.as_secs_f64() * 1e6).round(),
                usage: record_
                    .usage
                    .map(|u| if u.exact { "exact" } else { "estimated" }),
                error: record_.error.or(record_.report.failed_mid_answer),
            };
            let mut out = Vec::new();
            line.write_json(&mut out);
            let direct: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(without_timestamp(direct), without_timestamp(via_tracing));
        }
    }
}
