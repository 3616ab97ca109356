//! Apptainer/Singularity definition files (`app.def`), parsed into build stages. Pure: no I/O.
//!
//! The format, as Apptainer reads it:
//! - A file holds one or more stages; each begins at a line starting with `Bootstrap:`
//!   (any case, in the first column).
//! - A stage is a header (`Key: value` lines, `#` comments, a trailing `\` continues a value)
//!   followed by sections. A section starts at a line whose first word begins with `%`; its
//!   name is that word (any case), the rest of the line its arguments (`%post -c /bin/bash`,
//!   `%files from build`), and its body the lines up to the next section. A section named
//!   twice has its bodies joined, as Apptainer does.
//! - `{{ NAME }}` is replaced by a `--build-arg NAME=VALUE`, else by the stage's `%arguments`
//!   default (`NAME=VALUE` lines); not in lines where a `#` comment precedes it. An undefined
//!   name is an error.
//!
//! Errors name the file, the line and the section: `app.def:7: %files: ...`.

use std::collections::BTreeMap;
use std::fmt;

/// Where a stage's root comes from (the `Bootstrap:` header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// `From:` a SIF or SquashFS image file (or a sandbox directory).
    LocalImage,
    /// `From:` a registry reference (`docker://` is implied).
    Docker,
    /// `From:` an OCI layout directory (`DIR[:TAG]`).
    Oci,
    OciArchive,
    DockerArchive,
    /// An empty root.
    Scratch,
}

impl Bootstrap {
    fn parse(v: &str) -> Option<Bootstrap> {
        Some(match v.to_ascii_lowercase().as_str() {
            "localimage" => Bootstrap::LocalImage,
            "docker" => Bootstrap::Docker,
            "oci" => Bootstrap::Oci,
            "oci-archive" => Bootstrap::OciArchive,
            "docker-archive" => Bootstrap::DockerArchive,
            "scratch" => Bootstrap::Scratch,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Bootstrap::LocalImage => "localimage",
            Bootstrap::Docker => "docker",
            Bootstrap::Oci => "oci",
            Bootstrap::OciArchive => "oci-archive",
            Bootstrap::DockerArchive => "docker-archive",
            Bootstrap::Scratch => "scratch",
        }
    }
}

/// One script section: its arguments (the rest of the `%name` line), its body, and the line
/// of its `%name` (1-based, in the whole file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    pub args: String,
    pub body: String,
    pub line: usize,
}

impl Script {
    /// Whether the body holds anything but blank lines and comments.
    pub fn is_empty(&self) -> bool {
        self.body.trim().is_empty()
    }

    /// The shell of `%post -c SHELL` (and `%test -c SHELL`), if given.
    pub fn shell(&self) -> Option<&str> {
        let mut words = self.args.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-c" {
                return words.next();
            }
            if let Some(s) = w.strip_prefix("-c") {
                return Some(s);
            }
        }
        None
    }

    /// The first line of the script Apptainer writes for `%runscript`, `%startscript` and
    /// `%test`, and the rest: a `#!` first line of the body is the interpreter, else
    /// `#!/bin/sh`; the section's arguments (up to a `#`) are appended to it.
    pub fn shebang_and_body(&self) -> (String, String) {
        let (mut shebang, body) = if self.body.trim_start().starts_with("#!") {
            let b = self.body.trim_start();
            match b.split_once('\n') {
                Some((first, rest)) => (first.trim().to_string(), rest.to_string()),
                None => (b.trim().to_string(), String::new()),
            }
        } else {
            ("#!/bin/sh".to_string(), self.body.clone())
        };
        let args = self.args.split('#').next().unwrap_or("").trim();
        if !args.is_empty() {
            shebang.push(' ');
            shebang.push_str(args);
        }
        (shebang, body)
    }
}

/// One `%files` line: a source (a host path, or a path in another stage) and where it goes
/// (the same path when not given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCopy {
    pub src: String,
    pub dst: Option<String>,
    pub line: usize,
}

/// A `%files` section; `from` names the stage with `%files from STAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    pub from: Option<String>,
    pub copies: Vec<FileCopy>,
    pub line: usize,
}

