//! Usage telemetry and compliance (t01-t03) on real nodes and a real upstream
//! over gRPC, with the shared manual clock.
use chrono::Duration;
use keyfed_core::telemetry::{build_report, NodeIdentity, SignedReport};
use keyfed_core::{Clock, KeyFile, KeyKind};
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, start_time, TestCluster, Topology};
use tonic::Code;

fn issue_for(c: &TestCluster, customer: &str, seats: u32) -> KeyFile {
    c.upstream
        .issue(keyfed_gus::IssueRequest {
            customer: customer.into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into()],
            seats,
            kind: KeyKind::Term,
            expires: "2028-12-31".parse().unwrap(),
        })
        .unwrap()
}

async fn status(c: &TestCluster, node: &str) -> pb::TelemetryStatusReply {
    c.admin(node)
        .await
        .telemetry_status(pb::Empty {})
        .await
        .expect("telemetry status")
        .into_inner()
}

async fn export(c: &TestCluster, node: &str) -> String {
    c.admin(node)
        .await
        .export_telemetry(pb::Empty {})
        .await
        .expect("export")
        .into_inner()
        .text
}

async fn upload(
    c: &TestCluster,
    node: &str,
    text: &str,
) -> Result<pb::TelemetryReceipt, tonic::Status> {
    c.admin(node)
        .await
        .upload_telemetry(pb::TelemetryFile { text: text.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn submit(c: &TestCluster, text: &str) -> Result<pb::TelemetryAck, tonic::Status> {
    c.upstream_client()
        .submit_telemetry(pb::TelemetrySubmission { text: text.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn compliance(c: &TestCluster, customer: &str) -> pb::CustomerCompliance {
    c.upstream_client()
        .compliance(pb::ComplianceRequest {
            customer: customer.into(),
        })
        .await
        .expect("compliance")
        .into_inner()
        .customers
        .remove(0)
}

fn report(text: &str) -> keyfed_core::telemetry::Report {
    SignedReport::parse(text)
        .expect("the upstream keeps valid text")
        .report
}

fn accepted_text(c: &TestCluster, id: &str) -> String {
    c.upstream
        .report_text(id)
        .unwrap()
        .expect("the upstream holds the report")
}

fn count(ns: &[pb::Notification], event: &str) -> usize {
    ns.iter().filter(|n| n.event == event).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_automatic_report_is_signed_by_the_node_identity_and_accepted() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    // the first report goes out on the first tick after install
    eventually("main's first report is accepted", || async {
        !status(&c, "main").await.last_accepted.is_empty()
    })
    .await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "st-1", 3).await.unwrap();
    c.assign("main", &k.key.id, "st-2", 2).await.unwrap();
    let first = status(&c, "main").await.last_accepted_report_id;
    c.advance(Duration::days(1));
    eventually("the daily report is accepted", || async {
        status(&c, "main").await.last_accepted_report_id != first
    })
    .await;
    let s = status(&c, "main").await;
    let r1 = report(&accepted_text(&c, &s.last_accepted_report_id));
    let line = r1
        .lines
        .iter()
        .find(|l| l.key == k.key.id)
        .expect("a line per key");
    assert_eq!(
        (line.node.as_str(), line.held, line.used, line.peak),
        ("main", 10, 5, 5)
    );
    assert_eq!(line.customer, "acme");
    assert_eq!(r1.node, "main");
    assert_eq!(r1.period_end, start_time() + Duration::days(1));
    // signed by the node's own identity, which the upstream pinned
    assert_eq!(s.public_key.len(), 64);
    assert_eq!(
        c.upstream.node_public_key("main").unwrap(),
        Some(s.public_key.clone())
    );
    let parsed = SignedReport::parse(&accepted_text(&c, &s.last_accepted_report_id)).unwrap();
    assert_eq!(parsed.public_key, s.public_key);

    // usage drops; the next report still shows the peak since the last one
    c.unassign("main", &k.key.id, "st-2").await;
    c.advance(Duration::days(1));
    eventually("the next daily report is accepted", || async {
        status(&c, "main").await.last_accepted_report_id != s.last_accepted_report_id
    })
    .await;
    let s2 = status(&c, "main").await;
    let r2 = report(&accepted_text(&c, &s2.last_accepted_report_id));
    let line = r2.lines.iter().find(|l| l.key == k.key.id).unwrap();
    assert_eq!((line.used, line.peak), (3, 5));
    assert_eq!(r2.period_start, r1.period_end, "periods follow each other");
    assert_eq!(
        s2.next_due,
        keyfed_node::convert::ts(r2.period_end + Duration::days(90))
    );
    assert_eq!(s2.days_left, 90);

    // another identity claiming to be main is refused, and nothing changes
    let before = c.upstream.reports_from("main").unwrap();
    let forged = NodeIdentity::from_seed([9; 32])
        .sign(build_report(
            "tr-forged",
            "main",
            "0.1.0",
            start_time(),
            start_time(),
            c.clock.now(),
            &[],
            &Default::default(),
            &[],
        ))
        .unwrap()
        .render();
    let err = submit(&c, &forged).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("node main reported before with public key"),
        "{}",
        err.message()
    );
    assert_eq!(c.upstream.reports_from("main").unwrap(), before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_failed_send_is_retried_and_the_next_report_covers_the_whole_period() {
    let mut c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    eventually("main's first report is accepted", || async {
        !status(&c, "main").await.last_accepted.is_empty()
    })
    .await;
    let before = status(&c, "main").await;
    c.stop_upstream();
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "st-1", 4).await.unwrap();
    c.advance(Duration::days(1));
    eventually("the send failed and was recorded", || async {
        !status(&c, "main").await.last_error.is_empty()
    })
    .await;
    let failed = status(&c, "main").await;
    assert_eq!(
        failed.last_accepted_report_id,
        before.last_accepted_report_id
    );
    assert_eq!(
        failed.period_start, before.last_accepted,
        "the period did not move"
    );
    assert_eq!(
        count(&c.notifications("main").await, "telemetry-send-failed"),
        1
    );

    c.restart_upstream().await;
    c.advance(Duration::hours(1)); // the retry interval
    eventually("the retried report is accepted", || async {
        let s = status(&c, "main").await;
        s.last_error.is_empty() && s.last_accepted_report_id != before.last_accepted_report_id
    })
    .await;
    let s = status(&c, "main").await;
    let r = report(&accepted_text(&c, &s.last_accepted_report_id));
    assert_eq!(
        keyfed_node::convert::ts(r.period_start),
        before.last_accepted,
        "the report covers the whole period since the last accepted one"
    );
    assert_eq!(
        r.period_end,
        start_time() + Duration::days(1) + Duration::hours(1)
    );
    let line = r.lines.iter().find(|l| l.key == k.key.id).unwrap();
    assert_eq!((line.used, line.peak), (4, 4));
    assert_eq!(
        c.upstream.reports_from("main").unwrap(),
        2,
        "nothing lost, nothing doubled"
    );
    c.shutdown().await;
}

/// `dark` is air-gapped; `leaf` has no upstream and forwards to its parent `hub`.
fn air_gapped() -> Topology {
    Topology::new()
        .root("hub")
        .child("leaf", "hub")
        .root("dark")
        .tweak("dark", |c| c.upstream = None)
        .tweak("leaf", |c| c.upstream = None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_air_gapped_export_then_upload_direct_and_through_nodes_makes_it_compliant() {
    let c = TestCluster::start(air_gapped()).await;
    c.wait_linked().await;
    let k = issue_for(&c, "globex", 5);
    c.add("dark", &k).await;
    c.assign("dark", &k.key.id, "st-1", 2).await.unwrap();
    let before = compliance(&c, "globex").await;
    assert_eq!(before.state, "non-compliant");
    assert_eq!(before.provisional_days_left, 30);
    assert_eq!(status(&c, "dark").await.mode, "manual");

    c.advance(Duration::days(2));
    let text = export(&c, "dark").await;
    assert!(text.starts_with("# keyfed telemetry report"));
    assert!(text.contains("node: dark\n") && text.contains("customer=globex held=5 used=2"));
    // through leaf (no upstream) to hub, then to the upstream
    let receipt = upload(&c, "leaf", &text).await.unwrap();
    assert_eq!(receipt.node_id, "dark");
    assert_eq!(receipt.via, "leaf > hub > upstream");
    assert!(!receipt.duplicate);
    let now = compliance(&c, "globex").await;
    assert_eq!(now.state, "compliant");
    assert_eq!(now.servers.len(), 1);
    assert_eq!(now.servers[0].node_id, "dark");
    // dark cannot know yet: the report stays listed as exported
    let s = status(&c, "dark").await;
    assert_eq!(s.exported_report_ids, vec![report(&text).id]);

    // a second export, straight to the upstream
    c.advance(Duration::days(1));
    let text2 = export(&c, "dark").await;
    assert_eq!(report(&text2).period_start, report(&text).period_start);
    let ack = submit(&c, &text2).await.unwrap();
    assert_eq!((ack.node_id.as_str(), ack.duplicate), ("dark", false));
    assert_eq!(c.upstream.reports_from("dark").unwrap(), 2);
    let now = compliance(&c, "globex").await;
    assert_eq!(
        now.servers[0].last_seen,
        keyfed_node::convert::ts(report(&text2).period_end)
    );

    // an air-gapped node cannot forward anything itself
    let err = upload(&c, "dark", &text2).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("neither an upstream nor a parent"),
        "{}",
        err.message()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_replayed_file_counts_once_and_a_tampered_file_changes_nothing() {
    let c = TestCluster::start(air_gapped()).await;
    c.wait_linked().await;
    let k = issue_for(&c, "globex", 5);
    c.add("dark", &k).await;
    c.assign("dark", &k.key.id, "st-1", 2).await.unwrap();
    c.advance(Duration::days(1));
    let text = export(&c, "dark").await;
    assert!(!upload(&c, "hub", &text).await.unwrap().duplicate);
    assert!(upload(&c, "hub", &text).await.unwrap().duplicate);
    assert!(upload(&c, "leaf", &text).await.unwrap().duplicate);
    assert!(submit(&c, &text).await.unwrap().duplicate);
    assert_eq!(c.upstream.reports_from("dark").unwrap(), 1, "counted once");
    let before = compliance(&c, "globex").await;

    c.advance(Duration::days(5));
    let tampered = export(&c, "dark").await.replace("used=2", "used=1");
    for via in ["hub", "leaf"] {
        let err = upload(&c, via, &tampered).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("signature does not verify")
                && err.message().contains("altered"),
            "{}",
            err.message()
        );
    }
    let err = submit(&c, &tampered).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("telemetry file refused"),
        "{}",
        err.message()
    );
    let truncated: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    let err = submit(&c, &truncated).await.unwrap_err();
    assert!(err.message().contains("truncated"), "{}", err.message());
    assert_eq!(
        c.upstream.reports_from("dark").unwrap(),
        1,
        "nothing changed"
    );
    assert_eq!(compliance(&c, "globex").await, before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_child_without_route_is_counted_through_its_parent() {
    let topo = Topology::new()
        .root("hub")
        .child("leaf", "hub")
        .tweak("leaf", |c| c.upstream = None);
    let c = TestCluster::start(topo).await;
    c.wait_linked().await;
    let k = issue_for(&c, "umbrella", 10);
    c.add("hub", &k).await;
    c.assign("hub", &k.key.id, "leaf", 4).await.unwrap();
    eventually("leaf holds the key", || c.has_key("leaf", &k.key.id)).await;
    c.assign("leaf", &k.key.id, "st-1", 2).await.unwrap();
    eventually("hub sees leaf's usage (b05)", || async {
        let rows = c
            .admin("hub")
            .await
            .usage(pb::UsageRequest {
                key_id: k.key.id.clone(),
                tree: true,
            })
            .await
            .unwrap()
            .into_inner()
            .rows;
        rows.iter().any(|r| r.node_id == "leaf" && r.used == 2)
    })
    .await;
    assert_eq!(status(&c, "leaf").await.mode, "through-parent");
    c.advance(Duration::days(1));
    eventually("the upstream knows leaf through hub's report", || async {
        compliance(&c, "umbrella")
            .await
            .servers
            .iter()
            .any(|s| s.node_id == "leaf" && s.reported_by == "hub" && s.current)
    })
    .await;
    let cc = compliance(&c, "umbrella").await;
    assert_eq!(cc.state, "compliant");
    let names: Vec<&str> = cc.servers.iter().map(|s| s.node_id.as_str()).collect();
    assert_eq!(names, ["hub", "leaf"]);
    assert_eq!(
        c.upstream.reports_from("leaf").unwrap(),
        0,
        "leaf never sent anything itself"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_first_report_due_in_30_days_with_a_warning_before_and_when_overdue() {
    let mut c = TestCluster::start(
        Topology::new()
            .root("dark")
            .tweak("dark", |c| c.upstream = None),
    )
    .await;
    c.wait_healthy("dark").await;
    let s = status(&c, "dark").await;
    assert_eq!(s.installed_at, keyfed_node::convert::ts(start_time()));
    assert_eq!(
        s.next_due,
        keyfed_node::convert::ts(start_time() + Duration::days(30))
    );
    assert_eq!(s.days_left, 30);
    assert!(s.last_accepted.is_empty());

    c.advance(Duration::days(24)); // 6 days left
    eventually("the due-soon warning", || async {
        count(&c.notifications("dark").await, "telemetry-due-soon") == 1
    })
    .await;
    assert_eq!(status(&c, "dark").await.days_left, 6);
    c.advance(Duration::days(3));
    c.advance(Duration::days(4)); // 1 day overdue
    eventually("the overdue warning", || async {
        count(&c.notifications("dark").await, "telemetry-overdue") == 1
    })
    .await;
    let ns = c.notifications("dark").await;
    assert_eq!(count(&ns, "telemetry-due-soon"), 1, "once");
    assert_eq!(status(&c, "dark").await.days_left, -1);

    // the administrator exports and uploads the file directly
    let text = export(&c, "dark").await;
    assert!(!submit(&c, &text).await.unwrap().duplicate);
    c.advance(Duration::days(1));
    let ns = c.notifications("dark").await;
    assert_eq!(count(&ns, "telemetry-overdue"), 1, "once");

    // dark gets a route: its next contact re-sends the exported file, which
    // the upstream already has, then the report since then
    c.stop("dark").await;
    let url = format!("http://{}", c.upstream_addr);
    c.nodes.get_mut("dark").unwrap().config.upstream = Some(url);
    c.restart("dark").await;
    eventually("dark learns its report was accepted", || async {
        let s = status(&c, "dark").await;
        s.exported_report_ids.is_empty() && s.last_error.is_empty() && s.days_left == 90
    })
    .await;
    let s = status(&c, "dark").await;
    assert_eq!(s.days_left, 90);
    assert_eq!(
        c.upstream.reports_from("dark").unwrap(),
        2,
        "the file counted once"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_customer_moves_compliant_partial_noncompliant_and_back() {
    let servers = ["s1", "s2", "s3"];
    let mut topo = Topology::new();
    for s in servers {
        topo = topo.root(s);
    }
    let mut c = TestCluster::start(topo).await;
    for s in servers {
        c.wait_healthy(s).await;
        // the first report (no keys yet) is out before the key arrives
        eventually(&format!("{s}'s first report is accepted"), || async {
            !status(&c, s).await.last_accepted.is_empty()
        })
        .await;
        let k = issue_for(&c, "initech", 5);
        c.add(s, &k).await;
    }
    let current = |n: usize| {
        let c = &c;
        async move {
            compliance(c, "initech")
                .await
                .servers
                .iter()
                .filter(|s| s.current)
                .count()
                == n
        }
    };
    assert_eq!(compliance(&c, "initech").await.state, "non-compliant");
    c.advance(Duration::days(1));
    eventually("every server reported", || current(3)).await;
    assert_eq!(compliance(&c, "initech").await.state, "compliant");

    c.stop("s3").await;
    c.advance(Duration::days(91)); // s3's last report is now 91 days old
    eventually("s1 and s2 report, s3 does not", || async {
        let cc = compliance(&c, "initech").await;
        let now = keyfed_node::convert::ts(c.clock.now());
        cc.state == "partial"
            && cc.missing_servers == ["s3"]
            && cc.servers.iter().filter(|s| s.last_seen == now).count() == 2
    })
    .await;

    c.stop("s1").await;
    c.stop("s2").await;
    c.advance(Duration::days(95)); // s1/s2's windows closed 5 days ago
    let cc = compliance(&c, "initech").await;
    assert_eq!(cc.state, "non-compliant");
    assert_eq!(cc.missing_servers, ["s1", "s2", "s3"]);
    assert_eq!(cc.provisional_days_left, 25);
    c.advance(Duration::days(10));
    assert_eq!(compliance(&c, "initech").await.provisional_days_left, 15);

    // exempt: set by the upstream's administrator, and undone
    let mut up = c.upstream_client();
    up.set_exempt(pb::SetExemptRequest {
        customer: "initech".into(),
        exempt: true,
    })
    .await
    .unwrap();
    assert_eq!(compliance(&c, "initech").await.state, "exempt");
    up.set_exempt(pb::SetExemptRequest {
        customer: "initech".into(),
        exempt: false,
    })
    .await
    .unwrap();
    assert_eq!(compliance(&c, "initech").await.state, "non-compliant");

    for s in servers {
        c.restart(s).await;
    }
    eventually(
        "reports resume and the customer is compliant again",
        || async {
            let cc = compliance(&c, "initech").await;
            cc.state == "compliant" && cc.missing_servers.is_empty()
        },
    )
    .await;
    c.shutdown().await;
}
