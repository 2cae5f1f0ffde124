//! Hostile input (SPEC "What every part must also do", r13): oversized
//! requests, rollbacks and rogue peers get a clear refusal and change nothing.
use keyfed_node::config::NeighborConfig;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::federation_client::FederationClient;
use keyfed_proto::v1::link_frame::Frame;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{eventually, TestCluster, Topology};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

const TWO_MIB: usize = 2 * 1024 * 1024;

fn endpoint(c: &TestCluster, node: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(c.url(node))
        .expect("url")
        .connect_lazy()
}

/// What an observer can see of a node's seats: per key, assigned and free.
async fn seats(c: &TestCluster, node: &str) -> Vec<(String, u32, u32)> {
    let mut v: Vec<_> = c
        .keys(node)
        .await
        .into_iter()
        .map(|k| (k.key.unwrap().id, k.seats_assigned, k.seats_free))
        .collect();
    v.sort();
    v
}

fn refusals(ns: &[pb::Notification]) -> Vec<&pb::Notification> {
    ns.iter()
        .filter(|n| n.event == "peer-message-refused")
        .collect()
}

/// A hand-built Federation.Link client that says it is `node_id`.
struct FakePeer {
    out: mpsc::Sender<pb::LinkFrame>,
    inbound: Streaming<pb::LinkFrame>,
    node_id: String,
    seq: u64,
}

impl FakePeer {
    async fn link(c: &TestCluster, target: &str, node_id: &str) -> Result<Self, tonic::Status> {
        let (out, rx) = mpsc::channel(16);
        out.send(pb::LinkFrame {
            frame: Some(Frame::Hello(pb::Hello {
                node_id: node_id.into(),
                protocol_version: keyfed_core::PROTOCOL_VERSION,
                last_applied_seq: 0,
                accepts_donations: true,
                role: "child".into(),
                ..Default::default()
            })),
        })
        .await
        .expect("queue hello");
        let mut inbound = FederationClient::new(endpoint(c, target))
            .link(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = inbound.next().await.expect("a reply").expect("a frame");
        assert!(
            matches!(first.frame, Some(Frame::Hello(ref h)) if h.node_id == target),
            "the node answers with its hello: {first:?}"
        );
        Ok(Self {
            out,
            inbound,
            node_id: node_id.into(),
            seq: 0,
        })
    }

    /// Sends one delivery and waits for its ack (the node acks only after
    /// the delivery was applied, or refused, durably).
    async fn deliver(&mut self, body: pb::delivery::Body) {
        self.seq += 1;
        let seq = self.seq;
        self.out
            .send(pb::LinkFrame {
                frame: Some(Frame::Delivery(pb::Delivery {
                    seq,
                    message_id: format!("{}-{seq}", self.node_id),
                    body: Some(body),
                })),
            })
            .await
            .expect("link open");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.inbound.next())
                .await
                .expect("an ack within the deadline")
                .expect("link open")
                .expect("a frame");
            if let Some(Frame::Ack(a)) = frame.frame {
                if a.seq == seq {
                    return;
                }
            }
        }
    }
}

