//! Named instances (issue 21): `launcher instance start IMAGE NAME`, `exec instance://NAME`,
//! `instance list`, `instance stop`, as the unprivileged test user with real FUSE; their end
//! leaves nothing behind (processes, FUSE connection, rendezvous files), after a stop, a
//! `kill -9` of the leader, or the scancel of the Slurm job that started one.

mod common;

use common::slurm::{self, owned_entries};
use common::{
    assert_fuse_connections_end, fixture, fuse_connections, launcher, mksquashfs, other_user,
    setup, share_dir, Out,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A name of this test process's own, so that tests running at once never meet.
fn name(what: &str) -> String {
    format!("t{}-{what}", std::process::id())
}

/// `instance list --json` as the test user: (name, pid, image) of each instance.
fn list() -> Vec<(String, i32, String)> {
    let out = launcher(&["instance", "list", "--json"]).run();
    out.ok();
    parse_list(&out)
}

fn parse_list(out: &Out) -> Vec<(String, i32, String)> {
    let doc: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("instance list --json: {e}: {}", out.stdout));
    doc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_string(),
                i["pid"].as_i64().unwrap() as i32,
                i["img"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pid_of(instance: &str) -> i32 {
    list()
        .into_iter()
        .find(|(n, _, _)| n == instance)
        .unwrap_or_else(|| panic!("{instance} not in `instance list`: {:?}", list()))
        .1
}

/// The mount namespace (inode) of a process.
fn mnt_ns(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .unwrap()
        .ino()
}

/// Processes in the mount namespace `ns`.
fn members(ns: u64) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| std::fs::metadata(format!("/proc/{p}/ns/mnt")).is_ok_and(|m| m.ino() == ns))
        .collect()
}

/// The keeper of the instance led by `leader` (its child in another mount namespace).
fn keeper_of(leader: i32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{leader}/task/{leader}/children")).unwrap();
    children
        .split_whitespace()
        .map(|c| c.parse::<u32>().unwrap())
        .find(|c| mnt_ns(*c) != mnt_ns(leader as u32))
        .unwrap_or_else(|| panic!("no keeper among the children of {leader}: {children}"))
}

/// The keeper (the instance's base mount namespace: the image mounted, no root built) and
/// its child the root keeper (the root's namespace, where the instance's commands run).
fn keepers_of(leader: i32) -> (u32, u32) {
    let keeper = keeper_of(leader);
    let children =
        std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).unwrap();
    let root = children
        .split_whitespace()
        .map(|c| c.parse::<u32>().unwrap())
        .next()
        .unwrap_or_else(|| panic!("no root keeper under the keeper {keeper}"));
    (keeper, root)
}

/// What a stopped (or killed) instance must not leave: a process in its namespace, its
/// leader, its FUSE connection, its rendezvous files, an entry in `instance list`.
fn assert_all_gone(instance: &str, leader: i32, ns: u64, conns: &[common::FuseConn]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while (!members(ns).is_empty() || Path::new(&format!("/proc/{leader}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        members(ns).is_empty(),
        "left in the instance: {:?}",
        members(ns)
    );
    assert!(
        !Path::new(&format!("/proc/{leader}")).exists(),
        "the leader {leader} still runs"
    );
    assert_fuse_connections_end(conns, instance);
    assert!(
        list().iter().all(|(n, _, _)| n != instance),
        "{instance} still listed"
    );
    let files: Vec<String> = std::fs::read_dir(share_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&format!("inst_{instance}_")))
                .collect()
        })
        .unwrap_or_default();
    assert!(files.is_empty(), "rendezvous files left: {files:?}");
}

/// Stops the instance when a test ends, passed or not (a failed assertion must not leave an
/// instance running for the other tests' leftover checks to find).
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = launcher(&["instance", "stop", "--force", &self.0]).run();
    }
}

