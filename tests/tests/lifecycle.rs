//! The life of a key on real nodes over gRPC with stations attached: expiry,
//! warnings, grace and suspension (e01–e03), kinds (e04), activation (e05),
//! over-allocation (e06), tenants (e07), limit warnings (b04). Days move on
//! the shared manual clock.
use chrono::{DateTime, Duration, NaiveDate, Utc};
use keyfed_core::KeyKind;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{eventually, has_event, TestCluster, Topology};

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn count(ns: &[pb::Notification], event: &str, key_id: &str) -> usize {
    ns.iter()
        .filter(|n| n.event == event && n.key_id == key_id)
        .count()
}

/// One station contact over the Station service.
async fn connect(c: &TestCluster, node: &str, fp: &str, tenant: &str) -> pb::Lease {
    StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url(node))
            .unwrap()
            .connect_lazy(),
    )
    .attach(pb::ConnectRequest {
        station_id: fp.into(),
        fingerprint: fp.into(),
        components: vec!["antivirus".into()],
        tenant: tenant.into(),
        settings_version: 0,
    })
    .await
    .expect("station rpc")
    .into_inner()
}

async fn release(c: &TestCluster, node: &str, lease: &pb::Lease, fp: &str) {
    StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url(node))
            .unwrap()
            .connect_lazy(),
    )
    .release(pb::ReleaseRequest {
        lease_id: lease.lease_id.clone(),
        fingerprint: fp.into(),
    })
    .await
    .expect("release");
}

