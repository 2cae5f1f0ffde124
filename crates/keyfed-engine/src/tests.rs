//! The engine's sequencing on the in-memory store: a command in, the right
//! store state and notifications out. Nodes are linked by hand: a peer's
//! outbox is applied to the other engine as `Delivery` commands and acked.
use crate::command::{Command, Outcome};
use crate::config::{EngineConfig, NeighborConfig, PeerConfig};
use crate::engine::{Engine, EngineParts, NoUpstream};
use crate::station::Hello;
use chrono::{DateTime, Duration, Utc};
use keyfed_core::entitlement::ActivationMode;
use keyfed_core::{Components, Key, KeyFile, KeyKind, ManualClock, VendorSigner};
use keyfed_store::{ObjectKind, Store};
use keyfed_wire::v1 as pb;
use prost::Message;
use std::sync::Arc;

mod acks;
mod claims;

fn t0() -> DateTime<Utc> {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn vendor() -> VendorSigner {
    VendorSigner::from_seed([7; 32])
}

fn config(id: &str) -> EngineConfig {
    EngineConfig {
        node_id: id.into(),
        trusted_vendor_keys: vec![vendor().public_hex()],
        ..EngineConfig::default()
    }
}

fn neighbor(id: &str) -> NeighborConfig {
    NeighborConfig {
        node_id: id.into(),
        ..NeighborConfig::default()
    }
}

fn parent(id: &str) -> Option<PeerConfig> {
    Some(PeerConfig {
        node_id: id.into(),
        address: String::new(),
    })
}

fn engine_on(config: EngineConfig, store: Store) -> Engine {
    Engine::new(EngineParts {
        config,
        store,
        clock: Arc::new(ManualClock::new(t0())),
        upstream: Arc::new(NoUpstream),
        sinks: Vec::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    })
    .unwrap()
}

fn engine(config: EngineConfig) -> Engine {
    engine_on(config, Store::in_memory())
}

struct Spec<'a> {
    id: &'a str,
    license: &'a str,
    serial: u64,
    seats: u32,
    kind: KeyKind,
    expires: &'a str,
    renews: Option<&'a str>,
}

fn spec(id: &str, seats: u32) -> Spec<'_> {
    Spec {
        id,
        license: "l1",
        serial: 1,
        seats,
        kind: KeyKind::Term,
        expires: "2027-12-31",
        renews: None,
    }
}

fn file(s: Spec<'_>) -> KeyFile {
    vendor()
        .sign(Key {
            id: s.id.into(),
            license: s.license.into(),
            serial: s.serial,
            customer: "acme".into(),
            product: "endpoint".into(),
            components: Components::new(["antivirus"]).unwrap(),
            seats: s.seats,
            kind: s.kind,
            issued_at: t0() - Duration::days(1),
            expires: s.expires.parse().unwrap(),
            renews: s.renews.map(Into::into),
        })
        .unwrap()
}

/// The renewal `id` (serial 2) of `old` with `seats`.
fn renewal_of(id: &str, old: &str, seats: u32) -> KeyFile {
    file(Spec {
        serial: 2,
        expires: "2028-12-31",
        renews: Some(old),
        ..spec(id, seats)
    })
}

async fn run(e: &Engine, cmd: Command) -> Outcome {
    e.execute(cmd).await.unwrap()
}

async fn add(e: &Engine, f: &KeyFile, now: DateTime<Utc>) {
    run(
        e,
        Command::AddKey {
            text: f.render(),
            now,
        },
    )
    .await;
}

fn assign_cmd(key: &str, object: &str, seats: u32, days: u32, now: DateTime<Utc>) -> Command {
    Command::Assign {
        key_id: key.into(),
        object: object.into(),
        seats,
        kind: None,
        donation_days: days,
        now,
    }
}

async fn assign(e: &Engine, key: &str, object: &str, seats: u32, now: DateTime<Utc>) {
    run(e, assign_cmd(key, object, seats, 0, now)).await;
}

