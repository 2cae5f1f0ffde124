//! Generates the prost messages from `proto/keyfed/v1` with protox, so the
//! build needs no system `protoc`. Services are generated in keyfed-proto.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["admin", "federation", "station", "upstream", "types"]
        .map(|f| root.join(format!("keyfed/v1/{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("keyfed_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Serialize lets keyfedctl print any reply as --json without a mirror type.
    prost_build::Config::new()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
