//! Shell wildcards in a definition file's `%files` sources (`*`, `?`, `[a-z]`, `[!x]`, `\`
//! quoting), as Apptainer expands them: per path component, a leading `.` matched only by a
//! pattern that starts with one, matches in sorted order, none an error.
//! A few dozen lines rather than a crate: the tree has no glob crate, and only matching one
//! component against directory entries is needed.

use std::path::{Path, PathBuf};

/// Whether `s` holds a wildcard (and so is expanded).
pub fn has_magic(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// Whether the component `name` matches the component pattern `pat`.
pub fn matches(pat: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pat.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    // The last `*` seen and the name position it currently stands up to: on a mismatch,
    // the star takes one more byte and matching resumes after it.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            if pat[p] == b'*' {
                star = Some((p, n));
                p += 1;
                continue;
            }
            if let Some(next) = step(pat, p, name[n]) {
                p = next;
                n += 1;
                continue;
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

/// The pattern position after the element at `p` when it matches the byte `c`.
fn step(pat: &[u8], p: usize, c: u8) -> Option<usize> {
    match pat[p] {
        b'?' => Some(p + 1),
        b'[' => match class(pat, p, c) {
            Some((true, next)) => Some(next),
            Some((false, _)) => None,
            // No closing `]`: a literal `[`.
            None => (c == b'[').then_some(p + 1),
        },
        b'\\' if p + 1 < pat.len() => (pat[p + 1] == c).then_some(p + 2),
        b => (b == c).then_some(p + 1),
    }
}

/// The bracket expression at `p`: whether it matches `c`, and the position after it; None
/// when it is not closed.
fn class(pat: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = p + 1;
    let negate = matches!(pat.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let b = *pat.get(i)?;
        if b == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|&e| e != b']') {
            let e = pat[i + 2];
            hit |= b <= c && c <= e;
            i += 3;
        } else {
            hit |= b == c;
            i += 1;
        }
    }
}

/// The paths `pattern` names, as written (relative stays relative), sorted per component.
/// `dir_of(path)` is where the directory `path` is read (the host's, or one resolved inside
/// a stage's root); an unreadable directory matches nothing.
pub fn expand(
    pattern: &str,
    dir_of: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<String>, String> {
    let absolute = pattern.starts_with('/');
    let mut found = vec![if absolute {
        "/".to_string()
    } else {
        String::new()
    }];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            if !has_magic(comp) {
                next.push(format!("{base}{comp}/"));
                continue;
            }
            let shown = if base.is_empty() { "." } else { base.as_str() };
            let Some(dir) = dir_of(shown) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| matches(comp.as_bytes(), n.as_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| format!("{base}{n}/")));
        }
        found = next;
    }
    let found: Vec<String> = found
        .into_iter()
        .map(|f| f.trim_end_matches('/').to_string())
        .filter(|f| !f.is_empty() && dir_of(f).is_some_and(|p| p.symlink_metadata().is_ok()))
        .collect();
    if found.is_empty() {
        return Err("no file matches the pattern".into());
    }
    Ok(found)
}

/// `dir_of` for host paths: the path itself.
pub fn on_host(p: &str) -> Option<PathBuf> {
    Some(Path::new(p).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_match_as_in_the_shell() {
        let m = |p: &str, n: &str| matches(p.as_bytes(), n.as_bytes());
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "a.txt.bak"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abbbc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("?", "x") && !m("?", "xy") && !m("?", ""));
        assert!(m("[a-c]x", "bx") && !m("[a-c]x", "dx"));
        assert!(m("[!a-c]x", "dx") && !m("[!a-c]x", "ax"));
        assert!(m("[]]", "]") && m("[a-]", "-"));
        assert!(m("[", "[") && m("\\*", "*") && !m("\\*", "a"));
        assert!(!m("*", ".hidden") && m(".*", ".hidden"));
        assert!(m("*", "") && m("**", "abc"));
        assert!(has_magic("a/*.so") && !has_magic("/etc/passwd"));
    }

    #[test]
    fn patterns_expand_per_component_in_order() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "lib/a.so",
            "lib/b.so",
            "lib/c.txt",
            "lib/.h.so",
            "src/x/a.so",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let base = d.path().to_str().unwrap();
        let got = expand(&format!("{base}/lib/*.so"), &on_host).unwrap();
        assert_eq!(
            got,
            vec![format!("{base}/lib/a.so"), format!("{base}/lib/b.so")]
        );
        let got = expand(&format!("{base}/*/[ax]/a.so"), &on_host).unwrap();
        assert_eq!(got, vec![format!("{base}/src/x/a.so")]);
        let e = expand(&format!("{base}/lib/*.none"), &on_host).unwrap_err();
        assert_eq!(e, "no file matches the pattern");
        // Relative patterns stay relative to where the directory is read.
        let rel = |p: &str| Some(d.path().join(p));
        assert_eq!(expand("lib/?.txt", &rel).unwrap(), vec!["lib/c.txt"]);
    }
}
