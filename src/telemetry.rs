//! Logging set-up: structured lines through `tracing`, Pingora's own `log`
//! lines bridged into the same output.
//!
//! Lines are formatted on the request's thread and appended to that
//! thread's buffer; a background thread writes the buffers out every few
//! milliseconds. Under load one `write` carries hundreds of lines, and no
//! request ever waits on stderr or wakes another thread to log (a channel
//! per line cost a wake-up, a context switch and a `write` per request).
//! The buffers are per thread because one shared buffer was a lock and a
//! run of cache lines that every request thread took in turn: at 64
//! connections on two threads, `perf` put a third of the request task's own
//! samples on that lock, a cost a single-threaded profile cannot show. Each
//! buffer is bounded: past its limit a request writes the lines out itself
//! rather than drop them. [`flush`] writes out what is left before the
//! process exits.
//!
//! In the JSON format (for log shippers, and the one under load) lines of one
//! thread keep their order, but lines of different threads written in the
//! same few milliseconds may not; each carries its timestamp. The text format
//! is for a person at a terminal, reading a startup or a shutdown as a
//! sequence: all its lines share one buffer and keep the order they were
//! made in.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// How long a line may wait in its buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Past this many bytes in its buffer, the appending thread writes out itself.
const MAX_BUFFERED: usize = 1024 * 1024;
/// Buffers: threads take them in turn, so up to this many threads never
/// share one (more threads than this share a few, which is only slower).
const SHARDS: usize = 32;

/// One thread's lines. Aligned so two buffers' locks never share a cache
/// line, which would bring back the contention the shards are there to end.
#[repr(align(128))]
struct Shard {
    buf: Mutex<Vec<u8>>,
}

/// Lines waiting for the background writer.
struct Pending {
    shards: Box<[Shard]>,
    /// Every thread appends to the first buffer (the text format's order).
    one_buffer: AtomicBool,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    buf: Mutex::new(Vec::new()),
                })
                .collect(),
            one_buffer: AtomicBool::new(false),
        }
    }

    /// Appends `line` to the calling thread's buffer; true when that buffer
    /// is past its bound and the caller should write out.
    fn append(&self, line: &[u8]) -> bool {
        let i = if self.one_buffer.load(Ordering::Relaxed) {
            0
        } else {
            shard_of_this_thread()
        };
        let shard = &self.shards[i];
        match shard.buf.lock() {
            Ok(mut b) => {
                b.extend_from_slice(line);
                b.len() > MAX_BUFFERED
            }
            Err(_) => false,
        }
    }

    /// [`Pending::append`], writing out to stderr when the buffer is full.
    fn append_or_write(&self, line: &[u8]) {
        if self.append(line) {
            self.write_out(&mut std::io::stderr().lock());
        }
    }

    /// Writes every buffered line to `out`. Callers pass stderr locked for
    /// the whole round, so two rounds at once (the writer's and a full
    /// buffer's) cannot write one thread's lines out of order.
    fn write_out(&self, out: &mut dyn Write) {
        self.write_out_with(out, &mut Vec::new());
    }

    /// [`Pending::write_out`] with a spare buffer the caller keeps between
    /// rounds: each emptied buffer takes the spare's capacity, so no thread
    /// starts growing its buffer from nothing after a round.
    fn write_out_with(&self, out: &mut dyn Write, spare: &mut Vec<u8>) {
        for shard in self.shards.iter() {
            match shard.buf.lock() {
                Ok(mut b) if !b.is_empty() => std::mem::swap(&mut *b, spare),
                _ => continue,
            }
            let _ = out.write_all(spare);
            spare.clear();
        }
        let _ = out.flush();
    }
}

/// This thread's buffer, assigned on its first line.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

static PENDING: OnceLock<Arc<Pending>> = OnceLock::new();

/// Set when this module's JSON logger is the one installed: lines formatted
/// elsewhere in the same shape may then go straight to its buffer.
static JSON_INSTALLED: AtomicBool = AtomicBool::new(false);

/// A `MakeWriter` whose writers append to the calling thread's buffer.
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
        self.pending.append_or_write(&self.line);
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
    let pending = Arc::clone(PENDING.get_or_init(|| Arc::new(Pending::new())));
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
        JSON_INSTALLED.store(format == LogFormat::Json, Ordering::Relaxed);
        pending
            .one_buffer
            .store(format == LogFormat::Text, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    pending.write_out_with(&mut std::io::stderr().lock(), &mut spare);
                    // A burst's worth of capacity is not kept for good.
                    spare.shrink_to(MAX_BUFFERED);
                }
            });
        if spawned.is_err() {
            eprintln!(
                "cannot start the log writer thread; log lines are written when a buffer fills"
            );
        }
    }
}

/// Write out every buffered line (call before the process exits).
pub fn flush() {
    if let Some(p) = PENDING.get() {
        p.write_out(&mut std::io::stderr().lock());
    }
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// Appends one JSON log line that `build` writes (a whole object, no
/// newline) to the output, when this module's JSON logger is the installed
/// one; otherwise returns false and the caller logs through `tracing`.
///
/// For the access line, written once per request: `tracing`'s JSON
/// formatter visits each field through a `dyn` writer, and in a profile at
/// 64 connections it was a tenth of the gateway's CPU. The caller checks
/// `tracing::enabled!` first, so `RUST_LOG` still decides.
pub fn json_line(build: impl FnOnce(&mut Vec<u8>)) -> bool {
    if !JSON_INSTALLED.load(Ordering::Relaxed) {
        return false;
    }
    let Some(pending) = PENDING.get() else {
        return false;
    };
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return false;
        };
        line.clear();
        build(&mut line);
        line.push(b'\n');
        pending.append_or_write(&line);
        true
    })
}

