//! The store's layout version and the upgrade from older layouts, run
//! when a node opens its store (before anything reads it).
//!
//! Version 1 kept members' statements by member first (`w/`); version 2
//! keeps them by journal block first ([`keys::STATEMENT`]), so that the
//! lines new sales add share pages however long the journal is.

use crate::store::{Op, SCHEMA_VERSION, Store, StoreError, decode_value, encode_value, keys};

/// Statement lines moved per batch: bounded memory and log records.
const MOVE_BATCH: usize = 50_000;

/// What [`upgrade`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// The layout version found (`None`: a store not yet initialised).
    pub from: Option<u32>,
    /// Statement lines moved to the version 2 layout.
    pub statement_lines: u64,
}

/// Bring `store` to [`SCHEMA_VERSION`]. A store of the current version, or
/// an empty one, is left as it is; a newer one is refused
/// ([`StoreError::Newer`]). Each batch moves lines atomically and the
/// version is written last, so an upgrade cut short (power cut, crash)
/// resumes where it stopped at the next open.
pub fn upgrade(store: &dyn Store) -> Result<Upgraded, StoreError> {
    let Some(bytes) = store.get(keys::SCHEMA)? else {
        return Ok(Upgraded::default());
    };
    let found: u32 = decode_value(keys::SCHEMA, &bytes)?;
    let mut done = Upgraded {
        from: Some(found),
        statement_lines: 0,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(done);
    }
    // 1 to 2: statements by journal block first.
    loop {
        let mut ops = Vec::new();
        let mut bad = None;
        store.for_each_from(keys::STATEMENT_V1, keys::STATEMENT_V1, &mut |k, _| {
            let Some(rest) = k.get(keys::STATEMENT_V1.len()..) else {
                return true;
            };
            // Member (16 bytes), then journal entry (8 bytes).
            let parsed = (rest.len() == 24).then(|| {
                let (member, seq) = rest.split_at(16);
                let mut m = [0u8; 16];
                m.copy_from_slice(member);
                let mut q = [0u8; 8];
                q.copy_from_slice(seq);
                (m, u64::from_be_bytes(q))
            });
            match parsed {
                Some((member, seq)) => {
                    ops.push(Op::Delete(k.to_vec()));
                    ops.push(Op::Put(keys::statement(&member, seq), Vec::new()));
                    ops.len() < 2 * MOVE_BATCH
                }
                None => {
                    bad = Some(keys::printable(k));
                    false
                }
            }
        })?;
        if let Some(key) = bad {
            return Err(StoreError::Corrupt {
                key,
                detail: "a statement line of layout version 1 that is not member (16 bytes) \
                         then journal entry (8 bytes); the store cannot be upgraded past it: \
                         restore the data directory from a backup \
                         (`caisse --data-dir DIR restore FILE`)"
                    .into(),
            });
        }
        if ops.is_empty() {
            break;
        }
        done.statement_lines += (ops.len() / 2) as u64;
        store.apply(&ops)?;
    }
    store.apply(&[Op::Put(
        keys::SCHEMA.to_vec(),
        encode_value(&SCHEMA_VERSION),
    )])?;
    store.sync()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn v1_line(member: u8, seq: u64) -> Vec<u8> {
        keys::key(keys::STATEMENT_V1, &[&[member; 16], &seq.to_be_bytes()])
    }

    fn v1_store(lines: &[(u8, u64)]) -> MemStore {
        let store = MemStore::new();
        let mut ops = vec![Op::Put(keys::SCHEMA.to_vec(), encode_value(&1u32))];
        for (m, seq) in lines {
            ops.push(Op::Put(v1_line(*m, *seq), Vec::new()));
        }
        store.apply(&ops).unwrap();
        store
    }

    #[test]
    fn a_version_1_store_moves_its_statements_and_says_so() {
        let lines: Vec<(u8, u64)> = (0..120_000u64).map(|i| ((i % 7) as u8, i * 3)).collect();
        let store = v1_store(&lines);
        let up = upgrade(&store).unwrap();
        assert_eq!(up.from, Some(1));
        assert_eq!(up.statement_lines, 120_000);
        assert!(store.scan_prefix(keys::STATEMENT_V1).unwrap().is_empty());
        let moved = store.scan_prefix(keys::STATEMENT).unwrap();
        assert_eq!(moved.len(), 120_000);
        for (m, seq) in &lines {
            assert!(
                store
                    .get(&keys::statement(&[*m; 16], *seq))
                    .unwrap()
                    .is_some()
            );
        }
        let v: u32 =
            decode_value(keys::SCHEMA, &store.get(keys::SCHEMA).unwrap().unwrap()).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Once is enough: a second open finds nothing to do.
        assert_eq!(upgrade(&store).unwrap().statement_lines, 0);
    }

    #[test]
    fn an_upgrade_cut_short_resumes() {
        let store = v1_store(&[(1, 5), (2, 70_000), (1, 200_000)]);
        // As if a batch had been applied, then the power cut.
        store
            .apply(&[
                Op::Delete(v1_line(1, 5)),
                Op::Put(keys::statement(&[1; 16], 5), Vec::new()),
            ])
            .unwrap();
        assert_eq!(upgrade(&store).unwrap().statement_lines, 2);
        let moved: Vec<Vec<u8>> = store
            .scan_prefix(keys::STATEMENT)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            moved,
            vec![
                keys::statement(&[1; 16], 5),
                keys::statement(&[2; 16], 70_000),
                keys::statement(&[1; 16], 200_000),
            ]
        );
    }

    #[test]
    fn a_newer_store_is_refused_and_left_alone() {
        let store = MemStore::new();
        store
            .apply(&[
                Op::Put(keys::SCHEMA.to_vec(), encode_value(&(SCHEMA_VERSION + 1))),
                Op::Put(v1_line(1, 1), Vec::new()),
            ])
            .unwrap();
        let err = upgrade(&store).unwrap_err();
        assert!(matches!(err, StoreError::Newer { .. }), "{err}");
        assert!(err.to_string().contains("newer than this build reads"));
        assert_eq!(store.scan_prefix(keys::STATEMENT_V1).unwrap().len(), 1);
    }

    #[test]
    fn a_malformed_line_is_named_and_nothing_is_marked_done() {
        let store = v1_store(&[(1, 5)]);
        store
            .apply(&[Op::Put(b"w/short".to_vec(), Vec::new())])
            .unwrap();
        let err = upgrade(&store).unwrap_err();
        assert!(err.to_string().contains("w/short"), "{err}");
        let v: u32 =
            decode_value(keys::SCHEMA, &store.get(keys::SCHEMA).unwrap().unwrap()).unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn an_empty_store_is_left_alone() {
        let store = MemStore::new();
        assert_eq!(upgrade(&store).unwrap(), Upgraded::default());
        assert!(store.get(keys::SCHEMA).unwrap().is_none());
    }
}
