//! Tenants' caps on a subscription (e07) and over-allocation (e06): sharing
//! or moving a subscription, a station's room in its tenant's share.
//!
//! Defect 5: a subscription in grace or suspended is read-only (e03), so
//! share and move are refused; and over-allocation counts a suspended key as
//! having no seats available, so its grants are flagged and named.
use crate::entitlement::{over_limit, Holder, LicenseError, Tenancy};
use crate::key::KeyKind;
use crate::lifecycle::KeyState;
use std::collections::BTreeMap;
use thiserror::Error;

/// A subscription as the engine reads it in the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription<'a> {
    pub key_id: &'a str,
    pub kind: KeyKind,
    /// The key's customer, the owner unless moved.
    pub customer: &'a str,
    /// Seats this node holds of the key.
    pub total: u32,
    pub state: KeyState,
    pub tenancy: &'a Tenancy,
}

/// Seats in use: all of the key's, and per tenant (`used_by`) for every
/// tenant with a share and the tenant asked about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantUse {
    pub total: u32,
    pub by_tenant: BTreeMap<String, u32>,
}

impl TenantUse {
    /// The owner uses what no tenant with a share does.
    #[must_use]
    pub fn of(&self, sub: &Subscription<'_>, tenant: &str) -> u32 {
        let owner = sub.tenancy.owner_or(sub.customer);
        if tenant.is_empty() || tenant == owner {
            let shared: u32 = sub
                .tenancy
                .shares
                .keys()
                .map(|t| self.by_tenant.get(t).copied().unwrap_or(0))
                .sum();
            self.total.saturating_sub(shared)
        } else {
            self.by_tenant.get(tenant).copied().unwrap_or(0)
        }
    }
}

