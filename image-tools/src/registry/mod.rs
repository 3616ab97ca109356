//! Pulling images from a registry (Docker Registry HTTP API v2 / OCI distribution) for
//! `launcher build OUT docker://REF`.
//!
//! [`pull`] resolves the reference to one platform's manifest, fetches the config and
//! layers into the shared blob [`Cache`] (verifying every digest), and writes a small OCI
//! image layout whose `blobs/` is the cache, which [`crate::oci::stage`] then unpacks like
//! any other layout: layer application is not repeated here.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use image_tools::registry::{pull, PullOptions, Reference};
//! let r = Reference::parse("alpine:3.20")?;
//! let pulled = pull(&r, "amd64", &PullOptions::new(false), std::path::Path::new("/tmp/layout"))?;
//! let staged = image_tools::oci::stage(&pulled.source, "amd64", std::path::Path::new("/tmp/stage"))?;
//! # Ok(()) }
//! ```

mod auth;
mod cache;
mod client;
mod error;
pub mod oras;
mod reference;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub use auth::{
    credentials_from_config, docker_config_path, parse_challenges, Challenge, Credentials,
};
pub use cache::{clean as clean_cache, usage as cache_usage, Cache, Fetched, Usage};
pub use error::{Error, Result};
pub use reference::{Reference, DOCKER_HUB};

use crate::oci::Descriptor;
pub use crate::oci::Platform;
use client::Client;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Indexes pointing at indexes deeper than this are refused (no loops).
const MAX_NESTING: usize = 4;

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Plain HTTP instead of HTTPS (a local registry).
    pub insecure: bool,
    /// The cache root; `None`: [`Cache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Progress bars on stderr.
    pub progress: bool,
    /// Where credentials come from; `None`: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

impl PullOptions {
    /// The default cache, progress bars when stderr is a terminal.
    pub fn new(insecure: bool) -> PullOptions {
        PullOptions {
            insecure,
            cache_dir: None,
            progress: std::io::stderr().is_terminal(),
            docker_config: None,
        }
    }
}

/// What a pull did, for the build's summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    /// `docker://REF`.
    pub name: String,
    /// The platform manifest's digest.
    pub manifest_digest: String,
    /// Config and layers.
    pub blobs: usize,
    pub downloaded: usize,
    pub cached: usize,
    pub resumed: usize,
    pub bytes_downloaded: u64,
}

/// A pulled image: an OCI layout source for [`crate::oci::stage`].
#[derive(Debug)]
pub struct Pulled {
    pub source: crate::oci::Source,
    pub report: PullReport,
}

/// Picks the `arch` ("amd64", "arm64/v8", "linux/arm/v7") entry of an index, as
/// `oci::stage` does for layouts; the error lists the platforms there are.
pub fn select_platform(index: &Value, arch: &str, what: &str) -> Result<(usize, Platform)> {
    let descs: Vec<Descriptor> = index
        .get("manifests")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::Invalid(format!("{what}: malformed index: {e}")))?
        .unwrap_or_default();
    let a = arch.strip_prefix("linux/").unwrap_or(arch);
    let (want_arch, want_variant) = match a.split_once('/') {
        Some((a, v)) => (a, Some(v)),
        None => (a, None),
    };
    for (i, d) in descs.iter().enumerate() {
        if let Some(p) = &d.platform {
            if p.os == "linux"
                && p.architecture == want_arch
                && want_variant.is_none_or(|v| p.variant.as_deref() == Some(v))
            {
                return Ok((i, p.clone()));
            }
        }
    }
    let mut have: Vec<String> = descs
        .iter()
        .map(|d| d.platform.clone().unwrap_or_default().show())
        .filter(|p| p != "unknown/unknown" && p != "/")
        .collect();
    have.dedup();
    Err(Error::NotFound(format!(
        "{what}: no linux/{a} image (available: {}); choose one with --arch",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )))
}

