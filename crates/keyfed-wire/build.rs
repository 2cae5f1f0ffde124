//! Generates the prost messages from `proto/keyfed/v1` with protox, so the
//! build needs no system `protoc`, and their serde impls in the canonical
//! protobuf JSON mapping with pbjson-build. Services are generated in keyfed-proto.
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
    let descriptors = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("keyfed_descriptor.bin"), &descriptors)?;
    prost_build::Config::new().compile_fds(fds)?;
    // Serialize/Deserialize as protojson with UseProtoNames and
    // EmitUnpopulated (what grpcurl prints): proto field names, every field
    // with its default, enums by name, oneofs without a wrapper, 64-bit
    // integers as strings. keyfedctl --json and the HTTP API both use it.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".keyfed.v1"])?;
    Ok(())
}
