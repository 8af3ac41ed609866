//! The caisse's key material in a backup, only when asked (`caisse backup
//! --with-key`): `caisse.key` and `config.toml` sealed under a passphrase in
//! a file beside the backup (`FILE.key`). The key is derived from the
//! passphrase with Argon2id (a random salt per file) and the bundle sealed
//! with XChaCha20-Poly1305 (a random nonce): a wrong passphrase or a
//! changed byte is refused, never half-restored.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use argon2::Argon2;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const MAGIC: &[u8] = b"caisse-key-backup/1\n";
/// The files sealed, in order.
const FILES: [&str; 2] = ["caisse.key", "config.toml"];

/// Where the key bundle of backup `file` goes.
pub fn bundle_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".key");
    PathBuf::from(p)
}

/// The passphrase: from `file` (its first line), else `CAISSE_BACKUP_PASSPHRASE`.
pub fn passphrase(file: Option<&Path>) -> Result<String> {
    let p = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the passphrase file {}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => std::env::var("CAISSE_BACKUP_PASSPHRASE").map_err(|_| {
            anyhow!("give the passphrase with --passphrase-file FILE or the CAISSE_BACKUP_PASSPHRASE environment variable")
        })?,
    };
    if p.chars().count() < 12 {
        bail!("the passphrase must be at least 12 characters (a few words is best)");
    }
    Ok(p)
}

fn cipher(passphrase: &str, salt: &[u8]) -> Result<XChaCha20Poly1305> {
    let mut key = [0u8; 32];
    Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| anyhow!("deriving the key: {e}"))?;
    Ok(XChaCha20Poly1305::new(&key.into()))
}

/// Seal `dir`'s key and config into `out` (readable by its owner only,
/// never overwriting).
pub fn seal(dir: &Path, out: &Path, passphrase: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut plain = Vec::new();
    for name in FILES {
        let bytes = std::fs::read(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))?;
        plain.extend_from_slice(&u32::try_from(bytes.len())?.to_be_bytes());
        plain.extend_from_slice(&bytes);
    }
    let random = caisse_node::daemon::random32();
    let (salt, nonce) = (&random[..16], caisse_node::daemon::random32());
    let nonce = XNonce::from_slice(&nonce[..24]);
    let sealed = cipher(passphrase, salt)?
        .encrypt(nonce, plain.as_ref())
        .map_err(|_| anyhow!("sealing the key failed"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    f.write_all(MAGIC)?;
    f.write_all(salt)?;
    f.write_all(nonce)?;
    f.write_all(&sealed)?;
    f.sync_all()?;
    Ok(())
}

/// The files sealed in a bundle, opened.
pub struct Unsealed(Vec<(&'static str, Vec<u8>)>);

/// Open the bundle `file` with `passphrase` (nothing written yet).
pub fn unseal(file: &Path, passphrase: &str) -> Result<Unsealed> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let body = bytes
        .strip_prefix(MAGIC)
        .filter(|b| b.len() > 16 + 24)
        .ok_or_else(|| anyhow!("{} is not a caisse key bundle", file.display()))?;
    let (salt, rest) = body.split_at(16);
    let (nonce, sealed) = rest.split_at(24);
    let plain = cipher(passphrase, salt)?
        .decrypt(XNonce::from_slice(nonce), sealed)
        .map_err(|_| anyhow!("wrong passphrase, or {} was changed", file.display()))?;
    let mut parts = Vec::new();
    let mut at = 0usize;
    for name in FILES {
        let len = plain
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_be_bytes(b) as usize)
            .ok_or_else(|| anyhow!("the key bundle is cut short"))?;
        let content = plain
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| anyhow!("the key bundle is cut short"))?;
        parts.push((name, content.to_vec()));
        at += 4 + len;
    }
    Ok(Unsealed(parts))
}

/// Write unsealed files into `dir` (mode 0600), refusing to overwrite any.
pub fn write(parts: &Unsealed, dir: &Path) -> Result<Vec<String>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let parts = &parts.0;
    for (name, _) in parts {
        if dir.join(name).exists() {
            bail!(
                "{} exists: restoring the key never overwrites one",
                dir.join(name).display()
            );
        }
    }
    for (name, content) in parts {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    Ok(parts.iter().map(|(n, _)| (*n).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_back_only_with_the_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("caisse.key"), "secret key bytes").unwrap();
        std::fs::write(src.join("config.toml"), "name = \"x\"").unwrap();
        let bundle = tmp.path().join("b.key");
        seal(&src, &bundle, "correct horse battery").unwrap();
        let raw = std::fs::read(&bundle).unwrap();
        assert!(
            !raw.windows(6).any(|w| w == b"secret"),
            "sealed, not copied"
        );
        let open = |b: &Path, d: &Path, p: &str| unseal(b, p).and_then(|u| write(&u, d));
        let e = open(&bundle, &dst, "wrong horse battery")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong passphrase"), "{e}");
        assert!(!dst.join("caisse.key").exists());
        open(&bundle, &dst, "correct horse battery").unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("caisse.key")).unwrap(),
            "secret key bytes"
        );
        let e = open(&bundle, &dst, "correct horse battery")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never overwrites"), "{e}");
        // A changed byte is refused.
        let mut bad = raw.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(tmp.path().join("bad.key"), bad).unwrap();
        let e = open(
            &tmp.path().join("bad.key"),
            &tmp.path().join("src"),
            "correct horse battery",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("changed"), "{e}");
    }
}
