//! Stage 2, gather: read the host once (the caller's identity, site config, GPU, CDI and MPI
//! discovery, the host paths the planner will ask about) into plain data. It reads the host and
//! the image but never builds a mount step.

pub mod cdi;
pub(crate) mod gpu;
pub(crate) mod host;
pub mod injection;
pub(crate) mod mpi;
pub(crate) mod overlays;
pub(crate) mod paths;
pub mod site_config;

use host::HostInfo;
use injection::Injection;
use paths::HostPaths;
use site_config::SiteConfig;

/// Everything the planner gets from the host, read-only once gathered.
#[derive(Clone, Debug)]
pub(crate) struct Gathered {
    pub host: HostInfo,
    /// The site configuration (system file, then the user's).
    pub site: SiteConfig,
    /// Host files to bring in (GPU, CDI, MPI).
    pub injection: Injection,
    /// The host paths the planner asks about, resolved.
    pub paths: HostPaths,
    /// `--overlay`: what each entry is, in the order given.
    pub overlays: Vec<overlays::Overlay>,
}
