//! Registry authentication: `WWW-Authenticate` challenges and credentials from Docker's
//! `config.json`. Credentials never appear in messages or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::error::{Error, Result};

/// One challenge of a `WWW-Authenticate` header: `Bearer realm="..",service=".."`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased ("bearer", "basic").
    pub scheme: String,
    /// Parameters with lowercased names.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value (RFC 7235: several challenges, each a scheme and
/// comma-separated `name=value` or `name="quoted"` parameters).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && !b" \t,=\"".contains(&b[*i]) {
            *i += 1;
        }
        header[s..*i].to_string()
    };
    while i < b.len() {
        skip(&mut i, b" \t,");
        let t = token(&mut i);
        if t.is_empty() {
            // A stray character (an unmatched quote or `=`): skip it.
            i += 1;
            continue;
        }
        skip(&mut i, b" \t");
        if i < b.len() && b[i] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i += 1;
            skip(&mut i, b" \t");
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1; // the closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(t.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: t.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <hidden> }}",
            self.username
        )
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where Docker keeps credentials: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".docker/config.json"))
}

/// Credentials for `registry` from a Docker config file, if it exists and has them.
pub fn credentials_for(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", path.display()),
                error: e,
            })
        }
    };
    credentials_from_config(&text, registry)
        .map_err(|why| Error::Auth(format!("{}: {why}", path.display())))
}

/// Finds `registry` in a Docker `config.json` text: `auths.<key>.auth` (base64 of
/// `user:password`) or `auths.<key>.username`/`password`. Keys may carry a scheme and a
/// path (`https://index.docker.io/v1/`); Docker Hub's host names are interchangeable.
pub fn credentials_from_config(
    text: &str,
    registry: &str,
) -> std::result::Result<Option<Credentials>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let want = canonical_host(registry);
    for (key, entry) in auths {
        if canonical_host(key) != want {
            continue;
        }
        if let Some(a) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            // Never echo the value: it is the password, barely encoded.
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| format!("auths.{key}.auth is not valid base64"))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| format!("auths.{key}.auth is not UTF-8 user:password"))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        let field = |f: &str| entry.get(f).and_then(|v| v.as_str()).map(String::from);
        if let (Some(username), Some(password)) = (field("username"), field("password")) {
            return Ok(Some(Credentials { username, password }));
        }
    }
    Ok(None)
}

/// `https://index.docker.io/v1/` → `registry-1.docker.io`; `ghcr.io/` → `ghcr.io`.
fn canonical_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            super::reference::DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

/// Percent-encodes a query parameter value.
pub(crate) fn query_escape(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/ubuntu:pull");

        let c = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (c[0].scheme.as_str(), c[0].params["realm"].as_str()),
            ("basic", "Registry Realm")
        );

        // Several challenges, unquoted values, odd spacing, escapes, case.
        let c = parse_challenges(
            r#"Basic realm=x , BEARER Realm="a\"b", error="insufficient_scope",scope=repo:pull"#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].params["realm"], "x");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "a\"b");
        assert_eq!(c[1].params["error"], "insufficient_scope");
        assert_eq!(c[1].params["scope"], "repo:pull");

        assert!(parse_challenges("").is_empty());
        // Garbage does not panic.
        for g in [
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            "Bearer ,,,=,=\"",
            "a=b",
        ] {
            let _ = parse_challenges(g);
        }
    }

    #[test]
    fn docker_config() {
        let cfg = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "ghcr.io": {"auth": "dTpwOmFzcw=="},
            "127.0.0.1:5000": {"username": "me", "password": "pw"},
            "empty.example": {}
        }}"#;
        let c = credentials_from_config(cfg, "registry-1.docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("hub", "secret")
        );
        // Passwords may contain ':'.
        let c = credentials_from_config(cfg, "ghcr.io").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:ass"));
        let c = credentials_from_config(cfg, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.basic_header(), "Basic bWU6cHc=");
        assert!(credentials_from_config(cfg, "quay.io").unwrap().is_none());
        assert!(credentials_from_config(cfg, "empty.example")
            .unwrap()
            .is_none());
        assert!(credentials_from_config("{}", "ghcr.io").unwrap().is_none());
        assert!(
            credentials_from_config(r#"{"credsStore":"desktop"}"#, "ghcr.io")
                .unwrap()
                .is_none()
        );

        let e =
            credentials_from_config(r#"{"auths":{"h":{"auth":"!!notbase64"}}}"#, "h").unwrap_err();
        assert!(e.contains("base64") && !e.contains("notbase64"), "{e}");
        let e =
            credentials_from_config(r#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#, "h").unwrap_err();
        assert!(e.contains("user:password") && !e.contains("nocolon"), "{e}");
        assert!(credentials_from_config("not json", "h").is_err());
        // Debug never shows the password.
        let dbg = format!(
            "{:?}",
            Credentials {
                username: "u".into(),
                password: "hunter2".into()
            }
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(query_escape("registry.docker.io"), "registry.docker.io");
    }
}
