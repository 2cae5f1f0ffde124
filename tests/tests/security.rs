//! Issue 6 (b06): mutual TLS between nodes and to the upstream, admin
//! authentication with roles, and the audit trail — on real nodes.
use keyfed_node::auth::{sha256_hex, AdminToken, Role};
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use keyfed_proto::v1::federation_client::FederationClient;
use keyfed_tests::{eventually, has_event, TestCluster, Topology};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// Opens Federation.Link to `url` as `claimed`, with `tls`, and waits for the
/// other side's hello: Ok means the link was accepted.
async fn link_as(
    url: &str,
    tls: ClientTlsConfig,
    claimed: &str,
) -> Result<pb::Hello, tonic::Status> {
    let ep = Endpoint::from_shared(url.to_owned())
        .expect("url")
        .tls_config(tls)
        .expect("client TLS");
    let channel = ep
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
    let hello = pb::LinkFrame {
        frame: Some(pb::link_frame::Frame::Hello(pb::Hello {
            node_id: claimed.into(),
            protocol_version: keyfed_core::PROTOCOL_VERSION,
            role: "child".into(),
            ..Default::default()
        })),
    };
    // keep the outbound stream open while we wait for the answer
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.expect("queued");
    let mut inbound = FederationClient::new(channel)
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.next().await {
        Some(Ok(pb::LinkFrame {
            frame: Some(pb::link_frame::Frame::Hello(h)),
        })) => Ok(h),
        Some(Err(s)) => Err(s),
        other => Err(tonic::Status::unknown(format!("no hello: {other:?}"))),
    }
}

