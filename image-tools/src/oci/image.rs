//! Finding the image in a source: OCI index / manifest, Docker manifest list /
//! manifest, and `docker save`'s manifest.json (or the legacy `repositories`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::blobs::{normalize, Store};
use super::digest::{verify, Digest};
use super::error::{Error, Result};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Index -> index -> manifest chains deeper than this are refused (no loops).
const MAX_NESTING: usize = 8;

/// A descriptor of an index, manifest, config or layer (also read by the registry client).
#[derive(Deserialize, Debug, Clone)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: Option<String>,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: Option<u64>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub(crate) fn show(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// How a layer's bytes are checked.
pub(crate) enum Check {
    /// The digest of the blob as stored (OCI descriptors).
    Blob(Digest, Option<u64>),
    /// The digest of the uncompressed tar (docker-archive: the config's diff_ids).
    Uncompressed(Digest),
    /// Nothing to check against (legacy docker-archive without manifest.json).
    None,
}

pub(crate) struct LayerRef {
    pub(crate) member: String,
    pub(crate) media_type: Option<String>,
    pub(crate) check: Check,
}

pub(crate) struct Resolved {
    pub(crate) manifest_digest: String,
    pub(crate) config_digest: String,
    pub(crate) config: Value,
    pub(crate) layers: Vec<LayerRef>,
}

/// The wanted platform: "amd64", "arm64/v8", "linux/arm/v7".
struct Want<'a> {
    arch: &'a str,
    variant: Option<&'a str>,
}

impl<'a> Want<'a> {
    fn parse(arch: &'a str) -> Want<'a> {
        let arch = arch.strip_prefix("linux/").unwrap_or(arch);
        match arch.split_once('/') {
            Some((a, v)) => Want {
                arch: a,
                variant: Some(v),
            },
            None => Want {
                arch,
                variant: None,
            },
        }
    }

    fn matches(&self, p: &Platform) -> bool {
        p.os == "linux"
            && p.architecture == self.arch
            && self.variant.is_none_or(|v| p.variant.as_deref() == Some(v))
    }

    fn show(&self) -> String {
        match self.variant {
            Some(v) => format!("linux/{}/{v}", self.arch),
            None => format!("linux/{}", self.arch),
        }
    }
}

fn parse_json<'de, T: Deserialize<'de>>(what: &str, data: &'de [u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Invalid(format!("{what}: invalid JSON: {e}")))
}

/// Reads and verifies a content-addressed JSON blob.
fn read_blob(store: &Store, d: &Descriptor, kind: &str) -> Result<(Digest, Vec<u8>)> {
    let src = store.describe();
    let digest = Digest::parse(&d.digest, &format!("{src}: {kind} descriptor"))?;
    let what = format!("{src}: {kind} {digest}");
    let data = store.read_small(&digest.blob_path())?;
    verify(&what, &data, &digest, d.size)?;
    Ok((digest, data))
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
}

/// An OCI image layout (directory or archive): index.json, then down to one image.
pub(crate) fn resolve_layout(
    store: &Store,
    reference: Option<&str>,
    arch: &str,
) -> Result<Resolved> {
    let src = store.describe();
    if !store.exists("index.json") {
        return Err(Error::Invalid(format!(
            "{src}: not an OCI image layout (no index.json)"
        )));
    }
    let index: Index = parse_json(
        &format!("{src}: index.json"),
        &store.read_small("index.json")?,
    )?;
    let tags = || {
        let t: Vec<&str> = index.manifests.iter().filter_map(ref_name).collect();
        if t.is_empty() {
            "none".to_string()
        } else {
            t.join(", ")
        }
    };
    let candidates: Vec<&Descriptor> = match reference {
        Some(r) => {
            let c: Vec<_> = index
                .manifests
                .iter()
                .filter(|d| ref_name(d) == Some(r))
                .collect();
            if c.is_empty() {
                return Err(Error::NotFound(format!(
                    "{src}: no image tagged {r:?} (tags: {})",
                    tags()
                )));
            }
            c
        }
        None => index.manifests.iter().collect(),
    };
    let chosen = match candidates.as_slice() {
        [] => {
            return Err(Error::NotFound(format!(
                "{src}: index.json lists no images"
            )))
        }
        [one] => (*one).clone(),
        // Several platform-specific manifests: the layout's index is the image index.
        many if many.iter().all(|d| d.platform.is_some()) => {
            pick_platform(&src, many.iter().copied(), arch)?
        }
        _ => {
            return Err(Error::NotFound(format!(
                "{src}: several images; choose one with :TAG (tags: {})",
                tags()
            )))
        }
    };
    resolve_descriptor(store, &chosen, arch, 0)
}

fn pick_platform<'a>(
    what: &str,
    descs: impl Iterator<Item = &'a Descriptor> + Clone,
    arch: &str,
) -> Result<Descriptor> {
    let want = Want::parse(arch);
    if let Some(d) = descs
        .clone()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
    {
        return Ok(d.clone());
    }
    let mut have: Vec<String> = descs
        .map(|d| d.platform.clone().unwrap_or_default().show())
        .collect();
    have.dedup();
    Err(Error::NotFound(format!(
        "{what}: no {} image (available: {})",
        want.show(),
        have.join(", ")
    )))
}

