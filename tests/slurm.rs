//! End-to-end under a real Slurm (slurm/test-cluster: Debian's slurm-wlm + munge on this
//! machine) and real MPI (Debian's Open MPI and MPICH, in images built by tests/setup-mpi.sh):
//! `srun`, `sbatch`, `scancel` and host `mpirun` as the unprivileged test user, each task a
//! `launcher exec`.
//!
//! The ranks of a step on the node share one instance (launcher/src/apply/share.rs): one user
//! namespace and one FUSE server. The tests check both, and run MPI with its defaults, so the
//! single-copy transfers between ranks (Open MPI's CMA, UCX's cma and /proc/PID/fd links), which
//! the kernel refuses across user namespaces, are on. One test shows that `--no-share` (a
//! namespace per rank) still works when they are turned off (`no_share_env`).

mod common;
use common::slurm::{self, cmdline, is_other_test_scratch, mpi_fixture, owned_entries, serial};
use common::*;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The test cluster (one node), started once per test process.
fn slurm_conf() -> &'static str {
    slurm::slurm_conf(1)
}

/// Turn off the single-copy mechanisms that fail between user namespaces: what ranks with
/// `--no-share` need (see the module doc).
fn no_share_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
        ("UCX_POSIX_USE_PROC_LINK", "n"),
        ("UCX_TLS", "^cma"),
    ]
}

/// A command run as the test user, with the test cluster's SLURM_CONF, in the scratch dir.
fn as_user(program: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    slurm::as_slurm_user(slurm_conf(), program, args, env, 180)
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    Out::from(
        as_user(program, args, env)
            .output()
            .expect("spawning setpriv"),
    )
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
    Out::from(
        srun_command(srun_args, launcher_opts, image, cmd, env)
            .output()
            .expect("spawning setpriv"),
    )
}

/// The command line of `srun_with`, not started.
fn srun_command(
    srun_args: &[&str],
    launcher_opts: &[&str],
    image: &str,
    cmd: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let bin = setup().bin.display().to_string();
    let mut args: Vec<&str> = srun_args.to_vec();
    args.push("--overcommit");
    args.extend(host_launch_args(&bin, launcher_opts, image, cmd));
    as_user("srun", &args, env)
}

/// `PROGRAM [starter_args] launcher exec IMAGE cmd...` for the host's mpirun.openmpi or
/// mpiexec.mpich, not started.
fn host_starter(program: &str, starter_args: &[&str], image: &str, cmd: &[&str]) -> Command {
    let bin = setup().bin.display().to_string();
    let mut args: Vec<&str> = starter_args.to_vec();
    args.extend(host_launch_args(&bin, &[], image, cmd));
    as_user(program, &args, &[])
}

