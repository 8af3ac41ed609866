//! A FUSE filesystem that loses what was not synced, for power-cut tests.
//!
//! `LazyFs` passes every file through to a backing directory, except the
//! data written to files: that stays in a volatile cache, visible to
//! readers as a page cache would make it, until the file is `fsync`ed or
//! `fdatasync`ed. [`Mounted::cut`] is the power cut: from that moment every
//! operation fails with `EIO` (the machine is off), and the cache is thrown
//! away ([`CutMode::Drop`]), or a random prefix of the unsynced writes, in
//! the order they were made, reaches the backing files first
//! ([`CutMode::Prefix`]), possibly ending in a torn write whose first few
//! 512-byte sectors landed and the rest did not ([`CutMode::Torn`]).
//! [`Mounted::restore`] brings the power back: what is in the backing
//! directory is what survived.
//!
//! The model is that of LazyFS (the tool of the Jepsen and Quint
//! power-failure studies): file data is lost unless synced; metadata
//! operations (create, mkdir, rename, unlink, chmod) are durable at once.
//! Real filesystems may also lose a rename or a new file's entry until its
//! directory is synced, so this model is kinder than ext4 there and harsher
//! than ext4's periodic commits for data. `sync_file_range` never reaches a
//! FUSE filesystem, so it persists nothing here, as on a real power cut
//! where it leaves the drive's cache unflushed.
//!
//! Files are opened with `FOPEN_DIRECT_IO`, so the kernel's page cache never
//! holds a copy of data this filesystem has dropped. Memory-mapped files are
//! therefore not supported (the caisse node does not map any).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use caisse_core::parliament::SplitMix64;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const PAGE: u64 = 4096;
const SECTOR: u64 = 512;
/// Attributes and entries are never cached by the kernel: sizes change
/// behind its back at a cut.
const TTL: Duration = Duration::ZERO;

/// What reaches the backing files at a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing that was not synced.
    Drop,
    /// A random prefix of the unsynced writes, in the order they were made.
    Prefix,
    /// A random prefix, then part of the next write (whole sectors of it).
    Torn,
}

impl CutMode {
    /// `drop`, `prefix` or `torn`.
    pub fn parse(s: &str) -> Option<CutMode> {
        match s {
            "drop" => Some(CutMode::Drop),
            "prefix" => Some(CutMode::Prefix),
            "torn" => Some(CutMode::Torn),
            _ => None,
        }
    }
    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            CutMode::Drop => "drop",
            CutMode::Prefix => "prefix",
            CutMode::Torn => "torn",
        }
    }
}

/// What one cut did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CutReport {
    /// Unsynced writes and truncations pending at the cut.
    pub pending: usize,
    /// Of them, how many reached the backing files whole.
    pub applied: usize,
    /// Bytes of a torn write that landed (0 if none was torn).
    pub torn_bytes: u64,
}

