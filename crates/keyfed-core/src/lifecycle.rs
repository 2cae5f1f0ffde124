//! Where a key is in its life (e01–e03): active, in grace after expiry
//! (read-only), or suspended once grace is over; and which warnings the
//! administrator is owed (e02).
use crate::event::EventKind;
use crate::key::{expiry_instant, Key, KeyKind};
use chrono::{DateTime, Duration, NaiveDate, Utc};
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

    /// e03: seats keep working in grace; a suspended key's seats are withdrawn.
    #[must_use]
    pub fn seats_work(&self) -> bool {
        !matches!(self, Self::Suspended { .. })
    }
}

/// Grace periods per kind (e03): term 7 days, subscription 30 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracePolicy {
    pub term_days: i64,
    pub subscription_days: i64,
    /// Trials and NFR keys stop at expiry.
    pub other_days: i64,
    /// e02: the first warning comes this many days before expiry.
    pub warn_days: i64,
}

impl Default for GracePolicy {
    fn default() -> Self {
        Self {
            term_days: 7,
            subscription_days: 30,
            other_days: 0,
            warn_days: 30,
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

/// The state of a key that expires at the end of `expires` (e01, e03).
#[must_use]
pub fn state_on(
    expires: NaiveDate,
    kind: KeyKind,
    now: DateTime<Utc>,
    grace: &GracePolicy,
) -> KeyState {
    let expired = expiry_instant(expires);
    if now < expired {
        return KeyState::Active;
    }
    let until = expired + Duration::days(grace.days_for(kind));
    if now < until {
        KeyState::Grace { until }
    } else {
        KeyState::Suspended { since: until }
    }
}

#[must_use]
pub fn state_at(key: &Key, now: DateTime<Utc>, grace: &GracePolicy) -> KeyState {
    state_on(key.expires, key.kind, now, grace)
}

/// e02: the three moments the administrator is warned about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Milestone {
    /// `warn_days` before expiry.
    ExpiresSoon,
    Expired,
    Suspended,
}

impl Milestone {
    #[must_use]
    pub fn kind(self) -> EventKind {
        match self {
            Self::ExpiresSoon => EventKind::KeyExpiresSoon,
            Self::Expired => EventKind::KeyExpired,
            Self::Suspended => EventKind::KeySuspended,
        }
    }

    #[must_use]
    pub fn event(self) -> &'static str {
        self.kind().as_str()
    }
}

/// e02: the milestones reached by `now`. The caller sends each once; the
/// early warning is not owed once the key has already expired.
#[must_use]
pub fn milestones_reached(
    expires: NaiveDate,
    kind: KeyKind,
    now: DateTime<Utc>,
    grace: &GracePolicy,
) -> Vec<Milestone> {
    let expired = expiry_instant(expires);
    match state_on(expires, kind, now, grace) {
        KeyState::Active if now >= expired - Duration::days(grace.warn_days) => {
            vec![Milestone::ExpiresSoon]
        }
        KeyState::Active => Vec::new(),
        KeyState::Grace { .. } => vec![Milestone::Expired],
        KeyState::Suspended { .. } => vec![Milestone::Expired, Milestone::Suspended],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn e03_grace_is_seven_days_for_term_thirty_for_subscription() {
        let g = GracePolicy::default();
        let d = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let day8 = at("2027-01-08T00:00:00Z");
        assert!(matches!(
            state_on(d, KeyKind::Term, at("2027-01-07T23:59:59Z"), &g),
            KeyState::Grace { .. }
        ));
        assert!(matches!(
            state_on(d, KeyKind::Term, day8, &g),
            KeyState::Suspended { .. }
        ));
        assert!(matches!(
            state_on(d, KeyKind::Subscription, day8, &g),
            KeyState::Grace { .. }
        ));
        assert!(matches!(
            state_on(d, KeyKind::Trial, at("2027-01-01T00:00:00Z"), &g),
            KeyState::Suspended { .. }
        ));
    }

    #[test]
    fn e02_milestones_thirty_days_before_on_expiry_and_at_suspension() {
        let g = GracePolicy::default();
        let d = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let m = |s| milestones_reached(d, KeyKind::Term, at(s), &g);
        assert!(m("2026-12-01T23:59:59Z").is_empty());
        assert_eq!(m("2026-12-02T00:00:00Z"), vec![Milestone::ExpiresSoon]);
        assert_eq!(m("2027-01-01T00:00:00Z"), vec![Milestone::Expired]);
        assert_eq!(
            m("2027-01-08T00:00:00Z"),
            vec![Milestone::Expired, Milestone::Suspended]
        );
    }
}