fn host_launch_args<'a>(
    bin: &'a str,
    launcher_opts: &[&'a str],
    image: &'a str,
    cmd: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![bin, "exec"];
    args.extend(launcher_opts);
    args.push(image);
    args.extend(cmd);
    args
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

/// The user namespaces the ranks' `hello` printed (`ns=INODE`), as /proc/PID/ns/user names
/// them (`user:[INODE]`).
fn hello_namespaces(out: &Out) -> BTreeSet<String> {
    lines_with(&out.stdout, "hello rank=")
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ns=")))
        .map(|ns| format!("user:[{ns}]"))
        .collect()
}

/// `hello`, then a second for the FUSE servers to be seen while the step runs.
const HELLO_AND_WAIT: &str = "hello --check-size 2 && sleep 1";

/// Samples of the test user's FUSE servers: (user namespace, pid, command line).
type Samples = Vec<Vec<(String, u32, String)>>;

/// Run `cmd` (ranks running `HELLO_AND_WAIT`) to its end, sampling the test user's FUSE
/// servers every 50 ms once rank 0 has said `hello ok`: then every rank is past MPI_Init and
/// runs its command. (Before that, a launcher's children hold the /dev/fuse descriptor they
/// inherited, for the moment between fork and exec.)
fn run_watching_servers(mut cmd: Command) -> (Out, Samples) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning setpriv");
    let said_ok = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stdout = child.stdout.take().expect("piped stdout");
    let stdout = std::thread::spawn({
        let said_ok = said_ok.clone();
        move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("hello ok") {
                    said_ok.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        }
    });
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let mut samples = Vec::new();
    while !waiter.is_finished() {
        if said_ok.load(std::sync::atomic::Ordering::SeqCst) {
            samples.push(
                fuse_servers()
                    .into_iter()
                    .map(|(ns, pid)| (ns, pid, cmdline(pid)))
                    .collect(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Out::from(
        waiter
            .join()
            .expect("the waiting thread")
            .expect("waiting for setpriv"),
    );
    out.stdout = stdout.join().expect("the stdout thread");
    (out, samples)
}

/// Check that each of the user namespaces `namespaces` had one FUSE server serving `image`
/// while the ranks ran, the same one throughout, and never two at once. (Namespace inodes are reused
/// once freed, so a later launch of another test may show up under the same name: the image
/// and "at once" tell them apart.)
fn check_one_server_per_namespace(namespaces: &BTreeSet<String>, image: &str, samples: &Samples) {
    assert!(!samples.is_empty(), "the step ended before it was sampled");
    for ns in namespaces {
        let pids: BTreeSet<u32> = samples
            .iter()
            .flatten()
            .filter(|(n, _, cmd)| n == ns && cmd.contains(image))
            .map(|(_, pid, _)| *pid)
            .collect();
        assert_eq!(
            pids.len(),
            1,
            "FUSE servers of {image} in {ns}: {pids:?} (samples: {samples:?})"
        );
        let at_once = samples
            .iter()
            .map(|s| s.iter().filter(|(n, _, _)| n == ns).count())
            .max()
            .unwrap_or(0);
        assert_eq!(at_once, 1, "FUSE servers at once in {ns}: {samples:?}");
    }
}

/// `hello` of a shared step: every rank in one user namespace, with one FUSE server in it.
fn check_shared_hello(out: &Out, samples: &Samples, image: &str) {
    check_hello(out, 2);
    let ns = hello_namespaces(out);
    assert_eq!(ns.len(), 1, "ranks in different user namespaces: {out:?}");
    check_one_server_per_namespace(&ns, image, samples);
}

/// Ping-pong output: every size from 1 B to `max`, and no word from Open MPI that CMA single
/// copy was turned off.
fn check_pingpong(out: &Out, max: u64, what: &str) {
    assert_eq!(out.code, 0, "{what}: {out:?}");
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
    let want: Vec<u64> = (0..=max.trailing_zeros()).map(|i| 1 << i).collect();
    assert_eq!(sizes, want, "{what}: {out:?}");
    assert!(
        !out.stderr.contains("single_copy_mechanism CMA is"),
        "{what}: CMA was not available: {out:?}"
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
            "echo task=$SLURM_PROCID of=$SLURM_NTASKS uid=$(id -u) job=${SLURM_JOB_ID:+yes} container=${LAUNCHER_CONTAINER:+yes} $(readlink /proc/self/ns/user)",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let mut got: Vec<&str> = lines_with(&out.stdout, "task=");
    got.sort();
    let namespaces: BTreeSet<&str> = got
        .iter()
        .filter_map(|l| l.rsplit_once(' ').map(|(_, ns)| ns))
        .collect();
    let got: Vec<&str> = got
        .iter()
        .filter_map(|l| l.rsplit_once(' ').map(|(l, _)| l))
        .collect();
    let want: Vec<String> = (0..2)
        .map(|t| format!("task={t} of=2 uid={} job=yes container=yes", s.uid))
        .collect();
    assert_eq!(got, want, "{out:?}");
    // Tasks of one step share the node's instance.
    assert_eq!(namespaces.len(), 1, "{out:?}");
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
    let hello = ["/bin/sh", "-c", HELLO_AND_WAIT];
    let (out, samples) = run_watching_servers(srun_command(
        &["--mpi=pmix", "-n", "2"],
        &[],
        &img,
        &hello,
        &[],
    ));
    check_shared_hello(&out, &samples, &img);
    // --contain: a minimal /dev (with the host's /dev/shm) and a private /tmp.
    let (out, samples) = run_watching_servers(srun_command(
        &["--mpi=pmix", "-n", "2"],
        &["--contain"],
        &img,
        &hello,
        &[],
    ));
    check_shared_hello(&out, &samples, &img);
    let out = srun(&["--mpi=pmix", "-n", "2"], &img, &["allreduce"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("allreduce size=2 sum=3 ok"), "{out:?}");
    // The PMIx server's directory (under slurmd's spool, which no default bind covers) is
    // bound at its own path.
    let out = srun(
        &["--mpi=pmix", "-n", "1"],
        &img,
        &["/bin/sh", "-c", "ls \"$PMIX_SERVER_TMPDIR\""],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("pmix_dstor"), "{out:?}");
}

/// README: `srun launcher exec --mpi image.sif ./solver`. Under srun --mpi=pmix, each rank's
/// launcher binds the host's Debian Open MPI (found through the host's own ld.so.cache, no site
/// config) over the image's: both ranks load libmpi.so.40 from /.launcher.d/libs, wire up
/// over Slurm's PMIx, and share one instance.
#[test]
fn srun_with_the_host_open_mpi_bound_into_the_open_mpi_image() {
    let _g = serial();
    let img = mpi_fixture("openmpi.sqfs");
    let script =
        "LD_DEBUG=libs hello --check-size 2 2>&1 | grep -E 'calling init: .*/libmpi\\.so\\.40$|^hello'";
    let out = srun_with(
        &["--mpi=pmix", "-n", "2"],
        &["--mpi"],
        &img,
        &["/bin/sh", "-c", script],
        &[("LAUNCHER_CONFIG", "")],
    );
    check_hello(&out, 2);
    let inits: Vec<&str> = lines_with(&out.stdout, "")
        .into_iter()
        .filter(|l| l.contains("calling init:"))
        .collect();
    assert_eq!(inits.len(), 2, "one libmpi per rank: {out:?}");
    assert!(
        inits
            .iter()
            .all(|l| l.ends_with("calling init: /.launcher.d/libs/libmpi.so.40")),
        "both ranks load the host's Open MPI: {out:?}"
    );
    assert_eq!(hello_namespaces(&out).len(), 1, "one instance: {out:?}");
}

#[test]
fn open_mpi_image_under_host_mpirun() {
    let _g = serial();
    let img = mpi_fixture("openmpi.sqfs");
    let (out, samples) = run_watching_servers(host_starter(
        "mpirun.openmpi",
        &["-np", "2", "--oversubscribe"],
        &img,
        &["/bin/sh", "-c", HELLO_AND_WAIT],
    ));
    check_shared_hello(&out, &samples, &img);
}

#[test]
fn mpich_image_under_host_mpiexec() {
    let _g = serial();
    let img = mpi_fixture("mpich.sqfs");
    // Hydra (MPICH's mpiexec) wires the ranks up over PMI-1 (PMI_FD / PMI_PORT); its ranks
    // share by their parent, the node's proxy.
    let (out, samples) = run_watching_servers(host_starter(
        "mpiexec.mpich",
        &["-n", "2"],
        &img,
        &["/bin/sh", "-c", HELLO_AND_WAIT],
    ));
    check_shared_hello(&out, &samples, &img);
}

#[test]
fn mpich_image_under_srun_pmi2() {
    let _g = serial();
    let img = mpi_fixture("mpich.sqfs");
    // pmi2 hands each task an inherited descriptor (PMI_FD): the launcher must keep it open.
    let (out, samples) = run_watching_servers(srun_command(
        &["--mpi=pmi2", "-n", "2"],
        &[],
        &img,
        &["/bin/sh", "-c", HELLO_AND_WAIT],
        &[],
    ));
    check_shared_hello(&out, &samples, &img);
}

#[test]
fn a_wrong_pmi_is_caught_by_the_world_size_check() {
    let _g = serial();
    // MPICH does not speak pmix: each task starts alone as "rank 0 of 1". hello must fail.
    let out = srun(
        &["--mpi=pmix", "-n", "2"],
        &mpi_fixture("mpich.sqfs"),
        &["hello", "--check-size", "2"],
        &[],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("world size 1, expected 2"), "{out:?}");
}

#[test]
fn ping_pong_up_to_4_mib_with_single_copy_on() {
    let _g = serial();
    // MPI's defaults: Open MPI's vader with CMA, MPICH over UCX with cma and /proc/PID/fd
    // links. Large messages go by single copy; between private namespaces they hung.
    let pingpong = ["pingpong", "--iters", "20"];
    let max = 4 << 20;
    for (mpi, img) in [("--mpi=pmix", "openmpi.sqfs"), ("--mpi=pmi2", "mpich.sqfs")] {
        let out = srun(&[mpi, "-n", "2"], &mpi_fixture(img), &pingpong, &[]);
        check_pingpong(&out, max, &format!("srun {mpi} {img}"));
    }
    let out = Out::from(
        host_starter(
            "mpirun.openmpi",
            &["-np", "2", "--oversubscribe"],
            &mpi_fixture("openmpi.sqfs"),
            &pingpong,
        )
        .output()
        .expect("spawning setpriv"),
    );
    check_pingpong(&out, max, "mpirun.openmpi");
    let out = Out::from(
        host_starter(
            "mpiexec.mpich",
            &["-n", "2"],
            &mpi_fixture("mpich.sqfs"),
            &pingpong,
        )
        .output()
        .expect("spawning setpriv"),
    );
    check_pingpong(&out, max, "mpiexec.mpich");
}

/// Ranks whose mounts differ still share the node's user namespace (single copy on), each
/// with a mount namespace of its own: `--writable-tmpfs` (a writable root per rank) and
/// per-rank binds, under the host's mpirun.
#[test]
fn mpirun_ranks_with_writable_tmpfs_or_different_binds_share_the_user_namespace() {
    let _g = serial();
    let s = setup();
    let img = mpi_fixture("openmpi.sqfs");
    let bin = s.bin.display().to_string();
    let mpirun = |args: &[&str]| {
        let mut all = vec!["-np", "2", "--oversubscribe"];
        all.extend(args);
        run("mpirun.openmpi", &all, &[])
    };
    let out = mpirun(&[
        &bin,
        "exec",
        "--writable-tmpfs",
        &img,
        "pingpong",
        "--iters",
        "20",
    ]);
    check_pingpong(&out, 4 << 20, "mpirun --writable-tmpfs");
    // Both ranks write into their root, then wait for each other (through a bound host
    // directory) before looking: each sees its own file only.
    let sync = s.scratch.join("writable-sync");
    std::fs::create_dir_all(&sync).unwrap();
    std::fs::set_permissions(&sync, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sync_bind = format!("{}:/sync", sync.display());
    let report = "echo rank=$r user=$(readlink /proc/self/ns/user) \
                  mnt=$(readlink /proc/self/ns/mnt)";
    let script = format!(
        "r=$OMPI_COMM_WORLD_RANK; echo $r >/written-by-$r; touch /sync/done-$r; n=0; \
         while [ ! -e /sync/done-$((1-r)) ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; \
         {report} seen=$(ls / | grep written-by | tr '\\n' ,)"
    );
    let out = mpirun(&[
        &bin,
        "exec",
        "--writable-tmpfs",
        "-B",
        &sync_bind,
        &img,
        "/bin/sh",
        "-c",
        &script,
    ]);
    let ranks = check_own_mount_namespaces(&out, "--writable-tmpfs");
    for (r, line) in ranks.iter().enumerate() {
        assert!(
            line.ends_with(&format!(" seen=written-by-{r},")),
            "rank {r} saw another rank's writable layer: {out:?}"
        );
    }
    // A bind per rank (what a wrapper script might do): each sees its own.
    let binds = s.scratch.join("rank-binds");
    for r in 0..2 {
        std::fs::create_dir_all(binds.join(r.to_string())).unwrap();
        std::fs::write(binds.join(format!("{r}/only-{r}")), "").unwrap();
    }
    let wrapper = format!(
        "exec {bin} exec -B {}/$OMPI_COMM_WORLD_RANK:/data {img} /bin/sh -c \
         'r=$OMPI_COMM_WORLD_RANK; {report} data=$(ls /data); exec pingpong --iters 20'",
        binds.display()
    );
    let out = mpirun(&["/bin/sh", "-c", &wrapper]);
    check_pingpong(&out, 4 << 20, "mpirun, a bind per rank");
    let ranks = check_own_mount_namespaces(&out, "a bind per rank");
    for (r, line) in ranks.iter().enumerate() {
        assert!(
            line.ends_with(&format!(" data=only-{r}")),
            "rank {r}: {out:?}"
        );
    }
}

/// The `rank=R user=... mnt=...` lines of two ranks, in rank order: one user namespace, two
/// mount namespaces.
fn check_own_mount_namespaces<'a>(out: &'a Out, what: &str) -> Vec<&'a str> {
    assert_eq!(out.code, 0, "{what}: {out:?}");
    let mut ranks = lines_with(&out.stdout, "rank=");
    ranks.sort();
    assert_eq!(ranks.len(), 2, "{what}: {out:?}");
    let field = |l: &str, key: &str| -> String {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    let users: BTreeSet<String> = ranks.iter().map(|l| field(l, "user=")).collect();
    let mounts: BTreeSet<String> = ranks.iter().map(|l| field(l, "mnt=")).collect();
    assert_eq!(
        users.len(),
        1,
        "{what}: ranks in different user namespaces: {out:?}"
    );
    assert!(
        users.iter().all(|u| u.starts_with("user:[")),
        "{what}: {out:?}"
    );
    assert_eq!(
        mounts.len(),
        2,
        "{what}: ranks in one mount namespace: {out:?}"
    );
    ranks
}

#[test]
fn no_share_gives_each_rank_its_own_instance_and_works_without_single_copy() {
    let _g = serial();
    // A user namespace per rank: single copy between ranks is refused, so it is turned off.
    let env = no_share_env();
    for (mpi, img) in [("--mpi=pmix", "openmpi.sqfs"), ("--mpi=pmi2", "mpich.sqfs")] {
        let img = mpi_fixture(img);
        let (out, samples) = run_watching_servers(srun_command(
            &[mpi, "-n", "2"],
            &["--no-share"],
            &img,
            &["/bin/sh", "-c", HELLO_AND_WAIT],
            &env,
        ));
        check_hello(&out, 2);
        let ns = hello_namespaces(&out);
        assert_eq!(ns.len(), 2, "{img}: ranks shared a namespace: {out:?}");
        check_one_server_per_namespace(&ns, &img, &samples);
        let out = srun_with(
            &[mpi, "-n", "2"],
            &["--no-share"],
            &img,
            &["pingpong", "--iters", "20"],
            &env,
        );
        check_pingpong(&out, 4 << 20, &format!("--no-share, srun {mpi} {img}"));
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

#[test]
fn scancel_of_a_shared_step_terms_the_ranks_and_leaves_nothing_behind() {
    let _g = serial();
    let s = setup();
    let scratch_dirs = ["/tmp", "/var/tmp", "/dev/shm"].map(PathBuf::from);
    let before = owned_entries(&scratch_dirs, s.uid);
    let marker = s.scratch.join("scancel-term");
    let markers: Vec<PathBuf> = (0..2)
        .map(|t| PathBuf::from(format!("{}.{t}", marker.display())))
        .collect();
    for m in &markers {
        let _ = std::fs::remove_file(m);
    }
    let img = fixture("busybox-gzip.sqfs");
    let script = slurm::term_marking_script(&marker, 3131);
    let srun_child = srun_command(
        &["-J", "launcher-scancel-test", "-n", "2"],
        &[],
        &img,
        &["/bin/sh", "-c", &script],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawning srun");
    let sleeps = slurm::wait_for_sleeps(3131, 2);
    // The step is shared: both ranks in one user namespace, one FUSE server in it, and the
    // rendezvous files in place.
    let namespaces: BTreeSet<String> = sleeps
        .iter()
        .map(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/user"))
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");
    let servers: Vec<_> = fuse_servers()
        .into_iter()
        .filter(|(ns, _)| namespaces.contains(ns))
        .collect();
    assert_eq!(servers.len(), 1, "FUSE servers of the step: {servers:?}");
    let rendezvous = std::fs::read_dir(share_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(rendezvous > 0, "no rendezvous files in {:?}", share_dir());
    // The step's FUSE connection, from a rank's own mount table (the host's cannot show it:
    // the ranks mount in their own namespace).
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", sleeps[0])).unwrap();
    let conns = fuse_connections(&mountinfo);
    assert_eq!(conns.len(), 1, "the step's FUSE connection: {mountinfo}");

    let out = run("scancel", &["--name=launcher-scancel-test"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let done = srun_child.wait_with_output().unwrap();
    let srun_err = String::from_utf8_lossy(&done.stderr);
    assert!(srun_err.contains("CANCELLED"), "srun said: {srun_err}");
    // Every process of the step is gone (launchers, keeper, sh, sleep), within KillWait.
    assert!(
        wait_gone("sleep 3131"),
        "left running: {:?}",
        pids_matching("sleep 3131")
    );
    slurm::assert_ranks_got_term(&marker, 2);
    // Nothing left on the node: the step's FUSE connection ended, no new file of the user in
    // the scratch directories, and the last rank out removed the rendezvous files.
    assert_fuse_connections_end(&conns, "scancel of the step");
    let new: Vec<PathBuf> = owned_entries(&scratch_dirs, s.uid)
        .difference(&before)
        .filter(|p| !p.starts_with(&s.scratch) && !is_other_test_scratch(p) && **p != share_dir())
        .cloned()
        .collect();
    assert!(new.is_empty(), "left behind: {new:?}");
    assert_no_share_files_left(10);
}

#[test]
fn a_time_limit_terms_the_command() {
    // Not serialised: it only sleeps, for about a minute (Slurm rounds limits up to a minute
    // and checks them periodically), and leaves nothing the other tests look at: --no-share
    // keeps its files out of the rendezvous directory the scancel test checks.
    let img = fixture("busybox-gzip.sqfs");
    let out = srun_with(
        &["-n", "1", "-t", "0:05"],
        &["--no-share"],
        &img,
        &[
            "/bin/sh",
            "-c",
            // Looping: see the scancel test.
            "trap 'kill $! 2>/dev/null; echo got-term; exit 3' TERM; \
             while :; do sleep 4242 & wait; done",
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
