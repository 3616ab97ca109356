//! File data: blocks read in tree order by this thread, compressed on worker
//! threads, put back in order and written by one writer thread, so the output
//! is the same whatever the thread count.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::compress::{Codec, Encoder};
use super::scan::{Kind, Tree};
use crate::squashfs::error::{Error, Result};

/// Bit of a stored block size meaning "stored uncompressed".
pub(crate) const UNCOMPRESSED_BIT: u32 = 1 << 24;
/// Pack the tail ends of files larger than a block into fragments too.
/// mksquashfs does not by default (-no-tailends): the last partial block of
/// a big file is its own short block, and only small files share fragments.
const TAIL_ENDS: bool = false;
/// Files up to this size that need a duplicate check are read into memory
/// once, for hashing and for their blocks.
const HASH_IN_MEMORY: u64 = 16 << 20;

/// Where one regular file's data lies.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileLayout {
    pub(crate) blocks_start: u64,
    /// Stored size of each block (0 = sparse, bit 24 = uncompressed).
    pub(crate) sizes: Vec<u32>,
    /// (fragment index, offset in it) of the tail.
    pub(crate) fragment: Option<(u32, u32)>,
    /// Bytes of the file held by sparse blocks.
    pub(crate) sparse: u64,
}

pub(crate) struct Data {
    /// Indexed by inode; set for regular files.
    pub(crate) layouts: Vec<FileLayout>,
    /// (position, stored size) of each fragment block.
    pub(crate) fragments: Vec<(u64, u32)>,
    /// Image position after the data.
    pub(crate) end: u64,
    pub(crate) bytes_in: u64,
    pub(crate) duplicates: u64,
}

struct Job {
    seq: u64,
    data: Vec<u8>,
    /// Data blocks that are all zeros become holes; fragments never do.
    may_be_sparse: bool,
}

struct Done {
    seq: u64,
    stored: Vec<u8>,
    raw: u32,
}

/// What the reading thread decided for one file.
enum Plan {
    None,
    Blocks {
        first_seq: u64,
        count: u64,
        fragment: Option<(u32, u32)>,
    },
    Duplicate(usize),
}

/// The reading thread stopped because the writer or workers went away.
struct Stopped;

enum ProduceError {
    Stopped,
    Err(Error),
}

impl From<Error> for ProduceError {
    fn from(e: Error) -> Self {
        ProduceError::Err(e)
    }
}

impl From<Stopped> for ProduceError {
    fn from(_: Stopped) -> Self {
        ProduceError::Stopped
    }
}

