//! `--debug` step messages, each with the time since the launcher started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
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
        eprintln!(
            "launcher: debug: [{:7.2} ms] {msg}",
            t.as_secs_f64() * 1000.0
        );
    }
}
