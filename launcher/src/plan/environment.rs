//! The command's environment: host → image → user, in that order of precedence (later wins).
//!
//! docs/environment.md describes the rules; the unit tests below pin them.

use crate::env_list;
use crate::options::env_args::{unquote, valid_name};

/// PATH used when neither the image nor the user sets one: the host's PATH names host
/// directories (modules, spack) that rarely mean anything inside an image.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host variables with these prefixes are passed in without it (`LAUNCHERENV_FOO=1` →
/// `FOO=1`), overriding the image: ours, and Apptainer's and SingularityCE's, which job scripts
/// use. Applied in this order, so with two spellings of one name the later prefix wins.
/// `PREPEND_PATH` and `APPEND_PATH` under any of them add to PATH instead.
pub const FORWARD_PREFIXES: &[&str] = &["SINGULARITYENV_", "APPTAINERENV_", "LAUNCHERENV_"];

fn forwarded(k: &str) -> Option<&str> {
    FORWARD_PREFIXES.iter().find_map(|p| k.strip_prefix(p))
}

/// Variables kept by `--cleanenv`, besides the scheduler's (SLURM_*, PMI*, OMPI_*, …),
/// which a job step cannot run without.
const CLEANENV_KEEP: &[&str] = &["HOME", "USER", "LOGNAME", "TERM", "LANG", "TZ", "DISPLAY"];
const CLEANENV_KEEP_PREFIXES: &[&str] =
    &["LC_", "SLURM_", "PMI_", "PMIX_", "OMPI_", "PRTE_", "MPI_"];

/// Inputs to the environment computation, all already read from host and image.
pub struct EnvInputs<'a> {
    pub host: &'a [(String, String)],
    pub cleanenv: bool,
    /// The image's own environment: `KEY=VALUE` strings (OCI config) …
    pub image_oci_env: &'a [String],
    /// … and the text of `/.singularity.d/env/*.sh`, in file-name order.
    pub image_env_scripts: &'a [(String, String)],
    /// `--env K=V` and `--env-file` entries, in command-line order.
    pub user: &'a [(String, String)],
    /// Variables the launcher itself sets (HOME inside, LAUNCHER_CONTAINER, …).
    pub launcher: &'a [(String, String)],
}

#[derive(Default)]
struct Env(Vec<(String, String)>);

impl Env {
    fn set(&mut self, k: &str, v: &str) {
        env_list::set(&mut self.0, k, v);
    }
    fn get(&self, k: &str) -> Option<&str> {
        env_list::get(&self.0, k)
    }
}

pub fn compute(inp: &EnvInputs) -> Vec<(String, String)> {
    let mut env = Env::default();
    for (k, v) in inp.host {
        if forwarded(k).is_some() || k == "PATH" {
            continue;
        }
        if inp.cleanenv && !keep_in_cleanenv(k) {
            continue;
        }
        env.set(k, v);
    }
    env.set("PATH", DEFAULT_PATH);
    for kv in inp.image_oci_env {
        if let Some((k, v)) = kv.split_once('=') {
            if valid_name(k) {
                env.set(k, v);
            }
        }
    }
    for (_, script) in inp.image_env_scripts {
        for (k, v) in parse_env_script(script, &|name| env.get(name).map(str::to_string)) {
            env.set(&k, &v);
        }
    }
    for (k, v) in inp.launcher {
        env.set(k, v);
    }
    for prefix in FORWARD_PREFIXES {
        for (k, v) in inp.host {
            let Some(name) = k.strip_prefix(prefix) else {
                continue;
            };
            let path = env.get("PATH").unwrap_or_default().to_string();
            match name {
                "PREPEND_PATH" => env.set("PATH", &format!("{v}:{path}")),
                "APPEND_PATH" => env.set("PATH", &format!("{path}:{v}")),
                _ if valid_name(name) => env.set(name, v),
                _ => {}
            }
        }
    }
    for (k, v) in inp.user {
        env.set(k, v);
    }
    env.0
}

fn keep_in_cleanenv(k: &str) -> bool {
    CLEANENV_KEEP.contains(&k) || CLEANENV_KEEP_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// Extract the unconditional assignments of an Apptainer env script.
///
/// We do not run a shell to read the image's environment (start-up cost, and no /bin/sh in
/// some images); we take the top-level `export K=V` / `K=V` lines, expand `$VAR`/`${VAR}` from
/// the environment built so far, and skip everything inside `if`/`case`/functions.
pub fn parse_env_script(
    script: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut depth: i32 = 0;
    for raw in script.lines() {
        let line = raw.trim();
        let first = line.split_whitespace().next().unwrap_or("");
        match first {
            "if" | "case" | "for" | "while" | "until" => depth += 1,
            "fi" | "esac" | "done" => depth -= 1,
            _ => {}
        }
        if line.ends_with("{") || line.ends_with("()") {
            depth += 1;
        }
        if line == "}" {
            depth -= 1;
        }
        if depth != 0 || line.starts_with('#') || raw.starts_with([' ', '\t']) {
            continue;
        }
        let body = line.strip_prefix("export ").unwrap_or(line).trim();
        let Some((k, v)) = body.split_once('=') else {
            continue;
        };
        if !valid_name(k) || v.contains("$(") || v.contains('`') {
            continue;
        }
        let local = |name: &str| -> Option<String> {
            out.iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, v)| v.clone())
                .or_else(|| lookup(name))
        };
        let value = expand(&unquote(v), &local);
        out.push((k.to_string(), value));
    }
    out
}

