//! The storage engines behind the core's [`Store`] trait.
//!
//! The trait, the key layout and the value encoding live in
//! `caisse_core::store`; this module is the only place that names an
//! engine. Two are here:
//!
//! - [`RedbStore`], the default: one file, `store.redb`, in the data
//!   directory; ACID transactions with read snapshots and a stable file
//!   format. It passes the power-cut harness (`caisse-testnet powercut`).
//! - [`SledStore`], the engine of earlier versions: a directory, `store/`.
//!   It is still opened where it is found, but the power-cut harness showed
//!   it losing acknowledged purchases and corrupting its files (see
//!   BENCHMARKS.md): convert with `caisse store convert --to redb`.
//!
//! [`open`] picks the engine a data directory holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub use caisse_core::store::*;

/// A storage engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// redb: `store.redb`.
    Redb,
    /// sled 0.34: `store/` (loses acknowledged writes at a power cut).
    Sled,
}

impl Engine {
    /// `redb` or `sled`.
    pub fn parse(s: &str) -> Option<Engine> {
        match s {
            "redb" => Some(Engine::Redb),
            "sled" => Some(Engine::Sled),
            _ => None,
        }
    }
    /// The name [`Engine::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sled => "sled",
        }
    }
    /// Where this engine keeps the store of the data directory `dir`.
    pub fn path(self, dir: &Path) -> PathBuf {
        match self {
            Engine::Redb => dir.join("store.redb"),
            Engine::Sled => dir.join("store"),
        }
    }
    /// The engine whose store the data directory `dir` holds, if any.
    pub fn of(dir: &Path) -> Option<Engine> {
        [Engine::Redb, Engine::Sled]
            .into_iter()
            .find(|e| e.path(dir).exists())
    }
}

/// Open (or create, with `engine`) the store of the data directory `dir`.
/// An existing store is opened with the engine that wrote it, whatever
/// `engine` says.
pub fn open(dir: &Path, engine: Engine) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Engine::of(dir).unwrap_or(engine) {
        Engine::Redb => Arc::new(RedbStore::open(&Engine::Redb.path(dir))?),
        Engine::Sled => Arc::new(SledStore::open(&Engine::Sled.path(dir))?),
    })
}

/// Open the existing store of the data directory `dir`.
pub fn open_existing(dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match Engine::of(dir) {
        Some(e) => open(dir, e),
        None => Err(StoreError::Engine(format!(
            "{} holds no store (neither store.redb nor store/): is it a caisse data directory?",
            dir.display()
        ))),
    }
}

