//! Per-node shared instances: ranks of one job step share one FUSE server and one user
//! namespace. Ranks are simulated by starting launchers with the variables srun sets; the
//! Slurm tests run the same thing under a real srun.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn gzip() -> String {
    fixture("busybox-gzip.sqfs")
}

/// A job id no other test uses.
fn job_id(tag: u32) -> String {
    format!("{}{tag:02}", std::process::id())
}

fn rank(job: &str, step: &str, script: &str) -> L {
    rank_of(&gzip(), job, step, script)
}

fn rank_of(image: &str, job: &str, step: &str, script: &str) -> L {
    launcher(&["exec", "--debug", image, "/bin/sh", "-c", script])
        .env("SLURM_JOB_ID", job)
        .env("SLURM_STEP_ID", step)
}

/// A rank whose script waits for the end of its input (`cat >/dev/null`) where the test
/// decides: the test orders ranks by what they print, never by time.
struct Live {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    stdout: Vec<String>,
    err: Receiver<String>,
    stderr: Vec<String>,
}

impl Live {
    fn start(l: L) -> Live {
        let mut child = l
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning setpriv");
        let (tx, err) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Live {
            stdin: child.stdin.take(),
            out: BufReader::new(child.stdout.take().unwrap()),
            child,
            stdout: Vec::new(),
            err,
            stderr: Vec::new(),
        }
    }

    /// Reads stdout until the line `want`.
    fn until_stdout(&mut self, want: &str) {
        let seen = wait_for_line(&mut self.out, want);
        self.stdout.extend(seen);
    }

    /// Reads stderr until a line containing `needle`.
    fn until_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!("no '{needle}' on stderr ({e}); saw {:?}", self.stderr),
            }
        }
    }

    /// Ends the command's input: its script goes on past `cat`.
    fn release(&mut self) {
        self.stdin = None;
    }

    fn finish(mut self) -> Out {
        self.release();
        let mut rest = String::new();
        self.out
            .read_to_string(&mut rest)
            .expect("reading a rank's stdout");
        let status = self.child.wait().expect("waiting for a rank");
        self.stderr.extend(self.err.iter());
        let mut stdout: String = self.stdout.iter().map(|l| format!("{l}\n")).collect();
        stdout.push_str(&rest);
        Out {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr.iter().map(|l| format!("{l}\n")).collect(),
        }
    }
}

/// The keepers of `job`'s instances: the leader's child that holds the instance's namespaces,
/// named `launcher-keep` (prctl: /proc/PID/comm, not the command line) and forked without
/// exec, so its environment is the launcher's, with the job id.
fn keepers(job: &str) -> Vec<u32> {
    let var = format!("SLURM_JOB_ID={job}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "launcher-keep")
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == var.as_bytes()))
        })
        .collect()
}

/// No rendezvous file of this job is left (other tests may have their own).
fn assert_no_files_left() {
    assert_no_share_files_left(5);
}

