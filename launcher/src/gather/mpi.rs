//! `--mpi`: bind the host's MPI library, its dependency closure and its run-time plugins over
//! the image's own MPI (the "bind" model), after checking that the two are ABI-compatible.
//!
//! The host MPI is the one built for the site's interconnect (libfabric with the cxi provider,
//! UCX with verbs, PMIx matching the resource manager); the image's is usually a generic build.
//! Programs link MPI by soname, so binding the host's library under the image's soname in
//! `/.launcher.d/libs` (first on LD_LIBRARY_PATH) makes the image's program use it, provided
//! both sides share an ABI: MPICH's (libmpi.so.12, libmpich.so.12 on Debian: MPICH, Intel MPI,
//! Cray MPICH, MVAPICH), Open MPI's (libmpi.so.40), or the MPI-5 standard ABI (libmpi_abi.so).
//! docs/mpi.md explains the models, the table and what is bound.

use crate::gather::injection::{HostBind, HostFile, Injection};
use crate::gather::site_config::SiteConfig;
use crate::image::view::ImageView;
use crate::linker::glibc_guard::GlibcNeeds;
use crate::linker::ld_cache::LdCache;
use crate::options::{LaunchOptions, MpiMode};
use anyhow::{bail, Context, Result};
use goblin::elf::Elf;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Base names an MPI library is known by (with a numeric version after them).
pub const MPI_BASES: &[&str] = &["libmpi.so", "libmpich.so", "libmpi_abi.so"];

/// Libraries of glibc itself: never injected. The image's program and every library it loads
/// share one libc, one dynamic linker and one libpthread; a second (host) copy in the same
/// process cannot work, and the image's ld.so would not load a libc newer than itself. The
/// glibc guard refuses host libraries that need a newer glibc than the image has.
const GLIBC_PARTS: &[&str] = &[
    "libc.so.",
    "libm.so.",
    "libmvec.so.",
    "libpthread.so.",
    "libdl.so.",
    "librt.so.",
    "libutil.so.",
    "libresolv.so.",
    "libnsl.so.",
    "libanl.so.",
    "libBrokenLocale.so.",
    "libthread_db.so.",
    "libnss_",
    "libc_malloc_debug.so.",
    "ld-linux",
    "ld64.so.",
    "ld.so.",
];

/// Compiler run-time libraries: the image's program was built with the image's compiler and
/// may need its (newer) copy; they are backward-compatible, so the image's copy is kept when
/// it has one and the host's is brought in only when it lacks one.
const COMPILER_RUNTIME: &[&str] = &[
    "libgcc_s.so.",
    "libstdc++.so.",
    "libgfortran.so.",
    "libquadmath.so.",
    "libgomp.so.",
    "libatomic.so.",
    "libcrypt.so.",
];

/// Language bindings that sit on top of libmpi: when the image's program links one, the host's
/// copy (same family and version as the injected libmpi) is bound too.
const COMPANIONS: &[&str] = &[
    "libmpi_mpifh.so.40",
    "libmpi_usempif08.so.40",
    "libmpi_usempi_ignore_tkr.so.40",
    "libmpi_cxx.so.40",
    "libmpichfort.so.12",
    "libmpichcxx.so.12",
    "libmpifort.so.12",
    "libmpicxx.so.12",
];

/// Interconnect device nodes under /dev (InfiniBand verbs, Omni-Path, Slingshot CXI, XPMEM,
/// kfabric, KNEM): names, or prefixes ending in `*`.
const INTERCONNECT_NODES: &[&str] = &["infiniband", "hfi1_*", "cxi*", "xpmem", "kfi*", "knem"];

/// Where an image keeps its libraries (the loader's default path and the usual prefixes).
fn image_lib_dirs() -> Vec<String> {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    vec![
        format!("/usr/lib/{triple}"),
        format!("/lib/{triple}"),
        "/usr/lib64".into(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
        "/usr/local/lib".into(),
        "/usr/local/lib64".into(),
    ]
}

/// The ABI families. Libraries of one family and one soname version are interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    OpenMpi,
    MpichAbi,
    StandardAbi,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::OpenMpi => "Open MPI",
            Family::MpichAbi => "MPICH ABI",
            Family::StandardAbi => "the MPI-5 standard ABI",
        })
    }
}

/// One MPI library, on the host or in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpiLib {
    /// The name programs link (`libmpi.so.40`).
    pub soname: String,
    pub family: Family,
    /// The soname's version (`40`), empty for an unversioned libmpi_abi.so.
    pub version: String,
    /// Host: the real file. Image: the directory path it was found at.
    pub path: PathBuf,
}

impl MpiLib {
    pub fn compatible(&self, other: &MpiLib) -> bool {
        self.family == other.family && self.version == other.version
    }

    fn describe(&self, what: &str) -> String {
        format!(
            "{} ({} {what} {})",
            self.family,
            self.soname,
            self.path.display()
        )
    }
}

/// Family and version from a soname. `libmpi.so.12` is MPICH's ABI (Open MPI 1.10 also used
/// it: callers refine with symbols or neighbours); other `libmpi.so.N` are Open MPI's.
pub fn family_of_soname(name: &str) -> Option<(Family, String)> {
    let version_after = |base: &str| -> Option<String> {
        let v = name.strip_prefix(base)?.strip_prefix('.')?;
        (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.to_string())
    };
    if name == "libmpi_abi.so" {
        return Some((Family::StandardAbi, String::new()));
    }
    if let Some(v) = version_after("libmpi_abi.so") {
        return Some((Family::StandardAbi, v));
    }
    if let Some(v) = version_after("libmpich.so") {
        return Some((Family::MpichAbi, v));
    }
    let v = version_after("libmpi.so")?;
    Some((
        if v == "12" {
            Family::MpichAbi
        } else {
            Family::OpenMpi
        },
        v,
    ))
}

