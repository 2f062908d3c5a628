//! Edit top-level members of a JSON object body by splicing bytes: the members named by a
//! plan are replaced, inserted or removed, and every other byte (key order, whitespace,
//! number spelling, escapes, unknown fields) stays exactly as the client sent it.
//!
//! The scanner assumes nothing beyond what it checks: it finds member spans (strings with
//! escapes, nested containers; long strings skipped with `memchr`) and answers `SpliceError` on input it cannot
//! follow, never a panic. In the gateway the body has already passed `parse_body`, so an
//! error here means a bug, not a client mistake.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use memchr::memchr2;

use crate::request::LimitField;

/// Edits to apply to a chat body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewritePlan {
    /// Write this field with this value and remove the other limit field.
    pub limit: Option<(LimitField, u64)>,
    /// Make `stream_options.include_usage` true (creating `stream_options` if needed).
    /// Only meaningful for `stream: true` requests: vLLM refuses `stream_options`
    /// otherwise (vllm.md §2).
    pub include_usage: bool,
}

impl RewritePlan {
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && !self.include_usage
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    #[error("malformed JSON at byte {offset}")]
    Malformed { offset: usize },
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("duplicate key '{0}'")]
    DuplicateKey(String),
}

/// One `"key": value` member, as byte ranges into the scanned buffer. `key` includes its
/// quotes; `value` is the value's own bytes without surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// The members of one object and where it opens and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpans {
    /// Offset of `{`.
    pub open: usize,
    /// Offset of `}`.
    pub close: usize,
    pub members: Vec<Member>,
}

/// Scan the top-level object of a body (leading and trailing JSON whitespace allowed).
pub fn top_level_members(body: &[u8]) -> Result<ObjectSpans, SpliceError> {
    let start = skip_ws(body, 0);
    if body.get(start) != Some(&b'{') {
        return Err(SpliceError::NotAnObject);
    }
    let spans = scan_object(body, start)?;
    let end = skip_ws(body, spans.close + 1);
    if end != body.len() {
        return Err(SpliceError::Malformed { offset: end });
    }
    Ok(spans)
}

/// Scan the object whose `{` is at `open`.
pub fn scan_object(b: &[u8], open: usize) -> Result<ObjectSpans, SpliceError> {
    if b.get(open) != Some(&b'{') {
        return Err(SpliceError::Malformed { offset: open });
    }
    let mut members = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(ObjectSpans {
            open,
            close: i,
            members,
        });
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(SpliceError::Malformed { offset: i });
        }
        let key_end = scan_string(b, i)?;
        let colon = skip_ws(b, key_end);
        if b.get(colon) != Some(&b':') {
            return Err(SpliceError::Malformed { offset: colon });
        }
        let vstart = skip_ws(b, colon + 1);
        let vend = scan_value(b, vstart)?;
        members.push(Member {
            key: i..key_end,
            value: vstart..vend,
        });
        let next = skip_ws(b, vend);
        match b.get(next) {
            Some(b',') => i = skip_ws(b, next + 1),
            Some(b'}') => {
                return Ok(ObjectSpans {
                    open,
                    close: next,
                    members,
                })
            }
            _ => return Err(SpliceError::Malformed { offset: next }),
        }
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| is_ws(*c)) {
        i += 1;
    }
    i
}

/// `b[start]` is `"`; returns the offset just past the closing quote.
fn scan_string(b: &[u8], start: usize) -> Result<usize, SpliceError> {
    let mut i = start + 1;
    loop {
        let Some(at) = find_quote_or_backslash(b, i) else {
            return Err(SpliceError::Malformed { offset: b.len() });
        };
        if b.get(at) == Some(&b'\\') {
            i = at + 2;
        } else {
            return Ok(at + 1);
        }
    }
}

/// The first `"` or `\` at or after `from`. Most strings in a chat body are short (keys,
/// roles, ids), where a `memchr2` call costs more than the search; so the first 64 bytes
/// are searched 8 at a time in a register, and only longer strings go to `memchr2`.
#[inline]
fn find_quote_or_backslash(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Bytes of `w` equal to `c` get their high bit set in the result (the lowest one is
    // exact; bits above it may be spurious, which `trailing_zeros` ignores).
    let has = |w: u64, c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut i = from;
    let short_end = from.saturating_add(64).min(b.len());
    while let Some(chunk) = b.get(i..i + 8).filter(|_| i + 8 <= short_end) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        let hits = has(w, b'"') | has(w, b'\\');
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < short_end {
        if matches!(b.get(i), Some(b'"' | b'\\')) {
            return Some(i);
        }
        i += 1;
    }
    memchr2(b'"', b'\\', b.get(i..)?).map(|k| i + k)
}

/// Returns the offset just past the value starting at `start`.
fn scan_value(b: &[u8], start: usize) -> Result<usize, SpliceError> {
    match b.get(start) {
        Some(b'"') => scan_string(b, start),
        Some(b'{') => scan_container(b, start, b'{', b'}'),
        Some(b'[') => scan_container(b, start, b'[', b']'),
        Some(_) => {
            let mut i = start;
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !is_ws(*c))
            {
                i += 1;
            }
            Ok(i)
        }
        None => Err(SpliceError::Malformed { offset: start }),
    }
}

