//! Propagation benchmark (issue: federation). Builds a 1 + 10 + 100 node tree
//! in one process on loopback, triggers a compatible renewal at the root and
//! measures the time until every node was handed the new key; then measures
//! how fast a freed seat reaches a neighbor waiting for it (r11).
//!
//! Run: `cargo run --release -p keyfed-tests --bin propagation-bench [ROUNDS]`
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, TestCluster, Topology};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Resolves when `node` stores a notification `event` about `key_id`.
async fn watch_for(
    c: &TestCluster,
    node: &str,
    event: &'static str,
    key_id: String,
) -> tokio::task::JoinHandle<Instant> {
    let mut stream = c
        .admin(node)
        .await
        .watch_notifications(pb::ListNotificationsRequest { after_seq: 0 })
        .await
        .expect("watch")
        .into_inner();
    tokio::spawn(async move {
        while let Some(Ok(n)) = stream.next().await {
            if n.event == event && n.key_id == key_id {
                return Instant::now();
            }
        }
        panic!("watch ended before {event} for {key_id}");
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn tree_renewal(rounds: usize) -> Vec<Duration> {
    let mut topo = Topology::new().root("main");
    for i in 0..10 {
        topo = topo.child(&format!("c{i}"), "main");
        for j in 0..10 {
            topo = topo.child(&format!("c{i}-{j}"), &format!("c{i}"));
        }
    }
    let built = Instant::now();
    let c = TestCluster::start(topo).await;
    c.wait_linked().await;
    eprintln!("111-node tree linked in {} ms", ms(built.elapsed()));
    let mut results = Vec::new();
    for round in 0..rounds {
        eprintln!("round {round}: seeding the tree");
        let k = c.issue(&["antivirus"], 1000, "2027-12-31");
        let id = k.key.id.clone();
        c.add("main", &k).await;
        for i in 0..10 {
            c.assign("main", &id, &format!("c{i}"), 100)
                .await
                .expect("assign child");
        }
        for i in 0..10 {
            let child = format!("c{i}");
            eventually("child holds K", || c.has_key(&child, &id)).await;
            for j in 0..10 {
                c.assign(&child, &id, &format!("c{i}-{j}"), 10)
                    .await
                    .expect("assign grandchild");
            }
        }
        let new = c.purchase(&id, &["antivirus"], 1000, "2028-12-31").key.id;
        eprintln!(
            "round {round}: seeded in {} ms; watching",
            ms(built.elapsed())
        );
        let mut watchers = Vec::new();
        for name in c.nodes.keys().filter(|n| *n != "main") {
            watchers.push(watch_for(&c, name, "key-renewed-automatically", new.clone()).await);
        }
        let t0 = Instant::now();
        let outcome = c.renew("main", &id).await;
        assert_eq!(outcome[0].outcome, "distributed");
        let mut last = t0;
        let mut missing = 0;
        for w in watchers {
            match tokio::time::timeout(Duration::from_secs(30), w).await {
                Ok(t) => last = last.max(t.expect("watcher")),
                Err(_) => missing += 1,
            }
        }
        assert_eq!(
            missing, 0,
            "{missing} node(s) did not get the renewal within 30 s"
        );
        let took = last - t0;
        eprintln!("round {round}: 110 nodes renewed in {} ms", ms(took));
        results.push(took);
    }
    c.shutdown().await;
    results
}

async fn freed_seat(rounds: usize) -> Vec<Duration> {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .neighbor("neighbor", "main")
            .child("child", "main"),
    )
    .await;
    c.wait_linked().await;
    let mut results = Vec::new();
    for _ in 0..rounds {
        let k = c.issue(&["antivirus"], 10, "2027-12-31");
        let id = k.key.id.clone();
        c.add("main", &k).await;
        c.assign("main", &id, "neighbor", 4).await.expect("lend");
        eventually("neighbor holds K", || c.has_key("neighbor", &id)).await;
        let newfile = c.purchase(&id, &["antivirus"], 10, "2028-12-31");
        let new = newfile.key.id.clone();
        c.add("main", &newfile).await;
        c.assign("main", &new, "station-x", 8)
            .await
            .expect("hand grant");
        c.renew("main", &id).await;
        eventually("neighbor waits", || async {
            !c.has_key("neighbor", &id).await
        })
        .await;
        let w = watch_for(&c, "neighbor", "key-renewed-automatically", new.clone()).await;
        let t0 = Instant::now();
        c.unassign("main", &new, "station-x").await;
        match tokio::time::timeout(Duration::from_secs(15), w).await {
            Ok(t) => results.push(t.expect("watcher") - t0),
            Err(_) => {
                let ns: Vec<String> = c
                    .notifications("neighbor")
                    .await
                    .iter()
                    .map(|n| format!("{} {} {}", n.event, n.key_id, n.message))
                    .collect();
                let main: Vec<String> = c
                    .notifications("main")
                    .await
                    .iter()
                    .map(|n| format!("{} {} {}", n.event, n.key_id, n.message))
                    .collect();
                panic!("the neighbor never got {new}:\nneighbor: {ns:#?}\nmain: {main:#?}");
            }
        }
    }
    c.shutdown().await;
    results
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let mut tree = tree_renewal(rounds).await;
    let mut seat = freed_seat(rounds * 5).await;
    tree.sort();
    seat.sort();
    println!("| measurement | runs | p50 ms | max ms | target |");
    println!("|---|---|---|---|---|");
    println!("| compatible renewal at the root until all 110 other nodes hold it (1+10+100 tree) | {} | {} | {} | < 1000 |", tree.len(), ms(percentile(&tree, 0.5)), ms(*tree.last().unwrap()));
    println!(
        "| freed seat until the waiting neighbor holds it | {} | {} | {} | < 200 |",
        seat.len(),
        ms(percentile(&seat, 0.5)),
        ms(*seat.last().unwrap())
    );
}
