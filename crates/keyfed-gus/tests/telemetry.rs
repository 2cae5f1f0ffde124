//! The upstream keeps telemetry durable (t01, t03): accepted reports, pinned
//! node identities, servers per customer and exemptions survive a restart.
use chrono::{DateTime, Duration, Utc};
use keyfed_core::telemetry::{build_report, KeySeats, NodeIdentity};
use keyfed_core::{KeyKind, ManualClock, SharedClock};
use keyfed_gus::{IssueRequest, Upstream};
use std::sync::Arc;

fn start() -> DateTime<Utc> {
    "2026-11-23T00:00:00Z".parse().unwrap()
}

#[test]
fn t03_compliance_and_report_ids_survive_an_upstream_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let shared: SharedClock = clock.clone();
    let up = Upstream::open(dir.path(), shared.clone()).unwrap();
    let key = up
        .issue(IssueRequest {
            customer: "acme".into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into()],
            seats: 5,
            kind: KeyKind::Term,
            expires: "2028-01-01".parse().unwrap(),
        })
        .unwrap();
    clock.advance(Duration::days(3));
    let own = [KeySeats {
        key: key.key.id.clone(),
        customer: "acme".into(),
        held: 5,
        used: 1,
    }];
    let report = build_report(
        "tr-1",
        "n1",
        "0.1.0",
        start(),
        start(),
        keyfed_core::Clock::now(clock.as_ref()),
        &own,
        &Default::default(),
        &[],
    );
    let text = NodeIdentity::from_seed([4; 32])
        .sign(report)
        .unwrap()
        .render();
    assert!(!up.submit_telemetry(&text).unwrap().duplicate);
    up.set_exempt("initech", true).unwrap();
    drop(up);

    let up = Upstream::open(dir.path(), shared).unwrap();
    assert!(
        up.submit_telemetry(&text).unwrap().duplicate,
        "counted once across restarts"
    );
    let acme = up.compliance(Some("acme")).unwrap().remove(0);
    assert_eq!(acme.state, "compliant");
    assert_eq!(acme.servers[0].node_id, "n1");
    assert_eq!(acme.servers[0].last_seen, "2026-11-26T00:00:00Z");
    let initech = up.compliance(Some("initech")).unwrap().remove(0);
    assert_eq!(initech.state, "exempt");
    assert_eq!(
        up.node_public_key("n1").unwrap(),
        Some(NodeIdentity::from_seed([4; 32]).public_hex())
    );
    let e = up.compliance(Some("nobody")).unwrap_err();
    assert!(e.to_string().contains("customer nobody"), "{e}");
}
