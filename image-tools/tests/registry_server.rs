//! `registry::pull` against a small registry written here on 127.0.0.1: the bearer-token
//! flow, redirects to another host, Range resumes (honoured and ignored), retries on 5xx,
//! digest mismatches, and Basic auth without credentials. The pulled layout is staged by
//! `oci::stage`, as `launcher build` does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use image_tools::oci;
use image_tools::registry::{pull, Error, PullOptions, Reference};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn resp(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: body.into(),
    }
}

impl Response {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// An HTTP/1.1 server on `ip`:0 that answers each request with `handler` and records it.
struct Server {
    addr: String,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(ip: &str, handler: Arc<Handler>) -> Server {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, l) = (handler.clone(), log2.clone());
                std::thread::spawn(move || serve(stream, &*h, &l));
            }
        });
        Server { addr, log }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        // A TLS handshake record: answer as an HTTP server does, 400 and close.
        if reader
            .fill_buf()
            .map(|b| b.first() == Some(&0x16))
            .unwrap_or(false)
        {
            let _ = out.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let req = Request { path, headers };
        log.lock().unwrap().push(req.clone());
        let r = handler(&req);
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            r.status,
            r.body.len()
        );
        for (k, v) in &r.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&r.body).is_err() {
            return;
        }
    }
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A one-layer image: (manifest, config, layer) bytes.
fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut tar = tar::Builder::new(Vec::new());
    // Big enough that a resumed download is clearly a part.
    let content: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    for (name, data) in [
        ("hello.txt", &b"hello from the registry\n"[..]),
        ("big.bin", &content[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["FROM=fake-registry"], "Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]}
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&layer), "size": layer.len()}]
    })
    .to_string()
    .into_bytes();
    (manifest, config, layer)
}

/// Serves `/v2/test/img/manifests/1` and the blobs; `range` honours `Range:` on blobs.
fn registry_routes(req: &Request, img: &(Vec<u8>, Vec<u8>, Vec<u8>), range: bool) -> Response {
    let (m, c, l) = img;
    let p = req.path.as_str();
    if p == "/v2/test/img/manifests/1" || p == format!("/v2/test/img/manifests/{}", digest(m)) {
        return resp(200, m.clone())
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .header("Docker-Content-Digest", &digest(m));
    }
    for blob in [c, l] {
        if p == format!("/v2/test/img/blobs/{}", digest(blob)) {
            let from = req
                .headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok());
            return match from {
                Some(f) if range && f < blob.len() => resp(206, blob[f..].to_vec()).header(
                    "Content-Range",
                    &format!("bytes {f}-{}/{}", blob.len() - 1, blob.len()),
                ),
                _ => resp(200, blob.clone()),
            };
        }
    }
    resp(
        404,
        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
    )
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn opts(&self) -> PullOptions {
        PullOptions {
            insecure: true,
            cache_dir: Some(self.dir.path().join("cache")),
            progress: false,
            // An empty config: no credentials, whatever the machine's ~/.docker holds.
            docker_config: Some(self.dir.path().join("docker-config.json")),
        }
    }
    fn layout(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn blob(&self, d: &str) -> PathBuf {
        self.dir
            .path()
            .join("cache/blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    }
}

/// Stages the pulled layout and checks the files and config made it.
fn check_staged(source: &oci::Source, dir: &Path) {
    let staged = oci::stage(source, "amd64", dir).unwrap();
    assert_eq!(
        std::fs::read_to_string(staged.root.join("hello.txt")).unwrap(),
        "hello from the registry\n"
    );
    assert_eq!(
        std::fs::metadata(staged.root.join("big.bin"))
            .unwrap()
            .len(),
        800_000
    );
    assert_eq!(staged.config.env, vec!["FROM=fake-registry".to_string()]);
}

#[test]
fn bearer_token_flow_and_redirect_to_storage_without_the_token() {
    let img = Arc::new(image());
    let layer_digest = digest(&img.2);
    // Storage on another address: redirects land there, and the token must not follow.
    let storage = {
        let img = img.clone();
        Server::start(
            "127.0.0.2",
            Arc::new(move |_r: &Request| resp(200, img.2.clone())),
        )
    };
    let storage_addr = storage.addr.clone();
    let realm_addr: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let reg = {
        let (img, realm_addr, layer_digest) =
            (img.clone(), realm_addr.clone(), layer_digest.clone());
        Server::start(
            "127.0.0.1",
            Arc::new(move |r: &Request| {
                if r.path.starts_with("/token?") {
                    return resp(200, r#"{"access_token":"tok-123","expires_in":300}"#);
                }
                if r.headers.get("authorization").map(String::as_str) != Some("Bearer tok-123") {
                    let realm = format!("http://{}/token", realm_addr.lock().unwrap());
                    return resp(401, "").header(
                        "WWW-Authenticate",
                        &format!(
                            r#"Bearer realm="{realm}",service="fake registry",scope="repository:test/img:pull""#
                        ),
                    );
                }
                if r.path == format!("/v2/test/img/blobs/{layer_digest}") {
                    return resp(307, "").header(
                        "Location",
                        &format!("http://{storage_addr}/storage/layer?sig=abc"),
                    );
                }
                registry_routes(r, &img, true)
            }),
        )
    };
    *realm_addr.lock().unwrap() = reg.addr.clone();
    let env = Env::new();
    let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
    let pulled = pull(&r, "amd64", &env.opts(), &env.layout("layout")).unwrap();
    assert_eq!(pulled.report.downloaded, 2);
    assert_eq!(pulled.report.manifest_digest, digest(&img.0));
    check_staged(&pulled.source, &env.layout("stage"));

    let reqs = reg.requests();
    let token_reqs: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert_eq!(token_reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        token_reqs[0].path,
        "/token?service=fake%20registry&scope=repository%3Atest%2Fimg%3Apull"
    );
    assert!(!token_reqs[0].headers.contains_key("authorization"));
    let s = storage.requests();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].path, "/storage/layer?sig=abc");
    assert!(!s[0].headers.contains_key("authorization"), "{s:?}");
    // The manifest went with the OCI and Docker media types in Accept.
    let accept = &reqs
        .iter()
        .find(|r| r.path.contains("/manifests/"))
        .unwrap()
        .headers["accept"];
    for mt in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(accept.contains(mt), "{accept}");
    }
}

