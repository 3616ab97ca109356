//! Opening a file named as an image. `open(2)` of a FIFO waits for a writer, so a FIFO put
//! where an image is expected (by another user, in a shared image directory) held every
//! launch, `verify` and `inspect` that named it until killed; a device node could have side
//! effects. The file is opened without blocking and judged by the open file itself: only a
//! regular file is an image file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// `path` opened read-only, if it is a regular file; else an error saying what it is.
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK does nothing to reads of a regular file; it only keeps open() from
        // waiting on a FIFO.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not an image file"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("img.sif");
        std::fs::write(&f, b"x").unwrap();
        assert!(open(&f).is_ok());
        let fifo = t.path().join("fifo.sif");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // Without O_NONBLOCK this open would wait for a writer for ever.
        let e = open(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO, not an image file"), "{e}");
        let e = open(t.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let e = open(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        assert_eq!(
            open(&t.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
