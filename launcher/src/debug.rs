//! `--debug` step messages, each with the time since the launcher started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static QUIET: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();

/// Turn step messages on (the clock starts at the first call either way).
pub fn enable(on: bool) {
    START.get_or_init(Instant::now);
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Print one step with the elapsed time, when `--debug` is on.
pub fn step(msg: impl std::fmt::Display) {
    if enabled() {
        let t = START.get_or_init(Instant::now).elapsed();
        line(format_args!(
            "launcher: debug: [{:7.2} ms] {msg}",
            t.as_secs_f64() * 1000.0
        ));
    }
}

/// `-q`/`-s`: no warnings (errors are still printed).
pub fn set_quiet(on: bool) {
    QUIET.store(on, Ordering::Relaxed);
}

/// A `launcher: warning: ...` line, unless `-q`/`-s` asked for none. One write, no lock, so
/// that forked children may use it too.
pub fn warn(msg: impl std::fmt::Display) {
    if !QUIET.load(Ordering::Relaxed) {
        line(format_args!("launcher: warning: {msg}"));
    }
}

/// Write one line to stderr with a single write(2) and no lock. Children forked while other
/// threads run use this: a lock such as Rust's stderr lock, held by another thread at the
/// fork, would never be released in the child.
pub fn line(msg: impl std::fmt::Display) {
    let text = format!("{msg}\n");
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writing initialised bytes to fd 2.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}