fn grant(key: &keyfed_core::KeyFile, seats: u32) -> pb::delivery::Body {
    pb::delivery::Body::Grant(pb::SeatGrant {
        key: Some(pb::KeyFile { text: key.render() }),
        seats,
        lent_until: String::new(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_oversized_requests_are_refused_on_admin_station_and_federation_and_change_nothing() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.children.push("c".into());
    }))
    .await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let before = (seats(&c, "main").await, c.notifications("main").await.len());
    // the codec says OUT_OF_RANGE; the Admin guard, which reads a write's
    // body to audit it, says RESOURCE_EXHAUSTED; both name the limit
    let too_large = |s: &tonic::Status| {
        matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted)
            && (s.message().contains("too large") || s.message().contains("larger than"))
            && s.message().contains("1048576")
    };

    // Admin
    let err = c
        .admin("main")
        .await
        .add_key(pb::AddKeyRequest {
            key_file: "x".repeat(TWO_MIB),
            ..Default::default()
        })
        .await
        .expect_err("a 2 MiB key file is refused");
    assert!(too_large(&err), "{err:?}");

    // Station
    let err = StationClient::new(endpoint(&c, "main"))
        .report(pb::ReportBatch {
            fingerprint: "pc-1".into(),
            reports: vec![pb::StationReport {
                report_id: "r1".into(),
                at: "2026-11-23T00:00:00Z".into(),
                body: "x".repeat(TWO_MIB),
            }],
        })
        .await
        .expect_err("a 2 MiB report batch is refused");
    assert!(too_large(&err), "{err:?}");

    // Federation: the first frame already is too large
    let (out, rx) = mpsc::channel(1);
    out.send(pb::LinkFrame {
        frame: Some(Frame::Hello(pb::Hello {
            node_id: "x".repeat(TWO_MIB),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let err = FederationClient::new(endpoint(&c, "main"))
        .link(ReceiverStream::new(rx))
        .await
        .expect_err("a 2 MiB link frame is refused");
    assert!(too_large(&err), "{err:?}");

    // ... and on an open link: the link is dropped, nothing is applied
    let peer = FakePeer::link(&c, "main", "c").await.expect("c links");
    peer.out
        .send(pb::LinkFrame {
            frame: Some(Frame::Delivery(pb::Delivery {
                seq: 1,
                message_id: "big".into(),
                body: Some(pb::delivery::Body::Usage(pb::UsageRollup {
                    keys: vec![],
                    lines: vec![pb::UsageLine {
                        node_id: "x".repeat(TWO_MIB),
                        ..Default::default()
                    }],
                })),
            })),
        })
        .await
        .unwrap();
    eventually(
        "the node drops the link with the oversized frame",
        || async { !c.peer_online("main", "c").await },
    )
    .await;

    let after = (seats(&c, "main").await, c.notifications("main").await.len());
    assert_eq!(before, after, "nothing changed");
    assert!(c.stations("main").await.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_rollback_refused_by_hand_even_after_the_newer_key_was_deleted() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let k1 = c.issue(&["antivirus"], 5, "2027-06-30");
    let k2 = c.purchase(&k1.key.id, &["antivirus"], 5, "2028-06-30");
    assert!(k2.key.serial > k1.key.serial);
    c.add("main", &k2).await;
    let add = |text: String| {
        let c = &c;
        async move {
            c.admin("main")
                .await
                .add_key(pb::AddKeyRequest {
                    key_file: text,
                    ..Default::default()
                })
                .await
        }
    };
    let err = add(k1.render()).await.expect_err("older serial refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("rollback"), "{}", err.message());

    c.admin("main")
        .await
        .delete_key(pb::KeyId {
            id: k2.key.id.clone(),
        })
        .await
        .expect("newer key deleted");
    let err = add(k1.render())
        .await
        .expect_err("deleting the newer key does not re-open the door");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("rollback") && err.message().contains(&k1.key.id),
        "{}",
        err.message()
    );
    assert!(c.keys("main").await.is_empty(), "nothing was added");
    // the newer key itself may come back
    c.add("main", &k2).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_rollback_refused_when_an_older_key_arrives_from_the_parent() {
    let c = TestCluster::start(Topology::new().root("main").child("c", "main")).await;
    c.wait_linked().await;
    let k1 = c.issue(&["antivirus"], 5, "2027-06-30");
    let k2 = c.purchase(&k1.key.id, &["antivirus"], 5, "2028-06-30");
    c.add("main", &k1).await;
    c.add("c", &k2).await;

    // the parent still hands out the old key: the child refuses it
    c.assign("main", &k1.key.id, "c", 2).await.expect("granted");
    eventually("c refuses the older key as a rollback", || async {
        refusals(&c.notifications("c").await)
            .iter()
            .any(|n| n.key_id == k1.key.id && n.message.contains("rollback"))
    })
    .await;
    assert!(!c.has_key("c", &k1.key.id).await);

    // still refused once the newer key is deleted
    c.admin("c")
        .await
        .delete_key(pb::KeyId {
            id: k2.key.id.clone(),
        })
        .await
        .expect("deleted");
    c.assign("main", &k1.key.id, "c", 3).await.expect("granted");
    eventually("c refuses the older key again after the delete", || async {
        refusals(&c.notifications("c").await)
            .iter()
            .filter(|n| n.key_id == k1.key.id && n.message.contains("rollback"))
            .count()
            == 2
    })
    .await;
    assert!(c.keys("c").await.is_empty(), "c holds no key");
    // r13: the refused seats go back to the parent, which no longer counts them
    eventually("main gets the refused seats back", || async {
        let k = c.key("main", &k1.key.id).await.expect("main keeps k1");
        k.seats_assigned == 0
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_rogue_peer_deliveries_are_refused_and_change_nothing() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.children.push("kid".into());
        cfg.neighbors.push(NeighborConfig {
            node_id: "nb".into(),
            address: None,
            allow_send: true,
            allow_receive: false,
        });
    }))
    .await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "pc-1", 2)
        .await
        .expect("a station seat");
    // a key the vendor really signed, but that main never got
    let other = c.issue(&["antivirus", "firewall"], 500, "2027-12-31");
    let seats_before = seats(&c, "main").await;
    let usage = || async {
        let mut rows: Vec<_> = c
            .admin("main")
            .await
            .usage(pb::UsageRequest {
                key_id: String::new(),
                tree: true,
            })
            .await
            .unwrap()
            .into_inner()
            .rows
            .into_iter()
            .map(|r| (r.node_id, r.key_id, r.seats, r.used))
            .collect();
        rows.sort();
        rows
    };
    let usage_before = usage().await;

    // an unknown node id is refused at hello
    let err = FakePeer::link(&c, "main", "mallory")
        .await
        .err()
        .expect("unknown node refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("mallory"), "{}", err.message());

    // a child claims to grant seats upward, renews a key it never got, and
    // reports usage of seats it was never granted
    let mut kid = FakePeer::link(&c, "main", "kid").await.expect("kid links");
    kid.deliver(grant(&other, 500)).await;
    kid.deliver(pb::delivery::Body::Renewed(pb::KeyRenewed {
        old_key_id: k.key.id.clone(),
        new_key: Some(pb::KeyFile {
            text: other.render(),
        }),
        seats: 500,
        lent_until: String::new(),
        ..Default::default()
    }))
    .await;
    kid.deliver(pb::delivery::Body::Usage(pb::UsageRollup {
        keys: vec![],
        lines: vec![pb::UsageLine {
            node_id: "kid".into(),
            key_id: k.key.id.clone(),
            seats: 8,
            used: 8,
            reported_at: String::new(),
        }],
    }))
    .await;
    kid.deliver(pb::delivery::Body::Command(pb::RemoteCommand {
        id: 1,
        command: "uninstall everything".into(),
        queued_at: String::new(),
    }))
    .await;
    // an edited key file: the vendor signature no longer holds
    let forged = other.render().replace("seats: 500\n", "seats: 5000\n");
    assert_ne!(forged, other.render());
    kid.deliver(pb::delivery::Body::Grant(pb::SeatGrant {
        key: Some(pb::KeyFile { text: forged }),
        seats: 5000,
        lent_until: String::new(),
        ..Default::default()
    }))
    .await;

    // a neighbor that may not lend to us lends anyway, and reports usage
    let mut nb = FakePeer::link(&c, "main", "nb").await.expect("nb links");
    nb.deliver(grant(&other, 50)).await;
    nb.deliver(pb::delivery::Body::Usage(pb::UsageRollup {
        keys: vec![],
        lines: vec![pb::UsageLine {
            node_id: "nb".into(),
            key_id: other.key.id.clone(),
            seats: 50,
            used: 50,
            reported_at: String::new(),
        }],
    }))
    .await;

    assert_eq!(
        seats(&c, "main").await,
        seats_before,
        "seat counts unchanged"
    );
    assert!(!c.has_key("main", &other.key.id).await);
    assert_eq!(usage().await, usage_before, "no usage line was taken");
    let ns = c.notifications("main").await;
    assert!(!ns.iter().any(|n| n.event == "command-received"));
    let refused = refusals(&ns);
    let said = |needle: &str| refused.iter().any(|n| n.message.contains(needle));
    assert!(
        said("child kid tried to grant seats upward (seat-grant"),
        "{refused:#?}"
    );
    assert!(
        said("child kid tried to grant seats upward (key-renewed"),
        "{refused:#?}"
    );
    assert!(said("kid reported usage of key(s)"), "{refused:#?}");
    assert!(said("kid is not this node's parent"), "{refused:#?}");
    assert!(said("a key from kid was refused"), "{refused:#?}");
    assert!(said("neighbor nb lent seats"), "{refused:#?}");
    assert!(said("nb reported usage of key(s)"), "{refused:#?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_a_second_link_from_the_same_peer_replaces_the_first() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.children.push("kid".into());
    }))
    .await;
    c.wait_healthy("main").await;
    let mut first = FakePeer::link(&c, "main", "kid").await.expect("links");
    eventually("kid online", || c.peer_online("main", "kid")).await;
    let second = FakePeer::link(&c, "main", "kid")
        .await
        .expect("links again");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match first.inbound.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first link was closed by the node");
    assert!(
        c.peer_online("main", "kid").await,
        "the replaced link going down does not mark the peer offline"
    );
    drop(second);
    eventually("kid offline once its only link closes", || async {
        !c.peer_online("main", "kid").await
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_a_neighbor_pair_that_both_dial_keeps_one_link_the_lower_id_dialing() {
    // "main" dials both "a" and "zz" (nothing listens there); each also dials in
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        for id in ["a", "zz"] {
            cfg.neighbors.push(NeighborConfig {
                node_id: id.into(),
                address: Some("http://127.0.0.1:1".into()),
                ..NeighborConfig::default()
            });
        }
    }))
    .await;
    c.wait_healthy("main").await;
    let err = FakePeer::link(&c, "main", "zz")
        .await
        .err()
        .expect("main < zz: main's own dial is the link");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("leave the address"),
        "{}",
        err.message()
    );
    let _a = FakePeer::link(&c, "main", "a")
        .await
        .expect("a < main: a's dial is the link");
    eventually("a online", || c.peer_online("main", "a")).await;
    c.shutdown().await;
}
