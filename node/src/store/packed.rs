//! The journal packed into page-sized records, for the redb engine.
//!
//! The journal is the store's biggest part (one entry of about 150 bytes
//! per purchase) and its keys only ever grow. Kept one entry per key in a
//! B-tree, every leaf it fills is split in two halves and never touched
//! again, so the journal's pages stay half empty (BENCHMARKS.md, "Where a
//! purchase's bytes go"). Here the entries (`j/` followed by an 8-byte
//! big-endian sequence number) live in their own table, several to a
//! record (a *bucket*) of at most [`BUCKET_BYTES`], keyed by the sequence
//! number it starts at; a full bucket fills one page alone.
//!
//! A bucket holds entries in ascending order, every one at or above its
//! key and below the next bucket's key: the bucket of a sequence number is
//! the last one keyed at or below it. Its encoding: the number of entries,
//! then per entry the distance from the previous sequence number (from the
//! bucket's key for the first), the value's length and the value, numbers
//! as LEB128 varints. Decoding checks every length and order and reports a
//! corrupt bucket rather than guess.

use redb::{ReadableTable, TableDefinition};

use super::StoreError;
use caisse_core::store::keys;

/// The table of journal buckets.
pub(super) const JOURNAL_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

/// A bucket's encoded size at most, unless a single entry is larger: a
/// page (4,096 bytes) less redb's leaf header, one value offset and the
/// 8-byte key, with room to spare.
pub(super) const BUCKET_BYTES: usize = 4_000;

/// The upper bound of the journal's keys: every key under `j/` sorts
/// below it.
pub(super) const JOURNAL_END: &[u8] = b"j0";

/// The sequence number of a journal key (`j/` and 8 bytes), or `None`.
pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(keys::JOURNAL)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The first sequence number whose key is at or above `lo`, if any.
pub(super) fn first_seq_at_or_after(lo: &[u8]) -> Option<u64> {
    if lo <= keys::JOURNAL {
        return Some(0);
    }
    if lo >= JOURNAL_END {
        return None;
    }
    // Between `j/` and `j0`: `lo` starts with `j/`.
    let rest = &lo[keys::JOURNAL.len()..];
    let mut bytes = [0u8; 8];
    let n = rest.len().min(8);
    bytes[..n].copy_from_slice(&rest[..n]);
    let seq = u64::from_be_bytes(bytes);
    if rest.len() > 8 {
        // `lo` is longer than the key of `seq`, so above it.
        seq.checked_add(1)
    } else {
        Some(seq)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// Encode entries (ascending, all at or above `base`) as one bucket.
fn encode(base: u64, entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BUCKET_BYTES);
    put_varint(&mut out, entries.len() as u64);
    let mut prev = base;
    for (seq, value) in entries {
        put_varint(&mut out, seq - prev);
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
        prev = *seq;
    }
    out
}

/// Decode a bucket keyed `base`, borrowing the values.
fn decode(base: u64, bytes: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        key: format!("journal bucket {base}"),
        detail: detail.to_owned(),
    };
    let mut at = 0;
    let count = take_varint(bytes, &mut at).ok_or_else(|| corrupt("no entry count"))?;
    // An empty bucket is never written (it is removed instead), and each
    // entry takes at least two bytes: a count outside that is a lie.
    if count == 0 {
        return Err(corrupt("a bucket with no entry"));
    }
    if count > bytes.len() as u64 / 2 {
        return Err(corrupt("entry count larger than the bucket"));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut prev = base;
    for i in 0..count {
        let delta = take_varint(bytes, &mut at).ok_or_else(|| corrupt("truncated entry"))?;
        if i > 0 && delta == 0 {
            return Err(corrupt("two entries with one sequence number"));
        }
        let seq = prev
            .checked_add(delta)
            .ok_or_else(|| corrupt("sequence number overflows"))?;
        let len = take_varint(bytes, &mut at).ok_or_else(|| corrupt("truncated entry"))?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| corrupt("value runs past the bucket"))?;
        out.push((seq, &bytes[at..end]));
        at = end;
        prev = seq;
    }
    if at != bytes.len() {
        return Err(corrupt("bytes after the last entry"));
    }
    Ok(out)
}

