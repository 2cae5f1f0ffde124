//! keyfed's domain, pure: keys and key files, the renewal decision, seat
//! rules, key lifecycle and the clock. No I/O, no async, no gRPC: every rule
//! is a function of (state, input, now) so it can be tested directly.

#![warn(clippy::too_many_lines)]

pub mod claims;
pub mod clock;
pub mod denial;
pub mod donation;
pub mod entitlement;
pub mod error;
pub mod event;
pub mod key;
pub mod keyfile;
pub mod lifecycle;
pub mod names;
pub mod peer_refusal;
pub mod reconcile;
pub mod renewal;
pub mod renewal_plan;
pub mod seats;
pub mod station;
pub mod station_page;
pub mod telemetry;
pub mod tenant_quota;
pub mod usage_history;
pub mod waiting;
pub mod webhook;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::KeyError;
pub use key::{Components, Key, KeyKind};
pub use keyfile::{KeyFile, VendorSigner};
pub use renewal::{decide, decide_entitled, IncompatibleReasons, RenewalDecision};

/// Federation protocol version this build speaks. 1 had keys and seats only;
/// 2 adds automatic renewal (r08 treats peers below 2 as "old").
pub const PROTOCOL_VERSION: u32 = 2;
/// First protocol version whose peers take part in automatic renewal.
pub const AUTO_RENEWAL_SINCE: u32 = 2;
