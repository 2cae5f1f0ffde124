//! Denials (issue 12): the stable names of why a station connection or an
//! assignment was refused, and the rule of the bounded denial log.
//!
//! The log keeps the newest `keep` denials, numbered without gaps; the
//! oldest go first and are counted, so an operator sees how much fell off.
use crate::event::UnknownName;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenialKind {
    /// Station.Attach or Station.Renew.
    StationConnection,
    /// Admin.AssignSeats, or a peer's claim of a station seat (b02).
    Assignment,
}

impl DenialKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StationConnection => "station-connection",
            Self::Assignment => "assignment",
        }
    }
}

/// Why something was refused: names that stay the same across releases,
/// for filters, CSV exports and the `keyfed_denials_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenialReason {
    /// Every seat of the key is in use (or reserved by a provisional lease).
    NoFreeSeats,
    /// No key here covers the components the station asked for.
    NoCoveringKey,
    /// The key expired and is in its grace period: read-only (e03).
    KeyExpired,
    /// The key's grace ended: its seats are withdrawn (e03).
    KeySuspended,
    /// The named key is not held here.
    UnknownKey,
    /// The key was renewed: seats go on its successor (r07).
    KeySuperseded,
    /// More seats are granted than held (e06): new grants wait.
    OverAllocated,
    /// The tenant's share of a subscription is used up (e07).
    TenantQuota,
    /// The station holds its seat through another node (b02).
    SeatHeldElsewhere,
    /// The key's origin has not confirmed the station's seat for too long (b02).
    ClaimUnconfirmed,
    /// The object may not hold seats of this key: a parent, an unknown
    /// server, a key from that very peer, or a key offered without the
    /// right to pass it on.
    ObjectNotAllowed,
    /// b01: the lender or the neighbor does not allow donations.
    DonationNotAllowed,
    /// A peer claims seats of a key it was never granted (b02, r13).
    PeerNotGranted,
}

impl DenialReason {
    pub const ALL: [DenialReason; 13] = [
        Self::NoFreeSeats,
        Self::NoCoveringKey,
        Self::KeyExpired,
        Self::KeySuspended,
        Self::UnknownKey,
        Self::KeySuperseded,
        Self::OverAllocated,
        Self::TenantQuota,
        Self::SeatHeldElsewhere,
        Self::ClaimUnconfirmed,
        Self::ObjectNotAllowed,
        Self::DonationNotAllowed,
        Self::PeerNotGranted,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoFreeSeats => "no-free-seats",
            Self::NoCoveringKey => "no-covering-key",
            Self::KeyExpired => "key-expired",
            Self::KeySuspended => "key-suspended",
            Self::UnknownKey => "unknown-key",
            Self::KeySuperseded => "key-superseded",
            Self::OverAllocated => "over-allocated",
            Self::TenantQuota => "tenant-quota",
            Self::SeatHeldElsewhere => "seat-held-elsewhere",
            Self::ClaimUnconfirmed => "claim-unconfirmed",
            Self::ObjectNotAllowed => "object-not-allowed",
            Self::DonationNotAllowed => "donation-not-allowed",
            Self::PeerNotGranted => "peer-not-granted",
        }
    }

    /// The reason a key in `state` (a `KeyState` label) refuses new seats,
    /// if it does.
    #[must_use]
    pub fn of_key_state(state: &crate::lifecycle::KeyState) -> Option<Self> {
        match state {
            crate::lifecycle::KeyState::Active => None,
            crate::lifecycle::KeyState::Grace { .. } => Some(Self::KeyExpired),
            crate::lifecycle::KeyState::Suspended { .. } => Some(Self::KeySuspended),
        }
    }
}

/// Why `keyfed_core::claims::station_seat` refused `ask`, by the same
/// checks in the same order.
#[must_use]
pub fn station_seat_reason(ask: &crate::claims::SeatAsk<'_>) -> DenialReason {
    if ask.claimed_by_peer.is_some()
        || matches!(ask.own_claim, crate::claims::OwnClaim::Duplicate { .. })
    {
        DenialReason::SeatHeldElsewhere
    } else if ask.free == 0 {
        DenialReason::NoFreeSeats
    } else {
        DenialReason::ClaimUnconfirmed
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DenialReason {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "denial reason",
                value: s.to_owned(),
            })
    }
}

