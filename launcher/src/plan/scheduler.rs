//! What a job step's MPI wiring needs from the host besides the environment.
//!
//! Slurm's pmix plugin (and Open MPI's own PMIx server under mpirun) tells each rank where its
//! server keeps the shared-memory data store: `PMIX_SERVER_TMPDIR` and `PMIX_DSTORE_*_BASE_PATH`,
//! e.g. `$SlurmdSpoolDir/pmix.<job>.<step>/`. The rank maps files there during `MPI_Init`, so
//! those directories must be visible at the same paths inside the container. The rest of the
//! wiring needs nothing from us: the server is reached over TCP on 127.0.0.1 (we keep the host
//! network namespace), pmi2's `PMI_FD` is an inherited descriptor (we close none), and ranks on
//! a node meet in /dev/shm (bound with /dev).

use crate::gather::paths::HostPaths;
use crate::plan::MountStep;
use anyhow::Result;
use std::path::PathBuf;

/// Binds (same path inside as outside, writable) for the PMIx server directories that exist
/// on the host and that no earlier bind already shows at the same path. `covered` lists the
/// (host source, container destination) pairs of the earlier binds.
pub fn binds(
    pmix_dirs: &[PathBuf],
    paths: &HostPaths,
    covered: &[(PathBuf, PathBuf)],
) -> Result<Vec<MountStep>> {
    let mut out = Vec::new();
    for dst in pmix_dirs {
        // A directory the server has not made (or already removed) is not ours to fail on.
        let Some(found) = paths.get(dst)? else {
            continue;
        };
        let src = &found.canonical;
        let shown = covered
            .iter()
            .any(|(s, d)| s == d && (src.starts_with(s) || dst.starts_with(s)));
        if !shown && found.is_dir {
            out.push(MountStep::Bind {
                src: src.clone(),
                dst: dst.clone(),
                readonly: false,
                recursive: false,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_already_shown_at_the_same_path_are_not_bound_again() {
        let step = PathBuf::from("/scratch/job/pmix.1.0");
        let dirs = vec![step.clone()];
        let paths = HostPaths::from_list(&[
            (
                "/scratch/job/pmix.1.0",
                Some(("/scratch/job/pmix.1.0", true)),
            ),
            ("/gone/pmix.2.0", None),
        ]);
        let parent = PathBuf::from("/scratch/job");
        assert!(binds(&dirs, &paths, &[(parent.clone(), parent.clone())])
            .unwrap()
            .is_empty());
        // Shown elsewhere (or not at all): bound at its own path.
        assert_eq!(
            binds(&dirs, &paths, &[(parent.clone(), "/elsewhere".into())]).unwrap(),
            vec![MountStep::Bind {
                src: step.clone(),
                dst: step.clone(),
                readonly: false,
                recursive: false
            }]
        );
        let gone = vec![PathBuf::from("/gone/pmix.2.0")];
        assert!(
            binds(&gone, &paths, &[]).unwrap().is_empty(),
            "a missing dir is skipped"
        );
    }
}
