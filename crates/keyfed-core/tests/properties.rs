//! Property tests: the key file round trip and the renewal decision (r05, r06).
//! Expectations are built with the inputs, never recomputed with the code's functions.
use chrono::{DateTime, NaiveDate, Utc};
use keyfed_core::entitlement::Entitlement;
use keyfed_core::renewal::{decide, decide_entitled, RenewalDecision};
use keyfed_core::{Components, Key, KeyFile, KeyKind, VendorSigner};
use proptest::prelude::*;
use std::collections::BTreeSet;

const NAMES: [&str; 6] = ["antivirus", "antispam", "firewall", "edr", "vpn", "dlp"];

fn components() -> impl Strategy<Value = Components> {
    proptest::sample::subsequence(NAMES.to_vec(), 1..=NAMES.len())
        .prop_map(|v| Components::new(v).unwrap())
}

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

prop_compose! {
    fn key()(
        id in token(), license in token(), serial in 1u64..1000, customer in token(), product in token(),
        components in components(), seats in 1u32..100_000, kind in proptest::sample::select(KeyKind::ALL.to_vec()),
        issued in 1_700_000_000i64..1_900_000_000, days in 0u64..5000, renews in proptest::option::of(token()),
    ) -> Key {
        let issued_at = DateTime::<Utc>::from_timestamp(issued, 0).unwrap();
        let expires = issued_at.date_naive().checked_add_days(chrono::Days::new(days)).unwrap_or(NaiveDate::MAX);
        let renews = renews.filter(|r| r != &id);
        Key { id, license, serial, customer, product, components, seats, kind, issued_at, expires, renews }
    }
}

proptest! {
    #[test]
    fn key_file_export_then_import_is_byte_identical(k in key(), seed in any::<[u8; 32]>()) {
        let vendor = VendorSigner::from_seed(seed);
        let text = vendor.sign(k.clone()).unwrap().render();
        let back = KeyFile::parse_trusted(&text, &[vendor.public_hex()]).unwrap();
        prop_assert_eq!(&back.key, &k);
        prop_assert_eq!(back.render(), text);
    }

    #[test]
    fn any_single_byte_change_is_refused(k in key(), at in any::<prop::sample::Index>(), with in b'!'..=b'~') {
        let vendor = VendorSigner::from_seed([3; 32]);
        let text = vendor.sign(k).unwrap().render();
        let mut bytes = text.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != with && bytes[i] != b'\n');
        bytes[i] = with;
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(KeyFile::parse_trusted(&changed, &[vendor.public_hex()]).is_err());
    }

    #[test]
    fn r06_superset_components_and_no_fewer_seats_distribute(old in key(), extra in components(), more in 0u32..1000) {
        let mut new = old.clone();
        new.components = Components::new(old.components.iter().chain(extra.iter())).unwrap();
        new.seats = old.seats + more;
        prop_assert_eq!(decide(&old, &new), RenewalDecision::Distribute);
    }

    #[test]
    fn r05_a_missing_component_or_fewer_seats_is_store_only(
        old in key(),
        drop in proptest::sample::subsequence(NAMES.to_vec(), 0..=2),
        extra in proptest::sample::subsequence(NAMES.to_vec(), 0..=NAMES.len()),
        fewer in 0u32..1000,
    ) {
        // the new key is built from the old one: `drop` taken away (only what
        // the old key had is really missing), `extra` added, `fewer` seats less
        let missing: BTreeSet<String> = drop.iter().filter(|c| old.components.contains(c)).map(|c| (*c).to_owned()).collect();
        let kept: Vec<&str> = old.components.iter().chain(extra.iter().copied()).filter(|c| !drop.contains(c)).collect();
        prop_assume!(!kept.is_empty());
        let new_seats = old.seats.saturating_sub(fewer).max(1);
        let new = Key { components: Components::new(kept).unwrap(), seats: new_seats, ..old.clone() };
        let fewer_seats = new_seats < old.seats;
        match decide(&old, &new) {
            RenewalDecision::Distribute => prop_assert!(missing.is_empty() && !fewer_seats),
            RenewalDecision::StoreOnly(r) => {
                prop_assert!(!missing.is_empty() || fewer_seats);
                prop_assert_eq!(r.missing_components, missing.into_iter().collect::<Vec<_>>());
                prop_assert_eq!((r.old_seats, r.new_seats), (old.seats, new_seats));
            }
        }
    }

    #[test]
    fn r05_fewer_seats_than_entitled_is_store_only_after_add_seats(old in key(), added in 1u32..1000, short in 1u32..1000) {
        // e05: add-seats raised what the node is entitled to above the key file
        let entitled = Entitlement { seats: old.seats + added, expires: old.expires };
        let short = short.min(entitled.seats - 1);
        let new = Key { seats: entitled.seats - short, ..old.clone() };
        let RenewalDecision::StoreOnly(r) = decide_entitled(&old, entitled, &new) else {
            return Err(TestCaseError::fail("fewer seats than entitled must not distribute"));
        };
        prop_assert!(r.missing_components.is_empty());
        prop_assert_eq!((r.old_seats, r.new_seats), (old.seats + added, old.seats + added - short));
        let enough = Key { seats: entitled.seats, ..old.clone() };
        prop_assert_eq!(decide_entitled(&old, entitled, &enough), RenewalDecision::Distribute);
    }
}

#[test]
fn r05_reasons_name_the_components_and_both_seat_counts() {
    let base = Key {
        id: "k-1".into(),
        license: "l-1".into(),
        serial: 1,
        customer: "acme".into(),
        product: "endpoint".into(),
        components: Components::new(["antivirus", "antispam", "firewall"]).unwrap(),
        seats: 50,
        kind: KeyKind::Term,
        issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires: "2026-12-31".parse().unwrap(),
        renews: None,
    };
    let new = Key {
        id: "k-2".into(),
        components: Components::new(["antivirus"]).unwrap(),
        seats: 40,
        ..base.clone()
    };
    let RenewalDecision::StoreOnly(r) = decide(&base, &new) else {
        panic!("must not distribute")
    };
    assert_eq!(
        r.missing_components,
        vec!["antispam".to_owned(), "firewall".to_owned()]
    );
    assert_eq!(r.to_string(), "the new key lacks component(s) antispam, firewall; the new key has 40 seats, the old key 50");
}
