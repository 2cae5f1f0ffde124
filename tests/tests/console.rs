//! The operator's console in a real browser: headless Chromium over
//! WebDriver against a main node and its child. Logs in with a token, sees
//! the key's seats, assigns seats to the child through the form and sees the
//! tree update, gets a notification live, downloads the usage CSV; a
//! read-only token sees no write button and a forged write is refused, as is
//! a write without the CSRF token. Skips without chromium/chromedriver
//! (fails under CI=true).
use fantoccini::Locator;
use keyfed_node::config::{AdminToken, Role};
use keyfed_tests::browser::{Browser, PAGE_WAIT};
use keyfed_tests::{TestCluster, Topology};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPS: &str = "0ps-console-t0ken";
const VIEWER: &str = "v1ewer-console-t0ken";

fn with_console(cfg: &mut keyfed_node::NodeConfig) {
    cfg.api_listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.admin_tokens = vec![
        AdminToken {
            name: "ops".into(),
            token: Some(OPS.into()),
            role: Role::Admin,
            ..AdminToken::default()
        },
        AdminToken {
            name: "viewer".into(),
            token: Some(VIEWER.into()),
            role: Role::ReadOnly,
            ..AdminToken::default()
        },
    ];
}

/// One JSON API call with a bearer token; the status.
async fn api_post(addr: SocketAddr, token: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out[9..12].parse().expect("a status line");
    (status, out)
}

/// The seats bar of `key` on the dashboard: (used, held, free).
async fn seats_on_dashboard(b: &Browser, base: &str, key: &str) -> (String, String, String) {
    b.client.goto(&format!("{base}/")).await.expect("dashboard");
    let bar = b
        .client
        .find(Locator::Css(&format!("tr[data-key='{key}'] .bar")))
        .await
        .expect("the key's row has a seats bar");
    let a = |n: &'static str| {
        let bar = bar.clone();
        async move { bar.attr(n).await.expect("attr").unwrap_or_default() }
    };
    (
        a("data-used").await,
        a("data-held").await,
        a("data-free").await,
    )
}

