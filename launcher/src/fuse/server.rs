//! The FUSE file system that serves a SquashFS image from our in-process reader.
//!
//! Node ids are SquashFS inode references (+2, since FUSE reserves 0 and uses 1 for the
//! root), as squashfuse does: no table from node id to inode to build or keep. The image is
//! immutable, so the kernel is told to cache everything for as long as it likes. Mount points
//! the image lacks are served as virtual nodes (`virtual_nodes`), with ids above any inode
//! reference.

use crate::fuse::counts::{Op, RequestCounts};
use crate::fuse::virtual_nodes::{Parent, VirtualNodes};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use image_tools::squashfs::{self, Archive, Inode};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Extended attributes: (full name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Nothing in the image ever changes while it is mounted.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const ROOT_ID: u64 = 1;
/// Node ids of virtual nodes: this bit plus their index (inode references use 48 bits).
const VIRTUAL_BIT: u64 = 1 << 62;

/// One name in a directory listing.
pub struct Entry {
    name: Vec<u8>,
    target: Target,
}

#[derive(Clone, Copy)]
enum Target {
    Image {
        inode_ref: u64,
        kind: squashfs::FileType,
    },
    Virtual(usize),
}

/// What a node id names.
enum Node {
    Image(Inode),
    Virtual(usize),
}

pub struct ImageFs {
    archive: Arc<Archive>,
    root_ref: u64,
    /// Directory listings of open directory handles: one read per opendir, not per readdir call
    /// (only used where the kernel cannot do without OPENDIR).
    dirs: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
    next_fh: AtomicU64,
    reported: AtomicBool,
    /// Report every file as owned by this uid/gid instead of the stored owner.
    owner: Option<(u32, u32)>,
    /// Largest readahead the kernel may ask for, in bytes.
    readahead: u32,
    has_xattrs: bool,
    /// Where small files of listed directories are sent to be pushed into the page cache.
    pusher: Option<crate::fuse::push::Pusher>,
    virt: VirtualNodes,
    /// Owner of the virtual nodes: the caller.
    caller: (u32, u32),
    /// The kernel takes ENOSYS to OPENDIR as "no opendir or releasedir needed".
    no_opendir: bool,
    /// Requests answered, by opcode (printed by `--debug`).
    counts: Arc<RequestCounts>,
}

impl ImageFs {
    /// `owner`: with a writable overlay on top, the overlay must copy files up and chown
    /// them; it cannot chown to the image's owners (not mapped in our user namespace), so
    /// the files are shown as the caller's. The caller can read the whole image file anyway.
    pub fn new(archive: Arc<Archive>, owner: Option<(u32, u32)>, readahead: u32) -> ImageFs {
        let root_ref = archive.superblock().root_inode;
        let archive_has_xattrs = archive.superblock().has_xattrs();
        ImageFs {
            archive,
            root_ref,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            reported: AtomicBool::new(false),
            owner,
            readahead,
            has_xattrs: archive_has_xattrs,
            pusher: None,
            virt: VirtualNodes::default(),
            caller: (0, 0),
            no_opendir: false,
            counts: Arc::default(),
        }
    }

    /// Count the requests answered into `counts`.
    pub fn with_counts(mut self, counts: Arc<RequestCounts>) -> ImageFs {
        self.counts = counts;
        self
    }

    /// Serve these mount points the image lacks, owned by `caller`.
    pub fn with_virtual_nodes(mut self, virt: VirtualNodes, caller: (u32, u32)) -> ImageFs {
        self.virt = virt;
        self.caller = caller;
        self
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        if ino.0 & VIRTUAL_BIT != 0 {
            let idx = (ino.0 & !VIRTUAL_BIT) as usize;
            return self
                .virt
                .get(idx)
                .map(|_| Node::Virtual(idx))
                .ok_or(Errno::ENOENT);
        }
        self.inode(ino).map(Node::Image)
    }

    fn parent_key(&self, ino: INodeNo) -> Parent {
        if ino.0 & VIRTUAL_BIT != 0 {
            Parent::Virtual((ino.0 & !VIRTUAL_BIT) as usize)
        } else {
            Parent::Image(self.inode_ref(ino))
        }
    }

    fn virtual_attr(&self, idx: usize) -> FileAttr {
        let (dir, mode, size) = self.virt.get(idx).map_or((true, 0o755, 0), |n| {
            (
                n.dir,
                n.mode,
                n.content.as_ref().map_or(0, |c| c.len() as u64),
            )
        });
        FileAttr {
            ino: INodeNo(VIRTUAL_BIT | idx as u64),
            size,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: mode,
            nlink: if dir { 2 } else { 1 },
            uid: self.caller.0,
            gid: self.caller.1,
            rdev: 0,
            blksize: self.archive.superblock().block_size,
            flags: 0,
        }
    }

    fn node_attr(&self, node: &Node) -> FileAttr {
        match node {
            Node::Image(inode) => self.attr(inode),
            Node::Virtual(idx) => self.virtual_attr(*idx),
        }
    }

    /// A directory's names: the image's, then the virtual nodes placed in it.
    fn read_listing(&self, ino: INodeNo) -> Result<Vec<Entry>, Errno> {
        let mut out = Vec::new();
        if let Node::Image(dir) = self.node(ino)? {
            let key = self.parent_key(ino);
            for e in self.archive.read_dir(&dir).map_err(|e| self.fail(e))? {
                if self.virt.shadows(key, &e.name) {
                    continue;
                }
                out.push(Entry {
                    name: e.name,
                    target: Target::Image {
                        inode_ref: e.inode_ref,
                        kind: e.kind,
                    },
                });
            }
        }
        for &idx in self.virt.children(self.parent_key(ino)) {
            if let Some(n) = self.virt.get(idx) {
                out.push(Entry {
                    name: n.name.clone(),
                    target: Target::Virtual(idx),
                });
            }
        }
        Ok(out)
    }

    /// Push small files of listed directories into the page cache (see `push`).
    pub fn with_pusher(mut self, pusher: crate::fuse::push::Pusher) -> ImageFs {
        self.pusher = Some(pusher);
        self
    }

    fn node_id(&self, inode_ref: u64) -> u64 {
        node_id(inode_ref, self.root_ref)
    }

    fn inode_ref(&self, ino: INodeNo) -> u64 {
        if ino.0 == ROOT_ID {
            self.root_ref
        } else {
            ino.0.wrapping_sub(2)
        }
    }

    fn inode(&self, ino: INodeNo) -> Result<Inode, Errno> {
        self.archive
            .inode(self.inode_ref(ino))
            .map_err(|e| self.fail(e))
    }

    /// The reader's errno for the kernel; a damaged image (EIO) is also told to the user, once.
    /// The message only joins a queue (`report`) that a thread of its own writes out: the
    /// worker replies at once and never waits on stderr, which may be a pipe the very process
    /// waiting for this reply holds (issue 20, finding 1).
    fn fail(&self, e: squashfs::Error) -> Errno {
        let errno = e.errno();
        if errno == libc::EIO && !self.reported.swap(true, Ordering::Relaxed) {
            crate::fuse::report::line(format!("launcher: error reading the image: {e}"));
        }
        Errno::from_i32(errno)
    }

    fn attr(&self, inode: &Inode) -> FileAttr {
        let block = self.archive.superblock().block_size;
        let time = UNIX_EPOCH + Duration::from_secs(u64::from(inode.mtime));
        FileAttr {
            ino: INodeNo(self.node_id(inode.inode_ref)),
            size: inode.size,
            blocks: inode.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: kind(inode.kind),
            perm: inode.mode & 0o7777,
            nlink: inode.nlink.max(1),
            uid: self.owner.map_or(inode.uid, |o| o.0),
            gid: self.owner.map_or(inode.gid, |o| o.1),
            rdev: inode.rdev,
            blksize: block,
            flags: 0,
        }
    }

    /// The extended attributes of a node. Images without an xattr table answer ENOSYS, which
    /// makes the kernel stop asking: no round trip per open (overlayfs checks an xattr on
    /// every file it opens).
    fn xattrs(&self, ino: INodeNo) -> Result<Xattrs, Errno> {
        if !self.has_xattrs {
            return Err(Errno::ENOSYS);
        }
        match self.node(ino)? {
            Node::Image(inode) => self.archive.xattrs(&inode).map_err(|e| self.fail(e)),
            Node::Virtual(_) => Ok(Vec::new()),
        }
    }

    fn listing(&self, fh: FileHandle, ino: INodeNo) -> Result<Arc<Vec<Entry>>, Errno> {
        if let Some(l) = self.dirs.lock().map_err(|_| Errno::EIO)?.get(&fh.0) {
            return Ok(l.clone());
        }
        // No opendir (`no_opendir`): read it now. Directory listings are decoded from the
        // metadata block cache, and the kernel caches what it was given.
        Ok(Arc::new(self.read_listing(ino)?))
    }
}

/// The FUSE node id of an inode reference.
pub fn node_id(inode_ref: u64, root_ref: u64) -> u64 {
    if inode_ref == root_ref {
        ROOT_ID
    } else {
        inode_ref + 2
    }
}

fn kind(k: squashfs::FileType) -> FileType {
    match k {
        squashfs::FileType::Dir => FileType::Directory,
        squashfs::FileType::File => FileType::RegularFile,
        squashfs::FileType::Symlink => FileType::Symlink,
        squashfs::FileType::BlockDev => FileType::BlockDevice,
        squashfs::FileType::CharDev => FileType::CharDevice,
        squashfs::FileType::Fifo => FileType::NamedPipe,
        squashfs::FileType::Socket => FileType::Socket,
    }
}

/// The attributes of a negative lookup reply: only the node id (0: "no such name") counts.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is an optimisation the kernel may refuse; refusal is not an error.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_NO_OPEN_SUPPORT,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Only a kernel that offers it takes ENOSYS to OPENDIR as "no opendir needed"
        // (Linux >= 5.1); an older one would fail the opendir.
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        let _ = config.set_max_readahead(self.readahead);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counts.count(Op::Lookup);
        if let Some(idx) = self.virt.child(self.parent_key(parent), name.as_bytes()) {
            return reply.entry(&TTL, &self.virtual_attr(idx), Generation(0));
        }
        let result = match self.node(parent) {
            Ok(Node::Image(dir)) => self
                .archive
                .lookup(&dir, name.as_bytes())
                .map_err(|e| self.fail(e)),
            Ok(Node::Virtual(_)) => Ok(None),
            Err(e) => Err(e),
        };
        match result {
            Ok(Some(inode)) => {
                let attr = self.attr(&inode);
                reply.entry(&TTL, &attr, Generation(0));
                if let Some(p) = &self.pusher {
                    p.on_lookup(attr.ino, &inode);
                }
            }
            // A negative entry the kernel keeps (node id 0 with a timeout): the image cannot
            // gain the name later. An ENOENT error would be cached for no time at all, and
            // every later miss (perl and python search their paths for each module) would be
            // a round trip. benches/instance.sh, perl loading 5 modules in a warm instance:
            // docs/performance.md.
            Ok(None) => reply.entry(&TTL, &negative_entry(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counts.count(Op::Getattr);
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.node_attr(&node)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.counts.count(Op::Readlink);
        let target = match self.node(ino) {
            Ok(Node::Image(i)) => self.archive.read_link(&i).map_err(|e| self.fail(e)),
            Ok(Node::Virtual(_)) => Err(Errno::EINVAL),
            Err(e) => Err(e),
        };
        match target {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.count(Op::Open);
        // ENOSYS with FUSE_NO_OPEN_SUPPORT: the kernel stops sending OPEN and RELEASE (two
        // round trips per file) and keeps the page cache across opens. No per-file state is
        // needed; writes are refused by the read-only mount.
        reply.error(Errno::ENOSYS)
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Nothing to free: node ids are inode references. Counted per node (a BATCH_FORGET
        // request arrives here once per node it names).
        self.counts.count(Op::Forget);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        self.counts.count(Op::Flush);
        // Nothing to flush on a read-only image; ENOSYS makes the kernel stop sending FLUSH
        // at every close.
        reply.error(Errno::ENOSYS)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.counts.count(Op::Release);
        reply.ok()
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.counts.count(Op::Read);
        let inode = match self.node(ino) {
            Ok(Node::Image(i)) => i,
            Ok(Node::Virtual(idx)) => {
                let content = self.virt.get(idx).and_then(|n| n.content.as_deref());
                let bytes = content.unwrap_or(&[]);
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                return reply.data(&bytes[start..end]);
            }
            Err(e) => return reply.error(e),
        };
        let len = (size as u64).min(inode.size.saturating_sub(offset)) as usize;
        // One buffer per worker thread, grown once: a fresh zeroed allocation per request
        // (up to 1 MiB, so an mmap) cost more than the copy itself.
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0);
            }
            match self.archive.read_at(&inode, offset, &mut buf[..len]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(self.fail(e)),
            }
        })
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.count(Op::Opendir);
        if self.no_opendir {
            // As for OPEN: the kernel then stops sending OPENDIR and RELEASEDIR (two round
            // trips per directory: 44 of the 2,139 requests of find + cat over 2,000 files in
            // 20 directories) and caches listings by default (FOPEN_KEEP_CACHE |
            // FOPEN_CACHE_DIR). Each readdirplus reads the listing itself (`listing`).
            return reply.error(Errno::ENOSYS);
        }
        let entries = match self.read_listing(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        match self.dirs.lock() {
            Ok(mut dirs) => {
                dirs.insert(fh, Arc::new(entries));
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                )
            }
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.counts.count(Op::Readdir);
        let entries = match self.listing(fh, ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 = after ".", 2 = after "..", 2+i+1 = after entry i.
        let mut off = offset;
        if off == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            off = 1;
        }
        if off == 1 {
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            off = 2;
        }
        for (i, e) in entries.iter().enumerate().skip((off - 2) as usize) {
            let (id, k) = match e.target {
                Target::Image { inode_ref, kind: k } => (self.node_id(inode_ref), kind(k)),
                Target::Virtual(idx) => (VIRTUAL_BIT | idx as u64, self.virtual_attr(idx).kind),
            };
            if reply.add(INodeNo(id), i as u64 + 3, k, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.counts.count(Op::Readdirplus);
        let entries = match self.listing(fh, ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dir_attr = match self.node(ino) {
            Ok(d) => self.node_attr(&d),
            Err(e) => return reply.error(e),
        };
        let mut off = offset;
        if off == 0 {
            if reply.add(ino, 1, ".", &TTL, &dir_attr, Generation(0)) {
                return reply.ok();
            }
            off = 1;
        }
        if off == 1 {
            if reply.add(ino, 2, "..", &TTL, &dir_attr, Generation(0)) {
                return reply.ok();
            }
            off = 2;
        }
        let mut small: crate::fuse::push::Batch = Vec::new();
        let mut small_bytes = 0;
        for (i, e) in entries.iter().enumerate().skip((off - 2) as usize) {
            // Virtual nodes have no image inode (and nothing to push).
            let (attr, inode) = match e.target {
                Target::Image { inode_ref, .. } => match self.archive.inode(inode_ref) {
                    Ok(i) => (self.attr(&i), Some(i)),
                    Err(err) => return reply.error(self.fail(err)),
                },
                Target::Virtual(idx) => (self.virtual_attr(idx), None),
            };
            if reply.add(
                attr.ino,
                i as u64 + 3,
                OsStr::from_bytes(&e.name),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
            let Some(inode) = inode else { continue };
            if inode.kind == squashfs::FileType::File
                && inode.size > 0
                && inode.size <= crate::fuse::push::SMALL_FILE
                && small_bytes + inode.size <= crate::fuse::push::BATCH_BYTES
            {
                small_bytes += inode.size;
                small.push((attr.ino, inode));
            }
        }
        reply.ok();
        if let (Some(p), false) = (&self.pusher, small.is_empty()) {
            p.offer(crate::fuse::push::Kind::Listed, small);
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.counts.count(Op::Releasedir);
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.remove(&fh.0);
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.counts.count(Op::Statfs);
        let sb = self.archive.superblock();
        let bsize = sb.block_size.max(1);
        let blocks = sb.bytes_used.div_ceil(u64::from(bsize));
        reply.statfs(
            blocks,
            0,
            0,
            u64::from(sb.inode_count),
            0,
            bsize,
            256,
            bsize,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.counts.count(Op::Getxattr);
        let xattrs = match self.xattrs(ino) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        match xattrs.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.counts.count(Op::Listxattr);
        let xattrs = match self.xattrs(ino) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (n, _) in &xattrs {
            names.extend_from_slice(n);
            names.push(0);
        }
        if size == 0 {
            reply.size(names.len() as u32)
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&names)
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.counts.count(Op::Access);
        // default_permissions: the kernel checks modes itself.
        reply.ok()
    }
}
