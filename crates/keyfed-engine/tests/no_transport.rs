//! The engine stays behind its wall: its normal dependency tree holds no
//! gRPC or HTTP stack (the command set is what a replicated log carries,
//! and a simulation drives it without sockets).
#[test]
fn the_engine_depends_on_no_tonic_hyper_tower_or_axum() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "keyfed-engine",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("keyfed-store"), "the tree was read: {tree}");
    for banned in ["tonic", "hyper", "tower", "axum"] {
        let hits: Vec<&str> = tree
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|c| c.starts_with(banned))
            })
            .collect();
        assert!(
            hits.is_empty(),
            "keyfed-engine depends on {banned}: {hits:?}"
        );
    }
}
