//! The command's environment: host → image → user, in that order of precedence (later wins).
//!
//! docs/environment.md describes the rules; the unit tests below pin them.

use crate::options::env_args::{unquote, valid_name};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

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
    /// `--env K=V` and `--env-file` entries, in command-line order.
    pub user: &'a [(String, String)],
    /// Variables the launcher itself sets (HOME inside, LAUNCHER_CONTAINER, …).
    pub launcher: &'a [(String, String)],
}

/// Bounds on the image's environment scripts (issue 20, finding 3: a script that doubled a
/// variable 40 times took gigabytes; 200k lines took 41 s). Past any of them the launch is
/// refused with the script and line named; docs/environment.md says why an error and not a
/// truncation.
///
/// The text of all scripts together (checked before a script is read, by `plan::build`).
pub const SCRIPTS_MAX_BYTES: u64 = 1 << 20;
/// One value: the kernel's own limit for one `NAME=value` string of execve (MAX_ARG_STRLEN,
/// 128 KiB); a longer variable could not reach the command anyway.
pub const VALUE_MAX_BYTES: usize = 128 << 10;
/// Distinct variables the scripts set, all together.
pub const VARIABLES_MAX: usize = 4096;
/// The values the scripts' assignments produce, all together (replaced ones included): with
/// the bound on the text, this bounds the work and the memory of reading the scripts.
pub const EXPANDED_MAX_BYTES: usize = 16 << 20;

/// The environment as it is built: in order, a name at most once, with an index so that
/// each look-up and assignment costs the same however many variables there are.
#[derive(Default)]
struct Env {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    fn set(&mut self, k: &str, v: &str) {
        match self.index.get(k) {
            Some(&i) => self.vars[i].1 = v.to_string(),
            None => {
                self.index.insert(k.to_string(), self.vars.len());
                self.vars.push((k.to_string(), v.to_string()));
            }
        }
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.index.get(k).map(|&i| self.vars[i].1.as_str())
    }
    fn unset(&mut self, k: &str) {
        if let Some(i) = self.index.remove(k) {
            self.vars.remove(i);
            for j in self.index.values_mut() {
                if *j > i {
                    *j -= 1;
                }
            }
        }
    }
}

impl From<Vec<(String, String)>> for Env {
    fn from(vars: Vec<(String, String)>) -> Env {
        let mut env = Env::default();
        for (k, v) in vars {
            env.set(&k, &v);
        }
        env
    }
}

/// What the image's scripts have used of their bounds so far.
#[derive(Default)]
pub struct ScriptBudget {
    bytes: u64,
    names: HashSet<String>,
    expanded: usize,
}

impl ScriptBudget {
    /// Count the text of the script at `path`: an error once all scripts together are
    /// longer than `SCRIPTS_MAX_BYTES`.
    pub fn add_script(&mut self, path: &str, len: u64) -> Result<()> {
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > SCRIPTS_MAX_BYTES {
            bail!(
                "{path}: the image's environment scripts are longer than {} MiB together \
                 ({} bytes up to this one)",
                SCRIPTS_MAX_BYTES >> 20,
                self.bytes
            );
        }
        Ok(())
    }
}

/// An edit made after the image's environment scripts, in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EnvEdit {
    Set(String, String),
    Unset(String),
    /// `value:$NAME` (just `value` when NAME is unset or empty).
    Prepend(String, String),
    /// `$NAME:value`.
    Append(String, String),
}

/// The environment in layers: what the image's scripts start from (`base`: the host's
/// variables, the default PATH, the image's OCI environment), then, after the scripts, the
/// `edits` (the launcher's variables, the forwarded `*ENV_` ones, `--env`; the site's and the
/// injection's are added by `integration::env_edits`).
pub struct EnvLayers {
    pub base: Vec<(String, String)>,
    pub edits: Vec<EnvEdit>,
}

