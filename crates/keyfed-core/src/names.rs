//! Validation of every name that crosses the wire (defect 12): objects,
//! fingerprints, customers, products, components, node ids, tenants, key ids.
//!
//! Limits: object 1..=128; fingerprint 1..=128 and node id 1..=64 of ASCII
//! letters, digits and `-_.:@` (hostnames, hex digests, UUIDs and MAC
//! addresses pass; `/` is refused because a lease id is `key/fingerprint`);
//! key id 1..=64 of ASCII letters, digits and `-_.`; component 1..=32 of
//! lowercase letters, digits and `-_.` (as [`crate::Components`] takes them);
//! customer, product and tenant 1..=64 of printable text. Every kind refuses
//! control characters (NUL, newline, tab...), Unicode bidi overrides,
//! isolates and marks, and leading or trailing whitespace. Lengths count
//! characters, not bytes.
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// The kinds of names a request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NameKind {
    Object,
    Fingerprint,
    Customer,
    Product,
    Component,
    NodeId,
    Tenant,
    KeyId,
}

/// Which characters a kind takes beyond the common rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// Printable text (the common rule only).
    Text,
    /// ASCII letters, digits and `-_.:@`.
    Ident,
    /// ASCII letters, digits and `-_.`.
    Token,
    /// Lowercase ASCII letters, digits and `-_.`.
    LowerToken,
}

impl Charset {
    fn allows(self, c: char) -> bool {
        match self {
            Self::Text => true,
            Self::Ident => c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'),
            Self::Token => c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            Self::LowerToken => {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Text => "printable characters",
            Self::Ident => "ASCII letters, digits, '-', '_', '.', ':' or '@'",
            Self::Token => "ASCII letters, digits, '-', '_' or '.'",
            Self::LowerToken => "lowercase ASCII letters, digits, '-', '_' or '.'",
        }
    }
}

impl NameKind {
    pub const ALL: [NameKind; 8] = [
        Self::Object,
        Self::Fingerprint,
        Self::Customer,
        Self::Product,
        Self::Component,
        Self::NodeId,
        Self::Tenant,
        Self::KeyId,
    ];

    /// How the field is named in error messages.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Object => "object name",
            Self::Fingerprint => "fingerprint",
            Self::Customer => "customer",
            Self::Product => "product",
            Self::Component => "component",
            Self::NodeId => "node id",
            Self::Tenant => "tenant",
            Self::KeyId => "key id",
        }
    }

    /// The longest name of this kind, in characters.
    #[must_use]
    pub fn max_chars(self) -> usize {
        match self {
            Self::Object | Self::Fingerprint => 128,
            Self::Component => 32,
            Self::Customer | Self::Product | Self::NodeId | Self::Tenant | Self::KeyId => 64,
        }
    }

    fn charset(self) -> Charset {
        match self {
            Self::Object | Self::Customer | Self::Product | Self::Tenant => Charset::Text,
            Self::Fingerprint | Self::NodeId => Charset::Ident,
            Self::KeyId => Charset::Token,
            Self::Component => Charset::LowerToken,
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong { chars: usize, max: usize },
    Control { at: usize, code: u32 },
    Bidi { at: usize, code: u32 },
    EdgeWhitespace,
    NotAllowed { at: usize, ch: char },
}

/// A name refused at the edge; the message names the field and the fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("{}", describe(*kind, problem))]
    Invalid {
        kind: NameKind,
        problem: NameProblem,
    },
    #[error("a grant of {object} must be at least one seat; to take seats back, unassign it")]
    ZeroSeats { object: String },
}

fn describe(kind: NameKind, p: &NameProblem) -> String {
    let what = kind.label();
    match p {
        NameProblem::Empty => format!("{what} is empty; name one"),
        NameProblem::TooLong { chars, max } => {
            format!("{what} is {chars} characters long; the limit is {max}")
        }
        NameProblem::Control { at, code } => {
            format!("{what} has control character U+{code:04X} at position {at}")
        }
        NameProblem::Bidi { at, code } => format!(
            "{what} has bidirectional control U+{code:04X} at position {at}, which can disguise it"
        ),
        NameProblem::EdgeWhitespace => format!("{what} starts or ends with whitespace"),
        NameProblem::NotAllowed { at, ch } => format!(
            "{what} has {ch:?} at position {at}; use {}",
            kind.charset().describe()
        ),
    }
}

/// U+202A–U+202E, U+2066–U+2069, U+200E/U+200F and U+061C.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Checks `value` as a name of `kind`; positions in errors count characters from 0.
pub fn validate(kind: NameKind, value: &str) -> Result<(), NameError> {
    let fail = |problem| Err(NameError::Invalid { kind, problem });
    if value.is_empty() {
        return fail(NameProblem::Empty);
    }
    let chars = value.chars().count();
    if chars > kind.max_chars() {
        return fail(NameProblem::TooLong {
            chars,
            max: kind.max_chars(),
        });
    }
    for (at, c) in value.chars().enumerate() {
        if c.is_control() {
            return fail(NameProblem::Control {
                at,
                code: u32::from(c),
            });
        }
        if is_bidi_control(c) {
            return fail(NameProblem::Bidi {
                at,
                code: u32::from(c),
            });
        }
    }
    if value.trim() != value {
        return fail(NameProblem::EdgeWhitespace);
    }
    if let Some((at, ch)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !kind.charset().allows(*c))
    {
        return fail(NameProblem::NotAllowed { at, ch });
    }
    Ok(())
}

