//! Upgrades (issue 15 §3): a data dir written by an earlier release opens
//! with today's code (migrating its records) and serves the same keys,
//! grants, stations and notifications, and the deliveries it had queued
//! still reach their peer.
//!
//! The fixtures under `tests/fixtures/upgrade/<release>/` were written by
//! that release's own code with [`write_fixture`]: a main node and its child,
//! a renewed key, seats for a station object, the child and two agents, and
//! one grant to the child still in main's outbox (the child was down). Each
//! holds both nodes' data dirs, the vendor key that signed their keys and
//! `expected.json`, what the writing release served over its Admin API.
//! Keep old fixtures when adding a new one: each is a release someone may
//! still run.
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, TestCluster, Topology};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Every release whose data dir today's code must open.
const RELEASES: &[&str] = &["v0.1.0-8a7f29e"];
const NODES: &[&str] = &["main", "child"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade")
}

/// What a node serves, in a form that later releases can still compare: the
/// fields an operator relies on, not every field of today's messages.
async fn served(c: &TestCluster, node: &str) -> Value {
    let mut keys: Vec<Value> = c
        .keys(node)
        .await
        .iter()
        .map(|k| {
            let key = k.key.as_ref().expect("key info carries its key");
            json!({
                "id": key.id, "renews": key.renews, "seats": key.seats,
                "components": key.components, "expires": key.expires,
                "state": k.state, "seats_assigned": k.seats_assigned,
            })
        })
        .collect();
    keys.sort_by_key(|v| v.to_string());
    let mut grants: Vec<Value> = Vec::new();
    for o in c.objects(node).await {
        for g in o.grants {
            grants.push(json!({
                "key_id": g.key_id, "object": g.object, "seats": g.seats,
                "kind": pb::ObjectKind::try_from(g.kind).map(|k| k.as_str_name()).unwrap_or("?"),
                "lent_until": g.lent_until,
            }));
        }
    }
    grants.sort_by_key(|v| v.to_string());
    let mut stations: Vec<Value> = c
        .stations(node)
        .await
        .iter()
        .map(|s| json!({"fingerprint": s.fingerprint, "key_id": s.key_id, "state": s.state}))
        .collect();
    stations.sort_by_key(|v| v.to_string());
    let notifications: Vec<Value> = c
        .notifications(node)
        .await
        .iter()
        .map(|n| json!({"seq": n.seq.to_string(), "event": n.event, "key_id": n.key_id}))
        .collect();
    json!({"keys": keys, "grants": grants, "stations": stations, "notifications": notifications})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_data_dir_of_an_earlier_release_opens_and_serves_the_same_keys_and_grants() {
    for release in RELEASES {
        let fixture = fixtures().join(release);
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture.join("expected.json")).expect("fixture"),
        )
        .expect("expected.json parses");
        let vendor = expected["vendor_key"]
            .as_str()
            .expect("vendor key")
            .to_owned();
        let work = tempfile::tempdir().unwrap();
        let mut topology = Topology::new().root("main").child("child", "main");
        for node in NODES {
            let dir = work.path().join(node);
            keyfed_tests::copy_dir(&fixture.join(node), &dir);
            let vendor = vendor.clone();
            topology = topology.tweak(node, move |cfg| {
                cfg.data_dir = dir.clone();
                cfg.trusted_vendor_keys.push(vendor.clone());
            });
        }
        let c = TestCluster::start(topology).await;
        c.wait_linked().await;
        let renewed = expected["pending_grant"]["key_id"].as_str().unwrap();
        let pending = expected["pending_grant"]["seats"].as_u64().unwrap() as u32;

        // the grant the old main had queued for the child still arrives
        eventually(
            &format!("{release}: the queued grant reaches the child"),
            || async {
                c.held("child", renewed).await == pending
                    && c.outbox_depth("main", "child").await == 0
            },
        )
        .await;

        let main = served(&c, "main").await;
        assert_eq!(
            main, expected["served"]["main"],
            "{release}: main serves what the old release served"
        );
        // the child's own ledger is unchanged; only its held seats grew
        let child = served(&c, "child").await;
        let old = &expected["served"]["child"];
        for part in ["grants", "stations", "notifications"] {
            assert_eq!(child[part], old[part], "{release}: child's {part}");
        }
        let ids = |v: &Value| -> Vec<String> {
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].to_string())
                .collect()
        };
        assert_eq!(ids(&child), ids(old), "{release}: child's keys");

        // and both keep working on the migrated stores
        c.assign("main", renewed, "station-after-upgrade", 1)
            .await
            .expect("main assigns on its migrated store");
        let mut agent = c.agent("child", "fp-child-after-upgrade", &["antivirus"]);
        let st = agent.sync().await.expect("child answers stations");
        assert!(st.licensed, "{release}: {}", st.reason);
        c.shutdown().await; // r13 over both migrated stores
    }
}

/// Writes a fixture with the code of the checkout it runs in. Run it once
/// per release, before that release's record or wire changes land:
/// `KEYFED_UPGRADE_FIXTURE=v0.2.0-abcdef0 cargo test -p keyfed-tests --test upgrade write_fixture -- --ignored`
/// then add the name to [`RELEASES`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a new fixture; run by hand for a release"]
async fn write_fixture() {
    let name =
        std::env::var("KEYFED_UPGRADE_FIXTURE").expect("KEYFED_UPGRADE_FIXTURE names the release");
    let out = fixtures().join(&name);
    assert!(!out.exists(), "{} exists already", out.display());
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k1 = c.issue(&["antivirus", "firewall"], 50, "2027-12-31");
    c.add("main", &k1).await;
    c.assign("main", &k1.key.id, "station-1", 2).await.unwrap();
    c.assign("main", &k1.key.id, "child", 10).await.unwrap();
    eventually("the child holds the key", || async {
        c.held("child", &k1.key.id).await == 10
    })
    .await;
    for (node, fp) in [("main", "fp-main-1"), ("child", "fp-child-1")] {
        let st = c.agent(node, fp, &["antivirus"]).sync().await.unwrap();
        assert!(st.licensed, "{}", st.reason);
    }
    // a compatible renewal, distributed to the child
    let k2 = c.purchase(
        &k1.key.id,
        &["antivirus", "firewall", "antispam"],
        60,
        "2028-12-31",
    );
    let outcomes = c.renew("main", &k1.key.id).await;
    assert!(!outcomes.is_empty(), "the renewal is found");
    eventually("the child holds the renewal", || async {
        c.has_key("child", &k2.key.id).await
    })
    .await;
    eventually("main's outbox drains", || async {
        c.outbox_depth("main", "child").await == 0
    })
    .await;
    let mut served_now = serde_json::Map::new();
    for node in NODES {
        served_now.insert((*node).into(), served(&c, node).await);
    }
    // one more grant while the child is down: it stays in main's outbox
    c.stop("child").await;
    c.assign("main", &k2.key.id, "child", 12).await.unwrap();
    served_now.insert("main".into(), served(&c, "main").await);
    c.stop("main").await;
    for node in NODES {
        keyfed_tests::copy_dir(&c.nodes[*node].config.data_dir, &out.join(node));
    }
    let expected = json!({
        "written_by": name,
        "vendor_key": c.upstream.public_key_hex(),
        "pending_grant": {"key_id": k2.key.id, "seats": 12},
        "served": served_now,
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
    c.shutdown().await;
}
