//! Named instances (`launcher instance start IMAGE NAME`, `exec instance://NAME`): what the
//! user asked for, and the checks on a name.

use anyhow::{bail, Result};

/// What a launch does with a named instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceUse {
    /// `instance start IMAGE NAME [ARGS]`: create it, run its startscript, return once ready.
    Start(String),
    /// `exec|run|shell instance://NAME`: run inside the running instance.
    Join(String),
}

/// The scheme of an image argument that names a running instance.
pub const SCHEME: &str = "instance://";

/// The instance named by an image argument `instance://NAME`, None for any other image.
pub fn name_in_uri(image: &str) -> Option<Result<String>> {
    let name = image.strip_prefix(SCHEME)?;
    Some(check_name(name).map(|()| name.to_string()))
}

/// Longest name, so that the rendezvous files' names stay well under NAME_MAX.
const MAX_NAME: usize = 64;

/// A name is letters, digits, '-' and '_' (it is part of file names, and '.' ends a
/// rendezvous key), at most 64 of them, not starting with '-'.
pub fn check_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || name.len() > MAX_NAME || !ok_chars || name.starts_with('-') {
        bail!(
            "instance name '{name}': use 1 to {MAX_NAME} letters, digits, '-' or '_' (not starting with '-')"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "web-1", "db_2", &"x".repeat(64)] {
            check_name(good).unwrap();
        }
        for bad in ["", "a.b", "a/b", "-x", "é", &"x".repeat(65), "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uris_name_instances() {
        assert_eq!(name_in_uri("instance://web").unwrap().unwrap(), "web");
        assert!(name_in_uri("instance://../x").unwrap().is_err());
        assert!(name_in_uri("/images/a.sif").is_none());
    }
}
