//! Error type for SIF reading and writing.

use std::io;

/// Everything that can go wrong reading or writing a SIF file.
///
/// Display is a single line naming the problem; callers add the path if they
/// did not open the file through [`super::SifFile::open`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed. `context` says what we were doing. The cause is
    /// part of the message (and deliberately not a `source()`, so chained
    /// printers don't repeat it).
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    /// The bytes are not a SIF file at all (too short, wrong magic).
    #[error("not a SIF file: {0}")]
    NotSif(String),
    /// A SIF file whose header or descriptors are inconsistent.
    #[error("corrupt SIF: {0}")]
    Corrupt(String),
    /// A well-formed file that uses something we don't support (e.g. version "02").
    #[error("unsupported SIF: {0}")]
    Unsupported(String),
    /// Bad arguments to the writer (or to a lookup helper).
    #[error("invalid SIF input: {0}")]
    Invalid(String),
    /// A requested object (e.g. the primary partition) is not in the file.
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    /// Adapter for `map_err`: wraps an `io::Error` with a description of the operation.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |error| Error::Io { context, error }
    }
}

/// Result with the SIF [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
