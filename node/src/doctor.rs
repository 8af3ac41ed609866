//! `caisse doctor`: what is wrong with a data directory, and what to do.
//!
//! Each check says ok, warn or fail, with the fix in words: file modes,
//! the config, the key, the store (opened when the node is stopped; asked
//! through the API when it runs, since sled locks its files), the key
//! matching the store's profile, peers connected, the last clean audit
//! of the books, the clock.

use std::path::Path;

use serde::Serialize;

use crate::client::{Client, TokenFile};
use crate::config::Config;
use crate::daemon::{NodeInfo, load_key};
use crate::store::{Engine, decode_value, keys};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but should be looked at.
    Warn,
    /// Broken: the node will not run right.
    Fail,
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found, and what to do.
    pub detail: String,
}

fn check(what: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        what,
        status,
        detail: detail.into(),
    }
}

/// The node running on the data directory `dir`, if one is.
pub fn running(dir: &Path) -> Option<NodeInfo> {
    let info = NodeInfo::read(dir).ok()?;
    let pid = i32::try_from(info.pid).ok()?;
    // SAFETY: signal 0 only asks whether the process exists; EPERM means
    // it exists under another user (the service's).
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(info)
}

/// Days after which an audit of the whole journal is overdue: a month
/// (the audit from the checkpoint does not read again the entries earlier
/// audits verified; a full one does). Every clean audit keeps the time of
/// the last full one, so this also warns when no audit ran for a month.
pub const AUDIT_DUE_DAYS: u64 = 31;

/// When the books were last audited clean, from the audit's checkpoint
/// at `path` (readable whether the node runs or not), at Unix time `now`.
fn last_audit(path: &Path, now: u64) -> Check {
    use crate::audit::Unusable;
    const WHAT: &str = "ledger audit";
    let day = |t: u64| caisse_protocol::Day::from_unix(t);
    let days_ago = |t: u64| now.saturating_sub(t) / 86_400;
    let c = match crate::audit::read(path) {
        Ok(c) => c,
        Err(Unusable::Missing) => {
            return check(
                WHAT,
                Status::Warn,
                "no clean audit of the books yet: run `caisse ledger check` (the first reads the whole journal, later ones what followed)",
            );
        }
        Err(Unusable::Unreadable(e)) => {
            return check(
                WHAT,
                Status::Warn,
                format!(
                    "{} cannot be read ({e}): the next `caisse ledger check` reads the whole journal; check the file's owner",
                    path.display()
                ),
            );
        }
        Err(why) => {
            return check(
                WHAT,
                Status::Warn,
                format!(
                    "{} is damaged ({why:?}): nothing to repair, the next `caisse ledger check` reads the whole journal and writes it again",
                    path.display()
                ),
            );
        }
    };
    if c.full_at == 0 || days_ago(c.full_at) > AUDIT_DUE_DAYS {
        let when = if c.full_at == 0 {
            "never".to_string()
        } else {
            format!("on {} ({} days ago)", day(c.full_at), days_ago(c.full_at))
        };
        check(
            WHAT,
            Status::Warn,
            format!(
                "the whole journal was last read by an audit {when}; the audits since read only the entries that followed theirs: run `caisse ledger check --full` (about 4 s a million entries)"
            ),
        )
    } else {
        check(
            WHAT,
            Status::Ok,
            format!(
                "clean on {} up to journal entry {}; the whole journal read on {}",
                day(c.made_at),
                c.upto,
                day(c.full_at)
            ),
        )
    }
}