/// The family an ELF's exported symbols show: Open MPI's `ompi_*` objects, MPICH's `MPIR_*`.
pub fn family_by_symbols(elf: &Elf) -> Option<Family> {
    let mut mpich = false;
    for sym in elf.dynsyms.iter() {
        if sym.st_shndx == 0 {
            continue; // undefined: needed, not provided
        }
        let Some(name) = elf.dynstrtab.get_at(sym.st_name) else {
            continue;
        };
        if name == "ompi_mpi_comm_world" || name == "ompi_mpi_init" {
            return Some(Family::OpenMpi);
        }
        mpich |= name.starts_with("MPIR_") || name.starts_with("MPID_");
    }
    mpich.then_some(Family::MpichAbi)
}

/// The decision before launch.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Inject `host`; `image` is the image's library it replaces (None: the image has none).
    Inject {
        host: usize,
        image: Option<usize>,
        forced: bool,
    },
    Refuse(String),
}

/// The ABI table: same family and soname version → inject; else refuse unless forced. With
/// several MPIs on either side, the first compatible pair wins (image order, then host order).
pub fn decide(host: &[MpiLib], image: &[MpiLib], force: bool) -> Decision {
    if image.is_empty() {
        return Decision::Inject {
            host: 0,
            image: None,
            forced: false,
        };
    }
    for (i, img) in image.iter().enumerate() {
        if let Some(h) = host.iter().position(|h| h.compatible(img)) {
            return Decision::Inject {
                host: h,
                image: Some(i),
                forced: false,
            };
        }
    }
    if force {
        return Decision::Inject {
            host: 0,
            image: Some(0),
            forced: true,
        };
    }
    let hosts: Vec<String> = host.iter().map(|h| h.describe("at")).collect();
    Decision::Refuse(format!(
        "--mpi: the image's MPI is {}, the host's is {}: not ABI-compatible; use --mpi=force to inject anyway",
        image[0].describe("in"),
        hosts.join(" or ")
    ))
}

/// Whether `--mpi` is on, and whether the user asked for it (an explicit `--mpi` makes a
/// missing or incompatible host MPI an error; the site's default only warns).
pub fn requested(opts: &LaunchOptions, site: &SiteConfig) -> Option<(MpiMode, bool)> {
    if opts.no_mpi {
        return None;
    }
    match opts.mpi {
        Some(m) => Some((m, true)),
        None => (site.mpi.default == Some(true)).then_some((MpiMode::On, false)),
    }
}

/// Everything `--mpi` brings in, read from the host and checked against the image.
pub fn gather(opts: &LaunchOptions, site: &SiteConfig, image: &dyn ImageView) -> Result<Injection> {
    let mut inj = Injection::default();
    let Some((mode, explicit)) = requested(opts, site) else {
        return Ok(inj);
    };
    let cache_path = site.ld_so_cache();
    let cache = match LdCache::read(&cache_path) {
        Ok(c) => c,
        Err(e) => {
            inj.warnings.push(format!(
                "{e:#}: MPI libraries are looked up in the site config's mpi.library_paths only"
            ));
            LdCache::default()
        }
    };
    let search = &site.mpi.library_paths;
    let found = host_libraries(&site.mpi.libraries, search, &cache)?;
    if found.mpis.is_empty() {
        let msg = no_host_mpi(site, &cache_path);
        if explicit {
            bail!("{msg}");
        }
        inj.warnings.push(format!("{msg}; MPI not injected"));
        return Ok(inj);
    }
    crate::debug::step(format_args!(
        "mpi: {} host MPI libraries found",
        found.mpis.len()
    ));
    let image_libs = ImageLibs::read(image)?;
    crate::debug::step("mpi: image's libraries listed");
    let (host_i, image_i, forced) =
        match decide(&found.mpis, &image_libs.mpis, mode == MpiMode::Force) {
            Decision::Refuse(msg) if explicit => bail!("{msg}"),
            Decision::Refuse(msg) => {
                inj.warnings.push(format!(
                "{msg} (mpi.default in the site config): MPI not injected, the image's own is used"
            ));
                return Ok(inj);
            }
            Decision::Inject {
                host,
                image,
                forced,
            } => (host, image, forced),
        };
    let hmpi = &found.mpis[host_i];
    let impi = image_i.map(|i| &image_libs.mpis[i]);
    inj.notes.push(decision_note(hmpi, impi, forced));
    if forced {
        inj.warnings.push(format!(
            "--mpi=force: injecting the host's {} over the image's {}: they are not ABI-compatible",
            hmpi.soname,
            impi.map(|i| i.soname.as_str()).unwrap_or("-")
        ));
    }
    let keep_image =
        |n: &str| COMPILER_RUNTIME.iter().any(|p| n.starts_with(p)) && image_libs.names.contains(n);
    let mut closure = roots(hmpi, impi, forced, &found, &image_libs, search, &cache);
    closure.walk(search, &cache, &keep_image);
    let (plugin_dirs, config) = add_plugins(&mut closure, search, &cache, &keep_image);
    crate::debug::step(format_args!(
        "mpi: closure walked ({} libraries, {} plugin directories)",
        closure.libs.len(),
        plugin_dirs.len()
    ));
    add_closure(&mut inj, &closure)?;
    for dir in plugin_dirs.iter().chain(config.iter()) {
        inj.mounts.push(HostBind {
            host: dir.clone(),
            dst: dir.clone(),
            readonly: true,
            origin: "mpi".into(),
        });
    }
    add_site_binds_and_devices(&mut inj, site)?;
    Ok(inj)
}

