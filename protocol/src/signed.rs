//! Keys and signed statements.
//!
//! Every statement a caisse makes to others travels in an [`Envelope`]: the
//! message kind, the signer's public key, the exact body bytes and an
//! ed25519 signature. The signature covers a domain-separation prefix (the
//! protocol name, the message kind and version, the federation id) followed
//! by the body, so a signature made for one kind of message, version or
//! federation is never valid for another. Verification uses
//! `verify_strict` over the exact received bytes; nothing is re-encoded
//! before verifying.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::encoding::{self, DecodeError, EncodeError};
use crate::ids::{CaisseId, ContentId, IdError, byte_array};

/// A secret signing key (of a caisse, producer, outlet or card).
///
/// Deliberately not `Debug`, `Display` or `Serialize`: it is written to disk
/// only by the node's key file code, via [`SecretKey::to_bytes`].
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A key from 32 secret bytes (from the OS random source, or a fixed
    /// seed in tests).
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&bytes))
    }
    /// The 32 secret bytes, to store in a key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
    /// The X25519 secret scalar of this key, which opens what is sealed to
    /// the Montgomery form of its public key (see [`crate::pin_seal`]).
    pub(crate) fn box_scalar(&self) -> [u8; 32] {
        self.0.to_scalar_bytes()
    }
    /// The caisse id of this key (for a caisse key).
    pub fn caisse_id(&self) -> CaisseId {
        CaisseId::from_bytes(self.0.verifying_key().to_bytes())
    }
    /// Sign raw bytes. Prefer [`Envelope::seal`], which adds domain separation.
    pub fn sign_raw(&self, bytes: &[u8]) -> Signature {
        Signature(self.0.sign(bytes).to_bytes())
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "byte_array")] [u8; 32]);

impl PublicKey {
    /// A public key from its 32 bytes (not checked until used to verify).
    pub const fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The caisse whose key this is.
    pub const fn caisse_id(&self) -> CaisseId {
        CaisseId::from_bytes(self.0)
    }
    /// Check `signature` over `bytes` with strict (non-malleable) verification.
    pub fn verify_raw(&self, bytes: &[u8], signature: &Signature) -> Result<(), VerifyError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| VerifyError::BadKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(bytes, &sig)
            .map_err(|_| VerifyError::BadSignature)
    }
}

/// Signatures already verified in this process, by the hash of what was
/// verified (key, signature and signed bytes): a federation document is
/// read again after every change, and every statement in it was checked the
/// time before. A hit means these exact bytes passed `verify_strict`; SHA-256
/// makes a false hit infeasible. Bounded: emptied when full.
static VERIFIED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<[u8; 32]>>> =
    std::sync::LazyLock::new(Default::default);

/// Signatures remembered at most by [`VERIFIED`].
const MAX_VERIFIED: usize = 1 << 18;

fn verify_memoised(
    signer: &PublicKey,
    signed: &[u8],
    signature: &Signature,
) -> Result<(), VerifyError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(signer.0);
    h.update(signature.0);
    h.update(signed);
    let key: [u8; 32] = h.finalize().into();
    if VERIFIED.lock().is_ok_and(|v| v.contains(&key)) {
        return Ok(());
    }
    signer.verify_raw(signed, signature)?;
    if let Ok(mut v) = VERIFIED.lock() {
        if v.len() >= MAX_VERIFIED {
            v.clear();
        }
        v.insert(key);
    }
    Ok(())
}

impl From<CaisseId> for PublicKey {
    fn from(c: CaisseId) -> PublicKey {
        PublicKey(*c.as_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key:{}", hex::encode(&self.0[..4]))
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "byte_array")] [u8; 64]);

impl Signature {
    /// A signature from its 64 bytes.
    pub const fn from_bytes(bytes: [u8; 64]) -> Signature {
        Signature(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{}", hex::encode(&self.0[..4]))
    }
}

/// The name of a federation of caisses, bound into every signature so that
/// statements of one federation (or testnet) are worthless in another.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FederationId(String);

impl FederationId {
    /// The longest federation name accepted.
    pub const MAX_LEN: usize = 64;

