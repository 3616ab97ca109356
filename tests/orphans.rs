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

/// An image whose environment script needs a shell (`if`) and then runs `line`.
fn env_shell_image(name: &str, line: &str) -> String {
    env_script_image(
        name,
        &[(
            "90-environment.sh",
            format!("if true; then :; fi\n{line}\n"),
        )],
    )
}

/// The image's shell that reads its environment scripts is the launch's like the command:
/// a `kill -9` of the launcher while a script hangs leaves nothing (the child is already the
/// reaper), and a TERM ends the launch (the shell does not start with our signals blocked).
#[test]
fn a_hanging_environment_script_ends_with_the_launcher() {
    let base = 700_000 + std::process::id() % 99_999;
    let hang = format!("sleep {base}5");
    let img = env_shell_image("env-hang", &format!("echo started >&2; {hang}"));
    for round in 0..2 {
        let mut child = launcher(&["exec", &img, "/bin/true"]).spawn();
        wait_started(&hang);
        if round == 0 {
            child.kill().unwrap();
        } else {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: {status:?}");
        assert_gone(&hang, &format!("round {round}: the script's sleep is left"));
    }
}

/// A background process a script starts does not hold the launch until it ends (the report
/// is not read from a pipe it inherited), and it ends with the command.
#[test]
fn a_background_process_of_a_script_does_not_hold_the_launch() {
    let base = 700_000 + std::process::id() % 99_999;
    let bg = format!("sleep {base}6");
    let img = env_shell_image("env-bg", &format!("{bg} &"));
    // Bounded: a launch that waited for the background sleep would be killed, and fail.
    let out = as_test_user(&setup().bin, Some(60))
        .args(["exec", &img, "/bin/echo", "ran"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert_gone(&bg, "left after the command exited");
}
