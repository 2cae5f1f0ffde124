//! Drives the keyfed-agent binary: the read-only status and the generated
//! completions and man page.
use keyfed_agent::{Agent, AgentConfig};
use std::process::{Command, Output};
use std::sync::Arc;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyfed-agent"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("keyfed-agent runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_shows_the_state_there_whichever_fingerprint_wrote_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::new("http://127.0.0.1:1", dir.path(), "pc-17", &["antivirus"]);
    let mut a = Agent::open(cfg, Arc::new(keyfed_core::SystemClock)).unwrap();
    a.record("{}").unwrap();
    drop(a);
    let d = dir.path().to_str().unwrap();
    let before = std::fs::read(dir.path().join("agent-state.json")).unwrap();
    let o = agent(&["status", "--state-dir", d, "--fingerprint", "other-host"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON status");
    assert_eq!(v["fingerprint"], "pc-17");
    assert_eq!(v["queued"], 1);
    assert!(
        text(&o.stderr).contains("pc-17") && text(&o.stderr).contains("other-host"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("agent-state.json")).unwrap(),
        before
    );
    // no fingerprint given: the host name does not matter either
    assert!(agent(&["status", "--state-dir", d]).status.success());

    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let o = agent(&["status", "--state-dir", e]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(e) && text(&o.stderr).contains("keyfed-agent run"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "status created nothing"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_clap_definitions() {
    let o = agent(&["completions", "bash"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("keyfed-agent") && text(&o.stdout).contains("status"));
    let o = agent(&["man"]);
    assert!(
        text(&o.stdout).contains(".TH keyfed-agent"),
        "{}",
        text(&o.stdout)
    );
}
