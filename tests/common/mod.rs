//! Harness for end-to-end tests: run the real `launcher` binary as the unprivileged test user.
//!
//! The tests run as root only to switch to that user (setpriv); everything they check happens
//! in the launcher running without privileges. Fixtures come from tests/setup.sh, which is
//! run automatically the first time.

#![allow(dead_code)]

pub mod slurm;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Setup {
    pub fixtures: PathBuf,
    pub bin: PathBuf,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// A world-writable scratch directory for this test process.
    pub scratch: PathBuf,
}

pub fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        assert!(
            nix_is_root(),
            "end-to-end tests must run as root: they run the launcher as the unprivileged test user \
             created by tests/setup.sh (run the suite with `sudo`, or as root as .ci/run does)"
        );
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new("bash").arg(repo.join("tests/setup.sh")).status().expect("running tests/setup.sh");
        assert!(status.success(), "tests/setup.sh failed");
        let fixtures = PathBuf::from(std::env::var("LAUNCHER_FIXTURES").unwrap_or_else(|_| "/var/tmp/launcher-fixtures".into()));
        let user = std::fs::read_to_string(fixtures.join("user")).unwrap().trim().to_string();
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&user).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let home = PathBuf::from(
            String::from_utf8_lossy(&Command::new("getent").args(["passwd", &user]).output().unwrap().stdout)
                .trim()
                .split(':')
                .nth(5)
                .unwrap()
                .to_string(),
        );
        // A copy of the binary the user can execute (the build tree may be private to root).
        let scratch = PathBuf::from(format!("/var/tmp/launcher-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let bin = scratch.join("launcher");
        std::fs::copy(env!("CARGO_BIN_EXE_launcher"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        remove_stale_scratch();
        Setup { fixtures, bin, user, uid, gid, home, scratch }
    })
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Scratch directories of earlier test processes that are gone.
fn remove_stale_scratch() {
    let Ok(dir) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("launcher-e2e-")
            .and_then(|p| p.parse::<u32>().ok())
        {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

pub fn fixture(name: &str) -> String {
    setup().fixtures.join(name).display().to_string()
}

/// A launcher invocation as the test user.
pub struct L {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
}

pub fn launcher<S: AsRef<str>>(args: &[S]) -> L {
    L {
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        env: Vec::new(),
        cwd: None,
    }
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "launcher failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The environment a login of the test user has: all the tests give the user.
fn test_user_env() -> Vec<(&'static str, String)> {
    let s = setup();
    vec![
        ("HOME", s.home.display().to_string()),
        ("USER", s.user.clone()),
        ("LOGNAME", s.user.clone()),
        ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
        ("SHELL", "/bin/sh".into()),
    ]
}

/// `setpriv` and its arguments that switch to the test user (uid, gid, no other groups).
fn setpriv_args() -> Vec<String> {
    let s = setup();
    vec![
        "setpriv".into(),
        format!("--reuid={}", s.uid),
        format!("--regid={}", s.gid),
        "--clear-groups".into(),
    ]
}

/// `program` as the test user, with only a login's environment and home as the working
/// directory: the one way the tests start anything as that user. `limit`: a wall-clock bound
/// in seconds (`timeout -k 10 LIMIT`), for commands that could hang on a broken cluster.
pub fn as_test_user(program: impl AsRef<std::ffi::OsStr>, limit: Option<u32>) -> Command {
    let setpriv = setpriv_args();
    let mut c = match limit {
        Some(secs) => {
            let mut c = Command::new("timeout");
            c.args(["-k", "10", &secs.to_string()]).args(&setpriv);
            c
        }
        None => {
            let mut c = Command::new(&setpriv[0]);
            c.args(&setpriv[1..]);
            c
        }
    };
    c.arg(program)
        .env_clear()
        .envs(test_user_env())
        .current_dir(&setup().home);
    // Default dispositions, as a shell's foreground command has them: a test run started in
    // the background (`nohup`, `&` in a script) ignores SIGINT, SIGQUIT and SIGHUP, the
    // launcher and the command inherit that (as they should), and a test sending them waited
    // for an echo that never came.
    // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    c
}

/// The same as shell words, for scripts that must first do something as root (`sh -c
/// 'SETUP; exec PREFIX launcher ...'`).
pub fn as_test_user_prefix() -> String {
    let env: Vec<String> = test_user_env()
        .into_iter()
        .map(|(k, v)| format!("{k}='{v}'"))
        .collect();
    format!("env -i {} {}", env.join(" "), setpriv_args().join(" "))
}

impl L {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn cwd(mut self, p: impl AsRef<Path>) -> Self {
        self.cwd = Some(p.as_ref().to_path_buf());
        self
    }

    pub fn command(&self) -> Command {
        let s = setup();
        let mut c = as_test_user(&s.bin, None);
        c.args(&self.args);
        if let Some(cwd) = &self.cwd {
            c.current_dir(cwd);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self) -> Out {
        let out: Output = self
            .command()
            .stdin(Stdio::null())
            .output()
            .expect("spawning setpriv");
        Out::from(out)
    }

    pub fn spawn(&self) -> Child {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning setpriv")
    }
}

/// Run `sh -c SCRIPT` in IMAGE and return stdout, asserting success.
pub fn sh(image: &str, script: &str) -> String {
    let out = launcher(&["exec", image, "/bin/sh", "-c", script]).run();
    out.ok();
    out.stdout
}

/// Read lines from a child's stdout until one equals `want` (with a deadline).
pub fn wait_for_line(reader: &mut BufReader<std::process::ChildStdout>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    while Instant::now() < deadline {
        if reader.buffer().is_empty() && !readable_before(reader.get_ref(), deadline) {
            break;
        }
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push(line.trim_end().to_string());
        if line.trim_end() == want {
            return seen;
        }
    }
    panic!("did not see line '{want}'; saw {seen:?}");
}

/// Whether `pipe` has something to read (or its end) before `deadline`: a read that nothing
/// answers would otherwise block the test for ever.
fn readable_before(pipe: &impl std::os::fd::AsRawFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Wait until no process has `needle` in its command line.
pub fn wait_gone(needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if pids_matching(needle).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits for every process whose command line contains `needle` to be gone; else panics
/// with `what` and each survivor's state, wait channel and command line.
pub fn assert_gone(needle: &str, what: &str) {
    if wait_gone(needle) {
        return;
    }
    let left: Vec<String> = pids_matching(needle)
        .iter()
        .map(|p| {
            let read = |f: &str| std::fs::read(format!("/proc/{p}/{f}")).unwrap_or_default();
            let text = |b: Vec<u8>| String::from_utf8_lossy(&b).replace('\0', " ");
            format!(
                "{} wchan={} | {}",
                text(read("stat")).trim(),
                text(read("wchan")),
                text(read("cmdline"))
            )
        })
        .collect();
    panic!("{what}: {left:#?}");
}

pub fn pids_matching(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Processes of the test user that hold /dev/fuse open (the FUSE servers), each with the user
/// namespace it serves (`user:[INODE]`): one per node and job step when ranks share an instance.
/// The server itself stays in the host's namespaces; the namespace is its children's (the
/// command of a private launch, the keeper of a shared one).
pub fn fuse_servers() -> std::collections::BTreeSet<(String, u32)> {
    let uid = setup().uid.to_string();
    let mut servers = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let owned = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| {
                s.lines().any(|l| {
                    l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(uid.as_str())
                })
            })
            .unwrap_or(false);
        if !owned {
            continue;
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            if fds.flatten().any(|f| {
                std::fs::read_link(f.path())
                    .map(|t| t == Path::new("/dev/fuse"))
                    .unwrap_or(false)
            }) {
                servers.insert((served_namespace(pid), pid));
            }
        }
    }
    servers
}

/// The user namespace of `server`'s children that differs from its own (its own if none does).
fn served_namespace(server: u32) -> String {
    let ns_of = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/user"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let own = ns_of(&server.to_string());
    let children = std::fs::read_to_string(format!("/proc/{server}/task/{server}/children"))
        .unwrap_or_default();
    children
        .split_whitespace()
        .map(ns_of)
        .find(|ns| !ns.is_empty() && *ns != own)
        .unwrap_or(own)
}

/// The shared instances' rendezvous directory of the test user (launcher/src/apply/share.rs).
pub fn share_dir() -> PathBuf {
    format!("/tmp/launcher-{}", setup().uid).into()
}

/// Wait (up to `secs`) until the rendezvous directory holds no file. Its files are named after
/// a hash, not the job: with other launches of the test user running, only "none at all" is a
/// sure answer.
pub fn assert_no_share_files_left(secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // (The block cache lives beside the rendezvous files: fuse/block_cache.rs.)
        let left: Vec<String> = std::fs::read_dir(share_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f != "blocks")
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rendezvous files left in {}: {left:?}",
            share_dir().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real ld.so.cache made by ldconfig for `lib_dir` (then the host's trusted directories),
/// written to the scratch directory as `NAME-ld.so.cache`.
pub fn ldconfig_cache(name: &str, lib_dir: &Path) -> PathBuf {
    let s = setup();
    let conf = s.scratch.join(format!("{name}-ld.so.conf"));
    let cache = s.scratch.join(format!("{name}-ld.so.cache"));
    std::fs::write(&conf, format!("{}\n", lib_dir.display())).unwrap();
    let st = Command::new("/sbin/ldconfig")
        .arg("-X")
        .arg("-C")
        .arg(&cache)
        .arg("-f")
        .arg(&conf)
        .status()
        .expect("running ldconfig");
    assert!(st.success(), "ldconfig -C failed");
    cache
}

/// fusectl's view of the FUSE connections (`/sys/fs/fuse/connections`). These machines do
/// not mount it; a root process of ours mounts it in a mount namespace of its own, held for
/// the life of the test process (its input is our pipe), and we read it through /proc/PID/root.
/// Nothing changes on the host.
fn fusectl() -> &'static Path {
    static DIR: OnceLock<(Child, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t fusectl fusectl /sys/fs/fuse/connections && echo mounted && exec cat >/dev/null",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning unshare (util-linux)");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "mounted\n", "mounting fusectl failed");
        let dir = PathBuf::from(format!("/proc/{}/root/sys/fs/fuse/connections", holder.id()));
        (holder, dir)
    })
    .1
}

/// A FUSE connection: its fusectl directory's name (the device number, which the kernel
/// reuses) and inode number (which it does not while fusectl stays mounted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseConn {
    pub name: String,
    pub ino: u64,
}

/// The connections of the FUSE mounts in `mountinfo` (a launched command's own mount table,
/// read while the command runs), each checked to be the test user's.
pub fn fuse_connections(mountinfo: &str) -> Vec<FuseConn> {
    use std::os::unix::fs::MetadataExt;
    let mut conns = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("fuse") {
            continue;
        }
        let dev = left.split_whitespace().nth(2).unwrap_or_default();
        let (major, minor) = dev.split_once(':').expect("major:minor in mountinfo");
        let name =
            ((major.parse::<u64>().unwrap() << 20) | minor.parse::<u64>().unwrap()).to_string();
        let meta = std::fs::metadata(fusectl().join(&name))
            .unwrap_or_else(|e| panic!("no FUSE connection {name} for mount '{line}': {e}"));
        assert_eq!(
            meta.uid(),
            setup().uid,
            "connection {name} is not the test user's"
        );
        let conn = FuseConn {
            name,
            ino: meta.ino(),
        };
        if !conns.contains(&conn) {
            conns.push(conn);
        }
    }
    conns
}

/// Waits (10 s at most) for every connection in `conns` to end; else panics with `what`.
pub fn assert_fuse_connections_end(conns: &[FuseConn], what: &str) {
    use std::os::unix::fs::MetadataExt;
    let alive = || -> Vec<&FuseConn> {
        conns
            .iter()
            .filter(|c| std::fs::metadata(fusectl().join(&c.name)).is_ok_and(|m| m.ino() == c.ino))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alive().is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: FUSE connections left: {:?}",
            alive()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A second unprivileged user, `launcher-test2` (another local user, for what one user's
/// files can do to another's launches): made here as root when missing, one test process at
/// a time (useradd under a lock), so the fixtures of tests/setup.sh need no rebuild.
/// Returns its name, uid and home.
pub fn other_user() -> (String, u32, PathBuf) {
    const NAME: &str = "launcher-test2";
    static OTHER: OnceLock<(String, u32, PathBuf)> = OnceLock::new();
    OTHER
        .get_or_init(|| {
            setup();
            let st = Command::new("flock")
                .args(["/var/tmp/launcher-other-user.lock", "sh", "-c"])
                .arg(format!(
                    "id -u {NAME} >/dev/null 2>&1 || useradd -m -s /bin/sh {NAME}"
                ))
                .status()
                .expect("running useradd");
            assert!(st.success(), "creating the user {NAME} failed");
            let entry = String::from_utf8_lossy(
                &Command::new("getent")
                    .args(["passwd", NAME])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .trim()
            .to_string();
            let fields: Vec<&str> = entry.split(':').collect();
            assert!(fields.len() >= 6, "getent passwd {NAME}: {entry}");
            (
                NAME.to_string(),
                fields[2].parse().unwrap(),
                PathBuf::from(fields[5]),
            )
        })
        .clone()
}

/// Makes a SquashFS image of `tree` with mksquashfs as root (so files are root's).
pub fn mksquashfs(tree: &Path, out: &Path, opts: &[&str]) {
    let st = Command::new("mksquashfs")
        .arg(tree)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress"])
        .args(opts)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs {}", out.display());
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A tree with busybox and its shell tools, for crafted images.
pub fn busybox_tree(name: &str) -> PathBuf {
    let t = setup().scratch.join(name);
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::copy(
        setup().fixtures.join("rootfs/bin/busybox"),
        t.join("bin/busybox"),
    )
    .unwrap();
    for a in ["sh", "ls", "cat", "find", "echo", "true", "stat"] {
        std::os::unix::fs::symlink("busybox", t.join("bin").join(a)).unwrap();
    }
    std::fs::write(t.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    t
}

/// An image of a busybox tree with these `/.singularity.d/env` scripts.
pub fn env_script_image(name: &str, scripts: &[(&str, String)]) -> String {
    let t = busybox_tree(&format!("{name}-tree"));
    let env = t.join(".singularity.d/env");
    std::fs::create_dir_all(&env).unwrap();
    for (file, text) in scripts {
        std::fs::write(env.join(file), text).unwrap();
    }
    let path = setup().scratch.join(format!("{name}.sqfs"));
    mksquashfs(&t, &path, &["-comp", "gzip"]);
    std::fs::remove_dir_all(&t).unwrap();
    path.display().to_string()
}

/// `openssl ARGS` in `dir`, which must succeed.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A key pair made at test time (`openssl genpkey GEN`) in `dir`: (private, public) PEM files
/// `NAME.pem` and `NAME-public.pem`, readable by the test user.
pub fn openssl_key(dir: &Path, name: &str, gen: &[&str]) -> (String, String) {
    let (key, public) = (format!("{name}.pem"), format!("{name}-public.pem"));
    let mut args = vec!["genpkey"];
    args.extend(gen);
    args.extend(["-out", &key]);
    openssl(dir, &args);
    openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
    for f in [&key, &public] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (
        dir.join(key).display().to_string(),
        dir.join(public).display().to_string(),
    )
}