/// Start `instance` of `image` with these options; its leader, its root's mount namespace
/// and its FUSE connections.
fn start(opts: &[&str], image: &str, instance: &str) -> (i32, u64, Vec<common::FuseConn>) {
    let mut args = vec!["instance", "start"];
    args.extend(opts);
    args.extend([image, instance]);
    let out = launcher(&args).run();
    out.ok();
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    assert!(out.stderr.lines().count() <= 1, "{:?}", out.stderr);
    let leader = pid_of(instance);
    let (keeper, root) = keepers_of(leader);
    // The keeper's base namespace has the image mounted (read-only root or writable's lower
    // layer alike): one connection, which the leader's end ends.
    let mountinfo = std::fs::read_to_string(format!("/proc/{keeper}/mountinfo")).unwrap();
    let conns = fuse_connections(&mountinfo);
    assert_eq!(conns.len(), 1, "{mountinfo}");
    (leader, mnt_ns(root), conns)
}

#[test]
fn exec_runs_in_the_instance_and_stop_ends_it() {
    let img = fixture("busybox-gzip.sqfs");
    let inst = name("exec");
    let _stop = StopOnDrop(inst.clone());
    let (leader, ns, conns) = start(&["--writable-tmpfs"], &img, &inst);
    let uri = format!("instance://{inst}");
    // Two execs share the instance's root: a file one writes, the next reads.
    let out = launcher(&[
        "exec",
        &uri,
        "/bin/sh",
        "-c",
        "echo kept > /written-by-exec; readlink /proc/self/ns/mnt",
    ])
    .run();
    out.ok();
    let first_ns = out.stdout.trim().to_string();
    let out = launcher(&[
        "exec",
        &uri,
        "/bin/sh",
        "-c",
        "cat /written-by-exec; readlink /proc/self/ns/mnt",
    ])
    .run();
    out.ok();
    assert_eq!(out.stdout, format!("kept\n{first_ns}\n"));
    assert_eq!(first_ns, format!("mnt:[{ns}]"));
    // The image on its own has no such file: a fresh exec does not see it.
    let out = launcher(&["exec", &img, "/bin/cat", "/written-by-exec"]).run();
    assert_ne!(out.code, 0, "{out:?}");
    // The exit status passes through; `run` and the listing show the instance.
    let out = launcher(&["exec", &uri, "/bin/sh", "-c", "exit 7"]).run();
    assert_eq!(out.code, 7, "{out:?}");
    let listed = list();
    let entry = listed.iter().find(|(n, _, _)| *n == inst).unwrap();
    assert_eq!(entry.2, img);
    let table = launcher(&["instance", "list"]).run();
    table.ok();
    assert!(table.stdout.starts_with("INSTANCE NAME"), "{table:?}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&inst) && l.contains(&leader.to_string()) && l.ends_with(&img)),
        "{table:?}"
    );
    // Options that set mounts are refused with instance://, in one line.
    let out = launcher(&["exec", "-B", "/etc:/mnt", &uri, "/bin/true"]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains("--bind: not with instance://"),
        "{out:?}"
    );
    // Stop: everything of the instance goes, and exec then says there is none.
    let out = launcher(&["instance", "stop", &inst]).run();
    out.ok();
    assert!(
        out.stderr
            .contains(&format!("Stopping {inst} instance of {img} (PID={leader})")),
        "{out:?}"
    );
    assert_all_gone(&inst, leader, ns, &conns);
    let out = launcher(&["exec", &uri, "/bin/true"]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains(&format!("no instance named '{inst}'")),
        "{out:?}"
    );
}

