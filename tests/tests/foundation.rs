//! Issue 2's end-to-end slice over gRPC: a real upstream and a real node.
use keyfed_proto::v1 as pb;
use keyfed_tests::{TestCluster, Topology};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_add_assign_export_refuse_forgeries_and_survive_a_restart() {
    let mut c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let mut admin = c.admin("main").await;

    // issue upstream over gRPC, add to the node
    let mut up = keyfed_proto::v1::upstream_client::UpstreamClient::connect(format!(
        "http://{}",
        c.upstream_addr
    ))
    .await
    .unwrap();
    let text = up
        .issue_key(pb::IssueKeyRequest {
            customer: "acme".into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into(), "firewall".into()],
            seats: 10,
            kind: pb::KeyKind::Term.into(),
            expires: "2027-11-30".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .text;
    let info = admin
        .add_key(pb::AddKeyRequest {
            key_file: text.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = info.key.as_ref().unwrap().id.clone();
    assert_eq!((info.seats_free, info.state.as_str()), (10, "active"));
    assert_eq!(
        info.origin.unwrap().from,
        Some(pb::origin::From::Upstream(true))
    );

    // assign seats to a station
    let g = c.assign("main", &id, "station-1", 4).await.unwrap();
    assert_eq!((g.seats, g.kind), (4, pb::ObjectKind::Station as i32));

    // export gives back the exact bytes
    let exported = admin
        .export_key(pb::KeyId { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .text;
    assert_eq!(exported, text);

    // re-adding the same key is refused as a duplicate
    let dup = admin
        .add_key(pb::AddKeyRequest {
            key_file: text.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains(&id), "{}", dup.message());

    // a tampered copy is refused and the message mentions the signature
    let tampered = text.replace("seats: 10", "seats: 1000");
    let bad = admin
        .add_key(pb::AddKeyRequest {
            key_file: tampered,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("signature"), "{}", bad.message());

    // garbage and truncated files say what is wrong
    let garbage = admin
        .add_key(pb::AddKeyRequest {
            key_file: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(
        garbage.message().contains("line 1"),
        "{}",
        garbage.message()
    );
    let cut: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    let truncated = admin
        .add_key(pb::AddKeyRequest {
            key_file: cut,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        truncated.message().contains("truncated"),
        "{}",
        truncated.message()
    );

    // a key signed by a vendor this node does not trust
    let stranger = keyfed_core::VendorSigner::from_seed([7; 32]);
    let mut foreign = keyfed_core::KeyFile::parse(&text).unwrap().key;
    foreign.id = "k-foreign".into();
    let foreign = stranger.sign(foreign).unwrap().render();
    let unknown = admin
        .add_key(pb::AddKeyRequest {
            key_file: foreign,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert!(
        unknown.message().contains("not a trusted vendor key"),
        "{}",
        unknown.message()
    );

    // over the limit: FAILED_PRECONDITION saying how many are free, nothing changes
    let over = c.assign("main", &id, "station-2", 7).await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(
        over.message().contains("6 free seat(s) of 10"),
        "{}",
        over.message()
    );
    assert_eq!(
        c.keys("main").await.len(),
        1,
        "refused input changed nothing"
    );

    // restart on the same data dir: everything is still there
    c.stop("main").await;
    c.restart("main").await;
    let keys = c.keys("main").await;
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].seats_assigned, keys[0].seats_free), (4, 6));
    let ns = c.notifications("main").await;
    assert!(keyfed_tests::has_event(&ns, "key-added", &id));
    let objects = c.objects("main").await;
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].name, "station-1");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_on_the_node_port() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let channel = tonic::transport::Endpoint::from_shared(c.url("main"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keyfed.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    c.shutdown().await;
}

/// The harness itself: while a node is down its port is free, and another
/// socket may take it. The node then comes back on another port, and the
/// parent that dials it still reaches it through its link proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_port_was_taken_while_down_comes_back_elsewhere_and_stays_linked() {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.stop("child").await;
    let old = c.nodes["child"].config.listen;
    let squatter = std::net::TcpListener::bind(old).expect("take the stopped node's port");
    c.restart("child").await;
    let moved = c.nodes["child"].config.listen;
    assert_ne!(moved, old, "the node moved off the taken port");
    c.assign("main", &k.key.id, "child", 3)
        .await
        .expect("main reaches the moved child");
    keyfed_tests::eventually("the child holds the key main sent", || {
        c.has_key("child", &k.key.id)
    })
    .await;
    drop(squatter);
    c.shutdown().await;
}
