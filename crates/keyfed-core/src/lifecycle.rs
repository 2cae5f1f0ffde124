//! Where a key is in its life (e01, e03): active, in grace after expiry
//! (read-only), or suspended once grace is over.
use crate::key::{Key, KeyKind};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Active,
    /// Expired; seats keep working but the key is read-only until `until`.
    Grace {
        until: DateTime<Utc>,
    },
    Suspended {
        since: DateTime<Utc>,
    },
}

impl KeyState {
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Grace { .. } => "expired-grace",
            Self::Suspended { .. } => "suspended",
        }
    }

    /// e03: only an active key may be assigned, transferred or distributed.
    #[must_use]
    pub fn writable(&self) -> bool {
        matches!(self, Self::Active)
    }
}

/// Grace periods per kind (e03): term 7 days, subscription 30 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracePolicy {
    pub term_days: i64,
    pub subscription_days: i64,
    pub other_days: i64,
}

impl Default for GracePolicy {
    fn default() -> Self {
        Self {
            term_days: 7,
            subscription_days: 30,
            other_days: 0,
        }
    }
}

impl GracePolicy {
    #[must_use]
    pub fn days_for(&self, kind: KeyKind) -> i64 {
        match kind {
            KeyKind::Term => self.term_days,
            KeyKind::Subscription => self.subscription_days,
            KeyKind::Trial | KeyKind::Nfr => self.other_days,
        }
    }
}

#[must_use]
pub fn state_at(key: &Key, now: DateTime<Utc>, grace: &GracePolicy) -> KeyState {
    let expired = key.expires_at();
    if now < expired {
        return KeyState::Active;
    }
    let until = expired + Duration::days(grace.days_for(key.kind));
    if now < until {
        KeyState::Grace { until }
    } else {
        KeyState::Suspended { since: until }
    }
}
