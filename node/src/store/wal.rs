//! The redb engine's write-ahead log: what makes a commit durable.
//!
//! redb makes a commit durable by writing every page the commit copied
//! (its B-trees are copy-on-write, 4 KiB pages) and syncing the file: 9 to
//! 97 KB written for a purchase of about 250 bytes (BENCHMARKS.md, "What a
//! purchase writes"). Here a batch is committed to redb without a flush
//! (`Durability::None`: visible to readers, its pages kept in memory or
//! written without a sync) and its operations are appended to this log,
//! one checksummed record per batch; [`Wal::sync`] is one `fdatasync` of
//! the log. A durable commit appends the record first, then hands the
//! `fdatasync` to the log's own thread while it commits the batch to redb
//! ([`Wal::start_sync`]): the device's flush and redb's commit overlap.
//! Every so often ([`CHECKPOINT_BYTES`], [`CHECKPOINT_EVERY`]) a
//! *checkpoint* commits redb durably, with the number of the next record
//! in the same commit, and empties the log: the pages a thousand purchases
//! share are written once.
//!
//! At open, the records the last checkpoint does not hold are applied
//! again, in order (a put sets a key, a delete removes it: applying a
//! record twice leaves what applying it once does), and a checkpoint is
//! made. The log is read defensively: each record carries its length, a
//! CRC-32 of its number and operations, and its number; the replay stops
//! at the first record that is torn, fails its checksum or does not follow
//! the one before (what a power cut leaves at the end of a log, or the
//! old records after an emptying that did not reach the disk). A log whose
//! first record after the checkpoint is missing is refused with a clear
//! message rather than opened without it.
//!
//! A store closed cleanly has no log (the close makes a checkpoint and
//! removes it), which is also what a version before the log needs to open
//! it: stop the node cleanly before going back to one.
//!
//! Why not a crate: redb has no log of its own, and the log is the few
//! lines of framing below over a file the store owns.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Op, StoreError};

/// Bytes of log after which the next batch makes a checkpoint.
pub(super) const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

/// Time after which the next batch makes a checkpoint.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A record's header: payload length (u32), CRC-32 (u32), number (u64).
const HEADER: usize = 16;

/// The largest record read back (a batch is far smaller; a larger length
/// is a torn or foreign record).
const MAX_RECORD: usize = 1 << 30;

/// The log file beside the store file `store`: `store.redb.wal`.
pub(super) fn path_of(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

/// The operations of a batch as a record's payload.
fn encode_ops(ops: &[Op], out: &mut Vec<u8>) {
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            Op::Put(k, v) => {
                out.push(0);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            Op::Delete(k) => {
                out.push(1);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
            }
        }
    }
}

/// The operations of a payload, or `None` if it does not decode exactly.
fn decode_ops(bytes: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
        let s = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    }
    fn len(bytes: &[u8], at: &mut usize) -> Option<usize> {
        Some(u32::from_le_bytes(take(bytes, at, 4)?.try_into().ok()?) as usize)
    }
    let mut at = 0;
    let count = len(bytes, &mut at)?;
    // Each operation takes at least five bytes: no allocation beyond what
    // the payload can hold.
    let mut ops = Vec::with_capacity(count.min(bytes.len() / 5));
    for _ in 0..count {
        let tag = take(bytes, &mut at, 1)?[0];
        let klen = len(bytes, &mut at)?;
        let key = take(bytes, &mut at, klen)?.to_vec();
        ops.push(match tag {
            0 => {
                let vlen = len(bytes, &mut at)?;
                Op::Put(key, take(bytes, &mut at, vlen)?.to_vec())
            }
            1 => Op::Delete(key),
            _ => return None,
        });
    }
    (at == bytes.len()).then_some(ops)
}

/// A whole record: header and payload.
fn encode_record(seq: u64, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![0; HEADER];
    encode_ops(ops, &mut out);
    let payload = out.len() - HEADER;
    out[0..4].copy_from_slice(&(payload as u32).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The records of `bytes` from its start, up to the first that is torn or
/// fails its checksum: (number, operations).
pub(super) fn decode_records(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let payload = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if payload > MAX_RECORD {
            break;
        }
        let Some(body) = bytes.get(at + 8..at + HEADER + payload) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(ops) = decode_ops(&body[8..]) else {
            break;
        };
        out.push((seq, ops));
        at += HEADER + payload;
    }
    out
}

/// The records a store must apply again at open: those from `next` (the
/// number the last checkpoint recorded) on, in order, stopping where the
/// numbers stop following each other. Records before `next` are already
/// in the store. An error when the log goes on past `next` without it.
pub(super) fn to_replay(
    records: Vec<Record>,
    next: u64,
    path: &Path,
) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    let mut expected = next;
    for (seq, ops) in records {
        if seq < next && out.is_empty() {
            continue;
        }
        if seq != expected {
            if out.is_empty() {
                return Err(StoreError::Engine(format!(
                    "{}: the write-ahead log's records start at {seq} but the store's last checkpoint \
                     expects {next}: records are missing, so the node will not start on it. \
                     Restore the data directory from a backup (`caisse --data-dir DIR restore FILE`), \
                     or move the log aside to open the store at its last checkpoint, \
                     losing what the log held",
                    path.display()
                )));
            }
            break;
        }
        out.push((seq, ops));
        expected += 1;
    }
    Ok(out)
}

