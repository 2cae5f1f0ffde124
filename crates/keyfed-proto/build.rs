//! Generates the tonic services from the descriptor set keyfed-wire compiled
//! (with protox: no system `protoc`), so the protos are parsed once and the
//! services refer to keyfed-wire's messages.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds: prost_types::FileDescriptorSet =
        prost::Message::decode(keyfed_wire::FILE_DESCRIPTOR_SET)?;
    tonic_prost_build::configure()
        .extern_path(".keyfed.v1", "::keyfed_wire::v1")
        .compile_fds(fds)?;
    Ok(())
}
