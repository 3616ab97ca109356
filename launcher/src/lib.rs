//! Launcher runtime: a launch is one straight line through four stages, each a folder:
//!
//! 1. `options`: what the user asked for;
//! 2. `gather`: facts read from the host (identity, site config, GPU, CDI, MPI);
//! 3. `plan`: the launch as plain data, printed by `--debug`;
//! 4. `apply`: the system calls that carry it out.
//!
//! `launch` runs them in that order. Beside them, the leaves they use: `image` (opening and
//! reading images in-process), `linker` (ELF facts, ld.so.cache, the glibc guard), `fuse` (the
//! image server used by `apply`), `host_file` (bounded reads of host files), `private_dir` (per-user directories in shared places), `env_list` (the environment type) and `debug`.
//!
//! Public: the options and `launch` (the `launcher` command), images and `inspect`, and the
//! parsers of site config and CDI specs (the fuzz targets drive them). The rest is the crate's.
pub(crate) mod apply;
pub mod debug;
pub(crate) mod env_list;
pub(crate) mod fuse;
pub mod gather;
pub(crate) mod host_file;
pub mod image;
pub mod launch;
pub(crate) mod linker;
pub mod options;
pub(crate) mod plan;
pub(crate) mod private_dir;

/// For the fuzz targets (fuzz/), which drive the planner with fuzzed site configs and
/// injections, and read fuzzed environment scripts; not an interface for anything else.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::plan::environment;

    use crate::gather::host::HostInfo;
    use crate::gather::injection::Injection;
    use crate::gather::paths::HostPaths;
    use crate::gather::site_config::SiteConfig;
    use crate::gather::Gathered;
    use crate::image::view::ImageView;
    use crate::options::LaunchOptions;
    use std::path::Path;

    /// The `--debug` text of the plan for a made-up caller (uid and gid 4242, home and working
    /// directory `home`) with this site config and injection, host paths resolved here.
    pub fn plan_text(
        opts: &LaunchOptions,
        home: &Path,
        site: SiteConfig,
        injection: Injection,
        image: &dyn ImageView,
    ) -> anyhow::Result<String> {
        let host = HostInfo {
            uid: 4242,
            gid: 4242,
            user: "fuzz".into(),
            home: home.to_path_buf(),
            shell: "/bin/sh".into(),
            gecos: String::new(),
            cwd: home.to_path_buf(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("LD_LIBRARY_PATH".into(), "/host/lib".into()),
            ],
            group_names: vec![],
            existing_etc: vec![],
            pmix_dirs: vec![],
        };
        let paths = HostPaths::gather(opts, &host, &site, &injection)?;
        let facts = Gathered {
            host,
            site,
            injection,
            paths,
            overlays: Vec::new(),
        };
        Ok(crate::plan::build(opts, &facts, image)?.to_string())
    }
}