async fn renew(e: &Engine, old: &str, new: &KeyFile, now: DateTime<Utc>) -> pb::RenewalOutcome {
    let cmd = Command::RenewalFound {
        key_id: old.into(),
        text: new.render(),
        now,
    };
    run(e, cmd).await.renewal().unwrap()
}

async fn link(e: &Engine, peer: &str, online: bool, now: DateTime<Utc>) {
    let cmd = Command::PeerLink {
        peer: peer.into(),
        online,
        hello: online.then_some((keyfed_core::PROTOCOL_VERSION, true)),
        now,
    };
    run(e, cmd).await;
}

async fn tick(e: &Engine, now: DateTime<Utc>) {
    run(e, Command::Tick { now, seed: [1; 32] }).await;
}

async fn contact(e: &Engine, fp: &str, now: DateTime<Utc>) -> pb::Lease {
    let hello = Hello {
        fingerprint: fp.into(),
        station_id: fp.into(),
        components: vec!["antivirus".into()],
        ..Hello::default()
    };
    run(e, Command::StationContact { hello, now })
        .await
        .lease()
        .unwrap()
        .0
}

/// Applies `from`'s outbox for `to` on `to`, in order, and acks it.
async fn pump(from: &Engine, to: &Engine, now: DateTime<Utc>) -> usize {
    let entries = from.store().outbox(to.id()).unwrap();
    let n = entries.len();
    for e in entries {
        let mut d = pb::Delivery::decode(e.body.as_slice()).unwrap();
        d.seq = e.seq;
        d.message_id.clone_from(&e.message_id);
        let cmd = Command::Delivery {
            peer: from.id().into(),
            delivery: d.encode_to_vec(),
            now,
        };
        run(to, cmd).await;
        let ack = Command::Acked {
            peer: to.id().into(),
            seq: e.seq,
            now,
        };
        run(from, ack).await;
    }
    n
}

fn events(e: &Engine, event: &str) -> Vec<keyfed_store::Notification> {
    e.notifications_after(0)
        .unwrap()
        .into_iter()
        .filter(|n| n.event == event)
        .collect()
}

fn used(e: &Engine, key: &str) -> u32 {
    e.store().used(key).unwrap()
}

// ---- defect 1: stale waiting records (r11) --------------------------------

/// K (1 seat, pc-1) renewed as N, whose 2 seats station-x took by hand:
/// pc-1 waits for N.
async fn pc1_waiting() -> Engine {
    let e = engine(config("main"));
    add(&e, &file(spec("k1", 1)), t0()).await;
    assign(&e, "k1", "pc-1", 1, t0()).await;
    let n = renewal_of("n1", "k1", 2);
    add(&e, &n, t0()).await;
    assign(&e, "n1", "station-x", 2, t0()).await;
    renew(&e, "k1", &n, t0()).await;
    assert_eq!(e.store().waiting().unwrap().len(), 1, "pc-1 waits for n1");
    e
}

#[tokio::test]
async fn r11_waiting_record_goes_once_the_station_takes_a_seat_itself() {
    let e = pc1_waiting().await;
    let other = file(Spec {
        license: "l2",
        ..spec("other", 1)
    });
    add(&e, &other, t0()).await;
    let lease = contact(&e, "pc-1", t0()).await;
    assert!(lease.licensed && lease.key_id == "other", "{lease:?}");
    assert!(
        e.store().waiting().unwrap().is_empty(),
        "pc-1 no longer waits"
    );
    let release = Command::ReleaseStation {
        lease_id: lease.lease_id,
        fingerprint: "pc-1".into(),
        now: t0(),
    };
    run(&e, release).await;
    let unassign = Command::Unassign {
        key_id: "n1".into(),
        object: "station-x".into(),
        now: t0(),
    };
    run(&e, unassign).await;
    tick(&e, t0() + Duration::minutes(2)).await;
    assert_eq!(
        e.store().grant("n1", "pc-1").unwrap(),
        None,
        "pc-1 released its seat and must not be granted n1 behind its back"
    );
}

