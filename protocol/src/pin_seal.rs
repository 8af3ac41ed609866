//! A PIN sealed to the card's home caisse.
//!
//! When a member pays at another caisse's outlet, the PIN typed there must
//! reach the home caisse (which alone checks it) without the host being
//! able to read it, keep it or replay it with another request. The host
//! seals it with a libsodium-compatible *sealed box* (`crypto_box`: an
//! ephemeral X25519 key, XSalsa20-Poly1305) to the home caisse's X25519
//! key, which is the Montgomery form of its ed25519 caisse key: every node
//! knows it from the caisse id alone (the key published in the caisse's
//! signed profile), and only the home caisse, holding the ed25519 secret,
//! can open it. Each sealing draws a fresh ephemeral key, so two requests
//! never carry the same bytes, and a corrected PIN is a new request.
//!
//! The randomness comes from the caller as a 32-byte seed (the caisse core
//! draws no randomness of its own), stretched with ChaCha20.

use crypto_box::{PublicKey as BoxPublicKey, SecretKey as BoxSecretKey};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use crate::ids::CaisseId;
use crate::signed::SecretKey;

/// The most bytes a sealed PIN takes (8 digits + 48 bytes of box).
pub const MAX_SEALED_PIN: usize = 8 + 48;

/// Why a PIN could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinSealError {
    /// The home caisse's id is not a valid ed25519 key.
    #[error("the home caisse's key cannot receive a sealed PIN")]
    BadKey,
    /// The sealed bytes do not open with this caisse's key.
    #[error("the sealed PIN does not open with this caisse's key")]
    Unopenable,
    /// Too long, or not a PIN once opened.
    #[error("the sealed PIN is malformed")]
    Malformed,
}

fn box_public_key(home: &CaisseId) -> Result<BoxPublicKey, PinSealError> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(home.as_bytes())
        .map_err(|_| PinSealError::BadKey)?;
    Ok(BoxPublicKey::from(vk.to_montgomery().to_bytes()))
}

/// Seal `pin` to `home`, with `seed` as the only source of randomness
/// (draw it fresh for every request).
pub fn seal_pin(home: &CaisseId, pin: &str, seed: [u8; 32]) -> Result<Vec<u8>, PinSealError> {
    if pin.len() > 8 {
        return Err(PinSealError::Malformed);
    }
    let mut rng = ChaCha20Rng::from_seed(seed);
    box_public_key(home)?
        .seal(&mut rng, pin.as_bytes())
        .map_err(|_| PinSealError::BadKey)
}

/// Open a PIN sealed to the caisse holding `secret`.
pub fn open_pin(secret: &SecretKey, sealed: &[u8]) -> Result<String, PinSealError> {
    if sealed.len() > MAX_SEALED_PIN {
        return Err(PinSealError::Malformed);
    }
    let key = BoxSecretKey::from(secret.box_scalar());
    let pin = key.unseal(sealed).map_err(|_| PinSealError::Unopenable)?;
    let pin = String::from_utf8(pin).map_err(|_| PinSealError::Malformed)?;
    if pin.len() > 8 || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PinSealError::Malformed);
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_home_caisse_opens_it() {
        let home = SecretKey::from_bytes([7; 32]);
        let other = SecretKey::from_bytes([8; 32]);
        let a = seal_pin(&home.caisse_id(), "602817", [1; 32]).unwrap_or_default();
        let b = seal_pin(&home.caisse_id(), "602817", [2; 32]).unwrap_or_default();
        assert_ne!(a, b, "each sealing is new");
        assert!(!a.windows(6).any(|w| w == b"602817"));
        assert_eq!(open_pin(&home, &a), Ok("602817".to_owned()));
        assert_eq!(open_pin(&other, &a), Err(PinSealError::Unopenable));
        let mut bent = a.clone();
        if let Some(x) = bent.last_mut() {
            *x ^= 1;
        }
        assert_eq!(open_pin(&home, &bent), Err(PinSealError::Unopenable));
        assert_eq!(open_pin(&home, &[0; 200]), Err(PinSealError::Malformed));
    }
}