    /// A federation id: 1-64 chars of `a-z 0-9 - . _`.
    pub fn new(name: &str) -> Result<FederationId, IdError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
            });
        if ok {
            Ok(FederationId(name.to_owned()))
        } else {
            Err(IdError::Federation(name.to_owned()))
        }
    }
    /// The federation name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FederationId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        FederationId::new(&s)
    }
}

impl From<FederationId> for String {
    fn from(f: FederationId) -> String {
        f.0
    }
}

impl fmt::Display for FederationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FederationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FederationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        FederationId::new(s.trim())
    }
}

/// The kinds of signed statement. The tag is part of the signed domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageKind {
    /// [`crate::messages::CaisseProfile`]
    CaisseProfile,
    /// [`crate::messages::CriteriaVersion`]
    CriteriaVersion,
    /// [`crate::messages::Accreditation`]
    Accreditation,
    /// [`crate::messages::Revocation`]
    Revocation,
    /// [`crate::messages::PurchaseRequest`]
    PurchaseRequest,
    /// [`crate::messages::PurchaseReceipt`]
    PurchaseReceipt,
    /// [`crate::messages::PurchaseDecline`]
    PurchaseDecline,
    /// [`crate::messages::SettlementStatement`]
    SettlementStatement,
    /// [`crate::messages::Acknowledgement`]
    Acknowledgement,
    /// [`crate::messages::Dispute`]
    Dispute,
    /// [`crate::messages::TransferSettled`]
    TransferSettled,
    /// [`crate::messages::Decision`]
    Decision,
    /// [`crate::messages::DocumentHeads`]
    DocumentHeads,
    /// [`crate::producer::ProducerDossier`]
    ProducerDossier,
    /// [`crate::producer::ProducerSales`]
    ProducerSales,
    /// [`crate::producer::CaisseLocation`]
    CaisseLocation,
    /// [`crate::producer::CaisseBank`]
    CaisseBank,
    /// [`crate::messages::CaisseAddresses`]
    CaisseAddresses,
}

impl MessageKind {
    /// The stable name used in the signature domain.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::CaisseProfile => "caisse-profile",
            MessageKind::CriteriaVersion => "criteria-version",
            MessageKind::Accreditation => "accreditation",
            MessageKind::Revocation => "revocation",
            MessageKind::PurchaseRequest => "purchase-request",
            MessageKind::PurchaseReceipt => "purchase-receipt",
            MessageKind::PurchaseDecline => "purchase-decline",
            MessageKind::SettlementStatement => "settlement-statement",
            MessageKind::Acknowledgement => "acknowledgement",
            MessageKind::Dispute => "dispute",
            MessageKind::TransferSettled => "transfer-settled",
            MessageKind::Decision => "decision",
            MessageKind::DocumentHeads => "document-heads",
            MessageKind::ProducerDossier => "producer-dossier",
            MessageKind::ProducerSales => "producer-sales",
            MessageKind::CaisseLocation => "caisse-location",
            MessageKind::CaisseBank => "caisse-bank",
            MessageKind::CaisseAddresses => "caisse-addresses",
        }
    }
}

/// A statement type that can be signed and sent between caisses.
pub trait Message: Serialize + DeserializeOwned {
    /// Which kind of statement this is.
    const KIND: MessageKind;
    /// The version of this statement's encoding, part of the signed domain.
    const VERSION: u16 = 1;
    /// The largest accepted encoded body, in bytes.
    const MAX_SIZE: usize;
    /// The key that must have signed it (the caisse that makes the statement).
    fn author(&self) -> PublicKey;
    /// Semantic checks beyond decoding (amounts add up, lists bounded…).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The bytes every signature of `kind` in `federation` is made over, before the body.
pub fn domain(kind: MessageKind, version: u16, federation: &FederationId) -> Vec<u8> {
    format!(
        "caisse-ssa/{}/v{}/{}\0",
        kind.name(),
        version,
        federation.as_str()
    )
    .into_bytes()
}

/// Why a signed statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The envelope is of another kind than expected.
    #[error("expected a {expected} statement, got a {got}")]
    WrongKind {
        /// The expected kind's name.
        expected: &'static str,
        /// The received kind's name.
        got: &'static str,
    },
    /// The signer's key bytes are not a valid ed25519 key.
    #[error("the signer's public key is invalid")]
    BadKey,
    /// The signature does not verify over the domain and body.
    #[error("bad signature")]
    BadSignature,
    /// The body does not decode.
    #[error("bad body: {0}")]
    Decode(#[from] DecodeError),
    /// Signed by someone other than the statement's author.
    #[error("signed by {signer:?} but the statement is by {author:?}")]
    SignerMismatch {
        /// Who signed.
        signer: PublicKey,
        /// Who the statement says made it.
        author: PublicKey,
    },
    /// Decodes and verifies but breaks a rule of its type.
    #[error("invalid statement: {0}")]
    Invalid(String),
}

/// A signed statement as it travels: kind, signer, exact body bytes, signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What kind of statement the body holds.
    pub kind: MessageKind,
    /// Who signed.
    pub signer: PublicKey,
    /// The exact encoded body that was signed.
    pub body: Vec<u8>,
    /// Signature over `domain(kind, version, federation) || body`.
    pub signature: Signature,
}

