//! Durable storage behind a small trait.
//!
//! The node keeps everything in one ordered key-value space, with key
//! prefixes per concept (see [`keys`]). A write is a batch of operations
//! applied atomically; [`Store::sync`] makes applied batches durable. Every
//! engine implements the trait and passes the same test suite ([`suite`]):
//! the node's sled engine on disk, and [`MemStore`] here (in memory, for
//! unit tests and the simulator). This module names no engine.
//!
//! Every stored value is written with [`encode_value`]: a schema version byte
//! followed by the postcard encoding, so values can migrate forward.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte written before every stored value.
pub const VALUE_VERSION: u8 = 1;
/// The store layout version, kept under [`keys::SCHEMA`]. Version 2 keeps
/// statements by journal block first ([`keys::STATEMENT`]); a store of
/// version 1 is upgraded when opened ([`crate::schema::upgrade`]).
pub const SCHEMA_VERSION: u32 = 2;

/// A storage failure. The node stops on any of these rather than continue
/// with memory and disk out of step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The engine reported an error.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A file operation failed.
    #[error("storage file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored value did not decode.
    #[error("stored value under {key} is corrupt: {detail}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The store was written by a newer version of caisse.
    #[error(
        "the store has layout version {found}, newer than this build reads ({known}): \
         run the caisse version that wrote it, or restore a backup made for this one"
    )]
    Newer {
        /// The layout version found.
        found: u32,
        /// The newest this build reads.
        known: u32,
    },
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One write in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

impl Op {
    /// The key this operation sets or removes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// An ordered key-value store with atomic batches and explicit durability.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// All pairs whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError>;
    /// Visit pairs under `prefix` in key order without collecting them;
    /// stop early when `visit` returns false.
    fn for_each_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// Visit pairs under `prefix` from key `start` on (inclusive), in key
    /// order; stop early when `visit` returns false.
    fn for_each_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// The last pair whose key starts with `prefix`.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError>;
    /// Apply every operation, all or none.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Make every applied batch durable (survives power loss).
    fn sync(&self) -> Result<(), StoreError>;
    /// Apply every operation, all or none, and make it and every earlier
    /// batch durable: what the writer's commit does. Engines that can do
    /// both in one step (one durable transaction) override it.
    fn apply_durably(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.apply(ops)?;
        self.sync()
    }
}

/// Keys [`for_each_chunked`] visits in one read snapshot.
pub const CHUNK_KEYS: usize = 4_096;

