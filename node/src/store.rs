//! The sled engine behind the core's [`Store`] trait.
//!
//! The trait, the key layout and the value encoding live in
//! `caisse_core::store`; this module is the only place that names sled. If
//! sled ever loses acknowledged data, another engine replaces it here only.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub use caisse_core::store::*;

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