/// Follows an index or manifest descriptor down to the image.
fn resolve_descriptor(store: &Store, d: &Descriptor, arch: &str, depth: usize) -> Result<Resolved> {
    let src = store.describe();
    if depth > MAX_NESTING {
        return Err(Error::Invalid(format!(
            "{src}: image indexes nested too deeply"
        )));
    }
    let (digest, data) = read_blob(store, d, "manifest")?;
    let what = format!("{src}: manifest {digest}");
    let json: Value = parse_json(&what, &data)?;
    // The descriptor's media type, else the document's, else its shape.
    let media = d
        .media_type
        .clone()
        .or_else(|| {
            json.get("mediaType")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| {
            if json.get("manifests").is_some() {
                OCI_INDEX.into()
            } else {
                OCI_MANIFEST.into()
            }
        });
    match media.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let index: Index = parse_json(&what, &data)?;
            let chosen = pick_platform(&what, index.manifests.iter(), arch)?;
            resolve_descriptor(store, &chosen, arch, depth + 1)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest = parse_json(&what, &data)?;
            let (config_digest, config_data) = read_blob(store, &m.config, "config")?;
            let config: Value =
                parse_json(&format!("{src}: config {config_digest}"), &config_data)?;
            check_platform(&format!("{src}: config {config_digest}"), &config, arch)?;
            let mut layers = Vec::new();
            for (i, l) in m.layers.iter().enumerate() {
                let ld = Digest::parse(&l.digest, &format!("{what}: layer {}", i + 1))?;
                layers.push(LayerRef {
                    member: ld.blob_path(),
                    media_type: l.media_type.clone(),
                    check: Check::Blob(ld, l.size),
                });
            }
            Ok(Resolved {
                manifest_digest: digest.to_string(),
                config_digest: config_digest.to_string(),
                config,
                layers,
            })
        }
        other => Err(Error::Unsupported(format!(
            "{what}: unsupported manifest media type {other:?}"
        ))),
    }
}

/// A single-platform image must be for the wanted platform (an index chose it already,
/// but a lone manifest did not).
fn check_platform(what: &str, config: &Value, arch: &str) -> Result<()> {
    let want = Want::parse(arch);
    let get = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("");
    let p = Platform {
        architecture: get("architecture").into(),
        os: get("os").into(),
        variant: config
            .get("variant")
            .and_then(Value::as_str)
            .map(String::from),
    };
    // Some tools leave these empty; only a stated, different platform is an error.
    let os_ok = p.os.is_empty() || p.os == "linux";
    let arch_ok = p.architecture.is_empty()
        || (p.architecture == want.arch
            && want
                .variant
                .is_none_or(|v| p.variant.as_deref().is_none_or(|pv| pv == v)));
    if os_ok && arch_ok {
        return Ok(());
    }
    Err(Error::NotFound(format!(
        "{what}: image is for {}, not {}",
        p.show(),
        want.show()
    )))
}

