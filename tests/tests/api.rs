//! The JSON/HTTP API (`/api/v1`, docs/api.md) against a real cluster, with
//! a plain HTTP/1.1 client over a TCP (or TLS) stream: every documented
//! `curl` example runs and answers as documented; roles, audit, errors and
//! limits are the Admin service's.
use keyfed_node::config::{AdminToken, Role};
use keyfed_tests::http::{exchange, parse_reply, request as http, Reply};
use keyfed_tests::{eventually, TestCluster, Topology};
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPS: &str = "0ps-api-t0ken";
const VIEWER: &str = "v1ewer-api-t0ken";

fn with_api(cfg: &mut keyfed_node::NodeConfig) {
    cfg.api_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

fn with_api_and_tokens(cfg: &mut keyfed_node::NodeConfig) {
    with_api(cfg);
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

fn api_addr(c: &TestCluster, id: &str) -> SocketAddr {
    c.nodes[id]
        .api_addr
        .expect("the node serves the API (api_listen)")
}

/// The API's error: its status and `{"code", "message"}`.
trait ApiError {
    fn error(&self) -> (u16, String, String);
}

impl ApiError for Reply {
    fn error(&self) -> (u16, String, String) {
        let v = self.json();
        let keys: Vec<&String> = v.as_object().expect("an object").keys().collect();
        assert_eq!(
            keys,
            ["code", "message"],
            "an error has code and message: {v}"
        );
        (
            self.status,
            v["code"].as_str().unwrap_or_default().to_owned(),
            v["message"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// `method target` with a bearer token and, for a body, JSON.
async fn call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    target: &str,
    body: Option<Value>,
) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if method == "POST" || method == "PUT" {
        headers.push(("Content-Type", "application/json"));
    }
    http(addr, method, target, &headers, body.as_bytes()).await
}

/// Adds a key through the API as `ops` (the harness's gRPC helpers send no token).
async fn add_key(addr: SocketAddr, k: &keyfed_core::KeyFile) {
    let r = call(
        addr,
        OPS,
        "POST",
        "/api/v1/keys",
        Some(json!({ "key_file": k.render() })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `GET target` as `ops`, which must answer 200.
async fn get(addr: SocketAddr, target: &str) -> Value {
    let r = call(addr, OPS, "GET", target, None).await;
    assert_eq!(r.status, 200, "{target}: {}", r.body);
    r.json()
}

async fn seats_assigned(addr: SocketAddr, id: &str) -> Value {
    get(addr, &format!("/api/v1/keys/{id}")).await["seats_assigned"].clone()
}

// ---- the documented examples -------------------------------------------

/// A `curl` line of docs/api.md with the comment above it.
#[derive(Debug)]
struct Example {
    line: String,
    status: u16,
    /// Top-level fields the reply must have; `None`: the reply is `{}`.
    fields: Option<Vec<String>>,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// `Some(None)`: the body comes from stdin (the key file through jq).
    body: Option<Option<String>>,
}

/// Splits a shell line into words: single quotes literal, double quotes
/// and bare words with `$VAR` expanded from `vars`.
fn shell_words(line: &str, vars: &[(&str, String)]) -> Vec<String> {
    fn expand(
        out: &mut String,
        chars: &mut std::iter::Peekable<std::str::Chars>,
        vars: &[(&str, String)],
    ) {
        let mut name = String::new();
        while let Some(c) = chars
            .peek()
            .copied()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
            chars.next();
        }
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("the examples use ${name}, which the test does not set"));
        out.push_str(&value.1);
    }
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        '$' => expand(w, &mut chars, vars),
                        c => w.push(c),
                    }
                }
            }
            '$' => expand(cur.get_or_insert_with(String::new), &mut chars, vars),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    words
}

fn examples(doc: &str, vars: &[(&str, String)]) -> Vec<Example> {
    let mut out = Vec::new();
    let mut comment: Option<&str> = None;
    for line in doc.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("# ") {
            comment = Some(c);
            continue;
        }
        let (stdin, curl) = match line.split_once("| curl ") {
            Some((_, rest)) => (true, format!("curl {rest}")),
            None if line.starts_with("curl ") => (false, line.to_owned()),
            None => {
                comment = None;
                continue;
            }
        };
        // a stream (curl -N) never ends: the notification stream test runs it
        if curl.contains(" -N ") {
            comment = None;
            continue;
        }
        let c = comment
            .take()
            .unwrap_or_else(|| panic!("a comment with the status above: {line}"));
        let (status, fields) = c.split_once(':').expect("`# STATUS: fields`");
        let status: u16 = status
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("the comment starts with the status");
        let fields = fields.trim();
        let fields = (fields != "(empty object)")
            .then(|| fields.split(',').map(|f| f.trim().to_owned()).collect());
        let words = shell_words(&curl, vars);
        let mut ex = Example {
            line: line.to_owned(),
            status,
            fields,
            method: String::new(),
            target: String::new(),
            headers: Vec::new(),
            body: None,
        };
        let mut it = words.into_iter().skip(1);
        while let Some(w) = it.next() {
            match w.as_str() {
                "-sS" => {}
                "-H" => {
                    let h = it.next().expect("a header");
                    let (n, v) = h.split_once(':').expect("Name: value");
                    ex.headers.push((n.trim().to_owned(), v.trim().to_owned()));
                }
                "-X" => ex.method = it.next().expect("a method"),
                "-d" => ex.body = Some(Some(it.next().expect("a body"))),
                "--data-binary" => {
                    assert_eq!(it.next().as_deref(), Some("@-"), "{line}");
                    assert!(stdin, "{line}");
                    ex.body = Some(None);
                }
                url => {
                    let api = &vars[0].1;
                    ex.target = url
                        .strip_prefix(api.as_str())
                        .unwrap_or_else(|| panic!("a URL under $API: {url}"))
                        .to_owned();
                }
            }
        }
        if ex.method.is_empty() {
            ex.method = if ex.body.is_some() { "POST" } else { "GET" }.into();
        }
        out.push(ex);
    }
    out
}

/// The path of a target with its ids put back as the docs' names.
fn template(target: &str, ids: &[&str]) -> String {
    let path = target.split('?').next().unwrap_or_default();
    ids.iter()
        .fold(path.to_owned(), |p, id| p.replace(id, "{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_example_answers_as_documented() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .child("c", "main")
            .tweak("main", with_api_and_tokens),
    )
    .await;
    let addr = api_addr(&c, "main");
    eventually("c is linked", || async {
        get(addr, "/api/v1/peers").await["peers"][0]["online"] == true
    })
    .await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let key = k.key.id.clone();
    // a station that has contacted the node, for the command example
    let sub = c.issue(&["firewall"], 3, "2027-12-31");
    add_key(addr, &sub).await;
    let mut agent = c.agent("main", "ws-7", &["firewall"]);
    assert!(agent.sync().await.expect("the station syncs").licensed);
    let trial = c.issue_kind(
        keyfed_core::KeyKind::Trial,
        "acme",
        &["antispam"],
        2,
        "2027-11-01",
    );
    add_key(addr, &trial).await;
    let subscription = c.issue_kind(
        keyfed_core::KeyKind::Subscription,
        "acme",
        &["antivirus"],
        5,
        "2027-05-31",
    );
    add_key(addr, &subscription).await;

    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"))
        .expect("docs/api.md");
    let vars = [
        ("API", format!("http://{addr}")),
        ("TOKEN", OPS.to_owned()),
        ("READ_ONLY_TOKEN", VIEWER.to_owned()),
        ("KEY", key.clone()),
        ("TRIAL", trial.key.id.clone()),
        ("SUB", subscription.key.id.clone()),
    ];
    let ids = [key.as_str(), &trial.key.id, &subscription.key.id];
    let examples = examples(&doc, &vars);
    let key_file = json!({ "key_file": k.render() }).to_string();
    let mut seen = std::collections::BTreeMap::new();
    for ex in &examples {
        let headers: Vec<(&str, &str)> = ex
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = match &ex.body {
            Some(Some(b)) => b.clone(),
            Some(None) => key_file.clone(),
            None => String::new(),
        };
        let r = http(addr, &ex.method, &ex.target, &headers, body.as_bytes()).await;
        assert_eq!(r.status, ex.status, "{}\n{}", ex.line, r.body);
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{}",
            ex.line
        );
        let v = r.json();
        match &ex.fields {
            None => assert_eq!(v, json!({}), "{}", ex.line),
            Some(fields) => {
                for f in fields {
                    assert!(v.get(f).is_some(), "{} has no {f}: {v}", ex.line);
                }
            }
        }
        // the first example of an endpoint is its success
        seen.entry(format!("{} {}", ex.method, template(&ex.target, &ids)))
            .or_insert(v);
    }

    // every endpoint of the table has an example, and no example is off the table
    let table: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(e, _)| e))
        .filter(|e| e.contains(" /api/v1/"))
        .map(|e| e.split('?').next().unwrap_or_default().to_owned())
        .collect();
    assert!(table.len() >= 26, "{table:?}");
    for e in &table {
        let (m, p) = e.split_once(' ').expect("METHOD path");
        let p = p.replace("{object}", "pc-1");
        assert!(
            seen.contains_key(&format!("{m} {p}")),
            "docs/api.md has no example of {e}"
        );
    }

    // the shapes are the protobuf JSON mapping
    let grant = &seen["POST /api/v1/keys/{id}/grants"];
    assert_eq!(grant["kind"], "OBJECT_KIND_STATION", "{grant}");
    assert_eq!(grant["seats"], 2);
    let added = &seen["POST /api/v1/keys"];
    assert_eq!(added["key"]["id"], key.as_str());
    assert_eq!(added["origin"], json!({ "upstream": true }));
    assert_eq!(added["key"]["kind"], "KEY_KIND_TERM");
    assert!(added["key"]["serial"].is_string(), "{added}");
    let listed = seen["GET /api/v1/keys"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed.iter().any(|k| k["key"]["id"] == key.as_str()),
        "{listed:?}"
    );
    assert_eq!(seen["GET /api/v1/keys/{id}/file"]["text"], k.render());
    let renewed = &seen["POST /api/v1/keys/{id}/renew"]["outcomes"][0];
    assert_eq!(renewed["key_id"], key.as_str(), "{renewed}");
    assert_eq!(renewed["outcome"], "nothing", "{renewed}");
    let ns = seen["GET /api/v1/notifications"]["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        ns.iter()
            .any(|n| n["event"] == "key-added" && n["key_id"] == key.as_str()),
        "{ns:?}"
    );
    assert!(ns.iter().all(|n| n["seq"].is_string()), "{ns:?}");
    let peers = &seen["GET /api/v1/peers"]["peers"];
    assert_eq!(peers[0]["node_id"], "c", "{peers}");
    assert!(peers[0]["outbox_depth"].is_string(), "{peers}");
    let queued = &seen["POST /api/v1/commands"];
    assert_eq!(
        (queued["object"].as_str(), queued["state"].as_str()),
        (Some("ws-7"), Some("pending"))
    );
    assert_eq!(seen["PUT /api/v1/settings"]["settings"], "scan = \"daily\"");
    assert!(seen["PUT /api/v1/settings"]["version"].is_string());
    let stations = &seen["GET /api/v1/stations"]["stations"];
    assert!(
        stations
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["fingerprint"] == "ws-7")),
        "{stations}"
    );
    assert!(seen["GET /api/v1/telemetry"]["days_left"].is_string());
    let extended = &seen["POST /api/v1/keys/{id}/extend-trial"];
    assert_eq!(extended["trial_extended"], true, "{extended}");
    assert_eq!(extended["key"]["id"], trial.key.id.as_str(), "{extended}");
    let keys = get(addr, "/api/v1/keys").await.to_string();
    assert!(
        !keys.contains(&trial.key.id),
        "the trial was deleted: {keys}"
    );
    let shared = &seen["POST /api/v1/keys/{id}/shares"];
    assert_eq!(
        (
            shared["customer"].as_str(),
            shared["seats"].as_u64(),
            shared["role"].as_str()
        ),
        (Some("beta"), Some(2), Some("shared")),
        "{shared}"
    );
    // the exported report uploads (here by the node that wrote it)
    let file = &seen["GET /api/v1/telemetry/file"];
    assert!(
        file["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("# keyfed telemetry report")),
        "{file}"
    );
    let receipt = call(
        addr,
        OPS,
        "POST",
        "/api/v1/telemetry/upload",
        Some(json!({ "text": file["text"] })),
    )
    .await;
    assert_eq!(receipt.status, 200, "{}", receipt.body);
    let receipt = receipt.json();
    assert_eq!(receipt["node_id"], "main", "{receipt}");
    assert_eq!(receipt["via"], "main > upstream", "{receipt}");
    assert_eq!(seen["GET /api/v1/status"]["node_id"], "main");
    assert_eq!(
        seen["GET /api/v1/keys/k-does-not-exist"]["code"],
        "NOT_FOUND"
    );

    // the documented full reply has exactly the fields a reply has
    let sample = doc
        .rsplit("```json")
        .next()
        .and_then(|b| b.split("```").next())
        .expect("a full reply in the docs");
    let sample: Value = serde_json::from_str(sample).expect("the sample is JSON");
    let names = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let one = &seen["GET /api/v1/keys/{id}"];
    assert_eq!(names(&sample), names(one), "{one}");
    assert_eq!(names(&sample["key"]), names(&one["key"]), "{one}");
    let error = &seen["GET /api/v1/keys/k-does-not-exist"];
    assert!(
        doc.contains(&format!("\"message\": {}", error["message"])),
        "{error}"
    );

    // the writes landed: what gRPC sees, and the audit trail names the token
    let objects = get(addr, "/api/v1/objects").await;
    assert!(
        !objects.to_string().contains("pc-1"),
        "unassigned: {objects}"
    );
    let commands = get(addr, "/api/v1/commands").await;
    assert_eq!(commands["commands"][0]["object"], "ws-7", "{commands}");
    let audit = call(addr, OPS, "GET", "/api/v1/audit", None).await.json();
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    for action in [
        "AddKey",
        "DeleteKey",
        "ExtendTrial",
        "ShareSubscription",
        "AssignSeats",
        "UnassignSeats",
        "CheckForUpdates",
        "QueueCommand",
        "SetSettings",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["actor"] == "ops" && e["action"] == action && e["outcome"] == "ok"),
            "{action} by ops in {entries:?}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_and_every_write_is_refused_and_audited() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", with_api_and_tokens),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = api_addr(&c, "main");
    let k = c.issue(&["antivirus"], 4, "2027-12-31");
    let id = k.key.id.clone();
    add_key(addr, &k).await;

    let read = call(addr, VIEWER, "GET", &format!("/api/v1/keys/{id}"), None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let writes = [
        (
            "POST",
            "/api/v1/keys".to_owned(),
            json!({ "key_file": k.render() }),
            "AddKey",
        ),
        (
            "POST",
            format!("/api/v1/keys/{id}/grants"),
            json!({ "object": "pc-1", "seats": 1 }),
            "AssignSeats",
        ),
        (
            "DELETE",
            format!("/api/v1/keys/{id}/grants/pc-1"),
            Value::Null,
            "UnassignSeats",
        ),
        (
            "POST",
            format!("/api/v1/keys/{id}/renew"),
            json!({}),
            "CheckForUpdates",
        ),
        (
            "POST",
            "/api/v1/renew".to_owned(),
            json!({}),
            "CheckForUpdates",
        ),
        (
            "POST",
            "/api/v1/commands".to_owned(),
            json!({ "object": "pc-1", "command": "scan" }),
            "QueueCommand",
        ),
        (
            "PUT",
            "/api/v1/settings".to_owned(),
            json!({ "settings": "x = 1" }),
            "SetSettings",
        ),
    ];
    for (method, path, body, rpc) in &writes {
        let body = (!body.is_null()).then(|| body.clone());
        let r = call(addr, VIEWER, method, path, body).await;
        let (status, code, message) = r.error();
        assert_eq!(
            (status, code.as_str()),
            (403, "PERMISSION_DENIED"),
            "{method} {path}: {}",
            r.body
        );
        // the message is the Admin service's own
        assert_eq!(
            message,
            format!("{rpc} changes the node and viewer may only read")
        );
    }
    assert_eq!(seats_assigned(addr, &id).await, 0);
    let audit = call(addr, VIEWER, "GET", "/api/v1/audit?limit=1000", None)
        .await
        .json();
    let refused: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["actor"] == "viewer" && e["outcome"] == "PERMISSION_DENIED")
        .filter_map(|e| e["action"].as_str())
        .collect();
    let expected: Vec<&str> = writes.iter().map(|w| w.3).collect();
    assert_eq!(refused, expected, "{audit}");
    let detail = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["actor"] == "viewer" && e["action"] == "AssignSeats")
        .map(|e| e["detail"].clone());
    assert_eq!(detail, Some(json!(format!("key {id} object pc-1 seats 1"))));

    // no token, or a wrong one: 401, and the write is audited as refused
    let anonymous = http(addr, "GET", "/api/v1/status", &[], b"").await;
    assert_eq!(anonymous.error().0, 401);
    assert_eq!(anonymous.error().1, "UNAUTHENTICATED");
    let guess = call(addr, "guess", "POST", "/api/v1/renew", Some(json!({}))).await;
    let (status, code, message) = guess.error();
    assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
    assert!(message.contains("not valid"), "{message}");
    let audit = call(addr, OPS, "GET", "/api/v1/audit?limit=1000", None)
        .await
        .json();
    let last = audit["entries"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("CheckForUpdates"), Some("UNAUTHENTICATED")),
        "{last}"
    );
    assert!(
        !audit.to_string().contains("guess"),
        "the token is never written"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_grpc_code_and_message_and_bodies_are_checked() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", with_api_and_tokens),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = api_addr(&c, "main");
    let k = c.issue(&["antivirus"], 2, "2027-12-31");
    add_key(addr, &k).await;
    let id = k.key.id.clone();

    // the same code and message as gRPC
    let grpc = {
        let mut admin = keyfed_proto::v1::admin_client::AdminClient::new(
            c.endpoint(&c.url("main"), None).connect_lazy(),
        );
        let mut req = tonic::Request::new(keyfed_proto::v1::AssignSeatsRequest {
            key_id: id.clone(),
            object: "pc-1".into(),
            seats: 5,
            ..Default::default()
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {OPS}").parse().expect("header"),
        );
        admin.assign_seats(req).await.expect_err("over the limit")
    };
    let r = call(
        addr,
        OPS,
        "POST",
        &format!("/api/v1/keys/{id}/grants"),
        Some(json!({ "object": "pc-1", "seats": 5 })),
    )
    .await;
    assert_eq!(
        r.error(),
        (400, "FAILED_PRECONDITION".into(), grpc.message().to_owned())
    );
    let missing = call(addr, OPS, "GET", "/api/v1/keys/k-nope", None).await;
    let (status, code, message) = missing.error();
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    assert!(message.contains("k-nope"), "{message}");

    // unknown paths and methods (paths outside /api/ are the console's)
    for path in ["/api/v1/nothing", "/api/v1/keys/a/b/c/d/e", "/api/v2/keys"] {
        let r = call(addr, OPS, "GET", path, None).await;
        assert_eq!(
            (r.error().0, r.error().1.as_str()),
            (404, "NOT_FOUND"),
            "{path}: {}",
            r.body
        );
    }
    let wrong = call(addr, OPS, "DELETE", "/api/v1/settings", None).await;
    assert_eq!(wrong.status, 405, "{}", wrong.body);
    assert_eq!(wrong.header("allow"), Some("GET, PUT"));
    assert_eq!(wrong.error().1, "UNIMPLEMENTED");

    // malformed bodies name what was wrong
    let auth = format!("Bearer {OPS}");
    let grants = format!("/api/v1/keys/{id}/grants");
    let json_headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let bad = |body: &'static str| {
        let grants = grants.clone();
        async move { http(addr, "POST", &grants, &json_headers, body.as_bytes()).await }
    };
    let (status, code, message) = bad(r#"{"object": "pc-1", "seats": "#).await.error();
    assert_eq!((status, code.as_str()), (400, "INVALID_ARGUMENT"));
    assert!(
        message.contains("AssignSeatsRequest") && message.contains("line 1"),
        "{message}"
    );
    let (status, _, message) = bad(r#"{"object": "pc-1", "seatz": 1}"#).await.error();
    assert_eq!(status, 400);
    assert!(
        message.contains("seatz") && message.contains("seats"),
        "{message}"
    );
    let (status, _, message) =
        bad(r#"{"object": "pc-1", "seats": 1, "kind": "OBJECT_KIND_TOASTER"}"#)
            .await
            .error();
    assert_eq!(status, 400);
    assert!(message.contains("OBJECT_KIND_TOASTER"), "{message}");
    let (status, _, message) = bad(r#"{"key_id": "k-other", "object": "pc-1", "seats": 1}"#)
        .await
        .error();
    assert_eq!(status, 400);
    assert!(message.contains("k-other"), "{message}");
    let plain = http(
        addr,
        "POST",
        &grants,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "text/plain"),
        ],
        br#"{"object": "pc-1", "seats": 1}"#,
    )
    .await;
    assert_eq!(plain.error().0, 415, "{}", plain.body);
    let (status, _, message) = call(addr, OPS, "GET", "/api/v1/notifications?after=3", None)
        .await
        .error();
    assert_eq!(status, 400);
    assert!(
        message.contains("\"after\"") && message.contains("after_seq"),
        "{message}"
    );
    let (status, _, message) = call(addr, OPS, "GET", "/api/v1/audit?limit=lots", None)
        .await
        .error();
    assert_eq!(status, 400);
    assert!(message.contains("limit"), "{message}");
    assert_eq!(seats_assigned(addr, &id).await, 0, "nothing was assigned");

    // over 1 MiB: refused before it is read, declared or not
    let declared = {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /api/v1/keys HTTP/1.1\r\nHost: keyfed\r\nAuthorization: Bearer {OPS}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            2 * 1024 * 1024
        );
        let mut s = s;
        s.write_all(head.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        parse_reply(&raw)
    };
    let (status, code, message) = declared.error();
    assert_eq!((status, code.as_str()), (413, "RESOURCE_EXHAUSTED"));
    assert!(message.contains("1048576"), "{message}");
    let chunked = {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /api/v1/keys HTTP/1.1\r\nHost: keyfed\r\nAuthorization: Bearer {OPS}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("send");
        let chunk = vec![b' '; 64 * 1024];
        // a little over the limit; the server may stop reading early
        for _ in 0..17 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .is_err()
                || s.write_all(&chunk).await.is_err()
                || s.write_all(b"\r\n").await.is_err()
            {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        (!raw.is_empty()).then(|| parse_reply(&raw))
    };
    // the server may reset the connection while the client still writes;
    // a reply that does arrive is the 413
    if let Some(r) = chunked {
        assert_eq!(r.error().0, 413, "{}", r.body);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_api_answers_loopback_callers_as_local() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", with_api)).await;
    c.wait_healthy("main").await;
    let addr = api_addr(&c, "main");
    let k = c.issue(&["antivirus"], 2, "2027-12-31");
    let add = http(
        addr,
        "POST",
        "/api/v1/keys",
        &[("Content-Type", "application/json")],
        json!({ "key_file": k.render() }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(add.status, 200, "{}", add.body);
    assert!(c.has_key("main", &k.key.id).await, "the gRPC side sees it");
    let audit = http(addr, "GET", "/api/v1/audit", &[], b"").await.json();
    assert_eq!(audit["entries"][0]["actor"], "local", "{audit}");
    assert_eq!(audit["entries"][0]["action"], "AddKey", "{audit}");

    // DNS rebinding: the same loopback caller under a name is refused, and
    // its write changes nothing
    let other = c.issue(&["firewall"], 2, "2027-12-31");
    for host in [
        "rebound.example",
        &format!("rebound.example:{}", addr.port()),
    ] {
        let r = http(
            addr,
            "POST",
            "/api/v1/keys",
            &[("Host", host), ("Content-Type", "application/json")],
            json!({ "key_file": other.render() }).to_string().as_bytes(),
        )
        .await;
        let (status, code, message) = r.error();
        assert_eq!(
            (status, code.as_str()),
            (403, "PERMISSION_DENIED"),
            "{message}"
        );
        assert!(
            message.contains("DNS rebinding") && message.contains(host),
            "{message}"
        );
    }
    assert!(
        !c.has_key("main", &other.key.id).await,
        "a refused write changes nothing"
    );
    let named = http(addr, "GET", "/api/v1/status", &[("Host", "localhost")], b"").await;
    assert_eq!(named.status, 200, "localhost is taken: {}", named.body);
    c.shutdown().await;
}

// ---- the notification stream (Server-Sent Events) ----------------------

/// Opens `GET target` and reads until `want` has arrived (or fails after
/// the deadline); returns the open connection and what arrived.
async fn open_stream(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    target: &str,
    want: &str,
) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("send");
    let mut got = String::new();
    read_until(&mut s, &mut got, want).await;
    (s, got)
}

async fn read_until(s: &mut tokio::net::TcpStream, got: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    while !got.contains(want) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{want:?} never arrived; the stream so far: {got}"))
            .expect("read the stream");
        assert!(n > 0, "the stream ended before {want:?}: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn key_added(id: &str) -> String {
    format!(r#""event":"key-added","key_id":"{id}""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_stream_sends_stored_then_live_events_and_resumes_after_last_event_id() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .tweak("main", with_api_and_tokens),
    )
    .await;
    c.wait_healthy("main").await;
    let addr = api_addr(&c, "main");
    let k1 = c.issue(&["antivirus"], 2, "2027-12-31");
    add_key(addr, &k1).await;
    let ops = format!("Bearer {OPS}");
    let path = "/api/v1/notifications/stream?after_seq=0";
    // the stored notification first
    let (mut s, mut got) = open_stream(
        addr,
        &[("Authorization", &ops)],
        path,
        &key_added(&k1.key.id),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{got}"
    );
    assert!(got.contains("event: notification\ndata: {"), "{got}");
    // then a live one, on the same open stream
    let k2 = c.issue(&["firewall"], 2, "2027-12-31");
    add_key(addr, &k2).await;
    read_until(&mut s, &mut got, &key_added(&k2.key.id)).await;
    drop(s);

    // EventSource reconnects with the last id it saw: only what came after
    let ns = get(addr, "/api/v1/notifications").await;
    let seq_of = |id: &str| {
        ns["notifications"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|n| n["event"] == "key-added" && n["key_id"] == id)
            })
            .and_then(|n| n["seq"].as_str())
            .map(str::to_owned)
            .expect("the key-added notification")
    };
    let (s1, s2) = (seq_of(&k1.key.id), seq_of(&k2.key.id));
    let (s, got) = open_stream(
        addr,
        &[("Authorization", &ops), ("Last-Event-ID", &s1)],
        path,
        &key_added(&k2.key.id),
    )
    .await;
    assert!(got.contains(&format!("id: {s2}\n")), "{got}");
    assert!(
        !got.contains(&key_added(&k1.key.id)),
        "resumed after {s1}: {got}"
    );
    drop(s);

    // a read-only token may watch; no token is refused with the usual error
    let viewer = format!("Bearer {VIEWER}");
    let (s, _) = open_stream(
        addr,
        &[("Authorization", &viewer)],
        path,
        &key_added(&k1.key.id),
    )
    .await;
    drop(s);
    let r = http(addr, "GET", path, &[], b"").await;
    assert_eq!(r.error().0, 401, "{}", r.body);
    let r = http(
        addr,
        "GET",
        path,
        &[("Authorization", &ops), ("Last-Event-ID", "x")],
        b"",
    )
    .await;
    let (status, code, message) = r.error();
    assert_eq!(
        (status, code.as_str()),
        (400, "INVALID_ARGUMENT"),
        "{message}"
    );
    assert!(message.contains("Last-Event-ID"), "{message}");
    let r = call(addr, OPS, "POST", "/api/v1/notifications/stream", None).await;
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET")),
        "{}",
        r.body
    );
    // the documented example is this request
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    assert!(
        doc.contains(r#"curl -sS -N -H "Authorization: Bearer $TOKEN" "$API/api/v1/notifications/stream?after_seq=0""#),
        "docs/api.md shows the stream request"
    );
    c.shutdown().await;
}

// ---- TLS --------------------------------------------------------------

fn tls_client(c: &TestCluster, cert: Option<&str>) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let tls = c.tls.as_ref().expect("a TLS cluster");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(tls.ca()).expect("CA") {
        roots.add(cert.expect("CA cert")).expect("CA added");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some(name) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(tls.cert(name))
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert chain"),
                PrivateKeyDer::from_pem_file(tls.key(name)).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

async fn https(c: &TestCluster, cert: Option<&str>, path: &str, headers: &[(&str, &str)]) -> Reply {
    let addr = api_addr(c, "main");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("main").expect("name");
    let tls = tls_client(c, cert)
        .connect(name, tcp)
        .await
        .expect("the API speaks TLS with the node's certificate");
    exchange(tls, "main", "GET", path, headers, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_api_serves_tls_and_applies_the_admin_certificate_policy() {
    let c = TestCluster::start(
        Topology::new()
            .tls()
            .root("main")
            .tweak("main", with_api_and_tokens),
    )
    .await;
    c.wait_healthy("main").await;
    // an administrator's certificate is enough, like on the gRPC port
    let by_cert = https(&c, Some("admin"), "/api/v1/status", &[]).await;
    assert_eq!(by_cert.status, 200, "{}", by_cert.body);
    assert_eq!(by_cert.json()["node_id"], "main");
    // admin_client_cert is "required" by default: a token alone is refused
    let auth = format!("Bearer {OPS}");
    let token_only = https(&c, None, "/api/v1/status", &[("Authorization", &auth)]).await;
    let (status, code, message) = token_only.error();
    assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
    assert!(message.contains("client certificate"), "{message}");
    // plaintext HTTP on the TLS port gets no API reply
    let plain = {
        let mut s = tokio::net::TcpStream::connect(api_addr(&c, "main"))
            .await
            .expect("connect");
        s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        raw
    };
    assert!(!String::from_utf8_lossy(&plain).contains("node_id"));
    c.shutdown().await;
}