/// A process an instance's command moves into namespaces of its own (`unshare -Urm`: a
/// user and a mount namespace, so no longer among the instance's mount namespace), then
/// detaches (`setsid`, orphaned): `instance stop` still ends it, as it ends the command (the
/// command's reaper is in the instance and kills what it adopted).
#[test]
fn stop_ends_processes_that_left_the_instances_namespaces() {
    let img = fixture("busybox-gzip.sqfs");
    let inst = name("escape");
    let _stop = StopOnDrop(inst.clone());
    let (leader, ns, conns) = start(&[], &img, &inst);
    let uri = format!("instance://{inst}");
    let (inner, outer) = ("sleep 45451", "sleep 45452");
    let script = format!("(unshare -Urm setsid {inner} &); {outer}");
    let mut child = launcher(&["exec", &uri, "/bin/sh", "-c", &script]).spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    let escaped = loop {
        let found: Vec<u32> = common::pids_matching(inner)
            .into_iter()
            .filter(|p| slurm::cmdline(*p) == inner)
            .collect();
        if found.len() == 1 && !common::pids_matching(outer).is_empty() {
            break found[0];
        }
        assert!(Instant::now() < deadline, "the sleeps never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(
        mnt_ns(escaped),
        ns,
        "unshare -m did not leave the namespace"
    );
    let out = launcher(&["instance", "stop", &inst]).run();
    out.ok();
    common::assert_gone(
        inner,
        "a process that left the instance's namespaces survived",
    );
    common::assert_gone(outer, "the command survived");
    assert_all_gone(&inst, leader, ns, &conns);
    let _ = child.wait();
}

#[test]
fn the_same_name_twice_is_refused_and_stop_all_ends_every_instance() {
    let img = fixture("busybox-gzip.sqfs");
    let (a, b) = (name("all-a"), name("all-b"));
    let _stop = (StopOnDrop(a.clone()), StopOnDrop(b.clone()));
    let (la, nsa, ca) = start(&[], &img, &a);
    let again = launcher(&["instance", "start", &img, &a]).run();
    assert_eq!(again.code, 255, "{again:?}");
    assert_eq!(again.stderr.lines().count(), 1, "{again:?}");
    assert!(
        again.stderr.contains(&format!(
            "an instance named '{a}' is already running (pid {la})"
        )),
        "{again:?}"
    );
    assert_eq!(
        pid_of(&a),
        la,
        "the refused start touched the running instance"
    );
    let (lb, nsb, cb) = start(&[], &img, &b);
    // A command running in the instance is ended by the stop too.
    let mut running = launcher(&["exec", &format!("instance://{b}"), "/bin/sleep", "4711"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while members(nsb).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // --all, with a pattern for this test's own instances (other tests run at once).
    let out = launcher(&[
        "instance",
        "stop",
        &format!("t{}-all-*", std::process::id()),
    ])
    .run();
    out.ok();
    assert_all_gone(&a, la, nsa, &ca);
    assert_all_gone(&b, lb, nsb, &cb);
    let status = running.wait().unwrap();
    assert!(!status.success(), "the exec outlived the instance");
    let out = launcher(&["instance", "stop", "--all"]).run();
    // Nothing of this test's left to stop; another test's instance may be (not an error).
    assert!(
        out.code == 0 || out.stderr.contains("no instance found"),
        "{out:?}"
    );
}

#[test]
fn kill_9_of_the_leader_leaves_nothing_and_list_forgets_it() {
    let img = fixture("busybox-gzip.sqfs");
    let inst = name("kill9");
    let _stop = StopOnDrop(inst.clone());
    let (leader, ns, conns) = start(&[], &img, &inst);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_all_gone(&inst, leader, ns, &conns);
    // The name is free again.
    let (leader, ns, conns) = start(&[], &img, &inst);
    launcher(&["instance", "stop", &inst]).run().ok();
    assert_all_gone(&inst, leader, ns, &conns);
}

#[test]
fn the_startscript_runs_with_its_arguments_and_logs() {
    let s = setup();
    let tree = common::busybox_tree("instance-startscript");
    std::fs::create_dir_all(tree.join(".singularity.d")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/sleep")).unwrap();
    let script = tree.join(".singularity.d/startscript");
    std::fs::write(&script, "#!/bin/sh\necho \"started $*\"\nexec sleep 5151\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let img = s.scratch.join("instance-startscript.sqfs");
    common::mksquashfs(&tree, &img, &[]);
    let img = img.display().to_string();
    let inst = name("start");
    let _stop = StopOnDrop(inst.clone());
    let out = launcher(&["instance", "start", &img, &inst, "a", "b c"]).run();
    out.ok();
    let leader = pid_of(&inst);
    let (keeper, root) = keepers_of(leader);
    let ns = mnt_ns(root);
    let conns =
        fuse_connections(&std::fs::read_to_string(format!("/proc/{keeper}/mountinfo")).unwrap());
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let log = s
        .home
        .join(format!(".launcher/instances/logs/{host}/{inst}.out"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("started")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "started a b c\n");
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), s.uid);
    assert!(
        members(ns)
            .iter()
            .any(|p| slurm::cmdline(*p) == "sleep 5151"),
        "the startscript's sleep is not in the instance"
    );
    launcher(&["instance", "stop", &inst]).run().ok();
    assert_all_gone(&inst, leader, ns, &conns);
}

#[test]
fn two_users_instances_of_one_name_are_separate() {
    let s = setup();
    let img = fixture("busybox-gzip.sqfs");
    let inst = name("users");
    let _stop = StopOnDrop(inst.clone());
    let (leader, ns, conns) = start(&["--writable-tmpfs"], &img, &inst);
    let (other, other_uid, other_home) = other_user();
    let as_other = |args: &[&str]| -> Out {
        Out::from(
            Command::new("setpriv")
                .arg(format!("--reuid={other_uid}"))
                .arg(format!("--regid={other_uid}"))
                .arg("--clear-groups")
                .arg(&s.bin)
                .args(args)
                .env_clear()
                .env("HOME", &other_home)
                .env("USER", &other)
                .env("PATH", "/usr/bin:/bin")
                .current_dir(&other_home)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    };
    // The other user neither sees nor reaches this user's instance...
    let out = as_other(&["instance", "list", "--json"]);
    out.ok();
    assert!(parse_list(&out).is_empty(), "{out:?}");
    let uri = format!("instance://{inst}");
    let out = as_other(&["exec", &uri, "/bin/true"]);
    assert_eq!(out.code, 255, "{out:?}");
    // ...and starts one of the same name, its own.
    as_other(&["instance", "start", "--writable-tmpfs", &img, &inst]).ok();
    as_other(&["exec", &uri, "/bin/sh", "-c", "echo other > /owner"]).ok();
    launcher(&["exec", &uri, "/bin/sh", "-c", "echo mine > /owner"])
        .run()
        .ok();
    assert_eq!(
        as_other(&["exec", &uri, "/bin/cat", "/owner"]).stdout,
        "other\n"
    );
    let mine = launcher(&["exec", &uri, "/bin/cat", "/owner"]).run();
    assert_eq!(mine.stdout, "mine\n");
    // Stopping one's own leaves the other's.
    launcher(&["instance", "stop", &inst]).run().ok();
    assert_all_gone(&inst, leader, ns, &conns);
    let theirs = parse_list(&as_other(&["instance", "list", "--json"]));
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    as_other(&["instance", "stop", &inst]).ok();
    assert!(parse_list(&as_other(&["instance", "list", "--json"])).is_empty());
}

#[test]
fn scancel_of_the_job_that_started_an_instance_leaves_nothing() {
    let _g = slurm::serial();
    let s = setup();
    let conf = slurm::slurm_conf(1);
    let scratch_dirs = ["/tmp", "/var/tmp", "/dev/shm"].map(PathBuf::from);
    let before = owned_entries(&scratch_dirs, s.uid);
    let inst = name("job");
    let marker = s.scratch.join(format!("{inst}.started"));
    let script = s.scratch.join(format!("{inst}.sbatch"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n#SBATCH -n 1 -J launcher-instance-test\n#SBATCH -o {out}/{inst}-%j.out\n\
             {bin} instance start {img} {inst} || exit 1\n\
             {bin} exec instance://{inst} /bin/sh -c 'readlink /proc/self/ns/mnt' > {marker}\n\
             sleep 3232\n",
            out = s.scratch.display(),
            bin = s.bin.display(),
            img = fixture("busybox-gzip.sqfs"),
            marker = marker.display(),
        ),
    )
    .unwrap();
    let out = Out::from(
        slurm::as_slurm_user(
            conf,
            "sbatch",
            &["--parsable", script.to_str().unwrap()],
            &[],
            60,
        )
        .output()
        .unwrap(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let job = out.stdout.trim().split(';').next().unwrap().to_string();
    // A failed assertion before the scancel below must not leave the job running.
    struct CancelOnDrop(&'static str, String);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            let _ = slurm::as_slurm_user(self.0, "scancel", &[&self.1], &[], 60).output();
        }
    }
    let _cancel = CancelOnDrop(conf, job.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let ns_text = loop {
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        if text.starts_with("mnt:[") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the job's instance never ran a command; job output: {:?}",
            std::fs::read_to_string(s.scratch.join(format!("{inst}-{job}.out")))
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ns: u64 = ns_text
        .trim()
        .trim_start_matches("mnt:[")
        .trim_end_matches(']')
        .parse()
        .unwrap();
    let in_instance = members(ns);
    assert!(!in_instance.is_empty());
    let keeper = in_instance[0];
    let conns =
        fuse_connections(&std::fs::read_to_string(format!("/proc/{keeper}/mountinfo")).unwrap());
    assert_eq!(conns.len(), 1);
    // The leader, its keeper and the root keeper (forks of it, same command line).
    let leader_cmd = format!("instance start {} {inst}", fixture("busybox-gzip.sqfs"));
    assert_eq!(
        common::pids_matching(&leader_cmd).len(),
        3,
        "no leader running"
    );
    let out = Out::from(
        slurm::as_slurm_user(conf, "scancel", &[&job], &[], 60)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    // The leader, everything in the instance, the job's sleep: gone within KillWait.
    common::assert_gone(&leader_cmd, "the instance's leader after scancel");
    common::assert_gone("sleep 3232", "the job's sleep after scancel");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !members(ns).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        members(ns).is_empty(),
        "left in the instance: {:?}",
        members(ns)
    );
    assert_fuse_connections_end(&conns, "scancel of the job");
    let files: Vec<String> = std::fs::read_dir(share_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&format!("inst_{inst}_")))
                .collect()
        })
        .unwrap_or_default();
    assert!(files.is_empty(), "rendezvous files left: {files:?}");
    let new: Vec<PathBuf> = owned_entries(&scratch_dirs, s.uid)
        .difference(&before)
        .filter(|p| {
            !p.starts_with(&s.scratch) && !slurm::is_other_test_scratch(p) && **p != share_dir()
        })
        .cloned()
        .collect();
    assert!(new.is_empty(), "left behind: {new:?}");
}

/// Issue 17: `instance start --overlay IMG.sqfs`: every `exec instance://` sees the layer, and
/// `instance stop` ends the leader, which serves the layer too.
#[test]
fn an_instance_started_with_an_overlay_image_shows_it_to_every_exec() {
    let s = setup();
    let img = fixture("busybox-gzip.sqfs");
    let inst = name("overlay");
    let _stop = StopOnDrop(inst.clone());
    let tree = s.scratch.join("instance-layer-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("data")).unwrap();
    std::fs::write(tree.join("data/layer"), "from the layer\n").unwrap();
    let layer = s.scratch.join("instance-layer.sqfs");
    mksquashfs(&tree, &layer, &[]);
    let layer = layer.display().to_string();
    let out = launcher(&["instance", "start", "--overlay", &layer, &img, &inst]).run();
    out.ok();
    let leader = pid_of(&inst);
    let uri = format!("instance://{inst}");
    for _ in 0..2 {
        let out = launcher(&["exec", &uri, "cat", "/data/layer"]).run();
        assert_eq!(out.ok().stdout, "from the layer\n", "{out:?}");
    }
    launcher(&["instance", "stop", &inst]).run().ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{leader}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The leader serves the image and the layer: with it gone, no server is left.
    assert!(!Path::new(&format!("/proc/{leader}")).exists());
}
