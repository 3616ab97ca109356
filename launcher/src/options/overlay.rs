//! `--overlay SPEC[,SPEC...]` (repeatable; `APPTAINER_OVERLAY`): Apptainer's overlay list,
//! parsed into paths with their `:ro` suffix. What each path is (a directory, a SquashFS or
//! SIF image) is a host fact, found by `gather::overlays`.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// One `--overlay` entry, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlaySpec {
    pub path: PathBuf,
    /// `PATH:ro`: a read-only layer even where the path could be written (a directory).
    pub readonly: bool,
    /// The entry as the user wrote it, for error messages.
    pub given: String,
}

/// The entries of one `--overlay` value: a comma-separated list (Apptainer's flag is a string
/// slice, which splits on commas), each `PATH` or `PATH:ro`.
pub fn parse(value: &str) -> Result<Vec<OverlaySpec>> {
    let mut out = Vec::new();
    for given in value.split(',') {
        if given.is_empty() {
            bail!("--overlay {value}: an empty entry in the list");
        }
        let (path, readonly) = match given.rsplit_once(':') {
            None => (given, false),
            Some((path, "ro")) if !path.is_empty() => (path, true),
            Some((_, suffix)) => bail!(
                "--overlay {given}: unknown suffix ':{suffix}' (only ':ro', a read-only layer, is taken)"
            ),
        };
        out.push(OverlaySpec {
            path: PathBuf::from(path),
            readonly,
            given: given.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, readonly: bool, given: &str) -> OverlaySpec {
        OverlaySpec {
            path: path.into(),
            readonly,
            given: given.into(),
        }
    }

    #[test]
    fn lists_and_read_only_suffixes() {
        assert_eq!(parse("dir").unwrap(), vec![spec("dir", false, "dir")]);
        assert_eq!(
            parse("a.sqfs,/x/d:ro").unwrap(),
            vec![
                spec("a.sqfs", false, "a.sqfs"),
                spec("/x/d", true, "/x/d:ro")
            ]
        );
        for bad in ["d:rw", "a,,b", ":ro", "x:"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("d:rw")
            .unwrap_err()
            .to_string()
            .contains("unknown suffix ':rw'"));
    }
}
