//! What a license entitles its holder to once keys are activated on it, and
//! the rules that watch the seats: license kinds (e04), activation of a new
//! key on an existing license (e05), over-allocation (e06), tenants sharing a
//! subscription (e07) and low-seat warnings (b04).
use crate::key::{Key, KeyKind};
use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// A trial runs this many days from activation and may be extended once by as many (e04).
pub const TRIAL_DAYS: u64 = 30;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LicenseError {
    #[error("key {key_id} is a {kind} key; only trial keys can be extended")]
    NotATrial { key_id: String, kind: KeyKind },
    #[error("trial key {key_id} was already extended once (to {until}); a second extension is refused: a term or subscription key is needed")]
    TrialAlreadyExtended { key_id: String, until: NaiveDate },
    #[error("key {new} is for license {new_license}, not {license}: it cannot be activated on it")]
    OtherLicense {
        new: String,
        new_license: String,
        license: String,
    },
    #[error("subscription {key_id} has {total} seats: {owner} keeps {owner_keeps} after sharing, {asked} more to {tenant} would exceed the total")]
    ShareExceedsTotal {
        key_id: String,
        total: u32,
        owner: String,
        owner_keeps: u32,
        tenant: String,
        asked: u32,
    },
    #[error("tenant {tenant} uses {in_use} seats of subscription {key_id}; its share cannot drop to {asked}")]
    ShareBelowUse {
        key_id: String,
        tenant: String,
        in_use: u32,
        asked: u32,
    },
    #[error("tenant {tenant} already owns subscription {key_id}")]
    SameTenant { key_id: String, tenant: String },
}

/// Seats and last valid day a license gives, after activations and
/// extensions; starts as the key's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    pub seats: u32,
    pub expires: NaiveDate,
}

impl Entitlement {
    /// What a key gives on its own when activated on `activated` (e04: a
    /// trial runs `TRIAL_DAYS` from activation, or less if the key says so).
    #[must_use]
    pub fn of(key: &Key, activated: NaiveDate) -> Self {
        let expires = match key.kind {
            KeyKind::Trial => key.expires.min(add_days(activated, TRIAL_DAYS - 1)),
            _ => key.expires,
        };
        Self {
            seats: key.seats,
            expires,
        }
    }
}

fn add_days(d: NaiveDate, n: u64) -> NaiveDate {
    d.checked_add_days(Days::new(n)).unwrap_or(NaiveDate::MAX)
}

/// Whole days from `from` to `to`, never negative.
fn days_between(from: NaiveDate, to: NaiveDate) -> u64 {
    u64::try_from((to - from).num_days()).unwrap_or(0)
}

/// e05: how a new key of a license already held is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationMode {
    /// Seat counts add up; both terms end on one merged date.
    AddSeats,
    /// One more term after the current one; the new key's seat count
    /// replaces the current one at once (a smaller count may over-allocate).
    Extend,
}

impl std::str::FromStr for ActivationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "add-seats" => Ok(Self::AddSeats),
            "extend" => Ok(Self::Extend),
            other => Err(format!(
                "{other:?} is not an activation mode: use add-seats or extend"
            )),
        }
    }
}

/// e05: the entitlement after activating `new` on a license that currently
/// gives `current`, on day `today`.
///
/// * add-seats: seats add up. The merged end date keeps the seat-days both
///   keys have left: with `a` seats and `da` days left on the current
///   entitlement and `b` seats and `db` days left on the new key (days from
///   today to the last valid day, never negative), the merged last day is
///   today + floor((a·da + b·db) / (a + b)).
/// * extend: the new term (days from the new key's issue date to its last
///   day) is added after the current last day; the seat count becomes the
///   new key's at once.
pub fn activate(
    current: Entitlement,
    license: &str,
    new: &Key,
    mode: ActivationMode,
    today: NaiveDate,
) -> Result<Entitlement, LicenseError> {
    if new.license != license {
        return Err(LicenseError::OtherLicense {
            new: new.id.clone(),
            new_license: new.license.clone(),
            license: license.to_owned(),
        });
    }
    let own = Entitlement::of(new, today);
    Ok(match mode {
        ActivationMode::AddSeats => {
            let (a, b) = (u64::from(current.seats), u64::from(own.seats));
            let da = days_between(today, current.expires);
            let db = days_between(today, own.expires);
            let days = (a * da + b * db).checked_div(a + b).unwrap_or(0);
            Entitlement {
                seats: current.seats.saturating_add(own.seats),
                expires: add_days(today, days),
            }
        }
        ActivationMode::Extend => {
            let term = days_between(new.issued_at.date_naive(), own.expires);
            Entitlement {
                seats: own.seats,
                expires: add_days(current.expires, term),
            }
        }
    })
}

