//! The names of everything the node tells its administrator (r09
//! notifications) and of a renewal check's outcomes, as typed values.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A name that is not one of the known events or outcomes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{value:?} is not a known {what}")]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
}

/// Every notification a node stores and passes to its hook (r09); the
/// strings are the ones stored, listed, watched and counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    CommandDropped,
    CommandReceived,
    ConnectionRefused,
    DonationLapsed,
    DonationReturned,
    DuplicateStation,
    KeyActivated,
    KeyAdded,
    KeyDeleted,
    KeyExpired,
    KeyExpiresSoon,
    KeyNotRenewedAutomatically,
    KeyOffered,
    KeyReceived,
    KeyRenewedAutomatically,
    KeyRetired,
    KeySuspended,
    KeyWithdrawn,
    /// r13: a server gave back seats it was granted (it refused them).
    GrantReturned,
    /// r03: one key's renewal check ended early; the run went on.
    RenewalFailed,
    LinkRefused,
    ObjectLicensed,
    ObjectUnlicensed,
    OldKeyHeldByAbsentChild,
    OldKeyKept,
    OverAllocated,
    OverAllocationResolved,
    PeerMessageRefused,
    /// A peer's store was replaced (wiped or restored), or this node's was
    /// rolled back, and the link reconciled both sides.
    PeerStoreReplaced,
    SeatsLow,
    SettingsChanged,
    StationReturned,
    StationsRetired,
    SubscriptionChanged,
    TelemetryDueSoon,
    TelemetryOverdue,
    TelemetrySendFailed,
    TrialExtended,
    Upgraded,
}

impl EventKind {
    pub const ALL: [EventKind; 39] = [
        Self::CommandDropped,
        Self::CommandReceived,
        Self::ConnectionRefused,
        Self::DonationLapsed,
        Self::DonationReturned,
        Self::DuplicateStation,
        Self::KeyActivated,
        Self::KeyAdded,
        Self::KeyDeleted,
        Self::KeyExpired,
        Self::KeyExpiresSoon,
        Self::KeyNotRenewedAutomatically,
        Self::KeyOffered,
        Self::KeyReceived,
        Self::KeyRenewedAutomatically,
        Self::KeyRetired,
        Self::KeySuspended,
        Self::KeyWithdrawn,
        Self::GrantReturned,
        Self::RenewalFailed,
        Self::LinkRefused,
        Self::ObjectLicensed,
        Self::ObjectUnlicensed,
        Self::OldKeyHeldByAbsentChild,
        Self::OldKeyKept,
        Self::OverAllocated,
        Self::OverAllocationResolved,
        Self::PeerMessageRefused,
        Self::PeerStoreReplaced,
        Self::SeatsLow,
        Self::SettingsChanged,
        Self::StationReturned,
        Self::StationsRetired,
        Self::SubscriptionChanged,
        Self::TelemetryDueSoon,
        Self::TelemetryOverdue,
        Self::TelemetrySendFailed,
        Self::TrialExtended,
        Self::Upgraded,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CommandDropped => "command-dropped",
            Self::CommandReceived => "command-received",
            Self::ConnectionRefused => "connection-refused",
            Self::DonationLapsed => "donation-lapsed",
            Self::DonationReturned => "donation-returned",
            Self::DuplicateStation => "duplicate-station",
            Self::KeyActivated => "key-activated",
            Self::KeyAdded => "key-added",
            Self::KeyDeleted => "key-deleted",
            Self::KeyExpired => "key-expired",
            Self::KeyExpiresSoon => "key-expires-soon",
            Self::KeyNotRenewedAutomatically => "key-not-renewed-automatically",
            Self::KeyOffered => "key-offered",
            Self::KeyReceived => "key-received",
            Self::KeyRenewedAutomatically => "key-renewed-automatically",
            Self::KeyRetired => "key-retired",
            Self::KeySuspended => "key-suspended",
            Self::KeyWithdrawn => "key-withdrawn",
            Self::GrantReturned => "grant-returned",
            Self::RenewalFailed => "renewal-failed",
            Self::LinkRefused => "link-refused",
            Self::ObjectLicensed => "object-licensed",
            Self::ObjectUnlicensed => "object-unlicensed",
            Self::OldKeyHeldByAbsentChild => "old-key-held-by-absent-child",
            Self::OldKeyKept => "old-key-kept",
            Self::OverAllocated => "over-allocated",
            Self::OverAllocationResolved => "over-allocation-resolved",
            Self::PeerMessageRefused => "peer-message-refused",
            Self::PeerStoreReplaced => "peer-store-replaced",
            Self::SeatsLow => "seats-low",
            Self::SettingsChanged => "settings-changed",
            Self::StationReturned => "station-returned",
            Self::StationsRetired => "stations-retired",
            Self::SubscriptionChanged => "subscription-changed",
            Self::TelemetryDueSoon => "telemetry-due-soon",
            Self::TelemetryOverdue => "telemetry-overdue",
            Self::TelemetrySendFailed => "telemetry-send-failed",
            Self::TrialExtended => "trial-extended",
            Self::Upgraded => "upgraded",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "event",
                value: s.to_owned(),
            })
    }
}

