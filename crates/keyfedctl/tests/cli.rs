//! Drives the keyfedctl binary against a real upstream and node.
use keyfed_tests::{TestCluster, Topology};

mod common;
use common::{ctl, err, out};
use std::process::Output;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfedctl_drives_a_node_and_the_upstream() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let up = format!("http://{}", c.upstream_addr);
    let node = c.url("main");
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("acme.key");
    let kp = key_path.to_str().unwrap();

    let issued = ctl(
        &up,
        &[
            "upstream",
            "issue",
            "--customer",
            "acme",
            "--product",
            "endpoint",
            "--components",
            "antivirus,firewall",
            "--seats",
            "5",
            "--expires",
            "2027-12-31",
            "-o",
            kp,
        ],
    )
    .await;
    assert!(issued.status.success(), "{}", err(&issued));
    let id = out(&issued).trim().to_owned();
    assert!(id.starts_with("k-"), "the key id alone on stdout: {id:?}");

    let pubkey = ctl(&up, &["upstream", "pubkey"]).await;
    assert_eq!(out(&pubkey).trim(), c.upstream.public_key_hex());

    let added = ctl(&node, &["key", "add", kp]).await;
    assert!(added.status.success(), "{}", err(&added));
    assert!(
        out(&added).contains(&id) && out(&added).contains("0/5"),
        "{}",
        out(&added)
    );

    let assigned = ctl(&node, &["key", "assign", &id, "station-1", "3"]).await;
    assert!(assigned.status.success(), "{}", err(&assigned));
    assert_eq!(
        out(&assigned),
        format!("3 seat(s) of {id} assigned to station-1\n")
    );

    // over the limit: non-zero exit, the server's code and message
    let over = ctl(&node, &["key", "assign", &id, "station-2", "3"]).await;
    assert_eq!(over.status.code(), Some(1));
    assert!(
        err(&over).contains("FAILED_PRECONDITION") && err(&over).contains("2 free seat(s) of 5"),
        "{}",
        err(&over)
    );

    // JSON for scripts
    let listed = ctl(&node, &["--json", "key", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&out(&listed)).expect("valid JSON");
    assert_eq!(v["keys"][0]["key"]["id"], id.as_str());
    assert_eq!(v["keys"][0]["seats_assigned"], 3);
    // the protobuf JSON mapping: enums by name, oneofs without a wrapper,
    // 64-bit integers as strings, defaults printed
    assert_eq!(v["keys"][0]["key"]["kind"], "KEY_KIND_TERM", "{v}");
    assert_eq!(
        v["keys"][0]["origin"],
        serde_json::json!({ "upstream": true })
    );
    assert!(v["keys"][0]["key"]["serial"].is_string(), "{v}");
    assert_eq!(v["keys"][0]["merged_into"], "", "{v}");

    // export writes the same bytes
    let copy = dir.path().join("copy.key");
    let exported = ctl(&node, &["key", "export", &id, "-o", copy.to_str().unwrap()]).await;
    assert!(exported.status.success(), "{}", err(&exported));
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&key_path).unwrap()
    );

    // a tampered file is refused with the server's reason
    let forged = dir.path().join("forged.key");
    std::fs::write(
        &forged,
        std::fs::read_to_string(&key_path)
            .unwrap()
            .replace("seats: 5", "seats: 50"),
    )
    .unwrap();
    let refused = ctl(&node, &["key", "add", forged.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        err(&refused).contains("INVALID_ARGUMENT") && err(&refused).contains("signature"),
        "{}",
        err(&refused)
    );

    let objects = ctl(&node, &["objects"]).await;
    assert!(
        out(&objects).contains("station-1") && out(&objects).contains("station"),
        "{}",
        out(&objects)
    );
    let notes = ctl(&node, &["notifications"]).await;
    assert!(out(&notes).contains("key-added"), "{}", out(&notes));
    let status = ctl(&node, &["status"]).await;
    assert!(out(&status).contains("main"), "{}", out(&status));
    let renew = ctl(&node, &["key", "renew"]).await;
    assert!(out(&renew).contains("nothing"), "{}", out(&renew));
    c.shutdown().await;
}

