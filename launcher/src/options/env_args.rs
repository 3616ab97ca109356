//! `--env NAME=VALUE` and `--env-file FILE`: the user's variables, parsed and checked before
//! anything else happens, with the names shell and images can hold.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// A variable name a shell accepts: a letter or `_`, then letters, digits and `_`.
pub fn valid_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse `K=V` for `--env` (also accepts a comma-free single pair).
pub fn parse_assignment(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if valid_name(k) => Ok((k.to_string(), v.to_string())),
        _ => bail!("--env '{s}': expected NAME=VALUE with NAME made of letters, digits and _"),
    }
}

/// Read an `--env-file`: `K=V` lines, `#` comments and blank lines; `export ` is allowed.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading env file '{}'", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim();
        match line.split_once('=') {
            Some((k, v)) if valid_name(k) => out.push((k.to_string(), unquote(v))),
            _ => bail!(
                "env file '{}' line {}: expected NAME=VALUE, found '{line}'",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(out)
}

/// A value without one level of matching quotes.
pub fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::env_list::from_pairs as kv;

    #[test]
    fn assignment_and_env_file() {
        assert_eq!(
            parse_assignment("A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert!(parse_assignment("1A=b").is_err());
        assert!(parse_assignment("novalue").is_err());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("envfile");
        std::fs::write(&dir, "# c\n\nexport A=\"1 2\"\nB=3\n").unwrap();
        assert_eq!(
            read_env_file(&dir).unwrap(),
            kv(&[("A", "1 2"), ("B", "3")])
        );
        std::fs::write(&dir, "oops\n").unwrap();
        let err = read_env_file(&dir).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
