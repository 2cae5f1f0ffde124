//! The upstream holds a renewal only until the key it renews expires (seed 002).
use chrono::Duration;
use keyfed_core::{KeyFile, KeyKind, ManualClock, SharedClock};
use keyfed_gus::{IssueRequest, Upstream};
use std::sync::Arc;

fn upstream(dir: &std::path::Path) -> (Upstream, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new("2026-11-23T10:00:00Z".parse().unwrap()));
    let shared: SharedClock = clock.clone();
    (Upstream::open(dir, shared).unwrap(), clock)
}

fn issue(u: &Upstream) -> KeyFile {
    u.issue(IssueRequest {
        customer: "acme".into(),
        product: "endpoint".into(),
        components: vec!["antivirus".into()],
        seats: 5,
        kind: KeyKind::Term,
        expires: "2026-12-31".parse().unwrap(),
    })
    .unwrap()
}

#[test]
fn r04_renewal_is_held_until_the_renewed_key_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (u, clock) = upstream(dir.path());
    let k = issue(&u);
    assert_eq!(
        u.renewal_of(&k.key.id).unwrap(),
        None,
        "nothing bought: nothing available"
    );
    let r = u
        .purchase_renewal(
            &k.key.id,
            vec!["antivirus".into()],
            5,
            "2027-12-31".parse().unwrap(),
        )
        .unwrap();
    assert_eq!(
        (r.key.renews.as_deref(), r.key.serial, &r.key.license),
        (Some(k.key.id.as_str()), 2, &k.key.license)
    );
    assert_eq!(u.renewal_of(&k.key.id).unwrap(), Some(r.key.id.clone()));
    let text = u.download(&r.key.id).unwrap();
    KeyFile::parse_trusted(&text, &[u.public_key_hex()]).unwrap();
    clock.set("2026-12-31T23:59:59Z".parse().unwrap());
    assert!(
        u.renewal_of(&k.key.id).unwrap().is_some(),
        "still held on the last day"
    );
    clock.advance(Duration::seconds(1));
    assert_eq!(
        u.renewal_of(&k.key.id).unwrap(),
        None,
        "gone at 00:00 UTC after the expiry date (e01)"
    );
}

#[test]
fn identity_and_keys_survive_a_restart_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (u, _) = upstream(dir.path());
    let k = issue(&u);
    let public = u.public_key_hex();
    let bad = u
        .purchase_renewal(
            "k-nope",
            vec!["antivirus".into()],
            5,
            "2027-12-31".parse().unwrap(),
        )
        .unwrap_err();
    assert!(bad.to_string().contains("k-nope"), "{bad}");
    let early = u
        .purchase_renewal(
            &k.key.id,
            vec!["antivirus".into()],
            5,
            "2026-06-01".parse().unwrap(),
        )
        .unwrap_err();
    assert!(early.to_string().contains("expires"), "{early}");
    drop(u);
    let (u, _) = upstream(dir.path());
    assert_eq!(u.public_key_hex(), public);
    assert_eq!(u.download(&k.key.id).unwrap(), k.render());
}
