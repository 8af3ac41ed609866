//! The storage engines behind the core's [`Store`] trait.
//!
//! The trait, the key layout and the value encoding live in
//! `caisse_core::store`; this module is the only place that names an
//! engine. Two are here:
//!
//! - [`RedbStore`], the default: one file, `store.redb`, in the data
//!   directory, and its write-ahead log `store.redb.wal` while it is open;
//!   ACID transactions with read snapshots and a stable file format. It
//!   passes the power-cut harness (`caisse-testnet powercut`).
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

mod packed;
mod wal;

use caisse_core::ledger::JournalEntry;
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
/// A store of an older layout is upgraded first ([`caisse_core::schema`]);
/// one of a newer layout is refused.
pub fn open(dir: &Path, engine: Engine) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match Engine::of(dir).unwrap_or(engine) {
        Engine::Redb => Arc::new(RedbStore::open(&Engine::Redb.path(dir))?),
        Engine::Sled => Arc::new(SledStore::open(&Engine::Sled.path(dir))?),
    };
    upgrade_layout(&*store)?;
    Ok(store)
}

/// Bring an opened store to this build's layout ([`caisse_core::schema`]),
/// saying so in the log when it moved anything. Every opener of a data
/// directory's store goes through it ([`open`], or the node's own open
/// under the `skip_sync` fault).
pub fn upgrade_layout(store: &dyn Store) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let up = caisse_core::schema::upgrade(store)?;
    if let Some(from) = up.from.filter(|v| *v < SCHEMA_VERSION) {
        tracing::info!(
            from,
            to = SCHEMA_VERSION,
            statement_lines = up.statement_lines,
            took_ms = started.elapsed().as_millis() as u64,
            "store layout upgraded"
        );
    }
    Ok(())
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
/// `.old`). The node must be stopped. Returns the keys copied. From redb
/// to redb it packs the journal of a store written by an earlier version.
pub fn convert(dir: &Path, to: Engine) -> Result<u64, StoreError> {
    let from = Engine::of(dir).ok_or_else(|| {
        StoreError::Engine(format!("{} holds no store to convert", dir.display()))
    })?;
    // redb to redb packs the journal of a store from an earlier version.
    if from == to && (to != Engine::Redb || RedbStore::open(&to.path(dir))?.packs_journal()) {
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
    /// Records of the packed journal (0 when it is not packed).
    pub journal_buckets: u64,
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

/// The redb engine: one file, ACID, read snapshots, and a write-ahead log
/// beside it (`store.redb.wal`, see [`wal`]).
///
/// Each [`Store::apply`] is one write transaction committed without a
/// flush (`Durability::None`: readers see it at once) and one record
/// appended to the log; [`Store::sync`] syncs the log (one `fdatasync`),
/// which makes every earlier batch durable. The writer's commit,
/// [`Store::apply_durably`], is both. A checkpoint (a durable redb commit,
/// then the log emptied) runs every [`wal::CHECKPOINT_BYTES`] of log or
/// [`wal::CHECKPOINT_EVERY`], and when the store is closed; at open, the
/// log's records since the last checkpoint are applied again.
///
/// A store it creates keeps the journal packed (see [`packed`]): several
/// entries to a record in their own table, the rest of the keys in one
/// table. A store written by an earlier version keeps every key in that
/// one table and is read and written as it is; `caisse store convert --to
/// redb` packs it.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
    packed: bool,
    /// The write-ahead log; its lock also keeps the order of commits and
    /// records the same (the writer and the federation task both write).
    wal: std::sync::Mutex<wal::Wal>,
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// A key under the journal's prefix that is not one entry's.
fn bad_journal_key(key: &[u8]) -> StoreError {
    StoreError::Engine(format!(
        "journal key {} is not j/ and an 8-byte sequence number (nothing was written)",
        keys::printable(key)
    ))
}

/// The store's layout marks: `journal` = 1 when the journal is packed;
/// [`WAL_NEXT`].
const LAYOUT_TABLE: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("layout");

/// The layout mark of the number of the write-ahead log's next record at
/// the last checkpoint.
const WAL_NEXT: &str = "wal";

/// One read snapshot: the main table and, when the journal is packed, its
/// table, both of the same commit.
struct Snapshot {
    main: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    journal: Option<redb::ReadOnlyTable<u64, &'static [u8]>>,
}

/// Visit the main table's keys under `prefix` from `lo` (below `hi` if
/// given); returns false when the visit stopped (asked to, or past the
/// prefix).
fn visit_main(
    main: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    lo: &[u8],
    hi: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<bool, StoreError> {
    let range = match hi {
        Some(hi) => main.range::<&[u8]>(lo..hi),
        None => main.range::<&[u8]>(lo..),
    }
    .map_err(redb_err)?;
    for r in range {
        let (k, v) = r.map_err(redb_err)?;
        if !k.value().starts_with(prefix) || !visit(k.value(), v.value()) {
            return Ok(false);
        }
    }
    Ok(true)
}

impl RedbStore {
    /// Open (or create) the store file `path`.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        use redb::{ReadableTable, ReadableTableMetadata};
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
        // The tables exist from the start, so reads never find them
        // missing. A store without a layout mark is new if it holds no key
        // (it packs its journal from the start), else from an earlier
        // version (it goes on as it is).
        let txn = db.begin_write().map_err(redb_err)?;
        let packed = {
            let main = txn.open_table(TABLE).map_err(redb_err)?;
            let mut layout = txn.open_table(LAYOUT_TABLE).map_err(redb_err)?;
            let mark = layout.get("journal").map_err(redb_err)?.map(|v| v.value());
            match mark {
                Some(v) => v == 1,
                None if main.is_empty().map_err(redb_err)? => {
                    layout.insert("journal", 1).map_err(redb_err)?;
                    true
                }
                None => false,
            }
        };
        if packed {
            txn.open_table(packed::JOURNAL_TABLE).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
        if !packed {
            tracing::warn!(
                store = %path.display(),
                "the store keeps its journal unpacked (written by an earlier version): \
                 with the node stopped, `caisse store convert --to redb` packs it (about a third smaller)"
            );
        }
        let next = {
            use redb::ReadableDatabase;
            let txn = db.begin_read().map_err(redb_err)?;
            let layout = txn.open_table(LAYOUT_TABLE).map_err(redb_err)?;
            layout
                .get(WAL_NEXT)
                .map_err(redb_err)?
                .map_or(0, |v| v.value())
        };
        let wal_path = wal::path_of(path);
        let (mut log, records) = wal::Wal::open(&wal_path)?;
        let replay = wal::to_replay(records, next, &wal_path)?;
        log.start_at(next + replay.len() as u64);
        let store = RedbStore {
            db,
            path: path.to_owned(),
            packed,
            wal: std::sync::Mutex::new(log),
        };
        if !replay.is_empty() {
            tracing::warn!(
                store = %path.display(),
                records = replay.len(),
                "the store was not closed cleanly: applying the write-ahead log's records since its last checkpoint"
            );
        }
        for (_, ops) in &replay {
            store.write(ops)?;
        }
        {
            let mut log = store.log();
            if log.holds_records() {
                store.checkpoint(&mut log)?;
            }
        }
        Ok(store)
    }

    /// The log, locked (a panic while it was held leaves it usable: its
    /// state is only changed after each step succeeds).
    fn log(&self) -> std::sync::MutexGuard<'_, wal::Wal> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make redb hold every record of the log, durably, and empty the log:
    /// the log synced first, then one durable commit recording the number
    /// of the next record (so a replay skips those it holds), then the log
    /// emptied.
    fn checkpoint(&self, log: &mut wal::Wal) -> Result<(), StoreError> {
        log.sync()?;
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(redb_err)?;
        txn.open_table(LAYOUT_TABLE)
            .map_err(redb_err)?
            .insert(WAL_NEXT, log.next())
            .map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        log.emptied()
    }

    /// Make no more timed checkpoints: only a close or
    /// [`RedbStore::checkpoint_now`] makes redb durable. For tests: the
    /// crash test, and the `skip_sync` fault (the power-cut harness's
    /// negative control), where a checkpoint would sync what the fault
    /// means to leave unsynced.
    pub fn hold_checkpoints(&self) {
        self.log().held = true;
    }

    /// Make a checkpoint now (the benchmarks and tests: what every commit
    /// cost before the log).
    pub fn checkpoint_now(&self) -> Result<(), StoreError> {
        let mut log = self.log();
        self.checkpoint(&mut log)
    }

    /// Log `ops`, commit them to redb without a flush while the log is
    /// synced (if `durable`: the device's flush and redb's commit overlap),
    /// and make a checkpoint if one is due. A batch refused before it is
    /// logged (a journal key the packed table cannot hold, a failed log)
    /// changes nothing. Once it is logged, a failure of the log's write or
    /// sync, or redb refusing the batch, fails the log: every later batch
    /// is refused, and the next open applies what the log holds (so a
    /// batch answered with an error may be there after a restart, as with
    /// a sync that fails after its write reached the disk: a retry with
    /// the same purchase id finds it done).
    fn commit(&self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        let mut log = self.log();
        log.check()?;
        self.check_keys(ops)?;
        log.append(ops)?;
        let syncing = match durable {
            true => log.start_sync()?,
            false => wal::Syncing::Done,
        };
        let written = self.write(ops);
        let synced = log.finish_sync(syncing);
        if let Err(e) = written {
            tracing::error!(target: "caisse::store", store = %self.path.display(), error = %e, "redb refused a logged batch: the store refuses further writes");
            log.failed.get_or_insert_with(|| e.to_string());
            return Err(e);
        }
        synced?;
        if log.checkpoint_due()
            && let Err(e) = self.checkpoint(&mut log)
        {
            // The batch is in the log: what failed is the commit of
            // earlier ones to the file. Nothing more is written (the log
            // refuses), and the node stops at its next commit.
            tracing::error!(target: "caisse::store", store = %self.path.display(), error = %e, "checkpoint failed: the store refuses further writes");
            log.failed.get_or_insert_with(|| e.to_string());
        }
        Ok(())
    }

    /// Refuse, before anything is logged, a batch with a journal key the
    /// packed journal cannot hold.
    fn check_keys(&self, ops: &[Op]) -> Result<(), StoreError> {
        if !self.packed {
            return Ok(());
        }
        match ops
            .iter()
            .map(Op::key)
            .find(|k| k.starts_with(keys::JOURNAL) && packed::seq_of(k).is_none())
        {
            Some(k) => Err(bad_journal_key(k)),
            None => Ok(()),
        }
    }

    /// Whether the journal is packed (a store this version created, or
    /// converted).
    pub fn packs_journal(&self) -> bool {
        self.packed
    }

    /// Bytes of the store file.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Where the file's bytes go: keys and values per key prefix (what
    /// precedes the first `/`), and redb's own count of pages (for the
    /// benchmarks: what a purchase costs on disk, and why).
    pub fn layout(&self) -> Result<Layout, StoreError> {
        let mut prefixes: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        self.visit(b"", b"", &mut |k, v| {
            let end = k.iter().position(|b| *b == b'/').map_or(k.len(), |i| i + 1);
            let e = prefixes
                .entry(String::from_utf8_lossy(&k[..end]).into_owned())
                .or_default();
            e.0 += 1;
            e.1 += k.len() as u64;
            e.2 += v.len() as u64;
            true
        })?;
        let journal_buckets = match self.snapshot()?.journal {
            Some(j) => packed::buckets(&j)?,
            None => 0,
        };
        let txn = self.db.begin_write().map_err(redb_err)?;
        let stats = txn.stats().map_err(redb_err)?;
        txn.abort().map_err(redb_err)?;
        Ok(Layout {
            file_bytes: self.size_on_disk(),
            prefixes,
            journal_buckets,
            page_size: stats.page_size() as u64,
            leaf_pages: stats.leaf_pages(),
            branch_pages: stats.branch_pages(),
            allocated_pages: stats.allocated_pages(),
            stored_bytes: stats.stored_bytes(),
            fragmented_bytes: stats.fragmented_bytes(),
        })
    }

    /// One write transaction holding every operation, committed without a
    /// flush: all or nothing (an uncommitted transaction is aborted when
    /// dropped).
    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::None)
            .map_err(redb_err)?;
        {
            let mut table = txn.open_table(TABLE).map_err(redb_err)?;
            // The journal's table is opened at the batch's first journal
            // key (most batches that are not purchases have none).
            let mut journal: Option<packed::Writer> = None;
            for op in ops {
                let key = op.key();
                if self.packed && key.starts_with(keys::JOURNAL) {
                    let journal = match &mut journal {
                        Some(j) => j,
                        None => journal.insert(packed::Writer::new(
                            txn.open_table(packed::JOURNAL_TABLE).map_err(redb_err)?,
                        )),
                    };
                    let seq = packed::seq_of(key).ok_or_else(|| bad_journal_key(key))?;
                    match op {
                        Op::Put(_, v) => journal.put(seq, v)?,
                        Op::Delete(_) => journal.delete(seq)?,
                    }
                    continue;
                }
                match op {
                    Op::Put(k, v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(redb_err)?;
                    }
                    Op::Delete(k) => {
                        table.remove(k.as_slice()).map_err(redb_err)?;
                    }
                }
            }
            if let Some(journal) = journal {
                journal.finish()?;
            }
        }
        txn.commit().map_err(redb_err)
    }

    /// The tables in a read snapshot of the last commit.
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(redb_err)?;
        Ok(Snapshot {
            main: txn.open_table(TABLE).map_err(redb_err)?,
            journal: match self.packed {
                true => Some(txn.open_table(packed::JOURNAL_TABLE).map_err(redb_err)?),
                false => None,
            },
        })
    }

    /// Visit the keys under `prefix` from `start` in key order, in one
    /// snapshot: the main table's keys below the journal's, the journal,
    /// the main table's keys above it.
    fn visit(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let snap = self.snapshot()?;
        let lo = start.max(prefix);
        let Some(journal) = &snap.journal else {
            visit_main(&snap.main, prefix, lo, None, visit)?;
            return Ok(());
        };
        if lo < keys::JOURNAL && !visit_main(&snap.main, prefix, lo, Some(keys::JOURNAL), visit)? {
            return Ok(());
        }
        if let Some(from) = packed::first_seq_at_or_after(lo) {
            let mut go_on = true;
            packed::visit_from(journal, from, &mut |seq, v| {
                let k = JournalEntry::key(seq);
                go_on = k.starts_with(prefix) && visit(&k, v);
                go_on
            })?;
            if !go_on {
                return Ok(());
            }
        }
        visit_main(&snap.main, prefix, lo.max(packed::JOURNAL_END), None, visit)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        use redb::ReadableDatabase;
        // Only the table the key lives in is opened (a get is on the
        // purchase path).
        let txn = self.db.begin_read().map_err(redb_err)?;
        if self.packed
            && let Some(seq) = packed::seq_of(key)
        {
            let journal = txn.open_table(packed::JOURNAL_TABLE).map_err(redb_err)?;
            return packed::get(&journal, seq);
        }
        Ok(txn
            .open_table(TABLE)
            .map_err(redb_err)?
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
        let snap = self.snapshot()?;
        // The keys under `prefix` end before the prefix's successor.
        let last = match prefix_end(prefix) {
            Some(end) => snap.main.range::<&[u8]>(prefix..end.as_slice()),
            None => snap.main.range::<&[u8]>(prefix..),
        }
        .map_err(redb_err)?
        .next_back()
        .transpose()
        .map_err(redb_err)?;
        let main_last = last.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()));
        let Some(journal) = &snap.journal else {
            return Ok(main_last);
        };
        // The journal's last entry under `prefix`: the very last when the
        // prefix covers the whole journal, else (a prefix within it, which
        // the node never asks for) by a walk over its range.
        let journal_last = if keys::JOURNAL.starts_with(prefix) {
            packed::last(journal)?.map(|(seq, v)| (JournalEntry::key(seq), v))
        } else if prefix.starts_with(keys::JOURNAL) {
            let mut found = None;
            self.visit(prefix, prefix, &mut |k, v| {
                found = Some((k.to_vec(), v.to_vec()));
                true
            })?;
            found
        } else {
            None
        };
        Ok(match (main_last, journal_last) {
            (Some(m), Some(j)) => Some(if m.0 > j.0 { m } else { j }),
            (m, j) => m.or(j),
        })
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.commit(ops, false)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.log().sync()
    }

    fn apply_durably(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.commit(ops, true)
    }
}

