//! Per-user directories in places everyone may write (`/tmp/launcher-UID`, and what lies in
//! them): created private to the user, and refused when someone else made them first or could
//! write them. A leaf used by `apply` (the rendezvous of shared instances) and `fuse` (the
//! block cache).

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode};
use nix::NixPath;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The directory `dir` (the `what` of messages), created private to `uid` if missing; an
/// error naming its owner (`name_owner`: by user name, one user-database lookup) if it is
/// not private to `uid`. Checked by path, then again on the open descriptor, which is what
/// callers use.
pub fn open(dir: &Path, uid: u32, what: &str, name_owner: bool) -> Result<OwnedFd> {
    make(AT_FDCWD, dir, dir, what)?;
    // Looked at before opening, so that a directory we may not even open is refused with its
    // owner named.
    let st = nix::sys::stat::lstat(dir).with_context(|| format!("stat '{}'", dir.display()))?;
    refuse_unless_private(dir, uid, &st, name_owner)?;
    open_private(AT_FDCWD, dir, dir, uid, what, name_owner)
}

/// `open` for `name` in the private directory `parent` (shown as `path` in messages), made
/// and opened through the descriptor: nothing is resolved by path again.
pub fn open_in(parent: &OwnedFd, name: &str, path: &Path, uid: u32, what: &str) -> Result<OwnedFd> {
    make(parent, name, path, what)?;
    open_private(parent, name, path, uid, what, false)
}

/// Creates the directory `name` (relative to `parent`; `shown` in messages) private to the
/// caller, unless it exists.
fn make<P: ?Sized + NixPath>(parent: impl AsFd, name: &P, shown: &Path, what: &str) -> Result<()> {
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => bail!("'{}': cannot create the {what}: {e}", shown.display()),
    }
}

/// Opens the directory `name` (relative to `parent`; `shown` in messages), not following a
/// symlink, and refuses it unless the open descriptor is a directory private to `uid`.
fn open_private<P: ?Sized + NixPath>(
    parent: impl AsFd,
    name: &P,
    shown: &Path,
    uid: u32,
    what: &str,
    name_owner: bool,
) -> Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        parent,
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| anyhow!("'{}': cannot open the {what}: {e}", shown.display()))?;
    let st = fstat(&fd).with_context(|| format!("stat '{}'", shown.display()))?;
    refuse_unless_private(shown, uid, &st, name_owner)?;
    Ok(fd)
}

/// `$XDG_RUNTIME_DIR` (`run`) when it is `uid`'s own runtime directory (made by logind,
/// private to the user, so nobody else can take a name in it first). One inherited from
/// another node or user (srun passes the environment on) is passed over.
pub fn users_runtime_dir(run: Option<&str>, uid: u32) -> Option<&Path> {
    use std::os::unix::fs::MetadataExt;
    let run = Path::new(run?);
    let private =
        std::fs::metadata(run).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
    (run.is_absolute() && private).then_some(run)
}

/// An error naming the owner unless `st` is a directory of `uid`'s that nobody else may use.
fn refuse_unless_private(
    dir: &Path,
    uid: u32,
    st: &nix::sys::stat::FileStat,
    name_owner: bool,
) -> Result<()> {
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if is_dir && st.st_uid == uid && st.st_mode & 0o077 == 0 {
        return Ok(());
    }
    let owner = match name_owner {
        true => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(st.st_uid))
            .ok()
            .flatten()
            .map(|u| format!(" ({})", u.name))
            .unwrap_or_default(),
        false => String::new(),
    };
    bail!(
        "'{}' is not a directory private to uid {uid} (owner {}{owner}, mode {:o})",
        dir.display(),
        st.st_uid,
        st.st_mode & 0o7777
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_directory_is_made_private_and_an_open_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let made = tmp.path().join("mine");
        open(&made, uid, "test directory", true).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let open_to_all = tmp.path().join("open");
        std::fs::create_dir(&open_to_all).unwrap();
        std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open(&open_to_all, uid, "test directory", true).unwrap_err();
        assert!(
            format!("{e:#}").contains("is not a directory private to uid"),
            "{e:#}"
        );
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        assert!(
            open(&link, uid, "test directory", true).is_err(),
            "a symlink was followed"
        );
    }
}
