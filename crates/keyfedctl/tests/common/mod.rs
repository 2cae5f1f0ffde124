//! What every keyfedctl test file needs: the binary run against a node
//! with no token, context or user config leaking in from the machine.
use std::process::Output;

pub async fn ctl(addr: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfedctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("KEYFED_TOKEN")
        .env_remove("KEYFED_CONTEXT")
        .env("XDG_CONFIG_HOME", "/nonexistent/keyfedctl-test-config")
        .output()
        .await
        .expect("keyfedctl runs")
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
