//! The pure request layer: parse a chat-completions body once, validate every field of it,
//! and compute the max-token rewrite as a byte splice over the original body.
//!
//! Nothing here does I/O or awaits: every function is a plain function of its inputs, so it
//! can be unit-tested, fuzzed and benchmarked alone. The proxy calls, in order:
//!
//! 1. [`parse_body`]: bytes -> `serde_json::Value` (duplicate keys, depth, UTF-8 refused);
//! 2. [`validate_chat`]: `Value` -> [`ChatFacts`] or [`Invalid`] (400 with the exact `param`);
//! 3. [`tokens::upper_bound`] / [`tokens::estimate`]: prompt-size figures from the facts;
//! 4. [`resolve_limit`]: the output limit to enforce, or the 400 to send;
//! 5. [`rewrite_body`]: the new body, every byte but the edited members as received.

mod facts;
pub mod invalid;
pub mod limits;
pub mod parse;
pub mod splice;
pub mod tokens;
mod validate;

pub use facts::ChatFacts;
pub use invalid::{codes, Invalid};
pub use limits::{
    resolve_limit, ClampReason, LimitDecision, LimitError, LimitField, LimitPolicy, LimitSource,
    OnExceed,
};
pub use parse::{parse_body, BodyError, BodyErrorKind, JsonLimits};
pub use splice::{rewrite_body, rewrite_bytes, RewritePlan, SpliceError};
pub use validate::{validate_chat, ValidationPolicy};
