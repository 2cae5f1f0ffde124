//! The node's one error type, mapped to gRPC status codes in one place.
use keyfed_core::seats::SeatError;
use keyfed_core::KeyError;
use keyfed_store::StoreError;
use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Error)]
pub enum NodeError {
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
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("peer: {0}")]
    Peer(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NodeError {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::Key(KeyError::UnknownSigner { .. }) => Code::FailedPrecondition,
            Self::Key(_) | Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::DuplicateKey(_) => Code::AlreadyExists,
            Self::NotFound { .. } => Code::NotFound,
            Self::Seat(_)
            | Self::License(_)
            | Self::ReadOnly { .. }
            | Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Upstream(_) => Code::Unavailable,
            Self::Peer(_) => Code::PermissionDenied,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Store(_) => Code::Internal,
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        if matches!(e, NodeError::Store(_)) {
            tracing::error!(error = %e, "store failure");
        }
        Status::new(e.code(), e.to_string())
    }
}

pub type NodeResult<T> = Result<T, NodeError>;
