//! Fuzzing by property (b06, "bad input gets a clear error"): the key file
//! and telemetry report parsers get arbitrary bytes, key-file-shaped noise
//! and mutated signed files. They never panic, a mutated signed file never
//! verifies unless it still reads as the very same file, and every error
//! says what was wrong. Bounded: 2000 cases per property, or PROPTEST_CASES.
use chrono::{DateTime, Utc};
use keyfed_core::telemetry::{build_report, KeySeats, NodeIdentity, SignedReport};
use keyfed_core::{Components, Key, KeyFile, KeyKind, VendorSigner};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig::with_cases(cases)
}

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,12}"
}

prop_compose! {
    fn key()(id in token(), license in token(), serial in 1u64..1000, customer in token(),
             seats in 1u32..10_000, issued in 1_700_000_000i64..1_900_000_000, days in 0u64..3000,
             kind in proptest::sample::select(KeyKind::ALL.to_vec())) -> Key {
        let issued_at = DateTime::<Utc>::from_timestamp(issued, 0).unwrap();
        Key {
            id, license, serial, customer, product: "endpoint".into(),
            components: Components::new(["antivirus", "firewall"]).unwrap(),
            seats, kind, issued_at,
            expires: issued_at.date_naive() + chrono::Days::new(days),
            renews: None,
        }
    }
}

/// One way to damage a file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the byte at a position with another.
    Flip(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    /// Repeat one line.
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        any::<prop::sample::Index>().prop_map(Mutation::DuplicateLine),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(text: &str, ms: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in ms {
        if bytes.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = if bytes[i] == *b {
                    b.wrapping_add(1)
                } else {
                    *b
                };
            }
            Mutation::Delete(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Mutation::DuplicateLine(i) | Mutation::SwapLines(i, _) => {
                let s = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = s.split('\n').collect();
                let a = i.index(lines.len());
                if let Mutation::SwapLines(_, j) = m {
                    let b = j.index(lines.len());
                    lines.swap(a, b);
                } else {
                    lines.insert(a, lines[a]);
                }
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An error message a person can act on: it names the file kind and says
/// something beyond that.
fn clear(message: &str, kind: &str) -> bool {
    message.starts_with(kind) && message.len() > kind.len() + 8
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn b06_key_file_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = KeyFile::parse(&text) {
            prop_assert!(clear(&e.to_string(), "key"), "{e}");
        }
        let _ = KeyFile::parse_trusted(&text, &["00".repeat(32)]);
    }

    #[test]
    fn b06_key_file_parser_never_panics_on_key_file_shaped_noise(
        fields in proptest::collection::vec(
            (proptest::sample::select(vec!["format", "id", "license", "serial", "customer", "product", "kind",
                "components", "seats", "issued", "expires", "renews", "signer", "signature", "bogus"]),
             "[ -~]{0,80}"),
            0..18),
    ) {
        let mut text = String::from("# keyfed license key\n");
        for (name, value) in &fields {
            text.push_str(&format!("{name}: {value}\n"));
        }
        if let Err(e) = KeyFile::parse(&text) {
            prop_assert!(clear(&e.to_string(), "key"), "{e}");
        }
    }

    #[test]
    fn b06_a_mutated_signed_key_file_never_verifies_as_another_file(
        k in key(), seed in any::<[u8; 32]>(), ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        let vendor = VendorSigner::from_seed(seed);
        let original = vendor.sign(k).unwrap().render();
        let edited = mutate(&original, &ms);
        match KeyFile::parse_trusted(&edited, &[vendor.public_hex()]) {
            // only a harmless edit (a blank line, CRLF) still reads, as the same file
            Ok(f) => prop_assert_eq!(f.render(), original),
            Err(e) => prop_assert!(clear(&e.to_string(), "key"), "{e}"),
        }
    }

    #[test]
    fn b06_telemetry_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = SignedReport::parse(&text) {
            prop_assert!(clear(&e.to_string(), "telemetry"), "{e}");
        }
    }

    #[test]
    fn b06_a_mutated_signed_telemetry_report_never_verifies_as_another_report(
        node in token(), seed in any::<[u8; 32]>(),
        own in proptest::collection::vec((token(), token(), 0u32..100, 0u32..100), 0..4),
        start in 1_700_000_000i64..1_800_000_000,
        ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let own: Vec<KeySeats> = own.into_iter()
            .map(|(key, customer, held, used)| KeySeats { key, customer, held, used })
            .collect();
        let r = build_report("tr-x", &node, "1.0", at(start), at(start), at(start + 86_400), &own, &Default::default(), &[]);
        let original = NodeIdentity::from_seed(seed).sign(r).unwrap().render();
        let edited = mutate(&original, &ms);
        match SignedReport::parse(&edited) {
            Ok(back) => prop_assert_eq!(back.render(), original),
            Err(e) => prop_assert!(clear(&e.to_string(), "telemetry"), "{e}"),
        }
    }
}
