//! The producer's side of the command line, offline: a key of its own and
//! a dossier signed with it. Nothing here talks to a node; `caisse producer
//! publish` sends what `sign` makes.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use caisse_protocol::criteria::Tag;
use caisse_protocol::producer::{Certificate, Evidence, GeoPoint, ProducerDossier, Product};
use caisse_protocol::{Category, Day, Envelope, FederationId, ProducerId, SecretKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A dossier as the producer writes it (TOML).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DossierFile {
    version: u32,
    name: String,
    siret: String,
    commune: String,
    postcode: String,
    /// The commune's centre, `LAT,LON` in degrees.
    location: String,
    products: Vec<ProductFile>,
    #[serde(default)]
    certificates: Vec<CertificateFile>,
    #[serde(default)]
    practices: Vec<String>,
    #[serde(default)]
    price_fairness_pct: Option<u32>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    evidence: Vec<EvidenceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductFile {
    name: String,
    category: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateFile {
    label: String,
    number: String,
    certifier: String,
    valid_from: Day,
    valid_until: Day,
}

/// Evidence: a document on the producer's machine (only its hash is
/// published) or a hash already computed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceFile {
    attribute: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
}

/// Write a new producer key to `out` (mode 0600, refusing to overwrite);
/// returns its producer id.
pub fn keygen(out: &Path) -> Result<(ProducerId, String)> {
    let secret = SecretKey::from_bytes(caisse_node::daemon::random32());
    write_key(out, &hex::encode(secret.to_bytes()))?;
    let public = secret.public();
    Ok((ProducerId::of_key(&public), public.to_string()))
}

/// Write a producer key (hex) to `out`, mode 0600, never overwriting.
pub fn write_key(out: &Path, hex_key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (it may exist already: a key is never overwritten)",
                out.display()
            )
        })?;
    writeln!(f, "{}", hex_key.trim())?;
    f.sync_all()?;
    Ok(())
}

/// Read a producer key file.
pub fn read_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the producer key {}", path.display()))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            anyhow!(
                "{} is not a producer key (64 hex digits, as `caisse producer keygen` writes)",
                path.display()
            )
        })?;
    Ok(SecretKey::from_bytes(bytes))
}

/// Read `dossier` (TOML), hash its evidence files, sign it with `key` for
/// `federation`; returns the dossier and the envelope's bytes.
pub fn sign(
    key: &SecretKey,
    dossier: &Path,
    federation: &FederationId,
) -> Result<(ProducerDossier, Vec<u8>)> {
    let text = std::fs::read_to_string(dossier)
        .with_context(|| format!("cannot read {}", dossier.display()))?;
    let f: DossierFile =
        toml::from_str(&text).with_context(|| format!("reading {}", dossier.display()))?;
    let base = dossier.parent().unwrap_or(Path::new("."));
    let tag = |s: &str| Tag::new(s).map_err(|e| anyhow!("{e}"));
    let mut evidence = Vec::new();
    for e in f.evidence {
        let sha256 = match (e.file, e.sha256) {
            (Some(file), None) => {
                let p = base.join(&file);
                let bytes =
                    std::fs::read(&p).with_context(|| format!("evidence file {}", p.display()))?;
                hex::encode(Sha256::digest(&bytes))
            }
            (None, Some(h)) => h,
            _ => bail!(
                "evidence for {}: give either `file` (hashed here, never sent) or `sha256`",
                e.attribute
            ),
        };
        evidence.push(Evidence {
            attribute: e.attribute,
            sha256,
        });
    }
    let d = ProducerDossier {
        producer: key.public(),
        version: f.version,
        name: f.name,
        siret: f.siret,
        commune: f.commune,
        postcode: f.postcode,
        location: GeoPoint::parse(&f.location).map_err(|e| anyhow!("location: {e}"))?,
        products: f
            .products
            .into_iter()
            .map(|p| {
                Ok(Product {
                    name: p.name,
                    category: Category::new(&p.category).map_err(|e| anyhow!("{e}"))?,
                })
            })
            .collect::<Result<_>>()?,
        certificates: f
            .certificates
            .into_iter()
            .map(|c| {
                Ok(Certificate {
                    label: tag(&c.label)?,
                    number: c.number,
                    certifier: c.certifier,
                    valid_from: c.valid_from,
                    valid_until: c.valid_until,
                })
            })
            .collect::<Result<_>>()?,
        practices: f
            .practices
            .iter()
            .map(|p| tag(p))
            .collect::<Result<BTreeSet<_>>>()?,
        price_fairness_pct: f.price_fairness_pct,
        origin: f.origin,
        evidence,
        issued_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    use caisse_protocol::signed::Message;
    d.validate()
        .map_err(|e| anyhow!("the dossier is not valid: {e}"))?;
    let env = Envelope::seal(key, federation, &d).map_err(|e| anyhow!("signing: {e}"))?;
    let bytes = env.to_bytes().map_err(|e| anyhow!("encoding: {e}"))?;
    Ok((d, bytes))
}
