//! The console's HTTP rules without a browser: log-in and its cookie
//! (HttpOnly, SameSite=Strict, Secure on TLS), the API refusing the cookie,
//! CSRF on writes, and a token-less node answering loopback callers only
//! under an address or `localhost` as `Host`, like its JSON API.
use keyfed_node::config::{AdminToken, Role};
use keyfed_tests::http::{csrf, form_exchange, Reply};
use keyfed_tests::{TestCluster, Topology};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

const OPS: &str = "0ps-console-http-t0ken";

fn with_api(cfg: &mut keyfed_node::NodeConfig) {
    cfg.api_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

fn with_api_and_token(cfg: &mut keyfed_node::NodeConfig) {
    with_api(cfg);
    cfg.admin_tokens = vec![AdminToken {
        name: "ops".into(),
        token: Some(OPS.into()),
        role: Role::Admin,
        ..AdminToken::default()
    }];
}

/// A console request as a browser sends it (a form body for a POST),
/// addressed to `127.0.0.1` unless `headers` name another Host.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    form_exchange(s, "127.0.0.1", method, target, headers, body).await
}

async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(s, method, target, headers, body).await
}

/// The log-in page's cookie and the form filled in with `token`.
fn login_form(page: &Reply, token: &str) -> (String, String) {
    (
        page.session(),
        format!("csrf={}&token={token}", csrf(&page.body)),
    )
}

