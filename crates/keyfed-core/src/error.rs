use thiserror::Error;

/// Why a key or key file was refused. Messages say what was wrong and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("key file is empty")]
    Empty,
    #[error("key file line {line}: expected `{expected}: ...`, found {found:?}")]
    UnexpectedLine {
        line: usize,
        expected: &'static str,
        found: String,
    },
    #[error("key file is truncated: it ends before the `{missing}` line")]
    Truncated { missing: &'static str },
    #[error("key file has trailing content after the signature at line {line}")]
    TrailingContent { line: usize },
    #[error("key file field `{field}` is invalid: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("key file is not in canonical form (field `{field}`); export the key again instead of editing it")]
    NotCanonical { field: &'static str },
    #[error("key signature does not verify: the key file was altered or not signed by {signer}")]
    BadSignature { signer: String },
    #[error("key is signed by {signer}, which is not a trusted vendor key on this node")]
    UnknownSigner { signer: String },
}
