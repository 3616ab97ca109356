//! What a command starts in the background ends with it, even when the launcher is killed
//! with SIGKILL (which no code of the launcher's can answer): the child that built the
//! container stays as the command's reaper and ends what it has adopted (issue 20, finding 4).

mod common;
use common::*;
use std::io::BufReader;
use std::time::{Duration, Instant};

/// Waits until a process with `needle` in its command line exists.
fn wait_started(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids_matching(needle).is_empty() {
        assert!(Instant::now() < deadline, "'{needle}' never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_of_the_launcher_ends_daemons_and_double_forks() {
    // Durations no other process on the machine uses, so survivors are ours alone.
    let base = 700_000 + std::process::id() % 99_999;
    let (daemon, nested, plain) = (
        format!("sleep {base}1"),
        format!("sleep {base}2"),
        format!("sleep {base}3"),
    );
    let script =
        format!("(setsid {daemon} &); sh -c '{nested} & wait' & {plain} & echo started; wait");
    for round in 0..3 {
        let mut child = launcher(&[
            "exec",
            &fixture("busybox-gzip.sqfs"),
            "/bin/sh",
            "-c",
            &script,
        ])
        .spawn();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        wait_for_line(&mut out, "started");
        for s in [&daemon, &nested, &plain] {
            wait_started(s);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for s in [&daemon, &nested, &plain] {
            assert_gone(
                s,
                &format!("round {round}: left after kill -9 of the launcher"),
            );
        }
    }
}

#[test]
fn a_daemon_left_by_a_finished_command_is_ended() {
    let daemon = format!("sleep {}4", 700_000 + std::process::id() % 99_999);
    let out = launcher(&[
        "exec",
        &fixture("busybox-gzip.sqfs"),
        "/bin/sh",
        "-c",
        &format!("(setsid {daemon} &); echo done"),
    ])
    .run();
    out.ok();
    assert_eq!(out.stdout.trim(), "done");
    assert_gone(&daemon, "left after the command exited");
}