/// e04: a trial may be extended once, by `TRIAL_DAYS`.
pub fn extend_trial(
    key: &Key,
    current: Entitlement,
    already_extended: bool,
) -> Result<Entitlement, LicenseError> {
    if key.kind != KeyKind::Trial {
        return Err(LicenseError::NotATrial {
            key_id: key.id.clone(),
            kind: key.kind,
        });
    }
    if already_extended {
        return Err(LicenseError::TrialAlreadyExtended {
            key_id: key.id.clone(),
            until: current.expires,
        });
    }
    Ok(Entitlement {
        expires: add_days(current.expires, TRIAL_DAYS),
        ..current
    })
}

/// One holder of seats of a key, for the over-allocation report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub object: String,
    pub seats: u32,
    pub granted_at: DateTime<Utc>,
}

/// e06: the holders beyond the limit when grants exceed `available` seats:
/// the latest grants are the ones over it (earlier holders came first).
#[must_use]
pub fn over_limit(available: u32, holders: &[Holder]) -> Vec<String> {
    let mut sorted: Vec<&Holder> = holders.iter().collect();
    sorted.sort_by(|a, b| {
        a.granted_at
            .cmp(&b.granted_at)
            .then(a.object.cmp(&b.object))
    });
    let mut total = 0u32;
    sorted
        .into_iter()
        .filter_map(|h| {
            total = total.saturating_add(h.seats);
            (total > available).then(|| h.object.clone())
        })
        .collect()
}

/// b04: when a key counts as nearly used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowSeatPolicy {
    /// Warn when fewer than this many seats are free.
    pub min_free: u32,
    /// Warn when less than this percentage of the seats is free.
    pub min_free_percent: u32,
}

impl Default for LowSeatPolicy {
    fn default() -> Self {
        Self {
            min_free: 3,
            min_free_percent: 5,
        }
    }
}

impl LowSeatPolicy {
    #[must_use]
    pub fn is_low(&self, total: u32, used: u32) -> bool {
        if total == 0 {
            return false;
        }
        let free = total.saturating_sub(used);
        free < self.min_free
            || u64::from(free) * 100 < u64::from(total) * u64::from(self.min_free_percent)
    }
}

/// e07: who holds a subscription's seats. The owner keeps what it has not
/// shared; each other tenant may use at most its share.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tenancy {
    /// Empty: the key's customer.
    pub owner: String,
    pub shares: BTreeMap<String, u32>,
}

impl Tenancy {
    #[must_use]
    pub fn owner_or<'a>(&'a self, customer: &'a str) -> &'a str {
        if self.owner.is_empty() {
            customer
        } else {
            &self.owner
        }
    }

    /// Seats `tenant` may hold of a subscription of `total` seats.
    #[must_use]
    pub fn limit(&self, customer: &str, tenant: &str, total: u32) -> u32 {
        if tenant.is_empty() || tenant == self.owner_or(customer) {
            total.saturating_sub(self.shares.values().sum())
        } else {
            self.shares.get(tenant).copied().unwrap_or(0)
        }
    }

    /// e07: gives `tenant` a share of `seats` (0 takes it back), never more
    /// than the total and never below what the tenant or owner already use.
    pub fn share(
        &self,
        key_id: &str,
        customer: &str,
        total: u32,
        tenant: &str,
        seats: u32,
        in_use: impl Fn(&str) -> u32,
    ) -> Result<Tenancy, LicenseError> {
        let owner = self.owner_or(customer).to_owned();
        if tenant == owner {
            return Err(LicenseError::SameTenant {
                key_id: key_id.into(),
                tenant: tenant.into(),
            });
        }
        let others: u32 = self
            .shares
            .iter()
            .filter(|(t, _)| t.as_str() != tenant)
            .map(|(_, s)| s)
            .sum();
        let owner_keeps = total.saturating_sub(others);
        let owner_use = in_use(&owner);
        if u64::from(others) + u64::from(seats) + u64::from(owner_use) > u64::from(total) {
            return Err(LicenseError::ShareExceedsTotal {
                key_id: key_id.into(),
                total,
                owner,
                owner_keeps: owner_keeps.saturating_sub(owner_use),
                tenant: tenant.into(),
                asked: seats,
            });
        }
        let used = in_use(tenant);
        if seats < used {
            return Err(LicenseError::ShareBelowUse {
                key_id: key_id.into(),
                tenant: tenant.into(),
                in_use: used,
                asked: seats,
            });
        }
        let mut next = self.clone();
        next.owner = owner;
        if seats == 0 {
            next.shares.remove(tenant);
        } else {
            next.shares.insert(tenant.into(), seats);
        }
        Ok(next)
    }