/// A record read back: its number and its batch's operations.
pub(super) type Record = (u64, Vec<Op>);

/// The open log.
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// The number of the next record.
    next: u64,
    /// Bytes appended since the last checkpoint.
    bytes: u64,
    /// Bytes appended and not yet synced.
    unsynced: u64,
    last_checkpoint: Instant,
    /// Set when a write or sync of the log failed, or redb refused a
    /// batch already logged: the log and redb may disagree about that
    /// batch, so nothing may be written or checkpointed after it (the next
    /// open settles it from the log).
    pub(super) failed: Option<String>,
    /// No timed checkpoint (see [`super::RedbStore::hold_checkpoints`]).
    pub(super) held: bool,
    /// The thread that syncs the log while the batch is committed to redb
    /// (started at the first [`Wal::start_sync`]).
    syncer: Option<Syncer>,
}

/// A thread with its own handle on the log file: asked to `fdatasync` it,
/// it answers with the outcome. One sync at a time (the log's lock).
struct Syncer {
    /// `None` only while the syncer is dropped.
    ask: Option<std::sync::mpsc::SyncSender<()>>,
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(file: &File) -> std::io::Result<Syncer> {
        let file = file.try_clone()?;
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let (answer, done) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("store-log-sync".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    if answer.send(file.sync_data()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer {
            ask: Some(ask),
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        drop(self.ask.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`Wal::start_sync`] started.
#[must_use = "a sync started must be finished (Wal::finish_sync)"]
pub(super) enum Syncing {
    /// Nothing to wait for: nothing was unsynced, or the sync was done at
    /// once (no sync thread could be started).
    Done,
    /// The sync thread is syncing every record appended (none can be
    /// appended meanwhile: the caller holds the log).
    Running,
}

/// Why a sync handed to the sync thread has no outcome.
fn sync_thread_stopped() -> std::io::Error {
    std::io::Error::other("the log's sync thread has stopped")
}

impl Wal {
    /// Open the log at `path` (created if missing) and read its records.
    pub(super) fn open(path: &Path) -> Result<(Wal, Vec<Record>), StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let wal = Wal {
            file,
            path: path.to_owned(),
            next: 0,
            // What the file holds (records to apply again, or stale or
            // torn ones) is emptied by the open's checkpoint.
            bytes: bytes.len() as u64,
            unsynced: 0,
            last_checkpoint: Instant::now(),
            failed: None,
            held: false,
            syncer: None,
        };
        Ok((wal, decode_records(&bytes)))
    }

    /// Refuse if the log has failed (called before committing a batch and
    /// before each write or sync of the log).
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(e) => Err(StoreError::Engine(format!(
                "{}: an earlier write of the write-ahead log or of the store failed ({e}); nothing more is written: \
                 restart the node (it reopens the store at its last durable state)",
                self.path.display()
            ))),
            None => Ok(()),
        }
    }

    /// Append the record of a batch just committed to redb (not synced).
    pub(super) fn append(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.check()?;
        let record = encode_record(self.next, ops);
        if let Err(e) = self.file.write_all(&record) {
            self.failed = Some(e.to_string());
            return self.check();
        }
        self.next += 1;
        self.bytes += record.len() as u64;
        self.unsynced += record.len() as u64;
        Ok(())
    }

    /// Make every appended record durable: one `fdatasync`.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        self.check()?;
        if self.unsynced == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            self.failed = Some(e.to_string());
            return self.check();
        }
        self.unsynced = 0;
        Ok(())
    }