#[test]
fn ranks_of_a_step_share_one_server_and_user_namespace() {
    let s = setup();
    let job = job_id(1);
    let script = "readlink /proc/self/ns/user; id -u; echo ready; cat >/dev/null";
    let mut ranks: Vec<Live> = (0..4)
        .map(|_| Live::start(rank(&job, "0", script)))
        .collect();
    // Every rank's command is running: look at the servers and keepers now.
    for r in &mut ranks {
        r.until_stdout("ready");
    }
    let servers = fuse_servers();
    let running_keepers = keepers(&job);
    // All at once: the leader's output ends only when the last rank is done.
    for r in &mut ranks {
        r.release();
    }
    let outs: Vec<Out> = ranks.into_iter().map(Live::finish).collect();
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
    // --debug: each rank's bytes read from the image file; the leader, which serves the
    // commands' files, read more than any joining rank, which only plans (benches/scale.sh).
    let bytes_read = |o: &Out| -> (u64, u64) {
        let l = o
            .stderr
            .lines()
            .find_map(|l| l.split_once("image bytes read: ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no 'image bytes read' line: {}", o.stderr));
        let (n, m) = l.split_once(" of ").expect("N of M");
        (n.parse().unwrap(), m.parse().unwrap())
    };
    let leader_read = outs
        .iter()
        .find(|o| o.stderr.contains("share: leading"))
        .map(bytes_read)
        .unwrap();
    assert!(
        leader_read.0 > 0 && leader_read.0 <= leader_read.1,
        "{leader_read:?}"
    );
    for o in outs.iter().filter(|o| o.stderr.contains("share: joining")) {
        let (n, m) = bytes_read(o);
        assert!(
            n < leader_read.0 && m == leader_read.1,
            "{n} of {m}, leader {leader_read:?}"
        );
    }
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
    // One keeper held the instance while the ranks ran, in their namespace; it is gone.
    assert_eq!(
        running_keepers.len(),
        1,
        "keepers of the job: {running_keepers:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !keepers(&job).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the keeper outlived the ranks: {:?}",
            keepers(&job)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_files_left();
}

#[test]
fn the_leader_serves_until_the_last_rank_is_done() {
    let job = job_id(2);
    let mut first = Live::start(rank(&job, "0", "echo first; cat >/dev/null; exit 3"));
    first.until_stdout("first");
    first.until_stderr("share: leading");
    let mut second = Live::start(rank(
        &job,
        "0",
        "echo joined; cat >/dev/null; cat /etc/os-release >/dev/null 2>&1; ls /bin | wc -l; exit 5",
    ));
    second.until_stdout("joined");
    second.until_stderr("share: joining");
    // The leader's own command ends while the second rank's still runs; the leader stays.
    first.release();
    first.until_stderr("waiting for the ranks that joined");
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the leader exited with a rank still in its instance"
    );
    // Then the second rank reads files, through the leader's server.
    second.release();
    let b = second.finish();
    let a = first.finish();
    assert_eq!(a.code, 3, "leader's status: {}", a.stderr);
    assert_eq!(b.code, 5, "second rank's status: {}", b.stderr);
    // The leader ended after the second rank: a normal end, not a death it reports.
    assert!(
        !b.stderr.contains("which serves the image"),
        "a normal end taken for the leader's death: {}",
        b.stderr
    );
    assert!(
        b.stdout
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u32>().ok())
            .unwrap_or(0)
            > 10,
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
    // All three run at once (each waits for its input to end), so no namespace number is
    // reused between them.
    let script = "readlink /proc/self/ns/user; echo ready; cat >/dev/null";
    let mut all = [
        Live::start(rank(&job, "0", script)),
        Live::start(rank(&job, "1", script)),
        Live::start(
            launcher(&["exec", "--no-share", &gzip(), "/bin/sh", "-c", script])
                .env("SLURM_JOB_ID", &job)
                .env("SLURM_STEP_ID", "0"),
        ),
    ];
    for r in &mut all {
        r.until_stdout("ready");
    }
    for r in &mut all {
        r.release();
    }
    let outs: Vec<Out> = all.into_iter().map(Live::finish).collect();
    let ns: BTreeSet<String> = outs
        .iter()
        .map(|o| {
            o.ok();
            o.stdout.lines().next().unwrap_or_default().to_string()
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

/// A sandbox directory has no FUSE server, but its ranks still share one instance (one user
/// namespace, for single-copy MPI transfers): the keeper holds the namespaces as for a file.
#[test]
fn ranks_share_a_sandbox_directory_instance() {
    let job = job_id(9);
    let root = fixture("rootfs");
    let script = "readlink /proc/self/ns/user; echo ready; cat >/dev/null";
    let mut ranks: Vec<Live> = (0..3)
        .map(|_| Live::start(rank_of(&root, &job, "0", script)))
        .collect();
    for r in &mut ranks {
        r.until_stdout("ready");
    }
    for r in &mut ranks {
        r.release();
    }
    let outs: Vec<Out> = ranks.into_iter().map(Live::finish).collect();
    let mut namespaces = BTreeSet::new();
    for o in &outs {
        o.ok();
        namespaces.insert(o.stdout.lines().next().unwrap_or_default().to_string());
    }
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");
    let led = outs
        .iter()
        .filter(|o| o.stderr.contains("share: leading"))
        .count();
    let joined = outs
        .iter()
        .filter(|o| o.stderr.contains("share: joining"))
        .count();
    assert_eq!(
        (led, joined),
        (1, 2),
        "{:?}",
        outs.iter().map(|o| &o.stderr).collect::<Vec<_>>()
    );
    assert_no_files_left();
}

/// Ranks whose mounts differ (`--writable-tmpfs`, other binds) still share the step's user
/// namespace and image server (single-copy MPI transfers between them work); each builds its
/// root in a mount namespace of its own, so its writable layer and its binds are its own.
#[test]
fn ranks_with_different_mounts_share_the_user_namespace_not_the_mounts() {
    let s = setup();
    let job = job_id(10);
    let binds = s.scratch.join("different-binds");
    for (dir, file) in [("a", "only-a"), ("b", "only-b")] {
        std::fs::create_dir_all(binds.join(dir)).unwrap();
        std::fs::write(binds.join(dir).join(file), "").unwrap();
    }
    let bind = |dir: &str| format!("{}:/data", binds.join(dir).display());
    let rank_with = |opts: &[&str], before: &str| {
        let script = format!(
            "{before}; readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; echo ready; \
             cat >/dev/null; echo seen=$(ls / | grep written-by | tr '\\n' ' ')"
        );
        let mut args = vec!["exec", "--debug"];
        args.extend(opts);
        let img = gzip();
        args.extend([img.as_str(), "/bin/sh", "-c", &script]);
        launcher(&args)
            .env("SLURM_JOB_ID", &job)
            .env("SLURM_STEP_ID", "0")
    };
    // The leader first (a writable root, so read-only ranks may join it), then the others,
    // each once the one before runs its command.
    let specs: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--writable-tmpfs".into()],
            "echo 0 >/written-by-0".into(),
        ),
        (
            vec!["--writable-tmpfs".into()],
            "echo 1 >/written-by-1".into(),
        ),
        (vec!["-B".into(), bind("a")], "echo data=$(ls /data)".into()),
        (vec!["-B".into(), bind("b")], "echo data=$(ls /data)".into()),
    ];
    let mut ranks = Vec::new();
    for (opts, before) in &specs {
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let mut r = Live::start(rank_with(&opts, before));
        r.until_stdout("ready");
        ranks.push(r);
    }
    let running_keepers = keepers(&job);
    for r in &mut ranks {
        r.release();
    }
    let outs: Vec<Out> = ranks.into_iter().map(Live::finish).collect();
    let lines: Vec<Vec<&str>> = outs
        .iter()
        .map(|o| {
            o.ok();
            o.stdout.lines().collect()
        })
        .collect();
    let ns_of = |i: usize, nth: usize| -> &str {
        // A bind rank prints its data= line first.
        let skip = usize::from(i >= 2);
        lines[i].get(skip + nth).copied().unwrap_or_default()
    };
    let users: BTreeSet<&str> = (0..4).map(|i| ns_of(i, 0)).collect();
    let mounts: BTreeSet<&str> = (0..4).map(|i| ns_of(i, 1)).collect();
    assert_eq!(users.len(), 1, "user namespaces: {lines:?}");
    assert!(users.iter().all(|u| u.starts_with("user:[")), "{lines:?}");
    assert_eq!(mounts.len(), 4, "mount namespaces: {lines:?}");
    // Each writable layer is its rank's own; the read-only ranks see none.
    let seen: Vec<&str> = lines
        .iter()
        .map(|l| l.last().copied().unwrap_or_default().trim_end())
        .collect();
    assert_eq!(
        seen,
        ["seen=written-by-0", "seen=written-by-1", "seen=", "seen="],
        "{lines:?}"
    );
    // Each bind rank sees its own bind only.
    assert_eq!(lines[2][0], "data=only-a", "{lines:?}");
    assert_eq!(lines[3][0], "data=only-b", "{lines:?}");
    assert!(
        outs[0].stderr.contains("share: leading"),
        "{}",
        outs[0].stderr
    );
    for o in &outs[1..] {
        assert!(
            o.stderr.contains("own mount namespace"),
            "a rank did not join: {}",
            o.stderr
        );
    }
    assert_eq!(running_keepers.len(), 1, "keepers: {running_keepers:?}");
    assert_no_files_left();
}

/// A read-only leader's server does not show the image's files as the caller's, which a
/// writable root needs (its overlay copies files up): a writable rank runs alone then, and
/// says so.
#[test]
fn a_writable_rank_does_not_join_a_read_only_leader() {
    let job = job_id(11);
    let mut leader = Live::start(rank(&job, "0", "echo ready; cat >/dev/null"));
    leader.until_stdout("ready");
    let writable = launcher(&[
        "exec",
        "--debug",
        "--writable-tmpfs",
        &gzip(),
        "/bin/sh",
        "-c",
        "echo x >/written && cat /written",
    ])
    .env("SLURM_JOB_ID", &job)
    .env("SLURM_STEP_ID", "0")
    .run();
    writable.ok();
    assert_eq!(writable.stdout.trim(), "x");
    assert!(
        writable
            .stderr
            .contains("its root is writable and a rank with a read-only root leads"),
        "{}",
        writable.stderr
    );
    leader.finish().ok();
    assert_no_files_left();
}

/// Issue 17: overlay images are part of what a step's instance mounts (a FUSE server each, in
/// its base): ranks with the same overlays share the instance, one with binds of its own
/// builds its root over the same layers, and a rank with other overlays has an instance of
/// its own.
#[test]
fn ranks_with_the_same_overlay_images_share_the_instance() {
    let s = setup();
    let job = job_id(12);
    let tree = s.scratch.join("share-layer-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("data")).unwrap();
    std::fs::write(tree.join("data/layer"), "from the layer\n").unwrap();
    let layer = s.scratch.join("share-layer.sqfs");
    mksquashfs(&tree, &layer, &[]);
    let layer = layer.display().to_string();
    let bind_dir = s.scratch.join("share-layer-bind");
    std::fs::create_dir_all(&bind_dir).unwrap();
    let bind = format!("{}:/opt/bound", bind_dir.display());
    let script = "cat /data/layer 2>/dev/null || echo none; echo ready; cat >/dev/null";
    let rank_with = |opts: &[&str]| {
        let mut args = vec!["exec", "--debug"];
        args.extend(opts);
        let img = gzip();
        args.extend([img.as_str(), "/bin/sh", "-c", script]);
        launcher(&args)
            .env("SLURM_JOB_ID", &job)
            .env("SLURM_STEP_ID", "0")
    };
    let specs: [&[&str]; 4] = [
        &["-o", &layer],
        &["-o", &layer],
        &["-o", &layer, "-B", &bind],
        &[],
    ];
    let mut ranks = Vec::new();
    for opts in specs {
        let mut r = Live::start(rank_with(opts));
        r.until_stdout("ready");
        ranks.push(r);
    }
    for r in &mut ranks {
        r.release();
    }
    let outs: Vec<Out> = ranks.into_iter().map(Live::finish).collect();
    let firsts: Vec<&str> = outs
        .iter()
        .map(|o| {
            o.ok();
            o.stdout.lines().next().unwrap_or_default()
        })
        .collect();
    assert_eq!(
        firsts,
        ["from the layer", "from the layer", "from the layer", "none"]
    );
    let said = |i: usize, what: &str| outs[i].stderr.contains(what);
    assert!(said(0, "share: leading"), "{}", outs[0].stderr);
    assert!(
        said(1, "share: joining the instance of launcher"),
        "{}",
        outs[1].stderr
    );
    assert!(said(2, "own mount namespace"), "{}", outs[2].stderr);
    assert!(said(3, "share: leading"), "{}", outs[3].stderr);
    assert_no_files_left();
}