/// POSTs a form from inside the page (the session cookie goes along);
/// the reply's status and text.
async fn forge(b: &Browser, path: &str, fields: &str) -> (u64, String) {
    let r = b
        .run(&format!(
            "const r = await fetch({path:?}, {{ method: 'POST', redirect: 'manual', \
               headers: {{ 'Content-Type': 'application/x-www-form-urlencoded' }}, body: {fields} }});\
             return {{ status: r.status, text: await r.text() }};"
        ))
        .await
        .expect("the script runs");
    (
        r["status"].as_u64().unwrap_or(0),
        r["text"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The page's CSRF token (every page's log-out form carries it).
async fn csrf(b: &Browser) -> String {
    b.client
        .find(Locator::Css("input[name=csrf]"))
        .await
        .expect("a form with the CSRF token")
        .attr("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_logs_in_assigns_streams_and_guards_writes() {
    let Some(b) = Browser::start().await.expect("the browser starts") else {
        return;
    };
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .child("c", "main")
            .tweak("main", with_console),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = c.nodes["main"].api_addr.expect("the API listener");
    let base = format!("http://{addr}");
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("antivirus.key");
    std::fs::write(&file, k.render()).expect("key file written");

    // log in with the admin token; add the key through the upload form
    b.login(&base, OPS).await.expect("logged in");
    let upload = b
        .client
        .find(Locator::Css("#add-key input[name=key_file]"))
        .await
        .expect("upload form");
    upload
        .send_keys(file.to_str().expect("utf-8 path"))
        .await
        .expect("file chosen");
    b.client
        .form(Locator::Css("#add-key"))
        .await
        .expect("form")
        .submit()
        .await
        .expect("uploaded");
    let flash = b
        .client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(".flash.ok"))
        .await
        .expect("a flash");
    assert_eq!(flash.text().await.expect("text"), format!("added key {id}"));
    assert_eq!(
        seats_on_dashboard(&b, &base, &id).await,
        ("0".into(), "10".into(), "10".into())
    );

    // assign 3 seats to the child through the form on the key's page
    b.client
        .goto(&format!("{base}/keys/{id}"))
        .await
        .expect("key page");
    let form = b
        .client
        .form(Locator::Css("#assign"))
        .await
        .expect("assign form");
    form.set_by_name("object", "c").await.expect("object");
    form.set_by_name("seats", "3").await.expect("seats");
    form.set_by_name("kind", "server").await.expect("kind");
    form.submit().await.expect("assigned");
    let flash = b
        .client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(".flash.ok"))
        .await
        .expect("a flash");
    assert_eq!(
        flash.text().await.expect("text"),
        format!("c now holds 3 seat(s) of {id}")
    );
    let row = b
        .client
        .find(Locator::Css("#grants tr[data-object=c]"))
        .await
        .expect("the child's grant");
    assert!(row.text().await.expect("text").contains('3'));
    assert_eq!(
        seats_on_dashboard(&b, &base, &id).await,
        ("3".into(), "10".into(), "7".into())
    );

    // the tree: the child's row shows the seats it reports holding
    let end = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        b.client.goto(&format!("{base}/tree")).await.expect("tree");
        let cell = b
            .client
            .find_all(Locator::Css(&format!(
                "tr[data-node=c] .usage[data-key='{id}'][data-seats='3']"
            )))
            .await
            .expect("find");
        if !cell.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the child's row never showed its 3 seats"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let online = b
        .client
        .find(Locator::Css("tr[data-node=c] .online"))
        .await
        .expect("the child is online");
    assert_eq!(online.text().await.expect("text"), "online");

    // a write without the CSRF token (or with a wrong one) is refused and changes nothing
    let (status, text) = forge(
        &b,
        &format!("/keys/{id}/assign"),
        "'object=c&seats=5&kind=server'",
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("CSRF token is missing or wrong"), "{text}");
    let (status, _) = forge(
        &b,
        &format!("/keys/{id}/assign"),
        "'csrf=forged&object=c&seats=5&kind=server'",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        c.held("c", &id).await,
        3,
        "the refused writes changed nothing"
    );
    // the API does not take the session cookie, only a bearer token
    let r = b
        .run("const r = await fetch('/api/v1/keys'); return { status: r.status };")
        .await
        .expect("script");
    assert_eq!(r["status"], 401, "{r}");

    // a notification arrives live, without a reload
    b.client
        .goto(&format!("{base}/notifications"))
        .await
        .expect("notifications");
    b.run("window.sameDocument = true; return 1;")
        .await
        .expect("marker");
    let end = tokio::time::Instant::now() + PAGE_WAIT;
    while b
        .client
        .find(Locator::Id("live"))
        .await
        .expect("live")
        .text()
        .await
        .expect("text")
        != "live"
    {
        assert!(
            tokio::time::Instant::now() < end,
            "the event stream never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let k2 = c.issue(&["firewall"], 2, "2027-12-31");
    let body = serde_json::json!({ "key_file": k2.render() }).to_string();
    let (status, reply) = api_post(addr, OPS, "/api/v1/keys", &body).await;
    assert_eq!(status, 200, "{reply}");
    // every live row is new; one of them is the key-added of k2
    let end = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        let rows = b
            .client
            .find_all(Locator::Css("#notifications tr.fresh"))
            .await
            .expect("find");
        let mut texts = Vec::new();
        for r in rows {
            texts.push(r.text().await.expect("text"));
        }
        if texts
            .iter()
            .any(|t| t.contains("key-added") && t.contains(&k2.key.id))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no live key-added row: {texts:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let same = b
        .run("return window.sameDocument === true;")
        .await
        .expect("marker");
    assert_eq!(same, Value::Bool(true), "the page was not reloaded");

    // the usage CSV: once main has sampled (the clock moved one 5-minute
    // slot), a header with the UsagePoint fields and main's row: 3 of 10 used
    c.advance(chrono::Duration::minutes(5));
    let end = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        let r = b
            .run(&format!(
                "const r = await fetch('/keys/{id}/usage.csv'); \
                 return {{ status: r.status, type: r.headers.get('content-type'), text: await r.text() }};"
            ))
            .await
            .expect("script");
        let csv = r["text"].as_str().unwrap_or_default().to_owned();
        assert_eq!(r["status"], 200, "{csv}");
        assert!(
            r["type"]
                .as_str()
                .unwrap_or_default()
                .starts_with("text/csv"),
            "{r}"
        );
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("at,node_id,key_id,held,used,free,resolution")
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert!(rows.iter().all(|r| r.len() == 7), "{csv}");
        if let Some(row) = rows.iter().find(|r| r[1] == "main") {
            assert_eq!(row[2..6], [id.as_str(), "10", "3", "7"], "{csv}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "main never sampled: {csv}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // log out; a read-only token sees no write button, and a forged write is refused
    b.client
        .find(Locator::Css("header form button"))
        .await
        .expect("log out")
        .click()
        .await
        .expect("logged out");
    b.client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("token"))
        .await
        .expect("the log-in page");
    b.login(&base, VIEWER).await.expect("viewer logged in");
    for page in ["/".to_owned(), format!("/keys/{id}"), "/commands".into()] {
        b.client.goto(&format!("{base}{page}")).await.expect("page");
        let posts = b
            .client
            .find_all(Locator::Css("main form[method=post], main button"))
            .await
            .expect("find");
        assert!(
            posts.is_empty(),
            "{page} shows a read-only caller {} write control(s)",
            posts.len()
        );
    }
    let token = csrf(&b).await;
    let (status, text) = forge(
        &b,
        &format!("/keys/{id}/assign"),
        &format!("'csrf={token}&object=c&seats=5&kind=server'"),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("PERMISSION_DENIED") && text.contains("may only read"),
        "{text}"
    );
    assert_eq!(c.held("c", &id).await, 3);

    b.close().await;
    c.shutdown().await;
}
