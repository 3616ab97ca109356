//! The whole launch as one straight line: options → gather (host facts, image, GPU and MPI
//! discovery, host paths) → plan → apply.

use crate::apply::instance;
use crate::apply::share::{self, Role};
use crate::apply::supervisor::{self, LaunchSettings};
use crate::debug;
use crate::gather::host::HostInfo;
use crate::gather::paths::HostPaths;
use crate::gather::site_config::SiteConfig;
use crate::gather::{gpu, mpi, Gathered};
use crate::image::Opened;
use crate::options::instance::InstanceUse;
use crate::options::LaunchOptions;
use crate::plan::{self, NamedInstance, Plan};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Run the launch and return the exit status the launcher should leave with.
pub fn launch(opts: &LaunchOptions, debug: bool, tuning: &Tuning) -> Result<i32> {
    debug::enable(debug);
    let host = HostInfo::gather()?;
    let site = SiteConfig::load(&host.env, &host.home)?;
    for w in &site.warnings {
        debug::warn(w);
    }
    plan::policy::check(opts, &host.env, &site)?;
    let mut injection = gpu::gather(opts, &host, &site)?;
    debug::step("host facts gathered");
    // instance://NAME: the running instance is found first; its image is the one to plan for.
    let joined = match &opts.instance {
        Some(InstanceUse::Join(name)) => Some(find_instance(&host, name)?),
        _ => None,
    };
    let image_path = joined
        .as_ref()
        .and_then(|j| j.state.named.as_ref())
        .map_or_else(|| opts.image.clone(), |n| n.image.clone());
    // The file the signature checks read, unless the image is a running instance's.
    let checked = match (&joined, &opts.image_file) {
        (None, Some(f)) => Some(
            f.try_clone()
                .with_context(|| format!("image '{}'", image_path.display()))?,
        ),
        _ => None,
    };
    let opened = Opened::open(&image_path, checked)?;
    let image = opened.view();
    debug::step(format_args!("image opened ({})", image.desc().format));
    // MPI is checked against the image's own MPI, so it is gathered once the image is open.
    injection.extend(mpi::gather(opts, &site, image)?);
    let paths = HostPaths::gather(opts, &host, &site, &injection)?;
    let (overlays, overlay_archives) = crate::gather::overlays::gather(opts, &host.cwd)?;
    let facts = Gathered {
        host,
        site,
        injection,
        paths,
        overlays,
    };
    let mut plan = plan::build(opts, &facts, image)?;
    if let Some(InstanceUse::Start(name)) = &opts.instance {
        plan.instance = Some(named_instance(&facts.host, name, &image_path)?);
    }
    debug::step("plan built");
    if debug {
        eprint!("{plan}");
    }
    for w in &plan.warnings {
        debug::warn(w);
    }
    let role = match (joined, &plan.instance) {
        (Some(joiner), _) => Role::Join(joiner),
        (None, Some(named)) => Role::Lead(lead_instance(&facts.host, &plan, named)?),
        (None, None) => share_role(opts, &facts.host, &plan),
    };
    match &role {
        Role::Lead(l) => debug::step(format_args!(
            "share: leading this node's instance for the job step (rendezvous in {})",
            l.path.display()
        )),
        Role::Join(j) if j.own_mounts => debug::step(format_args!(
            "share: joining the user namespace and image of launcher {}, own mount namespace \
             (mounts differ from the leader's)",
            j.state.leader_pid
        )),
        Role::Join(j) => debug::step(format_args!(
            "share: joining the instance of launcher {}",
            j.state.leader_pid
        )),
        Role::Private(why) => debug::step(format_args!("share: private instance ({why})")),
    }
    let fuse_threads = match tuning.fuse_threads {
        0 => default_fuse_threads(),
        n => n,
    };
    let settings = LaunchSettings {
        fuse_threads,
        fuse_readahead: tuning.fuse_readahead_kib.saturating_mul(1024),
        fuse_push: tuning.fuse_push,
        prefetch: tuning.prefetch,
        block_cache: block_cache(opts, &facts, tuning),
    };
    // `instance start`: the caller returns once the detached leader says the instance is up.
    let daemon = match &plan.instance {
        None => None,
        Some(named) => {
            let logs = instance::open_logs(&named.log_out, &named.log_err)?;
            let job = crate::gather::host::slurm_step_daemon(&facts.host.env);
            match instance::detach(logs, job)? {
                instance::Detached::Caller(code) => {
                    if code == 0 {
                        debug::line(format_args!(
                            "launcher: instance {} started (output in {})",
                            named.name,
                            named.log_out.display()
                        ));
                    }
                    return Ok(code);
                }
                instance::Detached::Leader(daemon) => Some(daemon),
            }
        }
    };
    let archives = supervisor::Archives {
        image: opened.archive(),
        overlays: overlay_archives,
    };
    let status = supervisor::launch(&plan, archives, &settings, role, daemon);
    // The image server's messages reach stderr before the launcher exits; a stderr nobody
    // reads holds the exit for this long at most.
    crate::fuse::report::flush(REPORT_FLUSH_LIMIT);
    status
}