/// The error (or warning) when the host has no MPI library: what was looked for, where.
fn no_host_mpi(site: &SiteConfig, cache_path: &Path) -> String {
    let search = &site.mpi.library_paths;
    let mut looked = Vec::new();
    if !search.is_empty() {
        let dirs: Vec<String> = search.iter().map(|d| d.display().to_string()).collect();
        looked.push(format!("mpi.library_paths {}", dirs.join(" ")));
    }
    looked.push(format!("the ld.so cache {}", cache_path.display()));
    let names = if site.mpi.libraries.is_empty() {
        "libmpi.so.*, libmpich.so.*, libmpi_abi.so.*".to_string()
    } else {
        format!("site config mpi.libraries {}", site.mpi.libraries.join(" "))
    };
    format!(
        "--mpi: no MPI library on this host (looked for {names} in {})",
        looked.join(" and ")
    )
}

/// The --debug line that says which MPI replaces which, and why.
fn decision_note(hmpi: &MpiLib, impi: Option<&MpiLib>, forced: bool) -> String {
    match (impi, forced) {
        (None, _) => format!(
            "mpi: the image has no MPI library (looked in {} and its ld.so.cache); host's {} injected",
            image_lib_dirs().join(" "),
            hmpi.describe("at")
        ),
        (Some(i), false) => format!(
            "mpi: image's {}, host's {}: ABI-compatible: injected",
            i.describe("in"),
            hmpi.describe("at")
        ),
        (Some(i), true) => format!(
            "mpi: image's {}, host's {}: NOT ABI-compatible, injected anyway (--mpi=force)",
            i.describe("in"),
            hmpi.describe("at")
        ),
    }
}

/// The closure's starting points: the host library under its own soname, and under the
/// image's when that differs (Debian's MPICH is libmpich.so.12, Cray's and Intel's
/// libmpi.so.12); the companion libraries the image has (unless forced); the site's extras.
fn roots(
    hmpi: &MpiLib,
    impi: Option<&MpiLib>,
    forced: bool,
    found: &HostLibraries,
    image_libs: &ImageLibs,
    search: &[PathBuf],
    cache: &LdCache,
) -> Closure {
    let mut closure = Closure::default();
    closure.add_root(&hmpi.soname, &hmpi.path);
    if let Some(i) = impi {
        if i.soname != hmpi.soname {
            closure.add_alias(&i.soname, &hmpi.path);
        }
    }
    if !forced {
        for c in COMPANIONS {
            if !image_libs.names.contains(*c) {
                continue;
            }
            if let Some(p) = resolve(c, &[], search, cache) {
                closure.add_root(c, &p);
            }
        }
    }
    for (name, path) in &found.extras {
        closure.add_root(name, path);
    }
    closure
}

/// Plugins are found through the libraries they belong to; their own dependencies join the
/// closure, which may bring in more plugin directories: repeated until nothing new comes.
/// Returns the plugin directories and the configuration files they need.
fn add_plugins(
    closure: &mut Closure,
    search: &[PathBuf],
    cache: &LdCache,
    keep_image: &dyn Fn(&str) -> bool,
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut plugin_dirs: Vec<PathBuf> = Vec::new();
    let mut config: Vec<PathBuf> = Vec::new();
    loop {
        let mut new_roots = Vec::new();
        for (name, path) in closure.libs.clone() {
            for p in plugins_of(&name, &path) {
                if plugin_dirs.contains(&p.dir) {
                    continue;
                }
                plugin_dirs.push(p.dir.clone());
                new_roots.extend(p.modules);
                for c in p.config {
                    if !config.contains(&c) {
                        config.push(c);
                    }
                }
            }
        }
        if new_roots.is_empty() {
            return (plugin_dirs, config);
        }
        for m in new_roots {
            closure.add_plugin(&m);
        }
        closure.walk(search, cache, keep_image);
    }
}

/// The closure's libraries as injected files (with their glibc needs), and notes for what
/// stays the image's.
fn add_closure(inj: &mut Injection, closure: &Closure) -> Result<()> {
    for n in &closure.kept {
        inj.notes
            .push(format!("mpi: {n}: the image's copy is kept"));
    }
    for (n, by) in &closure.missing {
        inj.notes.push(format!(
            "mpi: {n} (needed by {}) is not on this host: left to the image",
            by.display()
        ));
    }
    for (name, path) in &closure.libs {
        let glibc = match closure.glibc.get(path) {
            Some(g) => g.clone(),
            None => crate::linker::glibc_guard::needs_of_file(path)?,
        };
        inj.libs.push(HostFile {
            name: name.clone(),
            host: path.clone(),
            origin: "mpi".into(),
            glibc,
        });
    }
    Ok(())
}

/// The site config's MPI binds, and the interconnect's device nodes.
fn add_site_binds_and_devices(inj: &mut Injection, site: &SiteConfig) -> Result<()> {
    for spec in &site.mpi.binds {
        for b in crate::options::bind::parse_bind_list(spec)? {
            inj.mounts.push(HostBind {
                host: b.src,
                dst: b.dst,
                readonly: b.readonly,
                origin: "mpi site config".into(),
            });
        }
    }
    let dev_dir = site.dev_dir();
    for rel in interconnect_nodes(&dev_dir) {
        inj.devices.push(HostBind {
            host: dev_dir.join(&rel),
            dst: Path::new("/dev").join(&rel),
            readonly: false,
            origin: "mpi".into(),
        });
    }
    Ok(())
}

/// What the host has: MPI libraries, and the other libraries the site config names.
#[derive(Debug, Default)]
struct HostLibraries {
    mpis: Vec<MpiLib>,
    /// (name, real path) of non-MPI libraries from `mpi.libraries` (libfabric, libcxi, ...).
    extras: Vec<(String, PathBuf)>,
}

