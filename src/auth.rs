//! API keys: who is calling.
//!
//! Keys are never stored or compared as plain text: the table holds SHA-256
//! digests, the presented key is hashed and looked up by its digest, and the
//! final comparison of digests is constant-time. A key's configured `name`
//! is the only thing that reaches logs, metrics and limits.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ratelimit::KeyLimiter;

/// A configured key (what the gateway knows of it: never the key itself).
#[derive(Debug)]
pub struct ApiKey {
    pub name: Arc<str>,
    /// Models this key may use; `None` = all.
    pub models: Option<Vec<String>>,
    pub limiter: Arc<KeyLimiter>,
}

impl ApiKey {
    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

/// All configured keys, by digest.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: foldhash::HashMap<[u8; 32], Arc<ApiKey>>,
}

/// The outcome of authenticating a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No keys are configured: the gateway is open.
    Anonymous,
    Key(Arc<ApiKey>),
}

impl Caller {
    /// Label for logs and metrics.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "-",
            Caller::Key(k) => &k.name,
        }
    }

    pub fn key(&self) -> Option<&Arc<ApiKey>> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(k),
        }
    }
}

/// Why authentication failed (never says which keys exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
}

pub fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl KeyTable {
    pub fn new(keys: impl IntoIterator<Item = ([u8; 32], Arc<ApiKey>)>) -> KeyTable {
        KeyTable {
            by_digest: keys.into_iter().collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.by_digest.values()
    }

    /// Authenticate the key presented in `authorization` (`Bearer <key>`) or
    /// `api-key` (Azure-style clients).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
    ) -> Result<Caller, AuthFailure> {
        if self.is_open() {
            return Ok(Caller::Anonymous);
        }
        let presented = authorization
            .and_then(bearer_token)
            .or(api_key.map(trim))
            .filter(|k| !k.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let d = digest(presented);
        match self.by_digest.get_key_value(&d) {
            // The map found the digest; confirm it without a short-circuiting
            // comparison, so no timing depends on how much of it matched.
            Some((stored, key)) if bool::from(stored.ct_eq(&d)) => Ok(Caller::Key(Arc::clone(key))),
            _ => Err(AuthFailure::Invalid),
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let h = trim(header);
    if h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer ") {
        Some(trim(&h[7..]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{KeyLimiter, Quotas};

    fn table() -> KeyTable {
        let key = |name: &str, models: Option<Vec<String>>| {
            Arc::new(ApiKey {
                name: Arc::from(name),
                models,
                limiter: Arc::new(KeyLimiter::new(name, Quotas::default())),
            })
        };
        KeyTable::new([
            (digest(b"sk-alpha"), key("alpha", None)),
            (digest(b"sk-beta"), key("beta", Some(vec!["m1".into()]))),
        ])
    }

    #[test]
    fn bearer_and_api_key_headers() {
        let t = table();
        let c = t.authenticate(Some(b"Bearer sk-alpha"), None).unwrap();
        assert_eq!(c.name(), "alpha");
        let c = t.authenticate(Some(b"bearer   sk-beta "), None).unwrap();
        assert_eq!(c.name(), "beta");
        let c = t.authenticate(None, Some(b"sk-alpha")).unwrap();
        assert_eq!(c.name(), "alpha");
    }

    #[test]
    fn missing_and_wrong_keys() {
        let t = table();
        assert_eq!(
            t.authenticate(None, None).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            t.authenticate(Some(b"Basic xyz"), None).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            t.authenticate(Some(b"Bearer "), None).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            t.authenticate(Some(b"Bearer sk-gamma"), None).unwrap_err(),
            AuthFailure::Invalid
        );
        assert_eq!(
            t.authenticate(Some(b"Bearer sk-alph"), None).unwrap_err(),
            AuthFailure::Invalid
        );
    }

    #[test]
    fn open_without_keys_and_allow_lists() {
        assert!(matches!(
            KeyTable::default().authenticate(None, None),
            Ok(Caller::Anonymous)
        ));
        let t = table();
        let beta = t.authenticate(None, Some(b"sk-beta")).unwrap();
        assert!(beta.key().unwrap().may_use("m1"));
        assert!(!beta.key().unwrap().may_use("m2"));
    }
}
