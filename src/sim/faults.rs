//! Fault injection: the ways a worker misbehaves, for the gateway's reliability tests.
//!
//! A [`FaultPlan`] applies to generation requests (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`); `/health` answers 503 while `unhealthy` is on. The control endpoints
//! (`/v1/models`, `/metrics`, `/version`, `/tokenize`, `/sim/stats`) are never faulted, so a test
//! can always observe a misbehaving worker.
//!
//! `garbage`, `stall` and `fail_rate` act as soon as the request is read (before validation);
//! the rest act on a valid request. Token faults (`*_after_tokens`) count content tokens over
//! all choices and fire when exactly that many have been sent (0 = right after the role chunk);
//! they apply to chat and completions, and embeddings ignore them. A fault whose count is never
//! reached does not fire. Non-streaming requests map them as: stall/cut at the time of that
//! token, in-band error = HTTP 500, malformed = a truncated JSON body.
//!
//! The same plan is written three ways:
//! * in code: `FaultPlan { cut_after_tokens: Some(3), ..FaultPlan::default() }`;
//! * per request: header `x-sim-fault: cut_after_tokens=3, slow_headers=200ms` (laid over the
//!   worker's plan for that one request; `none` first clears it);
//! * on the command line: `--fault cut_after_tokens=3` (repeatable).
//!
//! Spec grammar: `name[=value]`, comma-separated; `-` and `_` are interchangeable in names.
//! Booleans take no value or `true`/`false`; durations are `250ms`, `2s` or bare milliseconds.
//! `fail_status=N` alone means "fail every request with N" (it implies `fail_rate=1`).

use std::str::FromStr;
use std::time::Duration;

/// What a worker does wrong. `FaultPlan::default()` is a healthy worker.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Fraction (0..=1) of generation requests answered with `fail_status` and a vLLM error body.
    pub fail_rate: f64,
    /// Status for `fail_rate` (default 500; 503 uses vLLM's "Service Unavailable" shape).
    pub fail_status: u16,
    /// Read the request, never answer, until the client leaves.
    pub stall: bool,
    /// Stream this many content tokens, then go silent (connection kept open).
    pub stall_after_tokens: Option<u32>,
    /// Stream this many content tokens, then reset the TCP connection (no `[DONE]`).
    pub cut_after_tokens: Option<u32>,
    /// Stream this many content tokens, then one syntactically broken SSE event, then go on.
    pub malformed_after_tokens: Option<u32>,
    /// Stream this many content tokens, then `data: {"error":...}` and `data: [DONE]` as vLLM does
    /// for a failure after the stream began (non-streaming: HTTP 500).
    pub in_band_error_after_tokens: Option<u32>,
    /// Send the response head, then close the connection.
    pub close_after_headers: bool,
    /// Answer with bytes that are not HTTP, then close.
    pub garbage: bool,
    /// Answer a non-streaming request with a valid-looking JSON body of this many bytes.
    pub huge_body_bytes: Option<u64>,
    /// `/health` answers 503.
    pub unhealthy: bool,
    /// Delay before the response head.
    pub slow_headers: Option<Duration>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            fail_status: 500,
            stall: false,
            stall_after_tokens: None,
            cut_after_tokens: None,
            malformed_after_tokens: None,
            in_band_error_after_tokens: None,
            close_after_headers: false,
            garbage: false,
            huge_body_bytes: None,
            unhealthy: false,
            slow_headers: None,
        }
    }
}

/// A fault spec that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("unknown fault `{0}`")]
    UnknownName(String),
    #[error("fault `{name}`: bad value `{value}` ({expected})")]
    BadValue {
        name: String,
        value: String,
        expected: &'static str,
    },
}

