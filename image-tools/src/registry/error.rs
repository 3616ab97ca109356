//! Errors of registry pulls: each one line naming the reference or blob and the problem.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed image reference.
    #[error("{0}")]
    Reference(String),
    /// The registry has no such repository, tag, digest or platform.
    #[error("{0}")]
    NotFound(String),
    /// Authentication was required and failed or was not possible.
    #[error("{0}")]
    Auth(String),
    /// Connection, TLS, timeout or unexpected HTTP status.
    #[error("{0}")]
    Network(String),
    /// What the registry sent is malformed or unsupported.
    #[error("{0}")]
    Invalid(String),
    /// A downloaded blob does not match its digest (the download was removed).
    #[error("{what}: digest mismatch: expected {expected}, got {actual}; the download was removed, try again")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// The local cache or staging directory.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |error| Error::Io { context, error }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
