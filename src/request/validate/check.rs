//! Typed accessors shared by the rules: each returns the value in the wanted shape or the
//! `Invalid` that names the path.
//!
//! Number semantics follow JSON Schema, which is how OpenAI's spec is written: an
//! "integer" is any JSON number with no fractional part, so `3.0` is the integer 3
//! (pydantic, in vLLM, accepts it too). Strings such as `"3"` are never numbers here,
//! although pydantic's lax mode would coerce them: the stricter reading wins.

use serde_json::{Map, Value};

use crate::request::invalid::{codes, invalid_type, show, unknown, Invalid, Path};

pub(crate) type VResult<T = ()> = Result<T, Invalid>;

pub(crate) fn want_bool(v: &Value, path: &Path<'_>) -> VResult<bool> {
    v.as_bool()
        .ok_or_else(|| invalid_type(path, "a boolean", v))
}

pub(crate) fn want_str<'v>(v: &'v Value, path: &Path<'_>) -> VResult<&'v str> {
    v.as_str().ok_or_else(|| invalid_type(path, "a string", v))
}

pub(crate) fn want_object<'v>(v: &'v Value, path: &Path<'_>) -> VResult<&'v Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| invalid_type(path, "an object", v))
}

pub(crate) fn want_array<'v>(v: &'v Value, path: &Path<'_>) -> VResult<&'v [Value]> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| invalid_type(path, "an array", v))
}

pub(crate) fn want_number(v: &Value, path: &Path<'_>) -> VResult<f64> {
    v.as_f64().ok_or_else(|| invalid_type(path, "a number", v))
}

/// The value as an integer (saturated into i128 so range checks can report it), or
/// `invalid_type` for non-numbers and numbers with a fraction.
pub(crate) fn want_integer(v: &Value, path: &Path<'_>) -> VResult<i128> {
    let Value::Number(n) = v else {
        return Err(invalid_type(path, "an integer", v));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Ok(i128::from(u));
    }
    match n.as_f64() {
        // An integer literal below i64::MIN arrives as an f64, and f64 rounds
        // everything from -2^63 - 1024 up to -2^63 onto exactly i64::MIN, which
        // would pass a range check Python (vLLM) does on the exact integer.
        // Such an f64 cannot be told apart from the (pointless) float spelling
        // -9223372036854775808.0, so both count as below i64::MIN.
        Some(f) if f.fract() == 0.0 && f <= -(2f64.powi(63)) => Ok(i128::from(i64::MIN) - 1),
        // `as` saturates, so 1e300 becomes i128::MAX and fails the range check.
        Some(f) if f.fract() == 0.0 => Ok(f as i128),
        _ => Err(invalid_type(path, "an integer", v)),
    }
}

/// An integer in `[min, max]`.
pub(crate) fn int_in(v: &Value, path: &Path<'_>, min: i128, max: i128) -> VResult<i128> {
    let i = want_integer(v, path)?;
    if i < min {
        return Err(below_min_int(path, min, v));
    }
    if i > max {
        return Err(above_max_int(path, max, v));
    }
    Ok(i)
}

pub(crate) fn below_min_int(path: &Path<'_>, min: impl std::fmt::Display, v: &Value) -> Invalid {
    let param = path.render();
    let message = format!(
        "Invalid '{param}': integer below minimum value. Expected a value >= {min}, but got {} instead.",
        show(v)
    );
    Invalid::new(param, codes::INTEGER_BELOW_MIN, message)
}

pub(crate) fn above_max_int(path: &Path<'_>, max: impl std::fmt::Display, v: &Value) -> Invalid {
    let param = path.render();
    let message = format!(
        "Invalid '{param}': integer above maximum value. Expected a value <= {max}, but got {} instead.",
        show(v)
    );
    Invalid::new(param, codes::INTEGER_ABOVE_MAX, message)
}

/// How a decimal range ends.
#[derive(Clone, Copy)]
pub(crate) enum Bound {
    Incl(f64),
    Excl(f64),
    None,
}

