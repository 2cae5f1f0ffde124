//! keyfed's node state machine. It owns the seat ledger (keys, grants,
//! waiting objects, donations, station claims), renewal distribution,
//! deliveries from peers and their outbox bookkeeping, the key lifecycle,
//! usage rollups and telemetry state. It sequences `keyfed-core`'s rules
//! around `keyfed-store` transactions; every change is durable before it is
//! acknowledged and its effects (notifications, outbox wake-ups) are
//! published after. It speaks no gRPC: the shell (`keyfed-node`) serves the
//! wire, owns the links and reaches the upstream through [`UpstreamPort`].
//! Its API is the typed, deterministic [`Command`] set ([`Engine::execute`]).

#![warn(clippy::too_many_lines)]

pub mod claims;
pub mod command;
pub mod config;
pub mod delivery;
pub mod denials;
pub mod engine;
pub mod error;
pub mod ledger;
mod lending;
pub mod lifecycle;
pub mod renewal;
pub mod resync;
pub mod station;
pub mod station_pages;
pub mod telemetry;
pub mod tick;
pub mod time;
pub mod usage;
pub mod usage_history;

pub use command::{Command, Outcome, StationReportIn};
pub use config::EngineConfig;
pub use engine::{Engine, EngineParts, EventSink, NoUpstream, PeerMeta, PortFuture, UpstreamPort};
pub use error::{EngineError, EngineResult, ErrorCode};
pub use station::{Hello, Settings};

/// The engine's version, as telemetry reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests;
