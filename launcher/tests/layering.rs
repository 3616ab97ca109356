//! The tree shows the design: `launcher/src`'s folders are the stages of a launch (options →
//! gather → plan → apply) and the leaves they use, dependencies point one way, no two modules
//! import each other, and the planner reads no file system. Checked on the source text, so a
//! change that breaks the layering fails here with the file and the import named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module of the crate may import (besides itself).
fn allowed(module: &str) -> &'static [&'static str] {
    match module {
        "debug" | "host_file" | "env_list" | "image" | "private_dir" => &[],
        "options" => &["env_list"],
        "linker" => &["image", "host_file"],
        "gather" => &[
            "options",
            "image",
            "linker",
            "host_file",
            "env_list",
            "debug",
        ],
        "plan" => &["options", "gather", "image", "linker", "env_list", "debug"],
        "fuse" => &["plan", "image", "private_dir", "env_list", "debug"],
        "apply" => &[
            "options",
            "plan",
            "fuse",
            "image",
            "linker",
            "private_dir",
            "env_list",
            "debug",
        ],
        "launch" => &[
            "options", "gather", "plan", "apply", "image", "fuse", "linker", "env_list", "debug",
        ],
        "lib" => &[
            "options",
            "gather",
            "plan",
            "apply",
            "image",
            "fuse",
            "linker",
            "debug",
            "host_file",
            "private_dir",
            "env_list",
            "launch",
        ],
        other => panic!(
            "launcher/src/{other}: a top-level module this test does not know: add it to allowed()"
        ),
    }
}

struct Source {
    /// The module path inside the crate: `plan::build`, `gather` (for gather/mod.rs), `lib`.
    module: Vec<String>,
    /// The file's text before its unit tests.
    code: String,
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&src).unwrap();
                let mut module: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if module.last().is_some_and(|m| m == "mod") {
                    module.pop();
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let code = match text.find("#[cfg(test)]\nmod ") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                out.push(Source { module, code });
            }
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// Every `crate::a::b::...` path in the code, `use` groups (`crate::a::{b, c::d}`) expanded,
/// as its module-like segments (lowercase names; a type or function ends the path).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `launcher_runtime::...` or similar
        }
        path_tail(rest, Vec::new(), &mut out);
    }
    out
}

/// Reads `a::b::{c, d::e}` from the start of `s` after the segments in `prefix`.
fn path_tail(mut s: &str, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        s = s.trim_start();
        if let Some(group) = s.strip_prefix('{') {
            let mut depth = 1;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        path_tail(&group[start..i], prefix.clone(), out);
                        start = i + 1;
                        if c == '}' {
                            return;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            return;
        }
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let name = &s[..end];
        if name.is_empty() || !name.starts_with(|c: char| c.is_lowercase()) || name == "self" {
            break;
        }
        prefix.push(name.to_string());
        if !s[end..].starts_with("::") {
            break;
        }
        s = &s[end + 2..];
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

fn display(m: &[String]) -> String {
    m.join("::")
}

#[test]
fn stages_depend_one_way() {
    let mut bad = Vec::new();
    for s in sources() {
        let top = s.module.first().cloned().unwrap_or_default();
        let ok = allowed(&top);
        for p in crate_paths(&s.code) {
            if p[0] != top && !ok.contains(&p[0].as_str()) {
                bad.push(format!(
                    "{} imports crate::{} ({} may use only {:?})",
                    display(&s.module),
                    display(&p),
                    top,
                    ok
                ));
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn no_module_import_cycle() {
    let srcs = sources();
    let modules: BTreeSet<Vec<String>> = srcs.iter().map(|s| s.module.clone()).collect();
    // Edges from a file to the longest module prefix of each path it names. A folder's mod.rs
    // naming its own children (declarations and re-exports) is the folder's shape, not an
    // import.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in &srcs {
        let e = edges.entry(s.module.clone()).or_default();
        for p in crate_paths(&s.code) {
            let target = (1..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|m| modules.contains(m));
            if let Some(t) = target {
                let child_of_self = t.len() > s.module.len() && t.starts_with(&s.module);
                if t != s.module && !child_of_self {
                    e.insert(t);
                }
            }
        }
    }
    // A cycle shows as a path that comes back to where it started.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for n in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| display(m)).collect();
            panic!("import cycle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn the_planner_reads_no_file_system() {
    const HOST_IO: &[&str] = &[
        "std::fs",
        "File::open",
        ".exists()",
        ".is_dir()",
        ".is_file()",
        "canonicalize",
        "metadata(",
        "read_dir",
        "read_link",
    ];
    let mut bad = Vec::new();
    for s in sources().iter().filter(|s| s.module[0] == "plan") {
        for (n, line) in s.code.lines().enumerate() {
            for pat in HOST_IO {
                if line.contains(pat) && !line.trim_start().starts_with("//") {
                    bad.push(format!("{}:{}: {}", display(&s.module), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "plan/ must take host facts from gather, not read them:\n{}",
        bad.join("\n")
    );
}

#[test]
fn each_folder_says_its_job() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for e in std::fs::read_dir(&src).unwrap() {
        let dir: PathBuf = e.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
        let doc = text.lines().take_while(|l| l.starts_with("//!")).count();
        assert!(
            doc >= 2,
            "{}/mod.rs: start with a module comment of at least two lines saying the folder's job",
            dir.display()
        );
    }
}