/// The key and bytes of the bucket holding `seq` (the last keyed at or
/// below it), if any.
fn floor<T: ReadableTable<u64, &'static [u8]>>(
    table: &T,
    seq: u64,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    match table.range(..=seq).map_err(super::redb_err)?.next_back() {
        Some(r) => {
            let (k, v) = r.map_err(super::redb_err)?;
            Ok(Some((k.value(), v.value().to_vec())))
        }
        None => Ok(None),
    }
}

/// The value of journal entry `seq`.
pub(super) fn get<T: ReadableTable<u64, &'static [u8]>>(
    table: &T,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some((base, bytes)) = floor(table, seq)? else {
        return Ok(None);
    };
    let entries = decode(base, &bytes)?;
    Ok(entries
        .binary_search_by_key(&seq, |(s, _)| *s)
        .ok()
        .map(|i| entries[i].1.to_vec()))
}

/// Visit the entries from sequence number `from` on, in order, until
/// `visit` returns false; returns whether it never did.
pub(super) fn visit_from<T: ReadableTable<u64, &'static [u8]>>(
    table: &T,
    from: u64,
    visit: &mut dyn FnMut(u64, &[u8]) -> bool,
) -> Result<bool, StoreError> {
    let start = match floor(table, from)? {
        Some((base, _)) => base,
        None => from,
    };
    for r in table.range(start..).map_err(super::redb_err)? {
        let (k, v) = r.map_err(super::redb_err)?;
        for (seq, value) in decode(k.value(), v.value())? {
            if seq >= from && !visit(seq, value) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The last journal entry.
pub(super) fn last<T: ReadableTable<u64, &'static [u8]>>(
    table: &T,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let Some(r) = table.iter().map_err(super::redb_err)?.next_back() else {
        return Ok(None);
    };
    let (k, v) = r.map_err(super::redb_err)?;
    Ok(decode(k.value(), v.value())?
        .last()
        .map(|(s, v)| (*s, v.to_vec())))
}

/// Buckets in the table (for the store's layout).
pub(super) fn buckets<T: ReadableTable<u64, &'static [u8]>>(table: &T) -> Result<u64, StoreError> {
    table.len().map_err(super::redb_err)
}

/// The bucket being changed: loaded once, changed in memory by every
/// operation of the transaction that falls in it, written back once.
struct Open {
    key: u64,
    existed: bool,
    /// The next bucket's key: this one holds the sequence numbers below it.
    next: Option<u64>,
    entries: Vec<(u64, Vec<u8>)>,
}

impl Open {
    fn holds(&self, seq: u64) -> bool {
        self.key <= seq && self.next.is_none_or(|n| seq < n)
    }
}

/// Applies journal puts and deletes inside one write transaction.
pub(super) struct Writer<'t> {
    table: redb::Table<'t, u64, &'static [u8]>,
    open: Option<Open>,
}