/// The site config's list when it has one, else every versioned libmpi/libmpich/libmpi_abi
/// in `search` then the ld.so cache. Duplicates (the same file under several names) collapse.
fn host_libraries(listed: &[String], search: &[PathBuf], cache: &LdCache) -> Result<HostLibraries> {
    let bases: Vec<String> = if listed.is_empty() {
        MPI_BASES.iter().map(|s| s.to_string()).collect()
    } else {
        listed.to_vec()
    };
    let mut out = HostLibraries::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    for base in &bases {
        let found = crate::gather::injection::find_library(base, search, cache);
        for (name, path) in found {
            let Ok(real) = std::fs::canonicalize(&path) else {
                continue;
            };
            // Symbols only settle libmpi.so.12 (MPICH ABI, or Open MPI 1.10): scanning a
            // 40 MB libmpich's symbol table on every launch is not free.
            let ambiguous = name == "libmpi.so.12" || name == "libmpi.so";
            let info = match ElfInfo::read_with(&real, ambiguous) {
                Ok(i) => i,
                Err(_) => continue, // a linker script or a stray file with a library's name
            };
            let soname = info.soname.clone().unwrap_or_else(|| name.clone());
            match family_of_soname(&soname) {
                Some((family, version)) => {
                    if seen.contains(&real) {
                        continue;
                    }
                    seen.push(real.clone());
                    let family = match (family, info.family) {
                        (Family::StandardAbi, _) | (_, None) => family,
                        (_, Some(by_symbols)) => by_symbols,
                    };
                    out.mpis.push(MpiLib {
                        soname,
                        family,
                        version,
                        path: real,
                    });
                }
                None if !listed.is_empty() && !out.extras.iter().any(|(n, _)| *n == name) => {
                    out.extras.push((name, real));
                }
                None => {}
            }
        }
    }
    Ok(out)
}

/// The image's MPI libraries, and the library names it has (for the compiler run-time rule).
#[derive(Debug, Default)]
pub struct ImageLibs {
    pub mpis: Vec<MpiLib>,
    pub names: BTreeSet<String>,
}

impl ImageLibs {
    /// Look in the image's standard library directories, then in its ld.so.cache (which names
    /// the directories its ld.so.conf adds, such as /usr/lib/x86_64-linux-gnu/mpich/lib).
    pub fn read(image: &dyn ImageView) -> Result<ImageLibs> {
        let mut out = ImageLibs::default();
        let mut dirs = image_lib_dirs();
        if let Some(bytes) = image.read_file("/etc/ld.so.cache")? {
            // A broken cache in the image only loses its extra directories.
            if let Ok(cache) = LdCache::parse(&bytes) {
                for e in cache.for_abi(crate::linker::ld_cache::host_abi()) {
                    out.names.insert(e.name.clone());
                    if family_of_soname(&e.name).is_some() {
                        if let Some(parent) = e.path.parent().and_then(|p| p.to_str()) {
                            if !dirs.iter().any(|d| d == parent) {
                                dirs.push(parent.to_string());
                            }
                        }
                    }
                }
            }
        }
        for dir in dirs {
            let names = image.list_dir(&dir)?;
            for n in &names {
                let Some((mut family, version)) = family_of_soname(n) else {
                    out.names.insert(n.clone());
                    continue;
                };
                out.names.insert(n.clone());
                if out.mpis.iter().any(|m| m.soname == *n) {
                    continue;
                }
                // Open MPI 1.10 was libmpi.so.12 too; its neighbours give it away. (The
                // image's libraries are not read: libmpich is 40 MB of compressed image.)
                if family == Family::MpichAbi
                    && names.iter().any(|s| s.starts_with("libopen-pal.so"))
                {
                    family = Family::OpenMpi;
                }
                out.mpis.push(MpiLib {
                    soname: n.clone(),
                    family,
                    version,
                    path: PathBuf::from(&dir),
                });
            }
        }
        Ok(out)
    }
}

/// What one ELF file says about linking.
struct ElfInfo {
    soname: Option<String>,
    needed: Vec<String>,
    /// DT_RUNPATH (or DT_RPATH), `$ORIGIN` expanded.
    runpath: Vec<PathBuf>,
    /// From the exported symbols; only read when asked for (`with_family`).
    family: Option<Family>,
    glibc: GlibcNeeds,
}

impl ElfInfo {
    fn read(path: &Path) -> Result<ElfInfo> {
        Self::read_with(path, false)
    }

    fn read_with(path: &Path, with_family: bool) -> Result<ElfInfo> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only private map of a host library; goblin bounds-checks what it reads.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        let not_elf = || format!("{}: not an ELF file", path.display());
        let elf = crate::linker::elf_dyn::parse(&map).with_context(not_elf)?;
        // Only the family needs the symbol table (goblin's full parse).
        let family = if with_family {
            family_by_symbols(&Elf::parse(&map).with_context(not_elf)?)
        } else {
            None
        };
        let origin = path.parent().unwrap_or(Path::new("/"));
        let paths = if elf.runpaths.is_empty() {
            &elf.rpaths
        } else {
            &elf.runpaths
        };
        let runpath = paths
            .iter()
            .flat_map(|p| p.split(':'))
            .filter(|p| !p.is_empty())
            .map(|p| {
                let o = origin.display().to_string();
                PathBuf::from(p.replace("${ORIGIN}", &o).replace("$ORIGIN", &o))
            })
            .collect();
        Ok(ElfInfo {
            soname: elf.soname.map(str::to_string),
            needed: elf.needed.iter().map(|s| s.to_string()).collect(),
            runpath,
            family,
            glibc: crate::linker::glibc_guard::needs_of_names(&elf.version_needs),
        })
    }
}

