//! Seat donation between neighbors (b01): the lending period, who may lend
//! to whom, renewal while the neighbor stays linked, and return on lapse.
//!
//! A grant carries its own period (defect 7): a custom period given at
//! assign is the one every later renewal uses, and an automatic key renewal
//! carries the grant's [`Lending`] to the new key's grant unchanged.
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Lending periods when the administrator names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DonationPolicy {
    pub default_days: u32,
}

impl Default for DonationPolicy {
    fn default() -> Self {
        Self { default_days: 30 }
    }
}

/// Seats lent to a neighbor: for how long each time, and until when now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lending {
    /// The grant's own period, as given at assign (or the default then).
    pub period_days: u32,
    pub until: DateTime<Utc>,
}

impl Lending {
    /// b01: a donation made at `now` for `asked_days` (0: the default).
    #[must_use]
    pub fn begin(policy: DonationPolicy, asked_days: u32, now: DateTime<Utc>) -> Self {
        let period_days = if asked_days == 0 {
            policy.default_days
        } else {
            asked_days
        };
        Self {
            period_days,
            until: now + Duration::days(i64::from(period_days)),
        }
    }

    /// A lending stored before grants kept their period: the default is
    /// the best that can be said of it.
    #[must_use]
    pub fn stored(until: DateTime<Utc>, period_days: Option<u32>, policy: DonationPolicy) -> Self {
        Self {
            period_days: period_days.unwrap_or(policy.default_days),
            until,
        }
    }

    #[must_use]
    pub fn period(&self) -> Duration {
        Duration::days(i64::from(self.period_days))
    }
}

/// What the lender does with one lending on a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LendingStep {
    /// Nothing to do yet.
    Keep,
    /// Renew for the grant's own period; send the grant again.
    Renew(Lending),
    /// The period ended without renewal: take the seats back.
    Return,
}

/// b01: a lending is renewed once half its own period is left while the
/// neighbor is linked, and comes back when its period ends.
#[must_use]
pub fn review(lending: Lending, neighbor_online: bool, now: DateTime<Utc>) -> LendingStep {
    if now >= lending.until {
        return LendingStep::Return;
    }
    if neighbor_online && lending.until - now <= lending.period() / 2 {
        return LendingStep::Renew(Lending {
            until: now + lending.period(),
            ..lending
        });
    }
    LendingStep::Keep
}

/// b01, the borrower's side: seats lent to this node lapse at `until`.
#[must_use]
pub fn borrowed_lapsed(until: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now >= until
}

/// What the lender knows of a neighbor when it lends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborLeave {
    /// This node's config: `allow_send` for that neighbor.
    pub allow_send: bool,
    /// The neighbor's protocol version from its last Hello; 0 if it never linked.
    pub protocol_version: u32,
    /// Its Hello said it accepts donated seats (its `allow_receive`).
    pub accepts_donations: bool,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DonationError {
    #[error("this node does not allow sending seats to neighbor {neighbor} (allow_send = false)")]
    SendNotAllowed { neighbor: String },
    #[error("neighbor {neighbor} does not accept donated seats (its allow_receive is off)")]
    ReceiveNotAllowed { neighbor: String },
    #[error(
        "neighbor {neighbor} has never linked, so it is not known whether it accepts donated seats"
    )]
    NeverLinked { neighbor: String },
}

/// b01: a donation needs the lender's leave to send and the neighbor's to receive.
pub fn may_donate(neighbor: &str, leave: NeighborLeave) -> Result<(), DonationError> {
    let neighbor = neighbor.to_owned();
    if !leave.allow_send {
        return Err(DonationError::SendNotAllowed { neighbor });
    }
    match (leave.protocol_version, leave.accepts_donations) {
        (0, _) => Err(DonationError::NeverLinked { neighbor }),
        (_, false) => Err(DonationError::ReceiveNotAllowed { neighbor }),
        (_, true) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        "2026-03-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn b01_period_is_the_default_or_the_one_given_at_assign() {
        let p = DonationPolicy { default_days: 30 };
        assert_eq!(Lending::begin(p, 0, t0()).until, t0() + Duration::days(30));
        let custom = Lending::begin(p, 7, t0());
        assert_eq!(
            (custom.period_days, custom.until),
            (7, t0() + Duration::days(7))
        );
    }

    #[test]
    fn b01_custom_period_survives_a_renewal() {
        // defect 7: renewing used the node's default period, not the grant's
        let lent = Lending::begin(DonationPolicy { default_days: 30 }, 10, t0());
        assert_eq!(
            review(lent, true, t0() + Duration::days(4)),
            LendingStep::Keep
        );
        let at = t0() + Duration::days(5);
        let LendingStep::Renew(next) = review(lent, true, at) else {
            panic!("half the 10-day period is left: renewed")
        };
        assert_eq!(
            next,
            Lending {
                period_days: 10,
                until: at + Duration::days(10)
            }
        );
        // and the next renewal again by 10 days
        let at2 = at + Duration::days(6);
        assert_eq!(
            review(next, true, at2),
            LendingStep::Renew(Lending {
                period_days: 10,
                until: at2 + Duration::days(10)
            })
        );
    }

    #[test]
    fn b01_lapsed_lending_comes_back_and_offline_neighbor_is_not_renewed() {
        let lent = Lending::begin(DonationPolicy::default(), 0, t0());
        assert_eq!(
            review(lent, false, t0() + Duration::days(29)),
            LendingStep::Keep
        );
        assert_eq!(review(lent, false, lent.until), LendingStep::Return);
        assert_eq!(review(lent, true, lent.until), LendingStep::Return);
        assert!(!borrowed_lapsed(
            lent.until,
            lent.until - Duration::seconds(1)
        ));
        assert!(borrowed_lapsed(lent.until, lent.until));
    }

    #[test]
    fn b01_donation_needs_allow_send_and_allow_receive() {
        let ok = NeighborLeave {
            allow_send: true,
            protocol_version: 2,
            accepts_donations: true,
        };
        assert_eq!(may_donate("nb", ok), Ok(()));
        let no_send = NeighborLeave {
            allow_send: false,
            ..ok
        };
        assert!(matches!(
            may_donate("nb", no_send),
            Err(DonationError::SendNotAllowed { .. })
        ));
        let no_recv = NeighborLeave {
            accepts_donations: false,
            ..ok
        };
        assert!(matches!(
            may_donate("nb", no_recv),
            Err(DonationError::ReceiveNotAllowed { .. })
        ));
        let never = NeighborLeave {
            protocol_version: 0,
            ..ok
        };
        let err = may_donate("nb", never).unwrap_err();
        assert!(err.to_string().contains("never linked"), "{err}");
    }

    proptest! {
        #[test]
        fn b01_a_renewal_keeps_the_period_and_never_shortens_the_lending(days in 1u32..400, after_secs in 0i64..40_000_000, online: bool) {
            let lent = Lending::begin(DonationPolicy::default(), days, t0());
            let now = t0() + Duration::seconds(after_secs);
            match review(lent, online, now) {
                LendingStep::Renew(next) => {
                    prop_assert!(online);
                    prop_assert_eq!(next.period_days, days);
                    prop_assert!(next.until > lent.until);
                }
                LendingStep::Return => prop_assert!(now >= lent.until),
                LendingStep::Keep => prop_assert!(now < lent.until),
            }
        }
    }
}
