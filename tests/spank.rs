//! The SPANK plugin (slurm/spank): pyxis-style `srun --container-image=IMAGE COMMAND`, each
//! task turned into `launcher exec [options] IMAGE COMMAND` by spank_launcher.so in the task's
//! process. On the two-node test cluster (`start.sh --nodes 2`), as the unprivileged test user.
//!
//! The plugin is built here with the system compiler (slurm/spank/Makefile) and installed on
//! the cluster through its plugstack include directory (start.sh), with the launcher, in a
//! directory of the cluster's state: srun and each step's slurmstepd read plugstack.conf
//! afresh, so no daemon restarts; and the line stays valid after this test process ends (a
//! `required` plugin that is missing would fail every srun of the other tests).

mod common;
use common::slurm::{
    self, assert_nodes_clean, by_node, node_entries, ns_of, one_instance_per_node, serial,
};
use common::*;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The two-node cluster with the plugin installed, once per test process.
fn slurm_conf() -> &'static str {
    static CONF: OnceLock<&'static str> = OnceLock::new();
    CONF.get_or_init(|| {
        let conf = slurm::slurm_conf(2);
        install_plugin();
        conf
    })
}

/// Builds spank_launcher.so and puts it and the launcher in SLURM_DIR/spank, with the
/// plugstack line in SLURM_DIR/etc/plugstack.conf.d. Each file is written under a temporary
/// name and renamed into place: a step daemon may have the old plugin mapped.
fn install_plugin() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let build = setup().scratch.join("spank-build");
    std::fs::create_dir_all(&build).unwrap();
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(repo.join("slurm/spank"))
        .arg(format!("OUT={}", build.display()))
        .output()
        .expect("running make (tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "building the SPANK plugin failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(slurm::slurm_dir()).join("spank");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let place = |from: &Path, name: &str, mode: u32| {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    place(&build.join("spank_launcher.so"), "spank_launcher.so", 0o644);
    place(&setup().bin, "launcher", 0o755);
    let line = format!(
        "required {0}/spank_launcher.so launcher={0}/launcher\n",
        dir.display()
    );
    let tmp = dir.join(format!(".conf.{}", std::process::id()));
    std::fs::write(&tmp, line).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(
        &tmp,
        format!("{}/etc/plugstack.conf.d/launcher.conf", slurm::slurm_dir()),
    )
    .unwrap();
}

/// `srun --overcommit [args...]` as the test user (a minute at most), not started.
fn srun_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut all = vec!["--overcommit"];
    all.extend(args);
    slurm::as_slurm_user(slurm_conf(), "srun", &all, env, 60)
}

fn srun(args: &[&str], env: &[(&str, &str)]) -> Out {
    Out::from(srun_command(args, env).output().expect("spawning srun"))
}

/// A busybox image with its own /etc/os-release, a /work directory and an env script that
/// sets OVERRIDE_ME (built once per test process).
fn image() -> &'static str {
    static IMG: OnceLock<String> = OnceLock::new();
    IMG.get_or_init(|| {
        let t = busybox_tree("spank-tree");
        for a in ["hostname", "readlink", "pwd", "touch", "sleep", "grep"] {
            std::os::unix::fs::symlink("busybox", t.join("bin").join(a)).unwrap();
        }
        std::fs::write(
            t.join("etc/os-release"),
            "ID=launcher-spank-test\nPRETTY_NAME=\"the image's\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(t.join("work/sub")).unwrap();
        std::fs::create_dir_all(t.join(".singularity.d/env")).unwrap();
        std::fs::write(
            t.join(".singularity.d/env/90-environment.sh"),
            "export OVERRIDE_ME=image\n",
        )
        .unwrap();
        let path = setup().scratch.join("spank.sqfs");
        mksquashfs(&t, &path, &["-comp", "gzip"]);
        std::fs::remove_dir_all(&t).unwrap();
        path.display().to_string()
    })
}

fn image_opt() -> String {
    format!("--container-image={}", image())
}

/// The step failed, ran nothing that would make `marker`, and said why in exactly one line of
/// stderr, the one that contains `needle`; that line.
fn failed_in_one_line<'a>(out: &'a Out, marker: &Path, needle: &str) -> &'a str {
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!marker.exists(), "a task ran: {out:?}");
    let named: Vec<&str> = out.stderr.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(named.len(), 1, "one line names {needle}: {out:?}");
    named[0]
}