/// One build stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Header keys in lower case, as Apptainer records them (`bootstrap`, `from`, `stage`).
    pub header: BTreeMap<String, String>,
    pub bootstrap: Bootstrap,
    /// `From:`; empty for `Bootstrap: scratch`.
    pub from: String,
    /// `Stage:`, the name `%files from NAME` refers to.
    pub name: Option<String>,
    /// Line of the `Bootstrap:` header.
    pub line: usize,
    pub setup: Option<Script>,
    pub files: Vec<Files>,
    pub environment: Option<Script>,
    pub post: Option<Script>,
    pub runscript: Option<Script>,
    pub startscript: Option<Script>,
    pub test: Option<Script>,
    pub labels: Vec<(String, String)>,
    pub help: Option<Script>,
}

/// A parsed definition file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    pub stages: Vec<Stage>,
    /// The file with the build arguments substituted: what the image records as its definition.
    pub text: String,
    /// `--build-arg` names that no stage used (Apptainer warns about them).
    pub unused_args: Vec<String>,
}

impl Definition {
    /// The stage whose result is the image: the last one.
    pub fn last(&self) -> &Stage {
        // `parse` refuses a file without a stage, so there is a last one.
        &self.stages[self.stages.len() - 1]
    }
}

/// A parse error, naming the file, line and section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    /// The section (`post`, `files`, ...), or None in a header.
    pub section: Option<String>,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.section {
            Some(s) => write!(f, "{}:{}: %{}: {}", self.file, self.line, s, self.msg),
            None => write!(f, "{}:{}: header: {}", self.file, self.line, self.msg),
        }
    }
}

impl std::error::Error for ParseError {}

/// Header keys Apptainer accepts (those of its other bootstrap agents too, so that their
/// files fail on the agent, not on a key). `otherurlN` takes any number.
const HEADER_KEYS: &[&str] = &[
    "bootstrap",
    "from",
    "includecmd",
    "mirrorurl",
    "updateurl",
    "osversion",
    "include",
    "library",
    "registry",
    "namespace",
    "stage",
    "product",
    "user",
    "regcode",
    "productpgp",
    "registerurl",
    "modules",
    "fingerprints",
    "confurl",
    "setopt",
    "target",
    "frontend",
    "filename",
    "buildargs",
];

const APP_SECTIONS: &[&str] = &[
    "appinstall",
    "applabels",
    "appfiles",
    "appenv",
    "apptest",
    "apphelp",
    "apprun",
    "appstart",
];

/// Parses `text` (the contents of the file named `file`), substituting `build_args`.
pub fn parse(
    file: &str,
    text: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<Definition, ParseError> {
    let err = |line: usize, section: Option<&str>, msg: String| ParseError {
        file: file.to_string(),
        line,
        section: section.map(str::to_string),
        msg,
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Stage boundaries: every line starting with "bootstrap:", any case.
    let mut starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case("bootstrap:"))
        })
        .map(|(i, _)| i)
        .collect();
    let before_first = starts.first().copied().unwrap_or(lines.len());
    if lines[..before_first]
        .iter()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    {
        // Content before any Bootstrap: header is a stage of its own, without one.
        starts.insert(0, 0);
    }
    if starts.is_empty() {
        return Err(err(
            1,
            None,
            "no 'Bootstrap:' header: an empty definition".into(),
        ));
    }
    let mut used = std::collections::BTreeSet::new();
    let mut stages = Vec::new();
    // Comments before the first stage stay in the recorded definition.
    let mut full: String = lines[..starts[0]].concat();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        // Defaults from %arguments come from the text before substitution.
        let raw = &lines[start..end];
        let defaults = arguments(raw);
        let mut substituted = Vec::with_capacity(raw.len());
        for (i, l) in raw.iter().enumerate() {
            let line_no = start + i + 1;
            let s = substitute(l, build_args, &defaults, &mut used)
                .map_err(|name| {
                    err(
                        line_no,
                        section_at(raw, i).as_deref(),
                        format!(
                        "build argument '{name}' is not defined: give --build-arg {name}=VALUE or a default in %arguments"
                    ),
                    )
                })?;
            substituted.push(s);
        }
        for s in &substituted {
            full.push_str(s);
        }
        stages.push(parse_stage(file, start, &substituted)?);
    }
    // Stage names must be unique, and %files from NAME must name an earlier stage.
    for (i, s) in stages.iter().enumerate() {
        if let Some(name) = &s.name {
            if stages[..i].iter().any(|o| o.name.as_ref() == Some(name)) {
                return Err(err(
                    s.line,
                    None,
                    format!("stage '{name}' is defined twice"),
                ));
            }
        }
        for f in &s.files {
            if let Some(from) = &f.from {
                if !stages[..i].iter().any(|o| o.name.as_ref() == Some(from)) {
                    return Err(err(
                        f.line,
                        Some("files"),
                        format!("'from {from}': no earlier stage is named '{from}' (Stage: {from} in its header)"),
                    ));
                }
            }
        }
    }
    let unused_args = build_args
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    Ok(Definition {
        stages,
        text: full,
        unused_args,
    })
}

