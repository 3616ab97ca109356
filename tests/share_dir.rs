//! Where the ranks of a job step meet (issue 20, finding 2): another user who creates the
//! rendezvous directory first must not silently turn sharing off. The ranks use the user's
//! own runtime directory when there is one, pass over a directory someone else made, and say
//! on stderr, naming the owner, when they cannot share at all.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One rank of a made-up job step (the variables srun sets), with --debug.
fn rank(job: &str, env: &[(&str, &Path)]) -> Out {
    let mut l = launcher(&[
        "exec",
        "--debug",
        &fixture("busybox-gzip.sqfs"),
        "/bin/true",
    ])
    .env("SLURM_JOB_ID", job)
    .env("SLURM_STEP_ID", "0");
    for (k, v) in env {
        l = l.env(k, &v.display().to_string());
    }
    l.run()
}

/// A fresh directory in the scratch area, owned by `uid` with `mode`.
fn dir(name: &str, uid: u32, mode: u32) -> PathBuf {
    let d = setup().scratch.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

fn job(tag: u32) -> String {
    format!("{}{tag:02}", std::process::id())
}

#[test]
fn the_users_runtime_directory_comes_first() {
    let s = setup();
    let run = dir("xdg-run", s.uid, 0o700);
    let out = rank(&job(1), &[("XDG_RUNTIME_DIR", &run)]);
    out.ok();
    let want = format!("rendezvous in {}", run.join("launcher").display());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn a_directory_another_user_made_first_is_passed_over() {
    let s = setup();
    let run = dir("xdg-taken", s.uid, 0o700);
    // Another user (root here) made the first candidate before the job started.
    std::fs::create_dir(run.join("launcher")).unwrap();
    std::fs::set_permissions(run.join("launcher"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = rank(&job(2), &[("XDG_RUNTIME_DIR", &run)]);
    out.ok();
    let want = format!("rendezvous in /tmp/launcher-{}", s.uid);
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn a_rank_that_cannot_share_says_so_and_names_the_owner() {
    // The site's directory, made by another user: the only candidate, so no sharing.
    let taken = dir("share-taken", 0, 0o700);
    let out = rank(&job(3), &[("LAUNCHER_SHARE_DIR", &taken)]);
    out.ok();
    let warning = out
        .stderr
        .lines()
        .find(|l| l.starts_with("launcher: warning: this rank does not share"))
        .unwrap_or_else(|| panic!("no warning: {}", out.stderr));
    assert!(
        warning.contains(&taken.display().to_string()) && warning.contains("owner 0"),
        "{warning}"
    );
}
