//! The site configuration: `/etc/launcher/launcher.yaml` (or `$LAUNCHER_CONFIG`), then the
//! user's `~/.config/launcher/launcher.yaml`, taken only when it is the caller's (or root's) and
//! no one else can write it: HOME may name another user's home (issue 20, finding 5).
//!
//! Admins describe their site once: default binds, extra devices, environment edits, the GPU
//! and MPI libraries to bring in, where CDI specs live. The launcher is unprivileged, so the
//! file grants nothing a user could not ask for on the command line; it only saves typing.
//! docs/admin.md documents every key. Unknown keys and wrong types are errors that name the
//! file, the line and the key: a typo must not silently drop a site's bind.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the system file lives unless `$LAUNCHER_CONFIG` says otherwise.
pub const SYSTEM_CONFIG: &str = "/etc/launcher/launcher.yaml";
/// Overrides the system file's path (an empty value: no system file).
pub const CONFIG_ENV: &str = "LAUNCHER_CONFIG";
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
pub struct CdiConfig {
    /// Where CDI specs are read from (default: /etc/cdi, /var/run/cdi).
    pub spec_dirs: Option<Vec<PathBuf>>,
}

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
    /// Load the system file then the user's file; a missing file is no error.
    pub fn load(env: &[(String, String)], home: &Path) -> Result<SiteConfig> {
        let get = |k: &str| crate::env_list::get(env, k);
        let system = match get(CONFIG_ENV) {
            Some("") => None,
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from(SYSTEM_CONFIG)),
        };
        let user = match get("XDG_CONFIG_HOME") {
            Some(x) if x.starts_with('/') => PathBuf::from(x),
            _ => home.join(".config"),
        }
        .join("launcher/launcher.yaml");
        let mut config = SiteConfig::default();
        for path in system.iter().chain(std::iter::once(&user)) {
            let is_user = path == &user;
            let text = match read_config(path, is_user) {
                Ok(t) => t,
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    if get(CONFIG_ENV).is_some_and(|p| Path::new(p) == path) {
                        bail!("{CONFIG_ENV}={}: no such file", path.display());
                    }
                    continue;
                }
                // A user file behind a directory this user cannot enter (HOME still naming
                // root's home after sudo or setpriv, say) is not theirs: as if absent.
                Err(ReadError::Io(e))
                    if e.kind() == std::io::ErrorKind::PermissionDenied
                        && is_user
                        && std::fs::metadata(path).is_err() =>
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
            config.merge(SiteConfig::parse(&text, path)?);
        }
        Ok(config)
    }

    /// Parse one file's text; errors read `FILE:LINE: key 'a.b': what`.
    pub fn parse(text: &str, path: &Path) -> Result<SiteConfig> {
        // An empty file (or only comments) is an empty config, not a type error.
        if matches!(
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text),
            Ok(serde_yaml_ng::Value::Null)
        ) {
            return Ok(SiteConfig::default());
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
        Ok(config)
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
        for (key, p) in paths {
            if !p.is_absolute() {
                return Err(at(
                    key,
                    format!("'{}' is not an absolute path", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// Lay a later file over this one: lists grow, maps merge, values given replace.
    pub fn merge(&mut self, later: SiteConfig) {
        self.warnings.extend(later.warnings);
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
        let sys = dir.join("site.yaml");
        std::fs::write(&sys, "binds: [/sys-bind]\n").unwrap();
        std::fs::write(
            dir.join(".config/launcher/launcher.yaml"),
            "binds: [/user-bind]\n",
        )
        .unwrap();
        let env = vec![(CONFIG_ENV.to_string(), sys.display().to_string())];
        let c = SiteConfig::load(&env, &dir).unwrap();
        assert_eq!(c.binds, vec!["/sys-bind", "/user-bind"]);
        // A named file that is missing is an error; the default one may be absent.
        let env = vec![(
            CONFIG_ENV.to_string(),
            dir.join("nope.yaml").display().to_string(),
        )];
        let err = SiteConfig::load(&env, &dir).unwrap_err().to_string();
        assert!(err.contains("nope.yaml: no such file"), "{err}");
        let env = vec![(CONFIG_ENV.to_string(), String::new())];
        assert_eq!(
            SiteConfig::load(&env, &dir).unwrap().binds,
            vec!["/user-bind"]
        );
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