/// Logs in as a browser does: the log-in page first, then its form.
async fn login(addr: SocketAddr, token: &str) -> Reply {
    let page = http(addr, "GET", "/login", &[], "").await;
    let (jar, form) = login_form(&page, token);
    http(addr, "POST", "/login", &[("Cookie", &jar)], &form).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_console_log_in_sets_a_strict_http_only_cookie_the_api_refuses() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", with_api_and_token),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = c.nodes["main"].api_addr.expect("api");

    // not logged in: a page sends the browser to /login, a write is refused
    let r = http(addr, "GET", "/", &[], "").await;
    assert_eq!(
        (r.status, r.header("location").unwrap_or_default()),
        (303, "/login")
    );
    let r = http(addr, "POST", "/renew", &[], "csrf=x").await;
    assert_eq!(r.status, 401, "{}", r.body);
    // the log-in form has a CSRF token of its own (double submit)
    let r = http(addr, "POST", "/login", &[], &format!("token={OPS}")).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("log-in form's CSRF token")
            && !r
                .header("set-cookie")
                .unwrap_or_default()
                .contains("keyfed_session")
    );
    // a second log-in page (another tab, a followed redirect) keeps the first valid
    let page = http(addr, "GET", "/login", &[], "").await;
    let (jar, _) = login_form(&page, OPS);
    let again = http(addr, "GET", "/login", &[("Cookie", &jar)], "").await;
    assert_eq!(csrf(&again.body), csrf(&page.body));
    let r = login(addr, "wrong").await;
    assert_eq!(r.status, 401);
    assert!(
        r.body.contains("not valid on this node")
            && !r
                .header("set-cookie")
                .unwrap_or_default()
                .contains("keyfed_session"),
        "{}",
        r.body
    );

    let r = login(addr, OPS).await;
    assert_eq!(
        (r.status, r.header("location").unwrap_or_default()),
        (303, "/")
    );
    let set = r.header("set-cookie").unwrap_or_default();
    assert!(
        set.ends_with("; HttpOnly; SameSite=Strict; Path=/"),
        "{set}"
    );
    assert!(
        !set.contains(OPS),
        "the token never goes to the browser: {set}"
    );
    let cookie = r.session();
    assert_eq!(cookie.len(), "keyfed_session=".len() + 64, "{cookie}");

    let page = http(addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("ops (admin)") && page.body.contains(r#"id="add-key""#));
    assert!(page
        .header("content-security-policy")
        .unwrap_or_default()
        .contains("default-src 'self'"));
    // the API takes a bearer token only, never the console's cookie
    let api = http(addr, "GET", "/api/v1/keys", &[("Cookie", &cookie)], "").await;
    assert_eq!(api.status, 401, "{}", api.body);

    // a write needs the session's CSRF token
    let token = csrf(&page.body);
    let k = c.issue(&["antivirus"], 2, "2027-12-31");
    let form = "object=pc-1&seats=1&kind=station";
    let r = http(
        addr,
        "POST",
        &format!("/keys/{}/assign", k.key.id),
        &[("Cookie", &cookie)],
        form,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("CSRF token is missing or wrong"));
    // with it, the Admin service's own error comes back (the key is not here)
    let with = format!("csrf={token}&{form}");
    let r = http(
        addr,
        "POST",
        &format!("/keys/{}/assign", k.key.id),
        &[("Cookie", &cookie)],
        &with,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("NOT_FOUND"), "{}", r.body);

    // log-out ends the session
    let r = http(
        addr,
        "POST",
        "/logout",
        &[("Cookie", &cookie)],
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r
        .header("set-cookie")
        .unwrap_or_default()
        .contains("Max-Age=0"));
    let r = http(addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(
        (r.status, r.header("location").unwrap_or_default()),
        (303, "/login")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_a_console_without_tokens_answers_loopback_under_an_address_only() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", with_api)).await;
    c.wait_healthy("main").await;
    let addr = c.nodes["main"].api_addr.expect("api");
    let r = http(addr, "GET", "/", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("local (no admin tokens)")
            && r.header("set-cookie")
                .unwrap_or_default()
                .contains("HttpOnly")
    );
    assert!(!r.body.contains("Log out"), "no log-in, so no log-out");
    // DNS rebinding: a page under another name is refused, as on the API
    let r = http(addr, "GET", "/", &[("Host", "rebound.example")], "").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("DNS rebinding"), "{}", r.body);
    // an unknown page is a 404 page
    let r = http(addr, "GET", "/nowhere", &[("Cookie", "")], "").await;
    assert_eq!(r.status, 404);
    c.shutdown().await;
}

fn tls_client(c: &TestCluster, cert: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let tls = c.tls.as_ref().expect("a TLS cluster");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(tls.ca()).expect("CA") {
        roots.add(cert.expect("CA cert")).expect("CA added");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        CertificateDer::pem_file_iter(tls.cert(cert))
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert chain"),
        PrivateKeyDer::from_pem_file(tls.key(cert)).expect("key"),
    )
    .expect("client cert");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_with_tls_the_console_is_served_over_tls_with_a_secure_cookie() {
    let c = TestCluster::start(
        Topology::new()
            .tls()
            .root("main")
            .tweak("main", with_api_and_token),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = c.nodes["main"].api_addr.expect("api");
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("main").expect("name");
        tls_client(&c, "admin")
            .connect(name, tcp)
            .await
            .expect("the console speaks TLS")
    };
    let page = exchange(connect().await, "GET", "/login", &[], "").await;
    assert!(
        page.header("set-cookie")
            .unwrap_or_default()
            .ends_with("; Secure"),
        "{}",
        page.header("set-cookie").unwrap_or_default()
    );
    let (jar, form) = login_form(&page, OPS);
    let r = exchange(
        connect().await,
        "POST",
        "/login",
        &[("Cookie", &jar)],
        &form,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.header("set-cookie").unwrap_or_default();
    assert!(
        set.contains("HttpOnly; SameSite=Strict") && set.ends_with("; Secure"),
        "{set}"
    );
    c.shutdown().await;
}

/// Logs in as `ops`: the session cookie and the page's CSRF token.
async fn log_in(addr: SocketAddr) -> (String, String) {
    let r = login(addr, OPS).await;
    let cookie = r.session();
    let page = http(addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    (cookie.clone(), csrf(&page.body))
}

/// A multipart/form-data POST as a browser sends a file upload.
async fn upload(addr: SocketAddr, cookie: &str, fields: &[(&str, &str)]) -> Reply {
    let boundary = "----keyfedTestBoundary7MA4YWxk";
    let mut body = String::new();
    for (name, value) in fields {
        let file = if *name == "key_file" {
            "; filename=\"k.key\"\r\nContent-Type: application/octet-stream"
        } else {
            ""
        };
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let ct = format!("multipart/form-data; boundary={boundary}");
    let headers = [("Cookie", cookie), ("Content-Type", ct.as_str())];
    keyfed_tests::http::request(addr, "POST", "/keys", &headers, body.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_forms_upload_assign_unassign_queue_and_renew_through_the_admin_service() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", with_api_and_token),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = c.nodes["main"].api_addr.expect("api");
    let (cookie, token) = log_in(addr).await;
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    let id = k.key.id.clone();
    let jar = [("Cookie", cookie.as_str())];

    // the key file as an upload; the browser is sent to the key's page
    let r = upload(
        addr,
        &cookie,
        &[
            ("csrf", &token),
            ("key_file", &k.render()),
            ("activation", ""),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.header("location").unwrap_or_default()),
        (303, format!("/keys/{id}").as_str()),
        "{}",
        r.body
    );
    let page = http(addr, "GET", &format!("/keys/{id}"), &jar, "").await;
    assert!(
        page.body.contains(&format!("added key {id}")),
        "the outcome is shown once"
    );
    assert!(page.body.contains("0 used / 5 held / 5 free"));
    // an upload without the CSRF field is refused like any write
    let r = upload(addr, &cookie, &[("key_file", &k.render())]).await;
    assert_eq!(r.status, 403);

    let post =
        |path: String, form: String| async move { http(addr, "POST", &path, &jar, &form).await };
    let r = post(
        format!("/keys/{id}/assign"),
        format!("csrf={token}&object=pc-1&seats=2&kind=station"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = http(addr, "GET", &format!("/keys/{id}"), &jar, "").await;
    assert!(
        page.body.contains(r#"data-object="pc-1""#)
            && page.body.contains("2 used / 5 held / 3 free")
    );
    // bad input is the Admin service's INVALID_ARGUMENT, nothing stored
    let r = post(
        format!("/keys/{id}/assign"),
        format!("csrf={token}&object=pc-2&seats=lots"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("seats") && r.body.contains("whole number"),
        "{}",
        r.body
    );
    let r = post(
        format!("/keys/{id}/unassign"),
        format!("csrf={token}&object=pc-1"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = http(addr, "GET", &format!("/keys/{id}"), &jar, "").await;
    assert!(!page.body.contains(r#"data-object="pc-1""#) && page.body.contains("0 used / 5 held"));

    // a command goes to a station that has connected
    let mut station = c.agent("main", "pc-1", &["antivirus"]);
    station.sync().await.expect("the station connects");
    let r = post(
        "/commands".into(),
        format!("csrf={token}&object=pc-1&command=reboot"),
    )
    .await;
    assert_eq!(
        (r.status, r.header("location").unwrap_or_default()),
        (303, "/commands"),
        "{}",
        r.body
    );
    let page = http(addr, "GET", "/commands", &jar, "").await;
    assert!(
        page.body.contains("queued command") && page.body.contains("reboot"),
        "{}",
        page.body
    );

    let r = post("/renew".into(), format!("csrf={token}")).await;
    assert_eq!(
        (r.status, r.header("location").unwrap_or_default()),
        (303, "/"),
        "{}",
        r.body
    );
    let page = http(addr, "GET", "/", &jar, "").await;
    assert!(page.body.contains("checked for updates"), "{}", page.body);

    // the writes are in the Admin service's audit trail, under the token's name
    let audit = http(addr, "GET", "/audit", &jar, "").await;
    for action in [
        "AddKey",
        "AssignSeats",
        "UnassignSeats",
        "QueueCommand",
        "CheckForUpdates",
    ] {
        assert!(
            audit
                .body
                .contains(&format!(r#"<td class="mono">{action}</td>"#)),
            "{action} audited"
        );
    }
    assert!(audit.body.contains("<td>ops</td>"), "{}", audit.body);
    c.shutdown().await;
}
