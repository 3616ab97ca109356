//! Error type for staging OCI and Docker images.

use std::io;

/// Everything that can go wrong staging an image. Display is one line naming the
/// archive or blob and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `context` names the file or blob and what we were doing.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    /// The image is malformed (bad JSON, bad tar, unsafe entry, missing blob, ...).
    #[error("{0}")]
    Invalid(String),
    /// A blob's content does not match the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// The requested image, tag or platform is not in the source.
    #[error("{0}")]
    NotFound(String),
    /// Well-formed input we do not handle (e.g. an encrypted layer, a sha512 digest).
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// Adapter for `map_err`: wraps an `io::Error` with a description of the operation.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |error| Error::Io { context, error }
    }
}

/// Result with the OCI [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
