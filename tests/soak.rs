//! End-to-end leak checks, a reduced form of benches/soak.sh (which runs 1,000 sequential
//! and 64 concurrent launches and measures the FUSE server's memory): many launches as the
//! test user leave no process, FUSE connection or temporary file, the launcher's descriptors do
//! not grow, and SIGKILL of the launcher at any moment of start-up leaves nothing.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const SEQUENTIAL: usize = 100;
const CONCURRENT: usize = 16;

fn names(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The launcher's own descriptors, counted by the command (its parent is the launcher).
const COUNT_FDS: &str = "ls /proc/$PPID/fd | wc -l";

/// One test function: the checks compare global state before and after, which other
/// launches of this binary running at the same time would disturb.
#[test]
fn many_launches_leave_nothing_behind() {
    let s = setup();
    let marker = format!("soak-marker-{}", std::process::id());
    let img = s.scratch.join(format!("{marker}.sqfs"));
    std::os::unix::fs::symlink(fixture("busybox-gzip.sqfs"), &img).unwrap();
    let img = img.display().to_string();
    let tmp: Vec<BTreeSet<String>> = ["/tmp", "/var/tmp", "/dev/shm"].map(names).to_vec();

    let mut fds = BTreeSet::new();
    for _ in 0..SEQUENTIAL {
        let out = launcher(&["exec", &img, "/bin/sh", "-c", COUNT_FDS]).run();
        fds.insert(out.ok().stdout.trim().to_string());
    }
    assert_eq!(fds.len(), 1, "the launcher's descriptors vary: {fds:?}");

    // The FUSE connections of launches whose command ran (read from the command's mount
    // table while it runs): each must end. The host's mount table would say nothing: an
    // unprivileged launch mounts only in its own namespaces.
    let mut conns = Vec::new();
    let mut children: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            launcher(&[
                "exec",
                &img,
                "/bin/sh",
                "-c",
                "cat /data/tree/f* >/dev/null && cat /proc/self/mountinfo && echo ok && cat >/dev/null",
            ])
            .command()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    // All run at once: each waits for its input to end.
    for c in &mut children {
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mountinfo = wait_for_line(&mut out, "ok").join("\n");
        let mine = fuse_connections(&mountinfo);
        assert_eq!(mine.len(), 1, "{mountinfo}");
        conns.extend(mine);
    }
    for mut c in children {
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success());
    }

    // SIGKILL of the launcher at every stage of start-up (densely over the first 40 ms,
    // when the child assembles the root through FUSE) and while the command runs.
    for delay_ms in (0..40).step_by(2).chain([60, 80, 150, 300]) {
        let mut child = launcher(&[
            "exec",
            &img,
            "/bin/sh",
            "-c",
            &format!("sleep 1000 # {marker}"),
        ])
        .spawn();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // The launcher is setpriv's exec'd image: the same pid.
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // SIGTERM, then SIGKILL, while the command (ignoring TERM) lists and reads small files,
    // which the launcher pushes into the page cache: the TERM ends those pushes, so the KILL
    // finds no store waiting on a READ (launcher/src/push.rs).
    for delay_ms in [5, 20, 50, 100, 200] {
        let script = format!(
            "trap '' TERM; cat /proc/self/mountinfo; echo listing; while :; do ls -lR /data >/dev/null; cat /data/tree/f* >/dev/null; done # {marker}"
        );
        let mut child = launcher(&["exec", &img, "/bin/sh", "-c", &script]).spawn();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        conns.extend(fuse_connections(
            &wait_for_line(&mut out, "listing").join("\n"),
        ));
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // A process stuck in the kernel may not show its command line: look for our copy of
    // the launcher as the executable too.
    assert!(
        wait_no_exe(&s.bin),
        "launcher processes left behind (stuck in the kernel?)"
    );
    assert_gone(&marker, "processes left behind");
    assert_fuse_connections_end(&conns, "launches are over");
    for (dir, before) in ["/tmp", "/var/tmp", "/dev/shm"].iter().zip(&tmp) {
        let new: Vec<String> = names(dir)
            .difference(before)
            // Other test processes' scratch and fixture directories, `launcher build`'s
            // staging and fuzz/run.sh's scratch (other suites on the machine) may appear
            // meanwhile; `exec` makes none but the block cache (docs/slurm.md).
            .filter(|n| {
                n.contains(&marker)
                    || (n.contains("launcher")
                        && ![
                            "launcher-e2e-",
                            "launcher-fixtures",
                            "launcher-bench",
                            "launcher-build-",
                            "launcher-fuzz-",
                        ]
                        .iter()
                        .any(|p| n.starts_with(p))
                        && !common::slurm::is_only_the_block_cache(&Path::new(dir).join(n)))
            })
            .cloned()
            .collect();
        assert!(new.is_empty(), "left in {dir}: {new:?}");
    }
}

/// Waits until no process runs the executable `bin`.
fn wait_no_exe(bin: &std::path::Path) -> bool {
    let bin = bin.display().to_string();
    for _ in 0..200 {
        let any = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_link(e.path().join("exe"))
                .map(|x| x.display().to_string().starts_with(&bin))
                .unwrap_or(false)
        });
        if !any {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
