//! Image references as Docker spells them: `ubuntu:24.04`, `ghcr.io/org/img:tag`,
//! `host:port/repo@sha256:...`, normalised to registry + repository + tag/digest.

use std::fmt;

use super::error::{Error, Result};

/// Docker Hub's registry API host (what `docker.io` names).
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` of the registry API.
    pub registry: String,
    /// The repository path, `library/` added for single-name Docker Hub images.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when pulled by digest (wins over the tag).
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference (an optional `docker://` prefix is accepted).
    pub fn parse(spec: &str) -> Result<Reference> {
        let s = spec.strip_prefix("docker://").unwrap_or(spec);
        let bad = |why: &str| Error::Reference(format!("docker://{s}: {why}"));
        if s.is_empty() {
            return Err(bad("empty image reference"));
        }
        let (rest, digest) =
            match s.split_once('@') {
                Some((r, d)) => (
                    r,
                    Some(parse_digest(d).ok_or_else(|| {
                        bad("malformed digest (expected @sha256:<64 hex digits>)")
                    })?),
                ),
                None => (s, None),
            };
        // The first component is a registry if it looks like a host: a dot, a port or localhost.
        let (registry, path) = match rest.split_once('/') {
            Some((first, p)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), p)
            }
            _ => ("docker.io".to_string(), rest),
        };
        // The tag follows the last ':' of the path (a port ':' is in the registry part).
        let (name, tag) = match path.rsplit_once(':') {
            Some((n, t)) => (n, Some(t.to_string())),
            None => (path, None),
        };
        if !valid_registry(&registry) {
            return Err(bad(&format!("malformed registry host {registry:?}")));
        }
        if !valid_repository(name) {
            return Err(bad(&format!(
                "malformed repository name {name:?} (lowercase letters, digits and . _ - separated by /)"
            )));
        }
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad(&format!("malformed tag {t:?}")));
            }
        }
        let hub = matches!(
            registry.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
        );
        let repository = if hub && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_string()
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry: if hub {
                DOCKER_HUB.to_string()
            } else {
                registry
            },
            repository,
            tag,
            digest,
        })
    }

    /// What goes after `/manifests/`: the digest if there is one, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:<64 lowercase hex>`, the only algorithm we verify.
pub(crate) fn parse_digest(d: &str) -> Option<String> {
    let hex = d.strip_prefix("sha256:")?;
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| d.to_string())
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = if r.starts_with('[') {
        match r.find(']') {
            Some(i) => (
                &r[..=i],
                r[i + 1..]
                    .strip_prefix(':')
                    .map(Some)
                    .unwrap_or(if i + 1 == r.len() { None } else { Some("") }),
            ),
            None => return false,
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !host.is_empty()
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Path components of lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
                && !c.contains("..")
                && !c.contains("___")
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || b"._-".contains(&x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (r.registry, r.repository, r.tag, r.digest)
    }

    #[test]
    fn normalises_like_docker() {
        let hub = DOCKER_HUB.to_string();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            p("ubuntu"),
            (hub.clone(), "library/ubuntu".into(), some("latest"), None)
        );
        assert_eq!(
            p("ubuntu:24.04"),
            (hub.clone(), "library/ubuntu".into(), some("24.04"), None)
        );
        assert_eq!(
            p("docker://alpine"),
            (hub.clone(), "library/alpine".into(), some("latest"), None)
        );
        assert_eq!(
            p("docker.io/bitnami/redis:7"),
            (hub.clone(), "bitnami/redis".into(), some("7"), None)
        );
        assert_eq!(
            p("index.docker.io/busybox"),
            (hub, "library/busybox".into(), some("latest"), None)
        );
        assert_eq!(
            p("ghcr.io/org/img:tag"),
            ("ghcr.io".into(), "org/img".into(), some("tag"), None)
        );
        assert_eq!(
            p("localhost/img"),
            ("localhost".into(), "img".into(), some("latest"), None)
        );
        assert_eq!(
            p("127.0.0.1:5000/test/busybox:1"),
            (
                "127.0.0.1:5000".into(),
                "test/busybox".into(),
                some("1"),
                None
            )
        );
        assert_eq!(
            p("[::1]:5000/a"),
            ("[::1]:5000".into(), "a".into(), some("latest"), None)
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            p(&format!("host:5000/a/b@{d}")),
            ("host:5000".into(), "a/b".into(), None, Some(d.clone()))
        );
        let r = Reference::parse(&format!("quay.io/x/y:v1@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.to_string(), format!("quay.io/x/y:v1@{d}"));
        assert_eq!(Reference::parse("a:b").unwrap().manifest_ref(), "b");
    }

    #[test]
    fn malformed_references_are_one_line_errors() {
        for bad in [
            "",
            "Ubuntu",
            "ubuntu:",
            "ubuntu:bad/tag",
            "ubuntu@sha256:abc",
            "ubuntu@md5:0123",
            "host:port/x",
            "a//b",
            "-a",
            "a:-x",
            "ghcr.io/",
            "a b",
        ] {
            let e = Reference::parse(bad).expect_err(bad).to_string();
            assert!(
                e.starts_with("docker://") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }
}
