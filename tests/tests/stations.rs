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