/// Find a needed library as the host's loader would, minus LD_LIBRARY_PATH: the needing
/// file's run path, the site's directories, then the ld.so cache.
fn resolve(
    name: &str,
    runpath: &[PathBuf],
    search: &[PathBuf],
    cache: &LdCache,
) -> Option<PathBuf> {
    runpath
        .iter()
        .chain(search.iter())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .or_else(|| cache.lookup(name).map(Path::to_path_buf))
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// The host libraries to bind, walked from roots through DT_NEEDED.
#[derive(Debug, Default)]
pub struct Closure {
    /// (name to bind under, real host file), in discovery order.
    pub libs: Vec<(String, PathBuf)>,
    /// Files whose DT_NEEDED are still to be walked.
    pending: Vec<PathBuf>,
    walked: BTreeSet<PathBuf>,
    /// Needed names not found on the host, with the file that needs them.
    pub missing: Vec<(String, PathBuf)>,
    /// Compiler run-time libraries left to the image.
    pub kept: Vec<String>,
    /// glibc needs of each file walked, read in the same pass.
    pub glibc: std::collections::BTreeMap<PathBuf, GlibcNeeds>,
}

impl Closure {
    /// A library bound under `name`, whose needs are walked.
    pub fn add_root(&mut self, name: &str, path: &Path) {
        if !self.libs.iter().any(|(n, _)| n == name) {
            self.libs.push((name.to_string(), path.to_path_buf()));
            self.pending.push(path.to_path_buf());
        }
    }

    /// The same file bound under a second name.
    pub fn add_alias(&mut self, name: &str, path: &Path) {
        if !self.libs.iter().any(|(n, _)| n == name) {
            self.libs.push((name.to_string(), path.to_path_buf()));
        }
    }

    /// A plugin: not bound itself (its directory is), but its needs are walked.
    pub fn add_plugin(&mut self, path: &Path) {
        self.pending.push(path.to_path_buf());
    }

    fn has(&self, name: &str) -> bool {
        self.libs.iter().any(|(n, _)| n == name)
            || self.kept.iter().any(|n| n == name)
            || self.missing.iter().any(|(n, _)| n == name)
    }

    /// Walk DT_NEEDED from the pending files until nothing new turns up. glibc's parts are
    /// skipped, compiler run-times the image has are kept (`keep_image`).
    pub fn walk(&mut self, search: &[PathBuf], cache: &LdCache, keep_image: &dyn Fn(&str) -> bool) {
        while let Some(file) = self.pending.pop() {
            if !self.walked.insert(file.clone()) {
                continue;
            }
            let Ok(info) = ElfInfo::read(&file) else {
                continue;
            };
            self.glibc.insert(file.clone(), info.glibc);
            for name in info.needed {
                if is_glibc_part(&name) || self.has(&name) {
                    continue;
                }
                if keep_image(&name) {
                    self.kept.push(name);
                    continue;
                }
                match resolve(&name, &info.runpath, search, cache) {
                    Some(p) => self.add_root(&name, &p),
                    None => self.missing.push((name, file.clone())),
                }
            }
        }
    }
}

pub fn is_glibc_part(name: &str) -> bool {
    GLIBC_PARTS.iter().any(|p| name.starts_with(p))
}

/// Plugin directories a library loads from at run time, with the modules to walk and the
/// configuration files or directories it reads.
#[derive(Debug, PartialEq, Eq)]
struct Plugins {
    dir: PathBuf,
    modules: Vec<PathBuf>,
    config: Vec<PathBuf>,
}

/// Plugins of `name` (a bound library at real path `path`), found beside it the way each
/// project installs them: Open MPI's components (`openmpi/lib/openmpi3` on Debian,
/// `lib/openmpi` for a prefix install) with its help texts and `openmpi-mca-params.conf`;
/// PMIx's (`pmix2/` on Debian, `pmix/`); libfabric's providers (`libfabric/`); UCX's
/// modules (`ucx/`); the verbs providers that `/etc/libibverbs.d` names (`libibverbs/`).
fn plugins_of(name: &str, path: &Path) -> Vec<Plugins> {
    let Some(libdir) = path.parent() else {
        return Vec::new();
    };
    // The install prefix: /usr for /usr/lib/x86_64-linux-gnu, /opt/x for /opt/x/lib64.
    let prefix = libdir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "lib" || n == "lib64"))
        .and_then(Path::parent)
        .unwrap_or(libdir);
    let lib = Lib {
        path,
        libdir,
        prefix,
    };
    let base = name.split(".so").next().unwrap_or(name);
    PLUGIN_STACKS
        .iter()
        .filter(|(bases, _)| bases.contains(&base))
        .flat_map(|(_, find)| find(&lib))
        .filter_map(|(dir, modules, config)| {
            Some(Plugins {
                dir: std::fs::canonicalize(&dir).ok()?,
                modules,
                config: config.into_iter().filter(|p| p.exists()).collect(),
            })
        })
        .collect()
}

/// A library of the closure, where it is installed.
struct Lib<'a> {
    path: &'a Path,
    libdir: &'a Path,
    prefix: &'a Path,
}

/// A plugin directory found for a library: the directory, its modules, and the configuration
/// files and directories it may read (kept when they exist).
type Found = (PathBuf, Vec<PathBuf>, Vec<PathBuf>);

/// Where one stack keeps its plugins.
type PluginFinder = fn(&Lib) -> Vec<Found>;

