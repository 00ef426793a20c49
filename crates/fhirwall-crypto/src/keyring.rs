//! Key-encryption keys (KEKs): the provider interface and the default file-backed keyring.
//! A KEK never leaves its provider; callers hand data keys in and get wrapped bytes back.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::{CryptoError, SecretBytes, fill_random};

/// Wraps and unwraps data keys. The file keyring implements it today; a cloud KMS or a
/// PKCS#11 HSM implements the same three calls.
pub trait KeyProvider: Send + Sync {
    /// The KEK that wraps new data keys.
    fn active_kek_id(&self) -> String;
    /// Encrypts `data_key` under KEK `kek_id`, bound to `context`.
    fn wrap(&self, kek_id: &str, data_key: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// Reverses [`KeyProvider::wrap`]; fails if the bytes or the context were changed.
    fn unwrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<SecretBytes, CryptoError>;
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    active: String,
    keks: BTreeMap<String, String>,
}

const KEYRING_FORMAT: &str = "fhirwall-keyring/1";

/// A keyring file holding AES-256 KEKs, readable by its owner only (mode 0600).
pub struct FileKeyring {
    path: PathBuf,
    active: String,
    keks: BTreeMap<String, LessSafeKey>,
}

impl std::fmt::Debug for FileKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyring")
            .field("path", &self.path)
            .field("active", &self.active)
            .field("keks", &self.keks.len())
            .finish()
    }
}

impl FileKeyring {
    /// Opens the keyring at `path`, creating it with one fresh KEK when it does not exist.
    /// Refuses a keyring that group or others may read.
    pub fn open_or_create(path: &Path) -> Result<Self, CryptoError> {
        let err = |reason: String| CryptoError::Keyring {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            let mut key = vec![0u8; 32];
            fill_random(&mut key)?;
            let id = format!("kek-{}", crate::random_hex_128()?);
            let mut keks = BTreeMap::new();
            keks.insert(id.clone(), B64.encode(&key));
            let file = KeyringFile {
                format: KEYRING_FORMAT.to_string(),
                active: id,
                keks,
            };
            let text = serde_json::to_vec_pretty(&file).map_err(|e| err(e.to_string()))?;
            write_private_file(path, &text).map_err(|e| err(e.to_string()))?;
            zeroize::Zeroize::zeroize(&mut key);
        }
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(
                "group or others may access it; run chmod 600 on it".to_string()
            ));
        }
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let file: KeyringFile =
            serde_json::from_slice(&text).map_err(|e| err(format!("not a keyring: {e}")))?;
        if file.format != KEYRING_FORMAT {
            return Err(err(format!("unknown format {}", file.format)));
        }
        let mut keks = BTreeMap::new();
        for (id, encoded) in &file.keks {
            let mut bytes = B64
                .decode(encoded)
                .map_err(|_| err(format!("key {id} is not base64")))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| err(format!("key {id} is not a 256-bit key")))?;
            zeroize::Zeroize::zeroize(&mut bytes);
            keks.insert(id.clone(), LessSafeKey::new(unbound));
        }
        if !keks.contains_key(&file.active) {
            return Err(err(format!(
                "active key {} is not in the file",
                file.active
            )));
        }
        Ok(FileKeyring {
            path: path.to_path_buf(),
            active: file.active,
            keks,
        })
    }
}

impl FileKeyring {
    /// Adds a fresh KEK to the keyring file and makes it the active one; returns its id. Old
    /// KEKs stay in the file so keys they wrapped still unwrap until they are re-wrapped.
    pub fn add_active_kek(path: &Path) -> Result<String, CryptoError> {
        let err = |reason: String| CryptoError::Keyring {
            path: path.display().to_string(),
            reason,
        };
        // Opening first applies every check (permissions, format).
        FileKeyring::open_or_create(path)?;
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let mut file: KeyringFile =
            serde_json::from_slice(&text).map_err(|e| err(format!("not a keyring: {e}")))?;
        let mut key = vec![0u8; 32];
        fill_random(&mut key)?;
        let id = format!("kek-{}", crate::random_hex_128()?);
        file.keks.insert(id.clone(), B64.encode(&key));
        zeroize::Zeroize::zeroize(&mut key);
        file.active = id.clone();
        let text = serde_json::to_vec_pretty(&file).map_err(|e| err(e.to_string()))?;
        let _ = std::fs::remove_file(path.with_extension("tmp"));
        write_private_file(path, &text).map_err(|e| err(e.to_string()))?;
        Ok(id)
    }
}

fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl KeyProvider for FileKeyring {
    fn active_kek_id(&self) -> String {
        self.active.clone()
    }

    fn wrap(&self, kek_id: &str, data_key: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let kek = self
            .keks
            .get(kek_id)
            .ok_or_else(|| CryptoError::UnknownKek(kek_id.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut out = data_key.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut out,
        )
        .map_err(|_| CryptoError::Authentication)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&out);
        Ok(wrapped)
    }

    fn unwrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        let kek = self
            .keks
            .get(kek_id)
            .ok_or_else(|| CryptoError::UnknownKek(kek_id.to_string()))?;
        let (nonce, sealed) = wrapped
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(CryptoError::Malformed)?;
        let mut buf = sealed.to_vec();
        let plain = kek
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| CryptoError::Authentication)?;
        let key = SecretBytes::new(plain.to_vec());
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn created_keyring_is_private_and_reopens() {
        let dir = std::env::temp_dir().join(format!("fw-kr-{}", crate::random_hex_128().unwrap()));
        let path = dir.join("keyring.json");
        let ring = FileKeyring::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let wrapped = ring
            .wrap(
                &ring.active_kek_id(),
                b"0123456789abcdef0123456789abcdef",
                b"ctx",
            )
            .unwrap();
        let again = FileKeyring::open_or_create(&path).unwrap();
        let key = again
            .unwrap(&again.active_kek_id(), &wrapped, b"ctx")
            .unwrap();
        assert_eq!(key.expose(), b"0123456789abcdef0123456789abcdef");
        assert!(
            again
                .unwrap(&again.active_kek_id(), &wrapped, b"other")
                .is_err()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(FileKeyring::open_or_create(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
