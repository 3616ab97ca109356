//! Facts about the calling user and the host, gathered once per launch.
//!
//! Everything the plan needs from the host is collected here, so the planner itself stays pure
//! and can be unit-tested with a hand-made `HostInfo`. The user database is read once
//! (getpwuid/getgrgid), never per file: thousands of ranks must not storm LDAP/SSSD.

use anyhow::{Context, Result};
use nix::unistd::{Gid, Group, Uid, User};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct HostInfo {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of the caller (for /etc/group; the kernel shows them as unmapped).
    pub groups: Vec<u32>,
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
    /// The site configuration (system file, then the user's).
    pub site: crate::site_config::SiteConfig,
    /// Host files to bring in (GPU, MPI), gathered once the options are known.
    pub injection: crate::injection::Injection,
}

impl HostInfo {
    pub fn gather() -> Result<HostInfo> {
        let uid = Uid::current();
        let gid = Gid::current();
        let user = User::from_uid(uid).ok().flatten();
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let env_home = env
            .iter()
            .find(|(k, _)| k == "HOME")
            .map(|(_, v)| v.clone());
        let home = match (&env_home, &user) {
            (Some(h), _) if h.starts_with('/') => PathBuf::from(h),
            (_, Some(u)) => u.dir.clone(),
            _ => PathBuf::from("/"),
        };
        let name = user
            .as_ref()
            .map(|u| u.name.clone())
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| k == "USER")
                    .map(|(_, v)| v.clone())
            })
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
        let site = crate::site_config::SiteConfig::load(&env, &home)?;
        Ok(HostInfo {
            site,
            injection: Default::default(),
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            groups,
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
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Read a host file the launcher parses (ld.so.cache, CDI specs): a regular file of at most
/// `limit` bytes. Opened non-blocking so a FIFO cannot hang the launch, and never read past the
/// limit, so `/dev/zero` named by a config cannot exhaust memory.
pub fn read_host_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{}: not a regular file", path.display());
    }
    if meta.len() > limit {
        anyhow::bail!(
            "{}: {} bytes, more than the {limit} this file may have",
            path.display(),
            meta.len()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
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
