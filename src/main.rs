//! `launcher`: run commands in SquashFS/SIF container images as an unprivileged user.

mod build_cmd;
mod fakeroot_cmd;
mod foreign;
mod image_source;
mod sign_cmd;
mod verify_cmd;
mod verify_memo;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use launcher_runtime::launch::{self, Tuning};
use launcher_runtime::options::bind::{parse_bind_list, BindSpec};
use launcher_runtime::options::instance::InstanceUse;
use launcher_runtime::options::{self as options, Action, GpuVendor, LaunchOptions, MpiMode};
use launcher_runtime::options::{apptainer, env_args};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::Duration;

/// Exit status for the launcher's own failures (bad image, bad option, no namespaces, ...).
const LAUNCHER_FAILURE: i32 = 255;

#[derive(Parser)]
#[command(
    name = "launcher",
    version,
    about = "Unprivileged HPC container launcher for SquashFS and SIF images"
)]
struct Cli {
    /// Print the launch plan and each step to stderr.
    #[arg(short = 'd', long, global = true)]
    debug: bool,
    /// No warnings, only errors (as Apptainer's -q, before the verb).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// No warnings, only errors (as Apptainer's -s, before the verb).
    #[arg(short = 's', long)]
    silent: bool,
    /// Accepted for Apptainer's -v; --debug prints what a launch does.
    #[arg(short = 'v', long)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command inside the image.
    Exec {
        #[command(flatten)]
        opts: RunOpts,
        /// Image: a .sif or .sqfs file, a sandbox directory, or docker://REF (also
        /// docker-archive:, oci-archive:, oci:, tar:), built once into the cache.
        image: PathBuf,
        /// Command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run the image's runscript (or its OCI entrypoint and cmd).
    Run {
        #[command(flatten)]
        opts: RunOpts,
        image: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Start an interactive shell inside the image.
    Shell {
        #[command(flatten)]
        opts: RunOpts,
        image: PathBuf,
    },
    /// Named instances of an image, kept running in the background until stopped (or until
    /// the Slurm job they were started in ends): `start`, `list`, `stop`. Commands run in one
    /// with `exec instance://NAME ...` (also run, shell).
    Instance {
        #[command(subcommand)]
        what: InstanceCommand,
    },
    /// Build a SIF or SquashFS image from a directory, a Docker/OCI image or a definition file.
    Build(build_cmd::BuildArgs),
    /// Pull docker://REF or oras://REF into a SIF file, named NAME_TAG.sif unless OUTPUT is given.
    Pull(build_cmd::PullArgs),
    /// Push a SIF file to an OCI registry as oras://REF, as Apptainer does.
    Push(build_cmd::PushArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell
    /// (e.g. `launcher completion bash > /etc/bash_completion.d/launcher`).
    Completion { shell: clap_complete::Shell },
    /// Print the manual page (roff): `launcher man | man -l -`.
    Man,
    /// Print the version (Apptainer's `version` verb; also `--version`).
    #[command(hide = true)]
    Version,
    /// The layer cache of builds and pulls: `list`, or `clean`.
    Cache {
        #[command(subcommand)]
        what: CacheCommand,
    },
    /// Verify a SIF image's signatures (DSSE or OpenPGP, as Apptainer writes them) with the
    /// given and installed public keys; an unsigned image's recorded digests.
    Verify(verify_cmd::VerifyArgs),
    /// Sign a SIF image with an OpenPGP secret key (a clear-signed object per group) or a PEM
    /// private key (DSSE), as Apptainer and SingularityCE write them.
    Sign(sign_cmd::SignArgs),
    /// Show what an image holds: SIF descriptors, SquashFS facts, labels, runscript.
    Inspect {
        image: PathBuf,
        /// Machine-readable output (with Apptainer's `data.attributes` too).
        #[arg(short = 'j', long)]
        json: bool,
        /// Only the labels, as Apptainer prints them.
        #[arg(short = 'l', long)]
        labels: bool,
        /// Only the runscript.
        #[arg(short = 'r', long)]
        runscript: bool,
        /// Only the definition file the image was built from.
        #[arg(long)]
        deffile: bool,
        /// Only the environment scripts.
        #[arg(short = 'e', long)]
        environment: bool,
        /// Only the runscript's help text.
        #[arg(short = 'H', long)]
        helpfile: bool,
        /// Only the test script.
        #[arg(short = 't', long)]
        test: bool,
        /// Every section above.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum InstanceCommand {
    /// Start a named instance of IMAGE and return once it is ready; the image's startscript
    /// (/.singularity.d/startscript), if any, runs in it with ARGS, its output going to
    /// ~/.launcher/instances/logs/HOST/NAME.{out,err}.
    Start {
        #[command(flatten)]
        opts: Box<RunOpts>,
        image: PathBuf,
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the user's instances on this node (those whose name matches PATTERN; `*` is any
    /// run of characters).
    List {
        /// Machine-readable output, as Apptainer's.
        #[arg(short = 'j', long)]
        json: bool,
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// Stop the named instance (or those matching a `*` pattern): SIGTERM to every process
    /// in it, SIGKILL after --timeout seconds.
    Stop {
        /// Every instance of the user's on this node.
        #[arg(short = 'a', long, conflicts_with = "name")]
        all: bool,
        /// The signal to stop with (TERM, SIGTERM or 15; default TERM).
        #[arg(short = 's', long, value_name = "SIG")]
        signal: Option<String>,
        /// SIGKILL at once.
        #[arg(short = 'F', long, conflicts_with = "signal")]
        force: bool,
        /// Seconds before what is still running is killed.
        #[arg(short = 't', long, default_value_t = 10)]
        timeout: u64,
        #[arg(required_unless_present = "all")]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Where the cache is and what it holds.
    List,
    /// Remove cached layers (all, or those unused for --days); needs --force.
    Clean {
        /// Only what has not been written for this many days.
        #[arg(long, value_name = "N")]
        days: Option<u64>,
        /// Remove; without it, say what would go.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

/// Options shared by exec, run and shell; spelled as in Apptainer. Each also reads Apptainer's
/// environment variable (`APPTAINER_BIND`, `SINGULARITY_CONTAIN`, ...: docs/usage.md).
#[derive(Args)]
struct RunOpts {
    /// Apptainer's flags that have no option here: accepted where harmless, else refused
    /// with why (foreign.rs).
    #[command(flatten)]
    foreign: foreign::ForeignOpts,
    /// Bind a host path: SRC[:DST[:ro|rw]], repeatable, comma-separated lists allowed.
    #[arg(short = 'B', long = "bind", value_name = "SPEC")]
    bind: Vec<String>,
    /// Do not bind home, cwd or /tmp; use a fresh /tmp and a minimal /dev.
    #[arg(short = 'c', long)]
    contain: bool,
    /// --contain and --cleanenv together.
    #[arg(short = 'C', long)]
    containall: bool,
    /// Do not bind the home directory.
    #[arg(long)]
    no_home: bool,
    /// Do not mount these (comma-separated): home, tmp, cwd, hostfs.
    #[arg(long, value_name = "LIST")]
    no_mount: Vec<String>,
    /// Home directory to bind: SRC[:DST].
    #[arg(short = 'H', long, value_name = "SRC[:DST]")]
    home: Option<String>,
    /// Working directory inside the container.
    #[arg(long, visible_alias = "cwd", value_name = "DIR")]
    pwd: Option<PathBuf>,
    /// Accepted for Apptainer's -u: the launcher always runs in a user namespace.
    #[arg(short = 'u', long)]
    userns: bool,
    /// A writable overlay on tmpfs over the image; changes vanish at exit.
    #[arg(long)]
    writable_tmpfs: bool,
    /// The image is a sandbox directory (`launcher build --sandbox`), mounted writable: changes
    /// are kept in it (SIF and SquashFS images are read-only).
    #[arg(short = 'w', long)]
    writable: bool,
    /// Run as root in a user namespace, set*id and chown calls emulated as in a definition
    /// file's %post (apt-get, dnf and useradd work), in a --writable sandbox directory.
    #[arg(short = 'f', long)]
    fakeroot: bool,
    /// Layers over the image (repeatable, or a comma list; later ones on top): a directory
    /// keeps the changes for the next launch (one at most; not with --writable-tmpfs),
    /// DIR:ro is a read-only layer, and so is a SquashFS or SIF image.
    #[arg(short = 'o', long, value_name = "DIR|DIR:ro|IMG.sqfs")]
    overlay: Vec<String>,
    /// Start from a minimal environment instead of the host's.
    #[arg(short = 'e', long)]
    cleanenv: bool,
    /// Set variables inside the container: NAME=VALUE[,NAME=VALUE...] (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Read NAME=VALUE lines from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Bring in the host's GPU stack: CDI specs if the host has them, else the driver
    /// libraries (via the ld.so cache), programs and device nodes of NVIDIA and/or AMD.
    #[arg(long)]
    gpu: bool,
    /// --gpu for NVIDIA only.
    #[arg(long)]
    nv: bool,
    /// Taken as --nv (the driver is found without nvidia-container-cli).
    #[arg(long)]
    nvccli: bool,
    /// --gpu for AMD ROCm only.
    #[arg(long)]
    rocm: bool,
    /// No GPU, even when the site config turns --gpu on by default.
    #[arg(long, conflicts_with_all = ["gpu", "nv", "rocm"])]
    no_gpu: bool,
    /// Bind the host's MPI library, its dependencies and plugins, and the interconnect
    /// devices, over the image's MPI after an ABI check; `--mpi=force` skips the check.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "on",
          value_parser = ["on", "force"], value_name = "force")]
    mpi: Option<String>,
    /// No MPI injection, even when the site config turns --mpi on by default.
    #[arg(long, conflicts_with = "mpi")]
    no_mpi: bool,
    /// A CDI device: vendor/class=name, e.g. nvidia.com/gpu=0 (repeatable).
    #[arg(long = "device", value_name = "CDI_NAME")]
    device: Vec<String>,
    /// Do not share one container instance with the other ranks of a job step on this node.
    #[arg(long)]
    no_share: bool,
    /// docker:// images: talk plain HTTP to the registry (a local one) instead of HTTPS.
    #[arg(long, visible_alias = "insecure")]
    nohttps: bool,
    /// Number of FUSE server threads.
    #[arg(long, hide = true, default_value_t = 0)]
    fuse_threads: usize,
    /// Largest kernel readahead on the image, in KiB.
    #[arg(long, hide = true, default_value_t = 1024)]
    fuse_readahead: u32,
    /// Do not push small files of listed directories into the page cache.
    #[arg(long, hide = true)]
    fuse_no_push: bool,
    /// Do not read the command's program ahead.
    #[arg(long, hide = true)]
    fuse_no_prefetch: bool,
    /// Neither use nor fill the block cache (decompressed blocks kept across launches).
    #[arg(long, hide = true)]
    fuse_no_block_cache: bool,
    /// Check the SIF image's signatures before mounting it, as `launcher verify` does (every
    /// object group covered by a verified signature), and refuse to start if they do not verify.
    #[arg(long)]
    verify: bool,
    /// A public key for --verify (PEM or armored OpenPGP), repeatable; the keys in
    /// ~/.config/launcher/keys/ and /etc/launcher/keys/ are used too.
    #[arg(long = "key", value_name = "FILE", requires = "verify")]
    verify_keys: Vec<PathBuf>,
}

impl RunOpts {
    /// `exec instance://NAME`: the options that set the instance's mounts were given at
    /// `instance start`; asking for others here is refused (as Apptainer does) rather than
    /// silently ignored.
    fn refuse_for_instance(&self, name: &str) -> Result<()> {
        let given: Vec<&str> = [
            (!self.bind.is_empty(), "--bind"),
            (self.contain || self.containall, "--contain"),
            (self.no_home || self.home.is_some(), "--home/--no-home"),
            (!self.no_mount.is_empty(), "--no-mount"),
            (self.writable_tmpfs, "--writable-tmpfs"),
            (!self.overlay.is_empty(), "--overlay"),
            (self.gpu || self.nv || self.nvccli || self.rocm, "--gpu"),
            (self.mpi.is_some(), "--mpi"),
            (!self.device.is_empty(), "--device"),
            (self.verify, "--verify"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect();
        if !given.is_empty() {
            anyhow::bail!(
                "{}: not with instance://{name}: the instance's mounts were set by `instance start` (give them there)",
                given.join(", ")
            );
        }
        Ok(())
    }

    /// The options, with what the command line leaves unset taken from Apptainer's
    /// environment variables in `env` (see `options::apptainer`).
    fn into_options(
        mut self,
        image: PathBuf,
        action: Action,
        env: &[(String, String)],
    ) -> Result<(LaunchOptions, Tuning)> {
        self.foreign.check(env)?;
        let flag = |keys: &[&str]| apptainer::flag(env, keys);
        self.contain |= flag(&["CONTAIN"])?;
        self.containall |= flag(&["CONTAINALL"])?;
        self.cleanenv |= flag(&["CLEANENV"])?;
        self.no_home |= flag(&["NO_HOME"])?;
        self.writable_tmpfs |= flag(&["WRITABLE_TMPFS"])?;
        self.writable |= flag(&["WRITABLE"])?;
        let mut overlay_var = None;
        if self.overlay.is_empty() {
            if let Some((name, v)) = apptainer::first(env, &["OVERLAY", "OVERLAYIMAGE"]) {
                self.overlay.push(v.to_string());
                overlay_var = Some(name);
            }
        }
        // What asked for the GPU, as the user wrote it, for a refusal by the site's lock.
        let mut gpu_by: Vec<String> = [
            ("--gpu", self.gpu),
            ("--nv", self.nv),
            ("--nvccli", self.nvccli),
            ("--rocm", self.rocm),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_string())
        .collect();
        for key in ["NV", "NVCCLI", "ROCM"] {
            if flag(&[key])? {
                gpu_by.extend(apptainer::value(env, key).map(|(name, _)| name));
            }
        }
        self.nv |= flag(&["NV"])? | flag(&["NVCCLI"])? | self.nvccli;
        self.rocm |= flag(&["ROCM"])?;
        flag(&["USERNS", "UNSHARE_USERNS"])?;
        if self.home.is_none() {
            self.home = apptainer::value(env, "HOME").map(|(_, v)| v.to_string());
        }
        if self.pwd.is_none() {
            self.pwd = apptainer::first(env, &["CWD", "TARGET_CWD"]).map(|(_, v)| v.into());
        }
        let mut env_file_var = None;
        if self.env_file.is_empty() {
            if let Some((name, v)) = apptainer::value(env, "ENV_FILE") {
                self.env_file.push(PathBuf::from(v));
                env_file_var = Some(name);
            }
        }
        if self.no_mount.is_empty() {
            self.no_mount
                .extend(apptainer::value(env, "NO_MOUNT").map(|(_, v)| v.to_string()));
        }
        let mut o = LaunchOptions::new(image, action);
        // A site module's APPTAINER_BINDPATH and the user's -B add up, the environment's first.
        let mut binds: Vec<BindSpec> = Vec::new();
        for (name, list) in apptainer::all(env, &["BIND", "BINDPATH"]) {
            binds.extend(parse_bind_list(list).map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?);
        }
        for b in &self.bind {
            binds.extend(parse_bind_list(b)?);
        }
        o.binds = binds;
        o.contain = self.contain || self.containall;
        o.no_home = self.no_home;
        for what in self.no_mount.iter().flat_map(|l| l.split(',')) {
            match what.trim() {
                "home" => o.no_home = true,
                "tmp" => o.no_mount_tmp = true,
                "cwd" => o.no_mount_cwd = true,
                // Host file systems listed in Apptainer's config: the launcher mounts none.
                "hostfs" | "" => {}
                other => anyhow::bail!(
                    "--no-mount {other}: not supported (supported: home, tmp, cwd, hostfs)"
                ),
            }
        }
        o.home = self.home.map(|h| match h.split_once(':') {
            Some((src, dst)) => (PathBuf::from(src), PathBuf::from(dst)),
            None => (PathBuf::from(&h), PathBuf::from(&h)),
        });
        o.pwd = self.pwd;
        o.writable_tmpfs = self.writable_tmpfs;
        o.writable = self.writable;
        for value in &self.overlay {
            o.overlays.extend(
                options::overlay::parse(value).map_err(|e| match &overlay_var {
                    Some(name) => anyhow::anyhow!("{name}: {e:#}"),
                    None => e,
                })?,
            );
        }
        o.cleanenv = self.cleanenv || self.containall;
        o.gpu = match (self.gpu || (self.nv && self.rocm), self.nv, self.rocm) {
            (true, _, _) => Some(GpuVendor::Any),
            (false, true, _) => Some(GpuVendor::Nvidia),
            (false, _, true) => Some(GpuVendor::Amd),
            _ => None,
        };
        o.asked_by.gpu = (!gpu_by.is_empty()).then(|| gpu_by.join(", "));
        o.no_gpu = self.no_gpu;
        for d in &self.device {
            launcher_runtime::gather::cdi::parse_device_name(d)?;
        }
        o.devices = self.device;
        o.mpi = self.mpi.as_deref().map(|m| match m {
            "force" => MpiMode::Force,
            _ => MpiMode::On,
        });
        o.asked_by.mpi = self.mpi.as_deref().map(|m| match m {
            "force" => "--mpi=force".to_string(),
            _ => "--mpi".to_string(),
        });
        o.no_mpi = self.no_mpi;
        o.share = !self.no_share;
        for f in &self.env_file {
            let from = match &env_file_var {
                Some(var) => format!("{var}={}", f.display()),
                None => format!("--env-file {}", f.display()),
            };
            for (k, v) in env_args::read_env_file(f)? {
                o.asked_by.env.insert(k.clone(), format!("{from} ({k})"));
                o.env.push((k, v));
            }
        }
        for e in self.env.iter().flat_map(|e| apptainer::split_env_list(e)) {
            let (k, v) = env_args::parse_assignment(&e)?;
            o.asked_by.env.insert(k.clone(), format!("--env {k}"));
            o.env.push((k, v));
        }
        Ok((
            o,
            Tuning {
                fuse_threads: self.fuse_threads,
                fuse_readahead_kib: self.fuse_readahead,
                fuse_push: !self.fuse_no_push,
                prefetch: !self.fuse_no_prefetch,
                block_cache: !self.fuse_no_block_cache,
            },
        ))
    }
}

fn main() {
    // Rust starts with SIGPIPE ignored; a CLI (and the command, which inherits it) wants the
    // default, as when started from a shell.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Installed as `apptainer` or `singularity` (a symlink, for a site trying job scripts
    // unchanged): the same program, and `--version` says so.
    // Leaked once: clap (without its `string` feature) keeps only 'static text.
    let version: &'static str = Box::leak(version_line().into_boxed_str());
    let mut command = <Cli as clap::CommandFactory>::command().version(version);
    if let Some(name) = invoked_as() {
        command = command.name(name).bin_name(name);
    }
    let parsed = command
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(LAUNCHER_FAILURE);
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("launcher: error: {e:#}");
            LAUNCHER_FAILURE
        }
    };
    std::process::exit(code);
}

/// `apptainer` or `singularity` when the program was started under that name.
fn invoked_as() -> Option<&'static str> {
    let arg0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&arg0)
        .file_name()?
        .to_str()?
        .to_string();
    ["apptainer", "singularity"]
        .into_iter()
        .find(|n| *n == name)
}

/// `--version` and `version`: ours, and under which name it runs.
fn version_line() -> String {
    let ours = env!("CARGO_PKG_VERSION");
    match invoked_as() {
        Some(name) => format!(
            "{ours} (the launcher, invoked as {name}: it takes Apptainer's command line; differences in docs/apptainer.md)"
        ),
        None => ours.to_string(),
    }
}

/// For exec, run and shell only (`build` keeps glibc's defaults: its compressor threads
/// allocate all the time). glibc's defaults suit long-lived programs; a launch is short and
/// all first touches, and its threads (FUSE workers, read-ahead, push) each allocate a few
/// decompressed blocks:
/// - one arena: each thread's own arena would be a fresh 64 MiB mapping, grown piecemeal by
///   mprotect calls, for the few blocks it decompresses;
/// - blocks (128 KiB to 1 MiB) from the heap, not one mmap (and munmap) each.
///
/// `exec IMG /bin/true` on a zstd busybox image: 1358 page faults before, 1278 after
/// (`perf stat -e page-faults`). musl's allocator (the static build) has no such knobs.
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before the launch starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_allocator() {}

/// The launcher needs no privilege and must not be given any: a setuid bit or file
/// capabilities would hand them to every user, and the namespaces would inherit them.
fn refuse_privileges() -> Result<()> {
    // SAFETY: getters without arguments.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if uid != euid || gid != egid {
        anyhow::bail!(
            "the launcher is installed setuid or setgid (uid {uid}, euid {euid}, gid {gid}, egid {egid}); it needs no privileges: remove the bit (chmod u-s,g-s)"
        );
    }
    if uid != 0 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let raised = status
            .lines()
            .filter(|l| {
                l.starts_with("CapPrm:") || l.starts_with("CapEff:") || l.starts_with("CapAmb:")
            })
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|v| !v.trim_start_matches('0').is_empty())
            });
        if raised {
            anyhow::bail!("the launcher runs with capabilities (file capabilities or an ambient set); it needs none: remove them (setcap -r)");
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    refuse_privileges()?;
    launcher_runtime::debug::set_quiet(cli.quiet || cli.silent);
    let (opts, image, action) = match cli.command {
        Command::Exec {
            opts,
            image,
            command,
        } => (opts, image, Action::Exec(command)),
        Command::Run { opts, image, args } => (opts, image, Action::Run(args)),
        Command::Shell { opts, image } => (opts, image, Action::Shell),
        Command::Instance { what } => match what {
            InstanceCommand::Start {
                opts,
                image,
                name,
                args,
            } => {
                launcher_runtime::options::instance::check_name(&name)?;
                return launch_with(
                    *opts,
                    image,
                    Action::StartInstance(args),
                    Some(InstanceUse::Start(name)),
                    cli.debug,
                );
            }
            InstanceCommand::List { json, pattern } => return instance_list(&pattern, json),
            InstanceCommand::Stop {
                all,
                signal,
                force,
                timeout,
                name,
            } => {
                let sig = match (force, signal) {
                    (true, _) => Signal::SIGKILL,
                    (false, Some(s)) => parse_signal(&s)?,
                    (false, None) => Signal::SIGTERM,
                };
                let pattern = if all {
                    "*".to_string()
                } else {
                    name.unwrap_or_default()
                };
                return launch::stop_instances(&pattern, sig, Duration::from_secs(timeout));
            }
        },
        Command::Build(args) => return build_cmd::run(args),
        Command::Pull(args) => return args.run(),
        Command::Push(args) => return build_cmd::push(args),
        Command::Cache { what } => return build_cmd::cache(what_of(what)),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "launcher", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Version => {
            println!("{}", version_line());
            return Ok(0);
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            return Ok(0);
        }
        Command::Verify(args) => return verify_cmd::run(args),
        Command::Sign(args) => return sign_cmd::run(args),
        Command::Inspect {
            image,
            json,
            labels,
            runscript,
            deffile,
            environment,
            helpfile,
            test,
            all,
        } => {
            use launcher_runtime::image::inspect::{self, Section};
            let asked = [
                (labels, Section::Labels),
                (deffile, Section::Deffile),
                (runscript, Section::Runscript),
                (test, Section::Test),
                (environment, Section::Environment),
                (helpfile, Section::Helpfile),
            ];
            let which: Vec<Section> = if all {
                Section::ALL.to_vec()
            } else {
                asked
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, s)| *s)
                    .collect()
            };
            if which.is_empty() {
                inspect::print(&image, json)?;
            } else {
                inspect::print_sections(&image, &which, json)?;
            }
            return Ok(0);
        }
    };
    let instance = match options::instance::name_in_uri(&image.to_string_lossy()) {
        None => None,
        Some(name) => {
            let name = name?;
            opts.refuse_for_instance(&name)?;
            Some(InstanceUse::Join(name))
        }
    };
    launch_with(opts, image, action, instance, cli.debug)
}

