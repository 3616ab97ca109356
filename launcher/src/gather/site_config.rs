//! The site configuration: `/etc/launcher/launcher.yaml` always, then the file named by
//! `$LAUNCHER_CONFIG` if any, then the user's `~/.config/launcher/launcher.yaml`, taken only
//! when it is the caller's (or root's) and no one else can write it: HOME may name another
//! user's home (issue 20, finding 5).
//!
//! Admins describe their site once: default binds, extra devices, environment edits, the GPU
//! and MPI libraries to bring in, where CDI specs live. The launcher is unprivileged, so the
//! file grants nothing a user could not ask for on the command line; it only saves typing.
//! docs/admin.md documents every key. Unknown keys and wrong types are errors that name the
//! file, the line and the key: a typo must not silently drop a site's bind.
//!
//! The system file cannot be dropped by an environment variable, and its `locked` list names
//! settings the later files and the user's options may not change (issue 20, finding 6): a
//! site's defaults must not vanish by accident. It is no security boundary (docs/security.md):
//! the user runs the launcher with their own rights.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The system file: always read when it exists.
pub const SYSTEM_CONFIG: &str = "/etc/launcher/launcher.yaml";
/// Names one more file, laid over the system file and under the user's (empty: none).
pub const CONFIG_ENV: &str = "LAUNCHER_CONFIG";
/// Lockable keys whose entries always apply: a later file may add entries; what is locked is
/// that the user's binds may not cover their destinations.
const LOCK_KEEPS_ENTRIES: &[&str] = &["binds", "devices", "mpi.binds"];
/// CDI spec directories when the config names none (the CDI specification's defaults).
pub const DEFAULT_CDI_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Binds added to every launch, in `-B` syntax (`SRC[:DST[:ro|rw]]`).
    pub binds: Vec<String>,
    /// Host device nodes or device directories bound at the same path (e.g. /dev/infiniband).
    pub devices: Vec<PathBuf>,
    pub env: EnvEdits,
    pub gpu: GpuConfig,
    pub mpi: MpiConfig,
    pub cdi: CdiConfig,
    pub host: HostPaths,
    /// Which images must carry signatures that verify with the site's keys (checked by the
    /// `launcher` binary before the launch: the signature code is not the runtime's).
    pub signatures: SignaturePolicy,
    /// Decompressed blocks of programs kept across launches (`fuse/block_cache.rs`).
    pub block_cache: BlockCacheConfig,
    /// Keys of the system file that later files and the user's options may not change
    /// (`gpu.default`, `env.set.NAME`, `binds`, …; docs/admin.md "Locked settings"). Only the
    /// system file may have this key.
    pub locked: Vec<String>,
    /// The file whose `locked` list applies, for the refusals' messages.
    #[serde(skip)]
    pub locked_in: Option<PathBuf>,
    /// The last file that set a `signatures` key, for the refusals' messages.
    #[serde(skip)]
    pub signatures_in: Option<PathBuf>,
    /// What loading found worth saying (a user file ignored), one line each, for the user.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Environment edits, applied after the image's environment and before `--env`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnvEdits {
    pub set: BTreeMap<String, String>,
    /// `NAME: dir` → `dir:$NAME` (or `dir` when NAME is unset).
    pub prepend: BTreeMap<String, String>,
    /// `NAME: dir` → `$NAME:dir`.
    pub append: BTreeMap<String, String>,
    pub unset: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// `--gpu` on by default (`--no-gpu` turns it off).
    pub default: Option<bool>,
    pub nvidia: VendorConfig,
    pub rocm: VendorConfig,
}

/// One GPU vendor's host files. A list given here replaces the built-in one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VendorConfig {
    /// Library base names (`libcuda.so`): every ld.so.cache name starting with one is taken.
    pub libraries: Option<Vec<String>>,
    /// Program names (`nvidia-smi`), looked up in `binary_paths`.
    pub binaries: Option<Vec<String>>,
    /// Directories searched for libraries before the ld.so.cache.
    pub library_paths: Vec<PathBuf>,
    /// Directories searched for binaries (default: /usr/bin, /usr/sbin, /bin, /sbin, /usr/local/bin).
    pub binary_paths: Option<Vec<PathBuf>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MpiConfig {
    /// `--mpi` on by default.
    pub default: Option<bool>,
    /// Library base names of the host MPI (and its fabric libraries).
    pub libraries: Vec<String>,
    /// Directories searched for them before the ld.so.cache.
    pub library_paths: Vec<PathBuf>,
    /// Extra binds for MPI (`-B` syntax): fabric configuration, PMIx/Slurm directories.
    pub binds: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlockCacheConfig {
    /// Largest size of a user's block cache on a node, in MiB (default 64; 0: no cache).
    pub max_mb: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CdiConfig {
    /// Where CDI specs are read from (default: /etc/cdi, /var/run/cdi).
    pub spec_dirs: Option<Vec<PathBuf>>,
}

/// The site's signature policy, a simpler kin of Apptainer's execution control list: one
/// rule, "images (under these directories) must be signed by a key in the site keyring", in
/// place of ECL's groups of whitelist/whitestrict/blacklist by fingerprint (docs/admin.md
/// "Signed images"). Each value given replaces the one before; lock `signatures` so that the
/// user's files cannot turn it off.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignaturePolicy {
    /// Images must be signed (default: no).
    pub required: Option<bool>,
    /// Only images whose path (as given, or where its symbolic links lead) is under one of
    /// these directories (default: every image, and the docker:// and other sources too).
    pub under: Option<Vec<PathBuf>>,
    /// The site keyring: its *.pem and *.asc files are the keys that count (default
    /// /etc/launcher/keys); the user's own keys do not.
    pub keys: Option<PathBuf>,
}

/// The signature rule that applies to one image.
#[derive(Clone, Debug, PartialEq)]
pub struct SignatureRule {
    /// The rule as the refusal names it: `signatures.required`, or
    /// `signatures.under /software/images`.
    pub rule: String,
    /// The site keyring directory.
    pub keys: PathBuf,
    /// The config file that set the rule.
    pub file: String,
}

/// The site keyring when the config names none.
pub const DEFAULT_SITE_KEYS: &str = "/etc/launcher/keys";

/// Where the launcher reads host facts: changed for unusual layouts (and by the tests).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostPaths {
    /// The host's dynamic linker cache (default /etc/ld.so.cache).
    pub ld_so_cache: Option<PathBuf>,
    /// Where GPU device nodes are found (default /dev); they are bound at /dev inside.
    pub dev_dir: Option<PathBuf>,
}

