//! Messages from the image server to the user, written to stderr by a thread of their own.
//!
//! A FUSE worker must never wait on stderr. The command may hold the very pipe stderr goes to
//! while it waits for the worker: busybox `cat` splices an image file into its stdout pipe,
//! holding the pipe's lock until the page it reads arrives; with `2>&1 | wc -c` that pipe is
//! also the launcher's stderr, so a worker that wrote its message before replying waited for
//! `cat`, and `cat` for the worker, for good (issue 20, finding 1). A worker only puts its line
//! in a bounded queue (never waiting; when the queue is full the line is dropped and counted)
//! and replies; the writer thread writes the lines once the pipe is free, and says how many
//! were dropped. `flush` lets the launcher wait, for a bounded time, for the lines to go out
//! before it exits.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Lines waiting for the writer at most; more are dropped and counted.
pub const CAPACITY: usize = 64;

#[derive(Default)]
struct State {
    lines: VecDeque<String>,
    /// Lines dropped since the writer last said so.
    dropped: u64,
    /// The writer is in a write (the line has left the queue, not yet the process).
    writing: bool,
    /// No writer thread (it could not be started): nothing will be written.
    dead: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A bounded queue of lines and the thread that writes them to a sink.
pub struct Reporter {
    shared: Arc<Shared>,
}

impl Reporter {
    /// A reporter writing to `sink` from a new thread.
    pub fn new(sink: Box<dyn Write + Send>) -> Reporter {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let started = std::thread::Builder::new()
            .name("report".into())
            .spawn(move || write_lines(&theirs, sink));
        if started.is_err() {
            if let Ok(mut s) = shared.state.lock() {
                s.dead = true;
            }
        }
        Reporter { shared }
    }

    /// Queue one line (without its newline). Never waits for the sink.
    pub fn line(&self, text: String) {
        let Ok(mut s) = self.shared.state.lock() else {
            return;
        };
        if s.dead || s.lines.len() >= CAPACITY {
            s.dropped += 1;
            return;
        }
        s.lines.push_back(text);
        self.shared.changed.notify_all();
    }

    /// Wait up to `limit` for every queued line (and the count of dropped ones) to be
    /// written; false when some were not (a sink nobody reads).
    pub fn flush(&self, limit: Duration) -> bool {
        let Ok(s) = self.shared.state.lock() else {
            return false;
        };
        if s.dead {
            return s.lines.is_empty() && s.dropped == 0;
        }
        match self.shared.changed.wait_timeout_while(s, limit, |s| {
            !s.lines.is_empty() || s.dropped > 0 || s.writing
        }) {
            Ok((_, timeout)) => !timeout.timed_out(),
            Err(_) => false,
        }
    }
}

/// The writer thread: one line at a time, the queue's lock not held while writing.
fn write_lines(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    loop {
        let text = {
            let Ok(mut s) = shared.state.lock() else {
                return;
            };
            loop {
                // `writing` is set as the line leaves the queue: for `flush`, a line is always
                // either queued or being written.
                if let Some(l) = s.lines.pop_front() {
                    s.writing = true;
                    break l;
                }
                if s.dropped > 0 {
                    let n = std::mem::take(&mut s.dropped);
                    s.writing = true;
                    break format!(
                        "launcher: {n} more message(s) from the image server were dropped \
                         (stderr was not being read)"
                    );
                }
                s = match shared.changed.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        // A failed write is a line lost: there is nowhere else to say so.
        let _ = sink.write_all(format!("{text}\n").as_bytes());
        let _ = sink.flush();
        let Ok(mut s) = shared.state.lock() else {
            return;
        };
        s.writing = false;
        shared.changed.notify_all();
    }
}

/// fd 2 written with write(2) directly: Rust's stderr lock, held by the writer while it
/// waits on a pipe, would also stop every other message of the launcher (and a child forked
/// meanwhile would inherit it locked).
struct RawStderr;

impl Write for RawStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writing initialised bytes to fd 2.
        let n = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static STDERR: OnceLock<Reporter> = OnceLock::new();

/// Queue a line for the launcher's stderr (the writer thread starts at the first line).
pub fn line(text: String) {
    STDERR
        .get_or_init(|| Reporter::new(Box::new(RawStderr)))
        .line(text);
}

/// Before the launcher exits: wait up to `limit` for the queued lines to reach stderr.
pub fn flush(limit: Duration) -> bool {
    STDERR.get().is_none_or(|r| r.flush(limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that sends each write to the test, and can be held shut until the test opens it.
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        out: mpsc::Sender<String>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out
                .send(String::from_utf8_lossy(buf).into_owned())
                .unwrap();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    type Shut = Arc<(Mutex<bool>, Condvar)>;

    fn gate(open: bool) -> (Reporter, Shut, mpsc::Receiver<String>) {
        let state = Arc::new((Mutex::new(open), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let r = Reporter::new(Box::new(Gate {
            open: state.clone(),
            out: tx,
        }));
        (r, state, rx)
    }

    fn open(g: &Shut) {
        *g.0.lock().unwrap() = true;
        g.1.notify_all();
    }

    #[test]
    fn lines_are_written_in_order_and_flush_waits_for_them() {
        let (r, _, rx) = gate(true);
        r.line("one".into());
        r.line("two".into());
        assert!(r.flush(Duration::from_secs(60)));
        let got: Vec<String> = rx.try_iter().collect();
        assert_eq!(got, ["one\n", "two\n"]);
    }

    /// The deadlock of issue 20: a sink that does not move must not stop the caller.
    #[test]
    fn a_stuck_sink_never_blocks_the_caller_and_extra_lines_are_counted() {
        let (r, g, rx) = gate(false);
        // The writer takes at most one line off the queue before it blocks in the sink.
        for i in 0..CAPACITY + 10 {
            r.line(format!("line {i}"));
        }
        assert!(!r.flush(Duration::from_millis(1)), "the sink is shut");
        open(&g);
        assert!(r.flush(Duration::from_secs(60)));
        let got: Vec<String> = rx.try_iter().collect();
        let last = got.last().unwrap();
        let dropped: usize = last
            .strip_prefix("launcher: ")
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of dropped lines: {got:?}"));
        let written = got.len() - 1;
        assert_eq!(written + dropped, CAPACITY + 10, "{got:?}");
        assert!((CAPACITY..=CAPACITY + 1).contains(&written), "{got:?}");
        assert_eq!(got[0], "line 0\n");
    }

    #[test]
    fn flush_without_lines_returns_at_once() {
        let (r, _, _) = gate(false);
        assert!(r.flush(Duration::from_secs(60)));
    }
}