/// The layers of the command's environment (all but the image's scripts).
pub fn layers(inp: &EnvInputs) -> EnvLayers {
    let mut base = Env::default();
    for (k, v) in inp.host {
        if forwarded(k).is_some() || k == "PATH" {
            continue;
        }
        if inp.cleanenv && !keep_in_cleanenv(k) {
            continue;
        }
        base.set(k, v);
    }
    base.set("PATH", DEFAULT_PATH);
    for kv in inp.image_oci_env {
        if let Some((k, v)) = kv.split_once('=') {
            if valid_name(k) {
                base.set(k, v);
            }
        }
    }
    let mut edits: Vec<EnvEdit> = inp
        .launcher
        .iter()
        .map(|(k, v)| EnvEdit::Set(k.clone(), v.clone()))
        .collect();
    for prefix in FORWARD_PREFIXES {
        for (k, v) in inp.host {
            let Some(name) = k.strip_prefix(prefix) else {
                continue;
            };
            edits.push(match name {
                "PREPEND_PATH" => EnvEdit::Prepend("PATH".into(), v.clone()),
                "APPEND_PATH" => EnvEdit::Append("PATH".into(), v.clone()),
                _ if valid_name(name) => EnvEdit::Set(name.into(), v.clone()),
                _ => continue,
            });
        }
    }
    edits.extend(
        inp.user
            .iter()
            .map(|(k, v)| EnvEdit::Set(k.clone(), v.clone())),
    );
    EnvLayers {
        base: base.vars,
        edits,
    }
}

/// `env` after the image's scripts, read without a shell (`parse_env_script`), or an error
/// naming the script past a bound.
pub fn apply_scripts(
    env: Vec<(String, String)>,
    scripts: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut env = Env::from(env);
    let mut budget = ScriptBudget::default();
    for (path, script) in scripts {
        budget.add_script(path, script.len() as u64)?;
        let assigned = parse_env_script(
            script,
            &|name| env.get(name).map(str::to_string),
            &mut budget,
        )
        .map_err(|e| anyhow!("{path}: {e}"))?;
        for (k, v) in assigned {
            env.set(&k, &v);
        }
    }
    Ok(env.vars)
}

/// `env` with `edits` made, in order.
pub fn apply_edits(env: Vec<(String, String)>, edits: &[EnvEdit]) -> Vec<(String, String)> {
    let mut env = Env::from(env);
    for edit in edits {
        match edit {
            EnvEdit::Set(k, v) => env.set(k, v),
            EnvEdit::Unset(k) => env.unset(k),
            EnvEdit::Prepend(k, v) => {
                let new = match env.get(k).filter(|old| !old.is_empty()) {
                    Some(old) => format!("{v}:{old}"),
                    None => v.clone(),
                };
                env.set(k, &new);
            }
            EnvEdit::Append(k, v) => {
                let new = match env.get(k).filter(|old| !old.is_empty()) {
                    Some(old) => format!("{old}:{v}"),
                    None => v.clone(),
                };
                env.set(k, &new);
            }
        }
    }
    env.vars
}

/// Apptainer's and SingularityCE's own scripts, which every image they build carries. What
/// they do the launcher does itself (`SINGULARITY_NAME`, `PS1`, its own library directory) or
/// concerns SCIF apps: they never call for a shell here.
pub const STOCK_SCRIPTS: &[&str] = &[
    "01-base.sh",
    "94-appsbase.sh",
    "95-apps.sh",
    "99-base.sh",
    "99-runtimevars.sh",
];

/// Set by the shell right before it reports: a report without it is not one.
const REPORT_MARKER: &str = "LAUNCHER_ENV_REPORTED";
/// In place of a report, when `cat` could not start: `NAME LENGTH SCRIPT` of a variable too
/// long to start any program with (the kernel refuses execve with E2BIG, and the shell could
/// only say "exit status 126").
const TOO_LONG_MARKER: &str = "LAUNCHER_ENV_TOO_LONG";

/// The most a shell's report of the environment may be (`ShellEnv`): the variables the scripts
/// may produce, with room for a large host environment.
pub const CAPTURED_MAX_BYTES: usize = EXPANDED_MAX_BYTES + (4 << 20);

/// Whether `parse_env_script` takes all of `script`: only comments, blank lines,
/// `[export] NAME=VALUE` with no command substitution, and `export NAME...`. Anything else
/// (`if`, `.`/`source`, `$(...)`, functions, `unset`, `conda activate`) needs a shell.
pub fn parses_fully(script: &str) -> bool {
    script.lines().all(|raw| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return true;
        }
        if let Some(names) = line.strip_prefix("export ") {
            if names.split_whitespace().all(valid_name) {
                return true;
            }
        }
        let body = line.strip_prefix("export ").unwrap_or(line).trim();
        match body.split_once('=') {
            Some((k, v)) => {
                valid_name(k)
                    && !v.contains("$(")
                    && !v.contains('`')
                    && !v.contains(';')
                    && !v.contains('&')
                    && !v.contains('|')
                    && simple_quoting(v)
                    && simple_expansions(v)
            }
            None => false,
        }
    })
}