pub(crate) fn write_data(
    tree: &Tree,
    file: &File,
    start: u64,
    codec: Codec,
    block_size: u32,
    threads: usize,
) -> Result<Data> {
    // Blocks in flight between reading and writing, at most: bounds memory
    // even when one block takes much longer to compress than the next.
    let in_flight = threads * 4 + 4;
    std::thread::scope(|s| {
        // Each worker holds the queue's receiving end: once all have stopped
        // (even by panicking) the reading thread's sends fail, it never blocks.
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = channel::<io::Result<Done>>();
        let (tok_tx, tok_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = tok_tx.send(());
        }
        let mut workers = Vec::new();
        for _ in 0..threads {
            let tx = done_tx.clone();
            let rx = Arc::clone(&job_rx);
            workers.push(s.spawn(move || worker(&rx, tx, codec)));
        }
        drop(job_rx);
        drop(done_tx);
        let writer = s.spawn(move || write_loop(done_rx, tok_tx, file, start));
        let mut p = Producer {
            tree,
            bs: block_size as u64,
            jobs: job_tx,
            tokens: tok_rx,
            seq: 0,
            frag: Vec::new(),
            frag_seqs: Vec::new(),
            plans: Vec::new(),
            bytes_in: 0,
            duplicates: 0,
        };
        let produced = p.run();
        let Producer {
            jobs,
            frag_seqs,
            plans,
            bytes_in,
            duplicates,
            ..
        } = p;
        // Closing the job channel lets the workers, then the writer, finish.
        drop(jobs);
        for w in workers {
            let _ = w.join();
        }
        let written = writer.join().unwrap_or_else(|_| {
            Err(Error::io(
                "writing data",
                io::Error::other("writer panicked"),
            ))
        });
        match (produced, written) {
            (Err(ProduceError::Err(e)), _) => Err(e),
            (_, Err(e)) => Err(e),
            (Err(ProduceError::Stopped), Ok(_)) => Err(Error::io(
                "writing data",
                io::Error::other("compression threads stopped"),
            )),
            (Ok(()), Ok((records, end))) => finish(
                tree, plans, &frag_seqs, &records, end, block_size, bytes_in, duplicates,
            ),
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn finish(
    tree: &Tree,
    plans: Vec<Plan>,
    frag_seqs: &[u64],
    records: &[(u64, u32)],
    end: u64,
    block_size: u32,
    bytes_in: u64,
    duplicates: u64,
) -> Result<Data> {
    let lost = || Error::io("writing data", io::Error::other("a block went missing"));
    let bs = u64::from(block_size);
    let mut layouts = vec![FileLayout::default(); tree.inodes.len()];
    for (i, plan) in plans.iter().enumerate() {
        let layout = match *plan {
            Plan::None => continue,
            Plan::Duplicate(orig) => layouts[orig].clone(),
            Plan::Blocks {
                first_seq,
                count,
                fragment,
            } => {
                let recs = records
                    .get(first_seq as usize..(first_seq + count) as usize)
                    .ok_or_else(lost)?;
                let size = tree.inodes[i].size;
                let sparse = recs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.1 == 0)
                    .map(|(k, _)| bs.min(size - k as u64 * bs))
                    .sum();
                FileLayout {
                    blocks_start: recs.first().map_or(0, |r| r.0),
                    sizes: recs.iter().map(|r| r.1).collect(),
                    fragment,
                    sparse,
                }
            }
        };
        layouts[i] = layout;
    }
    let fragments = frag_seqs
        .iter()
        .map(|&s| records.get(s as usize).copied().ok_or_else(lost))
        .collect::<Result<Vec<_>>>()?;
    Ok(Data {
        layouts,
        fragments,
        end,
        bytes_in,
        duplicates,
    })
}

fn is_zero(b: &[u8]) -> bool {
    // No early exit in the fold, so it vectorizes; the prefix check catches
    // most data blocks without scanning them.
    b.iter().take(64).all(|&x| x == 0) && b.iter().fold(0u8, |a, &x| a | x) == 0
}

fn worker(rx: &Mutex<Receiver<Job>>, tx: Sender<io::Result<Done>>, codec: Codec) {
    let mut enc = match Encoder::new(codec) {
        Ok(e) => e,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    loop {
        // A poisoned lock only means another worker panicked; the queue is fine.
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = job else { return };
        let done = if job.may_be_sparse && is_zero(&job.data) {
            Ok(Done {
                seq: job.seq,
                stored: Vec::new(),
                raw: 0,
            })
        } else {
            match enc.compress(&job.data) {
                Ok(Some(z)) => Ok(Done {
                    seq: job.seq,
                    raw: z.len() as u32,
                    stored: z,
                }),
                Ok(None) => Ok(Done {
                    seq: job.seq,
                    raw: job.data.len() as u32 | UNCOMPRESSED_BIT,
                    stored: job.data,
                }),
                Err(e) => Err(e),
            }
        };
        if tx.send(done).is_err() {
            return; // the writer failed; its error is reported
        }
    }
}

/// Writes finished blocks in sequence order; returns (position, stored size)
/// of every block by sequence number, and the position after the last.
fn write_loop(
    rx: Receiver<io::Result<Done>>,
    tokens: SyncSender<()>,
    file: &File,
    start: u64,
) -> Result<(Vec<(u64, u32)>, u64)> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut records = Vec::new();
    let mut pos = start;
    for msg in rx {
        let d = msg.map_err(|e| Error::io("compressing data", e))?;
        pending.insert(d.seq, d);
        while let Some(d) = pending.remove(&(records.len() as u64)) {
            records.push((pos, d.raw));
            out.write_all(&d.stored)
                .map_err(|e| Error::io("writing data", e))?;
            pos += d.stored.len() as u64;
            // The reader may have finished already; then nobody needs it.
            let _ = tokens.send(());
        }
    }
    if !pending.is_empty() {
        return Err(Error::io(
            "writing data",
            io::Error::other("a compression thread stopped"),
        ));
    }
    out.flush().map_err(|e| Error::io("writing data", e))?;
    Ok((records, pos))
}

/// File contents, from memory when they were read for the duplicate check.
enum Source {
    Mem(Vec<u8>, usize),
    File(File),
}

impl Source {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Mem(v, at) => {
                let src = v
                    .get(*at..*at + buf.len())
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                *at += buf.len();
                Ok(())
            }
            Source::File(f) => f.read_exact(buf),
        }
    }
}

struct Producer<'a> {
    tree: &'a Tree,
    bs: u64,
    jobs: SyncSender<Job>,
    tokens: Receiver<()>,
    seq: u64,
    /// The fragment block being filled.
    frag: Vec<u8>,
    /// Sequence number of each fragment block sent.
    frag_seqs: Vec<u64>,
    plans: Vec<Plan>,
    bytes_in: u64,
    duplicates: u64,
}

