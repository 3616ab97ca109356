//! The test Slurm (slurm/test-cluster), for the tests that run jobs on it: started once per
//! test process with the number of nodes that test binary needs, jobs one at a time, and what
//! the leftover checks look at.

use super::{as_test_user, fuse_connections, setup, FuseConn};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Where the test cluster keeps its configuration, state and logs.
pub fn slurm_dir() -> String {
    std::env::var("LAUNCHER_SLURM_DIR").unwrap_or_else(|_| "/var/tmp/launcher-slurm".into())
}

/// The cluster's slurm.conf, with `nodes` nodes, started once per test process (a cluster of
/// another size is stopped first by start.sh).
pub fn slurm_conf(nodes: u32) -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        setup();
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("timeout")
            .args(["-k", "10", "300", "bash"])
            .arg(repo.join("slurm/test-cluster/start.sh"))
            .args(["--nodes", &nodes.to_string()])
            .output()
            .expect("running slurm/test-cluster/start.sh");
        assert!(
            out.status.success(),
            "slurm/test-cluster/start.sh --nodes {nodes} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/etc/slurm.conf", slurm_dir())
    })
}

/// One job at a time: few CPUs, and the leftover checks look at whole nodes.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file of the MPI fixtures (tests/setup-mpi.sh).
pub fn mpi_fixture(name: &str) -> String {
    let dir = std::env::var("LAUNCHER_MPI_FIXTURES")
        .unwrap_or_else(|_| format!("{}-mpi", setup().fixtures.display()));
    format!("{dir}/{name}")
}

/// `program args` as the test user (at most `limit` seconds) with `conf` as SLURM_CONF, in
/// the scratch directory, stdin closed.
pub fn as_slurm_user(
    conf: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    limit: u32,
) -> Command {
    let s = setup();
    let mut c = as_test_user(program, Some(limit));
    c.args(args)
        .env("SLURM_CONF", conf)
        .current_dir(&s.scratch)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Entries of `dirs` owned by `uid`.
pub fn owned_entries(dirs: &[PathBuf], uid: u32) -> BTreeSet<PathBuf> {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

/// A node's `/tmp/launcher-UID` that holds the user's block cache and nothing else: the one
/// thing launches keep on a node on purpose (bounded; docs/slurm.md, "What stays on a node").
/// Rendezvous files beside it still count as left behind.
pub fn is_only_the_block_cache(p: &Path) -> bool {
    let names: Option<Vec<_>> = std::fs::read_dir(p)
        .ok()
        .map(|d| d.flatten().map(|e| e.file_name()).collect());
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("launcher-"))
        && names.is_some_and(|n| n == ["blocks"])
}

/// Scratch directories of other test processes (their files are theirs).
pub fn is_other_test_scratch(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("launcher-e2e-"))
}

/// A process's command line, its arguments joined by spaces ("" once it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The nodes of the two-node cluster (`slurm_conf(2)`).
pub const NODES: [&str; 2] = ["node1", "node2"];

/// A node's slurmd (of a cluster with several nodes): its processes (step daemons, tasks)
/// share its namespaces.
pub fn slurmd_pid(node: &str) -> u32 {
    let f = format!("{}/run/slurmd-{node}.pid", slurm_dir());
    std::fs::read_to_string(&f)
        .unwrap_or_else(|e| panic!("{f}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{f}: {e}"))
}

/// A process's namespace of this kind (`user:[INODE]`), "" once it is gone.
pub fn ns_of(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The node whose network namespace `pid` is in, if any.
pub fn node_of(pid: u32) -> Option<&'static str> {
    let net = ns_of(pid, "net");
    NODES
        .into_iter()
        .find(|n| !net.is_empty() && ns_of(slurmd_pid(n), "net") == net)
}

/// A path inside a node's own mount namespace (its private /tmp and /dev/shm), seen from here.
pub fn on_node(node: &str, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", slurmd_pid(node)))
}

/// Entries owned by `uid` in each node's /tmp and /dev/shm, and in the shared /var/tmp. Starts
/// the cluster of `NODES` first: a test may take this "before" picture as its first step, when
/// the cluster left by another test binary has one node and no per-node pid files.
pub fn node_entries(uid: u32) -> BTreeSet<PathBuf> {
    slurm_conf(NODES.len() as u32);
    let mut dirs: Vec<PathBuf> = vec!["/var/tmp".into()];
    for n in NODES {
        dirs.push(on_node(n, "/tmp"));
        dirs.push(on_node(n, "/dev/shm"));
    }
    owned_entries(&dirs, uid)
}

