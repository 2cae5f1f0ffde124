//! `cargo run -p keyfed-tests --bin console-shots -- docs/ [STATIONS]`:
//! starts a small cluster (main, a child, a neighbor), gives it a few keys,
//! grants and STATIONS stations (6), writes `console-dashboard.png` and
//! `console-key.png` of main's console into the given directory (headless
//! Chromium), and prints how long each console page took to serve.
use keyfed_tests::browser::{Browser, PAGE_WAIT};
use keyfed_tests::{TestCluster, Topology};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "docs".into()));
    let stations: u32 = std::env::args().nth(2).map_or(Ok(6), |n| n.parse())?;
    std::fs::create_dir_all(&out)?;
    let Some(b) = Browser::start().await? else {
        anyhow::bail!(
            "no browser: {}",
            keyfed_tests::browser::programs().err().unwrap_or_default()
        );
    };
    // no admin tokens: the console answers this loopback browser without a log-in
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .child("plant-a", "main")
            .root("branch")
            .neighbor("main", "branch")
            .tweak("main", |cfg| {
                cfg.api_listen = Some("127.0.0.1:0".parse().expect("addr"))
            }),
    )
    .await;
    c.wait_linked().await;
    let av = c
        .add(
            "main",
            &c.issue(&["antivirus", "firewall"], 80 + stations, "2027-12-31"),
        )
        .await;
    let soon = c.add("main", &c.issue(&["backup"], 10, "2026-12-10")).await;
    let id = av.key.map(|k| k.id).unwrap_or_default();
    let soon_id = soon.key.map(|k| k.id).unwrap_or_default();
    c.assign("main", &id, "plant-a", 20).await?;
    c.assign("main", &soon_id, "plant-a", 4).await?;
    for n in 1..=stations {
        let mut a = c.agent("main", &format!("pc-{n:05}"), &["antivirus"]);
        a.sync().await?;
    }
    // a usage history for the key's chart: a sample every 5 minutes while
    // workstations arrive
    for step in 1..=8 {
        for n in 0..3 {
            let mut a = c.agent("main", &format!("ws-{step:02}-{n}"), &["antivirus"]);
            a.sync().await?;
        }
        c.advance(chrono::Duration::minutes(5));
        keyfed_tests::eventually("main sampled its usage", || async {
            points(&c, &id).await >= step
        })
        .await;
    }
    let base = format!(
        "http://{}",
        c.nodes["main"].api_addr.expect("the API listener")
    );
    b.client.set_window_size(1280, 1000).await?;
    b.client.goto(&format!("{base}/")).await?;
    b.client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(fantoccini::Locator::Css("#keys"))
        .await?;
    b.screenshot(&out.join("console-dashboard.png")).await?;
    b.client.goto(&format!("{base}/keys/{id}")).await?;
    b.client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(fantoccini::Locator::Css("#grants"))
        .await?;
    b.screenshot(&out.join("console-key.png")).await?;
    b.close().await;
    let addr = c.nodes["main"].api_addr.expect("the API listener");
    for page in [
        "/".to_owned(),
        "/tree".into(),
        "/stations".into(),
        format!("/keys/{id}"),
        "/notifications".into(),
    ] {
        let started = std::time::Instant::now();
        let bytes = keyfed_tests::http::get(addr, &page).await?;
        println!(
            "{page:<24} {:>7.1} ms  {bytes} bytes",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    c.shutdown().await;
    println!(
        "wrote {}/console-dashboard.png and console-key.png",
        out.display()
    );
    Ok(())
}

/// Main's usage history points of `key`.
async fn points(c: &TestCluster, key: &str) -> usize {
    let r = c
        .admin("main")
        .await
        .usage_history(keyfed_proto::v1::UsageHistoryRequest {
            key_id: key.into(),
            ..Default::default()
        })
        .await;
    r.map_or(0, |r| {
        r.into_inner()
            .points
            .iter()
            .filter(|p| p.node_id == "main")
            .count()
    })
}
