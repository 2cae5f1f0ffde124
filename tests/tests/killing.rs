//! Real processes, real signals (r13, b02): a main, its child and a neighbor
//! run as `keyfed serve` processes; main and child are SIGKILLed at random
//! moments while a workload changes seats, and started again on the same
//! data. See `keyfed_tests::kill_loop` for the workload and the checks, and
//! `cargo run -p keyfed-tests --bin kill-loop -- --cycles 1000` for a long run.
use keyfed_proto::v1 as pb;
use keyfed_tests::kill_loop::{self, KillPlan};
use keyfed_tests::process::ProcessCluster;
use keyfed_tests::{eventually, Topology};

/// KEYFED_KILL_SEED picks another seed (the report names the one used).
fn seed() -> u64 {
    std::env::var("KEYFED_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_seats_conserved_across_sigkill_of_main_and_child() {
    let report = kill_loop::run(KillPlan {
        cycles: 30,
        seed: seed(),
        verbose: false,
    })
    .await;
    eprintln!("{}", report.table());
    for (node, log) in &report.logs {
        eprintln!("--- end of {node}'s log\n{log}");
    }
    assert!(
        report.kills.values().sum::<usize>() >= 30,
        "at least one SIGKILL per cycle"
    );
    assert!(
        report.acknowledged > 100 && report.renewals > 0,
        "the workload ran: {} acknowledged, {} renewals",
        report.acknowledged,
        report.renewals
    );
    assert!(
        report.problems.is_empty(),
        "seed {}: {} problem(s):\n{}",
        report.seed,
        report.problems.len(),
        report.problems.join("\n")
    );
}

/// The harness itself, on the smallest case: a grant acknowledged an
/// instant before the SIGKILL is there after the restart, and reaches the
/// child; each node's clock moves with `advance`; dropping the cluster
/// leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_grant_acknowledged_just_before_sigkill_survives_it() {
    let mut c = ProcessCluster::start(Topology::new().root("main").child("child", "main")).await;
    eventually("main and child linked", || c.quiet()).await;
    let k = c
        .upstream
        .issue(keyfed_gus::IssueRequest {
            customer: "acme".into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into()],
            seats: 10,
            kind: keyfed_core::KeyKind::Term,
            expires: "2030-12-31".parse().unwrap(),
        })
        .unwrap();
    let id = k.key.id.clone();
    c.admin("main")
        .add_key(pb::AddKeyRequest {
            key_file: k.render(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (object, seats) in [("child", 4), ("station-1", 2)] {
        c.admin("main")
            .assign_seats(pb::AssignSeatsRequest {
                key_id: id.clone(),
                object: object.into(),
                seats,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    c.kill("main");
    c.restart("main").await.unwrap();
    let key = c
        .admin("main")
        .get_key(pb::KeyId { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((key.seats_assigned, key.seats_free), (6, 4));
    eventually("the child holds its 4 seats", || async {
        c.admin("child")
            .get_key(pb::KeyId { id: id.clone() })
            .await
            .is_ok_and(|k| k.get_ref().seats_free == 4)
    })
    .await;

    let now = |s: pb::NodeStatus| chrono::DateTime::parse_from_rfc3339(&s.now).unwrap();
    let before = now(c
        .admin("child")
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner());
    c.advance(chrono::Duration::days(2)).await;
    let after = now(c
        .admin("child")
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner());
    assert!(
        after - before >= chrono::Duration::days(2),
        "{before} → {after}"
    );

    let pids: Vec<u32> = c.nodes.values().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 2);
    drop(c);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node process {pid} outlived its cluster"
        );
    }
}
