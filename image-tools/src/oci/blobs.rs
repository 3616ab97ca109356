//! Where an image's files come from: an OCI layout directory, or members of a tar
//! archive (`docker save`, an OCI layout in a tar) read in place by offset.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

/// Small JSON files (index, manifests, configs) are read whole; this cap keeps a
/// hostile "manifest" from exhausting memory. Real ones are kilobytes.
const MAX_JSON: u64 = 64 << 20;

/// The files of an image source, by path relative to the layout or archive root.
pub(crate) enum Store {
    Dir(PathBuf),
    Tar(TarIndex),
}

/// Regular-file members of an uncompressed tar: name -> (data offset, size).
pub(crate) struct TarIndex {
    name: String,
    file: File,
    members: HashMap<String, (u64, u64)>,
}

impl Store {
    /// What to call the source in messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d.display().to_string(),
            Store::Tar(t) => t.name.clone(),
        }
    }

    pub(crate) fn exists(&self, member: &str) -> bool {
        match self {
            Store::Dir(d) => d.join(member).is_file(),
            Store::Tar(t) => t.members.contains_key(&normalize(member)),
        }
    }

    /// A stream of one member's bytes.
    pub(crate) fn open(&self, member: &str) -> Result<Box<dyn Read + '_>> {
        match self {
            Store::Dir(d) => {
                let p = d.join(member);
                let f = File::open(&p).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => {
                        Error::NotFound(format!("{}: missing {member}", d.display()))
                    }
                    _ => Error::Io {
                        context: format!("opening {}", p.display()),
                        error: e,
                    },
                })?;
                Ok(Box::new(f))
            }
            Store::Tar(t) => {
                let Some(&(pos, len)) = t.members.get(&normalize(member)) else {
                    return Err(Error::NotFound(format!("{}: missing {member}", t.name)));
                };
                Ok(Box::new(AtReader {
                    file: &t.file,
                    pos,
                    end: pos.saturating_add(len),
                }))
            }
        }
    }

    /// A small member read whole (JSON documents).
    pub(crate) fn read_small(&self, member: &str) -> Result<Vec<u8>> {
        let what = format!("{}: {member}", self.describe());
        let mut data = Vec::new();
        self.open(member)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut data)
            .map_err(Error::io(format!("{what}: reading")))?;
        if data.len() as u64 > MAX_JSON {
            return Err(Error::Invalid(format!(
                "{what}: larger than {MAX_JSON} bytes"
            )));
        }
        Ok(data)
    }
}

impl TarIndex {
    /// Lists the members of the uncompressed tar `file` (named `name` in messages),
    /// seeking past file data rather than reading it.
    pub(crate) fn build(name: String, file: File) -> Result<TarIndex> {
        let bad = |e: io::Error| Error::Invalid(format!("{name}: bad tar archive: {e}"));
        let mut members = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        {
            let mut ar = tar::Archive::new(&file);
            for entry in ar.entries_with_seek().map_err(bad)? {
                let entry = entry.map_err(bad)?;
                let path = normalize_bytes(&entry.path_bytes());
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        members.insert(path, (entry.raw_file_position(), entry.size()));
                    }
                    // `docker save` stores a layer shared by two images once and links the other.
                    tar::EntryType::Symlink => {
                        if let Some(l) = link {
                            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                            let target = if l.starts_with(b"/") {
                                normalize_bytes(&l)
                            } else {
                                normalize(&format!("{dir}/{}", String::from_utf8_lossy(&l)))
                            };
                            links.push((path, target));
                        }
                    }
                    tar::EntryType::Link => {
                        if let Some(l) = link {
                            links.push((path, normalize_bytes(&l)));
                        }
                    }
                    _ => {}
                }
            }
        }
        // Resolve links to data; chains are followed a bounded number of times (no loops).
        for (path, mut target) in links.iter().cloned() {
            for _ in 0..40 {
                if let Some(&m) = members.get(&target) {
                    members.insert(path.clone(), m);
                    break;
                }
                match links.iter().find(|(p, _)| *p == target) {
                    Some((_, t)) => target = t.clone(),
                    None => break,
                }
            }
        }
        Ok(TarIndex {
            name,
            file,
            members,
        })
    }
}

/// An archive member name as a lookup key: no leading `/` or `./`, no empty,
/// `.` or `..` components (`..` is resolved lexically, never above the root).
pub(crate) fn normalize(name: &str) -> String {
    normalize_bytes(name.as_bytes())
}

fn normalize_bytes(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Reads `[pos, end)` of a shared file with positional reads.
struct AtReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min((self.end - self.pos).min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens a layout directory as a store (the caller checks its contents).
pub(crate) fn dir(path: &Path) -> Store {
    Store::Dir(path.to_path_buf())
}