/// Processes of the test user in either node's network namespace.
pub fn user_processes_on_nodes() -> Vec<(u32, String)> {
    let uid = setup().uid;
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| std::fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == uid))
                .filter(|p| node_of(*p).is_some())
                .map(|p| (p, cmdline(p)))
                .collect()
        })
        .unwrap_or_default()
}

/// The tasks `pids` of a job on the two nodes, by node; each node must run `each` of them.
pub fn by_node(pids: &[u32], each: usize) -> BTreeMap<&'static str, Vec<u32>> {
    let mut per_node: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    for p in pids {
        let node = node_of(*p).unwrap_or_else(|| panic!("task {p} is on no node"));
        per_node.entry(node).or_default().push(*p);
    }
    assert_eq!(
        per_node.values().map(Vec::len).collect::<Vec<_>>(),
        vec![each; NODES.len()],
        "{per_node:?}"
    );
    per_node
}

/// One instance per node: the node's tasks in one user namespace, one FUSE connection in
/// their mount table, a different one on each node. The connections, for the end checks.
pub fn one_instance_per_node(per_node: &BTreeMap<&str, Vec<u32>>) -> Vec<FuseConn> {
    let mut conns = Vec::new();
    for (node, pids) in per_node {
        let ns: BTreeSet<String> = pids.iter().map(|p| ns_of(*p, "user")).collect();
        assert_eq!(ns.len(), 1, "{node}: tasks in {ns:?}");
        let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", pids[0]))
            .unwrap_or_else(|e| panic!("{node}: mountinfo of {}: {e}", pids[0]));
        let c = fuse_connections(&mountinfo);
        assert_eq!(
            c.len(),
            1,
            "{node}: the instance's FUSE connection: {mountinfo}"
        );
        conns.extend(c);
    }
    assert_ne!(conns[0], conns[1], "one FUSE connection per node");
    conns
}

/// Nothing of the user's job left on the nodes: no process (waited for up to 15 s), no new
/// entry in a node's /tmp or /dev/shm or in /var/tmp since `before` (the test's own scratch
/// directory, and other tests', aside).
pub fn assert_nodes_clean(before: &BTreeSet<PathBuf>) {
    let s = setup();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !user_processes_on_nodes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = user_processes_on_nodes();
    assert!(left.is_empty(), "processes left on the nodes: {left:?}");
    let new: Vec<PathBuf> = node_entries(s.uid)
        .difference(before)
        .filter(|p| {
            !p.starts_with(&s.scratch) && !is_other_test_scratch(p) && !is_only_the_block_cache(p)
        })
        .cloned()
        .collect();
    assert!(new.is_empty(), "left behind: {new:?}");
}

/// A rank's command for the scancel tests: it waits on `sleep SECS` (a length unique to the
/// test names its processes) and on SIGTERM writes `got-term` to `MARKER.$SLURM_PROCID`.
/// Slurm signals the sleep too: when it dies first, `wait` returns 0 before the shell's own
/// SIGTERM arrives, so the shell loops to wait again instead of exiting untrapped.
pub fn term_marking_script(marker: &Path, secs: u32) -> String {
    format!(
        "trap 'kill $! 2>/dev/null; echo got-term > {}.$SLURM_PROCID; exit 0' TERM; \
         while :; do sleep {secs} & wait; done",
        marker.display()
    )
}

/// Waits (a minute at most) until `count` processes run exactly `sleep SECS`; their PIDs.
pub fn wait_for_sleeps(secs: u32, count: usize) -> Vec<u32> {
    let want = format!("sleep {secs}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sleeps: Vec<u32> = super::pids_matching(&want)
            .into_iter()
            .filter(|p| cmdline(*p) == want)
            .collect();
        if sleeps.len() == count {
            return sleeps;
        }
        assert!(
            Instant::now() < deadline,
            "{count} processes `{want}` never started: {sleeps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every rank of a scancel test got SIGTERM: its [`term_marking_script`] wrote the marker.
pub fn assert_ranks_got_term(marker: &Path, ranks: usize) {
    for t in 0..ranks {
        let m = format!("{}.{t}", marker.display());
        assert_eq!(
            std::fs::read_to_string(&m).unwrap_or_default().trim(),
            "got-term",
            "rank {t}'s command did not get SIGTERM ({m})"
        );
    }
}
