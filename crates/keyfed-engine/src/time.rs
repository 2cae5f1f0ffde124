//! Timestamps as the wire and the store write them: RFC 3339, whole seconds, UTC.
use chrono::{DateTime, SecondsFormat, Utc};

#[must_use]
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[must_use]
pub fn opt_ts(t: Option<DateTime<Utc>>) -> String {
    t.map(ts).unwrap_or_default()
}

/// Parses an optional timestamp field; an empty string is `None`.
pub fn parse_ts(field: &str, s: &str) -> Result<Option<DateTime<Utc>>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Some(t.to_utc()))
        .map_err(|e| format!("{field} {s:?}: {e}"))
}
