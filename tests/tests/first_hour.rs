//! The operator's first hour on real nodes: file errors that name the file
//! and its setting, the client-certificate policy per service, and one
//! object count shared by `status` and `objects`.
use keyfed_node::tls::ClientCert;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{TestCluster, Topology};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_data_dir_that_cannot_be_created_is_named_with_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let cfg = keyfed_node::NodeConfig {
        data_dir: file.join("data"),
        ..keyfed_node::NodeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock: keyfed_core::SharedClock = Arc::new(keyfed_core::SystemClock);
    let e = keyfed_node::run(cfg, listener, clock, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&file.join("data").display().to_string()) && e.contains("data_dir"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_tls_file_is_named_with_its_setting() {
    let data = tempfile::tempdir().unwrap();
    let cfg = keyfed_node::NodeConfig {
        tls: Some(keyfed_node::tls::TlsConfig {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/main.pem".into(),
            key: "/nonexistent/main.key".into(),
            ..keyfed_node::tls::TlsConfig::default()
        }),
        data_dir: data.path().to_owned(),
        ..keyfed_node::NodeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock: keyfed_core::SharedClock = Arc::new(keyfed_core::SystemClock);
    let e = keyfed_node::run(cfg, listener, clock, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/main.pem") && e.contains("tls.cert"),
        "{e}"
    );
}

async fn ping(c: &TestCluster, node: &str, cert: Option<&str>) -> Result<(), tonic::Status> {
    let channel = c
        .endpoint(&c.url(node), cert)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    StationClient::new(channel)
        .ping(pb::PingRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_station_service_demands_a_client_certificate_unless_its_policy_is_optional() {
    let c = TestCluster::start(
        Topology::new()
            .root("strict")
            .root("lax")
            .tweak("lax", |cfg| {
                let t = cfg.tls.as_mut().unwrap();
                t.station_client_cert = Some(ClientCert::Optional);
            })
            .tls(),
    )
    .await;
    c.wait_healthy("strict").await;
    c.wait_healthy("lax").await;
    c.tls.as_ref().unwrap().issue("pc-1");
    let refused = ping(&c, "strict", None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("station_client_cert"),
        "{}",
        refused.message()
    );
    ping(&c, "strict", Some("pc-1"))
        .await
        .expect("with a certificate");
    ping(&c, "lax", None)
        .await
        .expect("optional: no certificate needed");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_exactly_the_objects_that_objects_lists() {
    // a child that holds no seats yet, a station, and a station waiting for seats
    let c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 3, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "pc-1", 2).await.unwrap();
    let mut agent = c.agent("main", "pc-2", &["antivirus"]);
    let _ = agent.sync().await;
    let mut agent = c.agent("main", "pc-3", &["antivirus"]);
    let _ = agent.sync().await;
    let listed = c.objects("main").await.len();
    let status = c
        .admin("main")
        .await
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.objects as usize, listed, "status and objects agree");
    assert!(listed >= 2, "{listed}");
    c.shutdown().await;
}