/// A write not yet synced.
#[derive(Clone, Debug)]
enum Pending {
    Write {
        ino: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Truncate {
        ino: u64,
        size: u64,
    },
}

impl Pending {
    fn ino(&self) -> u64 {
        match self {
            Pending::Write { ino, .. } | Pending::Truncate { ino, .. } => *ino,
        }
    }
}

/// The view of one file with unsynced changes: what a reader sees.
#[derive(Default)]
struct Dirty {
    /// The file's size as readers see it.
    size: u64,
    /// Backing bytes at or past this offset are stale (a pending
    /// truncation cut them off), so unwritten pages there read as zeros.
    backing_limit: u64,
    /// Whole pages as readers see them.
    pages: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
struct State {
    root_real_ino: u64,
    /// FUSE inode number to backing path.
    paths: HashMap<u64, PathBuf>,
    /// Backing files kept open while the node has them open or they hold
    /// unsynced data.
    files: HashMap<u64, Arc<File>>,
    open: HashMap<u64, u32>,
    dirty: HashMap<u64, Dirty>,
    /// Every unsynced write, in order.
    log: Vec<Pending>,
    /// The power is off.
    dead: bool,
    /// Counters for the report.
    writes: u64,
    syncs: u64,
}

/// The filesystem served by the FUSE session.
struct LazyFs {
    state: Arc<Mutex<State>>,
}

/// A mounted `LazyFs`; dropping it unmounts.
pub struct Mounted {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

/// Why a mount failed, with what to do about it.
pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
    std::fs::create_dir_all(backing)?;
    std::fs::create_dir_all(mountpoint)?;
    let root_real_ino = std::fs::metadata(backing)?.ino();
    let mut paths = HashMap::new();
    paths.insert(1, backing.to_owned());
    let state = Arc::new(Mutex::new(State {
        root_real_ino,
        paths,
        ..State::default()
    }));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("caisse-lazyfs".into()),
        MountOption::RW,
        MountOption::NoAtime,
    ];
    let session = fuser::spawn_mount(
        LazyFs {
            state: state.clone(),
        },
        mountpoint,
        &config,
    )?;
    Ok(Mounted {
        state,
        session: Some(session),
        mountpoint: mountpoint.to_owned(),
    })
}

/// Whether this machine can mount a FUSE filesystem here, and if not why.
pub fn available() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available".into());
    }
    let dir = tempfile_in_tmp()?;
    let r = mount(&dir.join("b"), &dir.join("m")).map_err(|e| {
        format!("mounting a FUSE filesystem failed ({e}): run as root, or install fuse3 (apt-get install fuse3) for fusermount3")
    });
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_in_tmp() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("caisse-lazyfs-probe-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

impl Mounted {
    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cut the power: every operation fails from now on, and only what
    /// `mode` lets through of the unsynced writes reaches the backing files.
    pub fn cut(&self, mode: CutMode, rng: &mut SplitMix64) -> CutReport {
        let mut st = lock(&self.state);
        st.dead = true;
        let log = std::mem::take(&mut st.log);
        let mut report = CutReport {
            pending: log.len(),
            ..CutReport::default()
        };
        let keep = match mode {
            CutMode::Drop => 0,
            CutMode::Prefix | CutMode::Torn => rng.below(log.len() as u64 + 1) as usize,
        };
        for p in &log[..keep] {
            let _ = st.apply_to_backing(p, None);
        }
        report.applied = keep;
        if mode == CutMode::Torn
            && let Some(p @ Pending::Write { data, .. }) = log.get(keep)
        {
            let sectors = (data.len() as u64).div_ceil(SECTOR);
            let bytes = (rng.below(sectors) * SECTOR).min(data.len() as u64);
            if bytes > 0 {
                let _ = st.apply_to_backing(p, Some(bytes as usize));
            }
            report.torn_bytes = bytes;
        }
        st.dirty.clear();
        st.files.clear();
        st.open.clear();
        report
    }

    /// Bring the power back.
    pub fn restore(&self) {
        lock(&self.state).dead = false;
    }

    /// Writes and syncs served so far.
    pub fn counters(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.writes, st.syncs)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(m: &std::fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

impl State {
    fn fuse_ino(&self, real: u64) -> u64 {
        if real == self.root_real_ino {
            1
        } else if real == 1 {
            self.root_real_ino
        } else {
            real
        }
    }

    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.paths.get(&ino).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn attr(&self, ino: u64, m: &std::fs::Metadata) -> FileAttr {
        let size = self.dirty.get(&ino).map_or(m.len(), |d| d.size);
        let t = |s: i64, ns: i64| {
            UNIX_EPOCH
                + Duration::new(
                    u64::try_from(s).unwrap_or(0),
                    ns.clamp(0, 999_999_999) as u32,
                )
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: t(m.ctime(), m.ctime_nsec()),
            kind: kind_of(m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    /// Stat `ino`: through its open backing file if there is one (it may
    /// have been unlinked), else its path.
    fn stat(&self, ino: u64) -> Result<FileAttr, Errno> {
        let m = match self.files.get(&ino) {
            Some(f) => f.metadata(),
            None => std::fs::symlink_metadata(self.path(ino)?),
        }
        .map_err(|e| errno(&e))?;
        Ok(self.attr(ino, &m))
    }

    /// Register `path` (just looked up or created) and stat it.
    fn enter(&mut self, path: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
        let ino = self.fuse_ino(m.ino());
        self.paths.insert(ino, path);
        Ok(self.attr(ino, &m))
    }

    fn backing_file(&mut self, ino: u64) -> Result<Arc<File>, Errno> {
        if let Some(f) = self.files.get(&ino) {
            return Ok(f.clone());
        }
        let path = self.path(ino)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| errno(&e))?;
        let f = Arc::new(f);
        self.files.insert(ino, f.clone());
        Ok(f)
    }

    /// Forget the backing file of `ino` once nobody has it open and it
    /// holds nothing unsynced.
    fn maybe_close(&mut self, ino: u64) {
        if self.open.get(&ino).copied().unwrap_or(0) == 0 && !self.dirty.contains_key(&ino) {
            self.files.remove(&ino);
        }
    }

    /// The dirty view of `ino`, created from the backing file's size.
    fn dirty_of(&mut self, ino: u64) -> Result<&mut Dirty, Errno> {
        if !self.dirty.contains_key(&ino) {
            let f = self.backing_file(ino)?;
            let size = f.metadata().map_err(|e| errno(&e))?.len();
            self.dirty.insert(
                ino,
                Dirty {
                    size,
                    backing_limit: size,
                    pages: BTreeMap::new(),
                },
            );
        }
        self.dirty.get_mut(&ino).ok_or(Errno::EIO)
    }

    /// Load page `n` of `ino` into its dirty view, as readers see it.
    fn page<'a>(d: &'a mut Dirty, f: &File, n: u64) -> Result<&'a mut Vec<u8>, Errno> {
        if !d.pages.contains_key(&n) {
            let mut buf = vec![0u8; PAGE as usize];
            let start = n * PAGE;
            if start < d.backing_limit {
                let want = (d.backing_limit - start).min(PAGE) as usize;
                read_full(f, &mut buf[..want], start)?;
            }
            d.pages.insert(n, buf);
        }
        d.pages.get_mut(&n).ok_or(Errno::EIO)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let f = self.backing_file(ino)?;
        let d = self.dirty_of(ino)?;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let n = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let take = rest.len().min(PAGE as usize - within);
            let page = Self::page(d, &f, n)?;
            page[within..within + take].copy_from_slice(&rest[..take]);
            pos += take as u64;
            rest = &rest[take..];
        }
        d.size = d.size.max(offset + data.len() as u64);
        self.log.push(Pending::Write {
            ino,
            offset,
            data: data.to_vec(),
        });
        self.writes += 1;
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let f = self.backing_file(ino)?;
        let d = self.dirty_of(ino)?;
        if size < d.size {
            // Zero the tail of the boundary page, drop the pages past it.
            let n = size / PAGE;
            if !size.is_multiple_of(PAGE) {
                let page = Self::page(d, &f, n)?;
                page[(size % PAGE) as usize..].fill(0);
                d.pages.retain(|k, _| *k <= n);
            } else {
                d.pages.retain(|k, _| *k < n);
            }
            d.backing_limit = d.backing_limit.min(size);
        }
        d.size = size;
        self.log.push(Pending::Truncate { ino, size });
        Ok(())
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let f = self.backing_file(ino)?;
        let Some(d) = self.dirty.get_mut(&ino) else {
            let len = f.metadata().map_err(|e| errno(&e))?.len();
            let end = len.min(offset + u64::from(size));
            let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
            read_full(&f, &mut buf, offset)?;
            return Ok(buf);
        };
        let end = d.size.min(offset + u64::from(size));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let n = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let take = ((end - pos) as usize).min(PAGE as usize - within);
            if let Some(p) = d.pages.get(&n) {
                out.extend_from_slice(&p[within..within + take]);
            } else {
                let mut buf = vec![0u8; take];
                if pos < d.backing_limit {
                    let avail = ((d.backing_limit - pos) as usize).min(take);
                    read_full(&f, &mut buf[..avail], pos)?;
                }
                out.extend_from_slice(&buf);
            }
            pos += take as u64;
        }
        Ok(out)
    }

    /// Make `ino`'s unsynced writes durable: they reach the backing file
    /// in the order they were made.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        if !self.dirty.contains_key(&ino) {
            return Ok(());
        }
        let (mine, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.log)
            .into_iter()
            .partition(|p| p.ino() == ino);
        self.log = rest;
        for p in &mine {
            self.apply_to_backing(p, None)?;
        }
        self.dirty.remove(&ino);
        self.syncs += 1;
        self.maybe_close(ino);
        Ok(())
    }

    /// Write one pending change to the backing file (only its first
    /// `limit` bytes for a torn write).
    fn apply_to_backing(&mut self, p: &Pending, limit: Option<usize>) -> Result<(), Errno> {
        let f = self.backing_file(p.ino())?;
        match p {
            Pending::Write { offset, data, .. } => {
                let data = &data[..limit.unwrap_or(data.len()).min(data.len())];
                f.write_all_at(data, *offset).map_err(|e| errno(&e))
            }
            Pending::Truncate { size, .. } => f.set_len(*size).map_err(|e| errno(&e)),
        }
    }

    /// `ino` is gone from the namespace: if nobody has it open, its
    /// unsynced data goes with it.
    fn forget_removed(&mut self, ino: u64) {
        if self.open.get(&ino).copied().unwrap_or(0) == 0 {
            self.dirty.remove(&ino);
            self.log.retain(|p| p.ino() != ino);
            self.files.remove(&ino);
        }
        self.paths.remove(&ino);
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(&e)),
        }
    }
    Ok(())
}

