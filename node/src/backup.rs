//! Online, consistent backups of a node's store, and their restore.
//!
//! **Consistent while purchases go on.** The writer thread copies the
//! store in steps between its commits (a few thousand keys a step, so a
//! till waits milliseconds, never the whole copy), in key order, behind a
//! cursor. Every commit made while a backup runs writes to the backup the
//! operations on keys the cursor has already passed; keys ahead of it are
//! copied later with their new values. Replayed in order, the file gives
//! the store exactly as it was at the commit that ended the backup: every
//! purchase acknowledged before that commit, and its balance, and its
//! journal entry. The file ends with the record count, the journal length
//! at that commit, and a SHA-256 of everything before it.
//!
//! The file holds the store: members (with names and incomes), the ledger,
//! tokens (their hashes), federation documents. Not the caisse's key
//! (`caisse.key`, kept apart and printed on paper) nor `config.toml`.
//!
//! Format: `caisse-backup/1\n`, then records `0x01 len(k) k len(v) v` (put)
//! or `0x02 len(k) k` (delete), lengths as u32 big-endian; then `0xFF`,
//! records (u64 BE), journal entries (u64 BE), and the SHA-256 of every
//! byte before the hash.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{Engine, Op, Store};

const MAGIC: &[u8] = b"caisse-backup/1\n";
const PUT: u8 = 1;
const DELETE: u8 = 2;
const END: u8 = 0xFF;
/// Keys copied per writer step.
pub const STEP_KEYS: usize = 2_000;
/// Bytes written between two flushes of the file to disk, which a thread
/// of the backup's own makes while the writer goes on (so that little is
/// left to flush at the end, and the writer never waits for the disk).
const FLUSH_EVERY: u64 = 64 << 20;

/// What the backup's flushing thread is asked.
enum Flush {
    /// Flush what was written so far.
    Now,
    /// Flush the whole file, then call this with the outcome.
    End(Box<dyn FnOnce(std::io::Result<()>) + Send>),
}

/// Start the thread that flushes `file` to disk when asked, so that the
/// writer thread never waits for the device.
fn flusher(file: &std::fs::File) -> std::io::Result<std::sync::mpsc::Sender<Flush>> {
    let file = file.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel::<Flush>();
    std::thread::Builder::new()
        .name("backup-flush".into())
        .spawn(move || {
            let mut failed: Option<std::io::Error> = None;
            // Ends when the backup is abandoned (the sender dropped).
            while let Ok(asked) = rx.recv() {
                match asked {
                    Flush::Now => {
                        if failed.is_none()
                            && let Err(e) = file.sync_data()
                        {
                            failed = Some(e);
                        }
                    }
                    Flush::End(then) => {
                        then(match failed.take() {
                            Some(e) => Err(e),
                            None => file.sync_all(),
                        });
                        return;
                    }
                }
            }
        })?;
    Ok(tx)
}

/// What a finished backup holds.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BackupDone {
    /// The file written.
    pub path: PathBuf,
    /// Records in it.
    pub records: u64,
    /// Journal entries in the store it gives back.
    pub entries: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A backup being written by the writer thread.
pub struct BackupWriter {
    path: PathBuf,
    file: BufWriter<std::fs::File>,
    hash: Sha256,
    bytes: u64,
    records: u64,
    /// Keys strictly below are in the file; `None`: none yet.
    cursor: Option<Vec<u8>>,
    /// Every key has been copied.
    pub copied_all: bool,
    /// The thread flushing the file (see [`FLUSH_EVERY`]).
    flush: std::sync::mpsc::Sender<Flush>,
    /// Bytes written when it was last asked to flush.
    flushed_at: u64,
}

