//! Engine errors become gRPC statuses here, in one place: the code from the
//! engine's [`ErrorCode`], the engine's message (which says what to do).
use keyfed_engine::{EngineError, ErrorCode};
use tonic::{Code, Status};

pub use keyfed_engine::{EngineError as NodeError, EngineResult as NodeResult};

#[must_use]
pub fn code(c: ErrorCode) -> Code {
    match c {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::Unknown => Code::Unknown,
    }
}

/// The engine's view of a gRPC code a remote (upstream, parent) answered.
#[must_use]
pub fn error_code(c: Code) -> ErrorCode {
    match c {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::NotFound => ErrorCode::NotFound,
        Code::PermissionDenied | Code::Unauthenticated => ErrorCode::PermissionDenied,
        Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorCode::Unavailable,
        Code::Unimplemented => ErrorCode::Unimplemented,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        Code::Internal | Code::DataLoss => ErrorCode::Internal,
        Code::Ok | Code::Unknown => ErrorCode::Unknown,
    }
}

#[must_use]
pub fn status(e: EngineError) -> Status {
    if matches!(e, EngineError::Store(_) | EngineError::Internal(_)) {
        tracing::error!(error = %e, "internal failure");
    }
    Status::new(code(e.code()), e.to_string())
}

/// `engine_call().await.status()?` in a service method.
pub trait OrStatus<T> {
    fn status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, EngineError> {
    fn status(self) -> Result<T, Status> {
        self.map_err(status)
    }
}