/// A tenant as a station or an administrator names it: empty means the key's owner.
pub fn validate_tenant_or_owner(value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        Ok(())
    } else {
        validate(NameKind::Tenant, value)
    }
}

/// A grant of zero seats is an invalid argument (unassign takes seats back).
pub fn grant_seats(object: &str, seats: u32) -> Result<u32, NameError> {
    if seats == 0 {
        Err(NameError::ZeroSeats {
            object: object.to_owned(),
        })
    } else {
        Ok(seats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(kind: NameKind, v: &str) -> NameProblem {
        match validate(kind, v) {
            Err(NameError::Invalid { problem, .. }) => problem,
            other => panic!("{v:?} as {kind} gave {other:?}"),
        }
    }

    #[test]
    fn names_used_by_tests_and_the_agent_pass() {
        let fps = [
            "fp-a",
            "pc-9",
            "st-17",
            "sim-500",
            "stranger",
            "host.example.com",
            "00:1a:2b:3c:4d:5e",
            "user@pc-1",
            "9f86d081884c7d65",
        ];
        for fp in fps {
            assert_eq!(validate(NameKind::Fingerprint, fp), Ok(()), "{fp}");
        }
        for id in [
            "main",
            "child",
            "nb",
            "kid",
            "leaf",
            "neighbor",
            "node-a.lab:7601",
        ] {
            assert_eq!(validate(NameKind::NodeId, id), Ok(()), "{id}");
        }
        assert_eq!(validate(NameKind::KeyId, "K2"), Ok(()));
        assert_eq!(validate(NameKind::Component, "antivirus"), Ok(()));
        assert_eq!(validate(NameKind::Customer, "Acme Corp."), Ok(()));
        assert_eq!(validate(NameKind::Object, "pc 9 (lab)"), Ok(()));
    }

    #[test]
    fn an_overlong_object_name_says_its_length_and_the_limit() {
        let long = "a".repeat(100_000);
        let err = validate(NameKind::Object, &long).unwrap_err();
        assert_eq!(
            err.to_string(),
            "object name is 100000 characters long; the limit is 128"
        );
        let at_limit = "é".repeat(128);
        assert_eq!(validate(NameKind::Object, &at_limit), Ok(()));
    }

    #[test]
    fn control_characters_are_refused_in_every_kind() {
        for kind in NameKind::ALL {
            for bad in ["a\0b", "a\nb", "a\tb", "a\u{7f}b"] {
                assert!(
                    matches!(problem(kind, bad), NameProblem::Control { at: 1, .. }),
                    "{kind} {bad:?}"
                );
            }
        }
        let msg = validate(NameKind::Tenant, "be\nta")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tenant") && msg.contains("U+000A"), "{msg}");
    }

    #[test]
    fn bidi_overrides_isolates_and_marks_are_refused() {
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let v = format!("acme{c}corp");
            assert!(
                matches!(
                    problem(NameKind::Customer, &v),
                    NameProblem::Bidi { at: 4, .. }
                ),
                "{c:?}"
            );
        }
    }

    #[test]
    fn leading_or_trailing_whitespace_and_empty_names_are_refused() {
        assert_eq!(
            problem(NameKind::Product, " endpoint"),
            NameProblem::EdgeWhitespace
        );
        assert_eq!(
            problem(NameKind::Object, "pc-1 "),
            NameProblem::EdgeWhitespace
        );
        assert_eq!(problem(NameKind::KeyId, ""), NameProblem::Empty);
        assert_eq!(validate_tenant_or_owner(""), Ok(()));
        assert!(validate_tenant_or_owner(" beta").is_err());
    }

    #[test]
    fn fingerprints_and_node_ids_take_a_strict_charset() {
        assert!(matches!(
            problem(NameKind::Fingerprint, "key/pc-1"),
            NameProblem::NotAllowed { at: 3, ch: '/' }
        ));
        assert!(matches!(
            problem(NameKind::NodeId, "main node"),
            NameProblem::NotAllowed { ch: ' ', .. }
        ));
        assert!(matches!(
            problem(NameKind::Component, "AntiVirus"),
            NameProblem::NotAllowed { at: 0, .. }
        ));
        let msg = validate(NameKind::NodeId, "m/n").unwrap_err().to_string();
        assert!(msg.starts_with("node id has '/' at position 1"), "{msg}");
    }

    #[test]
    fn r13_a_grant_of_zero_seats_is_an_invalid_argument() {
        assert_eq!(grant_seats("nb", 3), Ok(3));
        let err = grant_seats("nb", 0).unwrap_err();
        assert!(err.to_string().contains("at least one seat"), "{err}");
    }

    proptest! {
        #[test]
        fn a_valid_name_has_no_control_or_bidi_and_fits(kind in proptest::sample::select(NameKind::ALL.to_vec()), v in "\\PC{0,140}|.{0,3}") {
            if validate(kind, &v).is_ok() {
                prop_assert!(!v.is_empty() && v.chars().count() <= kind.max_chars());
                prop_assert!(!v.chars().any(|c| c.is_control() || is_bidi_control(c)));
                prop_assert_eq!(v.trim(), v.as_str());
            }
        }
    }
}