/// Copy every key of the store in `dir` into a new store of engine `to`,
/// check the copy key by key, then move the old store aside (renamed with
/// `.old`). The node must be stopped. Returns the keys copied.
pub fn convert(dir: &Path, to: Engine) -> Result<u64, StoreError> {
    let from = Engine::of(dir).ok_or_else(|| {
        StoreError::Engine(format!("{} holds no store to convert", dir.display()))
    })?;
    if from == to {
        return Err(StoreError::Engine(format!(
            "the store in {} already uses {}: nothing to convert",
            dir.display(),
            to.name()
        )));
    }
    let old_path = from.path(dir);
    let aside = old_path.with_extension("old");
    if aside.exists() {
        return Err(StoreError::Engine(format!(
            "{} exists from an earlier conversion: move it away first (nothing was changed)",
            aside.display()
        )));
    }
    let target = to.path(dir);
    let new_tmp = dir.join(format!("{}.converting", to.name()));
    let _ = std::fs::remove_dir_all(&new_tmp);
    let _ = std::fs::remove_file(&new_tmp);
    let copied = {
        let src = open(dir, from)?;
        let dst: Arc<dyn Store> = match to {
            Engine::Redb => Arc::new(RedbStore::open(&new_tmp)?),
            Engine::Sled => Arc::new(SledStore::open(&new_tmp)?),
        };
        let mut batch = Vec::new();
        let mut copied = 0u64;
        let mut failed = None;
        src.for_each_prefix(b"", &mut |k, v| {
            batch.push(Op::Put(k.to_vec(), v.to_vec()));
            copied += 1;
            if batch.len() >= 10_000 {
                if let Err(e) = dst.apply(&batch) {
                    failed = Some(e);
                    return false;
                }
                batch.clear();
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        dst.apply(&batch)?;
        dst.sync()?;
        // Check: the same pairs, in the same order.
        let mut mismatch = None;
        let mut seen = 0u64;
        src.for_each_prefix(b"", &mut |k, v| {
            seen += 1;
            match dst.get(k) {
                Ok(Some(w)) if w == v => true,
                _ => {
                    mismatch = Some(String::from_utf8_lossy(k).into_owned());
                    false
                }
            }
        })?;
        if let Some(k) = mismatch {
            return Err(StoreError::Engine(format!(
                "the converted store differs at key {k}: nothing was changed"
            )));
        }
        let mut extra = 0u64;
        dst.for_each_prefix(b"", &mut |_, _| {
            extra += 1;
            true
        })?;
        if extra != seen {
            return Err(StoreError::Engine(format!(
                "the converted store has {extra} keys, the original {seen}: nothing was changed"
            )));
        }
        copied
    };
    std::fs::rename(&old_path, &aside).map_err(|source| StoreError::Io {
        path: old_path.clone(),
        source,
    })?;
    std::fs::rename(&new_tmp, &target).map_err(|source| StoreError::Io {
        path: target.clone(),
        source,
    })?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(copied)
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("caisse");

/// Where a redb store's bytes go (see [`RedbStore::layout`]).
#[derive(Debug)]
pub struct Layout {
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Per key prefix: keys, key bytes, value bytes.
    pub prefixes: BTreeMap<String, (u64, u64, u64)>,
    /// redb's page size.
    pub page_size: u64,
    /// Leaf pages of the B-trees.
    pub leaf_pages: u64,
    /// Branch pages of the B-trees.
    pub branch_pages: u64,
    /// Pages allocated in the file.
    pub allocated_pages: u64,
    /// Bytes of keys and values stored in leaves, as redb counts them.
    pub stored_bytes: u64,
    /// Bytes of allocated pages holding nothing.
    pub fragmented_bytes: u64,
}

/// The redb engine: one file, ACID, read snapshots.
///
/// Each [`Store::apply`] is one write transaction committed without a
/// flush (`Durability::None`); [`Store::sync`] commits an empty transaction
/// with `Durability::Immediate`, which makes it and every earlier commit
/// durable with the file's checksummed commit (redb syncs the file before
/// it answers). The writer's commit, [`Store::apply_durably`], is one
/// transaction committed with `Durability::Immediate`.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl RedbStore {
    /// Open (or create) the store file `path`.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        // redb's page cache: 64 MiB holds the B-trees' inner pages. A
        // node under steady traffic filled 256 MiB and stayed there (480 MiB
        // resident at 100,000 members against 116 MiB restarted; 64 MiB:
        // 190 MiB), for no measurable gain in throughput (BENCHMARKS.md,
        // "Memory of a long-running node").
        let db = redb::Database::builder()
            .set_cache_size(64 * 1024 * 1024)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Engine(format!(
                    "{} is in use by another process (is a caisse node already running on this data directory?)",
                    path.display()
                )),
                e => StoreError::Engine(format!("{}: {e}", path.display())),
            })?;
        // The table exists from the start, so reads never find it missing.
        let txn = db.begin_write().map_err(redb_err)?;
        txn.open_table(TABLE).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        Ok(RedbStore {
            db,
            path: path.to_owned(),
        })
    }

    /// Bytes of the store file.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Where the file's bytes go: keys and values per key prefix (what
    /// precedes the first `/`), and redb's own count of pages (for the
    /// benchmarks: what a purchase costs on disk, and why).
    pub fn layout(&self) -> Result<Layout, StoreError> {
        use redb::ReadableTable;
        let mut prefixes: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        let table = self.read()?;
        for r in table.iter().map_err(redb_err)? {
            let (k, v) = r.map_err(redb_err)?;
            let (k, v) = (k.value(), v.value());
            let end = k.iter().position(|b| *b == b'/').map_or(k.len(), |i| i + 1);
            let e = prefixes
                .entry(String::from_utf8_lossy(&k[..end]).into_owned())
                .or_default();
            e.0 += 1;
            e.1 += k.len() as u64;
            e.2 += v.len() as u64;
        }
        let txn = self.db.begin_write().map_err(redb_err)?;
        let stats = txn.stats().map_err(redb_err)?;
        txn.abort().map_err(redb_err)?;
        Ok(Layout {
            file_bytes: self.size_on_disk(),
            prefixes,
            page_size: stats.page_size() as u64,
            leaf_pages: stats.leaf_pages(),
            branch_pages: stats.branch_pages(),
            allocated_pages: stats.allocated_pages(),
            stored_bytes: stats.stored_bytes(),
            fragmented_bytes: stats.fragmented_bytes(),
        })
    }

    /// One write transaction holding every operation, committed with
    /// `durability`: all or nothing (an uncommitted transaction is aborted
    /// when dropped).
    fn write(&self, ops: &[Op], durability: redb::Durability) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(durability).map_err(redb_err)?;
        {
            let mut table = txn.open_table(TABLE).map_err(redb_err)?;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(redb_err)?;
                    }
                    Op::Delete(k) => {
                        table.remove(k.as_slice()).map_err(redb_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(redb_err)
    }

    /// The table in a read snapshot of the last commit.
    fn read(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(redb_err)?;
        txn.open_table(TABLE).map_err(redb_err)
    }

    fn visit(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let table = self.read()?;
        for r in table
            .range::<&[u8]>(start.max(prefix)..)
            .map_err(redb_err)?
        {
            let (k, v) = r.map_err(redb_err)?;
            if !k.value().starts_with(prefix) || !visit(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .read()?
            .get(key)
            .map_err(redb_err)?
            .map(|v| v.value().to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        let mut out = Vec::new();
        self.visit(prefix, prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    fn for_each_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.visit(prefix, prefix, visit)
    }

    fn for_each_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.visit(prefix, start, visit)
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        let table = self.read()?;
        // The keys under `prefix` end before the prefix's successor.
        let last = match prefix_end(prefix) {
            Some(end) => table.range::<&[u8]>(prefix..end.as_slice()),
            None => table.range::<&[u8]>(prefix..),
        }
        .map_err(redb_err)?
        .next_back()
        .transpose()
        .map_err(redb_err)?;
        Ok(last.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, redb::Durability::None)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(redb_err)?;
        txn.commit().map_err(redb_err)
    }

    fn apply_durably(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, redb::Durability::Immediate)
    }
}

/// The smallest key above every key that starts with `prefix` (none if
/// the prefix is all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The sled engine, with real durability.
///
/// sled 0.34's `flush()` ends in `sync_file_range`, which neither flushes
/// the device cache nor persists a grown file size (sled issue #1452), so
/// [`Store::sync`] also calls `sync_all` on sled's data file.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    data_path: PathBuf,
}

impl SledStore {
    /// Open (or create) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None);
        // sled releases its file lock lazily after the last handle drops
        // (deferred reclamation), so a reopen in the same process may need
        // a moment; another process holding it is reported plainly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() > deadline {
                        return Err(StoreError::Engine(format!(
                            "{} is in use by another process (is a caisse node already running on this data directory?)",
                            dir.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(StoreError::Engine(e.to_string())),
            }
        };
        let tree = db
            .open_tree("caisse")
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path).map_err(|source| StoreError::Io {
            path: data_path.clone(),
            source,
        })?;
        if let Ok(d) = File::open(dir) {
            // Persist the directory entries of freshly created files.
            let _ = d.sync_all();
        }
        Ok(SledStore {
            db,
            tree,
            data_file,
            data_path,
        })
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
            .collect()
    }

    fn for_each_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for r in self.tree.scan_prefix(prefix) {
            let (k, v) = r.map_err(engine)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn for_each_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let from = start.max(prefix).to_vec();
        for r in self.tree.range(from..) {
            let (k, v) = r.map_err(engine)?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        Ok(self
            .tree
            .scan_prefix(prefix)
            .next_back()
            .transpose()
            .map_err(engine)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
                Op::Delete(k) => batch.remove(k.as_slice()),
            }
        }
        self.tree.apply_batch(batch).map_err(engine)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        self.data_file.sync_all().map_err(|source| StoreError::Io {
            path: self.data_path.clone(),
            source,
        })
    }
}

/// A store that fails on purpose, as configured under `[testing.faults]`:
/// how tests show that a command failing part way changes nothing and that
/// a node whose disk fails stops.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: crate::config::StoreFaults,
    reads: AtomicU32,
    applies: AtomicU32,
}

