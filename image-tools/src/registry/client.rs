//! HTTP side of a pull: one agent per registry, anonymous or authenticated (bearer
//! tokens, Basic), bounded retries on connection errors and 5xx, one-line errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::config::RedirectAuthHeaders;
use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::auth::{self, Challenge, Credentials};
use super::error::{Error, Result};
use super::reference::Reference;

/// Attempts per request after the first, for connection errors and 5xx answers.
const RETRIES: u32 = 3;
/// Cap on small documents read whole (manifests, tokens, error bodies).
pub(crate) const MAX_DOCUMENT: u64 = 8 << 20;

/// The methods `Client::send` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// What a POST or PUT sends.
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A file, streamed (an image of gigabytes is never held in memory).
    File(&'a Path),
}

pub(crate) struct Client {
    agent: ureq::Agent,
    reference: Reference,
    /// `https://host[:port]` or, with `--insecure`, `http://host[:port]`.
    base: String,
    insecure: bool,
    /// The `Authorization` value once a challenge has been answered.
    authorization: Option<String>,
    /// Loaded from the Docker config on the first challenge: `None` = not looked up yet.
    credentials: Option<Option<Credentials>>,
    /// The Docker config file credentials come from, and how messages name it.
    docker_config: Option<PathBuf>,
    config_name: String,
}

impl Client {
    /// `docker_config`: the credentials file; `None`: `$DOCKER_CONFIG` or `~/.docker`.
    pub(crate) fn new(
        reference: &Reference,
        insecure: bool,
        docker_config: Option<&Path>,
    ) -> Client {
        let config = ureq::Agent::config_builder()
            // Statuses are ours to interpret: 401 carries the challenge, 404 a clear message.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            // Per read, not per body: large layers take as long as they take, stalls do not.
            .timeout_per_read(Some(Duration::from_secs(120)))
            .max_redirects(10)
            // Blob redirects go to storage that rejects (or must not see) our token.
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .user_agent(concat!("launcher/", env!("CARGO_PKG_VERSION")))
            .build();
        let scheme = if insecure { "http" } else { "https" };
        Client {
            agent: ureq::Agent::new_with_config(config),
            reference: reference.clone(),
            base: format!("{scheme}://{}", reference.registry),
            insecure,
            authorization: None,
            credentials: None,
            config_name: match (docker_config, std::env::var_os("DOCKER_CONFIG")) {
                (Some(p), _) => p.display().to_string(),
                (None, Some(d)) if !d.is_empty() => "$DOCKER_CONFIG/config.json".to_string(),
                _ => "~/.docker/config.json".to_string(),
            },
            docker_config: docker_config
                .map(Path::to_path_buf)
                .or_else(auth::docker_config_path),
        }
    }

    /// `docker://REF`, for messages.
    pub(crate) fn name(&self) -> String {
        format!("docker://{}", self.reference)
    }

    /// GET `/v2/<repository>/<path>`. Returns 2xx and 416 responses (the caller handles
    /// ranges); everything else becomes an error naming `what`.
    pub(crate) fn get(
        &mut self,
        path: &str,
        headers: &[(&str, String)],
        what: &str,
    ) -> Result<Response<Body>> {
        let resp = self.send(Method::Get, path, headers, &Payload::Empty, what)?;
        match resp.status().as_u16() {
            200..=299 | 416 => Ok(resp),
            404 => Err(Error::NotFound(format!(
                "{what}: no such image or tag (HTTP 404 from {})",
                self.reference.registry
            ))),
            _ => Err(self.status_error(what, resp)),
        }
    }