/// e07: what the administrator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenancyChange<'a> {
    /// Give `tenant` a share of `seats` (0 takes it back).
    Share { tenant: &'a str, seats: u32 },
    /// `tenant` becomes the owner.
    Move { tenant: &'a str },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuotaError {
    #[error("name the tenant to share with or move to")]
    NoTenant,
    #[error("key {key_id} is a {kind} key; only subscriptions are shared between tenants")]
    NotASubscription { key_id: String, kind: KeyKind },
    #[error("subscription {key_id} is {state} and read-only: it cannot be shared or moved until it is renewed")]
    ReadOnly { key_id: String, state: &'static str },
    #[error(transparent)]
    License(#[from] LicenseError),
}

/// e07 with e03: the tenancy after `change`, never beyond the total, never
/// on a read-only (expired or suspended) subscription.
pub fn change_tenancy(
    sub: &Subscription<'_>,
    change: TenancyChange<'_>,
    uses: &TenantUse,
) -> Result<Tenancy, QuotaError> {
    let (TenancyChange::Share { tenant, .. } | TenancyChange::Move { tenant }) = change;
    if tenant.trim().is_empty() {
        return Err(QuotaError::NoTenant);
    }
    if sub.kind != KeyKind::Subscription {
        return Err(QuotaError::NotASubscription {
            key_id: sub.key_id.to_owned(),
            kind: sub.kind,
        });
    }
    if !sub.state.writable() {
        return Err(QuotaError::ReadOnly {
            key_id: sub.key_id.to_owned(),
            state: sub.state.label(),
        });
    }
    Ok(match change {
        TenancyChange::Move { tenant } => sub.tenancy.move_to(sub.key_id, sub.customer, tenant)?,
        TenancyChange::Share { tenant, seats } => {
            sub.tenancy
                .share(sub.key_id, sub.customer, sub.total, tenant, seats, |t| {
                    uses.of(sub, t)
                })?
        }
    })
}

/// e07: may a station of `tenant` (empty: the owner) take one more seat?
/// Err names the tenant and its cap, as today's refusal does.
pub fn station_room(sub: &Subscription<'_>, tenant: &str, uses: &TenantUse) -> Result<(), String> {
    let limit = sub.tenancy.limit(sub.customer, tenant, sub.total);
    if uses.of(sub, tenant) < limit {
        return Ok(());
    }
    let who = if tenant.is_empty() {
        sub.tenancy.owner_or(sub.customer)
    } else {
        tenant
    };
    Err(format!(
        "{} gives tenant {who} {limit} seat(s), all in use",
        sub.key_id
    ))
}

/// e06: grants beyond what is available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverAllocation {
    pub available: u32,
    pub granted: u32,
    /// The latest grants, the ones over the limit.
    pub over_limit: Vec<String>,
}

/// Seats that count as available: none once the key is suspended (its
/// seats are withdrawn, e03); in grace they still work.
#[must_use]
pub fn available_seats(held: u32, state: KeyState) -> u32 {
    if state.seats_work() {
        held
    } else {
        0
    }
}

/// e06: flagged when granted seats exceed the available ones, after a
/// reduction or after expiry (defect 5: a suspended key counts as 0).
#[must_use]
pub fn over_allocation(held: u32, state: KeyState, holders: &[Holder]) -> Option<OverAllocation> {
    let available = available_seats(held, state);
    let granted: u32 = holders.iter().map(|h| h.seats).sum();
    (granted > available).then(|| OverAllocation {
        available,
        granted,
        over_limit: over_limit(available, holders),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn sub(state: KeyState, tenancy: &Tenancy) -> Subscription<'_> {
        Subscription {
            key_id: "s1",
            kind: KeyKind::Subscription,
            customer: "acme",
            total: 10,
            state,
            tenancy,
        }
    }

    fn uses(total: u32, by: &[(&str, u32)]) -> TenantUse {
        TenantUse {
            total,
            by_tenant: by.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn e07_share_and_move_never_exceed_the_total() {
        let t = Tenancy::default();
        let s = sub(KeyState::Active, &t);
        let shared = change_tenancy(
            &s,
            TenancyChange::Share {
                tenant: "beta",
                seats: 4,
            },
            &uses(5, &[]),
        )
        .unwrap();
        assert_eq!(shared.limit("acme", "beta", 10), 4);
        // acme's stations use 5 of its 6 left
        let s2 = sub(KeyState::Active, &shared);
        let err = change_tenancy(
            &s2,
            TenancyChange::Share {
                tenant: "gamma",
                seats: 2,
            },
            &uses(5, &[]),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                QuotaError::License(LicenseError::ShareExceedsTotal { .. })
            ),
            "{err}"
        );
        let moved =
            change_tenancy(&s2, TenancyChange::Move { tenant: "beta" }, &uses(5, &[])).unwrap();
        assert_eq!(moved.limit("acme", "beta", 10), 10);
        assert_eq!(
            change_tenancy(&s2, TenancyChange::Move { tenant: " " }, &uses(0, &[])),
            Err(QuotaError::NoTenant)
        );
        let term = Subscription {
            kind: KeyKind::Term,
            ..s2
        };
        assert!(matches!(
            change_tenancy(&term, TenancyChange::Move { tenant: "beta" }, &uses(0, &[])),
            Err(QuotaError::NotASubscription { .. })
        ));
    }

    #[test]
    fn e03_share_or_move_of_a_subscription_in_grace_is_refused() {
        let t = Tenancy::default();
        for state in [
            KeyState::Grace {
                until: at("2027-01-31T00:00:00Z"),
            },
            KeyState::Suspended {
                since: at("2027-01-31T00:00:00Z"),
            },
        ] {
            let s = sub(state, &t);
            for change in [
                TenancyChange::Share {
                    tenant: "beta",
                    seats: 1,
                },
                TenancyChange::Move { tenant: "beta" },
            ] {
                let err = change_tenancy(&s, change, &uses(0, &[])).unwrap_err();
                assert!(matches!(err, QuotaError::ReadOnly { .. }), "{err}");
                assert!(err.to_string().contains("read-only"), "{err}");
            }
        }
    }

    #[test]
    fn e07_a_station_fits_only_within_its_tenants_share() {
        let t = Tenancy::default()
            .share("s1", "acme", 10, "beta", 2, |_| 0)
            .unwrap();
        let s = sub(KeyState::Active, &t);
        assert_eq!(station_room(&s, "beta", &uses(3, &[("beta", 1)])), Ok(()));
        let err = station_room(&s, "beta", &uses(4, &[("beta", 2)])).unwrap_err();
        assert_eq!(err, "s1 gives tenant beta 2 seat(s), all in use");
        // the owner has 8: 7 used by it, 2 by beta
        assert_eq!(station_room(&s, "", &uses(9, &[("beta", 2)])), Ok(()));
        assert!(station_room(&s, "acme", &uses(10, &[("beta", 2)]))
            .unwrap_err()
            .contains("tenant acme 8"));
        assert!(station_room(&s, "gamma", &uses(0, &[])).is_err());
    }

    #[test]
    fn e06_a_suspended_key_with_grants_is_over_allocated() {
        let holders = vec![
            Holder {
                object: "pc-1".into(),
                seats: 1,
                granted_at: at("2026-01-01T00:00:00Z"),
            },
            Holder {
                object: "nb".into(),
                seats: 3,
                granted_at: at("2026-02-01T00:00:00Z"),
            },
        ];
        assert_eq!(over_allocation(10, KeyState::Active, &holders), None);
        let grace = KeyState::Grace {
            until: at("2027-01-08T00:00:00Z"),
        };
        assert_eq!(
            over_allocation(10, grace, &holders),
            None,
            "in grace seats still work"
        );
        let suspended = KeyState::Suspended {
            since: at("2027-01-08T00:00:00Z"),
        };
        let over = over_allocation(10, suspended, &holders).expect("flagged after expiry");
        assert_eq!((over.available, over.granted), (0, 4));
        assert_eq!(over.over_limit, vec!["pc-1", "nb"]);
        // a reduction: the latest grant is the one over the limit
        let reduced = over_allocation(2, KeyState::Active, &holders).unwrap();
        assert_eq!(reduced.over_limit, vec!["nb"]);
    }
}
