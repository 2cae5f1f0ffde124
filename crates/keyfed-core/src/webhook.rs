//! Webhooks (issue 12): the bytes a delivery is signed over, which
//! notifications a hook takes, when a failed delivery is tried again, and
//! which URLs, secrets and names a hook may have. No I/O: the node sends.
use crate::event::{EventKind, UnknownName};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use thiserror::Error;

/// Unix seconds of the node's clock when the attempt was made.
pub const HEADER_TIMESTAMP: &str = "X-Keyfed-Timestamp";
/// `<node id>:<hook name>:<notification seq>`, the same on every retry.
pub const HEADER_DELIVERY: &str = "X-Keyfed-Delivery";
/// `sha256=<hex HMAC-SHA256 of signed_bytes>`.
pub const HEADER_SIGNATURE: &str = "X-Keyfed-Signature";
/// 1 for the first try of a delivery, then 2, 3, …
pub const HEADER_ATTEMPT: &str = "X-Keyfed-Attempt";
/// The notification's event name (also in the body).
pub const HEADER_EVENT: &str = "X-Keyfed-Event";
pub const SIGNATURE_PREFIX: &str = "sha256=";
/// Shorter secrets are guessable offline from one signed delivery.
pub const MIN_SECRET_BYTES: usize = 16;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_NAME_CHARS: usize = 64;

/// A hook setting that cannot work; the message names the setting.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WebhookError {
    #[error("webhook url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("webhook {name:?}: the secret {why}")]
    Secret { name: String, why: String },
    #[error("webhook name {name:?}: {why}")]
    Name { name: String, why: String },
    #[error("webhook {name:?}: events: {source}; the known events are listed in docs/api.md (Notifications)")]
    Event { name: String, source: UnknownName },
    #[error("webhook {name:?}: {why}")]
    Backoff { name: String, why: String },
}

/// What is signed: `<timestamp>.<delivery id>.<body>`, byte for byte as
/// sent. The timestamp is decimal digits, so the first `.` ends it; the
/// delivery id is also inside the signed body, so no byte can move between
/// the id and the body unnoticed.
#[must_use]
pub fn signed_bytes(timestamp: i64, delivery_id: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{timestamp}.{delivery_id}.").into_bytes();
    out.extend_from_slice(body);
    out
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts every key length")
}

/// The `X-Keyfed-Signature` value: `sha256=` and the lowercase hex
/// HMAC-SHA256 of [`signed_bytes`] under the hook's secret.
#[must_use]
pub fn signature(secret: &[u8], timestamp: i64, delivery_id: &str, body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(&signed_bytes(timestamp, delivery_id, body));
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(m.finalize().into_bytes())
    )
}

/// What a receiver checks (constant time); also used by the tests.
#[must_use]
pub fn verify(secret: &[u8], timestamp: i64, delivery_id: &str, body: &[u8], header: &str) -> bool {
    let Some(sig) = header
        .strip_prefix(SIGNATURE_PREFIX)
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut m = mac(secret);
    m.update(&signed_bytes(timestamp, delivery_id, body));
    m.verify_slice(&sig).is_ok()
}

/// One id per (node, hook, notification): retries repeat it, so a
/// receiver de-duplicates at-least-once deliveries by it.
#[must_use]
pub fn delivery_id(node_id: &str, hook: &str, seq: u64) -> String {
    format!("{node_id}:{hook}:{seq}")
}

/// The name of a hook configured without one: stable for its URL, so its
/// durable cursor survives a restart.
#[must_use]
pub fn default_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    let mut name = String::from("hook-");
    for b in &digest[..4] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

/// ASCII letters, digits and `-_`: the name is a metric label, a store
/// key and part of the delivery id (whose `:` separates it).
pub fn validate_name(name: &str) -> Result<(), WebhookError> {
    let bad = |why: &str| WebhookError::Name {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(bad(&format!("must be 1 to {MAX_NAME_CHARS} characters")));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad("may hold only ASCII letters, digits, '-' and '_'"));
    }
    Ok(())
}

