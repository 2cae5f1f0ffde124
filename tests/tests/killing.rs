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
    // r07 leftovers count too: an old key that never retires is a problem
    assert!(
        report.problems.is_empty(),
        "seed {}: {} problem(s):\n{}",
        report.seed,
        report.problems.len(),
        report.problems.join("\n")
    );
}

/// r07 under the kill loop: after settling, no node still holds a
/// superseded key. Seed 200 over 200 cycles (about 75 s, so run with
/// --ignored). It found, in 1 of 3 runs (and in 3 of 48 runs of the 30-cycle
/// loop under load), `r07: main still holds k-… (superseded by k-…) after
/// settling, granted to: [neighbor=4]` with the neighbor no longer holding
/// it: the peer acked the renewal, main's link recorded the ack
/// (`Store::ack`) and main was killed before the ack's effects
/// (`Engine::on_acked`), so the old grant stayed and the old key never
/// retired. Each tick now applies such lost acks
/// (keyfed-engine renewal/taken.rs); the 30-cycle test above checks r07 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long (200 kill cycles, ~75 s): run with --ignored"]
async fn r07_old_keys_retire_under_the_kill_loop() {
    let report = kill_loop::run(KillPlan {
        cycles: 200,
        seed: 200,
        verbose: false,
    })
    .await;
    eprintln!("{}", report.table());
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

/// r06/r07: a station that takes a seat while its key is being renewed ends
/// up on the new key like every other object, and the old key retires. Not
/// a crash: found while tuning the kill loop (its final check reports a
/// grant "stranded" on a superseded key), and much likelier here, where
/// fresh stations attach in bursts while main renews again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_stations_attaching_during_a_renewal_end_on_the_new_key() {
    // Seen: e.g. `fp-10-803 holds its seat on k-6ce34d7d1708, superseded by
    // …`; the old key never retires (its grants are never moved) and its
    // stations are not renewed. Two reads outside the writing transaction
    // can each leave a grant behind: Station contacts choose candidate keys
    // before their batch's transaction, and `take_seat` does not look at
    // `superseded_by` again inside it (keyfed-engine station.rs
    // `station_contact`/`take_seat`); the renewal reads the old key's grants
    // before its transaction and `distribute_tx` moves only those
    // (keyfed-engine renewal.rs, `grants_of_key` before `commit`). And
    // once such a station releases its seat, the old key is free but stays
    // (Station.Release does not retire it; UnassignSeats does).
    use keyfed_proto::v1::station_client::StationClient;
    use keyfed_tests::TestCluster;
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 5000, "2030-12-31");
    let mut current = k.key.id.clone();
    c.add("main", &k).await;
    let mut expires: chrono::NaiveDate = "2030-12-31".parse().unwrap();
    let (mut licensed, mut refused) = (Vec::new(), Vec::new());
    for round in 0..30 {
        expires += chrono::Duration::days(30);
        c.purchase(&current, &["antivirus"], 5000, &expires.to_string());
        let mut burst = tokio::task::JoinSet::new();
        for t in 0..8 {
            let url = c.url("main");
            burst.spawn(async move {
                let ep = tonic::transport::Endpoint::from_shared(url).unwrap();
                let mut st = StationClient::new(ep.connect_lazy());
                let (mut ok, mut refused) = (Vec::new(), Vec::new());
                for i in 0..10 {
                    let fp = format!("fp-{round}-{t}-{i}");
                    let lease = st
                        .attach(pb::ConnectRequest {
                            station_id: fp.clone(),
                            fingerprint: fp.clone(),
                            components: vec!["antivirus".into()],
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    if lease.licensed {
                        ok.push(fp);
                    } else {
                        refused.push(format!("{fp}: {:?}", lease.reason));
                    }
                }
                (ok, refused)
            });
        }
        let outcome = c.renew("main", &current).await.remove(0);
        assert_eq!(outcome.outcome, "distributed", "{outcome:?}");
        current = outcome.new_key_id;
        while let Some(r) = burst.join_next().await {
            let (ok, no) = r.unwrap();
            licensed.extend(ok);
            refused.extend(no);
        }
    }
    let mut stranded: Vec<String> = c
        .objects("main")
        .await
        .into_iter()
        .flat_map(|o| o.grants)
        .filter(|g| g.key_id != current)
        .map(|g| format!("{} holds its seat on {}", g.object, g.key_id))
        .collect();
    let (n_stranded, n_refused) = (stranded.len(), refused.len());
    let old_keys: Vec<String> = c
        .keys("main")
        .await
        .into_iter()
        .filter(|k| k.state == "superseded")
        .filter_map(|k| k.key.map(|k| k.id))
        .collect();
    stranded.truncate(5);
    refused.truncate(5);
    assert!(
        stranded.is_empty() && old_keys.is_empty() && refused.is_empty(),
        "of {} licensed stations, {n_stranded} are not on the current key {current} (first: {stranded:?}); superseded keys still held: {old_keys:?}; {n_refused} attaches refused though {} seats were free (first: {refused:?})",
        licensed.len(),
        5000 - licensed.len()
    );
    c.shutdown().await;
}