#[tokio::test]
async fn keyfedctl_reports_local_mistakes_clearly() {
    let help = ctl("http://127.0.0.1:1", &["--help"]).await;
    for group in [
        "key",
        "objects",
        "notifications",
        "status",
        "peers",
        "usage",
        "upstream",
    ] {
        assert!(out(&help).contains(group), "help lists {group}");
    }
    // an address where nothing listens
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let down = ctl(&addr, &["status"]).await;
    assert_eq!(down.status.code(), Some(3), "unreachable: exit 3");
    assert!(
        err(&down).contains(&addr) && err(&down).contains("nothing listens"),
        "{}",
        err(&down)
    );
    // a missing key file names the file
    let missing = ctl(&addr, &["key", "add", "/nonexistent/acme.key"]).await;
    assert_eq!(missing.status.code(), Some(4), "a local error: exit 4");
    assert!(
        err(&missing).contains("/nonexistent/acme.key"),
        "{}",
        err(&missing)
    );
    // a bad date is a usage error naming the flag
    let bad = ctl(
        &addr,
        &[
            "upstream",
            "issue",
            "--customer",
            "a",
            "--product",
            "p",
            "--components",
            "x",
            "--seats",
            "1",
            "--expires",
            "31.12.2027",
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(err(&bad).contains("--expires"), "{}", err(&bad));
    // the exit codes are documented in --help
    assert!(
        out(&help).contains("Exit codes") && out(&help).contains("3  no usable answer"),
        "{}",
        out(&help)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_t03_keyfedctl_telemetry_and_compliance_commands() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let up = format!("http://{}", c.upstream_addr);
    let node = c.url("main");
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    c.add("main", &k).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("main.telemetry");
    let p = path.to_str().unwrap();

    let status = ctl(&node, &["telemetry", "status"]).await;
    assert!(status.status.success(), "{}", err(&status));
    assert!(
        out(&status).contains("automatic") && out(&status).contains("NEXT DUE"),
        "{}",
        out(&status)
    );

    let exported = ctl(&node, &["telemetry", "export", "-o", p]).await;
    assert!(exported.status.success(), "{}", err(&exported));
    let id = out(&exported).trim().to_owned();
    assert!(
        id.starts_with("tr-"),
        "the report id alone on stdout: {id:?}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# keyfed telemetry report") && text.contains(&k.key.id));

    let first = ctl(&up, &["telemetry", "upload", p]).await;
    assert!(first.status.success(), "{}", err(&first));
    assert_eq!(
        out(&first),
        format!("report {id} of node main accepted via upstream\n")
    );
    let again = ctl(&node, &["telemetry", "upload", p]).await;
    assert!(
        out(&again).contains("via main > upstream (duplicate"),
        "{}",
        out(&again)
    );

    std::fs::write(&path, text.replace("held=5", "held=50")).unwrap();
    let forged = ctl(&up, &["telemetry", "upload", p]).await;
    assert_eq!(forged.status.code(), Some(1));
    assert!(
        err(&forged).contains("INVALID_ARGUMENT")
            && err(&forged).contains("signature does not verify"),
        "{}",
        err(&forged)
    );

    let state = ctl(&up, &["compliance", "acme"]).await;
    assert!(state.status.success(), "{}", err(&state));
    let row = out(&state).lines().nth(1).unwrap_or_default().to_owned();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["acme", "compliant", "1/1"], "{row}");
    let exempt = ctl(&up, &["compliance", "exempt", "acme"]).await;
    assert_eq!(out(&exempt), "acme is exempt\n", "{}", err(&exempt));
    let state = ctl(&up, &["--json", "compliance", "acme"]).await;
    assert!(
        out(&state).contains("\"state\": \"exempt\""),
        "{}",
        out(&state)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o03_o05_e04_e07_keyfedctl_station_and_subscription_commands() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    let node = c.url("main");
    let sub = c.issue_kind(
        keyfed_core::KeyKind::Subscription,
        "acme",
        &["antivirus"],
        10,
        "2027-12-31",
    );
    c.add("main", &sub).await;
    let id = sub.key.id.clone();
    let mut agent = c.agent("main", "pc-1", &["antivirus"]);
    assert!(agent.sync().await.unwrap().licensed);

    let st = ctl(&node, &["stations"]).await;
    assert!(st.status.success(), "{}", err(&st));
    assert!(
        out(&st).contains("pc-1") && out(&st).contains("licensed"),
        "{}",
        out(&st)
    );

    let q = ctl(&node, &["command", "queue", "pc-1", "scan-now"]).await;
    assert!(q.status.success(), "{}", err(&q));
    let list = ctl(&node, &["--json", "command", "list"]).await;
    assert!(
        out(&list).contains("\"state\": \"pending\""),
        "{}",
        out(&list)
    );
    let bad = ctl(&node, &["command", "queue", "nobody", "scan"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(err(&bad).contains("NOT_FOUND"), "{}", err(&bad));

    let set = ctl(&node, &["settings", "set", "scan = \"daily\""]).await;
    assert!(
        out(&set).contains("version 2"),
        "{} {}",
        out(&set),
        err(&set)
    );
    agent.sync().await.unwrap();
    assert_eq!(agent.status().settings, "scan = \"daily\"");
    assert_eq!(agent.state().commands, ["scan-now"]);

    let share = ctl(&node, &["subscription", "share", &id, "beta", "4"]).await;
    assert!(share.status.success(), "{}", err(&share));
    let report = ctl(&node, &["report", "subscriptions"]).await;
    let text = out(&report);
    assert!(
        text.contains("acme")
            && text.contains("beta")
            && text.contains("owner")
            && text.contains("shared"),
        "{text}"
    );
    let over = ctl(&node, &["subscription", "share", &id, "gamma", "9"]).await;
    assert_eq!(over.status.code(), Some(1));
    assert!(err(&over).contains("exceed the total"), "{}", err(&over));

    let trial = c.issue_kind(
        keyfed_core::KeyKind::Trial,
        "acme",
        &["edr"],
        2,
        "2027-12-31",
    );
    c.add("main", &trial).await;
    let ext = ctl(&node, &["key", "extend-trial", &trial.key.id]).await;
    assert!(
        out(&ext).contains("2027-01-21"),
        "{} {}",
        out(&ext),
        err(&ext)
    );
    let again = ctl(&node, &["key", "extend-trial", &trial.key.id]).await;
    assert!(
        err(&again).contains("second extension is refused"),
        "{}",
        err(&again)
    );
    c.shutdown().await;
}

/// keyfedctl with its own environment: no token, CA or certificate leaks in.
async fn ctl_env(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfedctl"))
        .args(args)
        .env_remove("KEYFED_TOKEN")
        .env_remove("KEYFED_CA")
        .env_remove("KEYFED_CERT")
        .env_remove("KEYFED_KEY")
        .env_remove("KEYFED_ADDR")
        .env_remove("KEYFED_CONTEXT")
        .env("XDG_CONFIG_HOME", "/nonexistent/keyfedctl-test-config")
        .output()
        .await
        .expect("keyfedctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_keyfedctl_talks_mutual_tls_with_a_token_and_shows_the_audit_trail() {
    use keyfed_node::auth::{AdminToken, Role};
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", |cfg| {
                cfg.admin_tokens = vec![AdminToken {
                    name: "ops".into(),
                    token: Some("t0ken-for-ctl".into()),
                    role: Role::Admin,
                    ..AdminToken::default()
                }];
            })
            .tls(),
    )
    .await;
    c.wait_healthy("main").await;
    let tls = c.tls.clone().unwrap();
    tls.issue("operator"); // a client certificate that is not an administrator
    let (ca, cert, key) = (tls.ca(), tls.cert("operator"), tls.key("operator"));
    let node = c.url("main");
    let dir = tempfile::tempdir().unwrap();
    let kp = dir.path().join("k.key");
    let k = c.issue(&["antivirus"], 5, "2027-12-31");
    std::fs::write(&kp, k.render()).unwrap();
    let base = [
        "--addr",
        node.as_str(),
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let with = |more: &[&str]| -> Vec<String> {
        base.iter().chain(more).map(|s| (*s).to_owned()).collect()
    };
    let run = |args: Vec<String>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_env(&a).await
    };

    let refused = run(with(&["status"])).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        err(&refused).contains("UNAUTHENTICATED"),
        "{}",
        err(&refused)
    );

    let added = run(with(&[
        "--token",
        "t0ken-for-ctl",
        "key",
        "add",
        kp.to_str().unwrap(),
    ]))
    .await;
    assert!(added.status.success(), "{}", err(&added));
    assert!(out(&added).contains(&k.key.id), "{}", out(&added));

    let audit = run(with(&["--token", "t0ken-for-ctl", "audit"])).await;
    assert!(audit.status.success(), "{}", err(&audit));
    let table = out(&audit);
    assert!(
        table.contains("ACTOR") && table.contains("ops") && table.contains("AddKey"),
        "{table}"
    );
    assert!(!table.contains("t0ken-for-ctl"), "{table}");
    let json = run(with(&["--token", "t0ken-for-ctl", "--json", "audit"])).await;
    let v: serde_json::Value = serde_json::from_str(&out(&json)).expect("JSON");
    assert_eq!(v["entries"][0]["outcome"], "ok");

    // an https address without --ca is a clear local error
    let no_ca = ctl_env(&["--addr", &node, "status"]).await;
    assert!(err(&no_ca).contains("--ca"), "{}", err(&no_ca));
    c.shutdown().await;
}

fn json_err(o: &Output) -> serde_json::Value {
    serde_json::from_str(err(o).trim())
        .unwrap_or_else(|e| panic!("stderr is JSON ({e}): {}", err(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_are_objects_on_stderr_with_the_documented_exit_code() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let node = c.url("main");
    let k = c.issue(&["antivirus"], 2, "2027-12-31");
    c.add("main", &k).await;
    let over = ctl(&node, &["--json", "key", "assign", &k.key.id, "pc-1", "5"]).await;
    assert_eq!(over.status.code(), Some(1));
    let v = json_err(&over);
    assert_eq!(v["code"], "FAILED_PRECONDITION", "{v}");
    assert!(v["message"].as_str().unwrap().contains("free seat"), "{v}");
    assert!(out(&over).is_empty(), "nothing on stdout: {}", out(&over));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = ctl(&format!("http://127.0.0.1:{port}"), &["--json", "status"]).await;
    assert_eq!(down.status.code(), Some(3));
    assert_eq!(json_err(&down)["code"], "UNAVAILABLE");

    let usage = ctl(&node, &["--json", "key", "assign"]).await;
    assert_eq!(usage.status.code(), Some(2));
    assert_eq!(json_err(&usage)["code"], "USAGE");

    let local = ctl(&node, &["--json", "key", "add", "/nonexistent/x.key"]).await;
    assert_eq!(local.status.code(), Some(4));
    let v = json_err(&local);
    assert_eq!(v["code"], "LOCAL");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/x.key"),
        "{v}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_to_the_wrong_kind_of_server_names_what_the_server_is() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let up = format!("http://{}", c.upstream_addr);
    let at_upstream = ctl(&up, &["status"]).await;
    assert_eq!(at_upstream.status.code(), Some(3));
    let e = err(&at_upstream);
    assert!(
        e.contains("UNIMPLEMENTED") || e.contains("vendor upstream"),
        "{e}"
    );
    assert!(
        e.contains("is the vendor upstream") && e.contains("upstream ...") && e.contains("7601"),
        "{e}"
    );
    let at_node = ctl(&c.url("main"), &["upstream", "pubkey"]).await;
    assert_eq!(at_node.status.code(), Some(3));
    assert!(
        err(&at_node).contains("is a keyfed node") && err(&at_node).contains("keyfed-gus"),
        "{}",
        err(&at_node)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mismatches_say_what_happened_and_how_to_fix_it() {
    use keyfed_node::auth::{AdminToken, Role};
    use keyfed_node::tls::ClientCert;
    let token = |cfg: &mut keyfed_node::NodeConfig| {
        cfg.admin_tokens = vec![AdminToken {
            name: "ops".into(),
            token: Some("t0ken".into()),
            role: Role::Admin,
            ..AdminToken::default()
        }];
    };
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .root("open")
            .tweak("main", token)
            .tweak("open", move |cfg| {
                token(cfg);
                cfg.tls.as_mut().unwrap().admin_client_cert = Some(ClientCert::Optional);
            })
            .tls(),
    )
    .await;
    c.wait_healthy("main").await;
    c.wait_healthy("open").await;
    let tls = c.tls.clone().unwrap();
    let ca = tls.ca();
    let ca = ca.to_str().unwrap();

    // plaintext to a TLS port
    let plain = c.url("main").replacen("https://", "http://", 1);
    let p = ctl_env(&["--addr", &plain, "--ca", ca, "--token", "t0ken", "status"]).await;
    assert_eq!(p.status.code(), Some(3), "{}", err(&p));
    assert!(
        err(&p).contains("speaks TLS") && err(&p).contains(&c.url("main")),
        "{}",
        err(&p)
    );

    // TLS to a node whose Admin service needs a client certificate, token only
    let t = ctl_env(&[
        "--addr",
        &c.url("main"),
        "--ca",
        ca,
        "--token",
        "t0ken",
        "status",
    ])
    .await;
    assert_ne!(t.status.code(), Some(0));
    assert!(
        err(&t).contains("client certificate") && err(&t).contains("--cert"),
        "{}",
        err(&t)
    );

    // admin_client_cert = "optional": token-only administration over TLS works
    let ok = ctl_env(&[
        "--addr",
        &c.url("open"),
        "--ca",
        ca,
        "--token",
        "t0ken",
        "status",
    ])
    .await;
    assert!(ok.status.success(), "{}", err(&ok));
    assert!(out(&ok).contains("open"), "{}", out(&ok));
    // ... and the token is still needed
    let anon = ctl_env(&["--addr", &c.url("open"), "--ca", ca, "status"]).await;
    assert!(err(&anon).contains("UNAUTHENTICATED"), "{}", err(&anon));
    c.shutdown().await;
}

/// keyfedctl with a config file in `home` and nothing from the caller's environment.
async fn ctl_ctx(home: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfedctl"));
    for v in [
        "KEYFED_TOKEN",
        "KEYFED_CA",
        "KEYFED_CERT",
        "KEYFED_KEY",
        "KEYFED_ADDR",
        "KEYFED_CONTEXT",
        "KEYFED_TOKEN_FILE",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("XDG_CONFIG_HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().await.expect("keyfedctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_name_servers_with_credentials_and_flags_then_env_win() {
    use keyfed_node::auth::{AdminToken, Role};
    let c = TestCluster::start(Topology::new().root("main").tweak("main", |cfg| {
        cfg.admin_tokens = vec![AdminToken {
            name: "ops".into(),
            token: Some("s3cret-token".into()),
            role: Role::Admin,
            ..AdminToken::default()
        }];
    }))
    .await;
    c.wait_healthy("main").await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("keyfed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ops.token"), "s3cret-token\n").unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "# my servers\n[contexts.prod]\naddrs = [\"{dead}\", \"{}\"]\ntoken_file = \"ops.token\"\n\n[contexts.nowhere]\naddrs = [\"{dead}\"]\n",
            c.url("main")
        ),
    )
    .unwrap();
    let h = home.path();

    let list = ctl_ctx(h, &[], &["context", "list"]).await;
    assert!(
        out(&list).contains("prod") && out(&list).contains("nowhere"),
        "{}",
        out(&list)
    );
    // no current context yet: the default address, which is not this node
    let used = ctl_ctx(h, &[], &["context", "use", "prod"]).await;
    assert!(used.status.success(), "{}", err(&used));
    let list = ctl_ctx(h, &[], &["context", "list"]).await;
    let line = out(&list)
        .lines()
        .find(|l| l.contains("prod"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.trim_start().starts_with('*'), "{}", out(&list));

    // the first address is down: the second answers; the token comes from its file
    let st = ctl_ctx(h, &[], &["status"]).await;
    assert!(st.status.success(), "{}", err(&st));
    assert!(out(&st).contains("main"), "{}", out(&st));

    let show = ctl_ctx(h, &[], &["context", "show"]).await;
    assert!(show.status.success(), "{}", err(&show));
    assert!(out(&show).contains("ops.token"), "{}", out(&show));
    assert!(
        !out(&show).contains("s3cret-token"),
        "a token is never printed"
    );
    let show = ctl_ctx(h, &[], &["--json", "context", "show"]).await;
    assert!(
        !out(&show).contains("s3cret-token"),
        "a token is never printed"
    );

    // the environment beats the context, and a flag beats the environment
    let env = [("KEYFED_CONTEXT", "nowhere")];
    let e = ctl_ctx(h, &env, &["status"]).await;
    assert_eq!(e.status.code(), Some(3), "{}", err(&e));
    assert!(err(&e).contains(&dead), "{}", err(&e));
    let f = ctl_ctx(h, &env, &["--context", "prod", "status"]).await;
    assert!(f.status.success(), "{}", err(&f));
    let a = ctl_ctx(h, &[("KEYFED_ADDR", dead.as_str())], &["status"]).await;
    assert_eq!(a.status.code(), Some(3), "KEYFED_ADDR beats the context");
    let a = ctl_ctx(
        h,
        &[("KEYFED_ADDR", dead.as_str())],
        &["--addr", &c.url("main"), "status"],
    )
    .await;
    assert!(a.status.success(), "--addr beats KEYFED_ADDR: {}", err(&a));
    // a wrong token from a flag beats the context's file
    let w = ctl_ctx(h, &[], &["--token", "wrong", "status"]).await;
    assert!(err(&w).contains("UNAUTHENTICATED"), "{}", err(&w));

    let unknown = ctl_ctx(h, &[], &["--context", "staging", "status"]).await;
    assert_eq!(unknown.status.code(), Some(4));
    assert!(
        err(&unknown).contains("staging") && err(&unknown).contains("nowhere, prod"),
        "{}",
        err(&unknown)
    );
    c.shutdown().await;
}

#[tokio::test]
async fn completions_and_the_man_page_come_from_the_clap_definitions() {
    for (shell, marker) in [
        ("bash", "_keyfedctl"),
        ("zsh", "#compdef keyfedctl"),
        ("fish", "complete -c keyfedctl"),
    ] {
        let o = ctl("http://127.0.0.1:1", &["completions", shell]).await;
        assert!(o.status.success(), "{}", err(&o));
        assert!(
            out(&o).contains(marker) && out(&o).contains("context"),
            "{shell}"
        );
    }
    let man = ctl("http://127.0.0.1:1", &["man"]).await;
    assert!(man.status.success(), "{}", err(&man));
    assert!(out(&man).contains(".TH keyfedctl"), "{}", out(&man));
    assert!(
        out(&man).contains("Exit codes"),
        "the man page documents exit codes"
    );
}