/// Brackets of one kind nest properly in valid JSON once strings are skipped, so counting
/// only the container's own kind finds its end. Outside strings a chat body is mostly
/// short punctuation runs, walked byte by byte; strings are skipped whole.
fn scan_container(b: &[u8], start: usize, open: u8, close: u8) -> Result<usize, SpliceError> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&c) = b.get(i) {
        if c == b'"' {
            i = scan_string(b, i)?;
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Ok(i + 1);
            }
        }
        i += 1;
    }
    Err(SpliceError::Malformed { offset: b.len() })
}

/// Does the member's raw key (with quotes) spell `name`? Escaped keys are decoded first, so
/// `"max\u005ftokens"` is found as `max_tokens`: a key the validator saw must be the key
/// the splice edits.
fn key_is(b: &[u8], key: &Range<usize>, name: &str) -> bool {
    let Some(raw) = b.get(key.clone()) else {
        return false;
    };
    let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
    if !inner.contains(&b'\\') {
        return inner == name.as_bytes();
    }
    serde_json::from_slice::<String>(raw).is_ok_and(|k| k == name)
}

enum Op {
    /// Set the member to these raw value bytes (insert at the end when absent).
    Set(Vec<u8>),
    Remove,
}

/// Apply `ops` to the object `spans` found in `src`, keeping bytes `range` around it.
/// `None` when nothing would change.
fn edit_object(
    src: &[u8],
    range: Range<usize>,
    spans: &ObjectSpans,
    ops: &[(&str, Op)],
) -> Result<Option<Vec<u8>>, SpliceError> {
    enum Fate<'o> {
        Keep,
        Replace(&'o [u8]),
        Drop,
    }
    let mut fates: Vec<Fate<'_>> = spans.members.iter().map(|_| Fate::Keep).collect();
    let mut inserts: Vec<(&str, &[u8])> = Vec::new();
    let mut changed = false;
    for (name, op) in ops {
        let mut found = None;
        for (idx, m) in spans.members.iter().enumerate() {
            if key_is(src, &m.key, name) {
                if found.is_some() {
                    return Err(SpliceError::DuplicateKey((*name).to_owned()));
                }
                found = Some(idx);
            }
        }
        match (found, op) {
            (Some(idx), Op::Set(bytes)) => {
                let m = spans.members.get(idx);
                let current = m.and_then(|m| src.get(m.value.clone()));
                if current != Some(bytes.as_slice()) {
                    if let Some(f) = fates.get_mut(idx) {
                        *f = Fate::Replace(bytes);
                        changed = true;
                    }
                }
            }
            (Some(idx), Op::Remove) => {
                if let Some(f) = fates.get_mut(idx) {
                    *f = Fate::Drop;
                    changed = true;
                }
            }
            (None, Op::Set(bytes)) => {
                inserts.push((name, bytes));
                changed = true;
            }
            (None, Op::Remove) => {}
        }
    }
    if !changed {
        return Ok(None);
    }

    let slice = |r: Range<usize>| src.get(r).ok_or(SpliceError::Malformed { offset: 0 });
    let mut out = Vec::with_capacity(range.len() + 64);
    let (head_end, tail_start) = match (spans.members.first(), spans.members.last()) {
        (Some(first), Some(last)) => (first.key.start, last.value.end),
        _ => (spans.close, spans.close),
    };
    out.extend_from_slice(slice(range.start..head_end)?);
    let kept: Vec<usize> = fates
        .iter()
        .enumerate()
        .filter(|(_, f)| !matches!(f, Fate::Drop))
        .map(|(i, _)| i)
        .collect();
    for (n, &idx) in kept.iter().enumerate() {
        let (Some(m), Some(fate)) = (spans.members.get(idx), fates.get(idx)) else {
            continue;
        };
        match fate {
            Fate::Replace(bytes) => {
                out.extend_from_slice(slice(m.key.start..m.value.start)?);
                out.extend_from_slice(bytes);
            }
            _ => out.extend_from_slice(slice(m.key.start..m.value.end)?),
        }
        // The separator that followed this member in the original (comma and whitespace),
        // when another kept member follows.
        if n + 1 < kept.len() {
            if let Some(next) = spans.members.get(idx + 1) {
                out.extend_from_slice(slice(m.value.end..next.key.start)?);
            }
        }
    }
    let mut any = !kept.is_empty();
    for (name, bytes) in inserts {
        if any {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(bytes);
        any = true;
    }
    out.extend_from_slice(slice(tail_start..range.end)?);
    Ok(Some(out))
}

/// Apply `plan` to `original`. Returns the original slice when nothing changes.
pub fn rewrite_body<'a>(
    original: &'a [u8],
    plan: &RewritePlan,
) -> Result<Cow<'a, [u8]>, SpliceError> {
    if plan.is_empty() {
        return Ok(Cow::Borrowed(original));
    }
    let spans = top_level_members(original)?;
    let mut ops: Vec<(&str, Op)> = Vec::with_capacity(3);
    if let Some((field, limit)) = plan.limit {
        ops.push((field.as_str(), Op::Set(limit.to_string().into_bytes())));
        ops.push((field.other().as_str(), Op::Remove));
    }
    if plan.include_usage {
        if let Some(bytes) = stream_options_with_usage(original, &spans)? {
            ops.push(("stream_options", Op::Set(bytes)));
        }
    }
    match edit_object(original, 0..original.len(), &spans, &ops)? {
        Some(out) => Ok(Cow::Owned(out)),
        None => Ok(Cow::Borrowed(original)),
    }
}