/// Expansions the parser makes as the shell does: `$NAME`, `${NAME}` and `${NAME:-word}`,
/// not inside single quotes, and no leading `~`. Anything else (`${NAME%/*}`, `${#NAME}`,
/// `${NAME:+x}`, `$1`) is the shell's to expand.
fn simple_expansions(v: &str) -> bool {
    if v.starts_with('~') || (v.starts_with('\'') && v.contains('$')) {
        return false;
    }
    let mut rest = v;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return false;
            };
            let expr = &inner[..end];
            let name =
                expr.split_once(":-").map_or(
                    expr,
                    |(n, word)| {
                        if word.contains(['$', '{']) {
                            ""
                        } else {
                            n
                        }
                    },
                );
            if !valid_name(name) {
                return false;
            }
            rest = &inner[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 && !after.is_empty() && after != "\"" {
                return false;
            }
            if len > 0 && !valid_name(&after[..len]) {
                return false;
            }
            rest = &after[len..];
        }
    }
    true
}

/// A value the parser reads as the shell would: one word, or one quoted string.
fn simple_quoting(v: &str) -> bool {
    let quoted = |q: char| v.len() >= 2 && v.starts_with(q) && v.ends_with(q);
    if quoted('"') {
        return !v[1..v.len() - 1].contains('"');
    }
    if quoted('\'') {
        return !v[1..v.len() - 1].contains('\'');
    }
    !v.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
}

/// The image's environment scripts sourced by the image's own shell when the command starts,
/// for images whose scripts do more than assign (conda's and spack's activation, `if`,
/// `source`): the parser would quietly give them another environment than Apptainer does.
/// The shell starts from `base`, sources every script with `set -a` (assignments reach the
/// command, as the parser takes them), and reports its environment; the `edits` follow, so
/// precedence is the same as without a shell. It costs one shell and one `cat` at start-up,
/// only for such images.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShellEnv {
    pub shell: String,
    /// The image's `cat`, which reports the environment (by absolute path: a script may
    /// change PATH).
    pub cat: String,
    pub scripts: Vec<String>,
    pub base: Vec<(String, String)>,
    pub edits: Vec<EnvEdit>,
}

impl ShellEnv {
    /// The shell's command line. Its output and the scripts' go to stderr (the child sets
    /// that up); the report is `cat /proc/self/environ` into descriptor 3, with a marker that
    /// says the shell got that far (a script that `exec`s or exits 0 reports nothing).
    ///
    /// When `cat` fails, the shell looks (with builtins only: no program starts with that
    /// environment) for a variable longer than execve takes, and reports it in place of the
    /// environment, with the last script that has a line assigning it (`NAME=`); `cat`'s own
    /// message ("Argument list too long") is shown only when no such variable explains it.
    pub fn argv(&self) -> Vec<String> {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let scripts: Vec<String> = self.scripts.iter().map(|s| quote(s)).collect();
        let mut text = String::from("set -a\n");
        for script in &scripts {
            text.push_str(&format!(". {script}\n"));
        }
        text.push_str(&format!(
            "set +a +e\nexport {REPORT_MARKER}=1\n\
             launcher_err=$({} /proc/self/environ 2>&1 >&3) && exit 0\n",
            quote(&self.cat)
        ));
        // `export -p` lines: `export NAME='v'` (dash, busybox, bash as sh), `declare -x NAME`
        // (bash). A line of a multi-line value that looks like one names a real variable at
        // worst. LC_ALL=C: ${#v} in bytes.
        text.push_str(&format!(
            "launcher_status=$?\nexport -p | {{\nLC_ALL=C\nwhile IFS= read -r l; do\n\
             l=${{l#declare -x }}; l=${{l#export }}; n=${{l%%=*}}\n\
             case $n in ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;; esac\n\
             eval \"z=\\${{#$n}}\"\n\
             if [ $((${{#n}} + z + 2)) -gt {VALUE_MAX_BYTES} ]; then\n\
             w=\nfor s in {}; do\n\
             while IFS= read -r t; do case $t in *\"$n\"=*) w=$s; break ;; esac; done 2>/dev/null < \"$s\"\n\
             done\n\
             printf '{TOO_LONG_MARKER}=%s %s %s\\000' \"$n\" \"$z\" \"$w\" >&3\nexit 0\nfi\n\
             done\nexit 1\n}} && exit 0\n\
             printf '%s\\n' \"$launcher_err\" >&2\nexit $launcher_status\n",
            scripts.join(" ")
        ));
        vec![self.shell.clone(), "-c".into(), text]
    }