/// Pulls `reference` for `arch` into the cache and writes an OCI layout in `layout_dir`
/// (created; its `blobs` is a link to the cache).
pub fn pull(
    reference: &Reference,
    arch: &str,
    opts: &PullOptions,
    layout_dir: &Path,
) -> Result<Pulled> {
    let cache_root = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => Cache::default_dir()?,
    };
    let cache = Cache::open(&cache_root)?;
    let mut client = Client::new(reference, opts.insecure, opts.docker_config.as_deref());
    let name = client.name();

    let (doc, platform) = resolve_manifest(&mut client, &cache, reference, arch, &name)?;
    let what = format!("{name}: manifest {}", doc.digest);
    let config: Descriptor = doc
        .json
        .get("config")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::Invalid(format!("{what}: malformed config descriptor: {e}")))?
        .ok_or_else(|| Error::Invalid(format!("{what}: no config")))?;
    let layers: Vec<Descriptor> = doc
        .json
        .get("layers")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::Invalid(format!("{what}: malformed layer list: {e}")))?
        .unwrap_or_default();
    let mut report = PullReport {
        name: name.clone(),
        manifest_digest: doc.digest.clone(),
        ..PullReport::default()
    };
    let mut blobs = vec![(config, "config".to_string())];
    let n = layers.len();
    blobs.extend(
        layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| (l, format!("layer {}/{n}", i + 1))),
    );
    for (d, kind) in &blobs {
        let digest = valid_digest(&d.digest, &format!("{what}: {kind}"))?;
        let bwhat = format!("{name}: {kind} {digest}");
        let bar = progress_bar(opts.progress, kind, &digest);
        let f = cache::fetch_blob(&mut client, &cache, &digest, d.size, &bwhat, &bar)?;
        bar.finish_and_clear();
        report.blobs += 1;
        if f.cached {
            report.cached += 1;
        } else {
            report.downloaded += 1;
            report.bytes_downloaded += f.downloaded;
        }
        if f.resumed_from > 0 {
            report.resumed += 1;
        }
    }

    write_layout(layout_dir, &cache, &doc, platform.as_ref())?;
    Ok(Pulled {
        source: crate::oci::Source::OciLayout {
            dir: layout_dir.to_path_buf(),
            reference: None,
        },
        report,
    })
}

/// The platform manifest `reference` names for `arch` (through any index), with the
/// platform an index picked.
fn resolve_manifest(
    client: &mut Client,
    cache: &Cache,
    reference: &Reference,
    arch: &str,
    name: &str,
) -> Result<(Document, Option<Platform>)> {
    // The tag or digest, then down through indexes to one platform's manifest.
    let mut doc = fetch_manifest(
        client,
        cache,
        reference.manifest_ref(),
        reference.digest.as_deref(),
        None,
        name,
    )?;
    let mut platform = None;
    for depth in 0.. {
        if !matches!(doc.media_type.as_str(), OCI_INDEX | DOCKER_LIST) {
            break;
        }
        if depth >= MAX_NESTING {
            return Err(Error::Invalid(format!(
                "{name}: image indexes nested too deeply"
            )));
        }
        let what = format!("{name}: index {}", doc.digest);
        let (i, p) = select_platform(&doc.json, arch, &what)?;
        let d: Descriptor = serde_json::from_value(doc.json["manifests"][i].clone())
            .map_err(|e| Error::Invalid(format!("{what}: malformed descriptor: {e}")))?;
        let digest = valid_digest(&d.digest, &what)?;
        doc = fetch_manifest(client, cache, &digest, Some(&digest), d.size, name)?;
        if doc.media_type != OCI_INDEX && doc.media_type != DOCKER_LIST {
            if let Some(mt) = d
                .media_type
                .filter(|m| m == OCI_MANIFEST || m == DOCKER_MANIFEST)
            {
                doc.media_type = mt;
            }
        }
        platform = Some(p);
    }
    if !matches!(doc.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
        return Err(Error::Invalid(format!(
            "{name}: unsupported manifest media type {:?}",
            doc.media_type
        )));
    }

    Ok((doc, platform))
}

/// The digest of the platform manifest `reference` names for `arch`: what identifies the
/// image's content (a tag may move; this does not). Fetches manifests only, no layers.
pub fn resolve(reference: &Reference, arch: &str, opts: &PullOptions) -> Result<String> {
    let cache_root = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => Cache::default_dir()?,
    };
    let cache = Cache::open(&cache_root)?;
    let mut client = Client::new(reference, opts.insecure, opts.docker_config.as_deref());
    let name = client.name();
    Ok(
        resolve_manifest(&mut client, &cache, reference, arch, &name)?
            .0
            .digest,
    )
}

fn progress_bar(show: bool, kind: &str, digest: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let short = digest.strip_prefix("sha256:").unwrap_or(digest);
    bar.set_message(format!("{kind} {}", &short[..12.min(short.len())]));
    bar
}

/// A fetched manifest or index.
struct Document {
    media_type: String,
    digest: String,
    size: u64,
    json: Value,
}

