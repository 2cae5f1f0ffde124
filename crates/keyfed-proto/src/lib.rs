//! The gRPC services of keyfed: tonic clients and servers generated from
//! `proto/keyfed/v1`, over the messages of keyfed-wire (re-exported here so
//! clients need one import).
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    pub use keyfed_wire::v1::*;
    tonic::include_proto!("keyfed.v1");
}

pub use keyfed_wire::csv;
pub use keyfed_wire::FILE_DESCRIPTOR_SET;
pub use v1::*;
