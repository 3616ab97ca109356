//! The whole launch as one straight line: options → gather (host facts, image, GPU and MPI
//! discovery, host paths) → plan → apply.

use crate::apply::share::{self, Role};
use crate::apply::supervisor::{self, LaunchSettings};
use crate::debug;
use crate::gather::host::HostInfo;
use crate::gather::paths::HostPaths;
use crate::gather::site_config::SiteConfig;
use crate::gather::{gpu, mpi, Gathered};
use crate::image::Opened;
use crate::options::LaunchOptions;
use crate::plan::{self, Plan};
use anyhow::Result;

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
    let opened = Opened::open(&opts.image)?;
    let image = opened.view();
    debug::step(format_args!("image opened ({})", image.desc().format));
    // MPI is checked against the image's own MPI, so it is gathered once the image is open.
    injection.extend(mpi::gather(opts, &site, image)?);
    let paths = HostPaths::gather(opts, &host, &site, &injection)?;
    let facts = Gathered {
        host,
        site,
        injection,
        paths,
    };
    let plan = plan::build(opts, &facts, image)?;
    debug::step("plan built");
    if debug {
        eprint!("{plan}");
    }
    for w in &plan.warnings {
        debug::warn(w);
    }
    let role = share_role(opts, &facts.host, &plan);
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
    };
    let status = supervisor::launch(&plan, opened.archive(), &settings, role);
    // The image server's messages reach stderr before the launcher exits; a stderr nobody
    // reads holds the exit for this long at most.
    crate::fuse::report::flush(REPORT_FLUSH_LIMIT);
    status
}

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
        .and_then(|node| share::key(plan.uid, &node, &step, &plan.image.path))
        .and_then(|key| {
            // Everything the root is built from: ranks that agree on it use one root.
            let flavour = share::flavour(&(
                &plan.mounts,
                &plan.upper,
                plan.writable_root,
                &plan.overlay_dir,
            ))?;
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
