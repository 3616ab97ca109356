//! `oras://REF`: SIF files kept in an OCI registry as artifacts, the way Apptainer and
//! SingularityCE push and pull them (`apptainer push x.sif oras://host/repo:tag`). The artifact
//! is an OCI image manifest whose config is the empty JSON object under the SIF config media
//! type and whose one layer is the SIF file itself, named by a title annotation. The registry
//! needs nothing special: any registry that stores OCI manifests takes it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::cache::{self, Cache};
use super::client::{Client, Method, Payload};
use super::error::{Error, Result};
use super::reference::Reference;
use super::{fetch_manifest, progress_bar, valid_digest, PullOptions, OCI_MANIFEST};

/// The config of a SIF artifact (Apptainer >= 1.0, SingularityCE >= 3.7).
pub const SIF_CONFIG: &str = "application/vnd.sylabs.sif.config.v1+json";
/// The layer that is the SIF file.
pub const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";
/// Layer types Apptainer also pulls: the config type without `+json` (older pushes write it
/// on the config, not here) and Singularity < 3.7's misspelt prototype.
const SIF_LAYER_OLD: &str = "appliciation/vnd.sylabs.sif.layer.tar";
const TITLE: &str = "org.opencontainers.image.title";
/// The empty JSON object: every SIF artifact's config.
const EMPTY_CONFIG: &[u8] = b"{}";

/// `oras://REF` parsed: the same reference syntax as `docker://`.
pub fn parse(spec: &str) -> Result<Reference> {
    let rest = spec
        .strip_prefix("oras://")
        .ok_or_else(|| Error::Reference(format!("{spec}: not an oras:// reference")))?;
    Reference::parse(rest).map_err(|e| match e {
        Error::Reference(m) => Error::Reference(m.replacen("docker://", "oras://", 1)),
        other => other,
    })
}

/// A pulled SIF artifact: the file (in the blob cache) and its digest.
#[derive(Debug)]
pub struct PulledSif {
    pub path: PathBuf,
    pub digest: String,
    pub manifest_digest: String,
    pub downloaded: bool,
}

/// Fetch the SIF file `reference` names into the blob cache (checked against its digest;
/// an interrupted download resumes; a cached one is not fetched again).
pub fn pull_sif(reference: &Reference, opts: &PullOptions) -> Result<PulledSif> {
    let cache_root = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => Cache::default_dir()?,
    };
    let cache = Cache::open(&cache_root)?;
    let mut client = Client::new(reference, opts.insecure, opts.docker_config.as_deref());
    let name = format!("oras://{reference}");
    let doc = fetch_manifest(
        &mut client,
        &cache,
        reference.manifest_ref(),
        reference.digest.as_deref(),
        None,
        &name,
    )?;
    let what = format!("{name}: manifest {}", doc.digest);
    let layer = sif_layer(&doc.json, &what)?;
    let digest = valid_digest(
        layer.get("digest").and_then(Value::as_str).unwrap_or(""),
        &what,
    )?;
    let size = layer.get("size").and_then(Value::as_u64);
    let bar = progress_bar(opts.progress, "sif", &digest);
    let fetched = cache::fetch_blob(
        &mut client,
        &cache,
        &digest,
        size,
        &format!("{name}: SIF {digest}"),
        &bar,
    )?;
    bar.finish_and_clear();
    Ok(PulledSif {
        path: cache.blob_path(&digest),
        digest,
        manifest_digest: doc.digest,
        downloaded: !fetched.cached,
    })
}

/// The manifest's SIF layer; an error naming what it holds instead when it is not a SIF
/// artifact (a container image pushed by docker, say).
fn sif_layer(manifest: &Value, what: &str) -> Result<Value> {
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_sif = |l: &&Value| {
        matches!(
            l.get("mediaType").and_then(Value::as_str),
            Some(SIF_LAYER | SIF_LAYER_OLD)
        )
    };
    match layers.iter().filter(is_sif).count() {
        1 => Ok(layers.iter().find(is_sif).cloned().unwrap_or_default()),
        0 => {
            let types: Vec<&str> = layers
                .iter()
                .filter_map(|l| l.get("mediaType").and_then(Value::as_str))
                .collect();
            Err(Error::Invalid(format!(
                "{what}: not a SIF artifact (layers: {}); for a container image use docker://",
                if types.is_empty() {
                    "none".to_string()
                } else {
                    types.join(", ")
                }
            )))
        }
        n => Err(Error::Invalid(format!(
            "{what}: {n} SIF layers; a SIF artifact has one"
        ))),
    }
}

