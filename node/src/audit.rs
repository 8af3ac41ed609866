//! The ledger audit's checkpoint, kept in the data directory: what the
//! last clean audit verified, so that the next `caisse ledger check` reads
//! only the journal entries appended since, and compares every balance
//! from there (`caisse_core::ledger::AuditCheckpoint` says what such an
//! audit does and does not read again). `--full` still reads the whole
//! journal. Without it, the audit of a caisse of a million members grows
//! with every month it has run (about four seconds a million entries
//! here, idle).
//!
//! The file (`audit.checkpoint`, mode 0600: it holds every account's
//! balance under its member id) is the checkpoint in the store's encoding
//! between a magic and its SHA-256, replaced whole (a synced temporary
//! file renamed over it). It is derived data: a missing, damaged or
//! foreign one (another journal's, e.g. after restoring a backup of
//! another history) only means the next audit reads the whole journal,
//! which is logged.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ledger::AuditCheckpoint;
use crate::store::{Store, decode_value, encode_value};

/// The checkpoint's file name in the data directory.
pub const FILE: &str = "audit.checkpoint";

/// What the file starts with (format version 1).
const MAGIC: &[u8; 8] = b"caudit01";

/// The largest checkpoint read (an account takes about 21 bytes: 2.6
/// million, about 55 MB).
const MAX_BYTES: u64 = 1 << 30;

/// The file's contents for `checkpoint`.
fn encode(checkpoint: &AuditCheckpoint) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&encode_value(checkpoint));
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The checkpoint in `bytes`, or why not.
fn decode(bytes: &[u8]) -> Result<AuditCheckpoint, String> {
    let body_len = bytes
        .len()
        .checked_sub(32)
        .filter(|n| *n >= MAGIC.len())
        .ok_or("too short")?;
    let (body, digest) = bytes.split_at(body_len);
    if !body.starts_with(MAGIC) {
        return Err("not an audit checkpoint of this version".into());
    }
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum does not match (torn or edited)".into());
    }
    decode_value(b"audit.checkpoint", &body[MAGIC.len()..]).map_err(|e| e.to_string())
}

/// Why the file at a path holds no usable checkpoint.
#[derive(Debug)]
pub enum Unusable {
    /// There is no file: no audit has come out clean yet.
    Missing,
    /// Larger than any checkpoint this node writes.
    TooLarge,
    /// It cannot be read.
    Unreadable(std::io::Error),
    /// Torn, edited, or of another format.
    Damaged(String),
}

/// The checkpoint at `path` if it is whole (whether it is of a given
/// journal is [`AuditCheckpoint::matches`]).
pub fn read(path: &Path) -> Result<AuditCheckpoint, Unusable> {
    let bytes = std::fs::File::open(path)
        .and_then(|f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BYTES + 1), &mut bytes)?;
            Ok(bytes)
        })
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Unusable::Missing,
            _ => Unusable::Unreadable(e),
        })?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(Unusable::TooLarge);
    }
    decode(&bytes).map_err(Unusable::Damaged)
}

/// The checkpoint at `path` if it is whole and of `store`'s journal;
/// otherwise `None` (the audit reads the whole journal), with the reason
/// logged.
pub fn load(path: &Path, store: &dyn Store) -> Option<AuditCheckpoint> {
    let checkpoint = match read(path) {
        Ok(c) => c,
        Err(Unusable::Missing) => {
            tracing::info!(target: "caisse::events::audit", "no audit checkpoint yet: reading the whole journal");
            return None;
        }
        Err(Unusable::TooLarge) => {
            tracing::warn!(target: "caisse::events::audit", file = %path.display(), "audit checkpoint too large: reading the whole journal");
            return None;
        }
        Err(Unusable::Unreadable(e)) => {
            tracing::warn!(target: "caisse::events::audit", file = %path.display(), error = %e, "audit checkpoint unreadable: reading the whole journal");
            return None;
        }
        Err(Unusable::Damaged(why)) => {
            tracing::warn!(target: "caisse::events::audit", file = %path.display(), %why, "audit checkpoint damaged: reading the whole journal");
            return None;
        }
    };
    match checkpoint.matches(store) {
        Ok(true) => Some(checkpoint),
        Ok(false) => {
            tracing::warn!(target: "caisse::events::audit", file = %path.display(), upto = checkpoint.upto, "the audit checkpoint is not of this journal (its last entry differs or is missing): reading the whole journal");
            None
        }
        Err(e) => {
            tracing::warn!(target: "caisse::events::audit", error = %e, "cannot compare the audit checkpoint with the journal: reading the whole journal");
            None
        }
    }
}

/// Replace the checkpoint at `path` with `checkpoint` (a power cut leaves
/// the old one or the new one; mode 0600). Saves are one at a time (they
/// share a temporary file).
pub fn save(path: &Path, checkpoint: &AuditCheckpoint) -> std::io::Result<()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    crate::durable::save(path, &encode(checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Account;
    use caisse_protocol::{Amount, MemberId};

    fn checkpoint() -> AuditCheckpoint {
        AuditCheckpoint {
            upto: 0,
            prev_hash: [0; 32],
            balances: vec![(
                Account::Member(MemberId::from_bytes([3; 16])),
                Amount::from_cents(12_00),
            )],
            full_at: 1,
            made_at: 2,
        }
    }

    #[test]
    fn a_checkpoint_reads_back_and_a_damaged_one_is_refused() {
        let cp = checkpoint();
        let bytes = encode(&cp);
        assert_eq!(decode(&bytes).unwrap(), cp);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert!(
                decode(&damaged).is_err(),
                "a flipped bit at {at} went unseen"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len} went unseen");
        }
    }

    /// The size the doc comments give: about 21 bytes an account.
    #[test]
    fn an_account_takes_about_21_bytes() {
        let mut cp = checkpoint();
        cp.balances = (0..1_000u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                (
                    Account::Member(MemberId::from_bytes(id)),
                    Amount::from_cents(150_00 + i64::from(i)),
                )
            })
            .collect();
        let per_account = encode(&cp).len() / 1_000;
        assert!(
            (20..=22).contains(&per_account),
            "{per_account} bytes an account"
        );
    }

    #[test]
    fn a_checkpoint_of_another_journal_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::MemStore::default();
        let path = dir.path().join(FILE);
        assert!(load(&path, &store).is_none(), "no file");
        // Of an empty journal: it matches an empty store.
        let mut cp = checkpoint();
        cp.balances.clear();
        save(&path, &cp).unwrap();
        assert_eq!(load(&path, &store), Some(cp.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Past entries this store does not have.
        cp.upto = 5;
        cp.prev_hash = [9; 32];
        save(&path, &cp).unwrap();
        assert!(load(&path, &store).is_none());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path, &store).is_none());
    }
}