    /// The command's environment from the shell's report (`NAME=value` strings, each ending
    /// in a NUL): the variables shells set for themselves keep their values from before, then
    /// the edits are made.
    pub fn finish(&self, report: &[u8]) -> Result<Vec<(String, String)>> {
        if report.len() > CAPTURED_MAX_BYTES {
            bail!(
                "the image's environment scripts produced more than {} MiB of variables",
                CAPTURED_MAX_BYTES >> 20
            );
        }
        let own = [
            "_",
            "SHLVL",
            "PWD",
            "OLDPWD",
            REPORT_MARKER,
            TOO_LONG_MARKER,
        ];
        let mut env = Env::default();
        let mut reported = false;
        let mut too_long = None;
        for entry in report.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((k, v)) = entry.split_once('=') else {
                continue;
            };
            reported |= k == REPORT_MARKER && v == "1";
            if k == TOO_LONG_MARKER {
                too_long = Some(v.to_string());
                continue;
            }
            if !valid_name(k) || own.contains(&k) {
                continue;
            }
            if v.len() > VALUE_MAX_BYTES {
                bail!(
                    "the image's environment scripts made {k} longer than {} KiB (the longest \
                     variable a program can be started with)",
                    VALUE_MAX_BYTES >> 10
                );
            }
            env.set(k, v);
            if env.vars.len() > VARIABLES_MAX + self.base.len() {
                bail!("the image's environment scripts set more than {VARIABLES_MAX} variables");
            }
        }
        if let Some(found) = too_long.filter(|_| !reported) {
            bail!("{}", too_long_error(&found));
        }
        if !reported {
            bail!(
                "the image's environment scripts ended the shell before it reported the \
                 environment (a script that runs `exec` or `exit 0`?)"
            );
        }
        // What shells keep for themselves, and the names a shell cannot hold (`a.b`, bash's
        // exported functions), as they were before the scripts.
        for (k, v) in &self.base {
            if own.contains(&k.as_str()) || !valid_name(k) {
                env.set(k, v);
            }
        }
        Ok(apply_edits(env.vars, &self.edits))
    }
}

/// The error for the shell's `NAME LENGTH SCRIPT` (SCRIPT empty when no script's text names
/// the variable: it came from a file a script sourced, say).
fn too_long_error(found: &str) -> String {
    let mut parts = found.splitn(3, ' ');
    let name = parts.next().unwrap_or_default();
    let kib = parts
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| format!(" ({} KiB)", n.div_ceil(1024)))
        .unwrap_or_default();
    let by = match parts.next().filter(|s| !s.is_empty()) {
        Some(script) => format!("the image's environment script {script}"),
        None => "the image's environment scripts".to_string(),
    };
    format!(
        "{by} made {name} longer{kib} than {} KiB, the longest variable a program can be \
         started with: the image's shell could not start cat to report the environment",
        VALUE_MAX_BYTES >> 10
    )
}