/// Bytes an envelope adds around its body: kind, key, signature, length prefix.
pub const ENVELOPE_OVERHEAD: usize = 1 + 32 + 64 + 8;

impl Envelope {
    /// Encode and sign `message` as `key` for `federation`.
    pub fn seal<T: Message>(
        key: &SecretKey,
        federation: &FederationId,
        message: &T,
    ) -> Result<Envelope, EncodeError> {
        let body = encoding::encode(message, T::MAX_SIZE)?;
        let mut signed = domain(T::KIND, T::VERSION, federation);
        signed.extend_from_slice(&body);
        Ok(Envelope {
            kind: T::KIND,
            signer: key.public(),
            signature: key.sign_raw(&signed),
            body,
        })
    }

    /// Verify and decode as a `T` of `federation`.
    ///
    /// Checks, in order: the kind, the body size, the signature (strict,
    /// over the exact bytes), the decoding (canonical, no trailing bytes),
    /// that the signer is the statement's author, and the type's own rules.
    pub fn open<T: Message>(&self, federation: &FederationId) -> Result<Verified<T>, VerifyError> {
        if self.kind != T::KIND {
            return Err(VerifyError::WrongKind {
                expected: T::KIND.name(),
                got: self.kind.name(),
            });
        }
        if self.body.len() > T::MAX_SIZE {
            return Err(VerifyError::Decode(DecodeError::Oversized {
                len: self.body.len(),
                max: T::MAX_SIZE,
            }));
        }
        let mut signed = domain(T::KIND, T::VERSION, federation);
        signed.extend_from_slice(&self.body);
        verify_memoised(&self.signer, &signed, &self.signature)?;
        let message: T = encoding::decode(&self.body, T::MAX_SIZE)?;
        let author = message.author();
        if author != self.signer {
            return Err(VerifyError::SignerMismatch {
                signer: self.signer,
                author,
            });
        }
        message.validate().map_err(VerifyError::Invalid)?;
        Ok(Verified {
            id: ContentId::of(&signed),
            signer: self.signer,
            message,
        })
    }

    /// The envelope's own wire bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        encoding::encode(self, MAX_ENVELOPE_SIZE)
    }

    /// Decode an envelope from wire bytes (the signature is checked by [`Envelope::open`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        encoding::decode(bytes, MAX_ENVELOPE_SIZE)
    }

    /// The content id the statement will have once opened: the hash of the
    /// signed bytes. Lets a receiver deduplicate before verifying.
    pub fn content_id(&self, federation: &FederationId, version: u16) -> ContentId {
        let mut signed = domain(self.kind, version, federation);
        signed.extend_from_slice(&self.body);
        ContentId::of(&signed)
    }
}

/// The largest envelope accepted on the wire (the largest body plus overhead).
pub const MAX_ENVELOPE_SIZE: usize = 64 * 1024 + ENVELOPE_OVERHEAD;

/// A statement whose signature, encoding and rules have been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T> {
    /// Hash of the exact signed bytes: the statement's unique id.
    pub id: ContentId,
    /// Who signed it.
    pub signer: PublicKey,
    /// The decoded statement.
    pub message: T,
}

impl FromStr for PublicKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        s.parse::<CaisseId>().map(PublicKey::from)
    }
}