impl SiteConfig {
    /// Load the system file, the `$LAUNCHER_CONFIG` file and the user's file, each laid over
    /// the ones before; a missing system or user file is no error.
    pub fn load(env: &[(String, String)], home: &Path) -> Result<SiteConfig> {
        SiteConfig::load_from(Path::new(SYSTEM_CONFIG), env, home)
    }

    /// `load` for the calling user, their home from `env` (or the user database): for the
    /// `launcher` binary, which checks the signature policy before the launch gathers.
    pub fn load_for_caller(env: &[(String, String)]) -> Result<SiteConfig> {
        let home = crate::gather::host::home(env, || {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
        });
        SiteConfig::load(env, &home)
    }

    /// `load` with the system file at `system` (the unit tests' and the fuzzer's).
    pub fn load_from(system: &Path, env: &[(String, String)], home: &Path) -> Result<SiteConfig> {
        let get = |k: &str| crate::env_list::get(env, k);
        let named = get(CONFIG_ENV).filter(|p| !p.is_empty()).map(PathBuf::from);
        let user = match get("XDG_CONFIG_HOME") {
            Some(x) if x.starts_with('/') => PathBuf::from(x),
            _ => home.join(".config"),
        }
        .join("launcher/launcher.yaml");
        let mut config = SiteConfig::default();
        let files = [
            (system.to_path_buf(), Source::System),
            (PathBuf::new(), Source::Named),
            (user, Source::User),
        ];
        for (path, source) in files {
            let path = match (source, &named) {
                (Source::Named, Some(p)) => p.clone(),
                (Source::Named, None) => continue,
                _ => path,
            };
            let is_user = source == Source::User;
            // A later file that is the system file itself (a job script's LAUNCHER_CONFIG
            // from when it replaced the system file) would apply it twice: once is enough.
            if source != Source::System && same_file(&path, system) {
                config.warnings.push(format!(
                    "{} is the system config {}: read once",
                    path.display(),
                    system.display()
                ));
                continue;
            }
            let text = match read_config(&path, is_user) {
                Ok(t) => t,
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    if source == Source::Named {
                        bail!("{CONFIG_ENV}={}: no such file", path.display());
                    }
                    continue;
                }
                // A user file behind a directory this user cannot enter (HOME still naming
                // root's home after sudo or setpriv, say) is not theirs: as if absent.
                Err(ReadError::Io(e))
                    if e.kind() == std::io::ErrorKind::PermissionDenied
                        && is_user
                        && std::fs::metadata(&path).is_err() =>
                {
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()));
                }
                Err(ReadError::NotTrusted(why)) => {
                    config.warnings.push(format!(
                        "ignoring the user config {}: {why}",
                        path.display()
                    ));
                    continue;
                }
            };
            let (file, tree) = SiteConfig::parse_with_tree(&text, &path)?;
            if file.signatures != SignaturePolicy::default() {
                config.signatures_in = Some(path.clone());
            }
            if source == Source::System {
                config.locked_in = Some(path.clone());
            } else {
                if !file.locked.is_empty() {
                    bail!(
                        "{}: key 'locked': only the system file ({}) may lock settings",
                        path.display(),
                        system.display()
                    );
                }
                config.refuse_locked(&file, &tree, &path)?;
            }
            config.merge(file);
        }
        Ok(config)
    }

    /// Parse one file's text; errors read `FILE:LINE: key 'a.b': what`.
    pub fn parse(text: &str, path: &Path) -> Result<SiteConfig> {
        Ok(SiteConfig::parse_with_tree(text, path)?.0)
    }

    /// `parse`, with the file's YAML tree too (the lock checks walk its keys): one read of
    /// the tree for both.
    fn parse_with_tree(text: &str, path: &Path) -> Result<(SiteConfig, serde_yaml_ng::Value)> {
        let tree = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text);
        // An empty file (or only comments) is an empty config, not a type error.
        if let Ok(serde_yaml_ng::Value::Null) = tree {
            return Ok((SiteConfig::default(), serde_yaml_ng::Value::Null));
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: SiteConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let line = e
                .inner()
                .location()
                .map(|l| format!(":{}", l.line()))
                .unwrap_or_default();
            let key = e.path().to_string();
            let mut msg = e.inner().to_string();
            // serde_yaml_ng says where too ("a.b: ... at line N column M"); we say it once.
            if let Some(i) = msg.find(" at line ") {
                msg.truncate(i);
            }
            if let Some((head, tail)) = msg.split_once(": ") {
                if !head.contains(' ') {
                    msg = tail.to_string();
                }
            }
            let file = path.display();
            match msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split_once('`'))
            {
                Some((_, rest)) => anyhow::anyhow!(
                    "{file}{line}: unknown key '{key}'{}",
                    rest.replace('`', "'")
                ),
                None if key == "." || key.is_empty() => anyhow::anyhow!("{file}{line}: {msg}"),
                None => anyhow::anyhow!("{file}{line}: key '{key}': {msg}"),
            }
        })?;
        config.validate(path)?;
        // The typed read above names the line of a syntax error; the tree's error is a
        // fallback that a file serde read cannot reach.
        let tree = tree.with_context(|| format!("reading {}", path.display()))?;
        Ok((config, tree))
    }

    /// Checks serde cannot express: bind syntax, variable names, absolute paths.
    fn validate(&self, path: &Path) -> Result<()> {
        let at =
            |key: String, what: String| anyhow::anyhow!("{}: key '{key}': {what}", path.display());
        for (i, b) in self.binds.iter().enumerate() {
            crate::options::bind::parse_bind_list(b)
                .map_err(|e| at(format!("binds[{i}]"), e.to_string()))?;
        }
        for (i, b) in self.mpi.binds.iter().enumerate() {
            crate::options::bind::parse_bind_list(b)
                .map_err(|e| at(format!("mpi.binds[{i}]"), e.to_string()))?;
        }
        for (section, map) in [
            ("set", &self.env.set),
            ("prepend", &self.env.prepend),
            ("append", &self.env.append),
        ] {
            for name in map.keys() {
                if !valid_env_name(name) {
                    return Err(at(
                        format!("env.{section}.{name}"),
                        "not a valid variable name (letters, digits and _)".into(),
                    ));
                }
            }
        }
        for (i, name) in self.env.unset.iter().enumerate() {
            if !valid_env_name(name) {
                return Err(at(
                    format!("env.unset[{i}]"),
                    format!("'{name}' is not a valid variable name"),
                ));
            }
        }
        let mut paths: Vec<(String, &Path)> = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            paths.push((format!("devices[{i}]"), d));
        }
        for (vendor, v) in [("nvidia", &self.gpu.nvidia), ("rocm", &self.gpu.rocm)] {
            for (i, d) in v.library_paths.iter().enumerate() {
                paths.push((format!("gpu.{vendor}.library_paths[{i}]"), d));
            }
            for (i, d) in v.binary_paths.iter().flatten().enumerate() {
                paths.push((format!("gpu.{vendor}.binary_paths[{i}]"), d));
            }
        }
        for (i, d) in self.mpi.library_paths.iter().enumerate() {
            paths.push((format!("mpi.library_paths[{i}]"), d));
        }
        for (i, d) in self.cdi.spec_dirs.iter().flatten().enumerate() {
            paths.push((format!("cdi.spec_dirs[{i}]"), d));
        }
        for (k, p) in [
            ("host.ld_so_cache", &self.host.ld_so_cache),
            ("host.dev_dir", &self.host.dev_dir),
        ] {
            if let Some(p) = p {
                paths.push((k.to_string(), p));
            }
        }
        for (i, d) in self.signatures.under.iter().flatten().enumerate() {
            paths.push((format!("signatures.under[{i}]"), d));
        }
        if let Some(k) = &self.signatures.keys {
            paths.push(("signatures.keys".to_string(), k));
        }
        for (key, p) in paths {
            if !p.is_absolute() {
                return Err(at(
                    key,
                    format!("'{}' is not an absolute path", p.display()),
                ));
            }
        }
        for (i, key) in self.locked.iter().enumerate() {
            self.lockable(key)
                .map_err(|why| at(format!("locked[{i}]"), format!("'{key}': {why}")))?;
        }
        Ok(())
    }

    /// Whether this file may lock `key`: a key of the schema (docs/admin.md), or
    /// `env.SECTION.NAME` for a variable the file names in that section.
    fn lockable(&self, key: &str) -> std::result::Result<(), String> {
        let parts: Vec<&str> = key.split('.').collect();
        if let ["env", section, name] = parts.as_slice() {
            let named = match *section {
                "set" => self.env.set.contains_key(*name),
                "prepend" => self.env.prepend.contains_key(*name),
                "append" => self.env.append.contains_key(*name),
                "unset" => self.env.unset.iter().any(|n| n == name),
                _ => return Err("no such key (env has set, prepend, append, unset)".into()),
            };
            return match named {
                true => Ok(()),
                false => Err(format!("this file does not name {name} in env.{section}")),
            };
        }
        let mut schema = serde_yaml_ng::to_value(SiteConfig::default())
            .map_err(|e| format!("internal: the schema: {e}"))?;
        if parts == ["locked"] {
            return Err("the lock list cannot be locked".into());
        }
        for part in &parts {
            schema = match schema {
                serde_yaml_ng::Value::Mapping(mut m) => match m.remove(*part) {
                    Some(v) => v,
                    None => return Err("no such key".into()),
                },
                _ => return Err("no such key".into()),
            };
        }
        Ok(())
    }

    /// An error when the later file `path` (read as `file`, whose YAML tree is `tree`) sets
    /// anything the system file locked, naming the key.
    fn refuse_locked(
        &self,
        file: &SiteConfig,
        tree: &serde_yaml_ng::Value,
        path: &Path,
    ) -> Result<()> {
        if self.locked.is_empty() {
            return Ok(());
        }
        let refuse = |key: &str, what: String| {
            anyhow::anyhow!(
                "{}: key '{key}': {what} is locked by the site config {}",
                path.display(),
                self.lock_file()
            )
        };
        // Variables, from what the file means once read (a YAML tag cannot hide a mapping).
        let vars = self.locked_vars();
        let sections = [
            ("set", file.env.set.keys().collect::<Vec<_>>()),
            ("prepend", file.env.prepend.keys().collect()),
            ("append", file.env.append.keys().collect()),
        ];
        for (section, names) in sections {
            if let Some(name) = names.into_iter().find(|n| vars.contains(*n)) {
                return Err(refuse(
                    &format!("env.{section}.{name}"),
                    format!("the variable {name}"),
                ));
            }
        }
        if let Some(name) = file.env.unset.iter().find(|n| vars.contains(*n)) {
            return Err(refuse("env.unset", format!("the variable {name}")));
        }
        // Binds and devices may be added, but not where they would hide a locked one.
        let locked = self.locked_destinations();
        let mut dsts: Vec<(String, PathBuf)> = Vec::new();
        for (key, specs) in [("binds", &file.binds), ("mpi.binds", &file.mpi.binds)] {
            for spec in specs {
                for b in crate::options::bind::parse_bind_list(spec).unwrap_or_default() {
                    dsts.push((key.to_string(), b.dst));
                }
            }
        }
        dsts.extend(
            file.devices
                .iter()
                .map(|d| ("devices".to_string(), d.clone())),
        );
        for (key, dst) in dsts {
            if let Some(hidden) = locked.iter().find(|l| covers(&dst, l)) {
                return Err(refuse(
                    &key,
                    format!(
                        "{} would cover the site's bind at {}, which",
                        dst.display(),
                        hidden.display()
                    ),
                ));
            }
        }
        // Every other key, by where it is in the file.
        let mut leaves = Vec::new();
        key_paths(tree, String::new(), &mut leaves);
        for (key, _) in leaves.iter().filter(|(k, _)| !under(k, "env")) {
            if let Some(lock) = self.locked.iter().find(|lock| {
                !LOCK_KEEPS_ENTRIES.contains(&lock.as_str())
                    && !under(lock, "env")
                    && (under(key, lock) || under(lock, key))
            }) {
                return Err(refuse(key, format!("'{lock}'")));
            }
        }
        Ok(())
    }

    /// The system file that locked something, for messages.
    pub fn lock_file(&self) -> String {
        self.locked_in
            .as_deref()
            .unwrap_or(Path::new(SYSTEM_CONFIG))
            .display()
            .to_string()
    }

    /// Whether `key` (`gpu.default`, `env.set`, …) is locked, itself or through a parent.
    pub fn is_locked(&self, key: &str) -> bool {
        self.locked.iter().any(|lock| under(key, lock))
    }

    /// The variables no one after the system file may set, change or unset: those the system
    /// file names under a locked `env` key.
    pub fn locked_vars(&self) -> std::collections::BTreeSet<String> {
        let sections: [(&str, Vec<&String>); 4] = [
            ("set", self.env.set.keys().collect()),
            ("prepend", self.env.prepend.keys().collect()),
            ("append", self.env.append.keys().collect()),
            ("unset", self.env.unset.iter().collect()),
        ];
        let mut vars = std::collections::BTreeSet::new();
        for (section, names) in sections {
            for name in names {
                if self.is_locked(&format!("env.{section}.{name}")) {
                    vars.insert(name.clone());
                }
            }
        }
        vars
    }

    /// The container destinations of the system file's locked binds and devices, which the
    /// user's binds may not cover.
    pub fn locked_destinations(&self) -> Vec<PathBuf> {
        let mut dsts = Vec::new();
        for (key, specs) in [("binds", &self.binds), ("mpi.binds", &self.mpi.binds)] {
            if self.is_locked(key) {
                for spec in specs {
                    let binds = crate::options::bind::parse_bind_list(spec).unwrap_or_default();
                    dsts.extend(binds.into_iter().map(|b| b.dst));
                }
            }
        }
        if self.is_locked("devices") {
            dsts.extend(self.devices.iter().cloned());
        }
        dsts
    }

    /// Lay a later file over this one: lists grow, maps merge, values given replace.
    pub fn merge(&mut self, later: SiteConfig) {
        self.warnings.extend(later.warnings);
        // Only the system file has a lock list (`load` refuses one elsewhere).
        self.locked.extend(later.locked);
        self.binds.extend(later.binds);
        self.devices.extend(later.devices);
        self.env.set.extend(later.env.set);
        self.env.prepend.extend(later.env.prepend);
        self.env.append.extend(later.env.append);
        self.env.unset.extend(later.env.unset);
        self.gpu.default = later.gpu.default.or(self.gpu.default);
        for (mine, theirs) in [
            (&mut self.gpu.nvidia, later.gpu.nvidia),
            (&mut self.gpu.rocm, later.gpu.rocm),
        ] {
            if theirs.libraries.is_some() {
                mine.libraries = theirs.libraries;
            }
            if theirs.binaries.is_some() {
                mine.binaries = theirs.binaries;
            }
            if theirs.binary_paths.is_some() {
                mine.binary_paths = theirs.binary_paths;
            }
            mine.library_paths.extend(theirs.library_paths);
        }
        self.mpi.default = later.mpi.default.or(self.mpi.default);
        self.mpi.libraries.extend(later.mpi.libraries);
        self.mpi.library_paths.extend(later.mpi.library_paths);
        self.mpi.binds.extend(later.mpi.binds);
        if later.cdi.spec_dirs.is_some() {
            self.cdi.spec_dirs = later.cdi.spec_dirs;
        }
        if later.host.ld_so_cache.is_some() {
            self.host.ld_so_cache = later.host.ld_so_cache;
        }
        if later.host.dev_dir.is_some() {
            self.host.dev_dir = later.host.dev_dir;
        }
        self.block_cache.max_mb = later.block_cache.max_mb.or(self.block_cache.max_mb);
        let (mine, theirs) = (&mut self.signatures, later.signatures);
        mine.required = theirs.required.or(mine.required);
        if theirs.under.is_some() {
            mine.under = theirs.under;
        }
        if theirs.keys.is_some() {
            mine.keys = theirs.keys;
        }
    }

    /// The signature rule for an image at `paths` (the path as given, made absolute, and the
    /// one its links lead to; none for a docker:// or other source), if one applies. A
    /// directory of `under` is taken as written and as its own links lead.
    pub fn signature_rule(&self, paths: &[PathBuf]) -> Option<SignatureRule> {
        let policy = &self.signatures;
        if policy.required != Some(true) {
            return None;
        }
        let rule = match &policy.under {
            None => "signatures.required".to_string(),
            Some(dirs) => {
                let hit = dirs.iter().find(|dir| {
                    let forms = [
                        crate::options::clean_abs(dir).ok(),
                        std::fs::canonicalize(dir).ok(),
                    ];
                    forms.iter().flatten().any(|d| {
                        paths
                            .iter()
                            .any(|p| crate::options::clean_abs(p).is_ok_and(|p| p.starts_with(d)))
                    })
                })?;
                format!("signatures.under {}", hit.display())
            }
        };
        let file = self
            .signatures_in
            .as_deref()
            .unwrap_or(Path::new(SYSTEM_CONFIG))
            .display()
            .to_string();
        Some(SignatureRule {
            rule,
            keys: policy
                .keys
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SITE_KEYS)),
            file,
        })
    }

    pub fn ld_so_cache(&self) -> PathBuf {
        self.host
            .ld_so_cache
            .clone()
            .unwrap_or_else(|| "/etc/ld.so.cache".into())
    }

    pub fn dev_dir(&self) -> PathBuf {
        self.host.dev_dir.clone().unwrap_or_else(|| "/dev".into())
    }

    pub fn cdi_dirs(&self) -> Vec<PathBuf> {
        self.cdi
            .spec_dirs
            .clone()
            .unwrap_or_else(|| DEFAULT_CDI_DIRS.iter().map(PathBuf::from).collect())
    }
}

