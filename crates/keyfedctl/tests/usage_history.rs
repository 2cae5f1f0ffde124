//! `keyfedctl usage history` (issue 12) against a real node: the table,
//! `--json` (the protobuf JSON mapping), `--csv`, and refusals.
use keyfed_tests::{eventually, TestCluster, Topology};

mod common;
use common::{ctl, err, out};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_history_prints_a_table_json_and_csv_and_names_bad_flags() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let node = c.url("main");
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "pc-1", 3)
        .await
        .expect("assigned");
    let now = c.advance(chrono::Duration::minutes(5));
    let from = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let args = ["usage", "history", "--key-id", &k.key.id, "--from", &from];
    eventually("main sampled", || async {
        out(&ctl(&node, &args).await).contains(&from)
    })
    .await;

    let table = ctl(&node, &args).await;
    assert!(table.status.success(), "{}", err(&table));
    let text = out(&table);
    assert!(text.starts_with("AT"), "{text}");
    let row = text.lines().nth(1).expect("a row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [from.as_str(), "main", &k.key.id, "10", "3", "7"],
        "{text}"
    );
    assert!(text.contains("resolution 5m"), "{text}");

    let json = ctl(&node, &[&args[..], &["--json"]].concat()).await;
    let v: serde_json::Value = serde_json::from_str(&out(&json)).expect("JSON");
    assert_eq!(v["points"][0]["used"], 3);
    assert_eq!(v["points"][0]["free"], 7);
    assert_eq!(v["resolution"], "5m");

    let csv = ctl(&node, &[&args[..], &["--csv", "--tree"]].concat()).await;
    assert!(csv.status.success(), "{}", err(&csv));
    assert_eq!(
        out(&csv),
        format!(
            "at,node_id,key_id,held,used,free,resolution\r\n{from},main,{},10,3,7,5m\r\n",
            k.key.id
        )
    );

    let both = ctl(&node, &[&args[..], &["--csv", "--json"]].concat()).await;
    assert!(!both.status.success());
    assert!(err(&both).contains("--csv and --json"), "{}", err(&both));
    let bad = ctl(&node, &["usage", "history", "--resolution", "1w"]).await;
    assert_eq!(
        bad.status.code(),
        Some(1),
        "refused by the server: {}",
        err(&bad)
    );
    assert!(err(&bad).contains("resolution \"1w\""), "{}", err(&bad));
    let clash = ctl(&node, &["usage", "history", "--node", "kid", "--tree"]).await;
    assert_eq!(clash.status.code(), Some(2), "a usage error");
    // `usage KEY --tree` still shows live usage
    let live = ctl(&node, &["usage", &k.key.id, "--tree"]).await;
    assert!(out(&live).contains("SEATS"), "{}", out(&live));
    c.shutdown().await;
}
