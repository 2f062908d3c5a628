//! Spec-shaped chat requests (../shared/reference/chat-completions.md) as
//! proptest strategies, and a deliberately irregular JSON writer, shared by
//! the pure property tests and the live-gateway ones.
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{json, Map, Value};

pub fn text() -> impl Strategy<Value = String> {
    // Quotes, backslashes, slashes, newlines and non-ASCII exercise every escape path.
    "[a-zA-Z0-9 .,!?'\"\\\\/\\né中😀]{0,24}"
}

pub fn fn_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,64}"
}

pub fn text_part() -> impl Strategy<Value = Value> {
    text().prop_map(|t| json!({"type": "text", "text": t}))
}

pub fn text_parts() -> impl Strategy<Value = Value> {
    prop::collection::vec(text_part(), 1..4).prop_map(Value::Array)
}

pub fn user_part() -> impl Strategy<Value = Value> {
    prop_oneof![
        text_part(),
        (text(), prop::option::of(prop_oneof!["auto", "low", "high"])).prop_map(|(u, d)| {
            let mut img = json!({"url": format!("https://example.com/{}.png", u.len())});
            if let Some(d) = d {
                img["detail"] = json!(d);
            }
            json!({"type": "image_url", "image_url": img})
        }),
        prop_oneof!["wav", "mp3"].prop_map(
            |f| json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": f}})
        ),
        Just(json!({"type": "file", "file": {"file_id": "file-abc", "filename": "a.pdf"}})),
    ]
}

pub fn tool_call() -> impl Strategy<Value = Value> {
    (fn_name(), text(), any::<bool>()).prop_map(|(name, args, custom)| {
        if custom {
            json!({"id": "call_c", "type": "custom", "custom": {"name": name, "input": args}})
        } else {
            json!({"id": "call_f", "type": "function", "function": {"name": name, "arguments": args}})
        }
    })
}

pub fn message() -> impl Strategy<Value = Value> {
    let string_or_parts = || prop_oneof![text().prop_map(Value::String), text_parts()];
    prop_oneof![
        (
            prop_oneof!["system", "developer"],
            string_or_parts(),
            prop::option::of(fn_name())
        )
            .prop_map(|(role, content, name)| {
                let mut m = json!({"role": role, "content": content});
                if let Some(n) = name {
                    m["name"] = json!(n);
                }
                m
            }),
        prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(user_part(), 1..4).prop_map(Value::Array)
        ]
        .prop_map(|content| json!({"role": "user", "content": content})),
        prop_oneof![
            string_or_parts().prop_map(|c| json!({"role": "assistant", "content": c})),
            text().prop_map(
                |r| json!({"role": "assistant", "content": [{"type": "refusal", "refusal": r}]})
            ),
            prop::collection::vec(tool_call(), 1..3).prop_map(
                |calls| json!({"role": "assistant", "content": null, "tool_calls": calls})
            ),
        ],
        (text(), string_or_parts())
            .prop_map(|(id, c)| json!({"role": "tool", "tool_call_id": id, "content": c})),
        (fn_name(), prop::option::of(text()))
            .prop_map(|(n, c)| json!({"role": "function", "name": n, "content": c})),
    ]
}

pub fn tool() -> impl Strategy<Value = Value> {
    (fn_name(), prop::option::of(text()), any::<bool>()).prop_map(|(name, desc, params)| {
        let mut f = json!({"name": name});
        if let Some(d) = desc {
            f["description"] = json!(d);
        }
        if params {
            f["parameters"] = json!({"type": "object", "properties": {"q": {"type": "string"}}});
        }
        json!({"type": "function", "function": f})
    })
}

