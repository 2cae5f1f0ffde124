//! `keyfedctl denials` and the paged `keyfedctl stations` against a real node
//! (issue 12).
use keyfed_tests::{TestCluster, Topology};

mod common;
use common::{ctl, err, out};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfedctl_lists_denials_as_a_table_or_csv_and_pages_stations() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let node = c.url("main");
    let k = c.issue(&["antivirus"], 1, "2027-12-31");
    c.add("main", &k).await;
    let mut first = c.agent("main", "pc-1", &["antivirus"]);
    assert!(first.sync().await.unwrap().licensed);
    let mut second = c.agent("main", "pc-2", &["antivirus"]);
    assert!(!second.sync().await.unwrap().licensed);

    let table = ctl(&node, &["denials"]).await;
    assert!(table.status.success(), "{}", err(&table));
    let text = out(&table);
    assert!(
        text.contains("pc-2") && text.contains("no-free-seats"),
        "{text}"
    );
    assert!(text.contains("no-free-seats=1"), "{text}");
    let csv = ctl(&node, &["denials", "--reason", "no-free-seats", "--csv"]).await;
    assert!(csv.status.success(), "{}", err(&csv));
    let mut lines = out(&csv).lines().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        lines.remove(0),
        "seq,at,kind,object,key_id,node_id,reason,message"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("1,") && lines[0].contains(",station-connection,pc-2,"),
        "{}",
        lines[0]
    );
    let bad = ctl(&node, &["denials", "--reason", "bad-luck"]).await;
    assert!(!bad.status.success());
    assert!(err(&bad).contains("bad-luck"), "{}", err(&bad));

    // one station a page, every page with --all
    let page = ctl(&node, &["stations", "--page-size", "1"]).await;
    assert!(page.status.success(), "{}", err(&page));
    assert!(
        out(&page).contains("1 shown of 2; next page: --page-token "),
        "{}",
        out(&page)
    );
    let all = ctl(&node, &["stations", "--page-size", "1", "--all"]).await;
    let text = out(&all);
    assert!(text.contains("pc-1") && text.contains("pc-2"), "{text}");
    assert!(text.contains("2 shown of 2\n"), "{text}");
    let licensed = ctl(
        &node,
        &["stations", "--state", "licensed", "--search", "pc-"],
    )
    .await;
    let text = out(&licensed);
    assert!(text.contains("pc-1") && !text.contains("pc-2"), "{text}");
    c.shutdown().await;
}
