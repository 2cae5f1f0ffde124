//! Station load benchmark (issue: stations). Starts one `keyfed serve` node
//! as its own process (so its memory is its own), then drives it with N
//! concurrent simulated stations over gRPC and prints a table:
//!
//! * ceiling: a no-op RPC (Station.Ping) from the same N tasks: what the gRPC
//!   stack on this machine can do at all;
//! * attach: each station takes a seat, durably (group-committed flush);
//! * renew: each station renews R times, each one durable as well;
//! * memory: the node's resident and peak memory once M stations hold seats;
//! * pages (issue 12): with those M stations, ListStations' first page, a
//!   page deep in (its token taken from a walk), a prefix search, and the
//!   time the node takes to open its store again and answer;
//! * console (issue 12): the same node's console pages over HTTP with those
//!   M stations: the dashboard, the key page, a station page deep in and a
//!   search (each a fresh connection; the server's render plus loopback).
//!
//! Run:
//!   cargo build --release -p keyfed-node -p keyfed-tests
//!   target/release/station-bench [--stations 1000] [--renewals 20] [--hold 100000] [--connections 16]
use keyfed_core::KeyKind;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use keyfed_proto::v1::station_client::StationClient;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

struct Args {
    stations: usize,
    renewals: usize,
    hold: usize,
    connections: usize,
}

fn args() -> Args {
    let mut a = Args {
        stations: 1000,
        renewals: 20,
        hold: 100_000,
        connections: 16,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let n = pair.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            panic!(
                "usage: station-bench [--stations N] [--renewals R] [--hold M] [--connections C]"
            )
        });
        match pair[0].as_str() {
            "--stations" => a.stations = n,
            "--renewals" => a.renewals = n,
            "--hold" => a.hold = n,
            "--connections" => a.connections = n,
            other => panic!("unknown option {other}"),
        }
    }
    a.hold = a.hold.max(a.stations);
    a
}

