//! The wire messages of keyfed: prost code generated from `proto/keyfed/v1`,
//! their serde impls in the canonical protobuf JSON mapping (pbjson), plus the
//! encoded descriptor set for gRPC reflection. No transport here: the engine
//! keeps deliveries in their wire form without depending on tonic.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/keyfed.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/keyfed.v1.serde.rs"));
}

pub mod csv;

/// Encoded `FileDescriptorSet` of every keyfed proto file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keyfed_descriptor.bin"));

pub use v1::*;
