//! The wire contract of keyfed: tonic/prost code generated from
//! `proto/keyfed/v1`, plus the encoded descriptor set for gRPC reflection.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("keyfed.v1");
}

/// Encoded `FileDescriptorSet` of every keyfed service, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keyfed_descriptor.bin"));

pub use v1::*;