#[test]
fn resume_with_range_and_fallback_when_range_is_ignored() {
    let img = Arc::new(image());
    let layer_digest = digest(&img.2);
    for honour_range in [true, false] {
        let reg = {
            let img = img.clone();
            Server::start(
                "127.0.0.1",
                Arc::new(move |r: &Request| registry_routes(r, &img, honour_range)),
            )
        };
        let env = Env::new();
        let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
        // An interrupted earlier download: the first 1000 bytes of the layer.
        let partial = env.blob(&layer_digest).with_extension("partial");
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::fs::write(&partial, &img.2[..1000]).unwrap();
        let pulled = pull(&r, "amd64", &env.opts(), &env.layout("layout")).unwrap();
        check_staged(&pulled.source, &env.layout("stage"));
        assert!(!partial.exists());
        let blob = std::fs::read(env.blob(&layer_digest)).unwrap();
        assert_eq!(digest(&blob), layer_digest);
        let layer_reqs: Vec<_> = reg
            .requests()
            .into_iter()
            .filter(|q| q.path.ends_with(&layer_digest))
            .collect();
        assert_eq!(layer_reqs.len(), 1);
        assert_eq!(
            layer_reqs[0].headers.get("range").map(String::as_str),
            Some("bytes=1000-")
        );
        if honour_range {
            assert_eq!(pulled.report.resumed, 1);
            assert_eq!(
                pulled.report.bytes_downloaded,
                (img.1.len() + img.2.len() - 1000) as u64
            );
        } else {
            assert_eq!(pulled.report.resumed, 0);
            assert_eq!(
                pulled.report.bytes_downloaded,
                (img.1.len() + img.2.len()) as u64
            );
        }
        // Pulled again: all cached, nothing requested but the manifest.
        let before = reg.requests().len();
        let again = pull(&r, "amd64", &env.opts(), &env.layout("layout2")).unwrap();
        assert_eq!((again.report.cached, again.report.downloaded), (2, 0));
        let after: Vec<_> = reg.requests()[before..].to_vec();
        assert!(
            after.len() == 1 && after[0].path.contains("/manifests/"),
            "{after:?}"
        );
    }
}

#[test]
fn retries_5xx_then_succeeds_and_gives_up_eventually() {
    let img = Arc::new(image());
    let failures = Arc::new(AtomicUsize::new(0));
    let reg = {
        let (img, failures) = (img.clone(), failures.clone());
        Server::start(
            "127.0.0.1",
            Arc::new(move |r: &Request| {
                // The first two manifest requests fail; "broken" always does.
                if r.path.contains("/manifests/") && failures.fetch_add(1, Ordering::SeqCst) < 2
                    || r.path.contains("broken")
                {
                    return resp(503, "busy");
                }
                registry_routes(r, &img, true)
            }),
        )
    };
    let env = Env::new();
    let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
    let pulled = pull(&r, "amd64", &env.opts(), &env.layout("layout")).unwrap();
    check_staged(&pulled.source, &env.layout("stage"));

    let r = Reference::parse(&format!("{}/test/broken:1", reg.addr)).unwrap();
    let e = pull(&r, "amd64", &env.opts(), &env.layout("layout2")).unwrap_err();
    assert!(
        matches!(e, Error::Network(_)) && e.to_string().contains("HTTP 503 (busy)"),
        "{e}"
    );
    let broken = reg
        .requests()
        .iter()
        .filter(|q| q.path.contains("broken"))
        .count();
    assert_eq!(broken, 4, "one try and three retries");
}