/// Arbitrary JSON for unknown fields (the gateway forwards them untouched).
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Sampling and output fields, each optional and within range.
pub fn sampling() -> impl Strategy<Value = Map<String, Value>> {
    (
        (
            prop::option::of(0.0f64..=2.0),
            prop::option::of(1e-6f64..=1.0),
            prop::option::of(1u32..=128),
            prop::option::of(-2.0f64..=2.0),
            prop::option::of(-2.0f64..=2.0),
            prop::option::of(prop_oneof![
                "[a-z]{1,5}".prop_map(Value::String),
                prop::collection::vec("[a-z#]{1,5}", 1..=4).prop_map(|v| json!(v)),
            ]),
        ),
        (
            prop::option::of(prop::collection::btree_map(
                0u32..200_000,
                -100.0f64..=100.0,
                0..4,
            )),
            prop::option::of(0i64..=20),
            prop::option::of(any::<i64>()),
            prop::option::of(1u64..100_000),
            prop::option::of(1u64..100_000),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((t, p, n, pp, fp, stop), (bias, top_lp, seed, mt, mct, stream))| {
                let mut m = Map::new();
                if let Some(t) = t {
                    m.insert("temperature".into(), json!(t));
                }
                if let Some(p) = p {
                    m.insert("top_p".into(), json!(p));
                }
                // Greedy sampling allows one choice only (vllm.md §2).
                if let Some(n) = n.filter(|n| *n == 1 || t.is_none_or(|t| t >= 1e-5)) {
                    m.insert("n".into(), json!(n));
                }
                if let Some(x) = pp {
                    m.insert("presence_penalty".into(), json!(x));
                }
                if let Some(x) = fp {
                    m.insert("frequency_penalty".into(), json!(x));
                }
                if let Some(s) = stop {
                    m.insert("stop".into(), s);
                }
                if let Some(b) = bias {
                    let obj: Map<String, Value> = b
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect();
                    m.insert("logit_bias".into(), Value::Object(obj));
                }
                if let Some(k) = top_lp {
                    m.insert("logprobs".into(), json!(true));
                    m.insert("top_logprobs".into(), json!(k));
                }
                if let Some(s) = seed {
                    m.insert("seed".into(), json!(s));
                }
                if let Some(x) = mt {
                    m.insert("max_tokens".into(), json!(x));
                    m.insert("min_tokens".into(), json!(x / 2));
                }
                if let Some(x) = mct {
                    m.insert("max_completion_tokens".into(), json!(x));
                    m.insert("min_tokens".into(), json!(x.min(mt.unwrap_or(x)) / 3));
                }
                if stream {
                    m.insert("stream".into(), json!(true));
                    m.insert("stream_options".into(), json!({"include_usage": true}));
                }
                m
            },
        )
}

/// Tools, formats and vLLM extras, consistent with each other.
pub fn options() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(prop::collection::vec(tool(), 1..4)),
        0u8..4,
        0u8..4,
        prop::option::of(prop::collection::btree_map("[a-z]{1,64}", "[a-z ]{0,512}", 0..=16)),
        (
            prop::option::of(-1i64..1000),
            prop::option::of(0.0f64..=1.0),
            prop::option::of(0.01f64..10.0),
            prop::option::of(prop::collection::vec(0u32..1000, 0..5)),
            prop::option::of(prop_oneof!["none", "minimal", "low", "medium", "high", "xhigh", "max"]),
            any::<bool>(),
        ),
    )
        .prop_map(|(tools, choice, format, metadata, (top_k, min_p, rep, stop_ids, effort, so))| {
            let mut m = Map::new();
            let names: Vec<String> = tools
                .iter()
                .flatten()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
                .collect();
            if let Some(t) = tools {
                m.insert("tools".into(), Value::Array(t));
                let c = match choice {
                    0 => json!("auto"),
                    1 => json!("required"),
                    2 => json!("none"),
                    _ => json!({"type": "function", "function": {"name": names[0]}}),
                };
                m.insert("tool_choice".into(), c);
            }
            let rf = match format {
                1 => Some(json!({"type": "json_object"})),
                2 => Some(json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})),
                3 => Some(json!({"type": "text"})),
                _ => None,
            };
            let rf_constrains = matches!(format, 1 | 2);
            if let Some(rf) = rf {
                m.insert("response_format".into(), rf);
            }
            if let Some(md) = metadata {
                m.insert("metadata".into(), json!(md));
            }
            if let Some(k) = top_k {
                m.insert("top_k".into(), json!(k));
            }
            if let Some(x) = min_p {
                m.insert("min_p".into(), json!(x));
            }
            if let Some(x) = rep {
                m.insert("repetition_penalty".into(), json!(x));
            }
            if let Some(ids) = stop_ids {
                m.insert("stop_token_ids".into(), json!(ids));
            }
            if let Some(e) = effort {
                m.insert("reasoning_effort".into(), json!(e));
            }
            let named_choice = m.get("tool_choice").is_some_and(Value::is_object);
            if so && !named_choice && !rf_constrains {
                m.insert("structured_outputs".into(), json!({"regex": "[0-9]+"}));
            }
            m
        })
}

pub fn valid_request() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(message(), 1..8),
        sampling(),
        options(),
        prop::collection::btree_map("x_[a-z]{1,8}", any_json(), 0..3),
    )
        .prop_map(|(messages, s, o, unknown)| {
            let mut body = Map::new();
            body.insert("model".into(), json!("m"));
            body.insert("messages".into(), Value::Array(messages));
            body.extend(s);
            body.extend(o);
            body.extend(unknown);
            Value::Object(body)
        })
}

// ---------- a deliberately irregular serializer

/// A tiny deterministic generator for formatting choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn ws(&mut self) -> &'static str {
        ["", "", " ", "\n  ", "\t", " \r\n "][(self.next() % 6) as usize]
    }
}

/// JSON text for `v` with random whitespace, shuffled keys and needless escapes.
pub fn write_irregular(v: &Value, rng: &mut Rng, out: &mut String) {
    match v {
        Value::String(s) => write_string(s, rng, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(rng.ws());
                    out.push(',');
                }
                out.push_str(rng.ws());
                write_irregular(item, rng, out);
            }
            out.push_str(rng.ws());
            out.push(']');
        }
        Value::Object(obj) => {
            let mut keys: Vec<&String> = obj.keys().collect();
            for i in (1..keys.len()).rev() {
                keys.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(rng.ws());
                write_string(k, rng, out);
                out.push_str(rng.ws());
                out.push(':');
                out.push_str(rng.ws());
                write_irregular(&obj[*k], rng, out);
                out.push_str(rng.ws());
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub fn write_string(s: &str, rng: &mut Rng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            // Sometimes escape what needs no escaping, keys included.
            c if (c as u32) < 0x10000 && rng.next() % 7 == 0 => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            '/' if rng.next() % 2 == 0 => out.push_str("\\/"),
            c => out.push(c),
        }
    }
    out.push('"');
}

pub fn decoded_key(body: &[u8], raw: std::ops::Range<usize>) -> String {
    serde_json::from_slice(&body[raw]).expect("keys decode")
}

// ---------- properties
