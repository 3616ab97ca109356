//! What a job step's MPI wiring needs from the host besides the environment.
//!
//! Slurm's pmix plugin (and Open MPI's own PMIx server under mpirun) tells each rank where its
//! server keeps the shared-memory data store: `PMIX_SERVER_TMPDIR` and `PMIX_DSTORE_*_BASE_PATH`,
//! e.g. `$SlurmdSpoolDir/pmix.<job>.<step>/`. The rank maps files there during `MPI_Init`, so
//! those directories must be visible at the same paths inside the container. The rest of the
//! wiring needs nothing from us: the server is reached over TCP on 127.0.0.1 (we keep the host
//! network namespace), pmi2's `PMI_FD` is an inherited descriptor (we close none), and ranks on
//! a node meet in /dev/shm (bound with /dev).

use crate::plan::MountStep;
use std::path::{Path, PathBuf};

/// Variables naming PMIx server directories a client maps files from.
fn is_pmix_dir_var(name: &str) -> bool {
    name == "PMIX_SERVER_TMPDIR"
        || (name.starts_with("PMIX_DSTORE_") && name.ends_with("_BASE_PATH"))
}

/// The PMIx server directories named in the environment, lexically cleaned, without those
/// that lie inside another one of them.
pub fn pmix_dirs(env: &[(String, String)]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env
        .iter()
        .filter(|(k, _)| is_pmix_dir_var(k))
        .filter_map(|(_, v)| crate::plan::clean_abs(Path::new(v)).ok())
        .filter(|p| p != Path::new("/"))
        .collect();
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// Binds (same path inside as outside, writable) for the PMIx server directories that exist
/// on the host and that no earlier bind already shows at the same path. `covered` lists the
/// (host source, container destination) pairs of the earlier binds.
pub fn binds(env: &[(String, String)], covered: &[(PathBuf, PathBuf)]) -> Vec<MountStep> {
    pmix_dirs(env)
        .into_iter()
        .filter_map(|dst| {
            // A directory the server has not made (or already removed) is not ours to fail on.
            let src = std::fs::canonicalize(&dst).ok()?;
            let shown = covered
                .iter()
                .any(|(s, d)| s == d && (src.starts_with(s) || dst.starts_with(s)));
            (!shown && src.is_dir()).then_some(MountStep::Bind {
                src,
                dst,
                readonly: false,
                recursive: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn slurm_pmix_step_dirs_collapse_to_the_server_tmpdir() {
        let e = env(&[
            ("PMIX_SERVER_TMPDIR", "/var/spool/slurmd/pmix.7.0/"),
            (
                "PMIX_DSTORE_21_BASE_PATH",
                "/var/spool/slurmd/pmix.7.0//pmix_dstor_ds21_5904",
            ),
            (
                "PMIX_DSTORE_ESH_BASE_PATH",
                "/var/spool/slurmd/pmix.7.0//pmix_dstor_ds12_5904",
            ),
            ("PMIX_SYSTEM_TMPDIR", "/tmp"),
            (
                "PMIX_SERVER_URI4",
                "pmix-server.5904;tcp4://127.0.0.1:59333",
            ),
            ("SLURM_JOB_ID", "7"),
        ]);
        assert_eq!(
            pmix_dirs(&e),
            vec![PathBuf::from("/var/spool/slurmd/pmix.7.0")]
        );
    }

    #[test]
    fn relative_root_and_unrelated_values_are_ignored() {
        let e = env(&[
            ("PMIX_SERVER_TMPDIR", "relative/dir"),
            ("PMIX_DSTORE_21_BASE_PATH", "/"),
            ("PMIX_DSTORE_X", "/somewhere"),
        ]);
        assert!(pmix_dirs(&e).is_empty());
    }

    #[test]
    fn dirs_already_shown_at_the_same_path_are_not_bound_again() {
        let tmp = std::env::temp_dir().join(format!("sched-test-{}", std::process::id()));
        let step = tmp.join("pmix.1.0");
        std::fs::create_dir_all(&step).unwrap();
        let canon = std::fs::canonicalize(&step).unwrap();
        let e = env(&[("PMIX_SERVER_TMPDIR", canon.to_str().unwrap())]);
        let parent = std::fs::canonicalize(&tmp).unwrap();
        assert!(binds(&e, &[(parent.clone(), parent.clone())]).is_empty());
        // Shown elsewhere (or not at all): bound at its own path.
        assert_eq!(
            binds(&e, &[(parent.clone(), "/elsewhere".into())]),
            vec![MountStep::Bind {
                src: canon.clone(),
                dst: canon.clone(),
                readonly: false,
                recursive: false
            }]
        );
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(binds(&e, &[]).is_empty(), "a missing dir is skipped");
    }
}