#[test]
fn corrupt_blobs_and_manifests_are_rejected_and_removed() {
    let img = Arc::new(image());
    let (m, c, l) = &*img;
    let reg = {
        let img = img.clone();
        Server::start(
            "127.0.0.1",
            Arc::new(move |r: &Request| {
                let mut out = registry_routes(r, &img, true);
                // Same size, different bytes.
                if r.path.ends_with(&digest(&img.2)) {
                    let n = out.body.len();
                    out.body[n / 2] ^= 0xff;
                }
                out
            }),
        )
    };
    let env = Env::new();
    let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
    let e = pull(&r, "amd64", &env.opts(), &env.layout("layout")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&format!("layer 1/1 {}", digest(l))) && msg.contains("removed"),
        "{msg}"
    );
    assert!(!env.blob(&digest(l)).exists());
    assert!(!env.blob(&digest(l)).with_extension("partial").exists());
    // The config was fine and stays cached.
    assert!(env.blob(&digest(c)).exists());

    // By digest, a manifest must match the digest asked for.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let reg2 = {
        let img = img.clone();
        Server::start(
            "127.0.0.1",
            Arc::new(move |_r: &Request| {
                resp(200, img.0.clone())
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            }),
        )
    };
    let r = Reference::parse(&format!("{}/test/img@{wrong}", reg2.addr)).unwrap();
    let e = pull(&r, "amd64", &env.opts(), &env.layout("layout2")).unwrap_err();
    assert!(
        matches!(&e, Error::DigestMismatch { expected, actual, .. } if *expected == wrong && *actual == digest(m)),
        "{e}"
    );
}

#[test]
fn index_platforms_and_missing_tags() {
    let img = Arc::new(image());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&img.0), "size": img.0.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "1".repeat(64)), "size": 10,
             "platform": {"architecture": "s390x", "os": "linux"}}
        ]
    })
    .to_string()
    .into_bytes();
    let reg = {
        let (img, index) = (img.clone(), index.clone());
        Server::start(
            "127.0.0.1",
            Arc::new(move |r: &Request| {
                if r.path == "/v2/test/img/manifests/multi" {
                    return resp(200, index.clone())
                        .header("Content-Type", "application/vnd.oci.image.index.v1+json");
                }
                registry_routes(r, &img, true)
            }),
        )
    };
    let env = Env::new();
    let r = Reference::parse(&format!("{}/test/img:multi", reg.addr)).unwrap();
    let pulled = pull(&r, "amd64", &env.opts(), &env.layout("layout")).unwrap();
    check_staged(&pulled.source, &env.layout("stage"));
    assert_eq!(pulled.report.manifest_digest, digest(&img.0));
    // The index is cached too.
    assert!(env.blob(&digest(&index)).exists());

    let e = pull(&r, "arm64", &env.opts(), &env.layout("layout2")).unwrap_err();
    assert!(
        e.to_string()
            .contains("no linux/arm64 image (available: linux/amd64, linux/s390x)"),
        "{e}"
    );
    let r = Reference::parse(&format!("{}/test/img:nope", reg.addr)).unwrap();
    let e = pull(&r, "amd64", &env.opts(), &env.layout("layout3")).unwrap_err();
    assert!(
        matches!(e, Error::NotFound(_)) && e.to_string().contains("no such image or tag"),
        "{e}"
    );
}

#[test]
fn basic_challenge_without_credentials_and_with_them() {
    let img = Arc::new(image());
    let reg = {
        let img = img.clone();
        Server::start(
            "127.0.0.1",
            Arc::new(move |r: &Request| {
                // "user:pa:ss"
                if r.headers.get("authorization").map(String::as_str)
                    != Some("Basic dXNlcjpwYTpzcw==")
                {
                    return resp(401, "").header("WWW-Authenticate", r#"Basic realm="fake""#);
                }
                registry_routes(r, &img, true)
            }),
        )
    };
    let env = Env::new();
    let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
    let e = pull(&r, "amd64", &env.opts(), &env.layout("layout")).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Auth(_))
            && msg.contains("requires authentication")
            && msg.contains("docker-config.json"),
        "{msg}"
    );
    let cfg = env.dir.path().join("docker-config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"dXNlcjpwYTpzcw=="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let pulled = pull(&r, "amd64", &env.opts(), &env.layout("layout2")).unwrap();
    check_staged(&pulled.source, &env.layout("stage"));
}

#[test]
fn plain_http_needs_insecure() {
    let img = Arc::new(image());
    let reg = Server::start(
        "127.0.0.1",
        Arc::new(move |r: &Request| registry_routes(r, &img, true)),
    );
    let env = Env::new();
    let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
    let mut opts = env.opts();
    opts.insecure = false;
    let e = pull(&r, "amd64", &opts, &env.layout("layout")).unwrap_err();
    assert!(e.to_string().contains("--insecure"), "{e}");
    // Nothing went over plain HTTP: the server saw a TLS hello, not a request.
    assert!(reg.requests().is_empty());
}
