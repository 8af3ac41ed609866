//! What a role may see of personal identifiers in an API answer.
//!
//! The admin sees member and card ids as stored. The auditor (the
//! treasurer's accountant) sees each member id and card id replaced by a
//! stable pseudonym, keyed by a secret derived from the caisse's key, so an
//! account can be followed from page to page and from one audit to the next
//! without ever learning who it is. The observer is not given answers that
//! name member accounts at all (see `api.rs`), and anything it is given is
//! scrubbed here too.

use caisse_protocol::CardId;
use caisse_protocol::ids::MemberId;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Replaces member and card ids in JSON answers by keyed pseudonyms.
#[derive(Clone)]
pub struct Pseudonyms {
    key: [u8; 32],
}

impl Pseudonyms {
    /// Pseudonyms keyed by `secret` (derive it from the caisse key so they
    /// stay stable across restarts; never the PIN pepper itself).
    pub fn new(secret: &[u8; 32]) -> Pseudonyms {
        let mut h = Sha256::new();
        h.update(b"caisse-audit-pseudonyms/v1");
        h.update(secret);
        Pseudonyms {
            key: h.finalize().into(),
        }
    }

    fn tag(&self, kind: &str, raw: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(kind.as_bytes());
        h.update(raw.as_bytes());
        hex::encode(&h.finalize()[..8])
    }

    /// Rewrite every string in `v` so that each member id (`mem_…`) becomes
    /// `acct_…` and each card id (`card_…`) becomes `cardref_…`, wherever it
    /// appears inside the string (`member:mem_…` included).
    pub fn apply(&self, v: &mut Value) {
        match v {
            Value::String(s) if s.contains(MemberId::PREFIX) || s.contains(CardId::PREFIX) => {
                *s = self.text(s);
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.apply(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.apply(x)),
            _ => {}
        }
    }

    /// One piece of text with its member and card ids pseudonymised, as
    /// [`Self::apply`] does to every string of a JSON value.
    pub fn text(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        loop {
            let next = [(MemberId::PREFIX, "acct_"), (CardId::PREFIX, "cardref_")]
                .into_iter()
                .filter_map(|(p, r)| rest.find(p).map(|i| (i, p, r)))
                .min_by_key(|(i, _, _)| *i);
            let Some((i, prefix, replacement)) = next else {
                out.push_str(rest);
                return out;
            };
            out.push_str(&rest[..i]);
            let after = &rest[i + prefix.len()..];
            let hex_len = after
                .bytes()
                .take_while(u8::is_ascii_hexdigit)
                .count()
                .min(32);
            if hex_len == 32 {
                out.push_str(replacement);
                out.push_str(&self.tag(prefix, &after[..32]));
                rest = &after[32..];
            } else {
                out.push_str(prefix);
                rest = after;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_stable_pseudonyms() {
        let p = Pseudonyms::new(&[7; 32]);
        let m = MemberId::from_bytes([1; 16]);
        let mut v = serde_json::json!({
            "account": format!("member:{m}"),
            "kind": { "member": m.to_string(), "card": format!("card_{}", "ab".repeat(16)) },
            "other": "mem_short stays",
        });
        p.apply(&mut v);
        let text = v.to_string();
        assert!(!text.contains(&m.to_string()), "{text}");
        assert!(!text.contains("card_"), "{text}");
        assert_eq!(v["other"], "mem_short stays", "a partial id is left alone");
        let acct = v["kind"]["member"].as_str().unwrap().to_owned();
        assert!(acct.starts_with("acct_"));
        assert_eq!(v["account"], format!("member:{acct}"));
        assert!(v["kind"]["card"].as_str().unwrap().starts_with("cardref_"));
        // Another key, other pseudonyms.
        let mut w = serde_json::json!(m.to_string());
        Pseudonyms::new(&[8; 32]).apply(&mut w);
        assert_ne!(w.as_str().unwrap(), acct);
    }
}