#[tokio::test]
async fn r11_unassign_cancels_a_waiting_record() {
    let e = pc1_waiting().await;
    let cancel = Command::Unassign {
        key_id: "n1".into(),
        object: "pc-1".into(),
        now: t0(),
    };
    assert!(matches!(
        run(&e, cancel).await,
        Outcome::Unassigned(crate::ledger::Unassigned::Waiting)
    ));
    assert!(e.store().waiting().unwrap().is_empty());
    let free = Command::Unassign {
        key_id: "n1".into(),
        object: "station-x".into(),
        now: t0(),
    };
    run(&e, free).await;
    assert_eq!(
        e.store().grant("n1", "pc-1").unwrap(),
        None,
        "and gets nothing"
    );
}

// ---- defect 4: decide against the entitlement (r05, e05) -----------------

#[tokio::test]
async fn r05_e05_renewal_below_the_entitled_seats_after_add_seats_is_store_only() {
    let e = engine(config("main"));
    add(&e, &file(spec("k1", 20)), t0()).await;
    let more = file(Spec {
        serial: 2,
        ..spec("k1b", 20)
    });
    let activate = Command::ActivateKey {
        text: more.render(),
        mode: ActivationMode::AddSeats,
        now: t0(),
    };
    assert_eq!(run(&e, activate).await.key().unwrap().held, 40);
    assign(&e, "k1", "station-big", 40, t0()).await;
    let renewal = file(Spec {
        serial: 3,
        expires: "2028-12-31",
        renews: Some("k1"),
        ..spec("k2", 20)
    });
    let o = renew(&e, "k1", &renewal, t0()).await;
    assert_eq!(
        (o.outcome.as_str(), o.old_seats, o.new_seats),
        ("store-only", 40, 20)
    );
    assert_eq!(events(&e, "key-not-renewed-automatically").len(), 1);
    assert!(
        e.store().grant("k1", "station-big").unwrap().is_some(),
        "nothing moved"
    );
}

// ---- defect 5: tenancy and over-allocation after expiry (e03, e06, e07) ---

