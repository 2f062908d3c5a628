//! The shared store: budgets in Redis, so every gateway replica spends from
//! the same one.
//!
//! Each decision is one Lua script (GCRA, the same arithmetic as
//! [`super::gcra`]) run atomically by Redis on its own clock, so replicas
//! never race and never disagree about time. The connection manager
//! reconnects after a Redis restart (scripts are reloaded on `NOSCRIPT` by
//! the client); until Redis answers again, every decision fails fast and the
//! gateway follows `on_store_error`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::gcra::{self, Spend, Window};
use super::LimitKind;

/// GCRA in microseconds on Redis's clock. KEYS[1]: the budget's TAT.
/// ARGV: interval per unit (µs), window (µs), cost (units; negative with
/// mode "adjust" refunds), mode ("spend" | "adjust").
/// Returns {allowed, retry_after_us, used_us}.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new = tat + cost * interval
if ARGV[4] == 'adjust' then
  if new <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
  end
  return {1, 0, 0}
end
local used = new - now
if used > window then
  return {0, used - window, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil(used / 1000) + 1000)
return {1, 0, used}
"#;

/// Why the store could not decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Redis(String),
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotConnected => "not_connected",
            StoreError::Timeout(_) => "timeout",
            StoreError::Redis(_) => "redis_error",
        }
    }
}

/// Called on every store failure (a metric).
pub type ErrorHook = Arc<dyn Fn(&StoreError) + Send + Sync>;

pub struct RedisStore {
    client: redis::Client,
    /// Prefix of every key the gateway writes.
    prefix: String,
    timeout: Duration,
    script: Script,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: AtomicBool,
    on_error: ErrorHook,
    epoch: Instant,
    /// Last time a failure was logged (ns since epoch): at most one line per
    /// [`LOG_EVERY`], so an outage does not flood the logs.
    last_log: AtomicU64,
    suppressed: AtomicU64,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl RedisStore {
    /// Validate the URL; connecting happens in the background.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        on_error: ErrorHook,
    ) -> Result<Arc<RedisStore>, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Arc::new(RedisStore {
            client,
            prefix: prefix.to_string(),
            timeout,
            script: Script::new(GCRA_LUA),
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            on_error,
            epoch: Instant::now(),
            last_log: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }))
    }

    /// The connection, or None while one is being made (in the background:
    /// a request never waits for Redis to come up).
    fn connection(self: &Arc<Self>) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.load_full() {
            return Some((*c).clone());
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(me.timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(me.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                match ConnectionManager::new_with_config(me.client.clone(), config).await {
                    Ok(c) => {
                        tracing::info!("connected to the rate-limit store");
                        me.conn.store(Some(Arc::new(c)));
                    }
                    Err(e) => me.failed(&StoreError::Redis(e.to_string())),
                }
                me.connecting.store(false, Ordering::Release);
            });
        }
        None
    }

    /// Connect now (start-up), waiting at most the store timeout.
    pub async fn warm_up(self: &Arc<Self>) {
        let _ = self.connection();
        let deadline = Instant::now() + self.timeout.max(Duration::from_millis(500));
        while self.conn.load().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn failed(&self, e: &StoreError) {
        (self.on_error)(e);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_log.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_nanos() as u64;
        if due
            && self
                .last_log
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(error = %e, suppressed, "rate-limit store unavailable; following on_store_error");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn key(&self, name: &str, kind: LimitKind) -> String {
        format!("{}:{}:{}", self.prefix, name, kind.label())
    }

    async fn run(
        self: &Arc<Self>,
        key: String,
        cost: i64,
        limit: u64,
        mode: &str,
    ) -> Result<(i64, i64, i64), StoreError> {
        let Some(mut conn) = self.connection() else {
            let e = StoreError::NotConnected;
            self.failed(&e);
            return Err(e);
        };
        let interval_us = gcra::interval_ns(limit).div_ceil(1000).max(1);
        let window_us = gcra::WINDOW.as_micros() as u64;
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval_us)
            .arg(window_us)
            .arg(cost)
            .arg(mode);
        let result = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let e = StoreError::Redis(e.to_string());
                self.failed(&e);
                Err(e)
            }
            Err(_) => {
                let e = StoreError::Timeout(self.timeout);
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Spend `cost` units of a `limit`-per-minute budget.
    pub async fn spend(
        self: &Arc<Self>,
        name: &str,
        kind: LimitKind,
        cost: u64,
        limit: u64,
    ) -> Result<Spend, StoreError> {
        let cost_i = i64::try_from(cost).unwrap_or(i64::MAX);
        let (allowed, retry_us, used_us) = self
            .run(self.key(name, kind), cost_i, limit, "spend")
            .await?;
        let interval_ns = gcra::interval_ns(limit);
        let window_ns = gcra::WINDOW.as_nanos() as u64;
        let used_ns = u64::try_from(used_us).unwrap_or(0).saturating_mul(1000);
        let window = Window {
            limit,
            remaining: window_ns.saturating_sub(used_ns) / interval_ns,
            reset: Duration::from_nanos(used_ns),
        };
        Ok(if allowed == 1 {
            Spend::Allowed(window)
        } else {
            Spend::Denied {
                retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(0)),
                window,
            }
        })
    }

    /// Move a token budget by `delta` units (negative refunds).
    pub async fn adjust(
        self: &Arc<Self>,
        name: &str,
        delta: i64,
        limit: u64,
    ) -> Result<(), StoreError> {
        self.run(self.key(name, LimitKind::Tokens), delta, limit, "adjust")
            .await
            .map(|_| ())
    }
}