/// Where a file in the load order comes from.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    System,
    Named,
    User,
}

enum ReadError {
    Io(std::io::Error),
    /// The user's file is someone else's to write: why, naming the owner.
    NotTrusted(String),
}

/// The text of a config file; for the user's file, only if it is a regular file and `trust`
/// accepts its owner and mode (checked on the open file, so what is read is what was checked;
/// opened non-blocking, so a FIFO put there cannot hold the launch).
fn read_config(path: &Path, is_user: bool) -> std::result::Result<String, ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if is_user {
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    }
    let mut file = options.open(path).map_err(ReadError::Io)?;
    if is_user {
        let meta = file.metadata().map_err(ReadError::Io)?;
        if !meta.is_file() {
            return Err(ReadError::NotTrusted("it is not a regular file".into()));
        }
        let caller = nix::unistd::getuid().as_raw();
        trust(meta.uid(), meta.mode(), caller, &user_name).map_err(ReadError::NotTrusted)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(ReadError::Io)?;
    Ok(text)
}

/// Whether a user config with this owner and mode may be applied for `caller`: it must be the
/// caller's or root's, and writable by no one else (as OpenSSH asks of `~/.ssh/config`).
/// Otherwise why not, naming the owner (`name_of` turns a uid into a user name).
pub fn trust(
    owner: u32,
    mode: u32,
    caller: u32,
    name_of: &dyn Fn(u32) -> Option<String>,
) -> std::result::Result<(), String> {
    let who = |uid: u32| match name_of(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    if owner != caller && owner != 0 {
        return Err(format!("it is owned by {}, not by you or root", who(owner)));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {:04o}, owner {}; `chmod go-w` it)",
            mode & 0o7777,
            who(owner)
        ));
    }
    Ok(())
}

