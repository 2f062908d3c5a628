//! `GET /metrics`: the vLLM engine metrics a load-aware router scrapes, in Prometheus text
//! format (../shared/reference/vllm.md §8). Labels as vLLM: `engine` (data-parallel index, always
//! "0" here) and `model_name` (the base model); counters carry the `_total` suffix.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::engine::Engine;

/// Renders the metrics page.
pub(crate) fn render(engine: &Engine, model: &str) -> String {
    let c = &engine.counters;
    let labels = format!("engine=\"0\",model_name=\"{}\"", escape_label(model));
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{{labels}}} {}", fmt_value(value));
    };
    gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        c.running.load(Relaxed) as f64,
    );
    gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        c.waiting.load(Relaxed) as f64,
    );
    gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        engine.kv_usage(),
    );
    let mut counter = |name: &str, help: &str, series: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (extra, v) in series {
            let _ = writeln!(out, "{name}{{{labels}{extra}}} {}", fmt_value(*v as f64));
        }
    };
    counter(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        &[("", c.prefix_cache_queries.load(Relaxed))],
    );
    counter(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        &[("", c.prefix_cache_hits.load(Relaxed))],
    );
    counter(
        "vllm:num_preemptions_total",
        "Cumulative number of preemptions from the engine (the simulator never preempts).",
        &[("", 0)],
    );
    counter(
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        &[("", c.prompt_tokens.load(Relaxed))],
    );
    counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        &[("", c.generation_tokens.load(Relaxed))],
    );
    counter(
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        &[
            (",finished_reason=\"stop\"", c.finished_stop.load(Relaxed)),
            (
                ",finished_reason=\"length\"",
                c.finished_length.load(Relaxed),
            ),
            (",finished_reason=\"abort\"", c.finished_abort.load(Relaxed)),
            (",finished_reason=\"error\"", c.finished_error.load(Relaxed)),
        ],
    );
    out
}

/// Prometheus client style: integers print as `3.0`.
fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_help_and_type() {
        let e = Engine::new(4, 100, 8);
        e.counters.running.store(3, Relaxed);
        e.counters.kv_tokens.store(50, Relaxed);
        let text = render(&e, "m\"x");
        assert!(
            text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\\\"x\"} 3.0\n")
        );
        assert!(text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\\\"x\"} 0.5\n"));
        assert!(text.contains("# TYPE vllm:prefix_cache_hits_total counter\n"));
        assert!(text.contains("finished_reason=\"abort\"} 0.0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap();
        }
    }
}
