//! ListStations a page at a time through the store's indexes (issue 12):
//! every station exactly once across pages, with filters, while stations
//! keep attaching; bad tokens refused; the indexes as they were after a
//! restart.
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{TestCluster, Topology};
use std::collections::BTreeSet;

fn attach(fp: &str, tenant: &str) -> pb::ConnectRequest {
    pb::ConnectRequest {
        station_id: format!("host-{fp}"),
        fingerprint: fp.into(),
        tenant: tenant.into(),
        components: vec!["antivirus".into()],
        ..Default::default()
    }
}

fn tenant(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "beta"
    } else {
        "acme"
    }
}

async fn attach_all(c: &TestCluster, range: std::ops::Range<usize>) {
    let mut st = StationClient::new(c.endpoint(&c.url("main"), None).connect_lazy());
    for i in range {
        st.attach(attach(&format!("fp-{i:03}"), tenant(i)))
            .await
            .expect("attach");
    }
}

fn query(page_size: u32, state: &str, search: &str, key_id: &str) -> pb::ListStationsRequest {
    pb::ListStationsRequest {
        page_size,
        page_token: String::new(),
        state: state.into(),
        search: search.into(),
        key_id: key_id.into(),
    }
}

/// Every page of `q`: the fingerprints in order, and the first page's total.
async fn walk(c: &TestCluster, mut q: pb::ListStationsRequest) -> (Vec<String>, u64) {
    let mut admin = c.admin("main").await;
    let mut fps = Vec::new();
    let mut total = None;
    loop {
        let page = admin
            .list_stations(q.clone())
            .await
            .expect("a page")
            .into_inner();
        assert!(page.stations.len() <= q.page_size as usize);
        total.get_or_insert(page.total);
        fps.extend(page.stations.into_iter().map(|s| s.fingerprint));
        if page.next_page_token.is_empty() {
            return (fps, total.unwrap_or_default());
        }
        q.page_token = page.next_page_token;
    }
}

fn once(fps: &[String]) -> BTreeSet<String> {
    let set: BTreeSet<String> = fps.iter().cloned().collect();
    assert_eq!(set.len(), fps.len(), "a station was listed twice: {fps:?}");
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_list_every_station_exactly_once_with_filters_while_stations_attach() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 40, "2027-12-31");
    c.add("main", &k).await;
    attach_all(&c, 0..60).await;
    let before: BTreeSet<String> = (0..60).map(|i| format!("fp-{i:03}")).collect();

    // pages of 7 while 40 more stations attach (all beyond the key's seats)
    let more = attach_all(&c, 60..100);
    let ((), (all, _)) = tokio::join!(more, walk(&c, query(7, "", "", "")));
    let listed = once(&all);
    assert!(
        listed.is_superset(&before),
        "a station there from the start was missed"
    );
    let (all, total) = walk(&c, query(9, "", "", "")).await;
    assert_eq!(once(&all).len(), 100);
    assert_eq!(total, 100);

    let (licensed, total) = walk(&c, query(6, "licensed", "", "")).await;
    assert_eq!((once(&licensed).len(), total), (40, 40));
    let (unlicensed, total) = walk(&c, query(6, "unlicensed", "", "")).await;
    assert_eq!((once(&unlicensed).len(), total), (60, 60));
    assert!(licensed.iter().all(|f| !unlicensed.contains(f)));
    let (of_key, total) = walk(&c, query(11, "", "", &k.key.id)).await;
    assert_eq!(once(&of_key), once(&licensed));
    assert_eq!(total, 40);

    // a search: a tenant prefix, a fingerprint prefix, a station id prefix
    let (beta, total) = walk(&c, query(5, "", "be", "")).await;
    let want: BTreeSet<String> = (0..100)
        .filter(|i| tenant(*i) == "beta")
        .map(|i| format!("fp-{i:03}"))
        .collect();
    assert_eq!(once(&beta), want);
    assert_eq!(total, want.len() as u64);
    let (tens, _) = walk(&c, query(4, "", "fp-01", "")).await;
    assert_eq!(tens.len(), 10);
    let (hosts, total) = walk(&c, query(1000, "", "host-", "")).await;
    assert_eq!((hosts.len(), total), (100, 100));
    let (beta_licensed, _) = walk(&c, query(3, "licensed", "beta", "")).await;
    assert!(beta_licensed
        .iter()
        .all(|f| want.contains(f) && licensed.contains(f)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_page_tokens_and_filters_are_invalid_arguments() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    attach_all(&c, 0..5).await;
    let mut admin = c.admin("main").await;
    let first = admin
        .list_stations(query(2, "", "fp", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let mut cases = vec![
        (
            pb::ListStationsRequest {
                page_token: "garbage".into(),
                ..query(2, "", "", "")
            },
            "garbage",
        ),
        (
            // a token of another query
            pb::ListStationsRequest {
                page_token: first.next_page_token.clone(),
                ..query(2, "", "host", "")
            },
            "other filters",
        ),
        (query(5000, "", "", ""), "page_size"),
        (query(5, "asleep", "", ""), "asleep"),
    ];
    for (req, says) in cases.drain(..) {
        let err = admin.list_stations(req).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(err.message().contains(says), "{}", err.message());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexes_answer_the_same_after_a_restart() {
    let mut c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 3, "2027-12-31");
    c.add("main", &k).await;
    attach_all(&c, 0..8).await;
    c.unassign("main", &k.key.id, "fp-001").await;
    let queries = [
        query(3, "", "", ""),
        query(3, "licensed", "", ""),
        query(3, "unlicensed", "", ""),
        query(3, "", "beta", ""),
        query(3, "", "", &k.key.id),
    ];
    let mut before = Vec::new();
    for q in &queries {
        before.push(walk(&c, q.clone()).await);
    }
    assert_eq!(before[1].1, 2, "one of three seats was taken back");
    assert_eq!(before[2].1, 6);
    c.stop("main").await;
    c.restart("main").await;
    for (q, was) in queries.iter().zip(&before) {
        assert_eq!(&walk(&c, q.clone()).await, was, "{q:?}");
    }
    c.shutdown().await;
}
