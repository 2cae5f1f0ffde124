//! Stations taking seats over gRPC (first slice of the stations issue).
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{has_event, TestCluster, Topology};

fn attach(fp: &str, components: &[&str]) -> pb::ConnectRequest {
    pb::ConnectRequest {
        station_id: format!("host-{fp}"),
        fingerprint: fp.into(),
        components: components.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b02_a_fingerprint_reconnecting_a_thousand_times_holds_one_seat() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus", "firewall"], 3, "2027-12-31");
    c.add("main", &k).await;
    let mut st = StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url("main"))
            .unwrap()
            .connect_lazy(),
    );
    let first = st
        .attach(attach("fp-1", &["antivirus"]))
        .await
        .unwrap()
        .into_inner();
    assert!(first.licensed, "{}", first.reason);
    for _ in 0..1000 {
        let again = st
            .attach(attach("fp-1", &["antivirus"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.lease_id, first.lease_id);
    }
    let info = c.key("main", &k.key.id).await.unwrap();
    assert_eq!((info.seats_assigned, info.seats_free), (1, 2));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_refused_station_gets_a_seat_on_a_later_connect_once_one_frees() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 1, "2027-12-31");
    c.add("main", &k).await;
    let mut st = StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url("main"))
            .unwrap()
            .connect_lazy(),
    );
    let a = st
        .attach(attach("fp-a", &["antivirus"]))
        .await
        .unwrap()
        .into_inner();
    assert!(a.licensed);
    // no seat left, and a component no key covers: clear refusals, b04 warning
    let b = st
        .attach(attach("fp-b", &["antivirus"]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !b.licensed && b.reason.contains("no free seat"),
        "{}",
        b.reason
    );
    let x = st
        .attach(attach("fp-x", &["dlp"]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !x.licensed && x.reason.contains("covers dlp"),
        "{}",
        x.reason
    );
    assert!(has_event(
        &c.notifications("main").await,
        "connection-refused",
        ""
    ));
    // a seat frees; the refused station is checked again when it connects
    st.release(pb::ReleaseRequest {
        lease_id: a.lease_id.clone(),
        fingerprint: "fp-a".into(),
    })
    .await
    .unwrap();
    let b = st
        .attach(attach("fp-b", &["antivirus"]))
        .await
        .unwrap()
        .into_inner();
    assert!(b.licensed, "{}", b.reason);
    let renewed = st
        .renew(pb::RenewRequest {
            lease_id: b.lease_id.clone(),
            fingerprint: "fp-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.licensed);
    let gone = st
        .renew(pb::RenewRequest {
            lease_id: a.lease_id.clone(),
            fingerprint: "fp-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!gone.licensed);
    c.shutdown().await;
}

fn count(ns: &[pb::Notification], event: &str) -> usize {
    ns.iter().filter(|n| n.event == event).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o02_offline_station_licensed_at_29_days_unlicensed_at_31_and_back_by_itself() {
    let mut c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let mut a = c.agent("main", "pc-1", &["antivirus"]);
    let first = a.sync().await.expect("node reachable");
    assert!(first.licensed, "{}", first.reason);
    assert_eq!(first.key_id, k.key.id);

    // o01: the node goes away; the station keeps working and queues reports
    c.stop("main").await;
    assert!(a.record("scan: clean").unwrap());
    assert!(a.record("inventory: 3 apps").unwrap());
    assert!(a.sync().await.is_err(), "the node is down");
    assert!(a.licensed());
    c.advance(chrono::Duration::days(29));
    assert!(
        a.licensed(),
        "29 days without contact: still licensed (o02)"
    );
    c.advance(chrono::Duration::days(2));
    let s = a.status();
    assert!(!s.licensed, "31 days without contact: unlicensed (o02)");
    assert!(s.reason.contains("offline validity"), "{}", s.reason);
    assert_eq!(s.queued, 2);

    // contact returns: the agent's own loop licenses it again and delivers
    // the queued reports, with no operator action
    c.restart("main").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let status = a.spawn(std::time::Duration::from_millis(20), stop.clone());
    keyfed_tests::eventually("the agent is licensed again and its queue is empty", || {
        let s = status.borrow().clone();
        async move { s.licensed && s.queued == 0 && s.delivered == 2 }
    })
    .await;
    stop.cancel();
    let st = c.station("main", "pc-1").await.unwrap();
    assert_eq!((st.state.as_str(), st.reports), ("licensed", 2));
    let info = c.key("main", &k.key.id).await.unwrap();
    assert_eq!(info.seats_assigned, 1, "still one seat (b02)");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o01_reports_resent_after_a_lost_answer_count_once() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let mut st = StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url("main"))
            .unwrap()
            .connect_lazy(),
    );
    // unknown stations cannot report
    let e = st
        .report(pb::ReportBatch {
            fingerprint: "stranger".into(),
            reports: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    st.attach(attach("pc-9", &["antivirus"])).await.unwrap();
    let batch = pb::ReportBatch {
        fingerprint: "pc-9".into(),
        reports: (1..=3)
            .map(|i| pb::StationReport {
                report_id: format!("pc-9-{i}"),
                at: keyfed_tests::START.into(),
                body: format!("report {i}"),
            })
            .collect(),
    };
    let first = st.report(batch.clone()).await.unwrap().into_inner();
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    // the agent never saw the answer and sends the same batch again
    let again = st.report(batch).await.unwrap().into_inner();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    assert_eq!(c.station("main", "pc-9").await.unwrap().reports, 3);
    // bad input changes nothing
    let e = st
        .report(pb::ReportBatch {
            fingerprint: "pc-9".into(),
            reports: vec![pb::StationReport {
                report_id: String::new(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(c.station("main", "pc-9").await.unwrap().reports, 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o04_full_queue_stops_collecting_or_drops_the_oldest() {
    use keyfed_core::station::QueueFullPolicy;
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let mut stop = c.agent_with("main", "pc-stop", &["antivirus"], |cfg| {
        cfg.queue_capacity = 3;
        cfg.queue_full = QueueFullPolicy::StopCollecting;
    });
    let mut drop = c.agent_with("main", "pc-drop", &["antivirus"], |cfg| {
        cfg.queue_capacity = 3;
        cfg.queue_full = QueueFullPolicy::DropOldest;
    });
    for i in 1..=5 {
        stop.record(&format!("r{i}")).unwrap();
        drop.record(&format!("r{i}")).unwrap();
    }
    let bodies = |a: &keyfed_agent::Agent| -> Vec<String> {
        a.state().queue.peek(10).map(|r| r.body.clone()).collect()
    };
    assert_eq!(bodies(&stop), ["r1", "r2", "r3"]);
    assert_eq!(bodies(&drop), ["r3", "r4", "r5"]);
    assert_eq!((stop.status().lost, drop.status().lost), (2, 2));
    for a in [&mut stop, &mut drop] {
        let s = a.sync().await.unwrap();
        assert_eq!((s.queued, s.delivered), (0, 3));
    }
    assert_eq!(c.station("main", "pc-stop").await.unwrap().reports, 3);
    assert_eq!(c.station("main", "pc-drop").await.unwrap().reports, 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o05_settings_changed_while_offline_arrive_on_reconnect() {
    let mut c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.stations.settings = "scan = \"weekly\"".into()
    }))
    .await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let mut a = c.agent("main", "pc-1", &["antivirus"]);
    let s = a.sync().await.unwrap();
    assert_eq!(
        (s.settings.as_str(), s.settings_version),
        ("scan = \"weekly\"", 1)
    );
    c.stop("main").await;
    assert!(a.sync().await.is_err());
    c.restart("main").await;
    let changed = c
        .admin("main")
        .await
        .set_settings(pb::StationSettings {
            settings: "scan = \"daily\"".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.version, 2);
    // still offline from the station's side: it works with what it had
    assert_eq!(a.status().settings, "scan = \"weekly\"");
    let s = a.sync().await.unwrap();
    assert_eq!(
        (s.settings.as_str(), s.settings_version),
        ("scan = \"daily\"", 2)
    );
    // the cached settings survive an agent restart
    drop(a);
    let a = c.agent("main", "pc-1", &["antivirus"]);
    assert_eq!(a.status().settings, "scan = \"daily\"");
    assert_eq!(c.station("main", "pc-1").await.unwrap().settings_version, 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o03_commands_for_offline_objects_are_kept_30_days_then_dropped_and_listed() {
    let mut c = TestCluster::start(Topology::new().root("main").child("branch", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let mut a1 = c.agent("main", "pc-1", &["antivirus"]);
    let mut a2 = c.agent("main", "pc-2", &["antivirus"]);
    a1.sync().await.unwrap();
    a2.sync().await.unwrap();
    let mut admin = c.admin("main").await;
    let queue = |object: &str, command: &str| pb::QueueCommandRequest {
        object: object.into(),
        command: command.into(),
    };
    // bad targets are refused with the reason
    let e = admin
        .queue_command(queue("nobody", "scan"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let e = admin.queue_command(queue("pc-1", " ")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // a linked child gets its command at once
    admin
        .queue_command(queue("branch", "check-for-updates"))
        .await
        .unwrap();
    keyfed_tests::eventually("the child has the command", || async {
        c.notifications("branch")
            .await
            .iter()
            .any(|n| n.event == "command-received" && n.message.contains("check-for-updates"))
    })
    .await;
    keyfed_tests::eventually("the parent sees it delivered", || async {
        c.commands("main")
            .await
            .iter()
            .any(|x| x.object == "branch" && x.state == "delivered")
    })
    .await;

    // the child goes offline; stations are silent
    c.stop("branch").await;
    admin
        .queue_command(queue("pc-1", "scan-now"))
        .await
        .unwrap();
    admin
        .queue_command(queue("pc-2", "update-definitions"))
        .await
        .unwrap();
    admin
        .queue_command(queue("branch", "rotate-logs"))
        .await
        .unwrap();
    let pending = c.commands("main").await;
    assert_eq!(
        pending.iter().filter(|x| x.state == "pending").count(),
        3,
        "{pending:?}"
    );

    // day 29: pc-1 comes back and gets its command
    c.advance(chrono::Duration::days(29));
    let s = a1.sync().await.unwrap();
    assert!(s.licensed);
    assert_eq!(a1.state().commands, ["scan-now"]);
    // day 31: the rest is dropped, and the administrator can see which
    c.advance(chrono::Duration::days(2));
    keyfed_tests::eventually("undelivered commands are dropped", || async {
        c.commands("main")
            .await
            .iter()
            .filter(|x| x.state == "dropped")
            .count()
            == 2
    })
    .await;
    let all = c.commands("main").await;
    let state_of = |cmd: &str| all.iter().find(|x| x.command == cmd).unwrap().state.clone();
    assert_eq!(state_of("scan-now"), "delivered");
    assert_eq!(state_of("update-definitions"), "dropped");
    assert_eq!(state_of("rotate-logs"), "dropped");
    assert_eq!(count(&c.notifications("main").await, "command-dropped"), 2);
    // a dropped command never arrives later
    a2.sync().await.unwrap();
    assert!(a2.state().commands.is_empty());
    c.restart("branch").await;
    c.wait_linked().await;
    assert!(!c
        .notifications("branch")
        .await
        .iter()
        .any(|n| n.message.contains("rotate-logs")));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b03_a_station_silent_for_90_days_retires_and_comes_back_to_life() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 1, "2027-12-31");
    c.add("main", &k).await;
    let mut old = c.agent("main", "pc-old", &["antivirus"]);
    assert!(old.sync().await.unwrap().licensed);
    c.advance(chrono::Duration::days(89));
    let mut other = c.agent("main", "pc-new", &["antivirus"]);
    assert!(
        !other.sync().await.unwrap().licensed,
        "89 days: the seat is still pc-old's"
    );
    c.advance(chrono::Duration::days(2));
    keyfed_tests::eventually("pc-old retires", || async {
        c.station("main", "pc-old")
            .await
            .is_some_and(|s| s.state == "retired")
    })
    .await;
    assert!(has_event(
        &c.notifications("main").await,
        "stations-retired",
        ""
    ));
    assert_eq!(c.key("main", &k.key.id).await.unwrap().seats_assigned, 0);
    // the freed seat serves another station
    assert!(other.sync().await.unwrap().licensed);
    // pc-old returns: its record is alive again, and it waits for a seat
    let back = old.sync().await.unwrap();
    assert!(
        !back.licensed && back.reason.contains("no free seat"),
        "{}",
        back.reason
    );
    let rec = c.station("main", "pc-old").await.unwrap();
    assert_eq!(
        (rec.state.as_str(), rec.retired_at.as_str()),
        ("unlicensed", "")
    );
    assert!(has_event(
        &c.notifications("main").await,
        "station-returned",
        ""
    ));
    other.release().await.unwrap();
    assert!(old.sync().await.unwrap().licensed);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b02_a_station_reaching_two_neighbors_never_holds_two_seats() {
    let c = TestCluster::start(Topology::new().root("main").neighbor("east", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "east", 3).await.unwrap();
    keyfed_tests::eventually("east holds lent seats", || c.has_key("east", &id)).await;
    let used = |node: &'static str| {
        let id = id.clone();
        let c = &c;
        async move { c.key(node, &id).await.map_or(0, |k| k.seats_assigned) }
    };

    // pc-1 holds a seat at main, then reaches east too
    let mut at_main = c.agent("main", "pc-1", &["antivirus"]);
    assert!(at_main.sync().await.unwrap().licensed);
    let mut at_east = c.agent_with("east", "pc-1", &["antivirus"], |cfg| {
        cfg.state_dir = cfg.state_dir.with_file_name("pc-1-east");
    });
    at_east.sync().await.unwrap();
    keyfed_tests::eventually("east gives the second seat back", || async {
        used("east").await == 0
            && has_event(&c.notifications("east").await, "duplicate-station", &id)
    })
    .await;
    let again = at_east.sync().await.unwrap();
    assert!(!again.licensed);
    assert!(again.reason.contains("through main"), "{}", again.reason);
    assert_eq!(used("east").await, 0);
    assert_eq!(
        used("main").await,
        3 + 1,
        "east's 3 lent seats and pc-1's one"
    );

    // pc-2 starts at east; main then refuses it a second seat until east lets go
    let mut east2 = c.agent("east", "pc-2", &["antivirus"]);
    assert!(east2.sync().await.unwrap().licensed);
    let mut main2 = c.agent_with("main", "pc-2", &["antivirus"], |cfg| {
        cfg.state_dir = cfg.state_dir.with_file_name("pc-2-main");
    });
    // main learns of the seat once east's claim is delivered (acked)
    keyfed_tests::eventually("east's claim reached main", || async {
        let peers = c
            .admin("east")
            .await
            .list_peers(pb::Empty {})
            .await
            .unwrap()
            .into_inner();
        peers
            .peers
            .iter()
            .any(|p| p.node_id == "main" && p.outbox_depth == 0)
    })
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let s = main2.sync().await.unwrap();
        assert!(!s.licensed, "main must not give pc-2 a second seat");
        if s.reason.contains("through east") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "main never learned of pc-2's seat at east"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(used("main").await, 4);
    east2.release().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while !main2.sync().await.unwrap().licensed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "main never gave pc-2 a seat after east released it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b03_a_station_that_keeps_in_touch_never_retires() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k = c.issue(&["antivirus"], 2, "2027-12-31");
    c.add("main", &k).await;
    let mut a = c.agent("main", "pc-1", &["antivirus"]);
    for _ in 0..4 {
        assert!(a.sync().await.unwrap().licensed);
        // renewals within the hour answer from the store; the contact counts all the same
        assert!(a.sync().await.unwrap().licensed);
        c.advance(chrono::Duration::days(60));
    }
    // 240 days in all, never 90 silent; one more tick's sweep sees the same
    assert!(a.sync().await.unwrap().licensed);
    let marker = c.issue(&["firewall"], 1, "2027-12-31");
    c.add("main", &marker).await;
    keyfed_tests::eventually("a later tick ran", || async {
        has_event(&c.notifications("main").await, "seats-low", &marker.key.id)
    })
    .await;
    assert_eq!(c.station("main", "pc-1").await.unwrap().state, "licensed");
    assert!(!has_event(
        &c.notifications("main").await,
        "stations-retired",
        ""
    ));
    c.shutdown().await;
}
