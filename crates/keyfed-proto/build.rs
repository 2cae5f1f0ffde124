//! Generates the tonic services from `proto/keyfed/v1` with protox, so the
//! build needs no system `protoc`. The messages come from keyfed-wire.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["admin", "federation", "station", "upstream", "types"]
        .map(|f| root.join(format!("keyfed/v1/{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .extern_path(".keyfed.v1", "::keyfed_wire::v1")
        .compile_fds(fds)?;
    Ok(())
}