    /// One request: GET or HEAD, or POST/PUT with `payload`, to `target` (a URL, a
    /// path from the registry's root such as an upload `Location`, or a path under
    /// `/v2/<repository>/`). Answers one 401 challenge and retries connection errors and 5xx
    /// answers; returns every other answer for the caller to judge, but 401 and 403, which
    /// become errors naming `what`.
    pub(crate) fn send(
        &mut self,
        method: Method,
        target: &str,
        headers: &[(&str, String)],
        payload: &Payload,
        what: &str,
    ) -> Result<Response<Body>> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else if target.starts_with('/') {
            format!("{}{target}", self.base)
        } else {
            format!("{}/v2/{}/{target}", self.base, self.reference.repository)
        };
        // An absolute target (an upload's Location) may name another host, or plain HTTP
        // behind a TLS-terminating proxy: the registry's credentials go only to the registry,
        // and never in clear text unless --insecure asked for HTTP.
        let same_origin = url == self.base || url.starts_with(&format!("{}/", self.base));
        if url.starts_with("http://") && !self.insecure {
            return Err(Error::Network(format!(
                "{what}: {} sent us to a plain-HTTP address ({}); refusing without --insecure",
                self.reference.registry,
                url.split('?').next().unwrap_or(&url)
            )));
        }
        let mut answered_challenge = !same_origin;
        let mut attempt = 0;
        loop {
            let mut extra: Vec<(&str, String)> = headers.to_vec();
            if let (Some(a), true) = (&self.authorization, same_origin) {
                extra.push(("Authorization", a.clone()));
            }
            let result = match (method, payload) {
                (Method::Get | Method::Head, _) => {
                    let mut req = match method {
                        Method::Get => self.agent.get(&url),
                        _ => self.agent.head(&url),
                    };
                    for (k, v) in &extra {
                        req = req.header(*k, v.as_str());
                    }
                    req.call()
                }
                (Method::Post | Method::Put, _) => {
                    let mut req = match method {
                        Method::Post => self.agent.post(&url),
                        _ => self.agent.put(&url),
                    };
                    for (k, v) in &extra {
                        req = req.header(*k, v.as_str());
                    }
                    match payload {
                        Payload::Empty => req.send_empty(),
                        Payload::Bytes(b) => req.send(*b),
                        Payload::File(path) => {
                            // Opened for each attempt: a retry sends the file from its start.
                            let f = std::fs::File::open(path).map_err(Error::io(format!(
                                "{what}: opening {}",
                                path.display()
                            )))?;
                            req.send(f)
                        }
                    }
                }
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) if retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    backoff(attempt);
                    continue;
                }
                Err(e) => return Err(self.network_error(what, &e)),
            };
            let status = resp.status();
            match status.as_u16() {
                401 if !answered_challenge => {
                    answered_challenge = true;
                    self.answer_challenge(&resp, what)?;
                }
                401 | 403 => return Err(self.denied(what, status)),
                500..=599 if attempt < RETRIES => {
                    attempt += 1;
                    backoff(attempt);
                }
                _ => return Ok(resp),
            }
        }
    }

    /// An answer `send` returned that is not the one wanted, as an error naming `what`.
    pub(crate) fn unexpected(&self, what: &str, resp: Response<Body>) -> Error {
        if resp.status().as_u16() == 404 {
            return Error::NotFound(format!(
                "{what}: no such repository (HTTP 404 from {})",
                self.reference.registry
            ));
        }
        self.status_error(what, resp)
    }

    /// Sets `authorization` from a 401's `WWW-Authenticate` challenges.
    fn answer_challenge(&mut self, resp: &Response<Body>, what: &str) -> Result<()> {
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_challenges)
            .collect();
        let creds = self.credentials()?;
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(c, creds.as_ref(), what)?;
            self.authorization = Some(format!("Bearer {token}"));
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(creds) = creds else {
                return Err(self.no_credentials(what));
            };
            self.authorization = Some(creds.basic_header());
            return Ok(());
        }
        Err(Error::Auth(format!(
            "{what}: {} answered 401 without a usable challenge (WWW-Authenticate: {:?})",
            self.reference.registry,
            challenges
                .first()
                .map(|c| c.scheme.as_str())
                .unwrap_or("none")
        )))
    }

    fn credentials(&mut self) -> Result<Option<Credentials>> {
        if self.credentials.is_none() {
            let found = match &self.docker_config {
                Some(p) => auth::credentials_for(p, &self.reference.registry)?,
                None => None,
            };
            self.credentials = Some(found);
        }
        Ok(self.credentials.clone().flatten())
    }

    /// The bearer token flow: GET realm?service=..&scope=.., with Basic credentials if any.
    fn fetch_token(
        &mut self,
        c: &Challenge,
        creds: Option<&Credentials>,
        what: &str,
    ) -> Result<String> {
        let registry = self.reference.registry.clone();
        let Some(realm) = c.params.get("realm").filter(|r| !r.is_empty()) else {
            return Err(Error::Auth(format!(
                "{what}: {registry}'s bearer challenge names no token realm"
            )));
        };
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(Error::Auth(format!(
                "{what}: {registry}'s token realm {realm:?} is not an http(s) URL"
            )));
        }
        if creds.is_some() && realm.starts_with("http://") && !self.insecure {
            return Err(Error::Auth(format!(
                "{what}: {registry}'s token realm {realm} is plain HTTP; refusing to send credentials there without --insecure"
            )));
        }
        let default_scope = format!("repository:{}:pull", self.reference.repository);
        let scope = c.params.get("scope").unwrap_or(&default_scope);
        let mut url = realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(s) = c.params.get("service") {
            url.push_str(&format!("{sep}service={}", auth::query_escape(s)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", auth::query_escape(scope)));
        let token_what = format!("{what}: token from {realm}");
        let mut attempt = 0;
        let resp = loop {
            let mut req = self.agent.get(&url);
            if let Some(cr) = creds {
                req = req.header("Authorization", cr.basic_header());
            }
            match req.call() {
                Ok(r) if r.status().is_server_error() && attempt < RETRIES => {}
                Ok(r) => break r,
                Err(e) if retryable(&e) && attempt < RETRIES => {}
                Err(e) => return Err(self.network_error(&token_what, &e)),
            }
            attempt += 1;
            backoff(attempt);
        };
        match resp.status().as_u16() {
            200..=299 => {}
            401 | 403 if creds.is_some() => {
                return Err(Error::Auth(format!(
                    "{token_what}: the credentials for {registry} in {} were rejected",
                    self.config_name
                )))
            }
            401 | 403 => return Err(self.no_credentials(what)),
            _ => return Err(self.status_error(&token_what, resp)),
        }
        let body = read_document(resp, &token_what)?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("{token_what}: invalid JSON: {e}")))?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| {
                json.get(*k)
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
            })
            .map(String::from)
            .ok_or_else(|| Error::Auth(format!("{token_what}: the answer has no token")))
    }

    fn no_credentials(&self, what: &str) -> Error {
        Error::Auth(format!(
            "{what}: {} requires authentication (HTTP 401) and no credentials for it were found; add them to {} (e.g. with `docker login {}`)",
            self.reference.registry,
            self.config_name,
            self.reference.registry
        ))
    }

    fn denied(&self, what: &str, status: StatusCode) -> Error {
        let registry = &self.reference.registry;
        match &self.credentials {
            Some(Some(_)) => Error::Auth(format!(
                "{what}: {registry} denied access (HTTP {}) with the credentials from {}; check them and the repository name",
                status.as_u16(),
                self.config_name
            )),
            _ => Error::Auth(format!(
                "{what}: {registry} denied anonymous access (HTTP {}): no such repository, or it is private; for a private one add credentials to {}",
                status.as_u16(),
                self.config_name
            )),
        }
    }

    fn status_error(&self, what: &str, resp: Response<Body>) -> Error {
        let status = resp.status();
        let body = read_document(resp, what).unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        // A registry error document: {"errors":[{"code":..,"message":..}]}.
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|j| {
                let e = j.get("errors")?.get(0)?;
                Some(format!(
                    "{}: {}",
                    e.get("code")?.as_str()?,
                    e.get("message").and_then(|m| m.as_str()).unwrap_or("")
                ))
            })
            .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "));
        let detail: String = detail.chars().take(200).collect();
        let hint = if self.insecure && status.as_u16() == 400 && text.contains("HTTPS") {
            "; it speaks HTTPS: drop --insecure"
        } else {
            ""
        };
        Error::Network(format!(
            "{what}: {} answered HTTP {}{}{hint}",
            self.reference.registry,
            status.as_u16(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ))
    }

    pub(crate) fn network_error(&self, what: &str, e: &ureq::Error) -> Error {
        let registry = &self.reference.registry;
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        let msg = match e {
            ureq::Error::HostNotFound => format!("cannot resolve the host of {registry}"),
            ureq::Error::Io(_) if lower.contains("lookup address") => {
                format!("cannot resolve the host of {registry} (no network or DNS?)")
            }
            ureq::Error::Timeout(t) => format!("{registry} timed out ({t})"),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!(
                    "cannot connect to {registry}: connection refused (is a registry listening there?)"
                )
            }
            _ if !self.insecure && looks_like_tls_to_http(&lower) => format!(
                "TLS handshake with {registry} failed ({text}); it looks like a plain-HTTP registry: use --insecure for HTTP"
            ),
            _ => format!("cannot talk to {registry}: {text}"),
        };
        Error::Network(format!("{what}: {msg}"))
    }
}

/// rustls reading an HTTP answer as a TLS record.
fn looks_like_tls_to_http(lower: &str) -> bool {
    [
        "invalidcontenttype",
        "corrupt message",
        "invalid message",
        "invalidmessage",
        "wrong version",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

pub(crate) fn retryable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io.kind() != std::io::ErrorKind::ConnectionRefused,
        ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) | ureq::Error::BodyStalled => true,
        _ => false,
    }
}

pub(crate) fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(250 << attempt.min(5)));
}

/// Reads a small response body whole (bounded).
pub(crate) fn read_document(resp: Response<Body>, what: &str) -> Result<Vec<u8>> {
    resp.into_body()
        .into_with_config()
        .limit(MAX_DOCUMENT)
        .read_to_vec()
        .map_err(|e| Error::Network(format!("{what}: reading the answer: {e}")))
}
