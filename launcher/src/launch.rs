//! The whole launch as one straight line: host facts → image → plan → apply.

use crate::debug;
use crate::host::HostInfo;
use crate::image::Image;
use crate::image_view::ImageView;
use crate::options::LaunchOptions;
use crate::plan;
use crate::supervisor::{self, LaunchSettings};
use anyhow::Result;

/// Run the launch and return the exit status the launcher should leave with.
pub fn launch(opts: &LaunchOptions, debug: bool, tuning: &Tuning) -> Result<i32> {
    debug::enable(debug);
    let mut host = HostInfo::gather()?;
    host.injection = crate::gpu::gather(opts, &host)?;
    debug::step("host facts gathered");
    let image = Image::open(&opts.image)?;
    debug::step(format_args!("image opened ({})", image.desc().format));
    // MPI is checked against the image's own MPI, so it is gathered once the image is open.
    host.injection
        .extend(crate::mpi::gather(opts, &host, &image)?);
    let plan = plan::build(opts, &host, &image)?;
    debug::step("plan built");
    if debug {
        eprint!("{plan}");
    }
    for w in &plan.warnings {
        eprintln!("launcher: warning: {w}");
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
    supervisor::launch(&plan, image.archive.clone(), &settings)
}

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