#[tokio::test]
async fn e03_e07_share_or_move_of_a_subscription_in_grace_is_refused_read_only() {
    let e = engine(config("main"));
    let sub = file(Spec {
        kind: KeyKind::Subscription,
        expires: "2026-12-31",
        ..spec("s1", 10)
    });
    add(&e, &sub, t0()).await;
    let in_grace: DateTime<Utc> = "2027-01-05T00:00:00Z".parse().unwrap();
    for move_it in [false, true] {
        let cmd = Command::ShareSubscription {
            key_id: "s1".into(),
            tenant: "beta".into(),
            seats: 2,
            move_it,
            now: in_grace,
        };
        let err = e.execute(cmd).await.unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    assert!(events(&e, "subscription-changed").is_empty());
}

#[tokio::test]
async fn e06_a_suspended_key_with_grants_is_flagged_over_allocated() {
    let e = engine(config("main"));
    add(
        &e,
        &file(Spec {
            expires: "2026-06-30",
            ..spec("k1", 10)
        }),
        t0(),
    )
    .await;
    assign(&e, "k1", "pc-1", 1, t0()).await;
    tick(&e, t0()).await;
    assert!(events(&e, "over-allocated").is_empty());
    let suspended: DateTime<Utc> = "2026-07-10T00:00:00Z".parse().unwrap();
    tick(&e, suspended).await;
    let flagged = events(&e, "over-allocated");
    assert_eq!(flagged.len(), 1, "flagged once after suspension");
    assert_eq!(flagged[0].details["over_limit"], "pc-1");
    let k = e.get_key("k1").unwrap();
    assert_eq!(e.over_limit_at(&k, suspended).unwrap(), vec!["pc-1"]);
}

// ---- defect 7: a donation keeps its own period (b01) ----------------------

#[tokio::test]
async fn b01_a_custom_lending_period_survives_automatic_renewals_and_restarts() {
    let cfg = EngineConfig {
        neighbors: vec![neighbor("east")],
        ..config("main")
    };
    let store = Store::in_memory();
    let mut e = engine_on(cfg.clone(), store.clone());
    add(&e, &file(spec("k1", 10)), t0()).await;
    link(&e, "east", true, t0()).await;
    let g = run(&e, assign_cmd("k1", "east", 3, 10, t0()))
        .await
        .grant()
        .unwrap();
    assert_eq!(g.lent_until, Some(t0() + Duration::days(10)));
    let mut now = t0();
    for round in 0..2 {
        now += Duration::days(6);
        tick(&e, now).await;
        let g = e.store().grant("k1", "east").unwrap().unwrap();
        assert_eq!(
            g.lent_until,
            Some(now + Duration::days(10)),
            "round {round}"
        );
        // a restart on the same store
        e = engine_on(cfg.clone(), store.clone());
        link(&e, "east", true, now).await;
    }
}

#[tokio::test]
async fn b01_a_renewal_carries_the_donations_own_period() {
    let cfg = EngineConfig {
        neighbors: vec![neighbor("east")],
        ..config("main")
    };
    let e = engine(cfg);
    add(&e, &file(spec("k1", 10)), t0()).await;
    link(&e, "east", true, t0()).await;
    run(&e, assign_cmd("k1", "east", 3, 12, t0())).await;
    renew(&e, "k1", &renewal_of("k2", "k1", 10), t0()).await;
    let g = e.store().grant("k2", "east").unwrap().unwrap();
    assert_eq!(
        (g.lent_days, g.lent_until),
        (Some(12), Some(t0() + Duration::days(12)))
    );
}

// ---- defect 10: durable in one transaction (r12, o05) ---------------------

#[tokio::test]
async fn r12_delete_key_writes_its_tombstone_in_the_same_durable_transaction() {
    let e = engine(config("main"));
    add(&e, &file(spec("k1", 5)), t0()).await;
    run(
        &e,
        Command::DeleteKey {
            key_id: "k1".into(),
            now: t0(),
        },
    )
    .await;
    // what a restart after a crash right after the answer finds
    let after = e.store().crash().unwrap();
    assert!(after.key("k1").unwrap().is_none());
    assert_eq!(
        after.meta("deleted:k1").unwrap(),
        Some(crate::time::ts(t0()))
    );
}

#[tokio::test]
async fn o05_settings_and_their_notification_are_one_durable_transaction() {
    let e = engine(config("main"));
    let cmd = Command::SetSettings {
        text: "scan = daily".into(),
        now: t0(),
    };
    run(&e, cmd).await;
    let after = engine_on(config("main"), e.store().crash().unwrap());
    assert_eq!(after.settings().unwrap().text, "scan = daily");
    assert_eq!(after.settings().unwrap().version, 2);
    assert_eq!(events(&after, "settings-changed").len(), 1);
}

// ---- defect 13: the absent child (r08) -------------------------------------

#[tokio::test]
async fn r08_administrator_told_which_child_still_holds_the_old_key_after_30_days() {
    let cfg = EngineConfig {
        children: vec!["kid".into()],
        ..config("main")
    };
    let e = engine(cfg);
    add(&e, &file(spec("k1", 10)), t0()).await;
    assign(&e, "k1", "kid", 5, t0()).await;
    // kid never comes back
    renew(&e, "k1", &renewal_of("k2", "k1", 10), t0()).await;
    tick(&e, t0() + Duration::days(29)).await;
    assert!(events(&e, "old-key-held-by-absent-child").is_empty());
    assert!(
        e.store().key("k1").unwrap().is_some(),
        "old key stays while kid is away"
    );
    tick(&e, t0() + Duration::days(31)).await;
    tick(&e, t0() + Duration::days(32)).await;
    let told = events(&e, "old-key-held-by-absent-child");
    assert_eq!(told.len(), 1, "once");
    assert_eq!(
        (told[0].key_id.as_str(), told[0].details["object"].as_str()),
        ("k1", "kid")
    );
    run(
        &e,
        Command::DeleteKey {
            key_id: "k1".into(),
            now: t0() + Duration::days(32),
        },
    )
    .await;
    assert!(e.store().key("k1").unwrap().is_none());
    // kid's grant of the new key waits for it with the renewal in its outbox
    assert!(e.store().grant("k2", "kid").unwrap().is_some());
    assert!(e
        .store()
        .outbox("kid")
        .unwrap()
        .iter()
        .any(|o| o.what == "key-renewed"));
}

// ---- defect 3: the entitlement travels with the key (e04, e05) ------------

fn main_and_kid() -> (Engine, Engine) {
    let main = engine(EngineConfig {
        children: vec!["kid".into()],
        ..config("main")
    });
    let kid = engine(EngineConfig {
        parent: parent("main"),
        ..config("kid")
    });
    (main, kid)
}

#[tokio::test]
async fn e04_a_childs_trial_runs_30_days_from_activation_not_from_receipt() {
    let (main, kid) = main_and_kid();
    let trial = file(Spec {
        kind: KeyKind::Trial,
        ..spec("t1", 5)
    });
    add(&main, &trial, t0()).await;
    let later = t0() + Duration::days(10);
    assign(&main, "t1", "kid", 2, later).await;
    pump(&main, &kid, later).await;
    let (m, k) = (main.get_key("t1").unwrap(), kid.get_key("t1").unwrap());
    assert_eq!(k.entitlement().expires, m.entitlement().expires);
}

#[tokio::test]
async fn e04_e05_extend_activation_reaches_the_child() {
    let (main, kid) = main_and_kid();
    add(
        &main,
        &file(Spec {
            expires: "2027-01-31",
            ..spec("k1", 10)
        }),
        t0(),
    )
    .await;
    assign(&main, "k1", "kid", 5, t0()).await;
    pump(&main, &kid, t0()).await;
    let more = file(Spec {
        serial: 2,
        expires: "2028-01-31",
        ..spec("k1x", 10)
    });
    let activate = Command::ActivateKey {
        text: more.render(),
        mode: ActivationMode::Extend,
        now: t0(),
    };
    let after = run(&main, activate).await.key().unwrap().entitlement();
    pump(&main, &kid, t0()).await;
    assert_eq!(kid.get_key("k1").unwrap().entitlement(), after);
    // past the original expiry and its grace, the child still licenses
    let late: DateTime<Utc> = "2027-02-09T00:00:00Z".parse().unwrap();
    assert!(kid.state_at(&kid.get_key("k1").unwrap(), late).writable());
}

// ---- defect 8: one machine, one counted seat (b02) ------------------------

fn main_and_east() -> (Engine, Engine) {
    let main = engine(EngineConfig {
        neighbors: vec![neighbor("east")],
        ..config("main")
    });
    let east = engine(EngineConfig {
        neighbors: vec![neighbor("main")],
        ..config("east")
    });
    (main, east)
}

#[tokio::test]
async fn b02_a_station_reaching_a_second_neighbor_is_never_counted_twice() {
    let (main, east) = main_and_east();
    add(&main, &file(spec("k1", 10)), t0()).await;
    link(&main, "east", true, t0()).await;
    link(&east, "main", true, t0()).await;
    assign(&main, "k1", "east", 3, t0()).await;
    pump(&main, &east, t0()).await;
    assert!(contact(&main, "pc-1", t0()).await.licensed);
    let first = contact(&east, "pc-1", t0()).await;
    assert!(first.reason.contains("provisional"), "{first:?}");
    assert_eq!(used(&east, "k1"), 0, "a provisional lease is not counted");
    pump(&east, &main, t0()).await; // the claim
    pump(&main, &east, t0()).await; // the answer: duplicate
    let again = contact(&east, "pc-1", t0()).await;
    assert!(!again.licensed, "{again:?}");
    assert_eq!(used(&east, "k1"), 0);
    assert_eq!(used(&main, "k1"), 4);
    assert_eq!(events(&east, "duplicate-station").len(), 1);
}

#[tokio::test]
async fn b02_the_origin_confirms_a_new_station_and_its_seat_is_counted_once() {
    let (main, east) = main_and_east();
    add(&main, &file(spec("k1", 10)), t0()).await;
    link(&main, "east", true, t0()).await;
    assign(&main, "k1", "east", 1, t0()).await;
    pump(&main, &east, t0()).await;
    assert!(contact(&east, "pc-2", t0()).await.licensed);
    // the reservation holds east's only seat: a second station waits
    assert!(!contact(&east, "pc-3", t0()).await.licensed);
    pump(&east, &main, t0()).await;
    pump(&main, &east, t0()).await; // confirmed
    assert_eq!(used(&east, "k1"), 1);
    let lease = contact(&east, "pc-2", t0()).await;
    assert!(lease.licensed && lease.reason.is_empty(), "{lease:?}");
    assert_eq!(
        main.store().used("k1").unwrap(),
        1,
        "main counts only east's grant"
    );
}

// ---- defect 9: relayed usage keeps its own time (t03, b05) ----------------

#[tokio::test]
async fn t03_b05_a_vanished_grandchild_is_not_kept_current_by_its_parent() {
    let main = engine(EngineConfig {
        children: vec!["child".into()],
        ..config("main")
    });
    let child = engine(EngineConfig {
        parent: parent("main"),
        children: vec!["leaf".into()],
        ..config("child")
    });
    let leaf = engine(EngineConfig {
        parent: parent("child"),
        ..config("leaf")
    });
    add(&main, &file(spec("k1", 10)), t0()).await;
    assign(&main, "k1", "child", 5, t0()).await;
    pump(&main, &child, t0()).await;
    assign(&child, "k1", "leaf", 2, t0()).await;
    pump(&child, &leaf, t0()).await;
    assign(&leaf, "k1", "station-9", 1, t0()).await;
    tick(&leaf, t0()).await;
    pump(&leaf, &child, t0()).await;
    tick(&child, t0()).await;
    pump(&child, &main, t0()).await;
    let leaf_line = |e: &Engine| {
        e.store()
            .usage_lines()
            .unwrap()
            .into_iter()
            .find(|l| l.node_id == "leaf")
            .map(|l| l.reported_at)
    };
    assert_eq!(leaf_line(&main), Some(t0()));
    // the leaf vanishes; the child reports again an hour later
    let later = t0() + Duration::hours(1);
    tick(&child, later).await;
    tick(&child, later + Duration::minutes(2)).await;
    assert!(
        pump(&child, &main, later).await > 0,
        "the child reported again"
    );
    assert_eq!(
        leaf_line(&main),
        Some(t0()),
        "the leaf's line keeps the leaf's time"
    );
}

// ---- defect 2: the seat poll (r11) ------------------------------------------

#[tokio::test]
async fn r11_seat_poll_gives_a_waiting_neighbor_seats_freed_by_a_lapsed_donation() {
    let e = engine(EngineConfig {
        neighbors: vec![neighbor("east"), neighbor("west")],
        ..config("main")
    });
    add(&e, &file(spec("k1", 10)), t0()).await;
    link(&e, "east", true, t0()).await;
    link(&e, "west", true, t0()).await;
    run(&e, assign_cmd("k1", "east", 4, 365, t0())).await;
    let n = renewal_of("n1", "k1", 10);
    add(&e, &n, t0()).await;
    assign(&e, "n1", "station-x", 4, t0()).await;
    run(&e, assign_cmd("n1", "west", 4, 1, t0())).await;
    renew(&e, "k1", &n, t0()).await;
    assert!(e
        .store()
        .waiting()
        .unwrap()
        .iter()
        .any(|w| w.object == "east"));
    tick(&e, t0()).await; // starts the poll period
    link(&e, "west", false, t0()).await;
    let lapsed = t0() + Duration::days(2);
    tick(&e, lapsed).await;
    assert_eq!(events(&e, "donation-returned").len(), 1);
    assert_eq!(
        e.store().grant("n1", "east").unwrap(),
        None,
        "served by the poll, not the sweep"
    );
    tick(
        &e,
        lapsed + Duration::seconds(e.config().seat_poll_secs + 1),
    )
    .await;
    let g = e
        .store()
        .grant("n1", "east")
        .unwrap()
        .expect("east gets its seats");
    assert_eq!((g.seats, g.kind), (4, ObjectKind::Server));
}

// ---- commands are deterministic ---------------------------------------------

#[tokio::test]
async fn same_commands_on_two_fresh_engines_give_identical_stores() {
    let cfg = EngineConfig {
        neighbors: vec![neighbor("east")],
        children: vec!["kid".into()],
        ..config("main")
    };
    let t1 = t0() + Duration::days(1);
    let hello = Hello {
        fingerprint: "pc-1".into(),
        station_id: "pc-1".into(),
        components: vec!["antivirus".into()],
        ..Hello::default()
    };
    let cmds = vec![
        Command::AddKey {
            text: file(spec("k1", 10)).render(),
            now: t0(),
        },
        Command::PeerLink {
            peer: "east".into(),
            online: true,
            hello: Some((2, true)),
            now: t0(),
        },
        assign_cmd("k1", "east", 3, 7, t0()),
        assign_cmd("k1", "kid", 2, 0, t0()),
        Command::StationContact { hello, now: t0() },
        Command::SetSettings {
            text: "x".into(),
            now: t0(),
        },
        Command::QueueCommand {
            object: "kid".into(),
            command: "scan".into(),
            now: t0(),
        },
        Command::RenewalFound {
            key_id: "k1".into(),
            text: renewal_of("k2", "k1", 12).render(),
            now: t1,
        },
        Command::Acked {
            peer: "kid".into(),
            seq: 1,
            now: t1,
        },
        Command::Tick {
            now: t1,
            seed: [3; 32],
        },
        Command::ExportTelemetry {
            now: t1,
            report_id: "tr-1".into(),
            seed: [3; 32],
        },
        Command::Tick {
            now: t1 + Duration::days(5),
            seed: [3; 32],
        },
    ];
    // the commands survive serde (a log of them can be replayed)
    let json = serde_json::to_string(&cmds).unwrap();
    let replayed: Vec<Command> = serde_json::from_str(&json).unwrap();
    assert_eq!(replayed, cmds);
    let (a, b) = (engine(cfg.clone()), engine(cfg));
    for (x, y) in cmds.into_iter().zip(replayed) {
        a.execute(x).await.unwrap();
        b.execute(y).await.unwrap();
    }
    let dump = a.store().dump().unwrap();
    assert!(dump["grants"].len() >= 3 && dump["notifications"].len() >= 3);
    assert_eq!(dump, b.store().dump().unwrap());
}

#[tokio::test]
async fn t03_b05_a_server_that_holds_keys_but_never_reported_is_listed_as_never_seen() {
    let main = engine(EngineConfig {
        children: vec!["kid".into()],
        ..config("main")
    });
    add(&main, &file(spec("k1", 10)), t0()).await;
    assign(&main, "k1", "kid", 5, t0()).await;
    let cmd = Command::ExportTelemetry {
        now: t0(),
        report_id: "tr-1".into(),
        seed: [2; 32],
    };
    let text = run(&main, cmd).await.text().unwrap();
    let report = keyfed_core::telemetry::SignedReport::parse(&text)
        .unwrap()
        .report;
    let kid = report
        .lines
        .iter()
        .find(|l| l.node == "kid")
        .expect("kid is listed");
    assert_eq!((kid.held, kid.as_of), (5, DateTime::<Utc>::UNIX_EPOCH));
}

mod lending;
mod resync;
mod usage_history;
