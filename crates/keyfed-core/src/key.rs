//! The license key as the vendor issues it (SPEC "The key").
use crate::error::KeyError;
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Term,
    Subscription,
    Trial,
    Nfr,
}

impl KeyKind {
    pub const ALL: [KeyKind; 4] = [Self::Term, Self::Subscription, Self::Trial, Self::Nfr];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Term => "term",
            Self::Subscription => "subscription",
            Self::Trial => "trial",
            Self::Nfr => "nfr",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KeyError::InvalidField {
                field: "kind",
                why: format!("{s:?} is not one of term, subscription, trial, nfr"),
            })
    }
}

/// The set of licensed components, kept sorted so the encoding is canonical.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Components(BTreeSet<String>);

impl Components {
    /// Builds a component set; names are lowercase `[a-z0-9-]`, 1..=32 chars.
    pub fn new<I, S>(names: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for name in names {
            let name = name.as_ref().trim();
            validate_token("components", name, 32)?;
            set.insert(name.to_owned());
        }
        if set.is_empty() {
            return Err(KeyError::InvalidField {
                field: "components",
                why: "a key licenses at least one component".into(),
            });
        }
        Ok(Self(set))
    }

    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Components of `self` that `other` lacks, sorted.
    #[must_use]
    pub fn missing_from(&self, other: &Components) -> Vec<String> {
        self.0.difference(&other.0).cloned().collect()
    }

    #[must_use]
    pub fn covers<S: AsRef<str>>(&self, wanted: &[S]) -> bool {
        wanted.iter().all(|w| self.0.contains(w.as_ref()))
    }

    #[must_use]
    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl fmt::Display for Components {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().collect();
        f.write_str(&names.join(","))
    }
}

/// A vendor-issued license key. Signed as a whole by the vendor (see `keyfile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    /// Stable across renewals: the license this key is one term of.
    pub license: String,
    /// Grows by one with each renewal of the license (rollback protection).
    pub serial: u64,
    pub customer: String,
    pub product: String,
    pub components: Components,
    pub seats: u32,
    pub kind: KeyKind,
    pub issued_at: DateTime<Utc>,
    /// Last day of validity; the key expires at 00:00 UTC the day after (e01).
    pub expires: NaiveDate,
    /// The key this one renews, if any.
    pub renews: Option<String>,
}

impl Key {
    /// e01: a key expires at 00:00 UTC on the day after its expiry date.
    #[must_use]
    pub fn expires_at(&self) -> DateTime<Utc> {
        expiry_instant(self.expires)
    }

    #[must_use]
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at()
    }

    /// Checks every field a key must have; used on issue and on parse.
    pub fn validate(&self) -> Result<(), KeyError> {
        validate_token("id", &self.id, 64)?;
        validate_token("license", &self.license, 64)?;
        validate_token("customer", &self.customer, 64)?;
        validate_token("product", &self.product, 64)?;
        if self.seats == 0 {
            return Err(KeyError::InvalidField {
                field: "seats",
                why: "a key has at least one seat".into(),
            });
        }
        if let Some(r) = &self.renews {
            validate_token("renews", r, 64)?;
            if r == &self.id {
                return Err(KeyError::InvalidField {
                    field: "renews",
                    why: "a key cannot renew itself".into(),
                });
            }
        }
        Ok(())
    }
}

/// e01 as a function of the date alone.
#[must_use]
pub fn expiry_instant(expires: NaiveDate) -> DateTime<Utc> {
    let next = expires
        .checked_add_days(Days::new(1))
        .unwrap_or(NaiveDate::MAX);
    next.and_time(NaiveTime::MIN).and_utc()
}

fn validate_token(field: &'static str, value: &str, max: usize) -> Result<(), KeyError> {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if value.is_empty() {
        return Err(KeyError::InvalidField {
            field,
            why: "must not be empty".into(),
        });
    }
    if value.len() > max {
        return Err(KeyError::InvalidField {
            field,
            why: format!("longer than {max} characters"),
        });
    }
    if let Some(bad) = value.chars().find(|c| !ok_char(*c)) {
        return Err(KeyError::InvalidField {
            field,
            why: format!(
                "{value:?} contains {bad:?}; use lowercase letters, digits, '-', '_' or '.'"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expires: &str) -> Key {
        Key {
            id: "k-1".into(),
            license: "l-1".into(),
            serial: 1,
            customer: "acme".into(),
            product: "endpoint".into(),
            components: Components::new(["antivirus"]).unwrap(),
            seats: 10,
            kind: KeyKind::Term,
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires: expires.parse().unwrap(),
            renews: None,
        }
    }

    #[test]
    fn e01_key_expires_at_midnight_utc_after_its_expiry_date() {
        let k = key("2026-12-31");
        let last_second: DateTime<Utc> = "2026-12-31T23:59:59Z".parse().unwrap();
        let midnight: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(k.expires_at(), midnight);
        assert!(!k.is_expired(last_second));
        assert!(k.is_expired(midnight));
    }

    #[test]
    fn components_are_validated_and_sorted() {
        let c = Components::new(["firewall", "antivirus", "antivirus"]).unwrap();
        assert_eq!(c.to_string(), "antivirus,firewall");
        let err = Components::new(["Anti Virus"]).unwrap_err();
        assert!(err.to_string().contains("components"), "{err}");
        assert!(Components::new(Vec::<String>::new()).is_err());
    }

    #[test]
    fn a_key_without_seats_is_invalid() {
        let mut k = key("2026-12-31");
        k.seats = 0;
        assert!(k.validate().unwrap_err().to_string().contains("seats"));
    }
}