/// exec, run, shell and `instance start`: resolve the image, check it if asked, launch.
fn launch_with(
    opts: RunOpts,
    image: PathBuf,
    action: Action,
    instance: Option<InstanceUse>,
    debug: bool,
) -> Result<i32> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let joining = matches!(instance, Some(InstanceUse::Join(_)));
    let source = !joining && image_source::is_source(&image);
    // The site's signature policy, before anything is pulled or mounted. Here, not in the
    // runtime: the signature crates are the binary's alone. (The launch loads the config again,
    // and says its warnings then.) instance://NAME: checked when the instance was started.
    // The image file as the checks below open it, once for all of them; the launch reads it.
    let mut checked: verify_cmd::CheckedFile = None;
    let site = match joining {
        true => None,
        false => {
            let site = launcher_runtime::gather::site_config::SiteConfig::load_for_caller(&env)?;
            verify_cmd::check_site_policy(&image, source, &site, &mut checked)?;
            Some(site)
        }
    };
    let image = if source {
        let nohttps = opts.nohttps || apptainer::flag(&env, &["NOHTTPS"])?;
        image_source::resolve(&image.to_string_lossy(), nohttps, debug)?
    } else {
        image
    };
    if opts.fakeroot || apptainer::flag(&env, &["FAKEROOT"])? {
        let writable = opts.writable || apptainer::flag(&env, &["WRITABLE"])?;
        return fake_root_session(&image, writable, &opts, action);
    }
    if opts.verify {
        // Here, not in the runtime: the signature crates are the binary's alone.
        verify_cmd::check_before_launch(&image, &opts.verify_keys, &mut checked)?;
    }
    let (mut options, tuning) = opts.into_options(image, action, &env)?;
    options.image_file = checked.map(std::sync::Arc::new);
    // Overlay images are images too: one under a path the policy covers must be signed as
    // the image must. Overlay directories are not (like binds, they carry no signature).
    if let Some(site) = &site {
        for layer in options.overlays.iter().filter(|l| !l.path.is_dir()) {
            verify_cmd::check_site_policy(&layer.path, false, site, &mut None)?;
        }
    }
    if matches!(instance, Some(InstanceUse::Join(_))) {
        // A site's APPTAINER_BINDPATH and the like: the instance has its mounts already.
        options.binds.clear();
    }
    options.instance = instance;
    tune_allocator();
    launch::launch(&options, debug, &tuning)
}