#[test]
fn srun_container_image_runs_the_task_in_the_image() {
    let _g = serial();
    let out = srun(&["-N", "1", &image_opt(), "cat", "/etc/os-release"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ID=launcher-spank-test"), "{out:?}");
    // The host's (Debian's) is not what the task saw.
    assert!(!out.stdout.contains("debian"), "{out:?}");
    // Without the option, the same srun runs on the host.
    let host = srun(&["-N", "1", "cat", "/etc/os-release"], &[]);
    assert_eq!(host.code, 0, "{host:?}");
    assert!(!host.stdout.contains("launcher-spank-test"), "{host:?}");
}

#[test]
fn tasks_of_a_step_on_a_node_share_one_instance() {
    let _g = serial();
    // Both tasks at once (the sleep), so the second finds the first's instance up.
    let out = srun(
        &[
            "-N",
            "1",
            "-n",
            "2",
            &image_opt(),
            "sh",
            "-c",
            "echo ns=$(readlink /proc/self/ns/user); sleep 1",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let ns: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ns="))
        .collect();
    assert_eq!(ns.len(), 2, "{out:?}");
    assert_eq!(
        ns[0], ns[1],
        "the two tasks are in different user namespaces: {out:?}"
    );
    let host_ns = ns_of(std::process::id(), "user");
    assert_ne!(
        ns[0], host_ns,
        "the tasks ran in the host's user namespace: {out:?}"
    );
}

#[test]
fn container_mounts_bind_host_paths() {
    let _g = serial();
    let s = setup();
    let dir = s.scratch.join("spank-mount");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), "from the host\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mounts = format!(
        "--container-mounts={0}:/mnt/in,{0}:/mnt/ro:ro",
        dir.display()
    );
    let out = srun(
        &[
            "-N",
            "1",
            &image_opt(),
            &mounts,
            "sh",
            "-c",
            "cat /mnt/in/hello; touch /mnt/in/written && echo rw-ok; \
             touch /mnt/ro/no 2>/dev/null || echo ro-refused",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("from the host"), "{out:?}");
    assert!(out.stdout.contains("rw-ok"), "{out:?}");
    assert!(out.stdout.contains("ro-refused"), "{out:?}");
    assert!(dir.join("written").exists());
    assert!(!dir.join("no").exists());

    // A flag the launcher has no meaning for is refused by srun before anything runs.
    let bad = format!("--container-mounts={}:/mnt/x:rslave+bogus", dir.display());
    let out = srun(&["-N", "1", &image_opt(), &bad, "true"], &[]);
    assert_ne!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("--container-mounts"))
        .collect();
    assert!(lines.iter().any(|l| l.contains("unknown flag")), "{out:?}");
}

#[test]
fn container_workdir_env_and_home() {
    let _g = serial();
    // The home directory is bound unless --no-container-mount-home.
    let probe = setup().home.join("spank-home-probe");
    std::fs::write(&probe, "home\n").unwrap();
    let look = "test -e $HOME/spank-home-probe && echo home-bound || echo home-not-bound";
    let out = srun(&["-N", "1", &image_opt(), "sh", "-c", look], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("home-bound"), "{out:?}");
    let out = srun(
        &[
            "-N",
            "1",
            &image_opt(),
            "--no-container-mount-home",
            "sh",
            "-c",
            look,
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("home-not-bound"), "{out:?}");
    std::fs::remove_file(&probe).unwrap();

    let out = srun(
        &[
            "-N",
            "1",
            &image_opt(),
            "--container-workdir=/work/sub",
            "sh",
            "-c",
            "echo pwd=$(pwd) over=$OVERRIDE_ME",
        ],
        &[("OVERRIDE_ME", "host")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    // The image's environment wins over the host's unless --container-env names the variable
    // (pyxis's rule).
    assert!(out.stdout.contains("pwd=/work/sub over=image"), "{out:?}");
    let out = srun(
        &[
            "-N",
            "1",
            &image_opt(),
            "--container-env=OVERRIDE_ME,NOT_SET_ANYWHERE",
            "sh",
            "-c",
            "echo over=$OVERRIDE_ME",
        ],
        &[("OVERRIDE_ME", "host")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("over=host"), "{out:?}");
}

#[test]
fn a_missing_image_fails_the_step_in_one_line_and_runs_nothing_on_the_host() {
    let _g = serial();
    let s = setup();
    let missing = s.scratch.join("no-such-image.sqfs");
    let marker = s.scratch.join("spank-ran-on-host");
    let out = srun(
        &[
            "-N",
            "1",
            &format!("--container-image={}", missing.display()),
            "touch",
            &marker.display().to_string(),
        ],
        &[],
    );
    let line = failed_in_one_line(&out, &marker, &missing.display().to_string());
    assert!(line.contains("launcher: error"), "{out:?}");

    // sbatch and salloc do not take the options (srun lines in the script do).
    let out = Out::from(
        slurm::as_slurm_user(
            slurm_conf(),
            "sbatch",
            &[&image_opt(), "--wrap", "true"],
            &[],
            60,
        )
        .output()
        .expect("spawning sbatch"),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("container-image"), "{out:?}");
}

/// Puts the plugstack line back as `install_plugin` wrote it, also when the test fails.
struct RestoreConf(String);

impl Drop for RestoreConf {
    fn drop(&mut self) {
        let conf = format!("{}/etc/plugstack.conf.d/launcher.conf", slurm::slurm_dir());
        let tmp = format!("{conf}.restore");
        if std::fs::write(&tmp, &self.0).is_ok() {
            let _ = std::fs::rename(&tmp, &conf);
        }
    }
}

#[test]
fn a_launcher_that_cannot_start_fails_the_task_and_runs_nothing_on_the_host() {
    let _g = serial();
    slurm_conf();
    let conf = format!("{}/etc/plugstack.conf.d/launcher.conf", slurm::slurm_dir());
    let line = std::fs::read_to_string(&conf).unwrap();
    let _restore = RestoreConf(line.clone());
    let broken: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            if w.starts_with("launcher=") {
                "launcher=/nonexistent/launcher".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let tmp = format!("{conf}.broken");
    std::fs::write(&tmp, format!("{}\n", broken.join(" "))).unwrap();
    std::fs::rename(&tmp, &conf).unwrap();
    let marker = setup().scratch.join("spank-no-launcher-ran-on-host");
    let out = srun(
        &[
            "-N",
            "1",
            &image_opt(),
            "touch",
            &marker.display().to_string(),
        ],
        &[],
    );
    let line = failed_in_one_line(&out, &marker, "/nonexistent/launcher");
    assert!(
        line.contains("launcher-spank: cannot start the launcher"),
        "{out:?}"
    );
}

/// `srun --multi-prog FILE` with `--container-image`: slurmstepd picks each task's command from
/// FILE after the plugin's hook, so the plugin cannot run it in the image. srun refuses it in
/// one line before any task starts; the same file without the option runs on the host, and a
/// plain step with two arguments is not mistaken for it.
#[test]
fn multi_prog_with_container_image_is_refused_in_one_line() {
    let _g = serial();
    let s = setup();
    let marker = s.scratch.join("spank-multi-prog-ran");
    let file = s.scratch.join("spank-multi-prog.conf");
    std::fs::write(&file, format!("0-1 touch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = file.display().to_string();
    let out = srun(
        &["-N", "1", "-n", "2", &image_opt(), "--multi-prog", &name],
        &[],
    );
    let line = failed_in_one_line(&out, &marker, "--multi-prog");
    assert!(
        line.contains("launcher-spank: --container-image cannot be used with --multi-prog"),
        "{out:?}"
    );

    // Without the option the plugin does nothing to it: the file runs on the host.
    let out = srun(&["-N", "1", "-n", "2", "--multi-prog", &name], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(marker.exists(), "{out:?}");
    std::fs::remove_file(&marker).unwrap();

    // Two arguments that are not a file and its text run in the image as usual.
    let out = srun(&["-N", "1", &image_opt(), "echo", &name], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), name, "{out:?}");
}

#[test]
fn srun_over_two_nodes_runs_in_the_image_on_both() {
    let _g = serial();
    let out = srun(
        &[
            "-N",
            "2",
            "-n",
            "2",
            &image_opt(),
            "sh",
            "-c",
            "echo node=$(hostname) $(grep ^ID= /etc/os-release)",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let nodes: BTreeSet<&str> = out
        .stdout
        .lines()
        .filter(|l| l.ends_with("ID=launcher-spank-test"))
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix("node="))
        .collect();
    assert_eq!(nodes, BTreeSet::from(["node1", "node2"]), "{out:?}");
}

#[test]
fn scancel_leaves_nothing_on_either_node() {
    let _g = serial();
    let s = setup();
    let before = node_entries(s.uid);
    let job_name = format!("launcher-spank-scancel-{}", std::process::id());
    let mut srun_child = srun_command(
        &[
            "-J",
            &job_name,
            "-N",
            "2",
            "-n",
            "4",
            &image_opt(),
            "sleep",
            "3434",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawning srun");
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleeps = loop {
        let sleeps: Vec<u32> = pids_matching("sleep 3434")
            .into_iter()
            .filter(|p| slurm::cmdline(*p) == "sleep 3434")
            .collect();
        if sleeps.len() == 4 {
            break sleeps;
        }
        if let Ok(Some(st)) = srun_child.try_wait() {
            panic!("srun ended ({st}) before its four sleeps started");
        }
        assert!(
            Instant::now() < deadline,
            "the job's four sleeps never started: {sleeps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Two tasks per node, one instance (user namespace, FUSE connection) per node.
    let conns = one_instance_per_node(&by_node(&sleeps, 2));

    let out = Out::from(
        slurm::as_slurm_user(slurm_conf(), "scancel", &["-n", &job_name], &[], 30)
            .output()
            .expect("spawning scancel"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let done = srun_child.wait_with_output().expect("waiting for srun");
    let srun_err = String::from_utf8_lossy(&done.stderr);
    assert!(srun_err.contains("CANCELLED"), "srun said: {srun_err}");
    assert_gone("sleep 3434", "left running after scancel");
    assert_fuse_connections_end(&conns, "scancel of the container step");
    assert_nodes_clean(&before);
}
