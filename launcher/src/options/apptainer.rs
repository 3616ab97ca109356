//! Apptainer's environment spelling of options, so that job scripts and site modules written
//! for Apptainer (or SingularityCE) work unchanged: every option with an environment key can be
//! set as `APPTAINER_<KEY>`, or as `SINGULARITY_<KEY>` when the `APPTAINER_` one is unset.
//!
//! A value given on the command line wins over the environment; binds from both apply (the
//! environment's first), as in Apptainer, where a site module's `APPTAINER_BINDPATH` and a
//! user's `-B` add up. Booleans take `1`/`true`/`yes` and `0`/`false`/`no` (any case); anything
//! else is an error that names the variable, not a silent "off".

use anyhow::{bail, Result};

/// The value of `APPTAINER_<key>`, else of `SINGULARITY_<key>`, with the variable's name.
pub fn value<'a>(env: &'a [(String, String)], key: &str) -> Option<(String, &'a str)> {
    ["APPTAINER_", "SINGULARITY_"].iter().find_map(|prefix| {
        let name = format!("{prefix}{key}");
        crate::env_list::get(env, &name).map(|v| (name, v))
    })
}

/// The first of `keys` that is set (Apptainer lists aliases: `BIND`, `BINDPATH`).
pub fn first<'a>(env: &'a [(String, String)], keys: &[&str]) -> Option<(String, &'a str)> {
    keys.iter().find_map(|k| value(env, k))
}

/// Every one of `keys` that is set, in order (for lists that add up, such as binds).
pub fn all<'a>(env: &'a [(String, String)], keys: &[&str]) -> Vec<(String, &'a str)> {
    keys.iter().filter_map(|k| value(env, k)).collect()
}

/// A boolean option from the environment: false when unset or empty.
pub fn flag(env: &[(String, String)], keys: &[&str]) -> Result<bool> {
    let Some((name, v)) = first(env, keys) else {
        return Ok(false);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{name}='{v}': expected 1, true or yes (or 0, false, no)"),
    }
}

/// `--env A=1,B=2`: Apptainer's --env takes a comma-separated list. A piece without `=` is
/// the rest of the previous value (`--env PATH=/a,/b` keeps its comma).
pub fn split_env_list(arg: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in arg.split(',') {
        let starts_assignment = piece
            .split_once('=')
            .is_some_and(|(k, _)| crate::options::env_args::valid_name(k));
        match out.last_mut() {
            Some(prev) if !starts_assignment => {
                prev.push(',');
                prev.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::env_list::from_pairs as env;

    #[test]
    fn apptainer_first_then_singularity() {
        let e = env(&[("SINGULARITY_BIND", "/s"), ("APPTAINER_BIND", "/a")]);
        assert_eq!(value(&e, "BIND"), Some(("APPTAINER_BIND".into(), "/a")));
        let e = env(&[("SINGULARITY_BINDPATH", "/s")]);
        assert_eq!(
            first(&e, &["BIND", "BINDPATH"]),
            Some(("SINGULARITY_BINDPATH".into(), "/s"))
        );
        let e = env(&[("APPTAINER_BIND", "/a"), ("APPTAINER_BINDPATH", "/b")]);
        assert_eq!(all(&e, &["BIND", "BINDPATH"]).len(), 2);
    }

    #[test]
    fn booleans() {
        for (v, want) in [
            ("1", true),
            ("TRUE", true),
            ("yes", true),
            ("0", false),
            ("", false),
        ] {
            let e = env(&[("APPTAINER_CONTAIN", v)]);
            assert_eq!(flag(&e, &["CONTAIN"]).unwrap(), want, "{v}");
        }
        assert!(!flag(&[], &["CONTAIN"]).unwrap());
        let e = env(&[("SINGULARITY_CLEANENV", "maybe")]);
        let err = flag(&e, &["CLEANENV"]).unwrap_err().to_string();
        assert!(err.starts_with("SINGULARITY_CLEANENV='maybe'"), "{err}");
    }

    #[test]
    fn env_lists() {
        assert_eq!(split_env_list("A=1,B=2"), ["A=1", "B=2"]);
        assert_eq!(split_env_list("PATH=/a,/b,C=3"), ["PATH=/a,/b", "C=3"]);
        assert_eq!(split_env_list("A=x=y"), ["A=x=y"]);
    }
}