/// A `docker save` archive: manifest.json, or the legacy `repositories` + `<id>/json` chain.
pub(crate) fn resolve_docker(
    store: &Store,
    reference: Option<&str>,
    arch: &str,
) -> Result<Resolved> {
    let src = store.describe();
    if !store.exists("manifest.json") {
        return resolve_legacy(store, reference, arch);
    }
    let what = format!("{src}: manifest.json");
    let entries: Vec<DockerEntry> = parse_json(&what, &store.read_small("manifest.json")?)?;
    let tags = || {
        let t: Vec<String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect();
        if t.is_empty() {
            "none".to_string()
        } else {
            t.join(", ")
        }
    };
    let entry = match reference {
        Some(r) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == r))
            })
            .ok_or_else(|| {
                Error::NotFound(format!("{src}: no image tagged {r:?} (tags: {})", tags()))
            })?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(Error::NotFound(format!("{what}: lists no images"))),
            _ => {
                return Err(Error::NotFound(format!(
                    "{src}: several images (tags: {})",
                    tags()
                )))
            }
        },
    };
    // The config is named by its digest: "<hex>.json" (classic) or "blobs/sha256/<hex>" (Docker 25+).
    let cname = normalize(&entry.config);
    let base = cname.rsplit('/').next().unwrap_or("");
    let config_digest =
        Digest::from_hex(base.strip_suffix(".json").unwrap_or(base)).ok_or_else(|| {
            Error::Invalid(format!(
                "{what}: config {:?} is not named by its digest",
                entry.config
            ))
        })?;
    let cwhat = format!("{src}: config {config_digest}");
    let data = store.read_small(&cname)?;
    verify(&cwhat, &data, &config_digest, None)?;
    let config: Value = parse_json(&cwhat, &data)?;
    check_platform(&cwhat, &config, arch)?;
    // Layer digests are over the uncompressed tars: the config's rootfs.diff_ids.
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::Invalid(format!(
            "{what}: {} layers but the config lists {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, (l, d)) in entry.layers.iter().zip(&diff_ids).enumerate() {
        layers.push(LayerRef {
            member: normalize(l),
            media_type: None,
            check: Check::Uncompressed(Digest::parse(d, &format!("{cwhat}: diff_id {}", i + 1))?),
        });
    }
    Ok(Resolved {
        // No registry manifest in a docker archive: the config digest (the image ID) identifies it.
        manifest_digest: config_digest.to_string(),
        config_digest: config_digest.to_string(),
        config,
        layers,
    })
}

/// Pre-1.10 `docker save`: `repositories` names the top layer id, each `<id>/json`
/// its parent. There are no content digests to check in this format.
fn resolve_legacy(store: &Store, reference: Option<&str>, arch: &str) -> Result<Resolved> {
    let src = store.describe();
    if !store.exists("repositories") {
        return Err(Error::Invalid(format!(
            "{src}: not a docker archive (no manifest.json or repositories)"
        )));
    }
    let what = format!("{src}: repositories");
    let repos: BTreeMap<String, BTreeMap<String, String>> =
        parse_json(&what, &store.read_small("repositories")?)?;
    let all: Vec<(String, &String)> = repos
        .iter()
        .flat_map(|(r, tags)| tags.iter().map(move |(t, id)| (format!("{r}:{t}"), id)))
        .collect();
    let names = || {
        all.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let top = match reference {
        Some(r) => all
            .iter()
            .find(|(n, _)| n == r)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                Error::NotFound(format!("{src}: no image tagged {r:?} (tags: {})", names()))
            })?,
        None => match all.as_slice() {
            [(_, id)] => *id,
            _ => {
                return Err(Error::NotFound(format!(
                    "{src}: several or no images (tags: {})",
                    names()
                )))
            }
        },
    };
    let mut chain = Vec::new();
    let mut id = top.clone();
    let mut config = Value::Null;
    let mut top_digest = String::new();
    loop {
        // Ids become member names: they must be plain hex, nothing path-like.
        if Digest::from_hex(&id).is_none() || chain.len() > 1000 {
            return Err(Error::Invalid(format!("{src}: bad layer id {id:?}")));
        }
        let jwhat = format!("{src}: {id}/json");
        let data = store.read_small(&format!("{id}/json"))?;
        let json: Value = parse_json(&jwhat, &data)?;
        if chain.is_empty() {
            config = json.clone();
            top_digest = Digest::of(&data).to_string();
        }
        chain.push(id.clone());
        match json.get("parent").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => id = p.to_string(),
            _ => break,
        }
    }
    check_platform(&format!("{src}: {top}/json"), &config, arch)?;
    let layers = chain
        .iter()
        .rev()
        .map(|id| LayerRef {
            member: format!("{id}/layer.tar"),
            media_type: None,
            check: Check::None,
        })
        .collect();
    Ok(Resolved {
        manifest_digest: top_digest.clone(),
        config_digest: top_digest,
        config,
        layers,
    })
}
