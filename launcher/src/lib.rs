//! Launcher runtime: options -> plan (pure data) -> apply (syscalls).