/// Writes `t` as RFC 3339 UTC with microseconds
/// (`2026-11-24T23:44:33.157443Z`), the form `tracing`'s JSON lines use.
pub fn write_timestamp(out: &mut Vec<u8>, t: std::time::SystemTime) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rest = secs % 86_400;
    // Filled in place and appended once: one line's stamp is a few dozen
    // instructions, not a capacity check and a division per digit.
    let mut stamp = *b"0000-00-00T00:00:00.000000Z";
    let fields = [
        (year, 0..4),
        (month, 5..7),
        (day, 8..10),
        (rest / 3600, 11..13),
        (rest % 3600 / 60, 14..16),
        (rest % 60, 17..19),
        (u64::from(since.subsec_micros()), 20..26),
    ];
    for (value, at) in fields {
        put_digits(&mut stamp[at], value);
    }
    out.extend_from_slice(&stamp);
}

/// Writes the last `digits.len()` decimal digits of `value` into `digits`.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// (year, month, day) of a day count since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64, micros: u32) -> String {
        let mut out = Vec::new();
        write_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999),
        );
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn timestamps_match_date_u() {
        // Expected values from `date -u -d @SECS`.
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_795_564_803, 157_443), "2026-11-25T00:00:03.157443Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<&str> {
        std::str::from_utf8(out)
            .unwrap_or_default()
            .lines()
            .collect()
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_each_threads_order() {
        let pending = Arc::new(Pending::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pending = Arc::clone(&pending);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        assert!(
                            !pending.append(format!("t{t} {i:04} {}\n", "x".repeat(40)).as_bytes())
                        );
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        // Write out while the threads append, as the writer thread does.
        for _ in 0..50 {
            pending.write_out(&mut out);
        }
        for t in threads {
            t.join().expect("appending thread");
        }
        pending.write_out(&mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 8 * 500);
        for t in 0..8 {
            let mine: Vec<&str> = got
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let want: Vec<String> = (0..500)
                .map(|i| format!("t{t} {i:04} {}", "x".repeat(40)))
                .collect();
            assert_eq!(mine, want, "thread {t}'s lines, whole and in order");
        }
        let mut again = Vec::new();
        pending.write_out(&mut again);
        assert!(again.is_empty(), "written lines are not written twice");
    }

    #[test]
    fn with_one_buffer_lines_of_all_threads_keep_the_order_they_were_made_in() {
        let pending = Arc::new(Pending::new());
        pending.one_buffer.store(true, Ordering::Relaxed);
        // Two threads take turns strictly: line i is made before line i + 1.
        let turn = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (pending, turn) = (Arc::clone(&pending), Arc::clone(&turn));
                std::thread::spawn(move || {
                    for i in (t..200).step_by(2) {
                        let (lock, cv) = &*turn;
                        let mut now = lock.lock().expect("turn");
                        while *now != i {
                            now = cv.wait(now).expect("turn");
                        }
                        pending.append(format!("line {i:03}\n").as_bytes());
                        *now += 1;
                        cv.notify_all();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("appending thread");
        }
        let mut out = Vec::new();
        pending.write_out(&mut out);
        let want: Vec<String> = (0..200).map(|i| format!("line {i:03}")).collect();
        assert_eq!(lines(&out), want);
    }

    #[test]
    fn a_round_hands_the_spare_capacity_on_instead_of_starting_from_nothing() {
        let pending = Pending::new();
        let mut spare = Vec::with_capacity(64 * 1024);
        let mut out = Vec::new();
        for round in 0..3 {
            assert!(!pending.append(format!("round {round}\n").as_bytes()));
            pending.write_out_with(&mut out, &mut spare);
            let kept = pending.shards[shard_of_this_thread()]
                .buf
                .lock()
                .map(|b| (b.len(), b.capacity()))
                .unwrap_or_default();
            assert_eq!(kept.0, 0, "written out");
            assert!(kept.1 >= 64 * 1024, "round {round}: capacity {}", kept.1);
            // The spare is now this thread's old buffer: small, and empty.
            assert!(spare.is_empty());
            spare.reserve(64 * 1024);
        }
        assert_eq!(lines(&out), ["round 0", "round 1", "round 2"]);
    }

    #[test]
    fn a_full_buffer_asks_its_thread_to_write_out() {
        let pending = Pending::new();
        let line = vec![b'y'; 64 * 1024];
        let full = (0..MAX_BUFFERED / line.len() + 1)
            .map(|_| pending.append(&line))
            .position(|over| over);
        assert_eq!(full, Some(MAX_BUFFERED / line.len()));
        let mut out = Vec::new();
        pending.write_out(&mut out);
        assert_eq!(out.len(), (MAX_BUFFERED / line.len() + 1) * line.len());
        assert!(
            !pending.append(b"z\n"),
            "written out, the buffer starts over"
        );
    }
}