/// How one key's renewal check ended (`Admin.CheckForUpdates`, the
/// `keyfed_renewal_outcomes_total` metric); `Error` when the check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RenewalOutcomeKind {
    /// r06: compatible, handed to every object of the old key.
    Distributed,
    /// r05: stored and listed, not distributed.
    StoreOnly,
    /// r04: the upstream holds no renewal.
    Nothing,
    /// r10: added by hand first; the task only propagated it.
    Propagated,
    /// r02: not renewed here (from a peer, or already renewed).
    Skipped,
    Error,
}

impl RenewalOutcomeKind {
    /// In the order the metrics list them.
    pub const ALL: [RenewalOutcomeKind; 6] = [
        Self::Distributed,
        Self::StoreOnly,
        Self::Nothing,
        Self::Propagated,
        Self::Skipped,
        Self::Error,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Distributed => "distributed",
            Self::StoreOnly => "store-only",
            Self::Nothing => "nothing",
            Self::Propagated => "propagated",
            Self::Skipped => "skipped",
            Self::Error => "error",
        }
    }

    /// Position in [`RenewalOutcomeKind::ALL`], for a counter array.
    #[must_use]
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|o| *o == self)
            .unwrap_or(Self::ALL.len() - 1)
    }

    /// An outcome name as reported; anything unknown counts as an error.
    #[must_use]
    pub fn from_reported(s: &str) -> Self {
        s.parse().unwrap_or(Self::Error)
    }
}

impl fmt::Display for RenewalOutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RenewalOutcomeKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "renewal outcome",
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn r09_every_event_name_round_trips_through_str_and_serde() {
        let names: BTreeSet<&str> = EventKind::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len(), "names are distinct");
        for e in EventKind::ALL {
            assert_eq!(e.as_str().parse::<EventKind>(), Ok(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), e);
        }
        assert!("seats_low".parse::<EventKind>().is_err());
    }

    #[test]
    fn r09_event_names_are_the_ones_the_node_stores_today() {
        // a few the tests, hooks and dashboards match on
        for s in [
            "seats-low",
            "connection-refused",
            "key-renewed-automatically",
            "old-key-kept",
            "peer-message-refused",
            "key-expires-soon",
            "upgraded",
        ] {
            assert_eq!(s.parse::<EventKind>().map(EventKind::as_str), Ok(s));
        }
        assert_eq!(
            crate::lifecycle::Milestone::Suspended.event(),
            EventKind::KeySuspended.as_str()
        );
    }

    #[test]
    fn b06_renewal_outcomes_keep_the_metric_order_and_unknown_is_error() {
        let names: Vec<&str> = RenewalOutcomeKind::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "distributed",
                "store-only",
                "nothing",
                "propagated",
                "skipped",
                "error"
            ]
        );
        for o in RenewalOutcomeKind::ALL {
            assert_eq!(RenewalOutcomeKind::from_reported(o.as_str()), o);
            assert_eq!(RenewalOutcomeKind::ALL[o.index()], o);
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
        }
        assert_eq!(
            RenewalOutcomeKind::from_reported("something new"),
            RenewalOutcomeKind::Error
        );
    }
}
