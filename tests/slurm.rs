//! End-to-end under a real Slurm (slurm/test-cluster: Debian's slurm-wlm + munge on this
//! machine) and real MPI (Debian's Open MPI and MPICH, in images built by tests/setup-mpi.sh):
//! `srun`, `sbatch`, `scancel` and host `mpirun` as the unprivileged test user, each task a
//! `launcher exec`.
//!
//! Until ranks share one user namespace per node, each rank has its own, and single-copy
//! transfers between ranks (CMA, process_vm_readv; UCX's /proc/PID/fd links) are refused by the
//! kernel: the MPI runs here turn them off (`mpi_env`), as docs/slurm.md tells users to.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The test cluster's slurm.conf, started once per test process.
fn slurm_conf() -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        setup();
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(repo.join("slurm/test-cluster/start.sh"))
            .output()
            .expect("running slurm/test-cluster/start.sh");
        assert!(
            out.status.success(),
            "slurm/test-cluster/start.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::env::var("LAUNCHER_SLURM_DIR")
            .unwrap_or_else(|_| "/var/tmp/launcher-slurm".into());
        format!("{dir}/etc/slurm.conf")
    })
}

/// One job at a time: the node has few CPUs, and the leftover checks look at the whole node.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn mpi_fixture(name: &str) -> String {
    let dir = std::env::var("LAUNCHER_MPI_FIXTURES")
        .unwrap_or_else(|_| format!("{}-mpi", setup().fixtures.display()));
    format!("{dir}/{name}")
}

/// Turn off single-copy mechanisms that fail between user namespaces (see the module doc).
fn mpi_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
        ("UCX_POSIX_USE_PROC_LINK", "n"),
        ("UCX_TLS", "^cma"),
    ]
}