/// `rewrite_body` for `Bytes`: an unchanged body is the same buffer (a refcount bump).
pub fn rewrite_bytes(original: &Bytes, plan: &RewritePlan) -> Result<Bytes, SpliceError> {
    match rewrite_body(original, plan)? {
        Cow::Borrowed(_) => Ok(original.clone()),
        Cow::Owned(v) => Ok(Bytes::from(v)),
    }
}

/// The new `stream_options` value with `include_usage: true`, or `None` if it already is.
fn stream_options_with_usage(
    src: &[u8],
    spans: &ObjectSpans,
) -> Result<Option<Vec<u8>>, SpliceError> {
    const FRESH: &[u8] = br#"{"include_usage":true}"#;
    let mut found = None;
    for m in &spans.members {
        if key_is(src, &m.key, "stream_options") {
            if found.is_some() {
                return Err(SpliceError::DuplicateKey("stream_options".to_owned()));
            }
            found = Some(m);
        }
    }
    let Some(m) = found else {
        return Ok(Some(FRESH.to_vec()));
    };
    match src.get(m.value.start) {
        Some(b'{') => {
            let inner = scan_object(src, m.value.start)?;
            let ops = [("include_usage", Op::Set(b"true".to_vec()))];
            edit_object(src, m.value.clone(), &inner, &ops)
        }
        // `null` (or anything else validation would have refused): replace it whole.
        _ => Ok(Some(FRESH.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn plan(field: LimitField, n: u64) -> RewritePlan {
        RewritePlan {
            limit: Some((field, n)),
            include_usage: false,
        }
    }

    fn rewrite(body: &str, p: &RewritePlan) -> String {
        String::from_utf8(rewrite_body(body.as_bytes(), p).unwrap().into_owned()).unwrap()
    }

    #[test]
    fn members_are_found_through_strings_escapes_and_nesting() {
        let body = br#" { "a" : "x\"}{[" , "b":{"c":[1,{"d":"]}"}]},"e":-1.5e3 ,"f":[] } "#;
        let s = top_level_members(body).unwrap();
        let keys: Vec<&[u8]> = s.members.iter().map(|m| &body[m.key.clone()]).collect();
        assert_eq!(keys, [&b"\"a\""[..], b"\"b\"", b"\"e\"", b"\"f\""]);
        let vals: Vec<&[u8]> = s.members.iter().map(|m| &body[m.value.clone()]).collect();
        assert_eq!(
            vals,
            [
                &br#""x\"}{[""#[..],
                br#"{"c":[1,{"d":"]}"}]}"#,
                b"-1.5e3",
                b"[]"
            ]
        );
    }

    #[test]
    fn the_fast_string_search_agrees_with_a_naive_one() {
        for len in 0..150 {
            for hit in 0..=len {
                for special in [b'"', b'\\'] {
                    let mut buf = vec![b'a'; len];
                    if hit < len {
                        buf[hit] = special;
                        // A high byte and a near-miss just before must not confuse the search.
                        if hit > 0 {
                            buf[hit - 1] = 0xe9;
                        }
                    }
                    for from in [0, 1, 7, 9].into_iter().filter(|f| *f <= len) {
                        let naive = buf
                            .iter()
                            .skip(from)
                            .position(|c| *c == b'"' || *c == b'\\')
                            .map(|k| k + from);
                        assert_eq!(
                            find_quote_or_backslash(&buf, from),
                            naive,
                            "{len} {hit} {from}"
                        );
                    }
                }
            }
        }
        assert_eq!(find_quote_or_backslash(b"abc", 10), None);
    }

    #[test]
    fn an_existing_value_is_replaced_in_place() {
        let p = plan(LimitField::MaxTokens, 100);
        assert_eq!(
            rewrite(r#"{"model":"m", "max_tokens" : 5000 ,"x":1}"#, &p),
            r#"{"model":"m", "max_tokens" : 100 ,"x":1}"#
        );
    }

    #[test]
    fn a_missing_field_is_appended_and_the_other_removed() {
        let p = plan(LimitField::MaxTokens, 64);
        assert_eq!(rewrite(r#"{"a":1}"#, &p), r#"{"a":1,"max_tokens":64}"#);
        assert_eq!(rewrite("{ }", &p), r#"{ "max_tokens":64}"#);
        assert_eq!(
            rewrite(r#"{"max_completion_tokens":9}"#, &p),
            r#"{"max_tokens":64}"#
        );
        assert_eq!(
            rewrite("{\"a\":1,\n \"max_completion_tokens\": 9\n}\n", &p),
            "{\"a\":1,\"max_tokens\":64\n}\n"
        );
        assert_eq!(
            rewrite(r#"{"max_completion_tokens":9, "a":1}"#, &p),
            r#"{"a":1,"max_tokens":64}"#
        );
        assert_eq!(
            rewrite(r#"{"a":1, "max_completion_tokens":9, "b":2}"#, &p),
            r#"{"a":1, "b":2,"max_tokens":64}"#
        );
    }

    #[test]
    fn an_unchanged_body_is_borrowed() {
        let body = br#"{"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}"#;
        let p = RewritePlan {
            limit: Some((LimitField::MaxTokens, 64)),
            include_usage: true,
        };
        assert!(matches!(rewrite_body(body, &p).unwrap(), Cow::Borrowed(_)));
        assert!(matches!(
            rewrite_body(b"not even json", &RewritePlan::default()).unwrap(),
            Cow::Borrowed(_)
        ));
        let bytes = Bytes::from_static(body);
        let out = rewrite_bytes(&bytes, &p).unwrap();
        assert_eq!(out.as_ptr(), bytes.as_ptr());
    }

    #[test]
    fn escaped_keys_are_matched_by_their_decoded_name() {
        let p = plan(LimitField::MaxTokens, 10);
        assert_eq!(
            rewrite(r#"{"max\u005ftokens":99999}"#, &p),
            r#"{"max\u005ftokens":10}"#
        );
    }

    #[test]
    fn duplicate_keys_are_refused_not_guessed() {
        let p = plan(LimitField::MaxTokens, 10);
        assert_eq!(
            rewrite_body(br#"{"max_tokens":1,"max_tokens":2}"#, &p).unwrap_err(),
            SpliceError::DuplicateKey("max_tokens".into())
        );
    }

    #[test]
    fn include_usage_is_set_inside_or_created() {
        let p = RewritePlan {
            limit: None,
            include_usage: true,
        };
        assert_eq!(
            rewrite(r#"{"stream":true}"#, &p),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(r#"{"stream":true,"stream_options":null}"#, &p),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(
                r#"{"stream_options": { "include_usage": false , "x":1 }}"#,
                &p
            ),
            r#"{"stream_options": { "include_usage": true , "x":1 }}"#
        );
        assert_eq!(
            rewrite(r#"{"stream_options": {"continuous_usage_stats":true}}"#, &p),
            r#"{"stream_options": {"continuous_usage_stats":true,"include_usage":true}}"#
        );
        assert_eq!(
            rewrite(r#"{"stream_options": {}}"#, &p),
            r#"{"stream_options": {"include_usage":true}}"#
        );
    }

    #[test]
    fn both_edits_at_once_keep_the_json_valid() {
        let p = RewritePlan {
            limit: Some((LimitField::MaxCompletionTokens, 7)),
            include_usage: true,
        };
        let out = rewrite(r#"{"max_tokens":100}"#, &p);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"max_completion_tokens":7,"stream_options":{"include_usage":true}})
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let p = plan(LimitField::MaxTokens, 1);
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1,}",
            b"{\"a\":\"x",
            b"{\"a\":{\"b\":[}",
            b"{\"a\" 1}",
            b"{\"a\":1} x",
            b"{\"\\",
            b"{1:2}",
        ] {
            assert!(
                rewrite_body(bad, &p).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