/// The `keyfed` binary next to this one (same target dir).
fn node_binary() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let bin = me.with_file_name("keyfed");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --release -p keyfed-node`",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Kills the node process when dropped, even when the bench panics.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Row {
    what: String,
    ops: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i].as_secs_f64() * 1000.0
    }
}

/// Runs `per_task` sequential calls in each of `tasks` concurrent tasks and
/// gathers their latencies into one row. With `pace`, each task calls once
/// per period, the tasks spread out over one period: the latency of a fleet
/// at a steady rate; without, back to back: the saturated rate.
async fn load<F, Fut>(
    what: &str,
    tasks: usize,
    per_task: usize,
    pace: Option<Duration>,
    call: F,
) -> Row
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut tick = match pace {
                    Some(every) => {
                        tokio::time::sleep(every.mul_f64(t as f64 / tasks.max(1) as f64)).await;
                        Some(tokio::time::interval(every))
                    }
                    None => None,
                };
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    if let Some(tick) = &mut tick {
                        tick.tick().await;
                    }
                    let s = Instant::now();
                    call(t, i).await;
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("load task"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    Row {
        what: what.into(),
        ops: lat.len(),
        secs,
        lat,
    }
}

fn renew_request(t: usize) -> pb::RenewRequest {
    let fp = format!("st-{t}");
    pb::RenewRequest {
        fingerprint: fp.clone(),
        station_id: fp,
        components: vec!["antivirus".into()],
        ..Default::default()
    }
}

fn hello(fp: String) -> pb::ConnectRequest {
    pb::ConnectRequest {
        station_id: fp.clone(),
        fingerprint: fp,
        components: vec!["antivirus".into()],
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("node");
    let vendor = keyfed_gus::Upstream::open(
        &dir.path().join("vendor"),
        Arc::new(keyfed_core::SystemClock),
    )
    .expect("vendor store");
    let port = free_port();
    let console = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let url = format!("http://127.0.0.1:{port}");
    let trust = vendor.public_key_hex();
    let start_node = || {
        let child = Command::new(node_binary())
            .args(["serve", "--node-id", "bench", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--trust")
            .arg(&trust)
            // no admin tokens: the console answers this loopback caller
            .arg("--api-listen")
            .arg(console.to_string())
            .env(
                "RUST_LOG",
                std::env::var("KEYFED_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("start the node");
        NodeProcess(child)
    };
    let node = start_node();
    let pid = node.0.id();
    let channel = |_: usize| {
        Endpoint::from_shared(url.clone())
            .expect("url")
            .connect_lazy()
    };
    let mut admin = AdminClient::new(channel(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.status(pb::Empty {}).await.is_err() {
        assert!(Instant::now() < deadline, "the node did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = vendor
        .issue(keyfed_gus::IssueRequest {
            customer: "bench".into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into()],
            seats: u32::try_from(a.hold).expect("seats fit"),
            kind: KeyKind::Term,
            expires: (chrono::Utc::now() + chrono::Duration::days(365)).date_naive(),
        })
        .expect("issue");
    admin
        .add_key(pb::AddKeyRequest {
            key_file: key.render(),
            ..Default::default()
        })
        .await
        .expect("add key");
    let pool: Arc<Vec<StationClient<Channel>>> = Arc::new(
        (0..a.connections.max(1))
            .map(|i| StationClient::new(channel(i)))
            .collect(),
    );
    let client =
        move |pool: &Arc<Vec<StationClient<Channel>>>, t: usize| pool[t % pool.len()].clone();
    let base_rss = memory_kib(pid, "VmRSS:");
    eprintln!(
        "node pid {pid} on {url}; {} stations, {} renewals each, {} held, {} connections",
        a.stations, a.renewals, a.hold, a.connections
    );

    let mut rows = Vec::new();
    let p = pool.clone();
    let ping_each = a.renewals.max(1);
    rows.push(
        load(
            "ceiling: Station.Ping (no-op)",
            a.stations,
            ping_each,
            None,
            move |t, _| {
                let mut c = client(&p, t);
                async move {
                    c.ping(pb::PingRequest {}).await.expect("ping");
                }
            },
        )
        .await,
    );
    let p = pool.clone();
    rows.push(
        load("attach: durable lease", a.stations, 1, None, move |t, _| {
            let mut c = client(&p, t);
            async move {
                let l = c
                    .attach(hello(format!("st-{t}")))
                    .await
                    .expect("attach")
                    .into_inner();
                assert!(l.licensed, "{}", l.reason);
            }
        })
        .await,
    );
    let p = pool.clone();
    rows.push(
        load(
            "renew (seat durable, contact time stored hourly)",
            a.stations,
            a.renewals,
            None,
            move |t, _| {
                let mut c = client(&p, t);
                async move {
                    let l = c.renew(renew_request(t)).await.expect("renew").into_inner();
                    assert!(l.licensed, "{}", l.reason);
                }
            },
        )
        .await,
    );
    // the same fleet at a steady 2,000 renewals/s (each station every 0.5 s)
    let p = pool.clone();
    let every = Duration::from_secs_f64(a.stations as f64 / 2000.0);
    rows.push(
        load(
            &format!("renew paced: each station every {} ms", every.as_millis()),
            a.stations,
            10,
            Some(every),
            move |t, _| {
                let mut c = client(&p, t);
                async move {
                    c.renew(renew_request(t)).await.expect("renew");
                }
            },
        )
        .await,
    );
    let rest = a.hold - a.stations;
    let per = rest.div_ceil(a.stations.max(1));
    let p = pool.clone();
    let stations = a.stations;
    let hold = a.hold;
    let fill = load(
        "attach until held (memory phase)",
        a.stations,
        per,
        None,
        move |t, i| {
            let mut c = client(&p, t);
            let n = stations + t * per + i;
            async move {
                if n < hold {
                    c.attach(hello(format!("st-{n}"))).await.expect("attach");
                }
            }
        },
    )
    .await;
    rows.push(fill);
    let info = admin
        .get_key(pb::KeyId {
            id: key.key.id.clone(),
        })
        .await
        .expect("key")
        .into_inner();
    let rss = memory_kib(pid, "VmRSS:");
    let hwm = memory_kib(pid, "VmHWM:");
    let (page_rows, deep_token) = pages(&mut admin, a.hold).await;
    rows.extend(page_rows);
    rows.extend(console_pages(console, &key.key.id, &deep_token, a.hold).await);
    // the store opened again: stop the node, start it, wait until it answers
    drop(node);
    let opened = Instant::now();
    let node = start_node();
    let deadline = Instant::now() + Duration::from_secs(120);
    while admin.status(pb::Empty {}).await.is_err() {
        assert!(Instant::now() < deadline, "the node did not come back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reopen = opened.elapsed();

    println!("| measurement | ops | ops/s | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.what,
            r.ops,
            r.rate(),
            r.pct(0.5),
            r.pct(0.95),
            r.pct(0.99)
        );
    }
    let ceiling = rows[0].rate();
    let durable = (rows[1].ops + rows[2].ops) as f64 / (rows[1].secs + rows[2].secs);
    println!();
    println!(
        "durable lease operations (attach + renew): {durable:.0}/s = {:.0}% of the no-op ceiling",
        100.0 * durable / ceiling
    );
    println!(
        "node memory with {} stations holding seats: RSS {:.1} MiB, peak {:.1} MiB (idle before load: {:.1} MiB)",
        info.seats_assigned,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        base_rss as f64 / 1024.0
    );
    println!(
        "node restart with {} stations until it answers (store open, every value read once): {:.0} ms",
        a.hold,
        reopen.as_secs_f64() * 1000.0
    );
    drop(node);
}

/// Timed ListStations calls of one request, one after another.
async fn timed(
    admin: &mut AdminClient<Channel>,
    what: &str,
    req: &pb::ListStationsRequest,
    runs: usize,
) -> Row {
    let mut lat = Vec::with_capacity(runs);
    let start = Instant::now();
    for _ in 0..runs {
        let s = Instant::now();
        let page = admin
            .list_stations(req.clone())
            .await
            .expect("a page")
            .into_inner();
        lat.push(s.elapsed());
        assert!(!page.stations.is_empty(), "{what}: an empty page");
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    Row {
        what: what.into(),
        ops: lat.len(),
        secs,
        lat,
    }
}

/// Issue 12: the console's pages, each fetched `RUNS` times.
async fn console_pages(
    addr: std::net::SocketAddr,
    key_id: &str,
    deep_token: &str,
    held: usize,
) -> Vec<Row> {
    const RUNS: usize = 50;
    let pages = [
        ("console dashboard /".to_owned(), "/".to_owned()),
        (
            format!("console key page /keys/{key_id}"),
            format!("/keys/{key_id}"),
        ),
        (
            format!("console stations deep page ({} in)", held * 9 / 10),
            format!("/stations?page_token={deep_token}"),
        ),
        (
            "console stations search st-5".into(),
            "/stations?search=st-5".into(),
        ),
    ];
    let mut rows = Vec::new();
    for (what, path) in pages {
        let start = Instant::now();
        let (lat, bytes) = keyfed_tests::http::timed_get(addr, &path, RUNS)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        rows.push(Row {
            what: format!("{what} ({} KB)", bytes / 1024),
            ops: lat.len(),
            secs: start.elapsed().as_secs_f64(),
            lat,
        });
    }
    rows
}

/// Issue 12: pages of the station list with `held` stations in the store,
/// and the token of the page 90% of the way in.
async fn pages(admin: &mut AdminClient<Channel>, held: usize) -> (Vec<Row>, String) {
    const RUNS: usize = 200;
    let page = |token: String| pb::ListStationsRequest {
        page_size: 100,
        page_token: token,
        ..Default::default()
    };
    let mut rows = vec![
        timed(
            admin,
            "ListStations first page (100)",
            &page(String::new()),
            RUNS,
        )
        .await,
    ];
    // a reply within one TCP segment: what a page costs without the transfer
    let small = pb::ListStationsRequest {
        page_size: 10,
        ..Default::default()
    };
    rows.push(timed(admin, "ListStations first page (10)", &small, RUNS).await);
    // an Admin call that reads next to nothing, for comparison
    let mut lat = Vec::with_capacity(RUNS);
    let start = Instant::now();
    for _ in 0..RUNS {
        let s = Instant::now();
        admin.list_keys(pb::Empty {}).await.expect("list keys");
        lat.push(s.elapsed());
    }
    lat.sort();
    rows.push(Row {
        what: "ListKeys (one key; the Admin call's own cost)".into(),
        ops: lat.len(),
        secs: start.elapsed().as_secs_f64(),
        lat,
    });
    // a token 90% of the way in, by walking pages of 1000
    let mut walk = pb::ListStationsRequest {
        page_size: 1000,
        ..Default::default()
    };
    for _ in 0..(held * 9 / 10) / 1000 {
        let p = admin
            .list_stations(walk.clone())
            .await
            .expect("a page")
            .into_inner();
        walk.page_token = p.next_page_token;
    }
    let deep = format!("ListStations deep page (100, {} in)", held * 9 / 10);
    rows.push(timed(admin, &deep, &page(walk.page_token.clone()), RUNS).await);
    let search = pb::ListStationsRequest {
        page_size: 100,
        search: "st-5".into(),
        ..Default::default()
    };
    let what = "ListStations search (100 of prefix st-5, total counted to 1000)";
    rows.push(timed(admin, what, &search, RUNS).await);
    let state = pb::ListStationsRequest {
        page_size: 100,
        state: "licensed".into(),
        ..Default::default()
    };
    rows.push(timed(admin, "ListStations state=licensed (100)", &state, RUNS).await);
    (rows, walk.page_token)
}