/// Where the read-ahead keeps decompressed blocks across launches, if anywhere (says which,
/// or why not, with `--debug`).
fn block_cache(
    opts: &LaunchOptions,
    facts: &Gathered,
    tuning: &Tuning,
) -> Option<crate::fuse::block_cache::Settings> {
    let max_mb = facts
        .site
        .block_cache
        .max_mb
        .unwrap_or(DEFAULT_BLOCK_CACHE_MB);
    let off = if !tuning.block_cache {
        Some("--fuse-no-block-cache")
    } else if opts.image_file.is_some() {
        // What runs is decompressed from the file whose signatures were checked, nothing else.
        Some("the image's signatures were checked")
    } else if max_mb == 0 {
        Some("the site config's block_cache.max_mb is 0")
    } else {
        None
    };
    if let Some(why) = off {
        debug::step(format_args!("block cache: off ({why})"));
        return None;
    }
    let dir = crate::fuse::block_cache::default_dir(&facts.host.env, facts.host.uid);
    debug::step(format_args!(
        "block cache: {} (at most {max_mb} MiB)",
        dir.display()
    ));
    Some(crate::fuse::block_cache::Settings {
        dir,
        max_bytes: max_mb.saturating_mul(1 << 20),
    })
}

/// This node's block cache of the calling user (`env`: the caller's environment): its
/// directory, and the entries (count, bytes) last used before `older` ago, removed when
/// `remove` (`launcher cache list|clean`). None when there is no cache directory to look at.
pub fn block_cache_sweep(
    env: &[(String, String)],
    older: Option<Duration>,
    remove: bool,
) -> Option<(PathBuf, u64, u64)> {
    let uid = nix::unistd::getuid().as_raw();
    let dir = crate::fuse::block_cache::default_dir(env, uid);
    if !dir.is_dir() {
        return None;
    }
    let settings = crate::fuse::block_cache::Settings {
        dir: dir.clone(),
        max_bytes: 0,
    };
    let cache = crate::fuse::block_cache::DiskBlockCache::open(&settings, uid).ok()?;
    let (n, bytes) = cache.sweep(older, remove);
    Some((dir, n, bytes))
}

/// The block cache's bound when the site config sets none: a few programs and their
/// interpreters (python3 and its ld.so are 7 MB decompressed).
const DEFAULT_BLOCK_CACHE_MB: u64 = 64;

/// How long the launcher waits at exit for the image server's messages to be written.
const REPORT_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Knobs for measuring the FUSE server, not for everyday use (hidden options).
pub struct Tuning {
    /// Worker threads; 0 = automatic.
    pub fuse_threads: usize,
    pub fuse_readahead_kib: u32,
    /// Push small files of listed directories into the page cache.
    pub fuse_push: bool,
    /// Read the command's program ahead while the root is built.
    pub prefetch: bool,
    /// Keep the read-ahead's decompressed blocks for later launches (`fuse/block_cache.rs`).
    pub block_cache: bool,
}

/// Enough workers that one slow decompression does not stall other readers, few enough
/// that many ranks per node do not flood the machine with threads.
fn default_fuse_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Whether this launch leads, joins or stays out of a per-node shared instance. A rank of a
/// job step that cannot share says why on stderr: its ranks lose single-copy transfers (CMA)
/// between them, which only --debug would otherwise show.
fn share_role(opts: &LaunchOptions, host: &HostInfo, plan: &Plan) -> Role {
    if !opts.share {
        return Role::Private("--no-share".into());
    }
    let Some(step) = share::job_step(&host.env, nix::unistd::getppid().as_raw()) else {
        return Role::Private("not a rank of a job step".into());
    };
    let role = share::node_name(&host.env)
        .and_then(|node| share::key(plan.uid, &node, &step, &served_images(plan)))
        .and_then(|key| {
            let flavour = flavour(plan)?;
            share::rendezvous(
                &share::candidate_dirs(&host.env, plan.uid),
                plan.uid,
                &key,
                &flavour,
            )
        });
    let why = match role {
        // A writable root copies the image's files up as the caller's, which the server
        // of a read-only leader does not show them as (fuse/server.rs).
        Ok(Role::Join(j)) if plan.writable_root && !j.state.image_owned_by_caller => {
            "its root is writable and a rank with a read-only root leads the node's instance"
                .to_string()
        }
        Ok(Role::Private(why)) => why,
        Ok(role) => return role,
        Err(e) => format!("{e:#}"),
    };
    debug::warn(format_args!(
        "this rank does not share the node's instance with the other ranks of its job step (no single-copy MPI transfers between them): {why}"
    ));
    Role::Private(why)
}

/// Everything the root is built from: ranks that agree on it use one root.
fn flavour(plan: &Plan) -> Result<String> {
    share::flavour(&(
        &plan.mounts,
        &plan.upper,
        plan.writable_root,
        &plan.overlay_dir,
        &plan.lower,
    ))
}

