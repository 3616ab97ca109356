//! Per-node shared instances: ranks of one job step share one FUSE server and one user
//! namespace. Ranks are simulated by starting launchers with the variables srun sets; the
//! Slurm tests run the same thing under a real srun.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

fn gzip() -> String {
    fixture("busybox-gzip.sqfs")
}

/// A job id no other test uses.
fn job_id(tag: u32) -> String {
    format!("{}{tag:02}", std::process::id())
}

fn rank(job: &str, step: &str, script: &str) -> L {
    launcher(&["exec", "--debug", &gzip(), "/bin/sh", "-c", script])
        .env("SLURM_JOB_ID", job)
        .env("SLURM_STEP_ID", step)
}

fn finish(child: Child) -> Out {
    let out = child.wait_with_output().expect("waiting for a rank");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// No rendezvous file of this job is left (other tests may have their own).
fn assert_no_files_left() {
    assert_no_share_files_left(5);
}

#[test]
fn ranks_of_a_step_share_one_server_and_user_namespace() {
    let s = setup();
    let job = job_id(1);
    let script = "readlink /proc/self/ns/user; id -u; sleep 2";
    let ranks: Vec<Child> = (0..4).map(|_| rank(&job, "0", script).spawn()).collect();
    std::thread::sleep(Duration::from_millis(1200));
    let servers = fuse_servers();
    let outs: Vec<Out> = ranks.into_iter().map(finish).collect();
    let mut namespaces = BTreeSet::new();
    for o in &outs {
        o.ok();
        let mut lines = o.stdout.lines();
        namespaces.insert(lines.next().unwrap_or_default().to_string());
        assert_eq!(
            lines.next(),
            Some(s.uid.to_string().as_str()),
            "uid inside: {}",
            o.stdout
        );
    }
    assert_eq!(
        namespaces.len(),
        1,
        "ranks in different user namespaces: {namespaces:?}"
    );
    let joined = outs
        .iter()
        .filter(|o| o.stderr.contains("share: joining"))
        .count();
    let led = outs
        .iter()
        .filter(|o| o.stderr.contains("share: leading"))
        .count();
    assert_eq!(
        (led, joined),
        (1, 3),
        "{:?}",
        outs.iter().map(|o| &o.stderr).collect::<Vec<_>>()
    );
    // Other tests run side by side: count the servers in the ranks' namespace.
    let ours: Vec<_> = servers
        .iter()
        .filter(|(ns, _)| namespaces.contains(ns))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "FUSE servers in the ranks' namespace: {ours:?} (all: {servers:?})"
    );
    assert!(wait_gone(&job) || pids_matching("launcher-keep").is_empty());
    assert_no_files_left();
}

#[test]
fn the_leader_serves_until_the_last_rank_is_done() {
    let job = job_id(2);
    let first = rank(&job, "0", "echo first; exit 3").spawn();
    std::thread::sleep(Duration::from_millis(50));
    // Joins while the leader's own command is already over, then reads files for a while.
    let second = rank(
        &job,
        "0",
        "sleep 1; cat /etc/os-release >/dev/null 2>&1; ls /bin | wc -l; exit 5",
    )
    .spawn();
    let a = finish(first);
    let b = finish(second);
    assert_eq!(a.code, 3, "leader's status: {}", a.stderr);
    assert_eq!(b.code, 5, "second rank's status: {}", b.stderr);
    assert!(
        b.stdout.trim().parse::<u32>().unwrap_or(0) > 10,
        "listing through the shared server: {}",
        b.stdout
    );
    assert_no_files_left();
}

#[test]
fn a_killed_leader_does_not_hang_later_ranks() {
    let job = job_id(3);
    // A command line no other process has (a `sleep 300` elsewhere on the machine once
    // matched "sleep 30"), also once sh has exec'd it.
    let needle = format!("sleep 30.{}", std::process::id());
    let mut leader = rank(&job, "0", &format!("echo up; {needle}")).spawn();
    let mut reader = std::io::BufReader::new(leader.stdout.take().unwrap());
    wait_for_line(&mut reader, "up");
    let _ = nix_kill(leader.id());
    let _ = leader.wait();
    let later = rank(&job, "0", "id -u").run();
    later.ok();
    assert_eq!(later.stdout.trim(), setup().uid.to_string());
    assert!(later.stderr.contains("share: leading"), "{}", later.stderr);
    assert_gone(&needle, "the killed leader's command survived");
    assert_no_files_left();
}

#[test]
fn other_steps_and_no_share_stay_private() {
    let job = job_id(4);
    let script = "readlink /proc/self/ns/user; sleep 1";
    let a = rank(&job, "0", script).spawn();
    let b = rank(&job, "1", script).spawn();
    let c = launcher(&["exec", "--no-share", &gzip(), "/bin/sh", "-c", script])
        .env("SLURM_JOB_ID", &job)
        .env("SLURM_STEP_ID", "0")
        .spawn();
    let outs: Vec<Out> = [a, b, c].into_iter().map(finish).collect();
    let ns: BTreeSet<String> = outs
        .iter()
        .map(|o| {
            o.ok();
            o.stdout.trim().to_string()
        })
        .collect();
    assert_eq!(
        ns.len(),
        3,
        "steps or --no-share shared a namespace: {ns:?}"
    );
    assert_no_files_left();
}

fn nix_kill(pid: u32) -> i32 {
    // SAFETY: kill(2) with a pid we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) }
}