/// Which libraries (soname bases) have plugins, and where each stack keeps them.
const PLUGIN_STACKS: &[(&[&str], PluginFinder)] = &[
    (&["libopen-pal", "libmpi"], open_mpi_plugins),
    (&["libpmix"], pmix_plugins),
    (&["libfabric"], libfabric_plugins),
    (&["libucp", "libucs", "libuct"], ucx_plugins),
    (&["libibverbs"], verbs_plugins),
];

/// Open MPI's MCA components: beside the library, or under its run path.
fn open_mpi_plugins(lib: &Lib) -> Vec<Found> {
    let mut candidates = vec![
        lib.libdir.join("openmpi/lib/openmpi3"),
        lib.libdir.join("openmpi/lib/openmpi"),
        lib.libdir.join("openmpi"),
    ];
    if let Ok(info) = ElfInfo::read(lib.path) {
        for r in info.runpath {
            candidates.push(r.join("openmpi3"));
            candidates.push(r.join("openmpi"));
        }
    }
    let Some(dir) = candidates.into_iter().find(|d| has_file(d, "mca_", ".so")) else {
        return Vec::new();
    };
    let mut config = vec![
        lib.prefix.join("etc/openmpi-mca-params.conf"),
        lib.prefix.join("share/openmpi"),
    ];
    if lib.prefix == Path::new("/usr") {
        config.push("/etc/openmpi".into());
    }
    let modules = files(&dir, "mca_", ".so");
    vec![(dir, modules, config)]
}

/// PMIx components. Debian's pmix2/ is a prefix (lib/pmix, share/pmix); elsewhere the
/// components sit right in pmix/. Help texts and defaults: share/ on Debian (pmix2/share),
/// etc/ otherwise.
fn pmix_plugins(lib: &Lib) -> Vec<Found> {
    let mut out = Vec::new();
    for sub in ["pmix", "pmix2", "pmix3", "pmix4", "pmix5"] {
        let dir = lib.libdir.join(sub);
        let modules: Vec<PathBuf> = files(&dir, "", ".so")
            .into_iter()
            .chain(files(&dir.join("lib/pmix"), "", ".so"))
            .collect();
        if !modules.is_empty() {
            let config = vec![
                lib.prefix.join("share/pmix"),
                lib.prefix.join("share/pmix-mca-params.conf"),
                lib.prefix.join("etc/pmix-mca-params.conf"),
            ];
            out.push((dir, modules, config));
        }
    }
    out
}

/// libfabric's providers.
fn libfabric_plugins(lib: &Lib) -> Vec<Found> {
    let dir = lib.libdir.join("libfabric");
    let modules = files(&dir, "", ".so");
    if modules.is_empty() {
        return Vec::new();
    }
    vec![(dir, modules, Vec::new())]
}

/// UCX's transport modules and its configuration.
fn ucx_plugins(lib: &Lib) -> Vec<Found> {
    let dir = lib.libdir.join("ucx");
    let modules = files(&dir, "lib", ".so.0");
    if modules.is_empty() {
        return Vec::new();
    }
    vec![(dir, modules, vec![lib.prefix.join("etc/ucx")])]
}

/// The verbs providers that /etc/libibverbs.d names.
fn verbs_plugins(lib: &Lib) -> Vec<Found> {
    let dir = lib.libdir.join("libibverbs");
    let conf = PathBuf::from("/etc/libibverbs.d");
    let drivers = verbs_drivers(&conf);
    let modules: Vec<PathBuf> = files(&dir, "lib", ".so")
        .into_iter()
        .filter(|m| {
            let n = m.file_name().and_then(|n| n.to_str()).unwrap_or("");
            drivers
                .iter()
                .any(|d| n.starts_with(&format!("lib{d}-rdmav")))
        })
        .collect();
    if !dir.is_dir() {
        return Vec::new();
    }
    vec![(dir, modules, vec![conf])]
}

/// Provider names from `driver NAME` lines of /etc/libibverbs.d/*.driver.
fn verbs_drivers(conf: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(conf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(d) = line.trim().strip_prefix("driver ") {
                out.push(d.trim().to_string());
            }
        }
    }
    out.sort();
    out
}

fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn has_file(dir: &Path, prefix: &str, suffix: &str) -> bool {
    !files(dir, prefix, suffix).is_empty()
}

