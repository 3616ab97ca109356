//! End-to-end: `launcher exec` of real SquashFS and SIF images, as the unprivileged test user.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::BufReader;

fn gzip() -> String {
    fixture("busybox-gzip.sqfs")
}

#[test]
fn identity_is_the_callers() {
    let s = setup();
    let out = sh(
        &gzip(),
        "id -u; id -g; id -un; echo $HOME; echo $USER; grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status | tr -s '\t ' ' '",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], s.uid.to_string());
    assert_eq!(lines[1], s.gid.to_string());
    assert_eq!(lines[2], s.user, "generated /etc/passwd names the caller");
    assert_eq!(lines[3], s.home.display().to_string());
    assert_eq!(lines[4], s.user);
    assert_ne!(s.uid, 0);
    // No capabilities, none to regain (empty bounding set), no new privileges.
    let status = &lines[5..];
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status.contains(&format!("{cap}: 0000000000000000").as_str()),
            "{cap}: {status:?}"
        );
    }
    assert!(status.contains(&"NoNewPrivs: 1"), "{status:?}");
}

#[test]
fn every_compressor_reads_the_same_bytes() {
    let want = std::fs::read_to_string(fixture("big.sha256")).unwrap();
    for comp in [
        "gzip", "lzma", "lzo", "xz", "lz4", "zstd", "plain", "nofrag",
    ] {
        let img = fixture(&format!("busybox-{comp}.sqfs"));
        let out = sh(
            &img,
            "sha256sum /data/big | cut -d' ' -f1; cat /data/tree/a/b/deep.txt; cat /data/tree/f300",
        );
        assert_eq!(
            out,
            format!("{}deep\nfile 300\n", want),
            "compressor {comp}"
        );
    }
}

#[test]
fn small_files_read_after_listing_are_intact() {
    // Listing a directory pushes its small files into the page cache; what cat reads then
    // must be exactly the image's bytes, with and without the push.
    let mut names: Vec<String> = (1..=300).map(|i| format!("f{i}")).collect();
    names.sort();
    let want: String = names
        .iter()
        .map(|n| format!("file {}\n", &n[1..]))
        .collect();
    for flags in [&[][..], &["--fuse-no-push"][..]] {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        let img = gzip();
        args.extend_from_slice(&[
            &img,
            "/bin/sh",
            "-c",
            "ls -l /data/tree > /dev/null; cd /data/tree && cat f*",
        ]);
        let out = launcher(&args).run();
        assert_eq!(out.ok().stdout, want, "flags {flags:?}");
    }
}