impl BackupWriter {
    /// Start a backup file at `path` (which must not exist).
    pub fn create(path: &Path) -> std::io::Result<BackupWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let flush = flusher(&file)?;
        let mut w = BackupWriter {
            path: path.to_owned(),
            flush,
            flushed_at: 0,
            file: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
            records: 0,
            cursor: None,
            copied_all: false,
        };
        w.write(MAGIC)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.file.write_all(b)
    }

    fn record(&mut self, tag: u8, key: &[u8], value: Option<&[u8]>) -> std::io::Result<()> {
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        self.write(&[tag])?;
        self.write(&len(key.len()))?;
        self.write(key)?;
        if let Some(v) = value {
            self.write(&len(v.len()))?;
            self.write(v)?;
        }
        self.records += 1;
        Ok(())
    }

    /// Copy the next keys from `store` (committed state). Called by the
    /// writer between commits.
    pub fn step(&mut self, store: &dyn Store) -> std::io::Result<()> {
        let start = self.cursor.clone().unwrap_or_default();
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(STEP_KEYS);
        store
            .for_each_from(b"", &start, &mut |k, v| {
                chunk.push((k.to_vec(), v.to_vec()));
                chunk.len() < STEP_KEYS
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for (k, v) in &chunk {
            self.record(PUT, k, Some(v))?;
        }
        match chunk.last() {
            Some((k, _)) if chunk.len() == STEP_KEYS => {
                let mut next = k.clone();
                next.push(0);
                self.cursor = Some(next);
            }
            _ => self.copied_all = true,
        }
        self.flush_behind()
    }

    /// Ask the flushing thread to flush, every [`FLUSH_EVERY`] bytes.
    fn flush_behind(&mut self) -> std::io::Result<()> {
        if self.bytes.saturating_sub(self.flushed_at) >= FLUSH_EVERY {
            // What is in the buffer reaches the file first.
            self.file.flush()?;
            self.flushed_at = self.bytes;
            // (Gone only if the thread died: the end says so.)
            let _ = self.flush.send(Flush::Now);
        }
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Log the operations of a commit on keys already copied.
    pub fn log(&mut self, ops: &[Op]) -> std::io::Result<()> {
        for op in ops {
            let key = op.key();
            let copied =
                self.copied_all || self.cursor.as_ref().is_some_and(|c| key < c.as_slice());
            if !copied {
                continue;
            }
            match op {
                Op::Put(k, v) => self.record(PUT, k, Some(v))?,
                Op::Delete(k) => self.record(DELETE, k, None)?,
            }
        }
        self.flush_behind()
    }

    /// Write the end; then the flushing thread makes the file durable and
    /// calls `then` with what it holds, so the writer never waits for the
    /// disk (a backup's last flush took 0.7 s on the writer before). On any
    /// failure `then` gets why, and the file is removed. `entries` is the
    /// journal's length at the last commit logged.
    pub fn finish(
        mut self,
        entries: u64,
        then: impl FnOnce(std::io::Result<BackupDone>) + Send + 'static,
    ) {
        let records = self.records;
        let written = (|| {
            self.write(&[END])?;
            self.write(&records.to_be_bytes())?;
            self.write(&entries.to_be_bytes())?;
            let digest: [u8; 32] = self.hash.clone().finalize().into();
            self.file.write_all(&digest)?;
            self.bytes += 32;
            self.file.flush()
        })();
        if let Err(e) = written {
            self.abandon();
            return then(Err(e));
        }
        let done = BackupDone {
            path: self.path.clone(),
            records,
            entries,
            bytes: self.bytes,
        };
        let path = self.path.clone();
        let end = Flush::End(Box::new(move |synced: std::io::Result<()>| {
            if synced.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            then(synced.map(|()| done));
        }));
        if let Err(std::sync::mpsc::SendError(Flush::End(then))) = self.flush.send(end) {
            // The flushing thread is gone: flush here rather than not at all.
            then(self.file.get_ref().sync_all());
        }
    }

    /// Give up: remove the partial file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    /// Records applied.
    pub records: u64,
    /// Journal entries in the restored store.
    pub entries: u64,
}

fn bad(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// A backup file read from its start, each byte hashed as it is read.
struct Reading {
    file: std::io::BufReader<std::fs::File>,
    hash: Sha256,
    /// Bytes not read yet.
    left: u64,
}

impl Reading {
    fn open(path: &Path) -> std::io::Result<Reading> {
        let file = std::fs::File::open(path)?;
        let left = file.metadata()?.len();
        Ok(Reading {
            file: std::io::BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            left,
        })
    }

    /// Fill `out` with the next bytes (refused past the file's end).
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        if out.len() as u64 > self.left {
            return Err(bad("the backup file is cut short"));
        }
        self.file.read_exact(out)?;
        self.left -= out.len() as u64;
        self.hash.update(&*out);
        Ok(())
    }

    /// The next `n` bytes (checked against the file's end before anything
    /// is allocated: a damaged length allocates nothing).
    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        if n as u64 > self.left {
            return Err(bad("the backup file is cut short"));
        }
        let mut out = vec![0; n];
        self.fill(&mut out)?;
        Ok(out)
    }

    fn u8(&mut self) -> std::io::Result<u8> {
        let mut b = [0; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> std::io::Result<usize> {
        let mut b = [0; 4];
        self.fill(&mut b)?;
        Ok(u32::from_be_bytes(b) as usize)
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0; 8];
        self.fill(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}

/// Read the backup `file` record by record, handing each to `each`, in
/// bounded memory (a year of a large caisse is tens of gigabytes); the
/// journal's length it gives back once its end, counts and checksum are
/// found right. A caller that must not act on a damaged file reads it
/// once with an `each` that does nothing.
fn read_backup(
    file: &Path,
    each: &mut dyn FnMut(Op) -> std::io::Result<()>,
) -> std::io::Result<(u64, u64)> {
    let mut r = Reading::open(file)?;
    if r.left < (MAGIC.len() + 1 + 16 + 32) as u64 || r.take(MAGIC.len())? != MAGIC {
        return Err(bad("not a caisse backup file"));
    }
    let mut records = 0u64;
    loop {
        match r.u8()? {
            PUT => {
                let kl = r.u32()?;
                let k = r.take(kl)?;
                let vl = r.u32()?;
                each(Op::Put(k, r.take(vl)?))?;
            }
            DELETE => {
                let kl = r.u32()?;
                each(Op::Delete(r.take(kl)?))?;
            }
            END => break,
            _ => return Err(bad("the backup file holds an unknown record")),
        }
        records += 1;
    }
    let (counted, entries) = (r.u64()?, r.u64()?);
    let want: [u8; 32] = r.hash.clone().finalize().into();
    let mut digest = [0u8; 32];
    if r.left != 32 || r.file.read_exact(&mut digest).is_err() || digest != want {
        return Err(bad(
            "the backup file is damaged (its checksum does not match): use another copy",
        ));
    }
    if counted != records {
        return Err(bad("the backup file's record count does not match"));
    }
    Ok((records, entries))
}

/// Restore the backup `file` into a new store (redb) in the data directory
/// `dir`, which must hold none. The file is read twice, in bounded memory:
/// once checked whole before anything is written, then applied in
/// batches; if the second reading fails, the new store is removed.
pub fn restore(file: &Path, dir: &Path) -> Result<Restored, String> {
    if let Some(engine) = Engine::of(dir) {
        return Err(format!(
            "{} already holds a store: restore into an empty directory (nothing was changed)",
            engine.path(dir).display()
        ));
    }
    let unusable = |e: std::io::Error| format!("cannot use {}: {e}", file.display());
    read_backup(file, &mut |_| Ok(())).map_err(unusable)?;
    crate::daemon::private_umask();
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let applied = (|| {
        let store = crate::store::open(dir, Engine::Redb).map_err(|e| e.to_string())?;
        let mut batch = Vec::with_capacity(RESTORE_BATCH);
        let (records, entries) = read_backup(file, &mut |op| {
            batch.push(op);
            if batch.len() == RESTORE_BATCH {
                store.apply(&batch).map_err(std::io::Error::other)?;
                batch.clear();
            }
            Ok(())
        })
        .map_err(unusable)?;
        store.apply(&batch).map_err(|e| e.to_string())?;
        store.sync().map_err(|e| e.to_string())?;
        Ok(Restored { records, entries })
    })();
    if applied.is_err() {
        for leftover in [Engine::Redb.path(dir), dir.join("store.redb.wal")] {
            let _ = std::fs::remove_file(leftover);
        }
    }
    applied
}

/// Records applied to the new store at a time by [`restore`].
const RESTORE_BATCH: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use std::time::Duration;

    /// Writes that land while the copy runs, behind and ahead of the
    /// cursor, all end up in the restored state exactly.
    #[test]
    fn a_backup_taken_during_writes_restores_the_final_state() {
        let store = MemStore::new();
        let key = |i: u32| format!("k/{i:06}").into_bytes();
        let ops: Vec<Op> = (0..5_000).map(|i| Op::Put(key(i), vec![1])).collect();
        store.apply(&ops).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut b = BackupWriter::create(&path).unwrap();
        let mut round = 0u32;
        while !b.copied_all {
            b.step(&store).unwrap();
            // A commit between steps: one key far behind, one far ahead,
            // one deleted, one new.
            round += 1;
            let commit = vec![
                Op::Put(key(round), vec![2, round as u8]),
                Op::Put(key(4_999 - round), vec![3, round as u8]),
                Op::Delete(key(2_500 + round)),
                Op::Put(format!("n/{round}").into_bytes(), vec![4]),
            ];
            store.apply(&commit).unwrap();
            b.log(&commit).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        b.finish(7, move |done| {
            let flushed_by = std::thread::current().name().map(str::to_owned);
            tx.send((done.map(|d| (d.records, d.entries)), flushed_by))
                .unwrap();
        });
        // Answered by the backup's own thread once flushed, not the caller.
        let (done, flushed_by) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let (records, entries) = done.unwrap();
        assert_eq!(flushed_by.as_deref(), Some("backup-flush"));
        assert_eq!(entries, 7);
        let restored = MemStore::new();
        let read = read_backup(&path, &mut |op| {
            restored.apply(&[op]).map_err(std::io::Error::other)
        })
        .unwrap();
        assert_eq!(read, (records, 7));
        assert_eq!(
            restored.scan_prefix(b"").unwrap(),
            store.scan_prefix(b"").unwrap(),
            "the restored store differs from the store at the backup's end"
        );
        // A damaged file is refused: a flipped bit, a cut, bytes added.
        let bytes = std::fs::read(&path).unwrap();
        let refused = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            read_backup(&path, &mut |_| Ok(())).unwrap_err().to_string()
        };
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(refused(&flipped).contains("damaged"));
        for cut in [bytes.len() - 1, bytes.len() - 33, bytes.len() / 2, 20] {
            let why = refused(&bytes[..cut]);
            assert!(
                why.contains("cut short")
                    || why.contains("damaged")
                    || why.contains("not a caisse backup"),
                "{cut}: {why}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(refused(&longer).contains("damaged"));
        // A length past the file's end allocates nothing and is refused.
        let mut huge = bytes.clone();
        huge[MAGIC.len() + 1..MAGIC.len() + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(refused(&huge).contains("cut short"));
    }

    /// A restore applies a backup larger than its batches into a new
    /// store that holds exactly what was backed up, refuses a directory
    /// that holds one, and leaves no store behind when the file is bad.
    #[test]
    fn a_restore_reads_in_batches_and_leaves_nothing_when_refused() {
        let store = MemStore::new();
        let ops: Vec<Op> = (0..(2 * RESTORE_BATCH + 17))
            .map(|i| Op::Put(format!("k/{i:08}").into_bytes(), vec![i as u8; 3]))
            .collect();
        store.apply(&ops).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("b");
        let mut b = BackupWriter::create(&path).unwrap();
        while !b.copied_all {
            b.step(&store).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        b.finish(3, move |done| tx.send(done.is_ok()).unwrap());
        assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap());
        let dir = tmp.path().join("restored");
        let r = restore(&path, &dir).unwrap();
        assert_eq!((r.records, r.entries), (ops.len() as u64, 3));
        let opened = crate::store::open_existing(&dir).unwrap();
        assert_eq!(
            opened.scan_prefix(b"k/").unwrap(),
            store.scan_prefix(b"k/").unwrap()
        );
        drop(opened);
        assert!(
            restore(&path, &dir)
                .unwrap_err()
                .contains("already holds a store")
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let empty = tmp.path().join("never");
        assert!(restore(&path, &empty).unwrap_err().contains("damaged"));
        assert!(Engine::of(&empty).is_none(), "a refused file left a store");
    }
}