/// Where the bounded log stands: the numbers of the newest and oldest kept
/// entries (0: none yet) and how many were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DenialLog {
    pub last_seq: u64,
    pub oldest_seq: u64,
    pub dropped: u64,
}

impl DenialLog {
    /// Entries kept now.
    #[must_use]
    pub fn kept(&self) -> u64 {
        if self.oldest_seq == 0 {
            0
        } else {
            self.last_seq + 1 - self.oldest_seq
        }
    }
}

/// Most entries one new denial drops: a `keep` lowered from 100,000 to 10
/// shrinks the log over later writes instead of in one huge transaction.
pub const MAX_DROPS_PER_DENIAL: u64 = 1000;

/// What keeping one more denial does: its number, the oldest entries to
/// remove (`drop`, oldest first), and the log afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub seq: u64,
    pub drop: std::ops::Range<u64>,
    pub log: DenialLog,
}

/// One more denial in a log that keeps at most `keep` (at least 1): it gets
/// the next number; the oldest entries beyond `keep` go and are counted.
#[must_use]
pub fn admit(log: DenialLog, keep: u64) -> Admission {
    let keep = keep.max(1);
    let seq = log.last_seq + 1;
    let oldest = if log.oldest_seq == 0 {
        seq
    } else {
        log.oldest_seq
    };
    let kept = seq + 1 - oldest;
    let excess = kept.saturating_sub(keep).min(MAX_DROPS_PER_DENIAL);
    let drop = oldest..oldest + excess;
    Admission {
        seq,
        log: DenialLog {
            last_seq: seq,
            oldest_seq: drop.end,
            dropped: log.dropped + excess,
        },
        drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(keep: u64, n: u64) -> DenialLog {
        (0..n).fold(DenialLog::default(), |log, _| admit(log, keep).log)
    }

    #[test]
    fn the_first_denial_is_number_one_and_drops_nothing() {
        let a = admit(DenialLog::default(), 10);
        assert_eq!(a.seq, 1);
        assert!(a.drop.is_empty());
        assert_eq!(a.log.kept(), 1);
        assert_eq!(a.log.dropped, 0);
    }

    #[test]
    fn a_full_log_drops_its_oldest_entry_and_counts_it() {
        let log = fill(3, 3);
        assert_eq!(log.kept(), 3);
        let a = admit(log, 3);
        assert_eq!(a.seq, 4);
        assert_eq!(a.drop, 1..2);
        assert_eq!(a.log.oldest_seq, 2);
        assert_eq!(a.log.kept(), 3);
        assert_eq!(a.log.dropped, 1);
        let log = fill(3, 10);
        assert_eq!((log.oldest_seq, log.last_seq, log.dropped), (8, 10, 7));
    }

    #[test]
    fn a_lowered_cap_shrinks_the_log_a_bounded_step_at_a_time() {
        let log = fill(5000, 3000);
        let a = admit(log, 10);
        assert_eq!(a.drop, 1..1 + MAX_DROPS_PER_DENIAL);
        assert_eq!(a.log.dropped, MAX_DROPS_PER_DENIAL);
        let mut log = a.log;
        while log.kept() > 10 {
            log = admit(log, 10).log;
        }
        assert_eq!(log.kept(), 10);
        assert_eq!(log.dropped + log.kept(), log.last_seq);
    }

    #[test]
    fn a_cap_of_zero_still_keeps_the_newest() {
        let log = fill(0, 4);
        assert_eq!(log.kept(), 1);
        assert_eq!(log.oldest_seq, 4);
    }

    #[test]
    fn reason_names_are_stable_and_parse_back() {
        for r in DenialReason::ALL {
            assert_eq!(r.as_str().parse::<DenialReason>(), Ok(r));
            // the serde name is the same, so stored and listed names agree
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert_eq!(DenialReason::NoFreeSeats.as_str(), "no-free-seats");
        assert!("no-such-reason".parse::<DenialReason>().is_err());
        assert_eq!(DenialKind::StationConnection.as_str(), "station-connection");
    }
}
