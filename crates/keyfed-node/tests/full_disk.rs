//! r13 on a full disk, without filling the host's: the `keyfed` binary runs
//! under `prlimit --fsize` (a write past the limit fails with EFBIG). A grant
//! that cannot be made durable is refused with RESOURCE_EXHAUSTED, the node
//! then serves nothing (its store is poisoned, health NOT_SERVING), and after
//! a restart without the limit every acknowledged grant is there. The
//! refused one's outcome is unknown, as after any failed sync: a grant's
//! transaction now writes several log entries (the grant and its station
//! index), and sled keeps those that fit before the segment's end, so the
//! refused grant is either absent or there whole, never anything else.
use keyfed_core::{KeyKind, SharedClock, SystemClock};
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

/// One sled segment: sled writes its log a segment at a time and never
/// across a segment's end, so a limit on a segment boundary makes the write
/// that needs a new segment fail whole, with nothing of it on disk.
const SEGMENT: u64 = 512 * 1024;

/// The node process; killed when dropped, even when the test fails.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start(data_dir: &Path, vendor: &str, fsize: Option<u64>) -> Node {
    let port = free_port();
    let mut cmd = match fsize {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--fsize={n}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_keyfed"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_keyfed")),
    };
    cmd.args(["serve", "--node-id", "disk", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--trust")
        .arg(vendor)
        .env("RUST_LOG", "warn")
        .env_remove("KEYFED_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Node {
        child: cmd
            .spawn()
            .expect("the node starts (is prlimit installed?)"),
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin(node: &Node) -> AdminClient<Channel> {
    let url = node.url.clone();
    eventually("the node to answer", || {
        let url = url.clone();
        async move {
            let mut a = AdminClient::connect(url).await.ok()?;
            a.status(pb::Empty {}).await.ok()?;
            Some(a)
        }
    })
    .await
}

async fn serving(node: &Node) -> Option<i32> {
    let ch = tonic::transport::Endpoint::from_shared(node.url.clone())
        .ok()?
        .connect()
        .await
        .ok()?;
    let reply = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status)
}

fn assign(key_id: &str, i: u32) -> pb::AssignSeatsRequest {
    pb::AssignSeatsRequest {
        key_id: key_id.into(),
        object: format!("station-{i}"),
        seats: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_full_disk_refuses_the_grant_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let upstream = keyfed_gus::Upstream::open(&dir.path().join("upstream"), clock).unwrap();
    let key = upstream
        .issue(keyfed_gus::IssueRequest {
            customer: "acme".into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into()],
            seats: 100_000,
            kind: KeyKind::Term,
            expires: "2099-12-31".parse().unwrap(),
        })
        .unwrap();
    let data = dir.path().join("node");
    let vendor = upstream.public_key_hex();

    let node = start(&data, &vendor, Some(SEGMENT));
    let mut a = admin(&node).await;
    let key_id = a
        .add_key(pb::AddKeyRequest {
            key_file: key.render(),
            ..Default::default()
        })
        .await
        .expect("the key fits in the first segment")
        .into_inner()
        .key
        .unwrap()
        .id;
    let mut acked = 0;
    let refused = loop {
        assert!(acked < 20_000, "the file size limit was never reached");
        match a.assign_seats(assign(&key_id, acked)).await {
            Ok(_) => acked += 1,
            Err(s) => break s,
        }
    };
    assert!(acked > 0, "no grant fit under the limit: {refused:?}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("could not make a write durable")
            && refused.message().contains("free disk space"),
        "{}",
        refused.message()
    );
    // from now on the node serves nothing, not even reads of what sled holds
    let read = a
        .list_objects(pb::ListObjectsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::ResourceExhausted, "{read:?}");
    let again = a
        .assign_seats(assign(&key_id, acked + 1))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    eventually("health to say NOT_SERVING", || async {
        (serving(&node).await? == not_serving).then_some(())
    })
    .await;
    drop(node);

    // restarted without the limit: everything acknowledged, nothing refused
    let node = start(&data, &vendor, None);
    let mut a = admin(&node).await;
    let objects = a
        .list_objects(pb::ListObjectsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let held: std::collections::BTreeSet<String> = objects
        .objects
        .iter()
        .filter(|o| o.grants.iter().any(|g| g.key_id == key_id))
        .map(|o| o.name.clone())
        .collect();
    for i in 0..acked {
        assert!(
            held.contains(&format!("station-{i}")),
            "acknowledged grant station-{i} is gone ({} of {acked} held)",
            held.len()
        );
    }
    // the refused grant: absent, or there whole (one seat of this key)
    let refused_name = format!("station-{acked}");
    if let Some(o) = objects.objects.iter().find(|o| o.name == refused_name) {
        let seats: u32 = o
            .grants
            .iter()
            .filter(|g| g.key_id == key_id)
            .map(|g| g.seats)
            .sum();
        assert_eq!(seats, 1, "the refused grant is torn: {o:?}");
    }
    let extra = u32::from(held.contains(&refused_name));
    assert_eq!(
        held.len() as u32,
        acked + extra,
        "only acknowledged grants and the refused one: {held:?}"
    );
    // and the node works again
    a.assign_seats(assign(&key_id, acked + 2)).await.unwrap();
    assert_eq!(
        serving(&node).await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    );
}