/// Visit the pairs under `prefix` in key order, like
/// [`Store::for_each_prefix`], but [`CHUNK_KEYS`] at a time, each chunk in
/// its own read snapshot. For the long reads that run while the writer
/// goes on (the audit, reports, exports): an engine with read snapshots
/// cannot reuse a page freed while a snapshot that may see it is open, so
/// one snapshot held through a read of the whole journal grows the store
/// file by every page the tills free meanwhile.
///
/// A key written or deleted during the read may or may not be visited, so
/// use it only where the keys read do not change once written: the journal
/// (the read sees a prefix of it), and indexes of entries below a bound the
/// caller filters on.
pub fn for_each_chunked(
    store: &dyn Store,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StoreError> {
    for_each_collected_from(store, prefix, prefix, visit)
}

/// [`for_each_chunked`] from key `start` on. Each chunk is read whole
/// before its pairs are visited, so no read of the store is open while
/// `visit` runs: it may read the store itself, and a slow visitor holds
/// no snapshot.
pub fn for_each_collected_from(
    store: &dyn Store,
    prefix: &[u8],
    start: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StoreError> {
    let mut start = start.to_vec();
    let mut chunk: Vec<Pair> = Vec::with_capacity(CHUNK_KEYS);
    loop {
        chunk.clear();
        store.for_each_from(prefix, &start, &mut |k, v| {
            chunk.push((k.to_vec(), v.to_vec()));
            chunk.len() < CHUNK_KEYS
        })?;
        for (k, v) in &chunk {
            if !visit(k, v) {
                return Ok(());
            }
        }
        match chunk.last() {
            Some((last, _)) if chunk.len() == CHUNK_KEYS => {
                // The next chunk starts just after the last key read.
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// At most `limit` values under `prefix`, from key `start` on, decoded; the
/// first value that does not decode is an error.
pub fn page<T: DeserializeOwned>(
    store: &dyn Store,
    prefix: &[u8],
    start: &[u8],
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut err = None;
    store.for_each_from(prefix, start, &mut |k, v| {
        match decode_value(k, v) {
            Ok(x) => out.push(x),
            Err(e) => err = Some(e),
        }
        out.len() < limit && err.is_none()
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Encode a value for storage: version byte, then postcard.
pub fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![VALUE_VERSION];
    // Serialising plain in-memory structs to a Vec cannot fail.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(_) => vec![VALUE_VERSION],
    }
}

/// Decode a stored value written by [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key: keys::printable(key),
        detail,
    };
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => {
            let (v, tail) = postcard::take_from_bytes(rest).map_err(|e| corrupt(e.to_string()))?;
            if tail.is_empty() {
                Ok(v)
            } else {
                Err(corrupt(format!("{} trailing bytes", tail.len())))
            }
        }
        Some((v, _)) => Err(corrupt(format!("unknown value version {v}"))),
        None => Err(corrupt("empty value".into())),
    }
}

/// Encode a value whose type uses serde features the binary encoding cannot
/// carry (internally tagged enums): JSON text inside a versioned value.
pub fn encode_json_value<T: Serialize>(value: &T) -> Vec<u8> {
    encode_value(&serde_json::to_string(value).unwrap_or_default())
}

/// Decode a value written by [`encode_json_value`].
pub fn decode_json_value<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let json: String = decode_value(key, bytes)?;
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
        key: keys::printable(key),
        detail: e.to_string(),
    })
}

/// The key prefixes of the node's single key space.
pub mod keys {
    /// Store layout version.
    pub const SCHEMA: &[u8] = b"meta/schema";
    /// Journal head: next sequence number and hash of the last entry.
    pub const HEAD: &[u8] = b"meta/head";
    /// The caisse's policy (allocation, rollover, contributions).
    pub const POLICY: &[u8] = b"meta/policy";
    /// The caisse's identity and profile.
    pub const PROFILE: &[u8] = b"meta/profile";
    /// Journal entries by sequence number (8 bytes big-endian).
    pub const JOURNAL: &[u8] = b"j/";
    /// Cached balances by account.
    pub const BALANCE: &[u8] = b"b/";
    /// Purchase idempotency records by purchase id.
    pub const PURCHASE: &[u8] = b"p/";
    /// Allocations issued, by period then member.
    pub const ALLOCATION: &[u8] = b"a/";
    /// Contributions recorded, by period then member.
    pub const CONTRIBUTION: &[u8] = b"k/";
    /// Outlet payouts, by period then outlet.
    pub const PAYOUT: &[u8] = b"y/";
    /// Other idempotency keys (subsidies), by key.
    pub const IDEMPOTENCY: &[u8] = b"i/";
    /// Members by member id (personal data: never leaves the node).
    pub const MEMBER: &[u8] = b"m/";
    /// Cards by card id.
    pub const CARD: &[u8] = b"c/";
    /// Outlets by outlet id.
    pub const OUTLET: &[u8] = b"o/";
    /// API tokens by hash.
    pub const TOKEN: &[u8] = b"t/";
    /// Outlets whose tills are suspended (by the admin, or after a burst
    /// of wrong PINs), by outlet id.
    pub const OUTLET_BLOCK: &[u8] = b"ob/";
    /// A member's statement: journal entries touching their account, by
    /// block of journal entries ([`STATEMENT_BLOCK_BITS`]), then member,
    /// then the entry within the block (values empty; see [`statement`]). The block
    /// first keeps the lines of a busy quarter second within a few pages
    /// of the index however long the journal grows, where member first
    /// put each sale's line on a page no other sale touched.
    pub const STATEMENT: &[u8] = b"ws/";
    /// Statements as layout version 1 kept them (member, then sequence
    /// number): moved under [`STATEMENT`] by the upgrade to version 2.
    pub const STATEMENT_V1: &[u8] = b"w/";
    /// A statement block holds 2^12 = 4,096 journal entries: the lines
    /// between two checkpoints share a few dozen pages, and a statement
    /// walks back about 2,400 blocks at most in a ten-million-entry journal
    /// (an active member's allocation puts a line in every month).
    pub const STATEMENT_BLOCK_BITS: u32 = 12;

    /// The statement line of journal entry `seq` (below 2^60) for a
    /// member: the block (`seq >> STATEMENT_BLOCK_BITS`, 6 bytes), the
    /// member, the entry within the block (2 bytes).
    pub fn statement(member: &[u8; 16], seq: u64) -> Vec<u8> {
        let mut k = statement_block(seq >> STATEMENT_BLOCK_BITS, member);
        let low = (seq & ((1 << STATEMENT_BLOCK_BITS) - 1)) as u16;
        k.extend_from_slice(&low.to_be_bytes());
        k
    }

    /// The member and journal entry of a statement line's key.
    pub fn statement_parts(key: &[u8]) -> Option<([u8; 16], u64)> {
        let rest = key.strip_prefix(STATEMENT)?;
        if rest.len() != 24 {
            return None;
        }
        let mut block = [0u8; 8];
        block[2..].copy_from_slice(&rest[..6]);
        let member = <[u8; 16]>::try_from(&rest[6..22]).ok()?;
        let low = u64::from(u16::from_be_bytes([rest[22], rest[23]]));
        if low >> STATEMENT_BLOCK_BITS != 0 {
            return None;
        }
        Some((
            member,
            u64::from_be_bytes(block) << STATEMENT_BLOCK_BITS | low,
        ))
    }

    /// The prefix of a member's statement lines in one block.
    pub fn statement_block(block: u64, member: &[u8; 16]) -> Vec<u8> {
        key(STATEMENT, &[&block.to_be_bytes()[2..], member])
    }

    /// `prefix` followed by `parts`.
    pub fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut k = prefix.to_vec();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }

    /// A key made readable for error messages.
    pub fn printable(key: &[u8]) -> String {
        let split = key.iter().position(|b| *b == b'/').map_or(0, |i| i + 1);
        let (head, tail) = key.split_at(split);
        if tail.iter().all(|b| b.is_ascii_graphic()) {
            String::from_utf8_lossy(key).into_owned()
        } else {
            format!("{}{}", String::from_utf8_lossy(head), hex::encode(tail))
        }
    }
}