#[test]
fn tree_listing_matches_unsquashfs() {
    let image: BTreeSet<String> = std::fs::read_to_string(fixture("busybox.list"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // /root is 0700 and owned by the image's root: find may not enter it, as on the host.
    let out = launcher(&[
        "exec",
        &gzip(),
        "/bin/sh",
        "-c",
        "find / -xdev 2>/dev/null; true",
    ])
    .run()
    .ok()
    .stdout
    .clone();
    let inside: BTreeSet<String> = out
        .lines()
        .filter(|l| *l != "/")
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = image.difference(&inside).collect();
    assert!(
        missing.is_empty(),
        "in the image but not seen inside: {missing:?}"
    );
    // Only mount points the launcher created may be extra.
    let home = setup().home.display().to_string();
    let allowed = [
        home.as_str(),
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/localtime",
    ];
    let extra: Vec<_> = inside
        .difference(&image)
        .filter(|p| !allowed.contains(&p.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "seen inside but not in the image: {extra:?}"
    );
}

#[test]
fn links_modes_and_sparse_files() {
    let want = std::fs::read_to_string(fixture("big.sha256")).unwrap();
    let out = sh(
        &gzip(),
        "readlink /data/abs-link; sha256sum /data/abs-link | cut -d' ' -f1; cat /data/rel-link; \
         stat -c '%i %h' /data/tree/f1; stat -c '%i %h' /data/hardlink-f1; \
         wc -c < /data/sparse; tail -c 5 /data/sparse; stat -c %a /data/private; \
         cat /data/private 2>/dev/null || echo denied; readlink /data/dangling; wc -c < /data/empty",
    );
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "/data/big");
    assert_eq!(
        format!("{}\n", l[1]),
        want,
        "absolute symlink resolves inside the image"
    );
    assert_eq!(l[2], "deep");
    assert_eq!(l[3], l[4], "hard links share an inode");
    assert!(l[3].ends_with(" 2"), "nlink 2: {}", l[3]);
    assert_eq!(l[5].trim(), (3 * 1024 * 1024 + 5).to_string());
    assert_eq!(l[6], "tail");
    assert_eq!(l[7], "600");
    assert_eq!(
        l[8], "denied",
        "a 0600 file of an unmapped owner stays private"
    );
    assert_eq!(l[9], "/nonexistent/target");
    assert_eq!(l[10].trim(), "0");
}

#[test]
fn devices_fifos_and_xattrs() {
    let out = sh(
        &gzip(),
        "stat -c '%F %t %T' /data/chardev; cat /data/chardev 2>/dev/null || echo no-device-access; \
         stat -c %F /data/fifo; xattr-get /data/xattr-file user.test; xattr-get /data/xattr-file | sort; \
         xattr-get /data/xattr-file user.long | wc -c; xattr-get /data/big user.test 2>&1 | grep -c 'No data'",
    );
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "character special file 1 3");
    assert_eq!(
        l[1], "no-device-access",
        "device nodes in an image are not usable (nodev)"
    );
    assert_eq!(l[2], "fifo");
    assert_eq!(l[3], "hello");
    assert_eq!(&l[4..6], ["user.long", "user.test"]);
    assert_eq!(l[6].trim(), "3001");
    assert_eq!(l[7], "1", "a file without xattrs answers ENODATA");
    // An image without an xattr table answers ENOSYS, which the kernel reports as unsupported.
    let out = sh(
        &fixture("busybox-nofrag.sqfs"),
        "xattr-get /data/xattr-file user.test 2>&1; true",
    );
    assert!(out.contains("Operation not supported"), "{out}");
}

#[test]
fn owners_are_shown_as_stored() {
    let s = setup();
    // The caller's own files show as theirs; the image's root is not mapped, so it is nobody.
    let out = sh(
        &gzip(),
        "stat -c '%u %g' /data/mine; stat -c '%u %g' /bin/busybox",
    );
    assert_eq!(out, format!("{} {}\n65534 65534\n", s.uid, s.gid));
}

#[test]
fn root_is_read_only_unless_writable_tmpfs() {
    let out = launcher(&["exec", &gzip(), "/bin/sh", "-c", "touch /newfile"]).run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    // Writable: new files anywhere, and image files changed or removed (copied up).
    let script = "echo x > /newfile && cat /newfile && rm /bin/cat && echo removed && echo conf > /etc/new.conf && cat /etc/new.conf && echo more >> /data/tree/f2 && cat /data/tree/f2";
    let out = launcher(&["exec", "--writable-tmpfs", &gzip(), "/bin/sh", "-c", script]).run();
    assert_eq!(out.ok().stdout, "x\nremoved\nconf\nfile 2\nmore\n");
    // Nothing persists: the next run sees the image as it is.
    assert_eq!(
        sh(
            &gzip(),
            "ls /newfile 2>/dev/null || echo absent; ls /bin/cat; cat /data/tree/f2"
        ),
        "absent\n/bin/cat\nfile 2\n"
    );
}

#[test]
fn exit_status_passes_through() {
    assert_eq!(
        launcher(&["exec", &gzip(), "/bin/sh", "-c", "exit 42"])
            .run()
            .code,
        42
    );
    assert_eq!(launcher(&["exec", &gzip(), "/bin/true"]).run().code, 0);
    assert_eq!(launcher(&["exec", &gzip(), "/bin/false"]).run().code, 1);
    // Killed by signal N: 128+N, as a shell reports it.
    assert_eq!(
        launcher(&["exec", &gzip(), "/bin/sh", "-c", "kill -TERM $$"])
            .run()
            .code,
        143
    );
    assert_eq!(
        launcher(&["exec", &gzip(), "/bin/sh", "-c", "kill -KILL $$"])
            .run()
            .code,
        137
    );
}

#[test]
fn command_arguments_and_path_search() {
    let out = launcher(&["exec", &gzip(), "echo", "-n", "a  b", "--flag"]).run();
    assert_eq!(out.ok().stdout, "a  b --flag");
    let out = launcher(&["exec", &gzip(), "no-such-command"]).run();
    assert_eq!(out.code, 255);
    assert!(
        out.stderr
            .contains("command 'no-such-command' not found in the container"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "one-line error: {out:?}");
}

#[test]
fn signals_are_forwarded() {
    let marker = format!("sig-marker-{}", std::process::id());
    let script = format!(
        "trap 'echo got-usr1' USR1; trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done # {marker}"
    );
    let mut child = launcher(&["exec", &gzip(), "/bin/sh", "-c", &script]).spawn();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut out, "ready");
    let pid = child.id() as i32;
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_for_line(&mut out, "got-usr1");
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for_line(&mut out, "got-term");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    assert!(wait_gone(&marker), "processes left behind");
}

/// The other forwarded signals (README: INT, HUP, QUIT, USR2, CONT, WINCH and ALRM besides
/// TERM and USR1): each sent to the launcher by a process must reach the command's trap.
#[test]
fn every_forwarded_signal_reaches_the_command() {
    let marker = format!("allsig-marker-{}", std::process::id());
    let signals = [
        ("INT", libc::SIGINT),
        ("HUP", libc::SIGHUP),
        ("QUIT", libc::SIGQUIT),
        ("USR2", libc::SIGUSR2),
        ("CONT", libc::SIGCONT),
        ("WINCH", libc::SIGWINCH),
        ("ALRM", libc::SIGALRM),
    ];
    let traps: String = signals
        .iter()
        .map(|(name, _)| format!("trap 'echo got-{name}' {name}; "))
        .collect();
    let script =
        format!("{traps}trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done # {marker}");
    let mut child = launcher(&["exec", &gzip(), "/bin/sh", "-c", &script]).spawn();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut out, "ready");
    let pid = child.id() as i32;
    for (name, sig) in signals {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(pid, sig) };
        wait_for_line(&mut out, &format!("got-{name}"));
    }
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(9));
    assert!(wait_gone(&marker), "processes left behind");
}