/// A command run as the test user, with the test cluster's SLURM_CONF, in the scratch dir.
fn as_user(program: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let s = setup();
    let mut c = Command::new("timeout");
    c.args(["-k", "10", "180", "setpriv"])
        .arg(format!("--reuid={}", s.uid))
        .arg(format!("--regid={}", s.gid))
        .arg("--clear-groups")
        .arg(program)
        .args(args)
        .env_clear()
        .env("HOME", &s.home)
        .env("USER", &s.user)
        .env("LOGNAME", &s.user)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SLURM_CONF", slurm_conf())
        .current_dir(&s.scratch)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = as_user(program, args, env)
        .output()
        .expect("spawning setpriv");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `srun [srun_args] launcher exec IMAGE cmd...`
fn srun(srun_args: &[&str], image: &str, cmd: &[&str], env: &[(&str, &str)]) -> Out {
    srun_with(srun_args, &[], image, cmd, env)
}

/// `srun [srun_args] launcher exec [launcher_opts] IMAGE cmd...`
fn srun_with(
    srun_args: &[&str],
    launcher_opts: &[&str],
    image: &str,
    cmd: &[&str],
    env: &[(&str, &str)],
) -> Out {
    let bin = setup().bin.display().to_string();
    let mut args: Vec<&str> = srun_args.to_vec();
    args.extend(["--overcommit", &bin, "exec"]);
    args.extend(launcher_opts);
    args.push(image);
    args.extend(cmd);
    run("srun", &args, env)
}

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Check `hello` output: ranks 0..n, each with the caller's uid, and rank 0's verdict.
fn check_hello(out: &Out, n: usize) {
    assert_eq!(out.code, 0, "{out:?}");
    let uid = setup().uid;
    let ranks: BTreeSet<String> = lines_with(&out.stdout, "hello rank=")
        .iter()
        .map(|l| {
            assert!(l.contains(&format!(" size={n} ")), "{l}: {out:?}");
            assert!(l.contains(&format!(" uid={uid} ")), "{l}: {out:?}");
            l.split_whitespace().nth(1).unwrap().to_string()
        })
        .collect();
    let want: BTreeSet<String> = (0..n).map(|r| format!("rank={r}")).collect();
    assert_eq!(ranks, want, "{out:?}");
    assert!(
        out.stdout.contains(&format!("hello ok size={n}")),
        "{out:?}"
    );
}

#[test]
fn srun_runs_each_task_in_the_container_with_the_slurm_environment() {
    let _g = serial();
    let s = setup();
    let out = srun(
        &["-n", "2"],
        &fixture("busybox-gzip.sqfs"),
        &[
            "/bin/sh",
            "-c",
            "echo task=$SLURM_PROCID of=$SLURM_NTASKS uid=$(id -u) job=${SLURM_JOB_ID:+yes} container=${LAUNCHER_CONTAINER:+yes}",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let mut got: Vec<&str> = lines_with(&out.stdout, "task=");
    got.sort();
    let want: Vec<String> = (0..2)
        .map(|t| format!("task={t} of=2 uid={} job=yes container=yes", s.uid))
        .collect();
    assert_eq!(got, want, "{out:?}");
}

#[test]
fn exit_codes_pass_through_srun() {
    let _g = serial();
    let img = fixture("busybox-gzip.sqfs");
    let out = srun(&["-n", "1"], &img, &["/bin/sh", "-c", "exit 7"], &[]);
    assert_eq!(out.code, 7, "{out:?}");
    // A launcher error (here: no such image) is 255, and says what is wrong.
    let out = srun(&["-n", "1"], "/nonexistent/image.sqfs", &["true"], &[]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/image.sqfs"), "{out:?}");
}

#[test]
fn open_mpi_image_under_srun_pmix() {
    let _g = serial();
    let img = mpi_fixture("openmpi.sqfs");
    let env = mpi_env();
    check_hello(
        &srun(
            &["--mpi=pmix", "-n", "2"],
            &img,
            &["hello", "--check-size", "2"],
            &env,
        ),
        2,
    );
    // --contain: a minimal /dev (with the host's /dev/shm) and a private /tmp.
    check_hello(
        &srun_with(
            &["--mpi=pmix", "-n", "2"],
            &["--contain"],
            &img,
            &["hello", "--check-size", "2"],
            &env,
        ),
        2,
    );
    let out = srun(&["--mpi=pmix", "-n", "2"], &img, &["allreduce"], &env);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("allreduce size=2 sum=3 ok"), "{out:?}");
    // The PMIx server's directory (under slurmd's spool, which no default bind covers) is
    // bound at its own path.
    let out = srun(
        &["--mpi=pmix", "-n", "1"],
        &img,
        &["/bin/sh", "-c", "ls \"$PMIX_SERVER_TMPDIR\""],
        &env,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("pmix_dstor"), "{out:?}");
}

#[test]
fn open_mpi_image_under_host_mpirun() {
    let _g = serial();
    let bin = setup().bin.display().to_string();
    let img = mpi_fixture("openmpi.sqfs");
    let out = run(
        "mpirun.openmpi",
        &[
            "-np",
            "2",
            "--oversubscribe",
            &bin,
            "exec",
            &img,
            "hello",
            "--check-size",
            "2",
        ],
        &mpi_env(),
    );
    check_hello(&out, 2);
}

#[test]
fn mpich_image_under_host_mpiexec() {
    let _g = serial();
    let bin = setup().bin.display().to_string();
    let img = mpi_fixture("mpich.sqfs");
    // Hydra (MPICH's mpiexec) wires the ranks up over PMI-1 (PMI_FD / PMI_PORT).
    let out = run(
        "mpiexec.mpich",
        &["-n", "2", &bin, "exec", &img, "hello", "--check-size", "2"],
        &mpi_env(),
    );
    check_hello(&out, 2);
}

#[test]
fn mpich_image_under_srun_pmi2() {
    let _g = serial();
    let img = mpi_fixture("mpich.sqfs");
    // pmi2 hands each task an inherited descriptor (PMI_FD): the launcher must keep it open.
    check_hello(
        &srun(
            &["--mpi=pmi2", "-n", "2"],
            &img,
            &["hello", "--check-size", "2"],
            &mpi_env(),
        ),
        2,
    );
}

#[test]
fn a_wrong_pmi_is_caught_by_the_world_size_check() {
    let _g = serial();
    // MPICH does not speak pmix: each task starts alone as "rank 0 of 1". hello must fail.
    let out = srun(
        &["--mpi=pmix", "-n", "2"],
        &mpi_fixture("mpich.sqfs"),
        &["hello", "--check-size", "2"],
        &mpi_env(),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("world size 1, expected 2"), "{out:?}");
}

#[test]
fn ping_pong_small_messages_in_both_images() {
    let _g = serial();
    for (mpi, img) in [("--mpi=pmix", "openmpi.sqfs"), ("--mpi=pmi2", "mpich.sqfs")] {
        let out = srun(
            &[mpi, "-n", "2"],
            &mpi_fixture(img),
            &["pingpong", "--max", "65536", "--iters", "50"],
            &mpi_env(),
        );
        assert_eq!(out.code, 0, "{img}: {out:?}");
        let sizes: Vec<u64> = lines_with(&out.stdout, "pingpong bytes=")
            .iter()
            .map(|l| {
                l["pingpong bytes=".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let want: Vec<u64> = (0..=16).map(|i| 1 << i).collect();
        assert_eq!(sizes, want, "{img}: {out:?}");
    }
}

#[test]
fn sbatch_job_script_writes_its_output_file() {
    let _g = serial();
    let s = setup();
    let script = s.scratch.join("job.sbatch");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n#SBATCH -n 2 -O -J launcher-sbatch-test\n#SBATCH -o {}/job-%j.out\n\
             export OMPI_MCA_btl_vader_single_copy_mechanism=none\n\
             srun --mpi=pmix {} exec {} hello --check-size 2\n\
             echo job-exit=$?\n",
            s.scratch.display(),
            s.bin.display(),
            mpi_fixture("openmpi.sqfs")
        ),
    )
    .unwrap();
    let out = run(
        "sbatch",
        &["--wait", "--parsable", script.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let job = out.stdout.trim().split(';').next().unwrap().to_string();
    let path = s.scratch.join(format!("job-{job}.out"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; sbatch said {out:?}", path.display()));
    assert!(text.contains("hello ok size=2"), "{text}");
    assert!(text.contains("job-exit=0"), "{text}");
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), s.uid);
}

/// Entries of `dirs` owned by `uid`.
fn owned_entries(dirs: &[&str], uid: u32) -> BTreeSet<PathBuf> {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn scancel_terms_the_command_and_leaves_nothing_behind() {
    let _g = serial();
    let s = setup();
    let scratch_dirs = ["/tmp", "/var/tmp", "/dev/shm"];
    let before = owned_entries(&scratch_dirs, s.uid);
    let mounts_before = host_mounts();
    let marker = s.scratch.join("scancel-term");
    let bin = s.bin.display().to_string();
    let img = fixture("busybox-gzip.sqfs");
    // A unique sleep length names this test's processes.
    let script = format!(
        "trap 'echo got-term > {}; exit 0' TERM; sleep 3131 & wait",
        marker.display()
    );
    let srun_child = as_user(
        "srun",
        &[
            "-J",
            "launcher-scancel-test",
            "-n",
            "1",
            &bin,
            "exec",
            &img,
            "/bin/sh",
            "-c",
            &script,
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawning srun");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pids_matching("sleep 3131")
        .iter()
        .any(|p| cmdline(*p) == "sleep 3131")
    {
        assert!(Instant::now() < deadline, "the job's sleep never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run("scancel", &["--name=launcher-scancel-test"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let done = srun_child.wait_with_output().unwrap();
    let srun_err = String::from_utf8_lossy(&done.stderr);
    assert!(srun_err.contains("CANCELLED"), "srun said: {srun_err}");
    // Every process of the step is gone (launcher, sh, sleep), within KillWait.
    assert!(
        wait_gone("sleep 3131"),
        "left running: {:?}",
        pids_matching("sleep 3131")
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default().trim(),
        "got-term",
        "the command did not get SIGTERM"
    );
    // Nothing left on the node: no new mount in the host's namespace, no new file of the user
    // in the scratch directories.
    assert_eq!(host_mounts().lines().count(), mounts_before.lines().count());
    assert!(!host_mounts().contains("fuse.launcher"));
    let new: Vec<PathBuf> = owned_entries(&scratch_dirs, s.uid)
        .difference(&before)
        .filter(|p| !p.starts_with(&s.scratch) && !is_other_test_scratch(p))
        .cloned()
        .collect();
    assert!(new.is_empty(), "left behind: {new:?}");
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Scratch directories of other test processes (their files are theirs).
fn is_other_test_scratch(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().starts_with("launcher-e2e-"))
        .unwrap_or(false)
}

#[test]
fn a_time_limit_terms_the_command() {
    // Not serialised: it only sleeps, for about a minute (Slurm rounds limits up to a minute
    // and checks them periodically), and leaves nothing the other tests look at.
    let img = fixture("busybox-gzip.sqfs");
    let out = srun(
        &["-n", "1", "-t", "0:05"],
        &img,
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; sleep 4242 & wait",
        ],
        &[],
    );
    assert!(out.stdout.contains("got-term"), "{out:?}");
    assert!(out.stderr.contains("TIME LIMIT"), "{out:?}");
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        wait_gone("sleep 4242"),
        "left running: {:?}",
        pids_matching("sleep 4242")
    );
}
