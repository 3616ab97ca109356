//! The one parser of OCI / Docker image configs: for builds (`oci::stage`) and for launches
//! (the config a SIF image carries). Always compiled, without the build dependencies.

use serde_json::Value;
use std::collections::BTreeMap;

/// The parts of the image config the launcher uses, plus the whole document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub architecture: String,
    pub os: String,
    /// The whole config JSON.
    pub raw: Value,
}

impl ImageConfig {
    /// Reads an OCI / Docker image config: the run settings live under "config", or are the
    /// whole object in the bare form SingularityCE and Apptainer store in SIF files
    /// (`oci-config.json`). A list may also be given as one string (`"Cmd": "sh"`).
    pub fn from_json(raw: Value) -> ImageConfig {
        let c = raw.get("config").cloned().unwrap_or_else(|| raw.clone());
        let list = |k: &str| match c.get(k) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let string = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let labels = match c.get("Labels") {
            Some(Value::Object(m)) => m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        ImageConfig {
            env: list("Env"),
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
            working_dir: string(c.get("WorkingDir")),
            user: string(c.get("User")),
            labels,
            architecture: string(raw.get("architecture")).unwrap_or_default(),
            os: string(raw.get("os")).unwrap_or_default(),
            raw,
        }
    }

    /// Parses JSON bytes; `None` when they are not JSON.
    pub fn from_slice(bytes: &[u8]) -> Option<ImageConfig> {
        serde_json::from_slice(bytes)
            .ok()
            .map(ImageConfig::from_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_bare_forms() {
        let bare = br#"{"Env":["PATH=/bin"],"Cmd":"sh"}"#;
        let c = ImageConfig::from_slice(bare).unwrap();
        assert_eq!(c.env, vec!["PATH=/bin"]);
        assert_eq!(c.cmd, vec!["sh"], "a string Cmd is a one-word list");
        let full =
            br#"{"architecture":"amd64","config":{"Entrypoint":["/app"],"WorkingDir":"/w"}}"#;
        let c = ImageConfig::from_slice(full).unwrap();
        assert_eq!(c.entrypoint, vec!["/app"]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.architecture, "amd64");
        assert!(ImageConfig::from_slice(b"not json").is_none());
    }
}
