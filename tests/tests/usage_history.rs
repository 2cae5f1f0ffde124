//! Usage history (issue 12) on a real cluster: main with a child, stations
//! on both, the manual clock moved over sample slots and then 8 days; the
//! history over gRPC and as CSV over the JSON API.
use chrono::{DateTime, Duration, Utc};
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, start_time, TestCluster, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_api(cfg: &mut keyfed_node::NodeConfig) {
    cfg.api_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn history(
    c: &TestCluster,
    r: pb::UsageHistoryRequest,
) -> Result<pb::UsageHistoryReply, tonic::Status> {
    c.admin("main")
        .await
        .usage_history(r)
        .await
        .map(tonic::Response::into_inner)
}

fn ask(key: &str, node: &str, resolution: &str, from: DateTime<Utc>) -> pb::UsageHistoryRequest {
    pb::UsageHistoryRequest {
        key_id: key.into(),
        from: ts(from),
        node_id: node.into(),
        resolution: resolution.into(),
        ..Default::default()
    }
}

/// (minutes after the start, node, held, used, free) of each point.
fn rows(r: &pb::UsageHistoryReply) -> Vec<(i64, String, u32, u32, u32)> {
    r.points
        .iter()
        .map(|p| {
            let at: DateTime<Utc> = p.at.parse().expect("RFC 3339");
            (
                (at - start_time()).num_minutes(),
                p.node_id.clone(),
                p.held,
                p.used,
                p.free,
            )
        })
        .collect()
}

/// Waits until main's live usage (with the roll-up) shows these used seats.
async fn usage_is(c: &TestCluster, key: &str, main_used: u32, kid_used: u32) {
    eventually(
        &format!("main sees used {main_used}, kid {kid_used}"),
        || async {
            let rows = c
                .admin("main")
                .await
                .usage(pb::UsageRequest {
                    key_id: key.into(),
                    tree: true,
                })
                .await
                .expect("usage")
                .into_inner()
                .rows;
            let used = |n: &str| rows.iter().find(|r| r.node_id == n).map(|r| r.used);
            used("main") == Some(main_used) && used("kid") == Some(kid_used)
        },
    )
    .await;
}

/// Moves the clock one 5-minute slot on and waits for main's sample in it.
async fn next_sample(c: &TestCluster, key: &str) -> DateTime<Utc> {
    let now = c.advance(Duration::minutes(5));
    eventually(&format!("main sampled at {now}"), || async {
        history(c, ask(key, "", "5m", now))
            .await
            .is_ok_and(|r| !r.points.is_empty())
    })
    .await;
    now
}

/// `GET target` on main's API with `headers`: status, content type, body.
async fn http_get(
    c: &TestCluster,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let addr = c.nodes["main"].api_addr.expect("main serves the API");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The API's CSV back into points (no field here needs quoting).
fn parse_csv(doc: &str) -> Vec<pb::UsagePoint> {
    let mut lines = doc.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(
        lines.next(),
        Some("at,node_id,key_id,held,used,free,resolution"),
        "the header names UsagePoint's fields in proto order"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 7, "{l}");
            let n = |i: usize| f[i].parse::<u32>().expect("a number");
            pb::UsagePoint {
                at: f[0].into(),
                node_id: f[1].into(),
                key_id: f[2].into(),
                held: n(3),
                used: n(4),
                free: n(5),
                resolution: f[6].into(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_own_and_subtree_rows_folds_old_points_into_hours_and_serves_csv() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .child("kid", "main")
            .tweak("main", with_api),
    )
    .await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let key = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &key, "kid", 4)
        .await
        .expect("kid gets 4 seats");
    eventually("kid holds the key", || c.has_key("kid", &key)).await;
    let mut on_main = c.agent("main", "pc-m", &["antivirus"]);
    assert!(on_main.sync().await.expect("pc-m syncs").licensed);
    let mut on_kid = c.agent("kid", "pc-k1", &["antivirus"]);
    assert!(on_kid.sync().await.expect("pc-k1 syncs").licensed);
    usage_is(&c, &key, 5, 1).await;
    let t1 = next_sample(&c, &key).await;
    // a second station on the kid for one slot
    let mut second = c.agent("kid", "pc-k2", &["antivirus"]);
    assert!(second.sync().await.expect("pc-k2 syncs").licensed);
    usage_is(&c, &key, 5, 2).await;
    let t2 = next_sample(&c, &key).await;
    second.release().await.expect("pc-k2 gives its seat back");
    usage_is(&c, &key, 5, 1).await;
    let t3 = next_sample(&c, &key).await;

    let five = history(&c, ask(&key, "*", "5m", t1))
        .await
        .expect("history");
    let m = |t: DateTime<Utc>| (t - start_time()).num_minutes();
    let kid = |t, used| (m(t), "kid".to_owned(), 4, used, 4 - used);
    let main = |t| (m(t), "main".to_owned(), 10, 5, 5);
    assert_eq!(
        rows(&five),
        [
            kid(t1, 1),
            kid(t2, 2),
            kid(t3, 1),
            main(t1),
            main(t2),
            main(t3)
        ],
        "main's own rows (the kid's grant and pc-m) and the kid's subtree row"
    );
    let own = history(&c, ask(&key, "", "5m", t1)).await.expect("history");
    assert!(
        own.points.iter().all(|p| p.node_id == "main"),
        "empty node_id: main only"
    );

    // 8 days on: day one's 5-minute points are gone, its hour holds the peak
    let later = c.advance(Duration::days(8));
    eventually("main sampled 8 days later", || async {
        history(&c, ask(&key, "", "5m", later))
            .await
            .is_ok_and(|r| !r.points.is_empty())
    })
    .await;
    let hour = start_time() + Duration::minutes(m(t1) / 60 * 60);
    let five = history(&c, ask(&key, "*", "5m", t1))
        .await
        .expect("history");
    assert!(
        rows(&five).iter().all(|r| r.0 >= m(later) - 5),
        "only the new samples: {:?}",
        rows(&five)
    );
    let mut hours = history(&c, ask(&key, "kid", "1h", t1))
        .await
        .expect("history");
    assert_eq!(hours.resolution, "1h");
    hours.points.truncate(1);
    assert_eq!(
        rows(&hours),
        [(m(hour), "kid".to_owned(), 4, 2, 2)],
        "the hour covers the dropped points with their peak used"
    );
    // an empty resolution picks the finest tier that still keeps `from`
    let picked = history(&c, ask(&key, "*", "", t1)).await.expect("history");
    assert_eq!(picked.resolution, "1h");

    // the CSV over HTTP is the gRPC answer
    let grpc = history(&c, ask(&key, "*", "1h", t1))
        .await
        .expect("history");
    assert!(grpc.points.len() >= 4, "{:?}", grpc.points);
    let target = format!(
        "/api/v1/usage/history?key_id={key}&node_id=*&resolution=1h&from={}&format=csv",
        ts(t1)
    );
    let (status, content_type, body) = http_get(&c, &target, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert_eq!(parse_csv(&body), grpc.points);
    let target = target.replace("&format=csv", "");
    let (_, by_accept, body) = http_get(&c, &target, &[("Accept", "text/csv")]).await;
    assert!(by_accept.starts_with("text/csv"), "{by_accept}");
    assert_eq!(parse_csv(&body), grpc.points);
    let (status, json_type, body) = http_get(&c, &target, &[]).await;
    assert_eq!((status, json_type.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        v["points"].as_array().map(Vec::len),
        Some(grpc.points.len())
    );
    assert_eq!(v["points"][0]["node_id"], "kid");

    // bad input is refused, naming what was wrong
    for (r, want) in [
        (
            pb::UsageHistoryRequest {
                from: "yesterday".into(),
                ..Default::default()
            },
            "from",
        ),
        (
            pb::UsageHistoryRequest {
                resolution: "1w".into(),
                ..Default::default()
            },
            "resolution",
        ),
        (
            pb::UsageHistoryRequest {
                key_id: "a b".into(),
                ..Default::default()
            },
            "key_id",
        ),
        (ask(&key, "", "", later + Duration::days(1)), "not before"),
    ] {
        let e = history(&c, r).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }
    for (target, want) in [
        ("/api/v1/usage/history?format=xml", "format"),
        ("/api/v1/usage/history?resolution=2h", "resolution"),
        ("/api/v1/usage/history?since=x", "since"),
    ] {
        let (status, _, body) = http_get(&c, target, &[]).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(
            body.contains("INVALID_ARGUMENT") && body.contains(want),
            "{target}: {body}"
        );
    }
    c.shutdown().await;
}