async fn add_activation(
    c: &TestCluster,
    node: &str,
    file: &keyfed_core::KeyFile,
    mode: &str,
) -> Result<pb::KeyInfo, tonic::Status> {
    c.admin(node)
        .await
        .add_key(pb::AddKeyRequest {
            key_file: file.render(),
            activation: mode.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e01_key_expires_at_midnight_utc_after_its_expiry_date() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 5, "2026-12-31");
    c.add("main", &k).await;
    c.clock.set(at("2026-12-31T23:59:59Z"));
    let l = connect(&c, "main", "pc-1", "").await;
    assert!(l.licensed, "{}", l.reason);
    assert_eq!(
        (l.key_state.as_str(), l.key_expires.as_str()),
        ("active", "2026-12-31")
    );
    c.clock.set(at("2027-01-01T00:00:00Z"));
    assert_eq!(
        c.key("main", &k.key.id).await.unwrap().state,
        "expired-grace"
    );
    let refused = connect(&c, "main", "pc-2", "").await;
    assert!(!refused.licensed);
    assert!(
        refused.reason.contains("expired-grace"),
        "{}",
        refused.reason
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e02_warned_30_days_before_on_expiry_and_at_suspension_each_once() {
    let mut c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 5, "2027-01-31");
    c.add("main", &k).await;
    let id = k.key.id.clone();
    // the key expires 2027-02-01T00:00Z; 30 days before is 2027-01-02
    c.clock.set(at("2027-01-02T00:00:00Z"));
    eventually("the 30-day warning", || async {
        has_event(&c.notifications("main").await, "key-expires-soon", &id)
    })
    .await;
    c.clock.set(at("2027-01-20T00:00:00Z"));
    c.stop("main").await;
    c.restart("main").await;
    c.clock.set(at("2027-02-01T00:00:00Z"));
    eventually("the expiry warning", || async {
        has_event(&c.notifications("main").await, "key-expired", &id)
    })
    .await;
    c.clock.set(at("2027-02-08T00:00:00Z"));
    eventually("the suspension warning", || async {
        has_event(&c.notifications("main").await, "key-suspended", &id)
    })
    .await;
    // many ticks and a restart later: each warning exactly once
    c.stop("main").await;
    c.restart("main").await;
    c.clock.set(at("2027-02-09T00:00:00Z"));
    let marker = c.issue(&["firewall"], 1, "2027-12-31");
    c.add("main", &marker).await;
    eventually("a later tick ran", || async {
        has_event(&c.notifications("main").await, "seats-low", &marker.key.id)
    })
    .await;
    let ns = c.notifications("main").await;
    for event in ["key-expires-soon", "key-expired", "key-suspended"] {
        assert_eq!(count(&ns, event, &id), 1, "{event}");
    }
    let expired = ns.iter().find(|n| n.event == "key-expired").unwrap();
    assert!(
        expired.message.contains("grace until 2027-02-08"),
        "{}",
        expired.message
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e03_grace_is_read_only_suspension_withdraws_seats_and_a_renewal_restores_them() {
    let c = TestCluster::start(Topology::new().root("main").child("branch", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2026-12-31");
    c.add("main", &k).await;
    let id = k.key.id.clone();
    c.assign("main", &id, "branch", 3).await.unwrap();
    eventually("branch holds the key", || c.has_key("branch", &id)).await;
    let mut agent = c.agent("main", "pc-1", &["antivirus"]);
    assert!(agent.sync().await.unwrap().licensed);
    // the vendor sells the renewal before expiry; nobody runs the renewal task
    let renewal = c.purchase(&id, &["antivirus"], 10, "2027-12-31");

    // grace: seats keep working, the key is read-only
    c.clock.set(at("2027-01-02T00:00:00Z"));
    let s = agent.sync().await.unwrap();
    assert!(s.licensed, "{}", s.reason);
    let e = c.assign("main", &id, "pc-9", 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    for part in [id.as_str(), "in grace", "2027-01-08"] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    let e = c.unassign_result("main", &id, "branch").await;
    assert!(e.is_ok(), "taking seats back is allowed in grace");
    c.assign("main", &id, "branch", 3).await.unwrap_err();

    // suspension: stations are told at their next contact, nothing is deleted
    c.clock.set(at("2027-01-08T00:00:00Z"));
    let s = agent.sync().await.unwrap();
    assert!(!s.licensed);
    assert!(s.reason.contains("suspended"), "{}", s.reason);
    let info = c.key("main", &id).await.unwrap();
    assert_eq!((info.state.as_str(), info.seats_assigned), ("suspended", 1));
    assert_eq!(c.station("main", "pc-1").await.unwrap().state, "withdrawn");
    let status = c
        .admin("main")
        .await
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.warnings.iter().any(|w| w.contains("suspended")),
        "{:?}",
        status.warnings
    );

    // the renewal, added by hand (the upstream offers it only until expiry), restores everything
    c.add("main", &renewal).await;
    let s = agent.sync().await.unwrap();
    assert!(s.licensed, "{}", s.reason);
    assert_eq!(s.key_id, renewal.key.id);
    let new = c.key("main", &renewal.key.id).await.unwrap();
    assert_eq!((new.state.as_str(), new.seats_assigned), ("active", 1));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e04_kinds_trial_extends_once_subscription_grace_and_monthly_metering_nfr() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let mut admin = c.admin("main").await;
    // trial: 30 days from activation (2026-11-23 .. 2026-12-22), once +30
    let trial = c.issue_kind(KeyKind::Trial, "acme", &["antivirus"], 5, "2027-11-01");
    let info = c.add("main", &trial).await;
    assert_eq!(info.entitled_until, "2026-12-22");
    let once = admin
        .extend_trial(pb::KeyId {
            id: trial.key.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (once.entitled_until.as_str(), once.trial_extended),
        ("2027-01-21", true)
    );
    let e = admin
        .extend_trial(pb::KeyId {
            id: trial.key.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("second extension is refused"),
        "{}",
        e.message()
    );
    let term = c.issue(&["firewall"], 5, "2027-11-01");
    c.add("main", &term).await;
    let e = admin
        .extend_trial(pb::KeyId {
            id: term.key.id.clone(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("only trial keys"), "{}", e.message());

    // subscriptions: usage metered per month; 30 days of grace
    let sub = c.issue_kind(KeyKind::Subscription, "acme", &["dlp"], 10, "2026-12-31");
    let nfr = c.issue_kind(KeyKind::Nfr, "acme", &["edr"], 2, "2026-12-31");
    c.add("main", &sub).await;
    c.add("main", &nfr).await;
    let dlp = |fp: &'static str| {
        let url = c.url("main");
        async move {
            StationClient::new(
                tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect_lazy(),
            )
            .attach(pb::ConnectRequest {
                station_id: fp.into(),
                fingerprint: fp.into(),
                components: vec!["dlp".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let a = dlp("pc-a").await;
    dlp("pc-b").await;
    assert!(a.licensed);
    release(&c, "main", &a, "pc-a").await;
    let report = || async {
        c.admin("main")
            .await
            .subscription_report(pb::Empty {})
            .await
            .unwrap()
            .into_inner()
            .subscriptions
    };
    eventually("this month's peak is 2 with 1 in use", || async {
        report().await.iter().any(|s| {
            s.key_id == sub.key.id && s.month == "2026-11" && s.month_peak == 2 && s.used == 1
        })
    })
    .await;
    c.clock.set(at("2027-01-05T00:00:00Z"));
    eventually("a new month meters from what is in use", || async {
        report()
            .await
            .iter()
            .any(|s| s.key_id == sub.key.id && s.month == "2027-01" && s.month_peak == 1)
    })
    .await;
    // on 2027-01-10 a term key would be suspended; a subscription is in grace, an NFR key stopped
    c.clock.set(at("2027-01-10T00:00:00Z"));
    assert_eq!(
        c.key("main", &sub.key.id).await.unwrap().state,
        "expired-grace"
    );
    assert_eq!(c.key("main", &nfr.key.id).await.unwrap().state, "suspended");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e05_activation_adds_seats_with_merged_dates_or_extends_the_term() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let today: NaiveDate = "2026-11-23".parse().unwrap();
    let k = c.issue(&["antivirus"], 10, "2027-11-22");
    c.add("main", &k).await;
    // a key of another license cannot be activated on it
    let stranger = c.issue(&["antivirus"], 1, "2027-11-22");
    let e = add_activation(&c, "main", &stranger, "add-seats")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    let e = add_activation(&c, "main", &stranger, "sideways")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());

    // add seats: 10 seats with 364 days left + 30 seats with 730 days left
    let more = c
        .upstream
        .issue_additional(&k.key.id, 30, KeyKind::Term, "2028-11-22".parse().unwrap())
        .unwrap();
    let info = add_activation(&c, "main", &more, "add-seats")
        .await
        .unwrap();
    let merged_days = (10 * 364 + 30 * 730) / 40; // the documented formula, floored
    assert_eq!(info.seats_entitled, 40);
    assert_eq!(info.seats_free, 40);
    assert_eq!(
        info.entitled_until,
        (today + Duration::days(merged_days)).to_string()
    );
    let absorbed = c.key("main", &more.key.id).await.unwrap();
    assert_eq!(
        (absorbed.state.as_str(), absorbed.merged_into.as_str()),
        ("activated", k.key.id.as_str())
    );
    assert!(has_event(
        &c.notifications("main").await,
        "key-activated",
        &k.key.id
    ));

    // extend: one more term of 365 days after the current end; 12 seats at once
    let next = c
        .upstream
        .issue_additional(&k.key.id, 12, KeyKind::Term, "2027-11-23".parse().unwrap())
        .unwrap();
    let before: NaiveDate = info.entitled_until.parse().unwrap();
    let info = add_activation(&c, "main", &next, "extend").await.unwrap();
    assert_eq!(info.seats_entitled, 12);
    assert_eq!(
        info.entitled_until,
        (before + Duration::days(365)).to_string()
    );
    // the same key again is a duplicate and changes nothing
    let e = add_activation(&c, "main", &next, "extend")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        c.key("main", &k.key.id).await.unwrap().entitled_until,
        info.entitled_until
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e06_over_allocation_is_flagged_holders_named_and_new_grants_refused() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 5, "2027-11-22");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    let mut leases = Vec::new();
    for i in 1..=5 {
        c.advance(Duration::minutes(1));
        leases.push(connect(&c, "main", &format!("pc-{i}"), "").await);
    }
    // a smaller count takes effect at once (e05 extend)
    let fewer = c
        .upstream
        .issue_additional(&id, 3, KeyKind::Term, "2027-11-23".parse().unwrap())
        .unwrap();
    add_activation(&c, "main", &fewer, "extend").await.unwrap();
    eventually("the node flags the over-allocation", || async {
        has_event(&c.notifications("main").await, "over-allocated", &id)
    })
    .await;
    let n = c.notifications("main").await;
    let flag = n.iter().find(|n| n.event == "over-allocated").unwrap();
    assert!(flag.message.contains("pc-4, pc-5"), "{}", flag.message);
    let info = c.key("main", &id).await.unwrap();
    assert_eq!(info.over_limit, ["pc-4", "pc-5"]);
    let status = c
        .admin("main")
        .await
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("over-allocated") && w.contains("pc-4")),
        "{:?}",
        status.warnings
    );
    // new grants refused; nothing revoked silently
    assert!(!connect(&c, "main", "pc-6", "").await.licensed);
    let e = c.assign("main", &id, "desk", 1).await.unwrap_err();
    assert!(e.message().contains("over-allocated"), "{}", e.message());
    assert_eq!(info.seats_assigned, 5);
    assert!(
        connect(&c, "main", "pc-5", "").await.licensed,
        "pc-5 keeps its seat until the administrator acts"
    );
    // fixed by releasing two seats
    release(&c, "main", &leases[4], "pc-5").await;
    release(&c, "main", &leases[3], "pc-4").await;
    eventually("the flag clears", || async {
        has_event(
            &c.notifications("main").await,
            "over-allocation-resolved",
            &id,
        )
    })
    .await;
    assert!(c.key("main", &id).await.unwrap().over_limit.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e07_tenants_hold_several_subscriptions_and_share_or_move_them_within_the_total() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let s1 = c.issue_kind(
        KeyKind::Subscription,
        "acme",
        &["antivirus"],
        10,
        "2027-11-22",
    );
    let s2 = c.issue_kind(
        KeyKind::Subscription,
        "acme",
        &["firewall"],
        5,
        "2027-05-31",
    );
    c.add("main", &s1).await;
    c.add("main", &s2).await;
    let mut admin = c.admin("main").await;
    let report =
        |admin: &mut keyfed_proto::v1::admin_client::AdminClient<tonic::transport::Channel>| {
            let mut a = admin.clone();
            async move {
                a.subscription_report(pb::Empty {})
                    .await
                    .unwrap()
                    .into_inner()
                    .subscriptions
            }
        };
    let rows = report(&mut admin).await;
    let acme: Vec<_> = rows.iter().filter(|r| r.customer == "acme").collect();
    assert_eq!(acme.len(), 2, "{rows:?}");
    let r2 = acme.iter().find(|r| r.key_id == s2.key.id).unwrap();
    assert_eq!(
        (r2.start.as_str(), r2.end.as_str(), r2.state.as_str()),
        ("2026-11-23", "2027-05-31", "active")
    );

    let share = |tenant: &str, seats: u32, mv: bool| pb::ShareSubscriptionRequest {
        key_id: s1.key.id.clone(),
        tenant: tenant.into(),
        seats,
        r#move: mv,
    };
    let beta = admin
        .share_subscription(share("beta", 4, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (beta.customer.as_str(), beta.seats, beta.role.as_str()),
        ("beta", 4, "shared")
    );
    let e = admin
        .share_subscription(share("gamma", 7, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("exceed the total"), "{}", e.message());
    // beta's stations use its 4 seats and no more
    for i in 1..=4 {
        assert!(
            connect(&c, "main", &format!("beta-{i}"), "beta")
                .await
                .licensed
        );
    }
    let fifth = connect(&c, "main", "beta-5", "beta").await;
    assert!(
        !fifth.licensed && fifth.reason.contains("tenant beta"),
        "{}",
        fifth.reason
    );
    // the owner keeps its 6
    for i in 1..=6 {
        assert!(
            connect(&c, "main", &format!("acme-{i}"), "").await.licensed,
            "acme-{i}"
        );
    }
    assert!(!connect(&c, "main", "acme-7", "").await.licensed);
    // beta's share cannot drop below what it uses
    let e = admin
        .share_subscription(share("beta", 2, false))
        .await
        .unwrap_err();
    assert!(e.message().contains("uses 4"), "{}", e.message());
    let rows = report(&mut admin).await;
    let row = |t: &str| {
        rows.iter()
            .find(|r| r.customer == t && r.key_id == s1.key.id)
            .cloned()
            .unwrap()
    };
    assert_eq!((row("acme").seats, row("acme").used), (6, 6));
    assert_eq!((row("beta").seats, row("beta").used), (4, 4));

    // moved whole to beta: it owns all 10 seats; the total never grows
    let moved = admin
        .share_subscription(share("beta", 0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (moved.role.as_str(), moved.seats, moved.total_seats),
        ("owner", 10, 10)
    );
    assert!(
        !connect(&c, "main", "beta-5", "beta").await.licensed,
        "all 10 seats are in use"
    );
    let total: u32 = report(&mut admin)
        .await
        .iter()
        .filter(|r| r.key_id == s1.key.id)
        .map(|r| r.seats)
        .sum();
    assert_eq!(total, 10);
    assert_eq!(c.key("main", &s1.key.id).await.unwrap().seats_assigned, 10);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b04_warned_when_nearly_used_up_and_for_each_refused_connection() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", |cfg| cfg.lifecycle.low_seat_percent = 35),
    )
    .await;
    let k = c.issue(&["antivirus"], 10, "2027-11-22");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    for i in 1..=7 {
        connect(&c, "main", &format!("pc-{i}"), "").await;
    }
    // 3 of 10 free: not under 3 seats, but 30% is under the configured 35%
    eventually("the low-seat warning", || async {
        has_event(&c.notifications("main").await, "seats-low", &id)
    })
    .await;
    for i in 8..=12 {
        connect(&c, "main", &format!("pc-{i}"), "").await;
    }
    let ns = c.notifications("main").await;
    assert_eq!(count(&ns, "seats-low", &id), 1, "once per episode");
    assert_eq!(
        ns.iter()
            .filter(|n| n.event == "connection-refused")
            .count(),
        2,
        "one per refused connection"
    );
    let low = ns.iter().find(|n| n.event == "seats-low").unwrap();
    assert!(low.message.contains("3 of 10"), "{}", low.message);
    c.shutdown().await;
}
