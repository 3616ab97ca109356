//! Facts about the calling user and the host, gathered once per launch.
//!
//! Everything the plan needs from the host is collected here, so the planner itself stays pure
//! and can be unit-tested with a hand-made `HostInfo`. The user database is read once
//! (getpwuid/getgrgid), never per file: thousands of ranks must not storm LDAP/SSSD.

use crate::options::clean_abs;
use anyhow::{Context, Result};
use nix::unistd::{Gid, Group, Uid, User};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct HostInfo {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    /// The passwd entry's home, or $HOME when set.
    pub home: PathBuf,
    pub shell: String,
    /// The caller's gecos field, kept in the generated passwd line.
    pub gecos: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Names of the caller's groups, by gid.
    pub group_names: Vec<(u32, String)>,
    /// Host files given to the container by default when they exist, with their content when
    /// it could be read (then the FUSE server serves a copy; otherwise they are bound).
    pub existing_etc: Vec<(PathBuf, Option<Vec<u8>>)>,
    /// The PMIx server directories a job step's environment names (see `plan::scheduler`).
    pub pmix_dirs: Vec<PathBuf>,
}

impl HostInfo {
    pub fn gather() -> Result<HostInfo> {
        let uid = Uid::current();
        let gid = Gid::current();
        let user = User::from_uid(uid).ok().flatten();
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let home = home(&env, || user.clone());
        let name = user
            .as_ref()
            .map(|u| u.name.clone())
            .or_else(|| crate::env_list::get(&env, "USER").map(str::to_string))
            .unwrap_or_else(|| format!("uid{}", uid.as_raw()));
        let groups: Vec<u32> = nix::unistd::getgroups()
            .context("reading the caller's supplementary groups")?
            .into_iter()
            .map(|g| g.as_raw())
            .filter(|g| *g != gid.as_raw())
            .collect();
        let mut group_names = Vec::new();
        for g in std::iter::once(gid.as_raw()).chain(groups.iter().copied()) {
            if let Ok(Some(grp)) = Group::from_gid(Gid::from_raw(g)) {
                group_names.push((g, grp.name));
            }
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let existing_etc = ["/etc/hosts", "/etc/resolv.conf", "/etc/localtime"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .map(|p| {
                let content = read_small(&p);
                (p, content)
            })
            .collect();
        Ok(HostInfo {
            pmix_dirs: pmix_dirs(&env),
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            user: name,
            home,
            shell: user
                .as_ref()
                .map(|u| u.shell.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/bin/sh".into()),
            gecos: user
                .as_ref()
                .map(|u| u.gecos.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cwd,
            env,
            group_names,
            existing_etc,
        })
    }

    pub fn env_var(&self, key: &str) -> Option<&str> {
        crate::env_list::get(&self.env, key)
    }
}

/// The caller's home: `$HOME` when it is absolute, else the passwd entry's (`user` is asked
/// only then), else `/`.
pub fn home(env: &[(String, String)], user: impl FnOnce() -> Option<User>) -> PathBuf {
    match crate::env_list::get(env, "HOME") {
        Some(h) if h.starts_with('/') => PathBuf::from(h),
        _ => user().map(|u| u.dir).unwrap_or_else(|| PathBuf::from("/")),
    }
}

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
        .filter_map(|(_, v)| clean_abs(Path::new(v)).ok())
        .filter(|p| p != Path::new("/"))
        .collect();
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// A host configuration file's content, if it is small enough to be served as a copy.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    const LIMIT: u64 = 1 << 20;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > LIMIT {
        return None;
    }
    std::fs::read(path).ok()
}

/// Resolve a host path to its canonical form, with an error that names it.
pub fn canonical_host_path(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path)
        .with_context(|| format!("{what} '{}' does not exist on the host", path.display()))
}

/// In a Slurm job (`SLURM_JOB_ID` set), the `slurmstepd` this process descends from, held as a
/// pidfd: it exits when the job step it runs ends, by scancel, a time limit or the batch
/// script's end, which is how a named instance started in a job learns that the job is over
/// (`apply::instance`). None outside a job, or when no ancestor is a slurmstepd (a shell on
/// the node that only carries a job's variables).
pub fn slurm_step_daemon(env: &[(String, String)]) -> Option<std::os::fd::OwnedFd> {
    crate::env_list::get_nonempty(env, "SLURM_JOB_ID")?;
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    let mut pid = nix::unistd::getppid().as_raw();
    while pid > 1 {
        if comm(pid).is_some_and(|c| c.trim_end() == "slurmstepd") {
            // SAFETY: pidfd_open with a pid and no flags; a non-negative result is a new fd.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                return None;
            }
            // SAFETY: the descriptor was just returned to us and is owned by nobody else.
            let fd =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
            // Still that process (not a pid reused since it was read): the pidfd refers to
            // whatever has the pid now, so look again.
            return comm(pid)
                .is_some_and(|c| c.trim_end() == "slurmstepd")
                .then_some(fd);
        }
        pid = parent(pid)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::env_list::from_pairs as env;

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
}
