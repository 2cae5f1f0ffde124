//! Property tests of the telemetry rules (t01, t03).
use chrono::{DateTime, Duration, Utc};
use keyfed_core::telemetry::{
    build_report, compliance, CompliancePolicy, ComplianceState, KeySeats, NodeIdentity,
    ReportLine, ServerSeen, SignedReport,
};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,12}"
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(secs, 0).unwrap()
}

prop_compose! {
    fn seats()(key in token(), customer in token(), held in 0u32..1000, used in 0u32..1000) -> KeySeats {
        KeySeats { key, customer, held, used }
    }
}

prop_compose! {
    fn line()(node in token(), key in token(), customer in token(), held in 0u32..1000, used in 0u32..1000, as_of in 1_700_000_000i64..1_800_000_000) -> ReportLine {
        ReportLine { node, key, customer, held, used, peak: 0, as_of: at(as_of) }
    }
}

proptest! {
    #[test]
    fn t01_signed_reports_round_trip_and_every_edit_is_refused(
        node in token(), own in proptest::collection::vec(seats(), 0..6),
        sub in proptest::collection::vec(line(), 0..6), seed in any::<[u8; 32]>(),
        start in 1_700_000_000i64..1_800_000_000, len in 0i64..10_000_000,
        flip in any::<prop::sample::Index>(),
    ) {
        let r = build_report("tr-x", &node, "1.0", at(start), at(start), at(start + len), &own, &Default::default(), &sub);
        let text = NodeIdentity::from_seed(seed).sign(r.clone()).unwrap().render();
        let back = SignedReport::parse(&text).unwrap();
        prop_assert_eq!(&back.report, &r);
        prop_assert_eq!(back.render(), text.clone());
        // change one character of the signed part to another printable one
        let signed_len = text.rfind("signature: ").unwrap();
        let i = flip.index(signed_len);
        let c = text.as_bytes()[i];
        if c != b'\n' {
            let replacement = if c == b'1' { '2' } else { '1' };
            let mut edited = text.clone();
            edited.replace_range(i..=i, &replacement.to_string());
            prop_assert!(SignedReport::parse(&edited).is_err());
        }
    }

    #[test]
    fn t03_without_new_reports_compliance_never_improves(
        seen in proptest::collection::vec((token(), 0i64..400), 1..6), step in 1i64..200,
    ) {
        let p = CompliancePolicy::default();
        let base = at(1_700_000_000);
        let servers: Vec<ServerSeen> = seen.iter().map(|(n, d)| ServerSeen { node: n.clone(), last_seen: base + Duration::days(*d) }).collect();
        let rank = |s: ComplianceState| match s { ComplianceState::Compliant => 0, ComplianceState::Partial => 1, ComplianceState::NonCompliant => 2, ComplianceState::Exempt => 3 };
        let mut now = base;
        let mut last = compliance(&servers, base, false, now, &p);
        for _ in 0..5 {
            now += Duration::days(step);
            let c = compliance(&servers, base, false, now, &p);
            prop_assert!(rank(c.state) >= rank(last.state));
            if c.state == ComplianceState::NonCompliant && last.state == ComplianceState::NonCompliant {
                prop_assert!(c.provisional_days_left <= last.provisional_days_left);
                prop_assert_eq!(c.non_compliant_since, last.non_compliant_since);
            }
            last = c;
        }
    }
}
