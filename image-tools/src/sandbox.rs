//! `launcher build --sandbox DIR SOURCE`: the staged root placed at DIR as a writable
//! directory tree the caller owns, instead of written as an image (Apptainer's sandbox).
//!
//! The staging directory is made beside DIR (same file system), so the finished tree is
//! renamed into place: DIR appears only when the build succeeded, whole. What the staging
//! recorded but could not put on disk (OCI ownership, device nodes) stays out: every file
//! is the caller's, as with Apptainer's unprivileged sandboxes.

use crate::build::{Error, Result};
use crate::tree::Overrides;
use std::path::{Path, PathBuf};

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        msg: e.to_string(),
    }
}

/// Where the build stages: DIR's parent directory (so that the tree can be renamed to DIR).
/// DIR must not be an existing non-empty directory or a file unless `force`.
pub fn check_target(dir: &Path, force: bool) -> Result<PathBuf> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| io_err(dir, e))?
                .next()
                .is_none();
            if !empty && !force {
                return Err(Error::Usage(format!(
                    "'{}' exists and is not empty; use --force to replace it",
                    dir.display()
                )));
            }
        }
        Ok(_) if !force => {
            return Err(Error::Usage(format!(
                "'{}' exists and is not a directory; use --force to replace it",
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    let parent = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Usage(format!(
            "'{}': the directory '{}' does not exist",
            dir.display(),
            parent.display()
        )));
    }
    std::fs::canonicalize(&parent).map_err(|e| io_err(&parent, e))
}

/// Puts the staged `root` at `dir` (replacing what is there: `check_target` allowed it).
/// `overrides`: what an OCI staging recorded; modes are applied where they keep the tree the
/// caller's to change and remove (owner read/write, and search on directories, stay on;
/// no setuid or setgid bit), placeholders of device nodes are removed.
pub fn install(root: &Path, overrides: &Overrides, dir: &Path, scratch: &Path) -> Result<()> {
    apply_overrides(root, overrides)?;
    let old = scratch.join("replaced");
    let replaced = match std::fs::symlink_metadata(dir) {
        Ok(_) => {
            std::fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
            true
        }
        Err(_) => false,
    };
    if let Err(e) = std::fs::rename(root, dir) {
        if replaced {
            let _ = std::fs::rename(&old, dir);
        }
        return Err(io_err(dir, e));
    }
    if replaced {
        if std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
            crate::build::remove_tree(&old);
        } else {
            let _ = std::fs::remove_file(&old);
        }
    }
    Ok(())
}

fn apply_overrides(root: &Path, overrides: &Overrides) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, ov) in overrides {
        let p = root.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if ov.special.is_some() {
            // An empty file standing for a device node or fifo the caller could not make.
            if meta.is_file() && meta.len() == 0 {
                std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
            }
            continue;
        }
        if let Some(mode) = ov.mode {
            let owner = if meta.is_dir() { 0o700 } else { 0o600 };
            let mode = (mode & 0o1777) | owner;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_err(&p, e))?;
        }
    }
    Ok(())
}

/// A copy of the directory `from` at `to` (which must not exist), with modes, times and
/// hard links; as the caller, so files they cannot read are an error.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to).map_err(|e| io_err(to, e))?;
    let out = std::process::Command::new("cp")
        .args(["-a", "--no-preserve=ownership", "--"])
        .arg(from.join("."))
        .arg(to)
        .output()
        .map_err(|e| io_err(Path::new("cp"), e))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "copying '{}': {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{EntryOverride, Special};

    #[test]
    fn targets_that_are_not_empty_need_force() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sb");
        assert_eq!(
            check_target(&dir, false).unwrap(),
            d.path().canonicalize().unwrap()
        );
        std::fs::create_dir(&dir).unwrap();
        check_target(&dir, false).unwrap();
        std::fs::write(dir.join("f"), "x").unwrap();
        let e = check_target(&dir, false).unwrap_err().to_string();
        assert!(e.contains("exists and is not empty; use --force"), "{e}");
        check_target(&dir, true).unwrap();
        let e = check_target(&d.path().join("no/such/sb"), false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn install_replaces_the_target_and_keeps_the_tree_the_callers() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/null"), "").unwrap();
        std::fs::write(root.join("suid"), "x").unwrap();
        let mut ov = Overrides::new();
        let mode = |m| EntryOverride {
            mode: Some(m),
            ..Default::default()
        };
        ov.insert("tmp".into(), mode(0o1777));
        ov.insert("suid".into(), mode(0o4555));
        ov.insert(
            "dev/null".into(),
            EntryOverride {
                special: Some(Special::CharDevice { major: 1, minor: 3 }),
                ..Default::default()
            },
        );
        let dir = d.path().join("sb");
        std::fs::create_dir_all(dir.join("old")).unwrap();
        let scratch = d.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        install(&root, &ov, &dir, &scratch).unwrap();
        let m = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m("tmp"), 0o1777);
        assert_eq!(m("suid"), 0o755);
        assert!(!dir.join("dev/null").exists());
        assert!(!dir.join("old").exists());
        assert!(!root.exists());
        assert!(!scratch.join("replaced").exists());
    }
}