/// `instance list`: Apptainer's columns, or its JSON.
fn instance_list(pattern: &str, json: bool) -> Result<i32> {
    let list = launch::instances(pattern)?;
    if json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|i| {
                serde_json::json!({
                    "instance": i.name,
                    "pid": i.pid,
                    "ip": "",
                    "img": i.image,
                    "logErrPath": i.log_err,
                    "logOutPath": i.log_out,
                })
            })
            .collect();
        let doc = serde_json::json!({ "instances": items });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!("{:<16} {:<8} {:<15} IMAGE", "INSTANCE NAME", "PID", "IP");
    for i in &list {
        println!(
            "{:<16} {:<8} {:<15} {}",
            i.name,
            i.pid,
            "",
            i.image.display()
        );
    }
    Ok(0)
}

/// A signal as Apptainer takes it: TERM, SIGTERM or 15.
fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow::anyhow!("--signal {s}: no such signal"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("--signal {s}: no such signal"))
}

/// `--fakeroot --writable`: a sandbox directory changed as fake root, by image-tools' runner
/// (the runtime has no fake root); anything else refused with what to do instead.
fn fake_root_session(
    image: &std::path::Path,
    writable: bool,
    opts: &RunOpts,
    action: Action,
) -> Result<i32> {
    let shown = image.display();
    if !image.is_dir() {
        if writable {
            anyhow::bail!(
                "'{shown}' is read-only: --writable needs a sandbox directory (make one with `launcher build --sandbox DIR {shown}`), or use --writable-tmpfs or --overlay DIR for changes that are not kept in the image"
            );
        }
        anyhow::bail!(
            "--fakeroot on '{shown}': fake root runs in a writable sandbox directory: `launcher build --sandbox DIR {shown}`, then `launcher exec --fakeroot --writable DIR CMD` (to build an image as fake root: `launcher build OUT.sif app.def`)"
        );
    }
    if !writable {
        anyhow::bail!(
            "--fakeroot on '{shown}' needs --writable: its changes are written into the directory"
        );
    }
    let unsupported = [
        (!opts.bind.is_empty(), "--bind"),
        (!opts.overlay.is_empty(), "--overlay"),
        (opts.writable_tmpfs, "--writable-tmpfs"),
        (opts.home.is_some(), "--home"),
        (opts.pwd.is_some(), "--pwd"),
        (
            opts.gpu || opts.nv || opts.nvccli || opts.rocm,
            "--gpu/--nv/--rocm",
        ),
        (opts.mpi.is_some(), "--mpi"),
        (!opts.device.is_empty(), "--device"),
        (!opts.env.is_empty() || !opts.env_file.is_empty(), "--env"),
        (opts.verify, "--verify"),
    ];
    if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
        anyhow::bail!(
            "{name} is not supported with --fakeroot: a fake-root session has the sandbox, /proc, a minimal /dev, a fresh /tmp and the host's network only"
        );
    }
    fakeroot_cmd::run(image, action)
}

fn what_of(c: CacheCommand) -> build_cmd::CacheAction {
    match c {
        CacheCommand::List => build_cmd::CacheAction::List,
        CacheCommand::Clean { days, force } => build_cmd::CacheAction::Clean { days, force },
    }
}