    /// Start making every appended record durable on the sync thread, so
    /// the caller can commit the batch to redb during the device's flush
    /// (one purchase in flight waits for the longer of the two, not their
    /// sum); [`Wal::finish_sync`] waits for it.
    pub(super) fn start_sync(&mut self) -> Result<Syncing, StoreError> {
        self.check()?;
        if self.unsynced == 0 {
            return Ok(Syncing::Done);
        }
        if self.syncer.is_none() {
            match Syncer::start(&self.file) {
                Ok(s) => self.syncer = Some(s),
                Err(e) => {
                    tracing::warn!(target: "caisse::store", log = %self.path.display(), error = %e, "no thread to sync the log: syncing in line");
                    self.sync()?;
                    return Ok(Syncing::Done);
                }
            }
        }
        let asked = self
            .syncer
            .as_ref()
            .and_then(|s| s.ask.as_ref())
            .is_some_and(|ask| ask.send(()).is_ok());
        if !asked {
            self.syncer = None;
            self.failed = Some(sync_thread_stopped().to_string());
            return self.check().map(|()| Syncing::Done);
        }
        Ok(Syncing::Running)
    }

    /// Wait for the sync [`Wal::start_sync`] started; its failure fails
    /// the log as a failed [`Wal::sync`] does.
    pub(super) fn finish_sync(&mut self, syncing: Syncing) -> Result<(), StoreError> {
        if let Syncing::Done = syncing {
            return self.check();
        }
        let outcome = match &self.syncer {
            Some(s) => s.done.recv().unwrap_or_else(|_| Err(sync_thread_stopped())),
            None => Err(sync_thread_stopped()),
        };
        if let Err(e) = outcome {
            self.failed.get_or_insert_with(|| e.to_string());
            return self.check();
        }
        self.unsynced = 0;
        self.check()
    }

    /// Whether the next batch should make a checkpoint.
    pub(super) fn checkpoint_due(&self) -> bool {
        if self.held {
            return false;
        }
        self.bytes >= CHECKPOINT_BYTES
            || (self.bytes > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
    }

    /// Whether the log holds bytes since the last checkpoint (records, or
    /// what an earlier run left in the file).
    pub(super) fn holds_records(&self) -> bool {
        self.bytes > 0
    }

    /// The number of the next record (what a checkpoint records).
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Start numbering at `next` (at open, after the replay).
    pub(super) fn start_at(&mut self, next: u64) {
        self.next = next;
    }

    /// After a durable commit that holds every record: empty the log.
    pub(super) fn emptied(&mut self) -> Result<(), StoreError> {
        let r = self.file.set_len(0).and_then(|()| self.file.sync_all());
        if let Err(e) = r {
            self.failed = Some(e.to_string());
            return self.check();
        }
        self.bytes = 0;
        self.unsynced = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The log's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(k, v)| Op::Put(k, v)),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Delete),
        ]
    }

    proptest! {
        /// Records read back as written; a log cut anywhere reads back as
        /// the records wholly before the cut; a flipped byte ends the read
        /// at the record it is in.
        #[test]
        fn records_round_trip_and_a_torn_or_damaged_log_reads_a_prefix(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 0..6), 1..8),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut log = Vec::new();
            let mut ends = Vec::new();
            for (i, ops) in batches.iter().enumerate() {
                log.extend(encode_record(10 + i as u64, ops));
                ends.push(log.len());
            }
            let all = decode_records(&log);
            prop_assert_eq!(all.len(), batches.len());
            for (i, (seq, ops)) in all.iter().enumerate() {
                prop_assert_eq!(*seq, 10 + i as u64);
                prop_assert_eq!(ops, &batches[i]);
            }
            let at = cut.index(log.len() + 1);
            let whole = ends.iter().filter(|e| **e <= at).count();
            prop_assert_eq!(decode_records(&log[..at]).len(), whole);
            let mut damaged = log.clone();
            let byte = flip.index(log.len());
            damaged[byte] ^= 0x20;
            let before = ends.iter().filter(|e| **e <= byte).count();
            prop_assert_eq!(decode_records(&damaged).len(), before);
        }
    }

    #[test]
    fn the_replay_starts_at_the_checkpoint_and_stops_where_numbers_stop_following() {
        let p = Path::new("x.wal");
        let r = |seqs: &[u64]| seqs.iter().map(|s| (*s, vec![])).collect::<Vec<_>>();
        let seqs = |v: Vec<Record>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        // Records already checkpointed are skipped.
        assert_eq!(seqs(to_replay(r(&[3, 4, 5, 6]), 5, p).unwrap()), [5, 6]);
        // An emptying that did not reach the disk: new records at the
        // start, old ones after them.
        assert_eq!(seqs(to_replay(r(&[7, 8, 5, 6]), 7, p).unwrap()), [7, 8]);
        assert!(to_replay(r(&[]), 7, p).unwrap().is_empty());
        assert!(to_replay(r(&[3, 4]), 7, p).unwrap().is_empty());
        // A missing record after the checkpoint: refused.
        let e = to_replay(r(&[8, 9]), 7, p).unwrap_err().to_string();
        assert!(e.contains("records are missing"), "{e}");
    }
}