/// Push the SIF file `sif` as `reference` (tag `latest` when none is given): its blob, the
/// empty config, then the manifest. Blobs the registry has already are not sent again. The
/// manifest's digest.
pub fn push_sif(sif: &Path, reference: &Reference, opts: &PullOptions) -> Result<String> {
    let name = format!("oras://{reference}");
    if reference.digest.is_some() {
        return Err(Error::Reference(format!(
            "{name}: push to a tag, not a digest (the manifest's digest is known once it is written)"
        )));
    }
    let (digest, size) = file_digest(sif, &name)?;
    let mut client = Client::new(reference, opts.insecure, opts.docker_config.as_deref());
    upload(
        &mut client,
        &Payload::File(sif),
        &digest,
        &format!("{name}: SIF {digest}"),
    )?;
    let config_digest = format!("sha256:{:x}", Sha256::digest(EMPTY_CONFIG));
    upload(
        &mut client,
        &Payload::Bytes(EMPTY_CONFIG),
        &config_digest,
        &format!("{name}: config"),
    )?;
    let title = sif
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.sif".to_string());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": SIF_CONFIG,
            "digest": config_digest,
            "size": EMPTY_CONFIG.len(),
        },
        "layers": [{
            "mediaType": SIF_LAYER,
            "digest": digest,
            "size": size,
            "annotations": { TITLE: title },
        }],
    });
    let body = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Invalid(format!("{name}: writing the manifest: {e}")))?;
    let tag = reference.tag.as_deref().unwrap_or("latest");
    let what = format!("{name}: manifest");
    let resp = client.send(
        Method::Put,
        &format!("manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST.to_string())],
        &Payload::Bytes(&body),
        &what,
    )?;
    if resp.status().as_u16() != 201 {
        return Err(client.unexpected(&what, resp));
    }
    Ok(format!("sha256:{:x}", Sha256::digest(&body)))
}

/// One blob into the repository, unless it is there already: a monolithic upload (POST for
/// an upload session, PUT of the whole blob with its digest), which every registry takes.
fn upload(client: &mut Client, payload: &Payload, digest: &str, what: &str) -> Result<()> {
    let head = client.send(
        Method::Head,
        &format!("blobs/{digest}"),
        &[],
        &Payload::Empty,
        what,
    )?;
    if head.status().is_success() {
        return Ok(());
    }
    let started = client.send(Method::Post, "blobs/uploads/", &[], &Payload::Empty, what)?;
    if started.status().as_u16() != 202 {
        return Err(client.unexpected(what, started));
    }
    let Some(location) = started
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return Err(Error::Invalid(format!(
            "{what}: the registry started an upload but named no Location"
        )));
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let target = format!("{location}{sep}digest={}", digest_escape(digest));
    let done = client.send(
        Method::Put,
        &target,
        &[("Content-Type", "application/octet-stream".to_string())],
        payload,
        what,
    )?;
    if done.status().as_u16() != 201 {
        return Err(client.unexpected(what, done));
    }
    Ok(())
}

/// `sha256:HEX` in a query: the colon escaped.
fn digest_escape(digest: &str) -> String {
    digest.replace(':', "%3A")
}

/// The SHA-256 digest and size of a file, read once.
fn file_digest(path: &Path, what: &str) -> Result<(String, u64)> {
    let err = |op: &str| Error::io(format!("{what}: {op} {}", path.display()));
    let mut f = File::open(path).map_err(err("opening"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err("reading"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{:x}", h.finalize()), size))
}

/// The blob in the cache, copied to `out`: written to a new file of a fresh name beside it
/// (created exclusively, never through a symlink another user planted there) and renamed
/// into place; removed again on any error.
pub fn copy_out(pulled: &PulledSif, out: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.sif".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.{}.{nanos}.partial", std::process::id()));
    let err = |op: &str, p: &Path| Error::io(format!("{op} {}", p.display()));
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err("creating", &tmp))?;
    let copied = File::open(&pulled.path)
        .map_err(err("reading", &pulled.path))
        .and_then(|mut src| std::io::copy(&mut src, &mut dst).map_err(err("writing", &tmp)))
        .and_then(|_| dst.sync_all().map_err(err("writing", &tmp)))
        .and_then(|()| std::fs::rename(&tmp, out).map_err(err("renaming into", out)));
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse("oras://127.0.0.1:5000/lab/solver:1.2").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "lab/solver");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert!(parse("docker://x/y").is_err());
        let e = parse("oras://Bad/Name").unwrap_err().to_string();
        assert!(e.contains("oras://"), "{e}");
    }

    #[test]
    fn only_sif_artifacts() {
        let m = json!({"layers": [{"mediaType": SIF_LAYER, "digest": "sha256:00", "size": 1}]});
        assert!(sif_layer(&m, "m").is_ok());
        let docker =
            json!({"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}]});
        let e = sif_layer(&docker, "m").unwrap_err().to_string();
        assert!(
            e.contains("not a SIF artifact") && e.contains("docker://"),
            "{e}"
        );
        let two = json!({"layers": [{"mediaType": SIF_LAYER}, {"mediaType": SIF_LAYER}]});
        assert!(sif_layer(&two, "m").is_err());
    }
}