impl LazyFs {
    /// The state, or `EIO` while the power is off.
    fn live(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let st = lock(&self.state);
        if st.dead { Err(Errno::EIO) } else { Ok(st) }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.live().and_then(|mut st| {
            let path = st.child(parent.0, name)?;
            st.enter(path)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.live().and_then(|st| st.stat(ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.live().and_then(|mut st| {
            let path = st.path(ino.0)?;
            if let Some(m) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m & 0o7777))
                    .map_err(|e| errno(&e))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(|e| errno(&e))?;
            }
            if let Some(s) = size {
                st.truncate(ino.0, s)?;
            }
            st.stat(ino.0)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.live().and_then(|mut st| {
            let path = st.child(parent.0, name)?;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&path)
                .map_err(|e| errno(&e))?;
            st.enter(path)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.live().and_then(|mut st| {
            let path = st.child(parent.0, name)?;
            let m = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
            std::fs::remove_file(&path).map_err(|e| errno(&e))?;
            let ino = st.fuse_ino(m.ino());
            st.forget_removed(ino);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.live().and_then(|mut st| {
            let path = st.child(parent.0, name)?;
            let m = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
            std::fs::remove_dir(&path).map_err(|e| errno(&e))?;
            let ino = st.fuse_ino(m.ino());
            st.paths.remove(&ino);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.live().and_then(|mut st| {
            if flags.bits() != 0 {
                return Err(Errno::EINVAL);
            }
            let from = st.child(parent.0, name)?;
            let to = st.child(newparent.0, newname)?;
            let replaced = std::fs::symlink_metadata(&to).ok().map(|m| m.ino());
            std::fs::rename(&from, &to).map_err(|e| errno(&e))?;
            if let Some(real) = replaced {
                let ino = st.fuse_ino(real);
                st.forget_removed(ino);
            }
            // Every known path under `from` moves under `to`.
            for p in st.paths.values_mut() {
                if let Ok(rest) = p.strip_prefix(&from) {
                    *p = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.live().and_then(|mut st| {
            st.backing_file(ino.0)?;
            *st.open.entry(ino.0).or_default() += 1;
            if flags.0 & libc::O_TRUNC != 0 {
                st.truncate(ino.0, 0)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.live().and_then(|mut st| {
            let path = st.child(parent.0, name)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .create_new(flags & libc::O_EXCL != 0)
                .mode(mode & !umask & 0o7777)
                .open(&path)
                .map_err(|e| errno(&e))?;
            let a = st.enter(path)?;
            let ino = a.ino.0;
            st.files.insert(ino, Arc::new(f));
            *st.open.entry(ino).or_default() += 1;
            if flags & libc::O_TRUNC != 0 {
                st.truncate(ino, 0)?;
            }
            st.stat(ino)
        });
        match r {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(a.ino.0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
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
        match self.live().and_then(|mut st| st.read(ino.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.live().and_then(|mut st| st.write(ino.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        if let Some(n) = st.open.get_mut(&ino.0) {
            *n = n.saturating_sub(1);
        }
        st.maybe_close(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.live().and_then(|mut st| st.sync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.live().and_then(|st| {
            let path = st.path(ino.0)?;
            let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (1, FileType::Directory, "..".into()),
            ];
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(|e| errno(&e))?
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((st.fuse_ino(m.ino()), kind_of(&m), e.file_name()))
                })
                .collect();
            names.sort_by(|a, b| a.2.cmp(&b.2));
            entries.extend(names);
            Ok(entries)
        });
        match r {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is durable at once in this model.
        match self.live() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            1 << 28,
            1 << 27,
            1 << 27,
            1 << 20,
            1 << 19,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.live().and_then(|mut st| {
            if mode != 0 {
                return Err(Errno::from_i32(libc::EOPNOTSUPP));
            }
            let size = st.stat(ino.0)?.size;
            if offset + length > size {
                st.truncate(ino.0, offset + length)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs FUSE: run where `/dev/fuse` and mounting are allowed.
    fn mounted() -> Option<(tempfile::TempDir, Mounted)> {
        if let Err(why) = available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the power-cut filesystem cannot run in CI: {why}"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let m = mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        Some((dir, m))
    }

    #[test]
    fn unsynced_data_is_lost_and_synced_data_survives() {
        let Some((dir, m)) = mounted() else { return };
        let a = m.path().join("a");
        let b = m.path().join("b");
        {
            let f = File::create(&a).unwrap();
            f.write_all_at(b"durable", 0).unwrap();
            f.sync_all().unwrap();
            f.write_all_at(b"DURABLE and more", 0).unwrap();
            // Readers see the cache before any sync.
            assert_eq!(std::fs::read(&a).unwrap(), b"DURABLE and more");
            std::fs::write(&b, b"never synced").unwrap();
        }
        let mut rng = SplitMix64(1);
        let r = m.cut(CutMode::Drop, &mut rng);
        // The rewrite of `a`, and `b`'s truncation at creation and its data.
        assert_eq!(r.pending, 3);
        assert!(std::fs::read(&a).is_err(), "the power is off");
        m.restore();
        assert_eq!(std::fs::read(&a).unwrap(), b"durable");
        // The file exists (metadata is durable) but its data is gone.
        assert_eq!(std::fs::read(&b).unwrap(), b"");
        assert_eq!(
            std::fs::read(dir.path().join("backing/a")).unwrap(),
            b"durable"
        );
    }

    #[test]
    fn a_torn_write_keeps_whole_sectors_of_one_write() {
        let Some((_dir, m)) = mounted() else { return };
        let a = m.path().join("a");
        let f = File::create(&a).unwrap();
        f.write_all_at(&vec![1u8; 8192], 0).unwrap();
        f.sync_all().unwrap();
        f.write_all_at(&vec![2u8; 8192], 0).unwrap();
        drop(f);
        // Find a seed that tears the only pending write part way.
        let mut seed = 0;
        let report = loop {
            let mut rng = SplitMix64(seed);
            let mut probe = SplitMix64(seed);
            let keep = probe.below(2);
            let bytes = probe.below(16) * 512;
            if keep == 0 && bytes > 0 {
                break m.cut(CutMode::Torn, &mut rng);
            }
            seed += 1;
        };
        m.restore();
        let data = std::fs::read(&a).unwrap();
        assert_eq!(data.len(), 8192);
        let twos = data.iter().take_while(|b| **b == 2).count() as u64;
        assert_eq!(twos, report.torn_bytes);
        assert_eq!(twos % 512, 0);
        assert!(data[twos as usize..].iter().all(|b| *b == 1));
    }

    #[test]
    fn truncation_and_rename_behave_as_on_a_disk() {
        let Some((_dir, m)) = mounted() else { return };
        let a = m.path().join("a");
        std::fs::write(&a, vec![7u8; 10_000]).unwrap();
        File::open(&a).unwrap().sync_all().unwrap();
        let f = OpenOptions::new().write(true).open(&a).unwrap();
        f.set_len(100).unwrap();
        f.write_all_at(b"x", 5000).unwrap();
        let seen = std::fs::read(&a).unwrap();
        assert_eq!(seen.len(), 5001);
        assert!(seen[100..5000].iter().all(|b| *b == 0));
        f.sync_all().unwrap();
        drop(f);
        // write a new file, rename it over `a` without syncing it: the rename
        // lasts, its data does not.
        let tmp = m.path().join("a.tmp");
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::rename(&tmp, &a).unwrap();
        m.cut(CutMode::Drop, &mut SplitMix64(3));
        m.restore();
        assert_eq!(std::fs::read(&a).unwrap(), b"");
        assert!(!tmp.exists());
    }
}
