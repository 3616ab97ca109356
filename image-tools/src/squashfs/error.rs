//! Error type of the SquashFS reader.

use std::fmt::Display;
use std::io;

/// Everything that can go wrong while reading an image. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read from the backing file failed. The message carries the context
    /// (what was being read, where); the `ErrorKind` is the original one.
    #[error("{0}")]
    Io(io::Error),
    /// The image contradicts the format or itself.
    #[error("corrupt squashfs: {0}")]
    Corrupt(String),
    /// A valid image using something this reader does not implement.
    #[error("unsupported squashfs: {0}")]
    Unsupported(String),
}

/// Result with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Display, err: io::Error) -> Error {
        Error::Io(io::Error::new(err.kind(), format!("{context}: {err}")))
    }

    /// An error of the caller's making (wrong inode kind), not of the image.
    pub(crate) fn invalid(kind: io::ErrorKind, msg: impl Display) -> Error {
        Error::Io(io::Error::new(kind, msg.to_string()))
    }

    /// Prefixes the message with `context` (e.g. the image path), keeping the variant.
    pub fn context(self, context: impl Display) -> Error {
        match self {
            Error::Io(e) => Error::io(context, e),
            Error::Corrupt(m) => Error::Corrupt(format!("{context}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{context}: {m}")),
        }
    }

    /// The errno a file system server should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.raw_os_error().unwrap_or(match e.kind() {
                io::ErrorKind::NotFound => libc::ENOENT,
                io::ErrorKind::NotADirectory => libc::ENOTDIR,
                io::ErrorKind::IsADirectory => libc::EISDIR,
                io::ErrorKind::InvalidInput => libc::EINVAL,
                io::ErrorKind::OutOfMemory => libc::ENOMEM,
                _ if e.to_string().contains(LOOP_MSG) => libc::ELOOP,
                _ => libc::EIO,
            }),
            Error::Corrupt(_) => libc::EIO,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
        }
    }
}

/// Message used for symlink loops, so `errno` can map it to ELOOP.
pub(crate) const LOOP_MSG: &str = "too many levels of symbolic links";

pub(crate) fn corrupt(msg: impl Display) -> Error {
    Error::Corrupt(msg.to_string())
}
