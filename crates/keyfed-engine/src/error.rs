//! The engine's one error type. It names no transport: the shell maps each
//! [`ErrorCode`] to a gRPC status in one place (`keyfed_node::error`).
use keyfed_core::seats::SeatError;
use keyfed_core::KeyError;
use keyfed_store::StoreError;
use thiserror::Error;

/// What kind of failure an error is, for the caller: the gRPC codes the
/// node answers with, without depending on a gRPC crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    InvalidArgument,
    FailedPrecondition,
    AlreadyExists,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unimplemented,
    ResourceExhausted,
    DeadlineExceeded,
    Internal,
    Unknown,
}

impl ErrorCode {
    /// Worth trying again later (a peer or the upstream was away).
    #[must_use]
    pub fn transient(self) -> bool {
        matches!(
            self,
            Self::Unavailable
                | Self::DeadlineExceeded
                | Self::Unknown
                | Self::Internal
                | Self::ResourceExhausted
        )
    }
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("key {0} is already in the store; delete it first to add it again")]
    DuplicateKey(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error(transparent)]
    Seat(#[from] SeatError),
    #[error(transparent)]
    License(#[from] keyfed_core::entitlement::LicenseError),
    #[error("key {key_id} is {state} until {until}: assigning, transferring or distributing it is refused")]
    ReadOnly {
        key_id: String,
        state: &'static str,
        until: String,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A refusal with a stable reason, recorded as a denial (issue 12);
    /// answered with `code`.
    #[error("{message}")]
    Refused {
        reason: keyfed_core::denial::DenialReason,
        code: ErrorCode,
        message: String,
    },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("peer: {0}")]
    Peer(String),
    /// A call to the upstream or a parent failed with this code.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EngineError {
    /// A refusal named by `reason`, answered as FAILED_PRECONDITION.
    pub fn refused(reason: keyfed_core::denial::DenialReason, message: impl Into<String>) -> Self {
        Self::Refused {
            reason,
            code: ErrorCode::FailedPrecondition,
            message: message.into(),
        }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }

    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Key(KeyError::UnknownSigner { .. }) => ErrorCode::FailedPrecondition,
            Self::Key(_) | Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::DuplicateKey(_) => ErrorCode::AlreadyExists,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::Seat(_)
            | Self::License(_)
            | Self::ReadOnly { .. }
            | Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::Upstream(_) | Self::ShuttingDown => ErrorCode::Unavailable,
            Self::Remote { code, .. } | Self::Refused { code, .. } => *code,
            Self::Peer(_) => ErrorCode::PermissionDenied,
            Self::Unimplemented(_) => ErrorCode::Unimplemented,
            // a full disk or a store that stopped serving after a failed sync
            Self::Store(e) if e.is_out_of_space() => ErrorCode::ResourceExhausted,
            Self::Store(e) if e.is_poisoned() => ErrorCode::Unavailable,
            Self::Store(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;
