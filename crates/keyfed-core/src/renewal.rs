//! The renewal decision (r05, r06): may a renewal key replace the old one
//! everywhere on its own, or must it only be stored and shown?
use crate::entitlement::Entitlement;
use crate::key::Key;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenewalDecision {
    /// r06: same or more components and at least as many seats.
    Distribute,
    /// r05: stored and listed, not distributed; the administrator is told why.
    StoreOnly(IncompatibleReasons),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompatibleReasons {
    /// Components of the old key that the new key lacks, sorted.
    pub missing_components: Vec<String>,
    pub old_seats: u32,
    pub new_seats: u32,
}

impl IncompatibleReasons {
    #[must_use]
    pub fn fewer_seats(&self) -> bool {
        self.new_seats < self.old_seats
    }
}

impl std::fmt::Display for IncompatibleReasons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.missing_components.is_empty() {
            parts.push(format!(
                "the new key lacks component(s) {}",
                self.missing_components.join(", ")
            ));
        }
        if self.fewer_seats() {
            parts.push(format!(
                "the new key has {} seats, the old key {}",
                self.new_seats, self.old_seats
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// r05/r06 as a pure function of the two key files. Only right for a key
/// never activated on (e05); the node decides with [`decide_entitled`].
#[must_use]
pub fn decide(old: &Key, new: &Key) -> RenewalDecision {
    compare(old, old.seats, new)
}

/// r05/r06 against what the node is entitled to of the old key (defect 4):
/// after an add-seats activation (e05) the old license gives
/// `entitled.seats`, not the old key file's seats, and a renewal with fewer
/// seats than that is incompatible. The engine reads the entitlement from
/// the stored old key (`StoredKey::entitlement()`).
#[must_use]
pub fn decide_entitled(old: &Key, entitled: Entitlement, new: &Key) -> RenewalDecision {
    compare(old, entitled.seats, new)
}

fn compare(old: &Key, old_seats: u32, new: &Key) -> RenewalDecision {
    let missing_components = old.components.missing_from(&new.components);
    if missing_components.is_empty() && new.seats >= old_seats {
        RenewalDecision::Distribute
    } else {
        RenewalDecision::StoreOnly(IncompatibleReasons {
            missing_components,
            old_seats,
            new_seats: new.seats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entitlement::{activate, ActivationMode};
    use crate::key::{Components, KeyKind};

    fn key(id: &str, seats: u32, issued: &str, expires: &str) -> Key {
        Key {
            id: id.into(),
            license: "L1".into(),
            serial: 1,
            customer: "acme".into(),
            product: "endpoint".into(),
            components: Components::new(["antivirus"]).unwrap(),
            seats,
            kind: KeyKind::Term,
            issued_at: format!("{issued}T00:00:00Z").parse().unwrap(),
            expires: expires.parse().unwrap(),
            renews: None,
        }
    }

    #[test]
    fn r05_a_renewal_below_the_entitled_seats_is_incompatible_after_add_seats() {
        let old = key("k1", 20, "2026-01-01", "2026-12-31");
        let added = key("k1b", 20, "2026-06-01", "2026-12-31");
        let today = "2026-06-01".parse().unwrap();
        let ent = activate(
            Entitlement::of(&old, today),
            "L1",
            &added,
            ActivationMode::AddSeats,
            today,
        )
        .unwrap();
        assert_eq!(ent.seats, 40);
        let renewal = Key {
            renews: Some("k1".into()),
            ..key("k2", 20, "2026-12-01", "2027-12-31")
        };
        // the key files alone would say compatible: that was defect 4
        assert_eq!(decide(&old, &renewal), RenewalDecision::Distribute);
        let RenewalDecision::StoreOnly(why) = decide_entitled(&old, ent, &renewal) else {
            panic!("20 seats cannot replace 40 entitled seats")
        };
        assert_eq!((why.old_seats, why.new_seats), (40, 20));
        assert_eq!(why.to_string(), "the new key has 20 seats, the old key 40");
        let enough = Key {
            seats: 40,
            ..renewal
        };
        assert_eq!(
            decide_entitled(&old, ent, &enough),
            RenewalDecision::Distribute
        );
    }
}
