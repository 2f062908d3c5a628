//! Logging set-up: structured lines through `tracing`, Pingora's own `log`
//! lines bridged into the same output.
//!
//! Lines are formatted on the request's thread but written by a background
//! thread (`tracing-appender`), so a request never waits on a `write` to
//! stderr; the buffer blocks rather than drops when full, so access lines are
//! never lost. [`flush`] writes out what is buffered before the process exits.

use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// Keeps the background writer alive; dropping it flushes.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Install the global subscriber once; later calls are no-ops, so tests that
/// start several gateways can all call it. `RUST_LOG` overrides the default
/// filter: `info`, without Pingora's connector module, which logs at ERROR a
/// benign race in its idle pool ("failed to acquire reusable stream": the
/// request just opens a fresh connection). Upstream failures that matter
/// reach the access line and `vllm_gateway_upstream_errors_total`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core::connectors=off"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    if installed.is_ok() {
        if let Ok(mut w) = WRITER.lock() {
            *w = Some(guard);
        }
    }
}

/// Write out every buffered line (call before the process exits).
pub fn flush() {
    if let Ok(mut w) = WRITER.lock() {
        w.take();
    }
}
