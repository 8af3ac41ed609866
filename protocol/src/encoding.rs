//! The one wire encoding: deterministic, size-bounded, canonical.
//!
//! Messages are encoded with postcard (a compact, deterministic serde
//! format). Decoding refuses input over the caller's size limit, trailing
//! bytes after the value, and any encoding that is not the canonical one
//! (re-encoding the decoded value must give back the exact input), so a
//! value has exactly one byte form and content hashes are stable.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer failed (should not happen for protocol types).
    #[error("could not encode: {0}")]
    Serialize(String),
    /// The encoded value is larger than its message type allows.
    #[error("encoded size {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why received bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// More bytes than the message type allows; nothing was parsed.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Received length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A valid value followed by extra bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A valid value in a non-canonical byte form.
    #[error("non-canonical encoding")]
    NonCanonical,
}

/// Encode `value`, refusing results over `max` bytes.
pub fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if bytes.len() > max {
        return Err(EncodeError::Oversized {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Decode exactly one canonical `T` from `bytes`, which must be at most `max` long.
pub fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::Oversized {
            len: bytes.len(),
            max,
        });
    }
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    let again = postcard::to_allocvec(&value).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if again != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversized_trailing_and_non_canonical() {
        let bytes = encode(&(1u32, String::from("abc")), 64).unwrap();
        assert_eq!(decode::<(u32, String)>(&bytes, 64).unwrap().1, "abc");
        assert!(matches!(
            decode::<(u32, String)>(&bytes, 2),
            Err(DecodeError::Oversized { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode::<(u32, String)>(&trailing, 64),
            Err(DecodeError::TrailingBytes(1))
        );
        // 1 encoded as a two-byte varint (0x81 0x00) is not canonical.
        let mut padded = vec![0x81, 0x00];
        padded.extend_from_slice(&bytes[1..]);
        assert!(decode::<(u32, String)>(&padded, 64).is_err());
        assert!(matches!(
            encode(&vec![0u8; 100], 10),
            Err(EncodeError::Oversized { .. })
        ));
    }
}