impl FaultPlan {
    /// Applies one or more comma-separated `name[=value]` specs on top of `self`.
    pub fn apply_spec(&mut self, spec: &str) -> Result<(), FaultError> {
        let mut explicit_rate = false;
        let mut set_status = false;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let key = name.replace('-', "_").to_ascii_lowercase();
            match key.as_str() {
                "none" | "clear" => *self = FaultPlan::default(),
                "fail_rate" => {
                    let r = parse_num::<f64>(name, value, "a fraction in 0..=1")?;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(bad(name, value, "a fraction in 0..=1"));
                    }
                    self.fail_rate = r;
                    explicit_rate = true;
                }
                "fail_status" => {
                    let s = parse_num::<u16>(name, value, "an HTTP status 100..=599")?;
                    if !(100..=599).contains(&s) {
                        return Err(bad(name, value, "an HTTP status 100..=599"));
                    }
                    self.fail_status = s;
                    set_status = true;
                }
                "stall" => self.stall = parse_bool(name, value)?,
                "close_after_headers" => self.close_after_headers = parse_bool(name, value)?,
                "garbage" => self.garbage = parse_bool(name, value)?,
                "unhealthy" => self.unhealthy = parse_bool(name, value)?,
                "stall_after_tokens" => self.stall_after_tokens = Some(tokens(name, value)?),
                "cut_after_tokens" => self.cut_after_tokens = Some(tokens(name, value)?),
                "malformed_after_tokens" => {
                    self.malformed_after_tokens = Some(tokens(name, value)?)
                }
                "in_band_error_after_tokens" => {
                    self.in_band_error_after_tokens = Some(tokens(name, value)?);
                }
                "huge_body_bytes" => {
                    self.huge_body_bytes = Some(parse_num::<u64>(name, value, "a byte count")?);
                }
                "slow_headers" => self.slow_headers = Some(parse_duration(name, value)?),
                _ => return Err(FaultError::UnknownName(name.to_string())),
            }
        }
        if set_status && !explicit_rate && self.fail_rate == 0.0 {
            self.fail_rate = 1.0;
        }
        Ok(())
    }

    /// True when the plan would change how a generation request is answered.
    pub fn is_active(&self) -> bool {
        let healthy = FaultPlan {
            unhealthy: self.unhealthy,
            fail_status: self.fail_status,
            ..FaultPlan::default()
        };
        *self != healthy
    }
}

impl FromStr for FaultPlan {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut plan = FaultPlan::default();
        plan.apply_spec(s)?;
        Ok(plan)
    }
}

fn bad(name: &str, value: Option<&str>, expected: &'static str) -> FaultError {
    FaultError::BadValue {
        name: name.to_string(),
        value: value.unwrap_or("").to_string(),
        expected,
    }
}

fn parse_num<T: FromStr>(
    name: &str,
    value: Option<&str>,
    expected: &'static str,
) -> Result<T, FaultError> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(name, value, expected))
}

fn tokens(name: &str, value: Option<&str>) -> Result<u32, FaultError> {
    parse_num(name, value, "a token count")
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, FaultError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        _ => Err(bad(name, value, "true or false")),
    }
}

fn parse_duration(name: &str, value: Option<&str>) -> Result<Duration, FaultError> {
    const EXPECTED: &str = "a duration like 250ms or 2s";
    let v = value.ok_or_else(|| bad(name, value, EXPECTED))?;
    let (num, scale_ms) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = num.trim().parse().map_err(|_| bad(name, value, EXPECTED))?;
    if !n.is_finite() || n < 0.0 || n * scale_ms > 1e12 {
        return Err(bad(name, value, EXPECTED));
    }
    Ok(Duration::from_secs_f64(n * scale_ms / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault() {
        let p: FaultPlan = "fail_rate=0.5, fail_status=503, stall, stall_after_tokens=2, \
            cut-after-tokens=3, malformed_after_tokens=4, in_band_error_after_tokens=5, \
            close_after_headers=true, garbage, huge_body_bytes=1000000, unhealthy, slow_headers=250ms"
            .parse()
            .unwrap();
        assert_eq!(p.fail_rate, 0.5);
        assert_eq!(p.fail_status, 503);
        assert!(p.stall && p.close_after_headers && p.garbage && p.unhealthy);
        assert_eq!(p.stall_after_tokens, Some(2));
        assert_eq!(p.cut_after_tokens, Some(3));
        assert_eq!(p.malformed_after_tokens, Some(4));
        assert_eq!(p.in_band_error_after_tokens, Some(5));
        assert_eq!(p.huge_body_bytes, Some(1_000_000));
        assert_eq!(p.slow_headers, Some(Duration::from_millis(250)));
        assert!(p.is_active());
    }

    #[test]
    fn status_alone_fails_everything_and_none_clears() {
        let mut p: FaultPlan = "fail_status=503".parse().unwrap();
        assert_eq!(p.fail_rate, 1.0);
        p.apply_spec("none").unwrap();
        assert_eq!(p, FaultPlan::default());
        assert!(!p.is_active());
        let p: FaultPlan = "unhealthy".parse().unwrap();
        assert!(!p.is_active(), "unhealthy alone does not touch generation");
    }

    #[test]
    fn durations() {
        let p: FaultPlan = "slow_headers=2s".parse().unwrap();
        assert_eq!(p.slow_headers, Some(Duration::from_secs(2)));
        let p: FaultPlan = "slow_headers=40".parse().unwrap();
        assert_eq!(p.slow_headers, Some(Duration::from_millis(40)));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            "explode".parse::<FaultPlan>(),
            Err(FaultError::UnknownName(_))
        ));
        assert!("fail_rate=2".parse::<FaultPlan>().is_err());
        assert!("fail_status=42".parse::<FaultPlan>().is_err());
        assert!("cut_after_tokens".parse::<FaultPlan>().is_err());
        assert!("stall=maybe".parse::<FaultPlan>().is_err());
        assert!("slow_headers=-1s".parse::<FaultPlan>().is_err());
    }
}
