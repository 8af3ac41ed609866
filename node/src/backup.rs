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
        let mut w = BackupWriter {
            path: path.to_owned(),
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
        Ok(())
    }

    /// Write the end and make the file durable; `entries` is the journal's
    /// length at the last commit logged.
    pub fn finish(mut self, entries: u64) -> std::io::Result<BackupDone> {
        let records = self.records;
        self.write(&[END])?;
        self.write(&records.to_be_bytes())?;
        self.write(&entries.to_be_bytes())?;
        let digest: [u8; 32] = self.hash.clone().finalize().into();
        self.file.write_all(&digest)?;
        self.bytes += 32;
        let file = self
            .file
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        file.sync_all()?;
        Ok(BackupDone {
            path: self.path,
            records,
            entries,
            bytes: self.bytes,
        })
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

/// The records of a backup file, checked whole (hash and counts) before
/// anything is returned.
fn read_backup(file: &Path) -> std::io::Result<(Vec<Op>, u64)> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)?.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() + 1 + 16 + 32 || !bytes.starts_with(MAGIC) {
        return Err(bad("not a caisse backup file"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    let want: [u8; 32] = Sha256::digest(body).into();
    if want.as_slice() != digest {
        return Err(bad(
            "the backup file is damaged (its checksum does not match): use another copy",
        ));
    }
    let mut at = MAGIC.len();
    let take = |at: &mut usize, n: usize| -> std::io::Result<&[u8]> {
        let s = body
            .get(*at..*at + n)
            .ok_or_else(|| bad("the backup file is cut short"))?;
        *at += n;
        Ok(s)
    };
    let u32_at = |at: &mut usize| -> std::io::Result<usize> {
        let b = take(at, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut ops = Vec::new();
    loop {
        let tag = take(&mut at, 1)?[0];
        match tag {
            PUT => {
                let kl = u32_at(&mut at)?;
                let k = take(&mut at, kl)?.to_vec();
                let vl = u32_at(&mut at)?;
                let v = take(&mut at, vl)?.to_vec();
                ops.push(Op::Put(k, v));
            }
            DELETE => {
                let kl = u32_at(&mut at)?;
                ops.push(Op::Delete(take(&mut at, kl)?.to_vec()));
            }
            END => {
                let records = u64::from_be_bytes(take(&mut at, 8)?.try_into().unwrap_or([0; 8]));
                let entries = u64::from_be_bytes(take(&mut at, 8)?.try_into().unwrap_or([0; 8]));
                if records != ops.len() as u64 || at != body.len() {
                    return Err(bad("the backup file's record count does not match"));
                }
                return Ok((ops, entries));
            }
            _ => return Err(bad("the backup file holds an unknown record")),
        }
    }
}

/// Restore the backup `file` into a new store (redb) in the data directory
/// `dir`, which must hold none.
pub fn restore(file: &Path, dir: &Path) -> Result<Restored, String> {
    if let Some(engine) = Engine::of(dir) {
        return Err(format!(
            "{} already holds a store: restore into an empty directory (nothing was changed)",
            engine.path(dir).display()
        ));
    }
    let (ops, entries) =
        read_backup(file).map_err(|e| format!("cannot use {}: {e}", file.display()))?;
    crate::daemon::private_umask();
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let store = crate::store::open(dir, Engine::Redb).map_err(|e| e.to_string())?;
    for batch in ops.chunks(10_000) {
        store.apply(batch).map_err(|e| e.to_string())?;
    }
    store.sync().map_err(|e| e.to_string())?;
    Ok(Restored {
        records: ops.len() as u64,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

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
        b.finish(7).unwrap();
        let (ops, entries) = read_backup(&path).unwrap();
        assert_eq!(entries, 7);
        let restored = MemStore::new();
        restored.apply(&ops).unwrap();
        assert_eq!(
            restored.scan_prefix(b"").unwrap(),
            store.scan_prefix(b"").unwrap(),
            "the restored store differs from the store at the backup's end"
        );
        // A damaged file is refused.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(
            read_backup(&path)
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
    }
}