/// Interconnect nodes present in `dev_dir`, relative to it.
fn interconnect_nodes(dev_dir: &Path) -> Vec<PathBuf> {
    let names: Vec<String> = std::fs::read_dir(dev_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<PathBuf> = names
        .into_iter()
        .filter(|n| {
            INTERCONNECT_NODES
                .iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => n.starts_with(prefix),
                    None => n == p,
                })
        })
        .map(PathBuf::from)
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::view::fake::FakeImage;
    use std::process::Command;

    fn lib(soname: &str, family: Family) -> MpiLib {
        let (_, version) = family_of_soname(soname).unwrap();
        MpiLib {
            soname: soname.into(),
            family,
            version,
            path: PathBuf::from(format!("/x/{soname}")),
        }
    }

    #[test]
    fn families_from_sonames() {
        let f = |n| family_of_soname(n);
        assert_eq!(f("libmpi.so.40"), Some((Family::OpenMpi, "40".into())));
        assert_eq!(f("libmpi.so.20"), Some((Family::OpenMpi, "20".into())));
        assert_eq!(f("libmpi.so.12"), Some((Family::MpichAbi, "12".into())));
        assert_eq!(f("libmpich.so.12"), Some((Family::MpichAbi, "12".into())));
        assert_eq!(
            f("libmpi_abi.so.0"),
            Some((Family::StandardAbi, "0".into()))
        );
        assert_eq!(f("libmpi_abi.so"), Some((Family::StandardAbi, "".into())));
        for not in [
            "libmpi.so",
            "libmpi.so.40.30.4",
            "libmpi_cxx.so.40",
            "libmpichfort.so.12",
            "libmpi.so.x",
        ] {
            assert_eq!(f(not), None, "{not}");
        }
    }

    #[test]
    fn abi_decision_table() {
        let ompi = lib("libmpi.so.40", Family::OpenMpi);
        let ompi2 = lib("libmpi.so.20", Family::OpenMpi);
        let cray = lib("libmpi.so.12", Family::MpichAbi);
        let debian_mpich = lib("libmpich.so.12", Family::MpichAbi);
        let abi = lib("libmpi_abi.so.0", Family::StandardAbi);
        let inject = |h, i| Decision::Inject {
            host: h,
            image: i,
            forced: false,
        };
        let d = |h: &[&MpiLib], i: &[&MpiLib], force| {
            let h: Vec<MpiLib> = h.iter().map(|l| (*l).clone()).collect();
            let i: Vec<MpiLib> = i.iter().map(|l| (*l).clone()).collect();
            decide(&h, &i, force)
        };
        assert_eq!(d(&[&ompi], &[&ompi], false), inject(0, Some(0)));
        assert_eq!(d(&[&cray], &[&debian_mpich], false), inject(0, Some(0)));
        assert_eq!(d(&[&abi], &[&abi], false), inject(0, Some(0)));
        assert_eq!(
            d(&[&ompi], &[], false),
            inject(0, None),
            "no MPI in the image"
        );
        // The host has two: the one matching the image is taken.
        assert_eq!(
            d(&[&ompi, &cray], &[&debian_mpich], false),
            inject(1, Some(0))
        );
        for (h, i) in [
            (&ompi, &cray),
            (&cray, &ompi),
            (&ompi2, &ompi),
            (&abi, &cray),
        ] {
            assert!(
                matches!(d(&[h], &[i], false), Decision::Refuse(_)),
                "{h:?} {i:?}"
            );
            assert_eq!(
                d(&[h], &[i], true),
                Decision::Inject {
                    host: 0,
                    image: Some(0),
                    forced: true
                }
            );
        }
        let Decision::Refuse(msg) = d(&[&cray], &[&ompi], false) else {
            panic!()
        };
        assert_eq!(
            msg,
            "--mpi: the image's MPI is Open MPI (libmpi.so.40 in /x/libmpi.so.40), the host's is \
             MPICH ABI (libmpi.so.12 at /x/libmpi.so.12): not ABI-compatible; use --mpi=force to inject anyway"
        );
    }

    #[test]
    fn glibc_parts() {
        for n in [
            "libc.so.6",
            "libm.so.6",
            "libpthread.so.0",
            "libdl.so.2",
            "librt.so.1",
            "ld-linux-x86-64.so.2",
            "libnss_files.so.2",
        ] {
            assert!(is_glibc_part(n), "{n}");
        }
        for n in [
            "libmpi.so.40",
            "libcxi.so.1",
            "libmlx5.so.1",
            "libcrypto.so.3",
        ] {
            assert!(!is_glibc_part(n), "{n}");
        }
    }

    #[test]
    fn image_mpi_by_soname_and_neighbours() {
        let t = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        let img = FakeImage::new(
            &[
                (&format!("{t}/libmpi.so.40"), ""),
                (&format!("{t}/libopen-pal.so.40"), ""),
                (&format!("{t}/libstdc++.so.6"), ""),
                (&format!("{t}/openmpi/lib/libmpi.so"), ""),
            ],
            &[],
        );
        let libs = ImageLibs::read(&img).unwrap();
        assert_eq!(libs.mpis.len(), 1);
        assert_eq!(libs.mpis[0].family, Family::OpenMpi);
        assert_eq!(libs.mpis[0].path, PathBuf::from(&t));
        assert!(libs.names.contains("libstdc++.so.6"));
        // Open MPI 1.10 called itself libmpi.so.12.
        let old = FakeImage::new(
            &[
                ("/usr/lib64/libmpi.so.12", ""),
                ("/usr/lib64/libopen-pal.so.13", ""),
            ],
            &[],
        );
        assert_eq!(
            ImageLibs::read(&old).unwrap().mpis[0].family,
            Family::OpenMpi
        );
        let mpich = FakeImage::new(&[("/usr/lib64/libmpich.so.12", "")], &[]);
        let m = &ImageLibs::read(&mpich).unwrap().mpis[0];
        assert_eq!(
            (m.family, m.soname.as_str()),
            (Family::MpichAbi, "libmpich.so.12")
        );
        let none = FakeImage::new(&[("/bin/sh", "")], &[]);
        assert!(ImageLibs::read(&none).unwrap().mpis.is_empty());
    }

    /// A scratch directory, and a gcc that builds shared libraries in it (tests/setup.sh
    /// installs gcc: without it the test fails, never skips).
    struct Scratch(PathBuf, #[allow(dead_code)] tempfile::TempDir);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let t = tempfile::Builder::new()
                .prefix(&format!("launcher-mpi-{tag}-"))
                .tempdir()
                .unwrap();
            let d = t.path().to_path_buf();
            let ok = Command::new("gcc")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                ok,
                "gcc is needed to build test libraries (tests/setup.sh installs it)"
            );
            Scratch(d, t)
        }

        /// Build `rel` (soname = its file name) from `code`, linked with `args`.
        fn lib(&self, rel: &str, code: &str, args: &[&str]) -> PathBuf {
            let out = self.0.join(rel);
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            let src = self.0.join(format!("{}.c", rel.replace('/', "_")));
            std::fs::write(&src, code).unwrap();
            let soname = out.file_name().unwrap().to_str().unwrap().to_string();
            let st = Command::new("gcc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(&out)
                .arg(&src)
                .arg(format!("-Wl,-soname,{soname}"))
                .arg("-Wl,--no-as-needed")
                .args(args)
                .current_dir(&self.0)
                .status()
                .unwrap();
            assert!(st.success(), "gcc {rel}");
            out
        }
    }

    #[test]
    fn family_from_symbols_of_real_libraries() {
        let s = Scratch::new("sym");
        let o = s.lib("libmpi.so.12", "int ompi_mpi_comm_world;\n", &[]);
        let m = s.lib(
            "m/libmpi.so.12",
            "int MPIR_Init_thread(void) { return 0; }\n",
            &[],
        );
        let n = s.lib("n/libmpi.so.12", "int MPI_Init(void) { return 0; }\n", &[]);
        let family = |p: &Path| ElfInfo::read_with(p, true).unwrap().family;
        assert_eq!(family(&o), Some(Family::OpenMpi));
        assert_eq!(family(&m), Some(Family::MpichAbi));
        assert_eq!(family(&n), None);
        // Discovery through library_paths: the soname gives MPICH ABI, the symbols Open MPI.
        let found = host_libraries(&[], std::slice::from_ref(&s.0), &LdCache::default()).unwrap();
        assert_eq!(found.mpis.len(), 1);
        assert_eq!(found.mpis[0].family, Family::OpenMpi);
        assert_eq!(found.mpis[0].soname, "libmpi.so.12");
    }

    #[test]
    fn closure_follows_needed_runpath_and_skips_glibc() {
        let s = Scratch::new("closure");
        let d = &s.0;
        s.lib("deep/libdeep.so.3", "int deep(void) { return 3; }\n", &[]);
        s.lib("gone/libgone.so.1", "int gone(void) { return 0; }\n", &[]);
        // libfab.so.1 finds libdeep through its RUNPATH ($ORIGIN/deep).
        s.lib(
            "libfab.so.1",
            "int deep(void); int fab(void) { return deep(); }\n",
            &[
                "-Ldeep",
                "-l:libdeep.so.3",
                "-Wl,--enable-new-dtags,-rpath,$ORIGIN/deep",
            ],
        );
        s.lib(
            "libmpi.so.40",
            "#include <math.h>\nint fab(void); int gone(void); double mpi(double x) { return sqrt(x) + fab() + gone(); }\n",
            &["-L.", "-Lgone", "-l:libfab.so.1", "-l:libgone.so.1", "-lm", "-lstdc++"],
        );
        std::fs::remove_dir_all(d.join("gone")).unwrap();
        let mut c = Closure::default();
        let root = d.join("libmpi.so.40");
        c.add_root("libmpi.so.40", &root);
        c.add_alias("libmpich.so.12", &root);
        let keep = |n: &str| n.starts_with("libstdc++");
        c.walk(std::slice::from_ref(d), &LdCache::default(), &keep);
        let names: Vec<&str> = c.libs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "libmpi.so.40",
                "libmpich.so.12",
                "libfab.so.1",
                "libdeep.so.3"
            ]
        );
        assert_eq!(c.libs[3].1, d.join("deep/libdeep.so.3"));
        assert_eq!(c.kept, vec!["libstdc++.so.6"]);
        assert_eq!(c.missing, vec![("libgone.so.1".to_string(), root.clone())]);
        // A plugin's needs join the closure; the plugin itself is not bound.
        s.lib(
            "plug/mca_x.so",
            "int fab(void); int x(void) { return fab(); }\n",
            &["-L.", "-l:libfab.so.1"],
        );
        s.lib("libextra.so.2", "int extra(void) { return 2; }\n", &[]);
        s.lib(
            "plug/mca_y.so",
            "int extra(void); int y(void) { return extra(); }\n",
            &["-L.", "-l:libextra.so.2"],
        );
        c.add_plugin(&d.join("plug/mca_x.so"));
        c.add_plugin(&d.join("plug/mca_y.so"));
        c.walk(std::slice::from_ref(d), &LdCache::default(), &keep);
        let names: Vec<&str> = c.libs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.last(), Some(&"libextra.so.2"));
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn open_mpi_components_and_config_are_found_beside_the_library() {
        let s = Scratch::new("plugins");
        let lib = s.lib("lib/libmpi.so.40", "int ompi_mpi_comm_world;\n", &[]);
        s.lib("lib/openmpi/mca_btl_self.so", "int x;\n", &[]);
        std::fs::create_dir_all(s.0.join("share/openmpi")).unwrap();
        std::fs::create_dir_all(s.0.join("etc")).unwrap();
        std::fs::write(s.0.join("etc/openmpi-mca-params.conf"), "").unwrap();
        let p = plugins_of("libmpi.so.40", &lib);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].dir, s.0.join("lib/openmpi"));
        assert_eq!(p[0].modules, vec![s.0.join("lib/openmpi/mca_btl_self.so")]);
        assert_eq!(
            p[0].config,
            vec![
                s.0.join("etc/openmpi-mca-params.conf"),
                s.0.join("share/openmpi")
            ]
        );
        assert!(plugins_of("libz.so.1", &lib).is_empty());
    }

    #[test]
    fn interconnect_nodes_by_name() {
        let s = Scratch::new("dev");
        std::fs::create_dir_all(s.0.join("infiniband")).unwrap();
        for n in [
            "cxi0", "cxi1", "hfi1_0", "xpmem", "kfi3", "knem", "null", "nvidia0", "knemx",
        ] {
            std::fs::write(s.0.join(n), "").unwrap();
        }
        let got: Vec<String> = interconnect_nodes(&s.0)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "cxi0",
                "cxi1",
                "hfi1_0",
                "infiniband",
                "kfi3",
                "knem",
                "xpmem"
            ]
        );
    }
}
