//! Seat donation between neighbors (b01): the lending period, who may lend
//! to whom, renewal while the neighbor stays linked, and return on lapse.
//!
//! A grant carries its own period (defect 7): a custom period given at
//! assign is the one every later renewal uses, and an automatic key renewal
//! carries the grant's [`Lending`] to the new key's grant unchanged.
use chrono::{DateTime, Duration, SubsecRound, Utc};
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

/// What the lender does with a lending it is about to put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeSend {
    /// The period still runs by the lender's clock: send it.
    Send,
    /// The period already ended by the lender's clock: send nothing and
    /// take the seats back here at once (the borrower would only lapse it).
    TakeBack,
}

/// b01/r13, the lender's side: a lending that already lapsed by the
/// lender's clock is never sent. Lapsed means `now >= until`, the same
/// instant [`review`] returns it.
#[must_use]
pub fn before_send(lending: Lending, now: DateTime<Utc>) -> BeforeSend {
    if now >= lending.until {
        BeforeSend::TakeBack
    } else {
        BeforeSend::Send
    }
}

/// What a borrower does with lent seats that arrive (a grant or renewal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnArrival {
    /// The period still runs by the borrower's clock: hold the seats.
    Take,
    /// The period already ended by the borrower's clock (the delivery was
    /// held up, or the clocks disagree): hold nothing and give the seats
    /// back to the lender by message, naming the period so the lender frees
    /// exactly that lending at once instead of at its own tick.
    GiveBack { until: DateTime<Utc> },
}

/// b01/r13, the borrower's side: seats lent until `until` that arrive at
/// `now` (the borrower's clock).
#[must_use]
pub fn on_arrival(until: DateTime<Utc>, now: DateTime<Utc>) -> OnArrival {
    if borrowed_lapsed(until, now) {
        OnArrival::GiveBack { until }
    } else {
        OnArrival::Take
    }
}

/// r13, the lender receiving a give-back of the lending that ran until
/// `returned`: it frees its grant only if that grant's period ends no later.
///
/// Safe whatever the clocks say: the borrower gave `returned` back because
/// its own clock (which never goes back) had passed it, so any grant with
/// an end at or before `returned` lapses on arrival there too and is never
/// held. A grant renewed or re-lent since (a later end) may still be held
/// once it arrives, so a stale give-back leaves it alone; the borrower gives
/// that one back too if it lapses. A grant that is no lending (`None`) is not
/// freed by a lending's give-back.
#[must_use]
pub fn give_back_frees(grant_until: Option<DateTime<Utc>>, returned: DateTime<Utc>) -> bool {
    // the wire carries whole seconds: compare the end the borrower was sent
    grant_until.is_some_and(|until| until.trunc_subsecs(0) <= returned)
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
    fn r13_a_lending_lapsed_before_send_is_taken_back_not_sent() {
        let lent = Lending::begin(DonationPolicy::default(), 1, t0());
        let before = lent.until - Duration::seconds(1);
        assert_eq!(before_send(lent, before), BeforeSend::Send);
        // exactly at the end instant the period is over (as `review` says)
        assert_eq!(before_send(lent, lent.until), BeforeSend::TakeBack);
        assert_eq!(review(lent, true, lent.until), LendingStep::Return);
        assert_eq!(
            before_send(lent, lent.until + Duration::days(1)),
            BeforeSend::TakeBack
        );
    }

    #[test]
    fn r13_a_lending_lapsed_on_arrival_is_given_back_naming_its_period() {
        let until = t0() + Duration::days(1);
        // held up a day on a cut link: it arrives after its end
        assert_eq!(
            on_arrival(until, until + Duration::hours(23)),
            OnArrival::GiveBack { until }
        );
        // exactly at the end instant: lapsed, given back
        assert_eq!(on_arrival(until, until), OnArrival::GiveBack { until });
        assert_eq!(
            on_arrival(until, until - Duration::seconds(1)),
            OnArrival::Take
        );
        // the lender frees exactly that lending
        assert!(give_back_frees(Some(until), until));
        // the lender's end has sub-seconds the wire dropped
        let precise = until + Duration::milliseconds(700);
        assert!(give_back_frees(Some(precise), until));
        assert!(!give_back_frees(Some(until + Duration::seconds(1)), until));
    }

    #[test]
    fn r13_clock_skew_either_way_never_counts_a_seat_twice() {
        let lent = Lending::begin(DonationPolicy::default(), 1, t0());
        let skew = Duration::minutes(5);
        // borrower ahead: the lender (behind) still sends, the borrower
        // gives back at once, and the lender frees the grant on receipt
        let lender_now = lent.until - Duration::minutes(2);
        assert_eq!(before_send(lent, lender_now), BeforeSend::Send);
        let OnArrival::GiveBack { until } = on_arrival(lent.until, lender_now + skew) else {
            panic!("lapsed by the borrower's clock");
        };
        assert!(give_back_frees(Some(lent.until), until));
        // borrower behind: the lender (ahead) takes it back and never sends
        let lender_now = lent.until + Duration::minutes(2);
        assert_eq!(before_send(lent, lender_now), BeforeSend::TakeBack);
        assert_eq!(on_arrival(lent.until, lender_now - skew), OnArrival::Take);
        // a give-back of an older period leaves a renewed lending alone:
        // the renewal may still be held when it arrives
        let renewed = lent.until + Duration::days(1);
        assert!(!give_back_frees(Some(renewed), lent.until));
        // nor does it free a grant that is no lending
        assert!(!give_back_frees(None, lent.until));
        // a lending re-lent for a shorter period, ending before the
        // returned one, lapses on arrival too: freed
        assert!(give_back_frees(
            Some(lent.until - Duration::hours(1)),
            lent.until
        ));
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
        /// r13: whatever the two clocks read, a lending the borrower gives
        /// back is one it does not hold and never will: the lender frees a
        /// grant only if it lapses by the borrower's (monotone) clock.
        #[test]
        fn r13_a_freed_grant_is_never_held_by_the_borrower(
            until_secs in 0i64..200_000, returned_secs in 0i64..200_000,
            borrower_secs in 0i64..400_000, later_secs in 0i64..400_000,
        ) {
            let at = |s: i64| t0() + Duration::seconds(s);
            let returned = at(returned_secs);
            // the give-back exists only once the borrower's clock passed `returned`
            let borrower_now = at(borrower_secs);
            prop_assume!(on_arrival(returned, borrower_now) == OnArrival::GiveBack { until: returned });
            let grant_until = at(until_secs);
            if give_back_frees(Some(grant_until), returned) {
                // that grant, arriving now or later at the borrower, is not held
                let arrives = borrower_now + Duration::seconds(later_secs);
                prop_assert_eq!(on_arrival(grant_until, arrives), OnArrival::GiveBack { until: grant_until });
            }
        }


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