/// The state letter of /proc/PID/stat ('T' stopped, 'S' sleeping, ...).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

/// Polls (up to 20 s) until `pid`'s state satisfies `want`; panics with the last state.
fn wait_state(pid: u32, what: &str, want: impl Fn(char) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = proc_state(pid);
        if want(st) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid}: wanted {what}, state is '{st}'"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// TSTP sent to the launcher stops the command (job control), CONT resumes it.
#[test]
fn tstp_stops_the_command_and_cont_resumes_it() {
    let marker = format!("tstp-marker-{}", std::process::id());
    // No PID namespace: $$ inside is the command's pid on the host.
    let script = format!(
        "trap 'echo got-CONT' CONT; trap 'exit 9' TERM; echo \"ready $$\"; while :; do sleep 0.05; done # {marker}"
    );
    // A job of its own, as a shell starts one: the kernel discards TSTP sent to a process group
    // with no parent in another group of the session (an orphaned group, as when the test
    // run's own group is orphaned), so the test must not depend on how it was started.
    let mut cmd = launcher(&["exec", &gzip(), "/bin/sh", "-c", &script]).command();
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning setpriv");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let cmd_pid: u32 = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected 'ready PID', got '{line}'"));
    assert!(
        std::fs::read_to_string(format!("/proc/{cmd_pid}/cmdline"))
            .unwrap_or_default()
            .contains(&marker),
        "pid {cmd_pid} is not the command"
    );
    let pid = child.id() as i32;
    // SAFETY: sending signals to our own child.
    unsafe { libc::kill(pid, libc::SIGTSTP) };
    wait_state(cmd_pid, "stopped (T)", |s| s == 'T');
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_state(cmd_pid, "running again", |s| s != 'T');
    // Resumed for real: it runs its CONT trap.
    wait_for_line(&mut out, "got-CONT");
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(9));
    assert!(wait_gone(&marker), "processes left behind");
}