impl<'t> Writer<'t> {
    /// Write into `table` (the transaction's journal table).
    pub(super) fn new(table: redb::Table<'t, u64, &'static [u8]>) -> Writer<'t> {
        Writer { table, open: None }
    }

    /// Set entry `seq` to `value`.
    pub(super) fn put(&mut self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        let open = self.bucket_for(seq)?;
        match open.entries.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => open.entries[i].1 = value.to_vec(),
            Err(i) => open.entries.insert(i, (seq, value.to_vec())),
        }
        Ok(())
    }

    /// Remove entry `seq` (nothing if absent).
    pub(super) fn delete(&mut self, seq: u64) -> Result<(), StoreError> {
        let open = self.bucket_for(seq)?;
        if let Ok(i) = open.entries.binary_search_by_key(&seq, |(s, _)| *s) {
            open.entries.remove(i);
        }
        Ok(())
    }

    /// Write the bucket being changed back.
    pub(super) fn finish(mut self) -> Result<(), StoreError> {
        self.flush()
    }

    fn bucket_for(&mut self, seq: u64) -> Result<&mut Open, StoreError> {
        if !self.open.as_ref().is_some_and(|o| o.holds(seq)) {
            self.flush()?;
            let (key, existed, entries) = match floor(&self.table, seq)? {
                Some((key, bytes)) => {
                    let entries = decode(key, &bytes)?
                        .into_iter()
                        .map(|(s, v)| (s, v.to_vec()))
                        .collect();
                    (key, true, entries)
                }
                None => (seq, false, Vec::new()),
            };
            let next = match key.checked_add(1) {
                Some(after) => match self.table.range(after..).map_err(super::redb_err)?.next() {
                    Some(r) => Some(r.map_err(super::redb_err)?.0.value()),
                    None => None,
                },
                None => None,
            };
            self.open = Some(Open {
                key,
                existed,
                next,
                entries,
            });
        }
        Ok(self.open.as_mut().expect("opened above"))
    }

    /// Write the open bucket back: removed if empty, split into buckets of
    /// at most [`BUCKET_BYTES`] if it grew past it (the first keeps the
    /// bucket's key, each other is keyed by its first entry).
    fn flush(&mut self) -> Result<(), StoreError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if open.entries.is_empty() {
            if open.existed {
                self.table.remove(open.key).map_err(super::redb_err)?;
            }
            return Ok(());
        }
        // Room for the entry count's varint.
        const COUNT: usize = 3;
        let mut start = 0;
        let mut key = open.key;
        let mut prev = key;
        let mut size = COUNT;
        for i in 0..open.entries.len() {
            let (seq, value) = &open.entries[i];
            let len = value.len();
            let mut cost = varint_len(seq - prev) + varint_len(len as u64) + len;
            if i > start && size + cost > BUCKET_BYTES {
                let bytes = encode(key, &open.entries[start..i]);
                self.table
                    .insert(key, bytes.as_slice())
                    .map_err(super::redb_err)?;
                start = i;
                key = *seq;
                size = COUNT;
                cost = 1 + varint_len(len as u64) + len;
            }
            size += cost;
            prev = *seq;
        }
        let bytes = encode(key, &open.entries[start..]);
        self.table
            .insert(key, bytes.as_slice())
            .map_err(super::redb_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisse_core::ledger::JournalEntry;

    #[test]
    fn a_bucket_round_trips_and_rejects_what_does_not_decode() {
        let entries = vec![(7u64, b"sept".to_vec()), (8, vec![]), (300, vec![9u8; 200])];
        let bytes = encode(5, &entries);
        let back = decode(5, &bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], (300, &[9u8; 200][..]));
        // Truncated, with a trailing byte, with a count that lies.
        assert!(decode(5, &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(5, &longer).is_err());
        assert!(decode(5, &[0xff, 0xff, 0x7f]).is_err());
        // A repeated sequence number.
        assert!(decode(0, &[2, 1, 0, 0, 0]).is_err());
        // A varint longer than 64 bits; an empty bucket.
        assert!(decode(0, &[0xff; 11]).is_err());
        assert!(decode(0, &[0]).is_err());
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut at = 0;
            assert_eq!(take_varint(&out, &mut at), Some(v));
        }
    }

    #[test]
    fn the_first_sequence_number_at_or_after_a_key() {
        assert_eq!(first_seq_at_or_after(b""), Some(0));
        assert_eq!(first_seq_at_or_after(b"j/"), Some(0));
        assert_eq!(first_seq_at_or_after(b"j0"), None);
        assert_eq!(first_seq_at_or_after(b"m/"), None);
        assert_eq!(first_seq_at_or_after(&JournalEntry::key(42)), Some(42));
        assert_eq!(
            first_seq_at_or_after(b"j/\x00\x00\x00\x00\x00\x00\x01"),
            Some(256)
        );
        let mut past = JournalEntry::key(42);
        past.push(0);
        assert_eq!(first_seq_at_or_after(&past), Some(43));
        let mut last = JournalEntry::key(u64::MAX);
        last.push(0);
        assert_eq!(first_seq_at_or_after(&last), None);
    }
}