/// The image files a launch mounts in the instance's base (the image, then its overlay
/// images, in order): ranks share an instance only when these are the same, so that a rank
/// with mounts of its own finds its layers in the base.
fn served_images(plan: &Plan) -> Vec<&Path> {
    std::iter::once(plan.image.path.as_path())
        .chain(plan.lower.iter().filter_map(|l| match l {
            plan::LowerLayer::Image(i) => Some(i.path.as_path()),
            plan::LowerLayer::Dir(_) => None,
        }))
        .collect()
}

/// The named instance `instance start` creates: its node and log files (Apptainer keeps them
/// under the home directory too, one folder per host, as homes are shared between nodes).
fn named_instance(host: &HostInfo, name: &str, image: &Path) -> Result<NamedInstance> {
    let node = share::node_name(&host.env)?;
    let image = std::fs::canonicalize(image)
        .with_context(|| format!("'{}': resolving the image's path", image.display()))?;
    let logs = log_dir(host, &node);
    Ok(NamedInstance {
        name: name.to_string(),
        image,
        log_out: logs.join(format!("{name}.out")),
        log_err: logs.join(format!("{name}.err")),
        node,
    })
}

/// `~/.launcher/instances/logs/NODE/`, NODE the host name (and Slurm's node name, when
/// several slurmd share a host).
fn log_dir(host: &HostInfo, node: &str) -> PathBuf {
    let node = node.trim_end_matches('/').replace('/', "-");
    host.home.join(".launcher/instances/logs").join(node)
}

/// The rendezvous for `instance start`: this launch leads, or the name is taken.
fn lead_instance(host: &HostInfo, plan: &Plan, named: &NamedInstance) -> Result<share::Leader> {
    let key = share::named_key(plan.uid, &named.node, &named.name);
    let dirs = share::candidate_dirs(&host.env, plan.uid);
    match share::rendezvous(&dirs, plan.uid, &key, &flavour(plan)?)? {
        Role::Lead(leader) => Ok(leader),
        Role::Join(running) => bail!(
            "an instance named '{}' is already running (pid {}); stop it first: `launcher instance stop {}`",
            named.name,
            running.state.leader_pid,
            named.name
        ),
        Role::Private(why) => bail!("instance '{}': nowhere to keep its state: {why}", named.name),
    }
}

/// `instance://NAME`: join the user's running instance of that name on this node.
fn find_instance(host: &HostInfo, name: &str) -> Result<share::Joiner> {
    let node = share::node_name(&host.env)?;
    let key = share::named_key(host.uid, &node, name);
    share::find_named(&share::candidate_dirs(&host.env, host.uid), host.uid, &key)?.ok_or_else(
        || {
            anyhow!(
                "no instance named '{name}' is running on this node (see `launcher instance list`)"
            )
        },
    )
}

/// A running named instance, as `instance list` shows it.
pub struct InstanceInfo {
    pub name: String,
    pub pid: i32,
    pub image: PathBuf,
    pub log_out: PathBuf,
    pub log_err: PathBuf,
}

/// The user's named instances on this node whose names match `pattern` (`*` matches any
/// run of characters, as in Apptainer's `instance list web*`); the files of dead ones go.
pub fn instances(pattern: &str) -> Result<Vec<InstanceInfo>> {
    Ok(listed(pattern)?
        .1
        .into_iter()
        .filter_map(|(_, st)| {
            let n = st.named?;
            Some(InstanceInfo {
                name: n.name,
                pid: st.leader_pid,
                image: n.image,
                log_out: n.log_out,
                log_err: n.log_err,
            })
        })
        .collect())
}

type Listed = (Vec<PathBuf>, Vec<(PathBuf, share::State)>, String, u32);

fn listed(pattern: &str) -> Result<Listed> {
    let host = HostInfo::gather()?;
    let node = share::node_name(&host.env)?;
    let dirs = share::candidate_dirs(&host.env, host.uid);
    let mut states = share::list_named(&dirs, host.uid, &node);
    states.retain(|(_, s)| {
        s.named
            .as_ref()
            .is_some_and(|n| glob_match(pattern, &n.name))
    });
    Ok((dirs, states, node, host.uid))
}

/// `instance stop`: the instances matching `pattern` (all with "*"), with `signal` (as
/// Apptainer: SIGTERM, then SIGKILL after `timeout`). An error when none matches.
pub fn stop_instances(
    pattern: &str,
    signal: nix::sys::signal::Signal,
    timeout: Duration,
) -> Result<i32> {
    let (dirs, states, node, uid) = listed(pattern)?;
    if states.is_empty() {
        bail!("no instance found with name '{pattern}' on this node");
    }
    instance::stop(&dirs, uid, &node, &states, signal, timeout)?;
    Ok(0)
}

/// Shell-style matching with `*` only (instance names have no other special character).
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("web", "web"));
        assert!(!glob_match("web", "web2"));
        assert!(glob_match("web*", "web2"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*c", "abbc"));
        assert!(!glob_match("a*c", "abcd"));
    }
}