/// A number within `(min, max)` as the bounds say.
pub(crate) fn num_in(v: &Value, path: &Path<'_>, min: Bound, max: Bound) -> VResult<f64> {
    let f = want_number(v, path)?;
    let (low, low_op) = match min {
        Bound::Incl(m) if f < m => (Some(m), ">="),
        Bound::Excl(m) if f <= m => (Some(m), ">"),
        _ => (None, ""),
    };
    if let Some(m) = low {
        let param = path.render();
        let message = format!(
            "Invalid '{param}': decimal below minimum value. Expected a value {low_op} {m}, but got {} instead.",
            show(v)
        );
        return Err(Invalid::new(param, codes::DECIMAL_BELOW_MIN, message));
    }
    let (high, high_op) = match max {
        Bound::Incl(m) if f > m => (Some(m), "<="),
        Bound::Excl(m) if f >= m => (Some(m), "<"),
        _ => (None, ""),
    };
    if let Some(m) = high {
        let param = path.render();
        let message = format!(
            "Invalid '{param}': decimal above maximum value. Expected a value {high_op} {m}, but got {} instead.",
            show(v)
        );
        return Err(Invalid::new(param, codes::DECIMAL_ABOVE_MAX, message));
    }
    Ok(f)
}

/// One of `allowed`.
pub(crate) fn one_of<'v>(v: &'v Value, path: &Path<'_>, allowed: &[&str]) -> VResult<&'v str> {
    let s = want_str(v, path)?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(crate::request::invalid::bad_enum(path, allowed, v))
    }
}

/// A string of at most `max` characters (OpenAI counts characters, not bytes).
pub(crate) fn str_max_chars<'v>(v: &'v Value, path: &Path<'_>, max: usize) -> VResult<&'v str> {
    let s = want_str(v, path)?;
    // Byte length bounds the character count from above: skip the count when it fits.
    if s.len() > max {
        let n = s.chars().count();
        if n > max {
            return Err(too_long_string(path, max, n));
        }
    }
    Ok(s)
}

pub(crate) fn too_long_string(path: &Path<'_>, max: usize, got: usize) -> Invalid {
    let param = path.render();
    let message = format!(
        "Invalid '{param}': string too long. Expected a string with at most {max} characters, but got {got} characters instead."
    );
    Invalid::new(param, codes::STRING_ABOVE_MAX_LENGTH, message)
}

pub(crate) fn non_empty_str<'v>(v: &'v Value, path: &Path<'_>) -> VResult<&'v str> {
    let s = want_str(v, path)?;
    if s.is_empty() {
        return Err(empty_string(path));
    }
    Ok(s)
}

pub(crate) fn empty_string(path: &Path<'_>) -> Invalid {
    let param = path.render();
    let message =
        format!("Invalid '{param}': empty string. Expected a string with at least 1 character.");
    Invalid::new(param, codes::EMPTY_STRING, message)
}

pub(crate) fn empty_array(path: &Path<'_>) -> Invalid {
    let param = path.render();
    let message = format!(
        "Invalid '{param}': empty array. Expected an array with at least 1 item, but got an empty array instead."
    );
    Invalid::new(param, codes::EMPTY_ARRAY, message)
}

pub(crate) fn too_long_array(path: &Path<'_>, max: usize, got: usize) -> Invalid {
    let param = path.render();
    let message = format!(
        "Invalid '{param}': array too long. Expected an array with at most {max} items, but got {got} items instead."
    );
    Invalid::new(param, codes::ARRAY_ABOVE_MAX_LENGTH, message)
}

/// An array with `min..=max` items.
pub(crate) fn array_len<'v>(
    v: &'v Value,
    path: &Path<'_>,
    min: usize,
    max: usize,
) -> VResult<&'v [Value]> {
    let a = want_array(v, path)?;
    if a.len() < min {
        return Err(empty_array(path));
    }
    if a.len() > max {
        return Err(too_long_array(path, max, a.len()));
    }
    Ok(a)
}