/// A single TLS root `main` that accepts a child called `child` (played by
/// the test itself).
async fn tls_main(tweak: impl Fn(&mut keyfed_node::NodeConfig) + 'static) -> TestCluster {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", move |cfg| {
                cfg.children.push("child".into());
                tweak(cfg);
            })
            .tls(),
    )
    .await;
    c.wait_healthy("main").await;
    c.tls.as_ref().expect("tls cluster").issue("child");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_tls_federation_links_and_a_key_travels() {
    let c = TestCluster::start(Topology::new().root("main").child("child", "main").tls()).await;
    c.wait_healthy("main").await;
    c.wait_healthy("child").await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "child", 3)
        .await
        .expect("seats to child");
    eventually("the key reaches child over TLS", || {
        c.has_key("child", &k.key.id)
    })
    .await;
    assert!(c.url("main").starts_with("https://"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_tls_link_without_client_certificate_is_refused() {
    // default: the handshake itself demands a client certificate
    let c = tls_main(|_| {}).await;
    let tls = c.tls.clone().unwrap();
    let url = c.url("main");
    let refused = link_as(&url, tls.client(None), "child").await;
    assert!(
        refused.is_err(),
        "a link without a certificate was accepted"
    );
    assert!(!c.peer_online("main", "child").await);
    // the same client with its certificate is let in (the refusal was the certificate)
    let h = link_as(&url, tls.client(Some("child")), "child")
        .await
        .expect("accepted");
    assert_eq!(h.node_id, "main");
    c.shutdown().await;

    // require_client_cert = false: stations may come without one, links may not
    let c = tls_main(|cfg| cfg.tls.as_mut().unwrap().require_client_cert = false).await;
    let tls = c.tls.clone().unwrap();
    let s = link_as(&c.url("main"), tls.client(None), "child")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("client certificate"),
        "{}",
        s.message()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_tls_link_with_certificate_from_another_ca_is_refused() {
    let c = tls_main(|_| {}).await;
    let tls = c.tls.clone().unwrap();
    let rogue = c.dir.path().join("rogue-pki");
    keyfed_node::pki::init(&rogue).unwrap();
    keyfed_node::pki::issue(&rogue, "child", &[], &[]).unwrap();
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(rogue.join("child.pem")).unwrap(),
        std::fs::read(rogue.join("child.key")).unwrap(),
    );
    // trusts the real CA (so the server is fine) but presents a rogue certificate
    let refused = link_as(&c.url("main"), tls.client(None).identity(identity), "child").await;
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
    assert!(!c.peer_online("main", "child").await);
    link_as(&c.url("main"), tls.client(Some("child")), "child")
        .await
        .expect("the federation CA's certificate for child is accepted");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_tls_link_whose_certificate_names_another_node_is_refused() {
    let c = tls_main(|_| {}).await;
    let tls = c.tls.clone().unwrap();
    tls.issue("mallory");
    let s = link_as(&c.url("main"), tls.client(Some("mallory")), "child")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("child"), "{}", s.message());
    assert!(!c.peer_online("main", "child").await);
    eventually(
        "main notifies its administrator of the refused link",
        || async { has_event(&c.notifications("main").await, "link-refused", "") },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_tls_upstream_calls_work_and_the_upstream_refuses_callers_without_a_certificate() {
    let c = TestCluster::start(Topology::new().root("main").tls()).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.purchase(&k.key.id, &["antivirus", "firewall"], 12, "2028-12-31");
    let out = c.renew("main", &k.key.id).await;
    assert_eq!(out[0].outcome, "distributed", "{out:?}");
    // no client certificate: no upstream
    let tls = c.tls.clone().unwrap();
    let ep = Endpoint::from_shared(format!("https://{}", c.upstream_addr))
        .unwrap()
        .tls_config(tls.client(None))
        .unwrap();
    let mut up = keyfed_proto::v1::upstream_client::UpstreamClient::new(ep.connect_lazy());
    assert!(up.public_key(pb::Empty {}).await.is_err());
    c.shutdown().await;
}

#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

type Client = AdminClient<InterceptedService<Channel, Bearer>>;

fn as_token(c: &TestCluster, token: Option<&str>) -> Client {
    let ep = c.endpoint(&c.url("main"), None);
    AdminClient::with_interceptor(ep.connect_lazy(), Bearer(token.map(str::to_owned)))
}

const OPS: &str = "ops-s3cret-token";
const VIEWER: &str = "viewer-s3cret-token";

/// Plaintext `main` with an admin token (stored as a hash) and a read-only one.
async fn with_tokens() -> TestCluster {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.admin_tokens = vec![
            AdminToken {
                name: "ops".into(),
                token_sha256: Some(sha256_hex(OPS)),
                role: Role::Admin,
                ..AdminToken::default()
            },
            AdminToken {
                name: "viewer".into(),
                token: Some(VIEWER.into()),
                role: Role::ReadOnly,
                ..AdminToken::default()
            },
        ];
    }))
    .await;
    c.wait_healthy("main").await;
    c
}

fn add(file: &keyfed_core::KeyFile) -> pb::AddKeyRequest {
    pb::AddKeyRequest {
        key_file: file.render(),
        ..Default::default()
    }
}

fn assign(key: &str, object: &str, seats: u32) -> pb::AssignSeatsRequest {
    pb::AssignSeatsRequest {
        key_id: key.into(),
        object: object.into(),
        seats,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_admin_without_a_token_or_with_a_wrong_one_is_unauthenticated() {
    let c = with_tokens().await;
    // tokens configured: even a loopback caller needs one
    let s = as_token(&c, None)
        .list_keys(pb::Empty {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = as_token(&c, Some("guess"))
        .list_keys(pb::Empty {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    let s = as_token(&c, Some("guess"))
        .add_key(add(&k))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    as_token(&c, Some(OPS))
        .list_keys(pb::Empty {})
        .await
        .expect("the admin token is accepted");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_read_only_token_lists_but_every_write_is_permission_denied() {
    let c = with_tokens().await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    let mut viewer = as_token(&c, Some(VIEWER));
    let mut ops = as_token(&c, Some(OPS));
    let s = viewer.add_key(add(&k)).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("AddKey"), "{}", s.message());
    ops.add_key(add(&k)).await.expect("the admin token writes");
    let keys = viewer
        .list_keys(pb::Empty {})
        .await
        .expect("read-only lists")
        .into_inner();
    assert_eq!(keys.keys.len(), 1);
    viewer
        .status(pb::Empty {})
        .await
        .expect("read-only reads status");
    let s = viewer
        .assign_seats(assign(&k.key.id, "st-1", 1))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("AssignSeats"), "{}", s.message());
    let s = viewer
        .check_for_updates(pb::CheckForUpdatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    ops.assign_seats(assign(&k.key.id, "st-1", 1))
        .await
        .expect("the admin assigns");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_audit_trail_lists_every_write_with_actor_and_outcome_and_never_a_secret() {
    let mut c = with_tokens().await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    let mut viewer = as_token(&c, Some(VIEWER));
    let mut ops = as_token(&c, Some(OPS));
    ops.add_key(add(&k)).await.unwrap();
    let _ = viewer
        .assign_seats(assign(&k.key.id, "st-1", 1))
        .await
        .unwrap_err();
    let _ = as_token(&c, Some("wrong-guess"))
        .delete_key(pb::KeyId {
            id: k.key.id.clone(),
        })
        .await
        .unwrap_err();
    ops.assign_seats(assign(&k.key.id, "st-1", 2))
        .await
        .unwrap();
    let _ = ops
        .assign_seats(assign(&k.key.id, "st-2", 9))
        .await
        .unwrap_err();
    viewer.list_keys(pb::Empty {}).await.unwrap();

    let list = |mut v: Client| async move {
        v.list_audit(pb::ListAuditRequest::default())
            .await
            .expect("read-only reads the audit trail")
            .into_inner()
            .entries
    };
    let entries = list(viewer.clone()).await;
    let rows: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| (e.actor.clone(), e.action.clone(), e.outcome.clone()))
        .collect();
    let row = |a: &str, b: &str, o: &str| (a.to_owned(), b.to_owned(), o.to_owned());
    assert_eq!(rows[0], row("ops", "AddKey", "ok"), "{entries:#?}");
    assert_eq!(rows[1], row("viewer", "AssignSeats", "PERMISSION_DENIED"));
    assert!(
        rows[2].0.starts_with("unknown (token sha256:"),
        "{:?}",
        rows[2]
    );
    assert_eq!(
        (rows[2].1.as_str(), rows[2].2.as_str()),
        ("DeleteKey", "UNAUTHENTICATED")
    );
    assert_eq!(rows[3], row("ops", "AssignSeats", "ok"));
    assert_eq!(rows[4], row("ops", "AssignSeats", "FAILED_PRECONDITION"));
    assert_eq!(entries.len(), 5, "reads are not audited: {entries:#?}");
    assert_eq!(entries[0].detail, format!("key {}", k.key.id));
    assert_eq!(
        entries[3].detail,
        format!("key {} object st-1 seats 2", k.key.id)
    );
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    let all = format!("{entries:?}");
    for secret in [OPS, VIEWER, "wrong-guess", "signature"] {
        assert!(
            !all.contains(secret),
            "the audit trail holds {secret:?}: {all}"
        );
    }
    // paging, and the trail survives a restart
    let later = viewer
        .list_audit(pb::ListAuditRequest {
            after_seq: entries[2].seq,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].seq, entries[3].seq);
    c.stop("main").await;
    c.restart("main").await;
    assert_eq!(list(as_token(&c, Some(VIEWER))).await, entries);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_admin_certificate_administers_a_tls_node_and_a_peer_certificate_only_forwards() {
    let c = tls_main(|cfg| {
        cfg.admin_tokens = vec![AdminToken {
            name: "ops".into(),
            token: Some(OPS.into()),
            role: Role::Admin,
            ..AdminToken::default()
        }];
    })
    .await;
    // the harness's client is the `admin` certificate, listed in admin_names
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    // a peer node's certificate is not an administrator
    let ep = c.endpoint(&c.url("main"), Some("child"));
    let s = AdminClient::new(ep.connect_lazy())
        .delete_key(pb::KeyId {
            id: k.key.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let audit = c
        .admin("main")
        .await
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(audit[0].actor, "cert:admin");
    assert_eq!(audit[1].actor, "node:child");
    assert_eq!(audit[1].outcome, "PERMISSION_DENIED");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_stations_reach_a_tls_node_with_a_federation_certificate() {
    let c = TestCluster::start(Topology::new().root("main").tls()).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let mut a = c.agent("main", "pc-tls", &["antivirus"]);
    let s = a.sync().await.expect("the agent speaks TLS");
    assert!(s.licensed, "{}", s.reason);
    // without a client certificate the handshake is refused; nothing is taken
    let mut bare = c.agent_with("main", "pc-bare", &["antivirus"], |cfg| {
        cfg.tls_identity = None
    });
    assert!(bare.sync().await.is_err());
    // and without the CA the agent says what is missing
    let mut no_ca = c.agent_with("main", "pc-noca", &["antivirus"], |cfg| cfg.tls_ca = None);
    let e = no_ca.sync().await.unwrap_err();
    assert!(e.to_string().contains("CA"), "{e}");
    assert_eq!(c.key("main", &k.key.id).await.unwrap().seats_assigned, 1);
    c.shutdown().await;
}