/// Expand `$NAME`, `${NAME}` and `${NAME:-default}`.
fn expand(v: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                let expr = &inner[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                let val = lookup(name).filter(|s| !s.is_empty() || default.is_none());
                out.push_str(&val.unwrap_or_else(|| default.unwrap_or("").to_string()));
                rest = &inner[end + 1..];
                continue;
            }
        }
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if len == 0 {
            out.push('$');
        } else {
            out.push_str(&lookup(&after[..len]).unwrap_or_default());
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    use crate::env_list::get;

    #[test]
    fn precedence_host_image_user() {
        let host = kv(&[
            ("A", "host"),
            ("B", "host"),
            ("PATH", "/host/bin"),
            ("LAUNCHERENV_C", "fwd"),
        ]);
        let oci = vec![
            "B=image".to_string(),
            "C=image".to_string(),
            "D=image".to_string(),
        ];
        let user = kv(&[("D", "user")]);
        let env = compute(&EnvInputs {
            host: &host,
            cleanenv: false,
            image_oci_env: &oci,
            image_env_scripts: &[],
            user: &user,
            launcher: &[],
        });
        assert_eq!(get(&env, "A"), Some("host"));
        assert_eq!(get(&env, "B"), Some("image"));
        assert_eq!(get(&env, "C"), Some("fwd"));
        assert_eq!(get(&env, "D"), Some("user"));
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get(&env, "LAUNCHERENV_C"), None);
    }

    #[test]
    fn apptainer_and_singularity_forwarding() {
        let host = kv(&[
            ("SINGULARITYENV_X", "sing"),
            ("APPTAINERENV_X", "app"),
            ("SINGULARITYENV_Y", "sing"),
            ("APPTAINERENV_PREPEND_PATH", "/pre"),
            ("SINGULARITYENV_APPEND_PATH", "/post"),
            ("SECRET", "s"),
        ]);
        let oci = vec!["X=image".to_string(), "PATH=/img/bin".to_string()];
        let env = compute(&EnvInputs {
            host: &host,
            cleanenv: true,
            image_oci_env: &oci,
            image_env_scripts: &[],
            user: &[],
            launcher: &[],
        });
        assert_eq!(
            get(&env, "X"),
            Some("app"),
            "APPTAINERENV_ wins over SINGULARITYENV_"
        );
        assert_eq!(get(&env, "Y"), Some("sing"));
        assert_eq!(get(&env, "PATH"), Some("/pre:/img/bin:/post"));
        assert_eq!(get(&env, "SECRET"), None, "--cleanenv still applies");
        assert_eq!(get(&env, "APPTAINERENV_X"), None);
    }

    #[test]
    fn cleanenv_keeps_scheduler_vars() {
        let host = kv(&[
            ("SECRET", "x"),
            ("SLURM_JOB_ID", "7"),
            ("PMI_FD", "11"),
            ("HOME", "/h"),
        ]);
        let env = compute(&EnvInputs {
            host: &host,
            cleanenv: true,
            image_oci_env: &[],
            image_env_scripts: &[],
            user: &[],
            launcher: &[],
        });
        assert_eq!(get(&env, "SECRET"), None);
        assert_eq!(get(&env, "SLURM_JOB_ID"), Some("7"));
        assert_eq!(get(&env, "PMI_FD"), Some("11"));
        assert_eq!(get(&env, "HOME"), Some("/h"));
    }

    #[test]
    fn env_script_top_level_only() {
        let script = "#!/bin/sh\nexport PATH=\"/opt/x/bin:$PATH\"\nFOO='bar baz'\nexport FOO\nif [ -z \"$X\" ]; then\n    Y=1\nfi\nZ=${UNSET:-dflt}\nW=$(date)\n";
        let got = parse_env_script(script, &|k| (k == "PATH").then(|| "/usr/bin".to_string()));
        assert_eq!(
            got,
            kv(&[
                ("PATH", "/opt/x/bin:/usr/bin"),
                ("FOO", "bar baz"),
                ("Z", "dflt")
            ])
        );
    }
}
