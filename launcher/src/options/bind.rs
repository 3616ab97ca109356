//! `-B/--bind` specifications in Apptainer's syntax: `SRC[:DST[:OPTS]]`, comma-separated lists.

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

/// One user-requested bind, as typed (paths not yet resolved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindSpec {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

/// Parse one `--bind` argument, which may hold several comma-separated binds.
pub fn parse_bind_list(arg: &str) -> Result<Vec<BindSpec>> {
    arg.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(spec: &str) -> Result<BindSpec> {
    let parts: Vec<&str> = spec.trim().split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [src] => (*src, *src, None),
        [src, last] if is_option_list(last) => (*src, *src, Some(*last)),
        [src, dst] => (*src, *dst, None),
        [src, dst, opts] => (*src, *dst, Some(*opts)),
        _ => bail!("bind '{spec}': expected SRC[:DST[:ro|rw]]"),
    };
    if src.is_empty() || dst.is_empty() {
        bail!("bind '{spec}': empty source or destination");
    }
    if !dst.starts_with('/') {
        bail!("bind '{spec}': destination '{dst}' must be an absolute path");
    }
    let mut readonly = false;
    for opt in opts.unwrap_or("").split(';').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => readonly = true,
            "rw" => readonly = false,
            other => bail!("bind '{spec}': unknown option '{other}' (known: ro, rw)"),
        }
    }
    Ok(BindSpec {
        src: PathBuf::from(src),
        dst: PathBuf::from(dst),
        readonly,
    })
}

// `SRC:ro` means SRC at the same place, read-only (as in Apptainer).
fn is_option_list(s: &str) -> bool {
    !s.is_empty() && s.split(';').all(|o| o == "ro" || o == "rw")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str, dst: &str, ro: bool) -> BindSpec {
        BindSpec {
            src: src.into(),
            dst: dst.into(),
            readonly: ro,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(
            parse_bind_list("/data").unwrap(),
            vec![b("/data", "/data", false)]
        );
        assert_eq!(
            parse_bind_list("/data:/mnt").unwrap(),
            vec![b("/data", "/mnt", false)]
        );
        assert_eq!(
            parse_bind_list("/data:/mnt:ro").unwrap(),
            vec![b("/data", "/mnt", true)]
        );
        assert_eq!(
            parse_bind_list("/data:ro").unwrap(),
            vec![b("/data", "/data", true)]
        );
        assert_eq!(
            parse_bind_list("/a,/b:/c:rw").unwrap(),
            vec![b("/a", "/a", false), b("/b", "/c", false)]
        );
        assert_eq!(
            parse_bind_list("rel/dir:/x").unwrap(),
            vec![b("rel/dir", "/x", false)]
        );
    }

    #[test]
    fn errors() {
        assert!(parse_bind_list("/a:/b:xx").is_err());
        assert!(parse_bind_list("/a:b").is_err());
        assert!(parse_bind_list("/a:/b:ro:extra").is_err());
        assert!(parse_bind_list(":/b").is_err());
    }
}
