//! Denials (issue 12) on a real cluster: refused station connections and
//! assignments are kept with time, object, key, node and a stable reason,
//! bounded (oldest dropped first, counted), listed, exported as CSV and
//! counted in `/metrics`.
use keyfed_node::config::{AdminToken, Role};
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{metric, TestCluster, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPS: &str = "0ps-denials-t0ken";

fn attach(fp: &str, components: &[&str]) -> pb::ConnectRequest {
    pb::ConnectRequest {
        station_id: format!("host-{fp}"),
        fingerprint: fp.into(),
        components: components.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    }
}

fn with_metrics(cfg: &mut keyfed_node::NodeConfig) {
    cfg.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

fn station(c: &TestCluster, node: &str) -> StationClient<tonic::transport::Channel> {
    StationClient::new(c.endpoint(&c.url(node), None).connect_lazy())
}

async fn denials(c: &TestCluster, node: &str, reason: &str) -> pb::DenialList {
    c.admin(node)
        .await
        .list_denials(pb::ListDenialsRequest {
            reason: reason.into(),
            ..Default::default()
        })
        .await
        .expect("list denials")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_refused_for_want_of_a_seat_is_listed_and_counted_by_reason() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", with_metrics)).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 1, "2027-12-31");
    c.add("main", &k).await;
    let mut st = station(&c, "main");
    let a = st
        .attach(attach("fp-a", &["antivirus"]))
        .await
        .unwrap()
        .into_inner();
    assert!(a.licensed, "{}", a.reason);
    let b = st
        .attach(attach("fp-b", &["antivirus"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!b.licensed);
    let x = st
        .attach(attach("fp-x", &["dlp"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!x.licensed);
    // a renewal refused the same way is a second denial of the same station
    let again = st
        .renew(pb::RenewRequest {
            fingerprint: "fp-b".into(),
            components: vec!["antivirus".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.licensed);

    let all = denials(&c, "main", "").await;
    let rows: Vec<(&str, &str, &str, &str, &str)> = all
        .denials
        .iter()
        .map(|d| {
            (
                d.kind.as_str(),
                d.object.as_str(),
                d.key_id.as_str(),
                d.node_id.as_str(),
                d.reason.as_str(),
            )
        })
        .collect();
    let id = k.key.id.as_str();
    assert_eq!(
        rows,
        [
            ("station-connection", "fp-b", id, "main", "no-free-seats"),
            ("station-connection", "fp-x", "", "main", "no-covering-key"),
            ("station-connection", "fp-b", id, "main", "no-free-seats"),
        ]
    );
    let first = &all.denials[0];
    assert_eq!(
        first.message, b.reason,
        "the denial says what the station was told"
    );
    assert!(!first.at.is_empty());
    assert_eq!(all.counts_by_reason["no-free-seats"], 2);
    assert_eq!(all.dropped, 0);
    // a reason filter, and a reason that is none is refused by name
    let seats = denials(&c, "main", "no-free-seats").await;
    assert_eq!(seats.denials.len(), 2);
    let err = c
        .admin("main")
        .await
        .list_denials(pb::ListDenialsRequest {
            reason: "bad-luck".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("bad-luck"), "{}", err.message());

    let (status, text) = c.scrape("main").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "keyfed_denials_total{reason=\"no-free-seats\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "keyfed_denials_total{reason=\"no-covering-key\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "keyfed_denials_total{reason=\"tenant-quota\"}"),
        Some(0.0)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_assignment_is_a_denial_and_a_malformed_one_is_not() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let k = c.issue(&["antivirus"], 2, "2027-12-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "pc-1", 2)
        .await
        .expect("granted");
    let full = c.assign("main", &k.key.id, "pc-2", 1).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::FailedPrecondition);
    let err = c
        .assign("main", "no-such-key", "pc-3", 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // bad input is an error of the request, not a denial
    let err = c.assign("main", &k.key.id, "pc-4", 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let list = denials(&c, "main", "").await;
    let rows: Vec<(&str, &str, &str, &str)> = list
        .denials
        .iter()
        .map(|d| {
            (
                d.kind.as_str(),
                d.object.as_str(),
                d.key_id.as_str(),
                d.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("assignment", "pc-2", k.key.id.as_str(), "no-free-seats"),
            ("assignment", "pc-3", "no-such-key", "unknown-key"),
        ]
    );
    assert_eq!(list.denials[0].message, full.message());
    assert_eq!(list.denials[1].node_id, "main");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_the_newest_drops_the_oldest_and_counts_them_across_a_restart() {
    let mut c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", |cfg| cfg.denials.keep = 3),
    )
    .await;
    c.wait_healthy("main").await;
    let mut st = station(&c, "main");
    for i in 0..5 {
        let r = st
            .attach(attach(&format!("fp-{i}"), &["dlp"]))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.licensed);
    }
    let check = |list: pb::DenialList| {
        let kept: Vec<(u64, String)> = list
            .denials
            .into_iter()
            .map(|d| (d.seq, d.object))
            .collect();
        assert_eq!(
            kept,
            [
                (3, "fp-2".to_owned()),
                (4, "fp-3".into()),
                (5, "fp-4".into())
            ],
            "the oldest went first"
        );
        assert_eq!(list.dropped, 2);
        assert_eq!(
            list.counts_by_reason["no-covering-key"], 5,
            "dropped ones still count"
        );
    };
    check(denials(&c, "main", "").await);
    c.stop("main").await;
    c.restart("main").await;
    check(denials(&c, "main", "").await);
    // after_seq and limit page through what is kept
    let page = c
        .admin("main")
        .await
        .list_denials(pb::ListDenialsRequest {
            after_seq: 3,
            limit: 1,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.denials.iter().map(|d| d.seq).collect::<Vec<_>>(), [4]);
    c.shutdown().await;
}

/// One GET of the JSON API as `ops`: status, content type, body.
async fn api_get(addr: std::net::SocketAddr, target: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {OPS}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw).await;
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

/// Splits CSV text (RFC 4180: quoted fields, doubled quotes, CRLF) into rows.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "the CSV ends with a whole row"
    );
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_export_as_csv_over_http_with_the_proto_field_names() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.api_listen = Some("127.0.0.1:0".parse().expect("addr"));
        cfg.admin_tokens = vec![AdminToken {
            name: "ops".into(),
            token: Some(OPS.into()),
            role: Role::ReadOnly,
            ..AdminToken::default()
        }];
    }))
    .await;
    c.wait_healthy("main").await;
    let addr = c.nodes["main"].api_addr.expect("api");
    let mut st = station(&c, "main");
    // a tenant name with a comma cannot pass the name rules, so the message
    // (which quotes the components asked for) carries the comma
    let r = st
        .attach(attach("fp-1", &["dlp", "vpn"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.licensed);
    let (status, content_type, body) = api_get(addr, "/api/v1/denials?format=csv").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let rows = parse_csv(&body);
    assert_eq!(
        rows[0],
        ["seq", "at", "kind", "object", "key_id", "node_id", "reason", "message"]
    );
    assert_eq!(rows.len(), 2, "{body}");
    let row = &rows[1];
    assert_eq!(row[0], "1");
    assert_eq!(
        &row[2..7],
        ["station-connection", "fp-1", "", "main", "no-covering-key"]
    );
    assert_eq!(row[7], r.reason);
    assert!(
        row[7].contains("dlp,vpn"),
        "a quoted comma survives: {}",
        row[7]
    );
    // the same as JSON, filtered; a format that is none is refused
    let (status, _, json) = api_get(addr, "/api/v1/denials?reason=no-covering-key&limit=5").await;
    assert_eq!(status, 200, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["denials"][0]["object"], "fp-1");
    let (status, _, err) = api_get(addr, "/api/v1/denials?format=xml").await;
    assert_eq!(status, 400, "{err}");
    c.shutdown().await;
}