    /// e07: `tenant` becomes the owner; what it had been shared is folded in,
    /// and the former owner keeps nothing unless shared back.
    pub fn move_to(
        &self,
        key_id: &str,
        customer: &str,
        tenant: &str,
    ) -> Result<Tenancy, LicenseError> {
        if tenant == self.owner_or(customer) {
            return Err(LicenseError::SameTenant {
                key_id: key_id.into(),
                tenant: tenant.into(),
            });
        }
        let mut next = self.clone();
        next.shares.remove(tenant);
        next.owner = tenant.into();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Components;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn key(id: &str, kind: KeyKind, seats: u32, issued: &str, expires: &str) -> Key {
        Key {
            id: id.into(),
            license: "L1".into(),
            serial: 1,
            customer: "acme".into(),
            product: "p".into(),
            components: Components::new(["av"]).unwrap(),
            seats,
            kind,
            issued_at: format!("{issued}T00:00:00Z").parse().unwrap(),
            expires: day(expires),
            renews: None,
        }
    }

    #[test]
    fn e05_add_seats_sums_counts_and_merges_end_dates_by_seat_days() {
        let cur = Entitlement {
            seats: 10,
            expires: day("2027-01-31"),
        }; // 61 days left from 2026-12-01
        let new = key("K2", KeyKind::Term, 30, "2026-12-01", "2027-12-01"); // 365 days left
        let e = activate(cur, "L1", &new, ActivationMode::AddSeats, day("2026-12-01")).unwrap();
        assert_eq!(e.seats, 40);
        // (10*61 + 30*365) / 40 = 289
        assert_eq!(e.expires, day("2026-12-01") + chrono::Duration::days(289));
    }

    #[test]
    fn e05_extend_adds_one_term_and_takes_the_new_count_at_once() {
        let cur = Entitlement {
            seats: 10,
            expires: day("2026-12-31"),
        };
        let new = key("K2", KeyKind::Term, 4, "2026-12-01", "2027-12-01");
        let e = activate(cur, "L1", &new, ActivationMode::Extend, day("2026-12-05")).unwrap();
        assert_eq!(
            e,
            Entitlement {
                seats: 4,
                expires: day("2027-12-31")
            }
        );
        let other = Key {
            license: "L9".into(),
            ..new
        };
        assert!(matches!(
            activate(cur, "L1", &other, ActivationMode::Extend, day("2026-12-05")),
            Err(LicenseError::OtherLicense { .. })
        ));
    }

    #[test]
    fn e04_trial_runs_thirty_days_and_extends_once() {
        let t = key("T", KeyKind::Trial, 5, "2026-11-01", "2027-11-01");
        let e = Entitlement::of(&t, day("2026-11-23"));
        assert_eq!(e.expires, day("2026-12-22"));
        let once = extend_trial(&t, e, false).unwrap();
        assert_eq!(once.expires, day("2027-01-21"));
        let err = extend_trial(&t, once, true).unwrap_err();
        assert!(
            err.to_string().contains("second extension is refused"),
            "{err}"
        );
        let term = key("K", KeyKind::Term, 5, "2026-11-01", "2027-11-01");
        assert!(matches!(
            extend_trial(&term, e, false),
            Err(LicenseError::NotATrial { .. })
        ));
    }

    #[test]
    fn e06_latest_grants_are_over_the_limit() {
        let t = |s: &str| -> DateTime<Utc> { s.parse().unwrap() };
        let holders = vec![
            Holder {
                object: "late".into(),
                seats: 2,
                granted_at: t("2026-03-01T00:00:00Z"),
            },
            Holder {
                object: "first".into(),
                seats: 3,
                granted_at: t("2026-01-01T00:00:00Z"),
            },
            Holder {
                object: "second".into(),
                seats: 2,
                granted_at: t("2026-02-01T00:00:00Z"),
            },
        ];
        assert_eq!(over_limit(4, &holders), vec!["second", "late"]);
        assert!(over_limit(7, &holders).is_empty());
    }

    #[test]
    fn b04_low_when_fewer_than_three_or_under_five_percent_free() {
        let p = LowSeatPolicy::default();
        assert!(!p.is_low(10, 7));
        assert!(p.is_low(10, 8));
        assert!(!p.is_low(1000, 949));
        assert!(p.is_low(1000, 951));
        assert!(!p.is_low(0, 0));
    }

    #[test]
    fn e07_shares_never_exceed_the_total() {
        let t = Tenancy::default();
        let none = |_: &str| 0;
        let t = t.share("S", "acme", 10, "beta", 4, none).unwrap();
        assert_eq!(t.limit("acme", "acme", 10), 6);
        assert_eq!(t.limit("acme", "beta", 10), 4);
        assert_eq!(t.limit("acme", "gamma", 10), 0);
        let err = t.share("S", "acme", 10, "gamma", 7, none).unwrap_err();
        assert!(
            matches!(err, LicenseError::ShareExceedsTotal { .. }),
            "{err}"
        );
        // the owner's stations already use 5 of its 6: only 1 more can go
        let busy = |t: &str| if t == "acme" { 5 } else { 0 };
        assert!(t.share("S", "acme", 10, "gamma", 2, busy).is_err());
        assert!(t.share("S", "acme", 10, "gamma", 1, busy).is_ok());
        let moved = t.move_to("S", "acme", "beta").unwrap();
        assert_eq!(moved.owner, "beta");
        assert_eq!(moved.limit("acme", "beta", 10), 10);
        assert_eq!(moved.limit("acme", "acme", 10), 0);
    }
}
