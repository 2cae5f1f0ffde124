//! The renewal decision (r05, r06): may a renewal key replace the old one
//! everywhere on its own, or must it only be stored and shown?
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

/// r05/r06 as a pure function of the two keys.
#[must_use]
pub fn decide(old: &Key, new: &Key) -> RenewalDecision {
    let missing_components = old.components.missing_from(&new.components);
    if missing_components.is_empty() && new.seats >= old.seats {
        RenewalDecision::Distribute
    } else {
        RenewalDecision::StoreOnly(IncompatibleReasons {
            missing_components,
            old_seats: old.seats,
            new_seats: new.seats,
        })
    }
}
