//! Every piece of key material and every AEAD, MAC and hash operation in Fhirwall lives here.
//! It must not do I/O beyond the keyring file, and it must never log or print key bytes.

mod envelope;
mod keyring;
mod secret;

pub use envelope::{AadContext, DEFAULT_ROTATE_AFTER, DataKeyId, Envelope, WrappedDataKey};
pub use keyring::{FileKeyring, KeyProvider};
pub use secret::SecretBytes;

use aws_lc_rs::rand::SecureRandom;

/// Errors of the crypto layer. Their text never contains key bytes or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("keyring file {path}: {reason}")]
    Keyring { path: String, reason: String },
    #[error("the ciphertext is malformed")]
    Malformed,
    #[error("the ciphertext names data key {0}, which is not loaded")]
    UnknownDataKey(String),
    #[error("the ciphertext does not authenticate (wrong key, context or altered bytes)")]
    Authentication,
    #[error("no key-encryption key {0} in the key provider")]
    UnknownKek(String),
    #[error("the system random generator failed")]
    Random,
    #[error("key generation failed")]
    KeyGeneration,
    #[error("the data key reached its encryption limit and no new key is active yet")]
    KeyExhausted,
    #[error("a thread panicked while holding the data keys")]
    Poisoned,
}

/// Fills `buf` from the operating system's CSPRNG: the one door for randomness.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

/// A random 128-bit value as lowercase hex, for ids and nonces that leave the process.
pub fn random_hex_128() -> Result<String, CryptoError> {
    let mut buf = [0u8; 16];
    fill_random(&mut buf)?;
    Ok(hex(&buf))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Whether two byte strings are equal, in time that does not depend on where they differ
/// (for comparing MACs and tags).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// A keyed MAC (HMAC-SHA-256) under a key the keyring holds: used for the audit hash chain
/// and blind indexes. Its Debug prints nothing of the key.
#[derive(Clone)]
pub struct MacKey {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        MacKey {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
        }
    }

    /// HMAC over the concatenation of `parts`, each prefixed by its length so that
    /// different splits of the same bytes never collide.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of a MAC made by [`MacKey::mac`].
    pub fn verify(&self, parts: &[&[u8]], expected: &[u8]) -> bool {
        let actual = self.mac(parts);
        aws_lc_rs::constant_time::verify_slices_are_equal(&actual, expected).is_ok()
    }
}

/// A blind index: a keyed, truncated MAC of a normalized search value. Equal inputs give equal
/// terms, so exact matches work on ciphertext-only storage; it reveals equality and frequency
/// of values, never the values.
#[derive(Clone, Debug)]
pub struct BlindIndexer {
    key: MacKey,
}

impl BlindIndexer {
    /// The 16-byte term for `value` of search parameter `param` on `resource_type` in `tenant`.
    pub fn term(&self, tenant: &str, resource_type: &str, param: &str, value: &str) -> [u8; 16] {
        let full = self.key.mac(&[
            tenant.as_bytes(),
            resource_type.as_bytes(),
            param.as_bytes(),
            value.as_bytes(),
        ]);
        let mut out = [0u8; 16];
        out.copy_from_slice(full.get(..16).unwrap_or(&[0u8; 16]));
        out
    }
}

/// Generates a new EC P-384 private key as PKCS#8 DER (for the token-signing key).
pub fn generate_p384_pkcs8() -> Result<SecretBytes, CryptoError> {
    let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    )
    .map_err(|_| CryptoError::KeyGeneration)?;
    let doc = pair.to_pkcs8v1().map_err(|_| CryptoError::KeyGeneration)?;
    Ok(SecretBytes::new(doc.as_ref().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_separates_parts() {
        let key = MacKey::from_bytes(&[7u8; 32]);
        assert_ne!(key.mac(&[b"ab", b"c"]), key.mac(&[b"a", b"bc"]));
        let tag = key.mac(&[b"x"]);
        assert!(key.verify(&[b"x"], &tag));
        assert!(!key.verify(&[b"y"], &tag));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