#[test]
fn sigkill_of_the_launcher_kills_the_command() {
    let marker = format!("kill9-marker-{}", std::process::id());
    let script = format!("echo ready; exec sleep 1000 # {marker}");
    let mut child = launcher(&["exec", &gzip(), "/bin/sh", "-c", &script]).spawn();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut out, "ready");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_gone(&marker), "the command survived its launcher");
}

#[test]
fn orphans_are_reaped_when_the_command_exits() {
    let marker = format!("orphan-marker-{}", std::process::id());
    let out = launcher(&[
        "exec",
        &gzip(),
        "/bin/sh",
        "-c",
        &format!("sleep 1000 & echo started # {marker}"),
    ])
    .run();
    assert_eq!(out.ok().stdout, "started\n");
    assert!(
        wait_gone(&marker),
        "a background process outlived the launcher"
    );
}

#[test]
fn real_singularityce_sif_runs() {
    let img = fixture("singularityce-busybox-amd64.sif");
    let out = launcher(&[
        "exec",
        &img,
        "/bin/sh",
        "-c",
        "cat /.singularity.d/labels.json | head -c 1; echo; id -u; busybox | head -1",
    ])
    .run();
    let l: Vec<String> = out.ok().stdout.lines().map(str::to_string).collect();
    assert_eq!(l[0], "{");
    assert_eq!(l[1], setup().uid.to_string());
    assert!(l[2].starts_with("BusyBox v1.33.1"), "{l:?}");
    // Its runscript runs our arguments in place of the OCI cmd, as Docker does.
    let out = launcher(&["run", &img, "sh", "-c", "echo from-runscript"]).run();
    assert_eq!(out.ok().stdout, "from-runscript\n");
}