pub fn validate_secret(name: &str, secret: &[u8]) -> Result<(), WebhookError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(WebhookError::Secret {
            name: name.to_owned(),
            why: format!(
                "is {} bytes; it must be at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        });
    }
    Ok(())
}

/// Where a hook posts, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// A DNS name or IP address (IPv6 without the brackets).
    pub host: String,
    pub port: u16,
    /// What follows the authority, `/` when the URL has none.
    pub path_and_query: String,
    /// The `Host` header: the authority as written.
    pub authority: String,
}

/// `http://` or `https://`, a host, an optional port, a path and query; no
/// credentials (the secret signs, it is never sent), no fragment, nothing
/// but printable ASCII.
pub fn parse_url(url: &str) -> Result<Target, WebhookError> {
    let bad = |why: &str| WebhookError::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    if url.len() > MAX_URL_CHARS {
        return Err(bad(&format!("is longer than {MAX_URL_CHARS} characters")));
    }
    if !url.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad(
            "may hold only printable ASCII without spaces (percent-encode the rest)",
        ));
    }
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    if rest.contains('#') {
        return Err(bad("has a fragment (#...), which is never sent"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad(
            "holds credentials; the secret signs each delivery instead",
        ));
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an IPv6 address without its closing ]"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("has port {p:?}, not a number from 1 to 65535")))?,
    };
    let path_and_query = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok(Target {
        https,
        host: host.to_owned(),
        port,
        path_and_query,
        authority: authority.to_owned(),
    })
}

/// The events a hook takes; none named: every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter(BTreeSet<EventKind>);

impl EventFilter {
    /// Every name must be a known event (a typo would silently deliver nothing).
    pub fn parse(names: &[String]) -> Result<Self, UnknownName> {
        names
            .iter()
            .map(|n| n.parse::<EventKind>())
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// A stored event name this release does not know is taken only by a
    /// hook that takes every event.
    #[must_use]
    pub fn matches(&self, event: &str) -> bool {
        self.0.is_empty()
            || event
                .parse::<EventKind>()
                .is_ok_and(|e| self.0.contains(&e))
    }

    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|e| e.as_str().to_owned()).collect()
    }
}

/// When a failed delivery is tried again: `initial`, doubled per failed
/// attempt, never more than `max`, less up to a quarter of jitter chosen by
/// a seed (the same seed gives the same schedule, so tests and simulations
/// replay; different hooks spread their retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(name: &str, initial: Duration, max: Duration) -> Result<Self, WebhookError> {
        if initial.is_zero() || max < initial {
            return Err(WebhookError::Backoff {
                name: name.to_owned(),
                why: format!(
                    "initial_backoff_millis ({}) must be above 0 and at most max_backoff_millis ({})",
                    initial.as_millis(),
                    max.as_millis()
                ),
            });
        }
        Ok(Self { initial, max })
    }

    /// The wait after failed attempt number `attempt` (1 = the first try failed).
    #[must_use]
    pub fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        // splitmix64 of (seed, attempt): a fraction 0..1/4 taken off
        let mut z = seed ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let quarter_parts = u32::try_from(z % 256).expect("below 256");
        base - base / 4 * quarter_parts / 256
    }
}

