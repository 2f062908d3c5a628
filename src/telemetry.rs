//! Logging set-up: structured lines through `tracing`, Pingora's own `log`
//! lines bridged into the same output.
//!
//! Lines are formatted on the request's thread and appended to a shared
//! buffer; a background thread writes the buffer out every few
//! milliseconds. Under load one `write` carries hundreds of lines, and no
//! request ever waits on stderr or wakes another thread to log (a channel
//! per line cost a wake-up, a context switch and a `write` per request).
//! The buffer is bounded: past its limit a request writes its line out
//! itself rather than drop it. [`flush`] writes out what is left before the
//! process exits.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Past this many buffered bytes, the appending thread writes out itself.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// Lines waiting for the background writer.
struct Pending {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
}

impl Pending {
    fn write_out(&self) {
        let taken = match self.buf.lock() {
            Ok(mut b) if !b.is_empty() => std::mem::take(&mut *b),
            _ => return,
        };
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&taken);
        let _ = err.flush();
    }
}

static PENDING: std::sync::OnceLock<Arc<Pending>> = std::sync::OnceLock::new();

/// A `MakeWriter` whose writers append to the shared buffer.
#[derive(Clone)]
struct BatchWriter(Arc<Pending>);

/// One event's writer: collects the line, appends it whole on drop (so
/// lines from several threads never interleave).
struct LineWriter {
    pending: Arc<Pending>,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let overflow = match self.pending.buf.lock() {
            Ok(mut b) => {
                b.extend_from_slice(&self.line);
                b.len() > MAX_BUFFERED
            }
            Err(_) => false,
        };
        if overflow {
            self.pending.write_out();
        }
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            pending: Arc::clone(&self.0),
            line: Vec::with_capacity(512),
        }
    }
}

/// Install the global subscriber once; later calls are no-ops, so tests that
/// start several gateways can all call it. `RUST_LOG` overrides the default
/// filter: `info`, without Pingora's connector module, which logs at ERROR a
/// benign race in its idle pool ("failed to acquire reusable stream").
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core::connectors=off"));
    let pending = Arc::clone(PENDING.get_or_init(|| {
        Arc::new(Pending {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: Condvar::new(),
        })
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BatchWriter(Arc::clone(&pending)));
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    if installed.is_ok() {
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || loop {
                // A condvar wait with a timeout: nothing signals it per line;
                // `flush` signals it to write out at once.
                if let Ok(guard) = pending.buf.lock() {
                    let _ = pending.wake.wait_timeout(guard, FLUSH_EVERY);
                }
                pending.write_out();
            });
        if spawned.is_err() {
            eprintln!(
                "cannot start the log writer thread; log lines are written when the buffer fills"
            );
        }
    }
}

/// Write out every buffered line (call before the process exits).
pub fn flush() {
    if let Some(p) = PENDING.get() {
        p.write_out();
    }
}