impl Drop for RedbStore {
    /// A clean close: a checkpoint, then the log removed (a store closed
    /// cleanly is the one file). Not after a failed log write: the next
    /// open starts from the last checkpoint and the log.
    fn drop(&mut self) {
        let mut log = self.log();
        if log.failed.is_some() {
            return;
        }
        let done = match log.holds_records() {
            true => self.checkpoint(&mut log),
            false => Ok(()),
        };
        match done {
            Ok(()) => {
                let _ = std::fs::remove_file(log.path());
            }
            Err(e) => {
                tracing::error!(target: "caisse::store", store = %self.path.display(), error = %e, "checkpoint at close failed: the next open applies the log again");
            }
        }
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

    /// The files of a store as a crash leaves them: copied while it is
    /// open, between two batches, with no checkpoint since `from`'s last.
    fn crash_copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for name in ["store.redb", "store.redb.wal"] {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }

    /// A store that was not closed: redb holds the last checkpoint, the
    /// log the durable batches since; the open applies them again, journal
    /// included, a torn last record is left out, and a log missing the
    /// record the checkpoint expects is refused.
    /// Both engines' stores of layout version 1 are upgraded when the node
    /// opens them; the line keeps its journal entry.
    #[test]
    fn an_old_layout_is_upgraded_at_open() {
        for engine in [Engine::Redb, Engine::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let old = keys::key(keys::STATEMENT_V1, &[&[7; 16], &9u64.to_be_bytes()]);
            {
                let s = open(dir.path(), engine).unwrap();
                s.apply(&[
                    Op::Put(keys::SCHEMA.to_vec(), encode_value(&1u32)),
                    Op::Put(old.clone(), Vec::new()),
                ])
                .unwrap();
                s.sync().unwrap();
            }
            let s = open(dir.path(), engine).unwrap();
            assert_eq!(s.get(&old).unwrap(), None, "{engine:?}");
            assert_eq!(
                s.get(&keys::statement(&[7; 16], 9)).unwrap(),
                Some(Vec::new()),
                "{engine:?}"
            );
            let v: u32 =
                decode_value(keys::SCHEMA, &s.get(keys::SCHEMA).unwrap().unwrap()).unwrap();
            assert_eq!(v, SCHEMA_VERSION);
        }
    }

    #[test]
    fn a_store_not_closed_is_rebuilt_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        let s = RedbStore::open(&live.join("store.redb")).unwrap();
        s.apply_durably(&[Op::Put(b"k/gone".to_vec(), b"x".to_vec())])
            .unwrap();
        s.checkpoint_now().unwrap();
        // No timed checkpoint may take the batches below out of the log.
        s.hold_checkpoints();
        for i in 0..200u64 {
            s.apply_durably(&[
                Op::Put(format!("k/{i:04}").into_bytes(), i.to_be_bytes().to_vec()),
                Op::Put(JournalEntry::key(i), vec![i as u8; 150]),
                Op::Delete(b"k/gone".to_vec()),
            ])
            .unwrap();
        }
        let replayed = dir.path().join("replayed");
        crash_copy(&live, &replayed);
        // The copy's file alone is the last checkpoint: the batches are
        // only in the log.
        let log = std::fs::read(replayed.join("store.redb.wal")).unwrap();
        assert_eq!(wal::decode_records(&log).len(), 200);
        let r = RedbStore::open(&replayed.join("store.redb")).unwrap();
        for i in 0..200u64 {
            assert_eq!(
                r.get(format!("k/{i:04}").as_bytes()).unwrap(),
                Some(i.to_be_bytes().to_vec())
            );
        }
        assert_eq!(r.get(b"k/gone").unwrap(), None);
        assert_eq!(r.scan_prefix(keys::JOURNAL).unwrap().len(), 200);
        drop(r);
        assert!(
            !replayed.join("store.redb.wal").exists(),
            "a clean close removes the log"
        );

        // A power cut in the middle of the last record's write.
        s.apply_durably(&[Op::Put(b"k/last".to_vec(), b"y".to_vec())])
            .unwrap();
        let torn = dir.path().join("torn");
        crash_copy(&live, &torn);
        let wal_file = torn.join("store.redb.wal");
        let len = std::fs::metadata(&wal_file).unwrap().len();
        File::options()
            .write(true)
            .open(&wal_file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let t = RedbStore::open(&torn.join("store.redb")).unwrap();
        assert_eq!(t.get(b"k/last").unwrap(), None);
        assert_eq!(
            t.get(b"k/0199").unwrap(),
            Some(199u64.to_be_bytes().to_vec())
        );
        drop(t);

        // A log whose first records are lost: refused, nothing changed.
        let gap = dir.path().join("gap");
        crash_copy(&live, &gap);
        let bytes = std::fs::read(gap.join("store.redb.wal")).unwrap();
        let first = 16 + u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        std::fs::write(gap.join("store.redb.wal"), &bytes[first..]).unwrap();
        let e = RedbStore::open(&gap.join("store.redb"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("records are missing"), "{e}");
        assert_eq!(
            std::fs::read(gap.join("store.redb.wal")).unwrap(),
            &bytes[first..],
            "the log is left as it was"
        );
    }

    /// Every way of reading the store, compared between two stores.
    fn assert_same(a: &dyn Store, b: &dyn Store, probes: &[Vec<u8>]) {
        let prefixes: [&[u8]; 8] = [b"", b"j", b"j/", b"a/", b"k/", b"j/\0\0", b"m", b"z"];
        for p in prefixes {
            assert_eq!(
                a.scan_prefix(p).unwrap(),
                b.scan_prefix(p).unwrap(),
                "scan {p:?}"
            );
            assert_eq!(
                a.last_with_prefix(p).unwrap(),
                b.last_with_prefix(p).unwrap(),
                "last {p:?}"
            );
            for start in probes {
                let mut got = Vec::new();
                let mut want = Vec::new();
                a.for_each_from(p, start, &mut |k, _| {
                    got.push(k.to_vec());
                    got.len() < 7
                })
                .unwrap();
                b.for_each_from(p, start, &mut |k, _| {
                    want.push(k.to_vec());
                    want.len() < 7
                })
                .unwrap();
                assert_eq!(got, want, "from {start:?} under {p:?}");
            }
        }
        for k in probes {
            assert_eq!(a.get(k).unwrap(), b.get(k).unwrap(), "get {k:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// The packed journal reads like one key per entry: the redb
        /// store and the in-memory one agree after any batches of puts and
        /// deletes, journal keys among others, and after a reopen.
        #[test]
        fn the_packed_journal_reads_like_one_key_per_entry(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (0u8..10, 0u64..400, 0usize..900, proptest::bool::ANY),
                    1..60,
                ),
                1..6,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.redb");
            let mem = MemStore::new();
            let key = |kind: u8, n: u64| -> Vec<u8> {
                match kind {
                    0..=5 => JournalEntry::key(n),
                    6 => JournalEntry::key(u64::MAX - n),
                    7 => format!("a/{n:04}").into_bytes(),
                    8 => format!("k/{n:04}").into_bytes(),
                    _ => format!("m/{n:04}").into_bytes(),
                }
            };
            let mut probes: Vec<Vec<u8>> = vec![b"".to_vec(), b"j/".to_vec(), b"j0".to_vec(), b"b".to_vec()];
            {
                let s = RedbStore::open(&path).unwrap();
                proptest::prop_assert!(s.packs_journal());
                for batch in &batches {
                    let ops: Vec<Op> = batch
                        .iter()
                        .map(|(kind, n, len, del)| {
                            let k = key(*kind, *n);
                            if *del {
                                Op::Delete(k)
                            } else {
                                Op::Put(k, vec![(*n % 251) as u8; *len])
                            }
                        })
                        .collect();
                    for (kind, n, _, _) in batch.iter().take(3) {
                        let mut k = key(*kind, *n);
                        probes.push(k.clone());
                        k.push(0);
                        probes.push(k);
                    }
                    s.apply(&ops).unwrap();
                    mem.apply(&ops).unwrap();
                    assert_same(&s, &mem, &probes);
                }
                s.sync().unwrap();
            }
            let s = RedbStore::open(&path).unwrap();
            assert_same(&s, &mem, &probes);
        }
    }

    #[test]
    fn a_journal_packs_a_page_to_a_bucket_and_a_bad_journal_key_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        // 10,000 entries of 150 bytes, appended in groups as the writer does.
        for group in 0..100u64 {
            let ops: Vec<Op> = (0..100)
                .map(|i| Op::Put(JournalEntry::key(group * 100 + i), vec![7u8; 150]))
                .collect();
            s.apply_durably(&ops).unwrap();
        }
        let l = s.layout().unwrap();
        assert_eq!(l.prefixes["j/"].0, 10_000);
        // 153 bytes an entry (value, distance, length): 26 to a bucket.
        assert_eq!(l.journal_buckets, 10_000_u64.div_ceil(26));
        assert_eq!(
            s.get(&JournalEntry::key(4_321)).unwrap(),
            Some(vec![7u8; 150])
        );
        assert_eq!(
            s.last_with_prefix(b"j/").unwrap().unwrap().0,
            JournalEntry::key(9_999)
        );
        let before = s.scan_prefix(b"").unwrap();
        let bad = s.apply(&[
            Op::Put(b"x/1".to_vec(), b"one".to_vec()),
            Op::Put(JournalEntry::key(10_000), vec![1]),
            Op::Put(b"j/short".to_vec(), vec![1]),
        ]);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("8-byte sequence number")
        );
        assert_eq!(s.scan_prefix(b"").unwrap(), before, "nothing was written");
        // Nor logged: a crash now replays nothing of it, and the store goes
        // on taking batches.
        s.hold_checkpoints();
        s.apply_durably(&[Op::Put(b"x/2".to_vec(), b"two".to_vec())])
            .unwrap();
        let copy = dir.path().join("copy");
        crash_copy(dir.path(), &copy);
        let c = RedbStore::open(&copy.join("store.redb")).unwrap();
        assert_eq!(c.get(b"x/1").unwrap(), None);
        assert_eq!(c.get(b"x/2").unwrap(), Some(b"two".to_vec()));
        assert_eq!(c.scan_prefix(b"j/").unwrap().len(), 10_000);
    }

    #[test]
    fn a_store_from_an_earlier_version_is_read_as_it_is_and_packed_by_convert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        // Written as earlier versions did: every key in the one table.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(TABLE).unwrap();
                for seq in 0..3_000u64 {
                    t.insert(JournalEntry::key(seq).as_slice(), [3u8; 120].as_slice())
                        .unwrap();
                }
                t.insert(b"meta/head".as_slice(), b"h".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let want = {
            let s = RedbStore::open(&path).unwrap();
            assert!(!s.packs_journal());
            s.apply(&[Op::Put(JournalEntry::key(3_000), vec![4u8; 120])])
                .unwrap();
            s.sync().unwrap();
            assert_eq!(
                s.get(&JournalEntry::key(3_000)).unwrap(),
                Some(vec![4u8; 120])
            );
            s.scan_prefix(b"").unwrap()
        };
        assert_eq!(want.len(), 3_002);
        assert_eq!(convert(dir.path(), Engine::Redb).unwrap(), 3_002);
        let s = RedbStore::open(&path).unwrap();
        assert!(s.packs_journal());
        assert_eq!(s.scan_prefix(b"").unwrap(), want);
        assert!(s.layout().unwrap().journal_buckets > 0);
        drop(s);
        std::fs::remove_file(dir.path().join("store.old")).unwrap();
        assert!(
            convert(dir.path(), Engine::Redb).is_err(),
            "a packed store has nothing to convert"
        );
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

    /// A store whose long reads let the tills go on: every `every` keys a
    /// scan visits, one durable batch rewrites the hot keys (as purchases
    /// rewrite balances while an audit or a report reads the journal).
    struct Tills {
        inner: Arc<RedbStore>,
        every: u64,
        seen: std::sync::atomic::AtomicU64,
    }

    impl Tills {
        fn commit(&self) {
            let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(self.every) {
                let ops: Vec<Op> = (0..16u8)
                    .map(|i| Op::Put(vec![b'b', b'/', i], n.to_be_bytes().repeat(40)))
                    .collect();
                self.inner.apply_durably(&ops).unwrap();
                // A checkpoint per batch: the durable commits a real
                // node makes (every 250 ms) during an audit of a minute.
                self.inner.checkpoint_now().unwrap();
            }
        }
    }

    impl Store for Tills {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
            self.inner.scan_prefix(prefix)
        }
        fn for_each_prefix(
            &self,
            prefix: &[u8],
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.for_each_prefix(prefix, &mut |k, v| {
                self.commit();
                visit(k, v)
            })
        }
        fn for_each_from(
            &self,
            prefix: &[u8],
            start: &[u8],
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.for_each_from(prefix, start, &mut |k, v| {
                self.commit();
                visit(k, v)
            })
        }
        fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
            self.inner.last_with_prefix(prefix)
        }
        fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
            self.inner.apply(ops)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.inner.sync()
        }
    }

    /// Found in the forty-minute drift run: the store file reached 10.9 GB
    /// for data that fit in 3.6 because the audit and the report read the
    /// whole journal in one read snapshot, and redb cannot reuse a
    /// page freed while a snapshot that may see it is open. Each long read
    /// here lets 1,000 durable batches commit; the file may grow by what
    /// a part of them pins, not by all of them.
    #[test]
    fn long_journal_reads_do_not_keep_the_pages_the_tills_free() {
        use caisse_core::ledger::{EntryKind, entry_hash};
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
        const ENTRIES: u64 = 100_000;
        let at = 1_797_292_800; // 2026-12-15
        let period = caisse_protocol::Day::from_unix(at).period();
        let mut prev = [0u8; 32];
        for group in 0..ENTRIES / 1_000 {
            let ops: Vec<Op> = (group * 1_000..(group + 1) * 1_000)
                .map(|seq| {
                    let e = JournalEntry {
                        seq,
                        prev,
                        at,
                        kind: EntryKind::Contribution {
                            member: caisse_protocol::MemberId::from_bytes([(seq % 251) as u8; 16]),
                            period,
                        },
                        postings: Vec::new(),
                    };
                    let bytes = encode_value(&e);
                    prev = entry_hash(&bytes);
                    Op::Put(JournalEntry::key(seq), bytes)
                })
                .collect();
            inner.apply_durably(&ops).unwrap();
        }
        caisse_core::caisse::write_initial_state(
            inner.as_ref(),
            &caisse_protocol::SecretKey::from_bytes([5; 32]),
            "Caisse de la Drôme",
            "Drôme",
            &caisse_core::policy::Policy::default(),
            caisse_protocol::Day::from_unix(at),
        )
        .unwrap();
        let tills = Tills {
            inner: inner.clone(),
            every: ENTRIES / 1_000,
            seen: Default::default(),
        };
        // What 1,000 batches of the tills cost with nothing reading.
        for _ in 0..ENTRIES {
            tills.commit();
        }
        let quiet = inner.size_on_disk();
        for _ in 0..ENTRIES {
            tills.commit();
        }
        let unread = inner.size_on_disk() - quiet;
        type Read = fn(&dyn Store, caisse_protocol::Period);
        let reads: [(&str, Read); 4] = [
            ("the audit", |s, _| {
                caisse_core::ledger::check_within(s, Some(ENTRIES)).unwrap();
            }),
            ("the report", |s, p| {
                caisse_core::report::report_of(s, p).unwrap();
            }),
            ("the accounting export", |s, p| {
                caisse_core::accounting::accounting_of(s, p).unwrap();
            }),
            ("the anonymised export", |s, p| {
                caisse_core::report::export_of(s, p, [9; 32]).unwrap();
            }),
        ];
        for (what, read) in reads {
            let before = inner.size_on_disk();
            let seen = tills.seen.load(Ordering::Relaxed);
            read(&tills, period);
            let read_keys = tills.seen.load(Ordering::Relaxed) - seen;
            assert!(read_keys >= ENTRIES, "{what} read {read_keys} keys");
            let grown = inner.size_on_disk() - before;
            eprintln!("{what}: the file grew {grown} B (unread: {unread} B)");
            assert!(
                grown <= unread + (4 << 20),
                "{what}: the file grew {grown} B while 1,000 batches committed (with nothing reading: {unread} B)"
            );
        }
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