fn read_err(path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::io(
            format_args!("reading {}", path.display()),
            io::Error::new(e.kind(), "file shrank while being read"),
        )
    } else {
        Error::io(format_args!("reading {}", path.display()), e)
    }
}

impl Producer<'_> {
    fn send(&mut self, data: Vec<u8>, may_be_sparse: bool) -> std::result::Result<u64, Stopped> {
        self.tokens.recv().map_err(|_| Stopped)?;
        let seq = self.seq;
        self.jobs
            .send(Job {
                seq,
                data,
                may_be_sparse,
            })
            .map_err(|_| Stopped)?;
        self.seq += 1;
        Ok(seq)
    }

    fn flush_fragment(&mut self) -> std::result::Result<(), Stopped> {
        if !self.frag.is_empty() {
            let data = std::mem::take(&mut self.frag);
            let seq = self.send(data, false)?;
            self.frag_seqs.push(seq);
        }
        Ok(())
    }

    fn run(&mut self) -> std::result::Result<(), ProduceError> {
        let inodes = &self.tree.inodes;
        // Only files whose size another file shares can be duplicates, so
        // only those are hashed.
        let mut same_size: HashMap<u64, u32> = HashMap::new();
        for ino in inodes.iter().filter(|i| i.kind == Kind::File && i.size > 0) {
            *same_size.entry(ino.size).or_default() += 1;
        }
        let mut seen: HashMap<(u64, [u8; 32]), usize> = HashMap::new();
        for (i, ino) in inodes.iter().enumerate() {
            if ino.kind != Kind::File || ino.size == 0 {
                self.plans.push(Plan::None);
                continue;
            }
            let path = ino.path.as_path();
            let mut src = None;
            if same_size.get(&ino.size).copied().unwrap_or(0) > 1 {
                let (hash, mem) = hash_file(path, ino.size).map_err(|e| read_err(path, e))?;
                if let Some(&orig) = seen.get(&(ino.size, hash)) {
                    self.plans.push(Plan::Duplicate(orig));
                    self.duplicates += 1;
                    continue;
                }
                seen.insert((ino.size, hash), i);
                src = mem.map(|m| Source::Mem(m, 0));
            }
            let mut src = match src {
                Some(s) => s,
                None => Source::File(File::open(path).map_err(|e| read_err(path, e))?),
            };
            let plan = self.file(&mut src, ino.size, path)?;
            self.plans.push(plan);
            self.bytes_in += ino.size;
        }
        self.flush_fragment()?;
        Ok(())
    }

    fn file(
        &mut self,
        src: &mut Source,
        size: u64,
        path: &Path,
    ) -> std::result::Result<Plan, ProduceError> {
        let bs = self.bs;
        let tail = size % bs;
        let tail_in_fragment = tail > 0 && (size < bs || TAIL_ENDS);
        let count = if tail_in_fragment {
            size / bs
        } else {
            size.div_ceil(bs)
        };
        let first_seq = self.seq;
        for k in 0..count {
            let len = bs.min(size - k * bs) as usize;
            let mut buf = vec![0u8; len];
            src.read_exact(&mut buf).map_err(|e| read_err(path, e))?;
            self.send(buf, true)?;
        }
        let mut fragment = None;
        if tail_in_fragment {
            if self.frag.len() as u64 + tail > bs {
                self.flush_fragment()?;
            }
            let at = self.frag.len();
            self.frag.resize(at + tail as usize, 0);
            src.read_exact(&mut self.frag[at..])
                .map_err(|e| read_err(path, e))?;
            fragment = Some((self.frag_seqs.len() as u32, at as u32));
        }
        Ok(Plan::Blocks {
            first_seq,
            count,
            fragment,
        })
    }
}

/// SHA-256 of a file's first `size` bytes, and the bytes themselves when small.
fn hash_file(path: &Path, size: u64) -> io::Result<([u8; 32], Option<Vec<u8>>)> {
    let mut f = File::open(path)?;
    if size <= HASH_IN_MEMORY {
        let mut v = vec![0u8; size as usize];
        f.read_exact(&mut v)?;
        return Ok((Sha256::digest(&v).into(), Some(v)));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((h.finalize().into(), None))
}