/// An in-memory engine for unit tests; passes the same suite as sled.
#[derive(Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned map is still a consistent map: every batch is applied under one lock.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        Ok(self
            .lock()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn for_each_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for (k, v) in self.scan_prefix(prefix)? {
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
        // Copied out a batch at a time (the lock is not held while
        // visiting), so that a read that stops early copies little.
        const BATCH: usize = 1_024;
        let mut from = start.max(prefix).to_vec();
        loop {
            let pairs: Vec<Pair> = self
                .lock()
                .range(from.clone()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(BATCH)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let full = pairs.len() == BATCH;
            for (k, v) in &pairs {
                if !visit(k, v) {
                    return Ok(());
                }
            }
            match pairs.into_iter().next_back() {
                Some((mut last, _)) if full => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(()),
            }
        }
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        Ok(self.scan_prefix(prefix)?.pop())
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut map = self.lock();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                Op::Delete(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The test suite every engine must pass (called by each engine's tests).
pub mod suite {
    use super::*;

    /// Run the suite against `store`; panics on the first failure.
    #[allow(clippy::unwrap_used)]
    pub fn run(store: &dyn Store) {
        assert_eq!(store.get(b"x/1").unwrap(), None);
        store
            .apply(&[
                Op::Put(b"x/1".to_vec(), b"one".to_vec()),
                Op::Put(b"x/2".to_vec(), b"two".to_vec()),
                Op::Put(b"y/1".to_vec(), b"other".to_vec()),
            ])
            .unwrap();
        store.sync().unwrap();
        assert_eq!(store.get(b"x/1").unwrap().as_deref(), Some(&b"one"[..]));
        let scanned = store.scan_prefix(b"x/").unwrap();
        assert_eq!(scanned.len(), 2);
        assert_eq!(scanned[0].0, b"x/1");
        assert_eq!(
            store.last_with_prefix(b"x/").unwrap().unwrap().1,
            b"two".to_vec()
        );
        let mut seen = 0;
        store
            .for_each_prefix(b"x/", &mut |_, _| {
                seen += 1;
                false
            })
            .unwrap();
        assert_eq!(seen, 1, "visiting stops when asked");
        let mut from = Vec::new();
        store
            .for_each_from(b"x/", b"x/2", &mut |k, _| {
                from.push(k.to_vec());
                true
            })
            .unwrap();
        assert_eq!(from, vec![b"x/2".to_vec()], "from a key, within the prefix");
        store
            .apply(&[
                Op::Delete(b"x/1".to_vec()),
                Op::Put(b"x/2".to_vec(), b"deux".to_vec()),
            ])
            .unwrap();
        assert_eq!(store.get(b"x/1").unwrap(), None);
        assert_eq!(store.get(b"x/2").unwrap().as_deref(), Some(&b"deux"[..]));
        assert_eq!(store.last_with_prefix(b"z/").unwrap(), None);
        let v = encode_value(&(7u32, String::from("sept")));
        assert_eq!(
            decode_value::<(u32, String)>(b"k", &v).unwrap(),
            (7, "sept".into())
        );
        assert!(decode_value::<(u32, String)>(b"k", &v[1..]).is_err());

        // Chunked reads of the journal: every key once, in order, across
        // chunks; stopping when asked, at and beside a chunk's end.
        let n = CHUNK_KEYS as u64 * 2 + 7;
        let journal = |i: u64| keys::key(keys::JOURNAL, &[&i.to_be_bytes()]);
        let ops: Vec<Op> = (0..n)
            .map(|i| Op::Put(journal(i), i.to_be_bytes().to_vec()))
            .collect();
        store.apply(&ops).unwrap();
        let mut seen = Vec::new();
        for_each_chunked(store, keys::JOURNAL, &mut |_, v| {
            seen.push(u64::from_be_bytes(v.try_into().unwrap()));
            true
        })
        .unwrap();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        for stop in [1, CHUNK_KEYS - 1, CHUNK_KEYS, CHUNK_KEYS + 1] {
            let mut count = 0;
            for_each_chunked(store, keys::JOURNAL, &mut |_, _| {
                count += 1;
                count < stop
            })
            .unwrap();
            assert_eq!(count, stop, "a chunked read stops when asked");
        }
        let ops: Vec<Op> = (0..n).map(|i| Op::Delete(journal(i))).collect();
        store.apply(&ops).unwrap();
        assert_eq!(store.last_with_prefix(keys::JOURNAL).unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_passes_the_suite() {
        suite::run(&MemStore::new());
    }

    proptest::proptest! {
        /// A statement line's key gives back its member and entry, and
        /// lines sort by block, then member, then entry.
        #[test]
        fn statement_keys_round_trip_and_sort(
            a in (proptest::prelude::any::<[u8; 16]>(), 0u64..1 << 60),
            b in (proptest::prelude::any::<[u8; 16]>(), 0u64..1 << 60),
        ) {
            let (ka, kb) = (keys::statement(&a.0, a.1), keys::statement(&b.0, b.1));
            proptest::prop_assert_eq!(keys::statement_parts(&ka), Some(a));
            let order = |(m, s): ([u8; 16], u64)| (s >> keys::STATEMENT_BLOCK_BITS, m, s);
            proptest::prop_assert_eq!(ka.cmp(&kb), order(a).cmp(&order(b)));
        }
    }

    #[test]
    fn printable_keys() {
        assert_eq!(keys::printable(b"meta/head"), "meta/head");
        assert_eq!(keys::printable(&[b'j', b'/', 0, 1]), "j/0001");
    }
}