/// The user name of `uid` from the host's user database, if it has one.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Whether `a` and `b` are one file (device and inode), both existing.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether a mount at `dst` hides what is mounted at `locked` (the same place or a parent),
/// compared as the mount table will have them (`..`, `.` and trailing slashes resolved).
pub fn covers(dst: &Path, locked: &Path) -> bool {
    match (
        crate::options::clean_abs(dst),
        crate::options::clean_abs(locked),
    ) {
        (Ok(dst), Ok(locked)) => locked.starts_with(dst),
        _ => false,
    }
}

/// Whether the key path `key` is `parent` or inside it (`gpu.default` is inside `gpu`).
fn under(key: &str, parent: &str) -> bool {
    key == parent || key.strip_prefix(parent).is_some_and(|r| r.starts_with('.'))
}

/// Every key path of a YAML document down to its values (`env.set.NAME`, `binds`), with the
/// value there.
fn key_paths(
    v: &serde_yaml_ng::Value,
    prefix: String,
    out: &mut Vec<(String, serde_yaml_ng::Value)>,
) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            for (k, v) in m {
                let k = match k.as_str() {
                    Some(k) => k.to_string(),
                    None => continue,
                };
                let path = match prefix.is_empty() {
                    true => k,
                    false => format!("{prefix}.{k}"),
                };
                key_paths(v, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push((prefix, v.clone())),
        _ => {}
    }
}

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SiteConfig> {
        SiteConfig::parse(text, Path::new("/etc/launcher/launcher.yaml"))
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
binds: [/scratch, "/opt/site:/opt/site:ro"]
devices: [/dev/infiniband]
env:
  set: {OMPI_MCA_btl: "^openib"}
  prepend: {PATH: /opt/site/bin}
  append: {MANPATH: /opt/site/man}
  unset: [LD_PRELOAD]
gpu:
  default: true
  nvidia:
    libraries: [libcuda.so, libnvidia-ml.so]
    binaries: [nvidia-smi]
    library_paths: [/opt/nvidia/lib64]
  rocm:
    binary_paths: [/opt/rocm/bin]
mpi:
  default: false
  libraries: [libmpi.so, libfabric.so]
  library_paths: [/opt/cray/lib64]
  binds: ["/etc/libfabric:/etc/libfabric:ro"]
cdi:
  spec_dirs: [/etc/cdi]
host:
  ld_so_cache: /etc/ld.so.cache
  dev_dir: /dev
"#,
        )
        .unwrap();
        assert_eq!(c.binds.len(), 2);
        assert_eq!(c.gpu.default, Some(true));
        assert_eq!(
            c.gpu.nvidia.libraries.as_deref(),
            Some(&["libcuda.so".to_string(), "libnvidia-ml.so".to_string()][..])
        );
        assert_eq!(c.env.prepend["PATH"], "/opt/site/bin");
        assert_eq!(c.mpi.library_paths, vec![PathBuf::from("/opt/cray/lib64")]);
        assert_eq!(c.cdi_dirs(), vec![PathBuf::from("/etc/cdi")]);
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_configs() {
        assert_eq!(parse("").unwrap(), SiteConfig::default());
        assert_eq!(parse("# nothing yet\n").unwrap(), SiteConfig::default());
        let c = SiteConfig::default();
        assert_eq!(c.cdi_dirs().len(), 2);
        assert_eq!(c.ld_so_cache(), PathBuf::from("/etc/ld.so.cache"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("binds: []\ngpu:\n  nvidia:\n    libaries: [x]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/launcher/launcher.yaml:4: unknown key 'gpu.nvidia.libaries'"),
            "{err}"
        );
        let err = parse("bind: [/x]\n").unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/launcher/launcher.yaml:1: unknown key 'bind'"),
            "{err}"
        );
    }

    #[test]
    fn type_error_names_file_line_and_key() {
        let err = parse("gpu:\n  default: maybe\n").unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/launcher/launcher.yaml:2: key 'gpu.default':"),
            "{err}"
        );
        let err = parse("\nbinds: /scratch\n").unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/launcher/launcher.yaml:2: key 'binds':"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = parse("binds: ['/a:relative']\n").unwrap_err().to_string();
        assert!(err.contains("key 'binds[0]'"), "{err}");
        let err = parse("env:\n  set: {'BAD-NAME': x}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key 'env.set.BAD-NAME'"), "{err}");
        let err = parse("host:\n  dev_dir: dev\n").unwrap_err().to_string();
        assert!(err.contains("key 'host.dev_dir'"), "{err}");
    }

    #[test]
    fn user_file_extends_the_system_file() {
        let mut c =
            parse("binds: [/a]\ngpu:\n  default: true\n  nvidia:\n    libraries: [libcuda.so]\n")
                .unwrap();
        c.merge(parse("binds: [/b]\ngpu:\n  default: false\n").unwrap());
        assert_eq!(c.binds, vec!["/a", "/b"]);
        assert_eq!(c.gpu.default, Some(false));
        assert_eq!(c.gpu.nvidia.libraries.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn load_order_and_missing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join(".config/launcher")).unwrap();
        let sys = dir.join("system.yaml");
        std::fs::write(&sys, "binds: [/sys-bind]\n").unwrap();
        let named = dir.join("job.yaml");
        std::fs::write(&named, "binds: [/job-bind]\n").unwrap();
        std::fs::write(
            dir.join(".config/launcher/launcher.yaml"),
            "binds: [/user-bind]\n",
        )
        .unwrap();
        let load = |value: Option<&Path>| {
            let env: Vec<_> = value
                .map(|p| (CONFIG_ENV.to_string(), p.display().to_string()))
                .into_iter()
                .collect();
            SiteConfig::load_from(&sys, &env, &dir)
        };
        assert_eq!(load(None).unwrap().binds, ["/sys-bind", "/user-bind"]);
        // LAUNCHER_CONFIG adds a file between the system's and the user's; it replaces nothing.
        assert_eq!(
            load(Some(&named)).unwrap().binds,
            ["/sys-bind", "/job-bind", "/user-bind"]
        );
        // Neither an empty value nor /dev/null drops the system file (issue 20, finding 6).
        for value in ["", "/dev/null"] {
            let c = load(Some(Path::new(value))).unwrap();
            assert_eq!(c.binds, ["/sys-bind", "/user-bind"], "{value:?}");
        }
        // A named file that is missing is an error; the system and user files may be absent.
        let err = load(Some(&dir.join("nope.yaml"))).unwrap_err().to_string();
        assert!(err.contains("nope.yaml: no such file"), "{err}");
        let c = SiteConfig::load_from(&dir.join("absent.yaml"), &[], &dir).unwrap();
        assert_eq!(c.binds, ["/user-bind"]);
    }

    /// A system file at `dir/system.yaml` with `system`, the user's with `user`: what loads.
    fn load_pair(system: &str, user: &str) -> Result<SiteConfig> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join(".config/launcher")).unwrap();
        std::fs::write(dir.join("system.yaml"), system).unwrap();
        std::fs::write(dir.join(".config/launcher/launcher.yaml"), user).unwrap();
        SiteConfig::load_from(&dir.join("system.yaml"), &[], dir).map_err(|e| {
            // The temporary directory's name is random: keep only what follows it.
            let text = e.to_string().replace(&dir.display().to_string(), "DIR");
            anyhow::anyhow!(text)
        })
    }

    const LOCKING: &str = "binds: [/site]\ngpu: {default: true}\nmpi: {libraries: [libmpi.so]}\n\
        env:\n  set: {OMPI_MCA_btl: '^openib', FREE: x}\n  unset: [LD_PRELOAD]\n\
        locked: [binds, gpu.default, mpi, env.unset, env.set.OMPI_MCA_btl]\n";

    #[test]
    fn a_later_file_may_not_change_what_the_system_file_locked() {
        for (user, key, why) in [
            (
                "gpu: {default: false}\n",
                "gpu.default",
                "'gpu.default' is locked",
            ),
            (
                "mpi: {library_paths: [/x]}\n",
                "mpi.library_paths",
                "'mpi' is locked",
            ),
            (
                "env: {set: {LD_PRELOAD: /x.so}}\n",
                "env.set.LD_PRELOAD",
                "the variable LD_PRELOAD",
            ),
            (
                "env: {prepend: {OMPI_MCA_btl: tcp}}\n",
                "env.prepend.OMPI_MCA_btl",
                "the variable OMPI_MCA_btl",
            ),
            (
                "env: {unset: [FREE, OMPI_MCA_btl]}\n",
                "env.unset",
                "the variable OMPI_MCA_btl",
            ),
        ] {
            let err = load_pair(LOCKING, user).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "DIR/.config/launcher/launcher.yaml: key '{key}': {why} is locked by the site \
                     config DIR/system.yaml"
                )
                .replace(" is locked is locked", " is locked"),
                "{user}"
            );
        }
        // What is not locked the user still changes; binds are added to, not replaced.
        let c = load_pair(
            LOCKING,
            "binds: [/mine]\ngpu: {nvidia: {library_paths: [/opt/nv]}}\nenv: {set: {FREE: y}, unset: [OTHER]}\n",
        )
        .unwrap();
        assert_eq!(c.binds, ["/site", "/mine"]);
        assert_eq!(c.env.set["FREE"], "y");
        assert_eq!(c.gpu.default, Some(true));
    }

    #[test]
    fn a_later_file_may_not_hide_a_locked_bind_nor_tag_its_way_past_a_locked_variable() {
        for (user, want) in [
            (
                "binds: ['/home/u/fake:/site']\n",
                "key 'binds': /site would cover the site's bind at /site",
            ),
            (
                "devices: [/]\n",
                "key 'devices': / would cover the site's bind at /site",
            ),
            (
                "env:\n  set: !foo {LD_PRELOAD: /x.so}\n",
                "key 'env.set.LD_PRELOAD': the variable LD_PRELOAD",
            ),
            (
                "env: !foo\n  unset: [OMPI_MCA_btl]\n",
                "key 'env.unset': the variable OMPI_MCA_btl",
            ),
        ] {
            let err = load_pair(LOCKING, user).unwrap_err().to_string();
            assert!(err.contains(want), "{user}: {err}");
        }
        // Beside a locked bind, or inside it: allowed.
        let c = load_pair(LOCKING, "binds: ['/home/u/x:/site/sub', /opt]\n").unwrap();
        assert_eq!(c.binds.len(), 3);
    }

    #[test]
    fn a_later_file_that_is_the_system_file_is_read_once() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("system.yaml");
        std::fs::write(&sys, "binds: [/a]\nlocked: [binds]\n").unwrap();
        let env = vec![(CONFIG_ENV.to_string(), sys.display().to_string())];
        let c = SiteConfig::load_from(&sys, &env, tmp.path()).unwrap();
        assert_eq!(c.binds, ["/a"]);
        assert!(c.warnings[0].ends_with(": read once"), "{:?}", c.warnings);
    }

    #[test]
    fn only_the_system_file_locks_and_only_keys_that_exist() {
        let err = load_pair("", "locked: [binds]\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "DIR/.config/launcher/launcher.yaml: key 'locked': only the system file \
             (DIR/system.yaml) may lock settings"
        );
        for (lock, why) in [
            ("gpu.defualt", "'gpu.defualt': no such key"),
            (
                "env.set.NOPE",
                "'env.set.NOPE': this file does not name NOPE in env.set",
            ),
            (
                "env.sett.X",
                "'env.sett.X': no such key (env has set, prepend, append, unset)",
            ),
            ("locked", "'locked': the lock list cannot be locked"),
        ] {
            let err = parse(&format!("locked: [{lock}]\n"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("/etc/launcher/launcher.yaml: key 'locked[0]': {why}"),
                "{lock}"
            );
        }
        for lock in [
            "binds",
            "gpu",
            "gpu.nvidia.libraries",
            "host.dev_dir",
            "cdi",
            "env",
        ] {
            parse(&format!("locked: [{lock}]\n")).unwrap();
        }
    }

    #[test]
    fn the_signature_rule_applies_to_images_under_its_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let site_dir = tmp.path().join("software/images");
        std::fs::create_dir_all(&site_dir).unwrap();
        // A link to the site's directory from elsewhere, and one the other way.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&site_dir, &link).unwrap();
        let c = parse(&format!(
            "signatures:\n  required: true\n  under: [{}]\n",
            link.display()
        ))
        .unwrap();
        let rule = c
            .signature_rule(&[site_dir.join("a.sif")])
            .expect("under the directory its link leads to");
        assert_eq!(rule.rule, format!("signatures.under {}", link.display()));
        assert_eq!(rule.keys, PathBuf::from(DEFAULT_SITE_KEYS));
        assert_eq!(rule.file, SYSTEM_CONFIG);
        assert!(c.signature_rule(&[link.join("x/../a.sif")]).is_some());
        assert!(c.signature_rule(&[tmp.path().join("home/a.sif")]).is_none());
        assert!(c
            .signature_rule(&[tmp.path().join("software/images2/a.sif")])
            .is_none());
        // A source (no path) is under no directory.
        assert!(c.signature_rule(&[]).is_none());
        // Without `under`, every image and every source.
        let c = parse("signatures: {required: true, keys: /site/keys}\n").unwrap();
        let rule = c.signature_rule(&[]).unwrap();
        assert_eq!(rule.rule, "signatures.required");
        assert_eq!(rule.keys, PathBuf::from("/site/keys"));
        for text in ["", "signatures: {required: false, under: [/x]}\n"] {
            assert!(parse(text).unwrap().signature_rule(&[]).is_none(), "{text}");
        }
        let err = parse("signatures: {under: [images]}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key 'signatures.under[0]'"), "{err}");
        let err = parse("signatures: {require: true}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key 'signatures.require'"), "{err}");
    }

    #[test]
    fn a_locked_signature_policy_cannot_be_turned_off_and_names_its_file() {
        let system = "signatures: {required: true}\nlocked: [signatures]\n";
        for user in [
            "signatures: {required: false}\n",
            "signatures: {keys: /home/u/keys}\n",
            "signatures: {under: [/nowhere]}\n",
        ] {
            let err = load_pair(system, user).unwrap_err().to_string();
            assert!(
                err.starts_with("DIR/.config/launcher/launcher.yaml: key 'signatures.")
                    && err.ends_with("'signatures' is locked by the site config DIR/system.yaml"),
                "{user}: {err}"
            );
        }
        // Unlocked, the user's file decides, and the rule names the file that set it.
        let c = load_pair(
            "signatures: {required: false, keys: /site/keys}\n",
            "signatures: {required: true}\n",
        )
        .unwrap();
        let rule = c.signature_rule(&[]).unwrap();
        assert_eq!(rule.keys, PathBuf::from("/site/keys"));
        assert!(
            rule.file.ends_with("/.config/launcher/launcher.yaml"),
            "{rule:?}"
        );
        let c = load_pair(
            "signatures: {required: true}\n",
            "signatures: {required: false}\n",
        )
        .unwrap();
        assert!(c.signature_rule(&[]).is_none());
    }

    #[test]
    fn a_user_config_must_be_the_callers_or_roots_and_not_writable_by_others() {
        let names = |uid: u32| (uid == 1001).then(|| "other".to_string());
        assert_eq!(trust(1000, 0o100644, 1000, &names), Ok(()));
        assert_eq!(trust(0, 0o100644, 1000, &names), Ok(()));
        assert_eq!(trust(1000, 0o100600, 1000, &names), Ok(()));
        let err = trust(1001, 0o100644, 1000, &names).unwrap_err();
        assert_eq!(err, "it is owned by other (uid 1001), not by you or root");
        let err = trust(1002, 0o100644, 1000, &names).unwrap_err();
        assert!(err.contains("owned by uid 1002"), "{err}");
        for mode in [0o100664, 0o100646, 0o100666] {
            let err = trust(1000, mode, 1000, &names).unwrap_err();
            assert!(err.contains("writable by group or others"), "{err}");
            assert!(
                err.contains(&format!("mode {:04o}", mode & 0o7777)),
                "{err}"
            );
        }
        // Root's file, writable by others, is no better.
        assert!(trust(0, 0o100666, 1000, &names).is_err());
    }

    #[test]
    fn a_user_config_writable_by_others_is_ignored_with_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join(".config/launcher")).unwrap();
        let file = dir.join(".config/launcher/launcher.yaml");
        std::fs::write(&file, "binds: [/user-bind]\n").unwrap();
        let env = vec![(CONFIG_ENV.to_string(), String::new())];
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = SiteConfig::load(&env, &dir).unwrap();
        assert_eq!(c.binds, vec!["/user-bind"]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let c = SiteConfig::load(&env, &dir).unwrap();
        assert!(c.binds.is_empty());
        assert_eq!(c.warnings.len(), 1);
        let w = &c.warnings[0];
        assert!(
            w.starts_with(&format!("ignoring the user config {}: ", file.display())),
            "{w}"
        );
        assert!(w.contains("writable by group or others"), "{w}");
        // A FIFO there neither holds the launch nor counts as a config.
        std::fs::remove_file(&file).unwrap();
        nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let c = SiteConfig::load(&env, &dir).unwrap();
        assert!(
            c.warnings[0].ends_with("it is not a regular file"),
            "{:?}",
            c.warnings
        );
    }
}