#[test]
fn sif_written_by_image_tools_runs() {
    use image_tools::sif::{write, FsType, ObjectData, ObjectSpec, PartType, WriteOptions};
    let s = setup();
    let sqfs = fixture("busybox-zstd.sqfs");
    let len = std::fs::metadata(&sqfs).unwrap().len();
    let sif = s.scratch.join("written.sif");
    let opts = WriteOptions {
        launch_script: "#!/usr/bin/env run-singularity\n".into(),
        ..Default::default()
    };
    let part = ObjectSpec::partition(
        ObjectData::File {
            path: sqfs.into(),
            len,
        },
        FsType::Squash,
        PartType::PrimSys,
        "amd64",
    );
    write(&sif, &opts, vec![part]).unwrap();
    std::fs::set_permissions(&sif, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let want = std::fs::read_to_string(fixture("big.sha256")).unwrap();
    let out = sh(
        &sif.display().to_string(),
        "sha256sum /data/big | cut -d' ' -f1",
    );
    assert_eq!(out, want);
    let out = launcher(&["inspect", &sif.display().to_string()]).run();
    assert!(
        out.ok().stdout.contains("Squashfs PrimSys amd64"),
        "{out:?}"
    );
    assert!(out.stdout.contains("zstd compression"), "{out:?}");
}

/// What an unprivileged launch could leave behind: its processes, its FUSE connection (a mount
/// kept alive in a namespace some process still holds), files in /tmp. (The host's mount table
/// is out of its reach: it mounts only in its own namespaces.)
#[test]
fn no_process_connection_or_file_left_on_the_host() {
    let marker = format!("no-leak-marker-{}", std::process::id());
    let tmp_before: BTreeSet<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let script =
        format!("ls / >/dev/null; cat /proc/self/mountinfo; echo ready; cat >/dev/null # {marker}");
    let mut child = launcher(&["exec", &gzip(), "/bin/sh", "-c", &script])
        .command()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mountinfo = wait_for_line(&mut reader, "ready").join("\n");
    let conns = fuse_connections(&mountinfo);
    assert_eq!(conns.len(), 1, "the image's FUSE connection: {mountinfo}");
    assert!(
        !pids_matching(&marker).is_empty(),
        "the command is not seen running"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_gone(&marker, "processes left behind");
    assert_fuse_connections_end(&conns, "the launch is over");
    let tmp_after: BTreeSet<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let new: Vec<_> = tmp_after.difference(&tmp_before).collect();
    // Other tests may create files concurrently, but never as the launcher's staging area.
    assert!(
        !new.iter().any(|n| n.to_string_lossy().contains("launcher")),
        "{new:?}"
    );
}

#[test]
fn refuses_to_run_setuid_or_with_file_capabilities() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let copy = s.scratch.join("launcher-privileged");
    std::fs::copy(&s.bin, &copy).unwrap();
    let img = gzip();
    let run = || {
        let out = as_test_user(&copy, None)
            .args(["exec", &img, "/bin/true"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(255));
    assert!(err.contains("installed setuid"), "{err}");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = std::process::Command::new("setcap")
        .arg("cap_sys_admin+ep")
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success(), "setcap failed");
    let (code, err) = run();
    assert_eq!(code, Some(255));
    assert!(err.contains("runs with capabilities"), "{err}");
    std::fs::remove_file(&copy).unwrap();
}

#[test]
fn generated_and_host_etc_files_are_served_without_mounts() {
    let out = sh(
        &gzip(),
        "grep -c \"^$(id -un):\" /etc/passwd; cat /etc/hosts; echo ---; grep -E ' /etc/(passwd|group|hosts) ' /proc/self/mountinfo | wc -l",
    );
    let (head, tail) = out.split_once("---\n").expect("marker");
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("1"), "the caller's passwd line: {out}");
    let hosts: String = lines.map(|l| format!("{l}\n")).collect();
    assert_eq!(hosts, std::fs::read_to_string("/etc/hosts").unwrap());
    assert_eq!(tail.trim(), "0", "no mount for the served files: {out}");
}

/// README: "/etc/group [is] generated from the image's plus the caller's entries". Inside,
/// the image's groups are kept and each of the caller's groups (primary and supplementary,
/// by name) lists the caller as a member.
#[test]
fn etc_group_has_the_images_groups_and_the_callers() {
    let s = setup();
    let users = std::process::Command::new("getent")
        .args(["group", "100"])
        .output()
        .unwrap();
    let users = String::from_utf8_lossy(&users.stdout);
    let users_name = users
        .split(':')
        .next()
        .filter(|n| !n.trim().is_empty())
        .expect("the host has a group with gid 100 (Debian's 'users')")
        .to_string();
    let own = std::process::Command::new("getent")
        .args(["group", &s.gid.to_string()])
        .output()
        .unwrap();
    let own_name = String::from_utf8_lossy(&own.stdout)
        .split(':')
        .next()
        .unwrap()
        .to_string();
    // As the test user with gid 100 as a supplementary group (the harness clears them).
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", s.uid))
        .arg(format!("--regid={}", s.gid))
        .arg("--groups=100")
        .arg(&s.bin)
        .args([
            "exec",
            &gzip(),
            "/bin/sh",
            "-c",
            "cat /etc/group; echo ---; id -gn",
        ])
        .env_clear()
        .env("HOME", &s.home)
        .env("USER", &s.user)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(&s.home)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (group, id) = stdout.split_once("---\n").expect("marker");
    let lines: Vec<&str> = group.lines().collect();
    // The image's own groups (tests/setup.sh), unchanged.
    assert!(lines.contains(&"root:x:0:"), "{group}");
    assert!(lines.contains(&"nogroup:x:65534:"), "{group}");
    let mine = format!("{own_name}:x:{}:{}", s.gid, s.user);
    let supplementary = format!("{users_name}:x:100:{}", s.user);
    assert!(lines.contains(&mine.as_str()), "want '{mine}' in {group}");
    assert!(
        lines.contains(&supplementary.as_str()),
        "want '{supplementary}' in {group}"
    );
    assert_eq!(lines.len(), 4, "no other line: {group}");
    assert_eq!(id.trim(), own_name, "id -gn names the caller's group");
}