/// The first key of `obj` not in `allowed` is an `unknown_parameter`. Typed objects (a
/// message, a part, a tool …) are closed in OpenAI's schema; only the top level is open.
pub(crate) fn only_keys(obj: &Map<String, Value>, path: &Path<'_>, allowed: &[&str]) -> VResult {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(unknown(&path.key(k)));
        }
    }
    Ok(())
}

/// A required key: absent is `missing_required_parameter`.
pub(crate) fn required<'v>(
    obj: &'v Map<String, Value>,
    path: &Path<'_>,
    key: &str,
) -> VResult<&'v Value> {
    obj.get(key)
        .ok_or_else(|| crate::request::invalid::missing(&path.key(key)))
}

/// An optional key that may also be `null` (= unset).
pub(crate) fn opt<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// An array of integers in `[min, max]`, each error at its index.
pub(crate) fn int_array(v: &Value, path: &Path<'_>, min: i128, max: i128) -> VResult<usize> {
    let a = want_array(v, path)?;
    for (i, item) in a.iter().enumerate() {
        int_in(item, &path.index(i), min, max)?;
    }
    Ok(a.len())
}

/// OpenAI's function-name rule: `^[a-zA-Z0-9_-]{1,64}$` (chat-completions.md §1.2).
pub(crate) fn is_function_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_follow_json_schema_so_integral_decimals_count() {
        let p = Path::ROOT;
        assert_eq!(want_integer(&json!(3), &p).ok(), Some(3));
        assert_eq!(want_integer(&json!(3.0), &p).ok(), Some(3));
        assert!(want_integer(&json!(3.5), &p).is_err());
        assert!(want_integer(&json!("3"), &p).is_err());
        assert_eq!(
            want_integer(&json!(u64::MAX), &p).ok(),
            Some(i128::from(u64::MAX))
        );
        // Beyond u64 serde_json keeps an f64; it saturates and then fails ranges.
        let huge: Value = serde_json::from_str("1e300").unwrap_or(Value::Null);
        assert_eq!(want_integer(&huge, &p).ok(), Some(i128::MAX));
        // Just below i64::MIN: the f64 rounds onto i64::MIN, yet the value is
        // out of i64 range (vLLM's seed, priority...).
        let below: Value = serde_json::from_str("-9223372036854775809").unwrap_or(Value::Null);
        assert!(int_in(&below, &p, i128::from(i64::MIN), 0).is_err());
        assert_eq!(
            want_integer(&json!(i64::MIN), &p).ok(),
            Some(i128::from(i64::MIN))
        );
    }

    #[test]
    fn decimal_bounds_report_the_right_code() {
        let p = Path::ROOT;
        let t = p.key("top_p");
        let e = num_in(&json!(0), &t, Bound::Excl(0.0), Bound::Incl(1.0)).unwrap_err();
        assert_eq!(e.code, codes::DECIMAL_BELOW_MIN);
        assert_eq!(e.param, "top_p");
        let e = num_in(&json!(1.5), &t, Bound::Excl(0.0), Bound::Incl(1.0)).unwrap_err();
        assert_eq!(e.code, codes::DECIMAL_ABOVE_MAX);
        assert!(num_in(&json!(1), &t, Bound::Excl(0.0), Bound::Incl(1.0)).is_ok());
    }

    #[test]
    fn function_names_follow_the_openai_pattern() {
        assert!(is_function_name("get_weather-2"));
        assert!(is_function_name(&"a".repeat(64)));
        assert!(!is_function_name(&"a".repeat(65)));
        assert!(!is_function_name(""));
        assert!(!is_function_name("a.b"));
        assert!(!is_function_name("é"));
    }

    #[test]
    fn string_length_counts_characters_not_bytes() {
        let p = Path::ROOT;
        assert!(str_max_chars(&json!("é".repeat(64)), &p, 64).is_ok());
        assert!(str_max_chars(&json!("é".repeat(65)), &p, 64).is_err());
    }
}
