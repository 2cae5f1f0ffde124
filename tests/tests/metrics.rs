//! b06: Prometheus metrics scraped over HTTP from a running node.
use keyfed_tests::{eventually, metric, TestCluster, Topology};

fn with_metrics(cfg: &mut keyfed_node::NodeConfig) {
    cfg.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_metrics_expose_seats_links_outbox_and_rpc_latency() {
    let mut c = TestCluster::start(
        Topology::new()
            .root("main")
            .child("c", "main")
            .tweak("main", with_metrics),
    )
    .await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "c", 3).await.expect("granted");
    c.assign("main", &k.key.id, "pc-1", 2)
        .await
        .expect("a station seat");
    let err = c
        .assign("main", "no-such-key", "pc-2", 1)
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let outcomes = c.renew("main", &k.key.id).await;
    assert_eq!(outcomes[0].outcome, "nothing");
    eventually("c has its seats", || c.has_key("c", &k.key.id)).await;

    let id = &k.key.id;
    let seats = |text: &str, state: &str| {
        metric(
            text,
            &format!("keyfed_key_seats{{key_id=\"{id}\",state=\"{state}\"}}"),
        )
    };
    let (status, text) = c.scrape("main").await;
    assert_eq!(status, 200);
    assert_eq!(seats(&text, "held"), Some(10.0), "{text}");
    assert_eq!(seats(&text, "used"), Some(5.0), "{text}");
    assert_eq!(seats(&text, "free"), Some(5.0), "{text}");
    assert_eq!(
        metric(&text, "keyfed_peer_up{peer=\"c\",role=\"child\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "keyfed_renewal_outcomes_total{outcome=\"nothing\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "keyfed_renewal_outcomes_total{outcome=\"distributed\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "keyfed_notifications_total{event=\"key-added\"}"),
        Some(1.0)
    );
    assert!(metric(&text, "keyfed_station_records").is_some(), "{text}");
    for state in ["licensed", "unlicensed", "withdrawn", "retired"] {
        let series = format!("keyfed_stations{{state=\"{state}\"}}");
        assert!(metric(&text, &series).is_some(), "{series} in {text}");
    }
    // every RPC is counted by method and code, with its latency
    let add_ok = "{method=\"/keyfed.v1.Admin/AddKey\",code=\"OK\"}";
    assert_eq!(
        metric(&text, &format!("keyfed_rpc_duration_seconds_count{add_ok}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "keyfed_rpc_duration_seconds_bucket{le=\"+Inf\",method=\"/keyfed.v1.Admin/AddKey\",code=\"OK\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&text, &format!("keyfed_rpc_duration_seconds_sum{add_ok}")).unwrap() > 0.0);
    assert_eq!(
        metric(
            &text,
            "keyfed_rpc_duration_seconds_count{method=\"/keyfed.v1.Admin/AssignSeats\",code=\"NOT_FOUND\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "keyfed_rpc_duration_seconds_count{method=\"/keyfed.v1.Admin/AssignSeats\",code=\"OK\"}"
        ),
        Some(2.0)
    );
    assert!(text.contains("# TYPE keyfed_rpc_duration_seconds histogram"));
    // the real child's usage rollups are taken, not refused as rogue
    let ns = c.notifications("main").await;
    assert!(
        !ns.iter().any(|n| n.event == "peer-message-refused"),
        "{ns:#?}"
    );

    // the child goes away: its link is down and a changed grant waits in the outbox
    c.stop("c").await;
    c.assign("main", &k.key.id, "c", 4).await.expect("granted");
    eventually(
        "the scrape shows c down with one delivery queued",
        || async {
            let (_, text) = c.scrape("main").await;
            metric(&text, "keyfed_peer_up{peer=\"c\",role=\"child\"}") == Some(0.0)
                && metric(&text, "keyfed_outbox_depth{peer=\"c\"}") == Some(1.0)
                && seats(&text, "used") == Some(6.0)
        },
    )
    .await;
    c.restart("c").await;
    eventually("the outbox drains once c is back", || async {
        let (_, text) = c.scrape("main").await;
        metric(&text, "keyfed_peer_up{peer=\"c\",role=\"child\"}") == Some(1.0)
            && metric(&text, "keyfed_outbox_depth{peer=\"c\"}") == Some(0.0)
    })
    .await;

    let (status, body) = c.http_get("main", "/other").await;
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_station_states_and_notification_counts_follow_the_node() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", with_metrics)).await;
    let k = c.issue(&["antivirus"], 1, "2027-12-31");
    c.add("main", &k).await;
    let mut a = c.agent("main", "pc-1", &["antivirus"]);
    assert!(a.sync().await.expect("reachable").licensed);
    let mut b = c.agent("main", "pc-2", &["antivirus"]);
    assert!(
        !b.sync().await.expect("reachable").licensed,
        "one seat only"
    );
    let (_, text) = c.scrape("main").await;
    assert_eq!(metric(&text, "keyfed_station_records"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "keyfed_stations{state=\"licensed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "keyfed_stations{state=\"unlicensed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "keyfed_notifications_total{event=\"connection-refused\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "keyfed_rpc_duration_seconds_count{method=\"/keyfed.v1.Station/Renew\",code=\"OK\"}"
        ),
        Some(2.0),
        "{text}"
    );
    c.shutdown().await;
}
