//! Sampling and output-length fields: OpenAI's (CC §1) with vLLM's stricter readings
//! (vLLM §2), and vLLM's own sampling extras (vLLM §4).

use serde_json::Value;

use super::check::{self, Bound, VResult};
use super::{Cx, I64_MAX};
use crate::request::invalid::{codes, invalid_type, Invalid, Path};
use crate::request::ValidationPolicy;

/// `max_tokens` / `max_completion_tokens`: integer ≥ 1 or null. The spec sets no bound
/// (CC §1); vLLM rejects a resolved value < 1, including `max_completion_tokens: 0`
/// (vLLM §3). Capped at i64::MAX: a token count beyond that is never meaningful.
pub(super) fn max_tokens(v: &Value, p: &Path<'_>) -> VResult<Option<u64>> {
    if v.is_null() {
        return Ok(None);
    }
    let i = check::int_in(v, p, 1, I64_MAX)?;
    Ok(u64::try_from(i).ok())
}

/// 0 ≤ t ≤ max_temperature (CC §1: [0, 2]; vLLM 0.33 the same, vLLM §2).
pub(super) fn temperature(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let t = check::num_in(
        v,
        p,
        Bound::Incl(0.0),
        Bound::Incl(cx.policy.max_temperature),
    )?;
    cx.seen.temperature = Some(t);
    Ok(())
}

/// (0, 1]: OpenAI allows 0 (CC §1) but vLLM rejects it (vLLM §2); stricter wins.
pub(super) fn top_p(v: &Value, p: &Path<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    check::num_in(v, p, Bound::Excl(0.0), Bound::Incl(1.0)).map(drop)
}

/// 1 ≤ n ≤ max_n (CC §1: 128; vLLM §2: 16384; stricter wins by default).
pub(super) fn n(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let n = check::int_in(v, p, 1, i128::from(cx.policy.max_n))?;
    cx.seen.n = u32::try_from(n).ok();
    Ok(())
}

/// −2 ≤ x ≤ 2 (CC §1, vLLM §2).
pub(super) fn penalty(v: &Value, p: &Path<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    check::num_in(v, p, Bound::Incl(-2.0), Bound::Incl(2.0)).map(drop)
}

/// A string, or an array of 1..=max_stop strings; no empty strings (CC §1; vLLM §2 rejects
/// empty stop strings, including `"stop": ""`).
pub(super) fn stop(v: &Value, p: &Path<'_>, policy: &ValidationPolicy) -> VResult {
    match v {
        Value::Null => Ok(()),
        Value::String(_) => check::non_empty_str(v, p).map(drop),
        Value::Array(_) => {
            let items = check::array_len(v, p, 1, policy.max_stop)?;
            for (i, s) in items.iter().enumerate() {
                check::non_empty_str(s, &p.index(i))?;
            }
            Ok(())
        }
        _ => Err(invalid_type(p, "a string or an array of strings", v)),
    }
}

/// Keys: token ids as canonical decimal strings; values: −100..=100 (CC §1).
///
/// vLLM parses keys with Python's `int()`, which also takes `" 7"`, `"+7"`, `"0_7"` and
/// `"007"`; two spellings of one id would collapse into one entry, last one winning. Only
/// the canonical form passes here, so every key names exactly one token. Negative ids are
/// outside every vocabulary (vLLM §2, "out-of-vocab" 400).
pub(super) fn logit_bias(v: &Value, p: &Path<'_>, policy: &ValidationPolicy) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let obj = check::want_object(v, p)?;
    for (k, bias) in obj {
        let kp = p.key(k);
        if !is_token_id(k) {
            let param = kp.render();
            let message = format!(
                "Invalid key in 'logit_bias': '{param}' is not a token id. Keys must be non-negative integers written as strings."
            );
            return Err(Invalid::new(param, codes::INVALID_VALUE, message));
        }
        if policy.clamp_logit_bias {
            check::want_number(bias, &kp)?;
        } else {
            check::num_in(bias, &kp, Bound::Incl(-100.0), Bound::Incl(100.0))?;
        }
    }
    Ok(())
}

fn is_token_id(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 18 // < i64::MAX, and far above any vocabulary
        && b.iter().all(u8::is_ascii_digit)
        && (b.len() == 1 || b.first() != Some(&b'0'))
}

/// `top_logprobs`: 0..=max_logprobs (CC §1: 0..20; vLLM §2: also −1 = whole vocabulary,
/// capped by `--max-logprobs`). −1 passes only when the policy is uncapped.
pub(super) fn top_logprobs(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    logprob_count(v, p, cx.policy)?;
    cx.seen.top_logprobs = true;
    Ok(())
}

/// `prompt_logprobs`: ≥ 0 or −1, capped like `top_logprobs` (vLLM §4 and vLLM's
/// `--max-logprobs` check on prompt logprobs).
pub(super) fn prompt_logprobs(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let n = logprob_count(v, p, cx.policy)?;
    cx.seen.prompt_logprobs = i64::try_from(n).ok();
    Ok(())
}

fn logprob_count(v: &Value, p: &Path<'_>, policy: &ValidationPolicy) -> VResult<i128> {
    let uncapped = policy.max_logprobs < 0;
    let min = if uncapped { -1 } else { 0 };
    let max = if uncapped {
        I64_MAX
    } else {
        i128::from(policy.max_logprobs)
    };
    check::int_in(v, p, min, max)
}

/// int64 (CC §1; vLLM §2 via pydantic bounds).
pub(super) fn seed(v: &Value, p: &Path<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    check::int_in(v, p, super::I64_MIN, I64_MAX).map(drop)
}

/// Non-empty list of token ids (vLLM rejects `[]`: "allowed_token_ids is not None and
/// empty").
pub(super) fn allowed_token_ids(v: &Value, p: &Path<'_>) -> VResult {
    let n = check::int_array(v, p, 0, I64_MAX)?;
    if n == 0 {
        return Err(check::empty_array(p));
    }
    Ok(())
}

/// 1..=128 token ids (vLLM §4); needs `logprobs: true` and no beam search (cross-field).
pub(super) fn logprob_token_ids(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let items = check::array_len(v, p, 1, 128)?;
    for (i, item) in items.iter().enumerate() {
        check::int_in(item, &p.index(i), 0, I64_MAX)?;
    }
    cx.seen.logprob_token_ids = true;
    Ok(())
}

/// Non-empty strings; at most 128 (vLLM §4: ≤ 128 token sequences after tokenization, and
/// every word yields at least one, so more than 128 words can never pass). vLLM types it
/// as a non-nullable list.
pub(super) fn bad_words(v: &Value, p: &Path<'_>) -> VResult {
    let items = check::array_len(v, p, 0, 128)?;
    for (i, w) in items.iter().enumerate() {
        check::non_empty_str(w, &p.index(i))?;
    }
    Ok(())
}

/// ≥ 0, or −1 = unlimited (vLLM §4). vLLM's validator rejects floats outright, so `5.0`
/// fails here although other integer fields accept it.
pub(super) fn thinking_token_budget(v: &Value, p: &Path<'_>) -> VResult {
    match v.as_number() {
        Some(n) if n.is_i64() || n.is_u64() => check::int_in(v, p, -1, I64_MAX).map(drop),
        _ => Err(invalid_type(p, "an integer", v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_id_keys_are_canonical_decimals() {
        for ok in ["0", "7", "50256", "123456789012345678"] {
            assert!(is_token_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-1",
            "+7",
            " 7",
            "07",
            "0_7",
            "1e3",
            "7.0",
            "x",
            "1234567890123456789",
        ] {
            assert!(!is_token_id(bad), "{bad}");
        }
    }
}