/// Diagnose the data directory `dir`.
pub async fn diagnose(dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    if !dir.join("caisse.key").exists() {
        out.push(check(
            "data directory",
            Status::Fail,
            format!(
                "{} holds no caisse (no caisse.key): give the right --data-dir, or create one with `caisse init`",
                dir.display()
            ),
        ));
        return out;
    }
    let loose: Vec<String> = crate::daemon::loose_paths(dir)
        .unwrap_or_default()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    out.push(if loose.is_empty() {
        check(
            "file modes",
            Status::Ok,
            "the data directory is private (0700, files 0600)",
        )
    } else {
        check(
            "file modes",
            Status::Fail,
            format!(
                "readable by other accounts: {}; run `chmod -R go-rwx {}` (the node also tightens them at start)",
                loose.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                dir.display()
            ),
        )
    });
    let config = match Config::load(&dir.join("config.toml")) {
        Ok(c) => {
            out.push(check(
                "config",
                Status::Ok,
                format!("config.toml reads: {}", c.name),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(check(
                "config",
                Status::Fail,
                format!("{e}; fix the line named, or compare with a fresh `caisse init`"),
            ));
            None
        }
    };
    let key = match load_key(dir) {
        Ok(k) => {
            out.push(check(
                "key",
                Status::Ok,
                format!("caisse {}", k.caisse_id().short()),
            ));
            Some(k)
        }
        Err(e) => {
            out.push(check(
                "key",
                Status::Fail,
                format!(
                    "{e}: restore caisse.key from a backup (without it the caisse cannot sign)"
                ),
            ));
            None
        }
    };
    match running(dir) {
        Some(info) => {
            out.push(check(
                "store",
                Status::Ok,
                format!("in use by the running node (pid {})", info.pid),
            ));
            if let Some(k) = &key
                && k.caisse_id() != info.caisse_id
            {
                out.push(check(
                    "key matches",
                    Status::Fail,
                    "the running node is another caisse than caisse.key: stop it and check which key belongs here",
                ));
            }
            match Client::from_data_dir(dir, TokenFile::Admin) {
                Ok(c) => match c.get::<serde_json::Value>("/api/v1/network").await {
                    Ok(n) => {
                        let connected = n["connected"].as_array().map_or(0, Vec::len);
                        let expects_peers =
                            config.as_ref().is_some_and(|c| !c.bootstrap.is_empty());
                        out.push(if connected > 0 || !expects_peers {
                                check(
                                    "peers",
                                    Status::Ok,
                                    format!("{connected} peer(s) connected"),
                                )
                            } else {
                                check(
                                    "peers",
                                    Status::Warn,
                                    "no peer connected although bootstrap addresses are configured: check them in config.toml and that the listen port is open in the firewall",
                                )
                            });
                    }
                    Err(e) => out.push(check(
                        "api",
                        Status::Fail,
                        format!("the node does not answer: {e}; see its log"),
                    )),
                },
                Err(e) => out.push(check(
                    "api",
                    Status::Fail,
                    format!("{e}: the admin token file is missing or unreadable"),
                )),
            }
        }
        None => match crate::store::open_existing(dir) {
            Ok(store) => {
                let profile =
                    store.get(keys::PROFILE).ok().flatten().and_then(|b| {
                        decode_value::<crate::caisse::Profile>(keys::PROFILE, &b).ok()
                    });
                match (profile, &key) {
                    (Some(p), Some(k)) if p.id == k.caisse_id() => out.push(check(
                        "store",
                        Status::Ok,
                        format!("opens; caisse {} created {}", p.name, p.created),
                    )),
                    (Some(_), Some(_)) => out.push(check(
                        "store",
                        Status::Fail,
                        "the store belongs to another caisse than caisse.key: put the matching key back",
                    )),
                    _ => out.push(check(
                        "store",
                        Status::Fail,
                        "the store opens but has no profile: restore it from a backup",
                    )),
                }
                if Engine::of(dir) == Some(Engine::Sled) {
                    out.push(check(
                        "store engine",
                        Status::Warn,
                        "sled, which lost acknowledged purchases in power-cut tests: run `caisse store convert --to redb` while the node is stopped",
                    ));
                }
                out.push(check(
                    "node",
                    Status::Warn,
                    "not running: start it with `caisse node` (or `systemctl start caisse`); `caisse ledger check` audits the books once it runs",
                ));
            }
            Err(e) => out.push(check(
                "store",
                Status::Fail,
                format!("does not open: {e}; restore the store from a backup"),
            )),
        },
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out.push(last_audit(&dir.join(crate::audit::FILE), now));
    let year = caisse_protocol::Day::from_unix(now).ymd().0;
    out.push(if (2024..2100).contains(&year) {
        check("clock", Status::Ok, format!("system date {}", caisse_protocol::Day::from_unix(now)))
    } else {
        check(
            "clock",
            Status::Fail,
            format!("the system date is in {year}: set the clock (NTP), signatures and periods depend on it"),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::AuditCheckpoint;

    const DAY: u64 = 86_400;

    fn saved(dir: &Path, full_at: u64, made_at: u64) -> std::path::PathBuf {
        let path = dir.join(crate::audit::FILE);
        crate::audit::save(
            &path,
            &AuditCheckpoint {
                upto: 0,
                prev_hash: [0; 32],
                balances: Vec::new(),
                full_at,
                made_at,
            },
        )
        .unwrap();
        path
    }

    /// The audit check warns with the command to run when no audit came
    /// out clean, when the file is damaged, and when the whole journal
    /// was last read over a month ago (or never: an older node's file).
    #[test]
    fn an_overdue_audit_is_named_with_its_command() {
        let tmp = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let path = tmp.path().join(crate::audit::FILE);
        let missing = last_audit(&path, now);
        assert_eq!(missing.status, Status::Warn);
        assert!(
            missing.detail.contains("`caisse ledger check`"),
            "{missing:?}"
        );

        let fresh = last_audit(&saved(tmp.path(), now - 2 * DAY, now - DAY), now);
        assert_eq!(fresh.status, Status::Ok, "{fresh:?}");

        let due = now - (AUDIT_DUE_DAYS + 1) * DAY;
        let full_old = last_audit(&saved(tmp.path(), due, now - DAY), now);
        assert_eq!(full_old.status, Status::Warn);
        assert!(
            full_old.detail.contains("--full") && full_old.detail.contains("32 days ago"),
            "{full_old:?}"
        );
        let never_full = last_audit(&saved(tmp.path(), 0, now - DAY), now);
        assert!(
            never_full.detail.contains("never") && never_full.detail.contains("--full"),
            "{never_full:?}"
        );

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = last_audit(&path, now);
        assert_eq!(damaged.status, Status::Warn);
        assert!(
            damaged.detail.contains("damaged") && damaged.detail.contains("whole journal"),
            "{damaged:?}"
        );
    }
}