/// GET a manifest by tag or digest, check it (against `expect` when given, and the
/// registry's `Docker-Content-Digest`) and store it in the cache.
fn fetch_manifest(
    client: &mut Client,
    cache: &Cache,
    reference: &str,
    expect: Option<&str>,
    size: Option<u64>,
    name: &str,
) -> Result<Document> {
    let what = if expect.is_some() {
        format!("{name}: manifest {reference}")
    } else {
        name.to_string()
    };
    let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
    let resp = client.get(
        &format!("manifests/{reference}"),
        &[("Accept", accept)],
        &what,
    )?;
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let content_type = header("content-type")
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let served_digest = header("docker-content-digest");
    let data = client::read_document(resp, &what)?;
    let digest = format!("sha256:{:x}", Sha256::digest(&data));
    if let Some(e) = expect {
        if e != digest {
            return Err(Error::DigestMismatch {
                what,
                expected: e.to_string(),
                actual: digest,
            });
        }
    }
    if let Some(s) = served_digest.filter(|s| s.starts_with("sha256:")) {
        if s != digest {
            return Err(Error::DigestMismatch {
                what: format!("{what} (Docker-Content-Digest)"),
                expected: s,
                actual: digest,
            });
        }
    }
    if let Some(s) = size.filter(|&s| s != data.len() as u64) {
        return Err(Error::Invalid(format!(
            "{what}: size mismatch: the index says {s} bytes, the registry sent {}",
            data.len()
        )));
    }
    let json: Value = serde_json::from_slice(&data)
        .map_err(|e| Error::Invalid(format!("{what}: invalid JSON: {e}")))?;
    if json.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Err(Error::Invalid(format!(
            "{what}: a Docker schema 1 manifest (deprecated, unsupported); re-push the image with a current tool"
        )));
    }
    // The document's own mediaType, else the Content-Type, else its shape.
    let known = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
    let media_type = json
        .get("mediaType")
        .and_then(Value::as_str)
        .filter(|m| known.contains(m))
        .map(String::from)
        .or_else(|| {
            known
                .contains(&content_type.as_str())
                .then(|| content_type.clone())
        })
        .unwrap_or_else(|| {
            if json.get("manifests").is_some() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
    cache.put(&digest, &data)?;
    Ok(Document {
        media_type,
        digest,
        size: data.len() as u64,
        json,
    })
}

fn valid_digest(d: &str, what: &str) -> Result<String> {
    reference::parse_digest(d).ok_or_else(|| {
        Error::Invalid(format!(
            "{what}: unsupported or malformed digest {d:?} (only sha256)"
        ))
    })
}

/// `oci-layout`, `index.json` naming the manifest, and `blobs` → the cache.
fn write_layout(
    dir: &Path,
    cache: &Cache,
    doc: &Document,
    platform: Option<&Platform>,
) -> Result<()> {
    let io = |p: &Path| Error::io(format!("writing the image layout {}", p.display()));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut desc = json!({
        "mediaType": doc.media_type,
        "digest": doc.digest,
        "size": doc.size,
    });
    if let Some(p) = platform {
        let mut pj = json!({"architecture": p.architecture, "os": p.os});
        if let Some(v) = &p.variant {
            pj["variant"] = json!(v);
        }
        desc["platform"] = pj;
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
    let p = dir.join("oci-layout");
    std::fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&p))?;
    let p = dir.join("index.json");
    std::fs::write(&p, index.to_string()).map_err(io(&p))?;
    let p = dir.join("blobs");
    std::os::unix::fs::symlink(cache.blobs_dir(), &p).map_err(io(&p))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_selection() {
        let index = json!({"manifests": [
            {"digest": "sha256:1", "platform": {"architecture": "amd64", "os": "linux"}},
            {"digest": "sha256:2", "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
            {"digest": "sha256:3", "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"digest": "sha256:4", "platform": {"architecture": "unknown", "os": "unknown"}},
            {"digest": "sha256:5", "platform": {"architecture": "amd64", "os": "windows"}}
        ]});
        assert_eq!(select_platform(&index, "amd64", "x").unwrap().0, 0);
        assert_eq!(select_platform(&index, "linux/amd64", "x").unwrap().0, 0);
        assert_eq!(select_platform(&index, "arm64", "x").unwrap().0, 2);
        assert_eq!(select_platform(&index, "arm64/v8", "x").unwrap().0, 2);
        assert_eq!(select_platform(&index, "arm/v7", "x").unwrap().0, 1);
        let e = select_platform(&index, "riscv64", "docker://x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "docker://x: no linux/riscv64 image (available: linux/amd64, linux/arm/v7, linux/arm64/v8, windows/amd64); choose one with --arch"
        );
        assert!(select_platform(&index, "arm/v6", "x").is_err());
        assert!(select_platform(&json!({"manifests": "no"}), "amd64", "x").is_err());
    }
}