/// A seed for [`Backoff::delay`] from a delivery id.
#[must_use]
pub fn jitter_seed(delivery_id: &str) -> u64 {
    let d = Sha256::digest(delivery_id.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        let mut m = mac(b"Jefe");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_is_over_timestamp_delivery_id_and_body() {
        let body = br#"{"delivery_id":"main:ops:7"}"#;
        assert_eq!(
            signed_bytes(1_700_000_000, "main:ops:7", body),
            br#"1700000000.main:ops:7.{"delivery_id":"main:ops:7"}"#.to_vec()
        );
        // known answer, computed independently with Python's hmac module
        let sig = signature(b"0123456789abcdef", 1_700_000_000, "main:ops:7", body);
        assert_eq!(
            sig,
            "sha256=2cec3b017fa2c29671f2d7e97baf481c983bd8f272375e79fdc63dfdb7b8b347"
        );
        assert!(verify(
            b"0123456789abcdef",
            1_700_000_000,
            "main:ops:7",
            body,
            &sig
        ));
        // each signed part matters
        assert!(!verify(
            b"0123456789abcdeF",
            1_700_000_000,
            "main:ops:7",
            body,
            &sig
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_001,
            "main:ops:7",
            body,
            &sig
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_000,
            "main:ops:8",
            body,
            &sig
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_000,
            "main:ops:7",
            b"{}",
            &sig
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_000,
            "main:ops:7",
            body,
            &sig[7..]
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_000,
            "main:ops:7",
            body,
            "sha256=zz"
        ));
    }

    #[test]
    fn delivery_ids_and_default_names_are_stable() {
        assert_eq!(delivery_id("main", "ops", 42), "main:ops:42");
        let a = default_name("https://ops.example/hook");
        assert_eq!(a, default_name("https://ops.example/hook"));
        assert_ne!(a, default_name("https://ops.example/other"));
        assert!(a.starts_with("hook-") && a.len() == 13);
        assert!(validate_name(&a).is_ok());
    }

    #[test]
    fn urls_are_parsed_or_refused_with_the_reason() {
        let t = parse_url("http://127.0.0.1:8080/in?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path_and_query.as_str()),
            (false, "127.0.0.1", 8080, "/in?x=1")
        );
        let t = parse_url("https://hooks.example").unwrap();
        assert_eq!(
            (t.https, t.port, t.path_and_query.as_str()),
            (true, 443, "/")
        );
        assert_eq!(t.authority, "hooks.example");
        let t = parse_url("http://[::1]:9/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(parse_url("http://h?q").unwrap().path_and_query, "/?q");
        for (url, why) in [
            ("ftp://h/", "must start with http"),
            ("http:///x", "no host"),
            ("http://u:p@h/", "credentials"),
            ("http://h:0/", "port"),
            ("http://h:99999/", "port"),
            ("http://h/a b", "printable ASCII"),
            ("http://h/#frag", "fragment"),
            ("http://[::1/", "closing ]"),
        ] {
            let e = parse_url(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn names_and_secrets_are_checked() {
        assert!(validate_name("ops_pager-1").is_ok());
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_secret("ops", b"0123456789abcdef").is_ok());
        let e = validate_secret("ops", b"short").unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn an_empty_filter_takes_every_event_and_unknown_names_are_refused() {
        let all = EventFilter::parse(&[]).unwrap();
        assert!(all.matches("key-added") && all.matches("from-a-later-release"));
        let some = EventFilter::parse(&["key-added".into(), "seats-low".into()]).unwrap();
        assert!(some.matches("key-added") && some.matches("seats-low"));
        assert!(!some.matches("key-deleted") && !some.matches("from-a-later-release"));
        assert_eq!(some.names(), ["key-added", "seats-low"]);
        let e = EventFilter::parse(&["key-addded".into()]).unwrap_err();
        assert_eq!(e.value, "key-addded");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_seeded_jitter() {
        let b = Backoff::new("ops", Duration::from_millis(100), Duration::from_secs(2)).unwrap();
        for attempt in 1..40 {
            let base = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(30))
                .min(Duration::from_secs(2));
            for seed in [0, 1, 7, u64::MAX] {
                let d = b.delay(attempt, seed);
                assert!(d <= base && d >= base * 3 / 4, "{attempt} {seed}: {d:?}");
                assert_eq!(d, b.delay(attempt, seed), "same seed, same wait");
            }
        }
        assert!(b.delay(1, 1) <= Duration::from_millis(100));
        assert!(b.delay(3, 1) > Duration::from_millis(250));
        assert!(b.delay(30, 5) <= Duration::from_secs(2));
        assert_ne!(
            (1..10).map(|a| b.delay(a, 1)).collect::<Vec<_>>(),
            (1..10).map(|a| b.delay(a, 2)).collect::<Vec<_>>(),
            "different seeds spread the retries"
        );
        assert!(Backoff::new("ops", Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::new("ops", Duration::from_secs(2), Duration::from_secs(1)).is_err());
        assert_ne!(jitter_seed("main:ops:1"), jitter_seed("main:ops:2"));
    }
}