impl FaultyStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Store>, faults: crate::config::StoreFaults) -> FaultyStore {
        FaultyStore {
            inner,
            faults,
            reads: AtomicU32::new(0),
            applies: AtomicU32::new(0),
        }
    }

    fn read(&self, key: &[u8]) -> Result<(), StoreError> {
        if let Some(p) = &self.faults.read_prefix
            && key.starts_with(p.as_bytes())
            && self.reads.fetch_add(1, Ordering::SeqCst) == self.faults.read_after
        {
            return Err(StoreError::Engine(format!(
                "injected read failure under {p}"
            )));
        }
        Ok(())
    }
}

impl Store for FaultyStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(key)?;
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        self.read(prefix)?;
        self.inner.scan_prefix(prefix)
    }
    fn for_each_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.read(prefix)?;
        self.inner.for_each_prefix(prefix, f)
    }
    fn for_each_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.read(prefix)?;
        self.inner.for_each_from(prefix, start, visit)
    }
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        self.read(prefix)?;
        self.inner.last_with_prefix(prefix)
    }
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        if let Some(n) = self.faults.apply_after
            && self.applies.fetch_add(1, Ordering::SeqCst) >= n
        {
            return Err(StoreError::Engine(
                "injected write failure: the disk refused the batch".into(),
            ));
        }
        self.inner.apply(ops)
    }
    fn sync(&self) -> Result<(), StoreError> {
        if self.faults.skip_sync {
            return Ok(());
        }
        self.inner.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_store_passes_the_suite_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            suite::run(&s);
            s.apply_durably(&[
                Op::Put(b"d/1".to_vec(), b"un".to_vec()),
                Op::Delete(b"x/2".to_vec()),
            ])
            .unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get(b"d/1").unwrap().as_deref(), Some(&b"un"[..]));
        assert_eq!(s.get(b"x/2").unwrap(), None);
    }

    #[test]
    fn a_store_converts_both_ways_and_keeps_every_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), Engine::Sled).unwrap();
            let ops: Vec<Op> = (0..25_000u32)
                .map(|i| Op::Put(format!("k/{i:06}").into_bytes(), vec![(i % 251) as u8; 40]))
                .collect();
            s.apply(&ops).unwrap();
            s.sync().unwrap();
        }
        assert_eq!(Engine::of(dir.path()), Some(Engine::Sled));
        assert_eq!(convert(dir.path(), Engine::Redb).unwrap(), 25_000);
        assert_eq!(Engine::of(dir.path()), Some(Engine::Redb));
        assert!(dir.path().join("store.old").exists());
        let s = open_existing(dir.path()).unwrap();
        assert_eq!(s.scan_prefix(b"k/").unwrap().len(), 25_000);
        assert_eq!(
            s.get(b"k/000300").unwrap(),
            Some(vec![(300 % 251) as u8; 40])
        );
        drop(s);
        // Converting again with the old store still aside is refused.
        std::fs::rename(dir.path().join("store.old"), dir.path().join("elsewhere")).unwrap();
        assert!(convert(dir.path(), Engine::Redb).is_err(), "already redb");
        assert_eq!(convert(dir.path(), Engine::Sled).unwrap(), 25_000);
        assert_eq!(Engine::of(dir.path()), Some(Engine::Sled));
    }

    #[test]
    fn sled_store_passes_the_suite_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            suite::run(&s);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(b"x/2").unwrap().as_deref(), Some(&b"deux"[..]));
    }
}