/// The name of the section line `i` of `lines` is in, if any.
fn section_at(lines: &[impl AsRef<str>], i: usize) -> Option<String> {
    lines[..=i]
        .iter()
        .rev()
        .find_map(|l| section_name(l.as_ref()).map(|(name, _)| name))
}

/// `%name args` at the start of a line (after blanks): the lower-case name and the args.
fn section_name(line: &str) -> Option<(String, String)> {
    let t = line.trim_start();
    let rest = t.strip_prefix('%')?;
    let rest = rest.trim_end_matches(['\n', '\r']);
    let (name, args) = match rest.split_once([' ', '\t']) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    Some((name.to_ascii_lowercase(), args.to_string()))
}

/// The `NAME=VALUE` defaults of a stage's `%arguments` sections.
fn arguments(lines: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for l in lines {
        if let Some((name, _)) = section_name(l) {
            inside = name == "arguments";
            continue;
        }
        let t = l.trim();
        if !inside || t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            if !k.trim().is_empty() {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// Replaces `{{ NAME }}` in one line; Err(NAME) for an undefined one. Lines where a comment
/// (`#` not followed by `!`) comes before the placeholder are left alone, as Apptainer does.
fn substitute(
    line: &str,
    args: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
    used: &mut std::collections::BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let name = after[..close].trim();
        let is_word =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let prefix = &line[..line.len() - rest.len() + open];
        let commented = prefix
            .char_indices()
            .any(|(i, c)| c == '#' && !prefix[i + 1..].starts_with('!'));
        if !is_word || commented {
            out.push_str(&rest[..open + 2]);
            rest = after;
            continue;
        }
        let value = match args.get(name).or_else(|| defaults.get(name)) {
            Some(v) => v,
            None => return Err(name.to_string()),
        };
        if args.contains_key(name) {
            used.insert(name.to_string());
        }
        out.push_str(&rest[..open]);
        out.push_str(value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One stage: `lines` are its lines (substituted), the first at `start` (0-based) in the file.
fn parse_stage(file: &str, start: usize, lines: &[String]) -> Result<Stage, ParseError> {
    let err = |line: usize, section: Option<&str>, msg: String| ParseError {
        file: file.to_string(),
        line,
        section: section.map(str::to_string),
        msg,
    };
    let first_section = lines
        .iter()
        .position(|l| section_name(l).is_some())
        .unwrap_or(lines.len());
    let header =
        parse_header(&lines[..first_section], start).map_err(|(line, msg)| err(line, None, msg))?;
    let stage_line = start + 1;
    let bootstrap_value = header.get("bootstrap").cloned().ok_or_else(|| {
        err(
            stage_line,
            None,
            "no 'Bootstrap:' header before the first section".into(),
        )
    })?;
    let bootstrap = Bootstrap::parse(&bootstrap_value).ok_or_else(|| {
        err(
            stage_line,
            None,
            format!(
                "'Bootstrap: {bootstrap_value}' is not supported by launcher build (supported: localimage, docker, oci, oci-archive, docker-archive, scratch)"
            ),
        )
    })?;
    let from = header.get("from").cloned().unwrap_or_default();
    if from.is_empty() && bootstrap != Bootstrap::Scratch {
        return Err(err(
            stage_line,
            None,
            format!(
                "'Bootstrap: {}' needs a 'From:' header (the image to start from)",
                bootstrap.name()
            ),
        ));
    }
    let mut stage = Stage {
        bootstrap,
        from,
        name: header.get("stage").cloned().filter(|s| !s.is_empty()),
        header,
        line: stage_line,
        setup: None,
        files: Vec::new(),
        environment: None,
        post: None,
        runscript: None,
        startscript: None,
        test: None,
        labels: Vec::new(),
        help: None,
    };
    let mut i = first_section;
    while i < lines.len() {
        // `section_name` matched at `first_section` and at every later stop of this loop.
        let Some((name, args)) = section_name(&lines[i]) else {
            i += 1;
            continue;
        };
        let line_no = start + i + 1;
        let body_end = lines[i + 1..]
            .iter()
            .position(|l| section_name(l).is_some())
            .map_or(lines.len(), |p| i + 1 + p);
        let body: String = lines[i + 1..body_end].concat();
        let script = |old: Option<Script>| -> Option<Script> {
            Some(match old {
                // A section named twice: bodies joined, as Apptainer does; the first's args stay.
                Some(mut s) => {
                    s.body.push_str(&body);
                    s
                }
                None => Script {
                    args: args.clone(),
                    body: body.clone(),
                    line: line_no,
                },
            })
        };
        match name.as_str() {
            "arguments" => {}
            "setup" => stage.setup = script(stage.setup.take()),
            "environment" => stage.environment = script(stage.environment.take()),
            "post" => stage.post = script(stage.post.take()),
            "runscript" => stage.runscript = script(stage.runscript.take()),
            "startscript" => stage.startscript = script(stage.startscript.take()),
            "test" => stage.test = script(stage.test.take()),
            "help" => stage.help = script(stage.help.take()),
            "labels" => {
                for l in body.lines() {
                    let t = l.trim();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let (k, v) = t.split_once([' ', '\t']).unwrap_or((t, ""));
                    stage.labels.retain(|(o, _)| o != k);
                    stage.labels.push((k.to_string(), v.trim().to_string()));
                }
            }
            "files" => {
                let from = match args.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [] => None,
                    [kw, stage_name] if kw.eq_ignore_ascii_case("from") => {
                        Some(stage_name.to_string())
                    }
                    _ => {
                        return Err(err(
                            line_no,
                            Some("files"),
                            format!("'%files {args}': expected '%files' or '%files from STAGE'"),
                        ))
                    }
                };
                let mut copies = Vec::new();
                for (k, l) in lines[i + 1..body_end].iter().enumerate() {
                    let t = l.trim();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let n = line_no + 1 + k;
                    let words = split_words(t)
                        .map_err(|m| err(n, Some("files"), format!("'{t}': {m}")))?;
                    match words.as_slice() {
                        [src] => copies.push(FileCopy {
                            src: src.clone(),
                            dst: None,
                            line: n,
                        }),
                        [src, dst] => copies.push(FileCopy {
                            src: src.clone(),
                            dst: Some(dst.clone()),
                            line: n,
                        }),
                        _ => {
                            return Err(err(
                                n,
                                Some("files"),
                                format!("'{t}': expected SOURCE [DESTINATION] (quote names with blanks)"),
                            ))
                        }
                    }
                }
                match stage.files.iter_mut().find(|f| f.from == from) {
                    Some(f) => f.copies.extend(copies),
                    None => stage.files.push(Files {
                        from,
                        copies,
                        line: line_no,
                    }),
                }
            }
            "pre" => {
                return Err(err(
                    line_no,
                    Some("pre"),
                    "%pre is not supported (Apptainer dropped it too): use %setup, which runs on the host".into(),
                ))
            }
            n if APP_SECTIONS.contains(&n) => {
                return Err(err(
                    line_no,
                    Some(n),
                    "SCIF app sections (%appinstall, %apprun, %appenv, ...) are not supported by launcher build yet".into(),
                ))
            }
            n => {
                return Err(err(
                    line_no,
                    Some(n),
                    "unknown section (known: %arguments, %setup, %files, %environment, %post, %runscript, %startscript, %test, %labels, %help)".into(),
                ))
            }
        }
        i = body_end;
    }
    Ok(stage)
}

/// The header's `key: value` pairs, keys in lower case. Err((line, message)).
fn parse_header(
    lines: &[String],
    start: usize,
) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut header = BTreeMap::new();
    // A value continued on the next line by a trailing backslash.
    let mut cont: Option<(String, String)> = None;
    for (i, l) in lines.iter().enumerate() {
        let n = start + i + 1;
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            if let Some((k, v)) = cont.take() {
                header.insert(k, v);
            }
            continue;
        }
        let t = t.split('#').next().unwrap_or("").trim();
        let (key, value) = match cont.take() {
            Some((k, v)) => (k, format!("{v}{t}")),
            None => {
                let Some((k, v)) = t.split_once(':') else {
                    return Err((n, format!("'{t}': expected 'Key: value'")));
                };
                let key = k.trim().to_ascii_lowercase();
                let known = HEADER_KEYS.contains(&key.as_str())
                    || key
                        .strip_prefix("otherurl")
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
                if !known {
                    return Err((n, format!("unknown header keyword '{}'", k.trim())));
                }
                (key, v.trim().to_string())
            }
        };
        if let Some(v) = value.strip_suffix('\\') {
            cont = Some((key, v.to_string()));
            continue;
        }
        header.insert(key, value);
    }
    if let Some((k, v)) = cont {
        header.insert(k, v);
    }
    Ok(header)
}

/// Words of a `%files` line: blank-separated, "double" or 'single' quoted.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Definition, ParseError> {
        parse("app.def", text, &BTreeMap::new())
    }

    fn e(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn a_typical_file() {
        let d = p(
            "# leading comment\nBootstrap: localimage\nFrom: base.sif # a comment\n\n\
             %files\n    /etc/hosts\n    \"a b\" '/opt/a b'\n%environment\n    export A=1\n\
             %post -c /bin/bash\n    apt-get update\n%RUNSCRIPT\n    echo hi \"$@\"\n\
             %labels\n    Author me\n    Version 1.0\n%help\n    Some help\n",
        )
        .unwrap();
        assert_eq!(d.stages.len(), 1);
        let s = d.last();
        assert_eq!(s.bootstrap, Bootstrap::LocalImage);
        assert_eq!(s.from, "base.sif");
        assert_eq!(s.line, 2);
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.files[0].copies[0].src, "/etc/hosts");
        assert_eq!(s.files[0].copies[0].dst, None);
        assert_eq!(s.files[0].copies[0].line, 6);
        assert_eq!(s.files[0].copies[1].src, "a b");
        let post = s.post.as_ref().unwrap();
        assert_eq!(post.shell(), Some("/bin/bash"));
        assert_eq!(post.body, "    apt-get update\n");
        assert_eq!(post.line, 10);
        assert_eq!(s.runscript.as_ref().unwrap().body, "    echo hi \"$@\"\n");
        assert_eq!(
            s.labels,
            vec![
                ("Author".to_string(), "me".to_string()),
                ("Version".into(), "1.0".into())
            ]
        );
        assert_eq!(s.help.as_ref().unwrap().body.trim(), "Some help");
        assert!(s.environment.as_ref().unwrap().body.contains("export A=1"));
        assert!(d.text.starts_with("# leading comment\nBootstrap:"));
    }

    #[test]
    fn build_arguments() {
        let text = "Bootstrap: docker\nFrom: debian:{{ RELEASE }}\n%arguments\n  RELEASE=12\n  \
                    PKG=hello\n%post\n  apt-get install {{PKG}}\n  # not {{ UNDEFINED }}\n";
        let d = p(text).unwrap();
        assert_eq!(d.last().from, "debian:12");
        assert!(d
            .last()
            .post
            .as_ref()
            .unwrap()
            .body
            .contains("install hello"));
        assert!(d.text.contains("From: debian:12"));
        let mut args = BTreeMap::new();
        args.insert("PKG".to_string(), "cowsay".to_string());
        args.insert("UNUSED".to_string(), "x".to_string());
        let d = parse("app.def", text, &args).unwrap();
        assert!(d
            .last()
            .post
            .as_ref()
            .unwrap()
            .body
            .contains("install cowsay"));
        assert_eq!(d.unused_args, vec!["UNUSED".to_string()]);
        assert_eq!(
            e("Bootstrap: docker\nFrom: x\n%post\n  echo {{ NOPE }}\n"),
            "app.def:4: %post: build argument 'NOPE' is not defined: give --build-arg NOPE=VALUE or a default in %arguments"
        );
    }

    #[test]
    fn stages() {
        let d = p("Bootstrap: docker\nFrom: golang\nStage: build\n%post\n  make\n\n\
                   Bootstrap: localimage\nFrom: base.sqfs\nStage: final\n%files from build\n  /src/app /usr/bin/app\n")
            .unwrap();
        assert_eq!(d.stages.len(), 2);
        assert_eq!(d.stages[0].name.as_deref(), Some("build"));
        assert_eq!(d.stages[1].line, 7);
        assert_eq!(d.last().files[0].from.as_deref(), Some("build"));
        assert_eq!(
            d.last().files[0].copies[0].dst.as_deref(),
            Some("/usr/bin/app")
        );
        assert_eq!(
            e("Bootstrap: docker\nFrom: x\n%files from nowhere\n  /a\n"),
            "app.def:3: %files: 'from nowhere': no earlier stage is named 'nowhere' (Stage: nowhere in its header)"
        );
    }

    #[test]
    fn errors_name_file_line_and_section() {
        assert_eq!(
            e("Bootstrap: docker\nFrom: x\n%post\n  true\n%frobnicate\n  x\n"),
            "app.def:5: %frobnicate: unknown section (known: %arguments, %setup, %files, %environment, %post, %runscript, %startscript, %test, %labels, %help)"
        );
        assert_eq!(
            e("Bootstrap: localimage\n%post\n  true\n"),
            "app.def:1: header: 'Bootstrap: localimage' needs a 'From:' header (the image to start from)"
        );
        assert_eq!(
            e("From: x\n%post\n true\n"),
            "app.def:1: header: no 'Bootstrap:' header before the first section"
        );
        assert_eq!(
            e("Bootstrap: docker\nFrm: x\n"),
            "app.def:2: header: unknown header keyword 'Frm'"
        );
        assert!(
            e("Bootstrap: library\nFrom: x\n").contains("'Bootstrap: library' is not supported")
        );
        assert!(e("Bootstrap: docker\nFrom: x\n%appinstall foo\n make\n")
            .starts_with("app.def:3: %appinstall: SCIF app sections"));
        assert_eq!(
            e("Bootstrap: docker\nFrom: x\n%files\n  a b c\n"),
            "app.def:4: %files: 'a b c': expected SOURCE [DESTINATION] (quote names with blanks)"
        );
        assert!(e("").contains("no 'Bootstrap:' header"));
        assert!(p("Bootstrap: scratch\n%setup\n  true\n").is_ok());
    }

    #[test]
    fn headers_continue_and_sections_repeat() {
        let d = p("Bootstrap: docker\nFrom: a\\\n  b\nOtherURL2: x\n%post\n  one\n%post\n  two\n")
            .unwrap();
        assert_eq!(d.last().from, "ab");
        assert_eq!(d.last().post.as_ref().unwrap().body, "  one\n  two\n");
    }

    #[test]
    fn shebangs_as_apptainer_writes_them() {
        let s = Script {
            args: String::new(),
            body: "  echo hi\n".into(),
            line: 1,
        };
        assert_eq!(
            s.shebang_and_body(),
            ("#!/bin/sh".into(), "  echo hi\n".into())
        );
        let s = Script {
            args: "-e # comment".into(),
            body: "#!/bin/bash\necho hi\n".into(),
            line: 1,
        };
        assert_eq!(
            s.shebang_and_body(),
            ("#!/bin/bash -e".into(), "echo hi\n".into())
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        for t in [
            "%",
            "%%\n",
            "Bootstrap:",
            "Bootstrap:\n%files\n'",
            "{{",
            "Bootstrap: docker\nFrom: {{ }}\n",
            "bootstrap: scratch\r\n%post\r\n true\r\n",
            "\u{feff}Bootstrap: scratch",
        ] {
            let _ = p(t);
        }
    }
}