fn keep_in_cleanenv(k: &str) -> bool {
    CLEANENV_KEEP.contains(&k) || CLEANENV_KEEP_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// Extract the unconditional assignments of an Apptainer env script: each variable once, with
/// its last value, in the order of first assignment.
///
/// We do not run a shell to read the image's environment (start-up cost, and no /bin/sh in
/// some images); we take the top-level `export K=V` / `K=V` lines, expand `$VAR`/`${VAR}` from
/// the environment built so far, and skip everything inside `if`/`case`/functions. The error
/// says which line went past which bound (`VALUE_MAX_BYTES`, `VARIABLES_MAX`,
/// `EXPANDED_MAX_BYTES`).
///
/// `budget` holds what earlier scripts used. Linear in the script's length plus the length of
/// the values it produces: one pass over the lines, look-ups by index.
pub fn parse_env_script(
    script: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    budget: &mut ScriptBudget,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut depth: i32 = 0;
    // An indented line is taken only in a script of plain assignments: Apptainer writes a
    // `%environment` as the user indented it, while elsewhere indentation marks the body of a
    // block the depth count may have missed.
    let plain = parses_fully(script);
    for (n, raw) in script.lines().enumerate() {
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
        if depth != 0 || line.starts_with('#') || (!plain && raw.starts_with([' ', '\t'])) {
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
            match index.get(name) {
                Some(&i) => Some(out[i].1.clone()),
                None => lookup(name),
            }
        };
        let line_no = n + 1;
        let room = EXPANDED_MAX_BYTES.saturating_sub(budget.expanded);
        let Some(value) = expand(&unquote(v), &local, room.min(VALUE_MAX_BYTES)) else {
            return Err(if room < VALUE_MAX_BYTES {
                format!(
                    "line {line_no}: the values of the image's environment scripts add up to \
                     more than {} MiB",
                    EXPANDED_MAX_BYTES >> 20
                )
            } else {
                format!(
                    "line {line_no}: the value of {k} would be longer than {} KiB (the \
                     longest variable a program can be started with)",
                    VALUE_MAX_BYTES >> 10
                )
            });
        };
        budget.expanded += value.len();
        match index.get(k) {
            Some(&i) => out[i].1 = value,
            None => {
                if !budget.names.contains(k) {
                    if budget.names.len() >= VARIABLES_MAX {
                        return Err(format!(
                            "line {line_no}: the image's environment scripts set more than \
                             {VARIABLES_MAX} variables"
                        ));
                    }
                    budget.names.insert(k.to_string());
                }
                index.insert(k.to_string(), out.len());
                out.push((k.to_string(), value));
            }
        }
    }
    Ok(out)
}

/// Expand `$NAME`, `${NAME}` and `${NAME:-default}`; None when the result would be longer
/// than `max` bytes (checked as it grows: nothing longer is ever built).
fn expand(v: &str, lookup: &dyn Fn(&str) -> Option<String>, max: usize) -> Option<String> {
    let mut out = String::new();
    let push = |out: &mut String, s: &str| -> Option<()> {
        if out.len() + s.len() > max {
            return None;
        }
        out.push_str(s);
        Some(())
    };
    let mut rest = v;
    // Once a `${` has no closing brace, none after it has one: not searched again (a value of
    // many unclosed `${` would otherwise cost its length squared).
    let mut no_close = false;
    while let Some(pos) = rest.find('$') {
        push(&mut out, &rest[..pos])?;
        let after = &rest[pos + 1..];
        if let Some(inner) = after.strip_prefix('{').filter(|_| !no_close) {
            if let Some(end) = inner.find('}') {
                let expr = &inner[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                let val = lookup(name).filter(|s| !s.is_empty() || default.is_none());
                match &val {
                    Some(val) => push(&mut out, val)?,
                    None => push(&mut out, default.unwrap_or(""))?,
                }
                rest = &inner[end + 1..];
                continue;
            }
            no_close = true;
        }
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if len == 0 {
            push(&mut out, "$")?;
        } else if let Some(val) = lookup(&after[..len]) {
            push(&mut out, &val)?;
        }
        rest = &after[len..];
    }
    push(&mut out, rest)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::env_list::from_pairs as kv;
    use crate::env_list::get;

    /// The command's environment with `scripts` read without a shell, as `plan::build` makes
    /// it (less the site's and the injection's edits).
    fn compute(inp: &EnvInputs, scripts: &[(String, String)]) -> Result<Vec<(String, String)>> {
        let layers = layers(inp);
        let env = apply_scripts(layers.base, scripts)?;
        Ok(apply_edits(env, &layers.edits))
    }

    /// No host, image, user or launcher variables: the image's scripts alone.
    fn no_inputs() -> EnvInputs<'static> {
        EnvInputs {
            host: &[],
            cleanenv: false,
            image_oci_env: &[],
            user: &[],
            launcher: &[],
        }
    }

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
        let env = compute(
            &EnvInputs {
                host: &host,
                cleanenv: false,
                image_oci_env: &oci,
                user: &user,
                launcher: &[],
            },
            &[],
        )
        .unwrap();
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
        let env = compute(
            &EnvInputs {
                host: &host,
                cleanenv: true,
                image_oci_env: &oci,
                user: &[],
                launcher: &[],
            },
            &[],
        )
        .unwrap();
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
        let env = compute(
            &EnvInputs {
                host: &host,
                cleanenv: true,
                image_oci_env: &[],
                user: &[],
                launcher: &[],
            },
            &[],
        )
        .unwrap();
        assert_eq!(get(&env, "SECRET"), None);
        assert_eq!(get(&env, "SLURM_JOB_ID"), Some("7"));
        assert_eq!(get(&env, "PMI_FD"), Some("11"));
        assert_eq!(get(&env, "HOME"), Some("/h"));
    }

    #[test]
    fn env_script_top_level_only() {
        let script = "#!/bin/sh\nexport PATH=\"/opt/x/bin:$PATH\"\nFOO='bar baz'\nexport FOO\nif [ -z \"$X\" ]; then\n    Y=1\nfi\nZ=${UNSET:-dflt}\nW=$(date)\n";
        let got = parse(script, &|k| (k == "PATH").then(|| "/usr/bin".to_string())).unwrap();
        assert_eq!(
            got,
            kv(&[
                ("PATH", "/opt/x/bin:/usr/bin"),
                ("FOO", "bar baz"),
                ("Z", "dflt")
            ])
        );
    }

    /// One script, on its own.
    fn parse(
        script: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, String> {
        parse_env_script(script, lookup, &mut ScriptBudget::default())
    }

    fn no_lookup(_: &str) -> Option<String> {
        None
    }

    /// Issue 20, finding 3: a value that doubles stops at 128 KiB, at the line that passes it.
    #[test]
    fn a_value_longer_than_128_kib_is_refused_at_its_line() {
        let mut script = String::from("X=0123456789abcdef\n");
        for _ in 0..40 {
            script.push_str("export X=\"$X$X\"\n");
        }
        let err = parse(&script, &no_lookup).unwrap_err();
        // 16 bytes doubled 13 times is 128 KiB exactly (allowed); line 15 doubles it again.
        assert!(
            err.starts_with("line 15: the value of X would be longer than 128 KiB"),
            "{err}"
        );
        let exact = format!("X={}\n", "x".repeat(VALUE_MAX_BYTES));
        assert_eq!(
            parse(&exact, &no_lookup).unwrap()[0].1.len(),
            VALUE_MAX_BYTES
        );
        // Expansion from the environment built so far counts the same.
        let big = "y".repeat(VALUE_MAX_BYTES);
        let err = parse("A=$BIG.\n", &|_| Some(big.clone())).unwrap_err();
        assert!(err.contains("value of A"), "{err}");
    }

    #[test]
    fn more_than_4096_variables_are_refused_counting_every_script() {
        let vars = |from: usize, to: usize| -> String {
            (from..to).map(|i| format!("export V{i}=x\n")).collect()
        };
        assert_eq!(
            parse(&vars(0, VARIABLES_MAX), &no_lookup).unwrap().len(),
            VARIABLES_MAX
        );
        let err = parse(&vars(0, VARIABLES_MAX + 1), &no_lookup).unwrap_err();
        assert_eq!(
            err,
            format!(
                "line {}: the image's environment scripts set more than 4096 variables",
                VARIABLES_MAX + 1
            )
        );
        // Setting one variable again and again is one variable.
        let again: String = (0..3 * VARIABLES_MAX).map(|i| format!("V={i}\n")).collect();
        assert_eq!(
            parse(&again, &no_lookup).unwrap(),
            kv(&[("V", &(3 * VARIABLES_MAX - 1).to_string())])
        );
        // Two scripts of 3000 each: the second goes past the bound, and is named.
        let scripts = vec![
            ("/.singularity.d/env/10-a.sh".to_string(), vars(0, 3000)),
            ("/.singularity.d/env/20-b.sh".to_string(), vars(3000, 6000)),
        ];
        let err = compute(&no_inputs(), &scripts).unwrap_err().to_string();
        assert!(
            err.starts_with("/.singularity.d/env/20-b.sh: line 1097: ")
                && err.contains("4096 variables"),
            "{err}"
        );
    }

    #[test]
    fn the_values_produced_are_bounded_in_total() {
        // 200 copies of a 100 KiB value: each fits, together they pass 16 MiB.
        let big = "z".repeat(100 << 10);
        let script: String = (0..200).map(|i| format!("Y{i}=$BIG\n")).collect();
        let err = parse(&script, &|_| Some(big.clone())).unwrap_err();
        let line = EXPANDED_MAX_BYTES / (100 << 10) + 1;
        assert_eq!(
            err,
            format!("line {line}: the values of the image's environment scripts add up to more than 16 MiB")
        );
    }

    #[test]
    fn scripts_longer_than_1_mib_together_are_refused_naming_the_script() {
        let comment = format!("# {}\n", "c".repeat(1000));
        let half = comment.repeat(600);
        let scripts = vec![
            ("/.singularity.d/env/10-a.sh".to_string(), half.clone()),
            ("/.singularity.d/env/20-b.sh".to_string(), half),
        ];
        let err = compute(&no_inputs(), &scripts).unwrap_err().to_string();
        assert!(
            err.starts_with("/.singularity.d/env/20-b.sh: the image's environment scripts are longer than 1 MiB together"),
            "{err}"
        );
    }

    /// A long script is one pass: each variable is kept once (not once per assignment), names
    /// the script set are found in its own index, and only the others are asked of the
    /// environment built so far, once per reference.
    #[test]
    fn a_long_script_is_read_in_one_pass_with_indexed_look_ups() {
        // 120 000 lines assigning 4000 variables over and over, each from the one before.
        let (n, names) = (60_000, 4000);
        let mut script = String::from("A0=x\n");
        for i in 1..n {
            script.push_str(&format!(
                "A{}=${{A{}}}\nB=$OUTSIDE\n",
                i % names,
                (i - 1) % names
            ));
        }
        let asked = std::cell::Cell::new(0usize);
        let got = parse(&script, &|name| {
            assert_eq!(
                name, "OUTSIDE",
                "a name the script set was looked up outside it"
            );
            asked.set(asked.get() + 1);
            Some("o".into())
        })
        .unwrap();
        assert_eq!(asked.get(), n - 1);
        assert_eq!(got.len(), names + 1, "each variable once");
        assert_eq!(got[1], ("A1".to_string(), "x".to_string()));
        assert_eq!(got[2], ("B".to_string(), "o".to_string()));
        assert_eq!(got[names], (format!("A{}", names - 1), "x".to_string()));
    }

    #[test]
    fn unclosed_braces_are_kept_as_text() {
        assert_eq!(expand("a${b", &no_lookup, 100).unwrap(), "a${b");
        let many = "${".repeat(20_000);
        assert_eq!(expand(&many, &no_lookup, 1 << 20).unwrap(), many);
        assert_eq!(
            expand("${X}${Y", &|_| Some("v".into()), 100).unwrap(),
            "v${Y"
        );
        assert_eq!(expand("$X$X", &|_| Some("vv".into()), 3), None);
    }

    #[test]
    fn what_the_parser_reads_fully_and_what_needs_a_shell() {
        for simple in [
            "#!/bin/sh\n# comment\n\nexport PATH=\"/opt/x/bin:$PATH\"\nFOO='bar baz'\nexport FOO BAR\n",
            "X=${UNSET:-dflt}\n  export   Y=plain\n",
        ] {
            assert!(parses_fully(simple), "{simple}");
        }
        for code in [
            "if [ -z \"$X\" ]; then\n  Y=1\nfi\n",
            ". /opt/conda/etc/profile.d/conda.sh\nconda activate base\n",
            "source /opt/spack/share/spack/setup-env.sh\n",
            "W=$(date)\n",
            "W=`date`\n",
            "unset X\n",
            "f() { :; }\n",
            "export A=1 B=2\n",
            "X='$HOME'\n",
            "X=${HOME:+x}\n",
            "X=${HOME%/*}\n",
            "X=~/x\n",
            "X=${#HOME}\n",
            "X=${U-dflt}\n",
            "X=${U:=assigned}\n",
            "X=$1\n",
            "X=${A:-$B}\n",
            "X=1 # trailing\n",
            "X=1; Y=2\n",
            "X=\"a\"b\"\n",
            "X=a\\\n  b\n",
        ] {
            assert!(!parses_fully(code), "{code}");
        }
    }

    #[test]
    fn the_shell_sources_every_script_quoted_and_reports_on_its_own_stdout() {
        let sh = ShellEnv {
            shell: "/bin/sh".into(),
            cat: "/bin/cat".into(),
            scripts: vec!["/.singularity.d/env/90-it's.sh".into()],
            base: vec![],
            edits: vec![],
        };
        let argv = sh.argv();
        assert_eq!(argv[..2], ["/bin/sh", "-c"]);
        assert!(
            argv[2].starts_with(
                "set -a\n. '/.singularity.d/env/90-it'\\''s.sh'\nset +a +e\n\
                 export LAUNCHER_ENV_REPORTED=1\n\
                 launcher_err=$('/bin/cat' /proc/self/environ 2>&1 >&3) && exit 0\n"
            ),
            "{}",
            argv[2]
        );
        assert!(
            argv[2].contains("for s in '/.singularity.d/env/90-it'\\''s.sh'; do"),
            "{}",
            argv[2]
        );
    }

    /// `sh.argv()` run by the host's /bin/sh, its report (descriptor 3) given to `finish`; the
    /// shell must succeed and print nothing.
    fn run_shell(sh: &ShellEnv) -> Result<Vec<(String, String)>> {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report");
        let out = std::process::Command::new(&sh.argv()[0])
            .arg("-c")
            .arg(format!("exec 3>'{}'\n{}", report.display(), sh.argv()[2]))
            .env_clear()
            .envs(sh.base.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // cat's "Argument list too long" is not shown when the report explains it.
        assert!(out.stderr.is_empty(), "{out:?}");
        sh.finish(&std::fs::read(&report).unwrap())
    }

    #[test]
    fn a_variable_too_long_to_start_cat_is_named_with_its_script_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        // 2^18 bytes, made by the shell alone.
        let doubling = "X=x; i=0; while [ $i -lt 18 ]; do X=$X$X; i=$((i+1)); done\n";
        let conda = script(
            "90-conda.sh",
            &format!("{doubling}export BIG=$X\nunset X\n"),
        );
        let small = script("10-small.sh", "SMALL=1\n");
        let sourced = script(
            "sourced.sh",
            &format!("{doubling}export HIDDEN=$X\nunset X\n"),
        );
        let indirect = script("95-indirect.sh", &format!(". '{sourced}'\n"));
        let shell = |scripts: Vec<String>| ShellEnv {
            shell: "/bin/sh".into(),
            cat: "/bin/cat".into(),
            scripts,
            base: kv(&[("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")]),
            edits: vec![],
        };
        let err = run_shell(&shell(vec![small.clone(), conda.clone()]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "the image's environment script {conda} made BIG longer (256 KiB) than 128 KiB, \
                 the longest variable a program can be started with: the image's shell could \
                 not start cat to report the environment"
            )
        );
        // Set by a file a script sourced: no script is named.
        let err = run_shell(&shell(vec![indirect])).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "the image's environment scripts made HIDDEN longer (256 KiB) than 128 KiB"
            ),
            "{err}"
        );
        // Under the limit, the report is the environment as before.
        let env = run_shell(&shell(vec![small])).unwrap();
        assert_eq!(crate::env_list::get(&env, "SMALL"), Some("1"));
        assert_eq!(crate::env_list::get(&env, "PATH"), Some("/usr/bin:/bin"));
        // The marker counts only in place of a report: a variable of that name is the user's.
        let sh = shell(vec![]);
        let env = sh
            .finish(b"LAUNCHER_ENV_TOO_LONG=x\0A=1\0LAUNCHER_ENV_REPORTED=1\0")
            .unwrap();
        assert_eq!(env, kv(&[("A", "1")]));
    }

    #[test]
    fn the_shells_report_then_the_edits_in_order() {
        let sh = ShellEnv {
            shell: "/bin/sh".into(),
            cat: "/bin/cat".into(),
            scripts: vec![],
            base: kv(&[
                ("PWD", "/home/u"),
                ("KEEP", "1"),
                ("BASH_FUNC_module%%", "() { :; }"),
            ]),
            edits: vec![
                EnvEdit::Set("USER_SET".into(), "user".into()),
                EnvEdit::Set("FROM_SCRIPT".into(), "overridden".into()),
                EnvEdit::Prepend("PATH".into(), "/.launcher.d/bin".into()),
                EnvEdit::Unset("GONE".into()),
            ],
        };
        let report =
            b"KEEP=1\0PATH=/opt/conda/bin:/usr/bin\0FROM_SCRIPT=s\0GONE=x\0PWD=/elsewhere\0\
            SHLVL=1\0_=/bin/cat\0no-name\0BAD-NAME=1\0LAUNCHER_ENV_REPORTED=1\0";
        let env = sh.finish(report).unwrap();
        assert_eq!(
            env,
            kv(&[
                ("KEEP", "1"),
                ("PATH", "/.launcher.d/bin:/opt/conda/bin:/usr/bin"),
                ("FROM_SCRIPT", "overridden"),
                ("PWD", "/home/u"),
                ("BASH_FUNC_module%%", "() { :; }"),
                ("USER_SET", "user"),
            ])
        );
        let many: Vec<u8> = (0..VARIABLES_MAX + 4)
            .flat_map(|i| format!("V{i}=x\0").into_bytes())
            .chain(*b"LAUNCHER_ENV_REPORTED=1\0")
            .collect();
        let err = sh
            .finish(&many)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("more than 4096 variables"), "{err}");
        let err = sh
            .finish(&vec![b'x'; CAPTURED_MAX_BYTES + 1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MiB of variables"), "{err}");
        // A script that exec'd something else, or exited 0: no report at all.
        let err = sh.finish(b"replaced\n").unwrap_err().to_string();
        assert!(err.contains("ended the shell before it reported"), "{err}");
        let long = [
            b"X=".as_slice(),
            &vec![b'x'; VALUE_MAX_BYTES + 1],
            b"\0LAUNCHER_ENV_REPORTED=1\0",
        ]
        .concat();
        let err = sh.finish(&long).unwrap_err().to_string();
        assert!(err.contains("made X longer than 128 KiB"), "{err}");
    }

    #[test]
    fn an_indented_environment_section_is_read_when_it_only_assigns() {
        let apptainer = "#!/bin/sh\n# Custom environment shell code should follow\n\n    export A=1\n\tB=\"$A:2\"\n";
        assert!(parses_fully(apptainer));
        assert_eq!(
            parse(apptainer, &no_lookup).unwrap(),
            kv(&[("A", "1"), ("B", "1:2")])
        );
    }
}
