//! `caisse doctor`: what is wrong with a data directory, and what to do.
//!
//! Each check says ok, warn or fail, with the fix in words: file modes,
//! the config, the key, the store (opened when the node is stopped; asked
//! through the API when it runs, since sled locks its files), the key
//! matching the store's profile, peers connected, the clock.

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
