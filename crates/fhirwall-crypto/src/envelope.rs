//! Envelope encryption: data keys (per tenant and purpose) wrapped by a KEK, AES-256-GCM for
//! every stored body, associated data that binds each ciphertext to where it belongs.
//! It must not know how wrapped keys are persisted: the store does that.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::{BlindIndexer, CryptoError, KeyProvider, MacKey, SecretBytes, fill_random};

/// The identifier of a data key, written into every ciphertext header so keys can rotate.
pub type DataKeyId = String;

/// What a data key is for. Each purpose has its own key so one can never stand in for another.
pub const PURPOSE_DATA: &str = "data";
pub const PURPOSE_AUDIT_CHAIN: &str = "audit-chain";
pub const PURPOSE_BLIND_INDEX: &str = "blind-index";
pub const PURPOSE_TOKEN_SIGNING: &str = "token-signing";

/// A data key as the store keeps it: only the wrapped form is ever persisted.
#[derive(Clone, Debug)]
pub struct WrappedDataKey {
    pub key_id: DataKeyId,
    pub purpose: String,
    pub tenant: String,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub created_unix: i64,
}

impl WrappedDataKey {
    fn wrap_context(&self) -> Vec<u8> {
        wrap_context(&self.key_id, &self.purpose, &self.tenant)
    }
}

fn wrap_context(key_id: &str, purpose: &str, tenant: &str) -> Vec<u8> {
    let mut out = b"fhirwall-wrap/1".to_vec();
    for part in [key_id, purpose, tenant] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Where a ciphertext belongs. It becomes the AEAD associated data, so a ciphertext copied to
/// another row, version, type or tenant fails to decrypt.
#[derive(Clone, Debug)]
pub enum AadContext<'a> {
    Resource {
        tenant: &'a str,
        resource_type: &'a str,
        id: &'a str,
        version: u64,
    },
    Audit {
        tenant: &'a str,
        record_id: &'a str,
    },
    /// A search paging cursor handed to one client: opening it under another client's id fails.
    Cursor {
        tenant: &'a str,
        client_id: &'a str,
    },
}

impl AadContext<'_> {
    fn tenant(&self) -> &str {
        match self {
            AadContext::Resource { tenant, .. }
            | AadContext::Audit { tenant, .. }
            | AadContext::Cursor { tenant, .. } => tenant,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        let mut push = |part: &[u8]| {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        };
        match self {
            AadContext::Resource {
                tenant,
                resource_type,
                id,
                version,
            } => {
                push(b"resource/1");
                push(tenant.as_bytes());
                push(resource_type.as_bytes());
                push(id.as_bytes());
                push(&version.to_be_bytes());
            }
            AadContext::Audit { tenant, record_id } => {
                push(b"audit/1");
                push(tenant.as_bytes());
                push(record_id.as_bytes());
            }
            AadContext::Cursor { tenant, client_id } => {
                push(b"cursor/1");
                push(tenant.as_bytes());
                push(client_id.as_bytes());
            }
        }
        out
    }
}

const CIPHERTEXT_VERSION: u8 = 1;

/// Random 96-bit nonces keep AES-GCM safe for 2^32 encryptions under one key (NIST SP
/// 800-38D); a data key asks to be replaced well before that, and refuses to go past it.
pub const DEFAULT_ROTATE_AFTER: u64 = 1 << 30;
const HARD_LIMIT: u64 = (1 << 32) - (1 << 24);

/// A data key and how many times this process has sealed with it.
struct DataKey {
    key: LessSafeKey,
    sealed: AtomicU64,
}

/// Holds the unwrapped data keys of this process and seals and opens bodies with them.
/// Data keys can be added and activated while it is shared (automatic rotation).
pub struct Envelope {
    provider: Arc<dyn KeyProvider>,
    data_keys: RwLock<HashMap<DataKeyId, Arc<DataKey>>>,
    active_data_key: RwLock<HashMap<String, (DataKeyId, Arc<DataKey>)>>,
    secrets: HashMap<(String, String), SecretBytes>,
    rotate_after: u64,
    rotation_due: RwLock<HashSet<String>>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field(
                "data_keys",
                &self.data_keys.read().map(|k| k.len()).unwrap_or_default(),
            )
            .finish()
    }
}

fn poisoned() -> CryptoError {
    CryptoError::Poisoned
}

impl Envelope {
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Envelope {
            provider,
            data_keys: RwLock::new(HashMap::new()),
            active_data_key: RwLock::new(HashMap::new()),
            secrets: HashMap::new(),
            rotate_after: DEFAULT_ROTATE_AFTER,
            rotation_due: RwLock::new(HashSet::new()),
        }
    }

    /// After how many seals by this process a data key asks to be replaced.
    pub fn set_rotate_after(&mut self, seals: u64) {
        self.rotate_after = seals.clamp(1, HARD_LIMIT / 2);
    }

    /// Whether the tenant's active data key has been used enough to be replaced.
    pub fn rotation_due(&self, tenant: &str) -> bool {
        self.rotation_due
            .read()
            .map(|due| due.contains(tenant))
            .unwrap_or(false)
    }

    /// Makes a new data key for `tenant` and returns its wrapped form. It is not used until
    /// [`Envelope::activate_data_key`]: persist it first, so nothing is ever sealed under a key
    /// that a crash could lose.
    pub fn new_data_key(&self, tenant: &str, now_unix: i64) -> Result<WrappedDataKey, CryptoError> {
        let mut bytes = vec![0u8; 32];
        fill_random(&mut bytes)?;
        let plain = SecretBytes::new(bytes);
        let key = self.wrap_new(PURPOSE_DATA, tenant, &plain, now_unix)?;
        let unbound =
            UnboundKey::new(&AES_256_GCM, plain.expose()).map_err(|_| CryptoError::Malformed)?;
        self.data_keys.write().map_err(|_| poisoned())?.insert(
            key.key_id.clone(),
            Arc::new(DataKey {
                key: LessSafeKey::new(unbound),
                sealed: AtomicU64::new(0),
            }),
        );
        Ok(key)
    }

    fn data_key(&self, key_id: &str) -> Result<Arc<DataKey>, CryptoError> {
        self.data_keys
            .read()
            .map_err(|_| poisoned())?
            .get(key_id)
            .cloned()
            .ok_or_else(|| CryptoError::UnknownDataKey(key_id.to_string()))
    }

    /// Makes a data key made by [`Envelope::new_data_key`] the one new seals use.
    pub fn activate_data_key(&self, tenant: &str, key_id: &str) -> Result<(), CryptoError> {
        let key = self.data_key(key_id)?;
        self.active_data_key
            .write()
            .map_err(|_| poisoned())?
            .insert(tenant.to_string(), (key_id.to_string(), key));
        self.rotation_due
            .write()
            .map_err(|_| poisoned())?
            .remove(tenant);
        Ok(())
    }

    fn wrap_new(
        &self,
        purpose: &str,
        tenant: &str,
        plain: &SecretBytes,
        now_unix: i64,
    ) -> Result<WrappedDataKey, CryptoError> {
        let key_id = format!("{purpose}-{}", crate::random_hex_128()?);
        let kek_id = self.provider.active_kek_id();
        let wrapped = self.provider.wrap(
            &kek_id,
            plain.expose(),
            &wrap_context(&key_id, purpose, tenant),
        )?;
        Ok(WrappedDataKey {
            key_id,
            purpose: purpose.to_string(),
            tenant: tenant.to_string(),
            kek_id,
            wrapped,
            created_unix: now_unix,
        })
    }

    /// Unwraps a persisted key and keeps it for use. Keys load in creation order, so the
    /// newest data key of a tenant becomes its active one.
    pub fn load(&mut self, key: &WrappedDataKey) -> Result<(), CryptoError> {
        let plain = self
            .provider
            .unwrap(&key.kek_id, &key.wrapped, &key.wrap_context())?;
        if key.purpose == PURPOSE_DATA {
            let unbound = UnboundKey::new(&AES_256_GCM, plain.expose())
                .map_err(|_| CryptoError::Malformed)?;
            let data_key = Arc::new(DataKey {
                key: LessSafeKey::new(unbound),
                sealed: AtomicU64::new(0),
            });
            self.data_keys
                .get_mut()
                .map_err(|_| poisoned())?
                .insert(key.key_id.clone(), data_key.clone());
            self.active_data_key
                .get_mut()
                .map_err(|_| poisoned())?
                .insert(key.tenant.clone(), (key.key_id.clone(), data_key));
        } else {
            self.secrets
                .insert((key.purpose.clone(), key.tenant.clone()), plain);
        }
        Ok(())
    }

    /// Whether a key of `purpose` for `tenant` is loaded.
    pub fn has_key(&self, purpose: &str, tenant: &str) -> bool {
        if purpose == PURPOSE_DATA {
            self.active_data_key
                .read()
                .map(|active| active.contains_key(tenant))
                .unwrap_or(false)
        } else {
            self.secrets
                .contains_key(&(purpose.to_string(), tenant.to_string()))
        }
    }

    /// Makes a fresh key of `purpose` for `tenant`, loads it, and returns its wrapped form for
    /// the caller to persist. A token-signing key is an EC P-384 PKCS#8 document; every other
    /// purpose gets 256 random bits.
    pub fn create_key(
        &mut self,
        purpose: &str,
        tenant: &str,
        now_unix: i64,
    ) -> Result<WrappedDataKey, CryptoError> {
        let plain = if purpose == PURPOSE_TOKEN_SIGNING {
            crate::generate_p384_pkcs8()?
        } else {
            let mut bytes = vec![0u8; 32];
            fill_random(&mut bytes)?;
            SecretBytes::new(bytes)
        };
        let key = self.wrap_new(purpose, tenant, &plain, now_unix)?;
        self.load(&key)?;
        Ok(key)
    }

    /// The same data key wrapped under the provider's active KEK (for KEK rotation).
    pub fn rewrap(&self, key: &WrappedDataKey) -> Result<WrappedDataKey, CryptoError> {
        let plain = self
            .provider
            .unwrap(&key.kek_id, &key.wrapped, &key.wrap_context())?;
        let kek_id = self.provider.active_kek_id();
        let wrapped = self
            .provider
            .wrap(&kek_id, plain.expose(), &key.wrap_context())?;
        Ok(WrappedDataKey {
            kek_id,
            wrapped,
            ..key.clone()
        })
    }

    /// Encrypts `plaintext` under the tenant's active data key:
    /// `[version][key id length][key id][nonce][ciphertext and tag]`.
    pub fn seal(&self, context: &AadContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (key_id, data_key) = self
            .active_data_key
            .read()
            .map_err(|_| poisoned())?
            .get(context.tenant())
            .cloned()
            .ok_or_else(|| CryptoError::UnknownDataKey(context.tenant().to_string()))?;
        let uses = data_key.sealed.fetch_add(1, Ordering::Relaxed) + 1;
        if uses >= self.rotate_after
            && let Ok(mut due) = self.rotation_due.write()
        {
            due.insert(context.tenant().to_string());
        }
        if uses >= HARD_LIMIT {
            return Err(CryptoError::KeyExhausted);
        }
        let key = &data_key.key;
        let id_len = u8::try_from(key_id.len()).map_err(|_| CryptoError::Malformed)?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let header_len = 2 + key_id.len() + NONCE_LEN;
        let mut out = Vec::with_capacity(header_len + plaintext.len() + 16);
        out.push(CIPHERTEXT_VERSION);
        out.push(id_len);
        out.extend_from_slice(key_id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (_, body) = out.split_at_mut(header_len);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.encode()),
                body,
            )
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts a body made by [`Envelope::seal`] for the same context.
    pub fn open(
        &self,
        context: &AadContext<'_>,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (&version, rest) = ciphertext.split_first().ok_or(CryptoError::Malformed)?;
        if version != CIPHERTEXT_VERSION {
            return Err(CryptoError::Malformed);
        }
        let (&id_len, rest) = rest.split_first().ok_or(CryptoError::Malformed)?;
        let (key_id, rest) = rest
            .split_at_checked(usize::from(id_len))
            .ok_or(CryptoError::Malformed)?;
        let key_id = std::str::from_utf8(key_id).map_err(|_| CryptoError::Malformed)?;
        let (nonce, sealed) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(CryptoError::Malformed)?;
        let key = self.data_key(key_id)?;
        let key = &key.key;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(context.encode()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }

    /// The MAC key that links audit records into a chain.
    pub fn audit_chain_key(&self, tenant: &str) -> Option<MacKey> {
        self.secrets
            .get(&(PURPOSE_AUDIT_CHAIN.to_string(), tenant.to_string()))
            .map(|s| MacKey::from_bytes(s.expose()))
    }

    /// The MAC key of the integrity tags over stored rows (versions, current pointers, client
    /// records). Derived from the audit-chain key under its own label, so stores from before
    /// the tags need no new key.
    pub fn integrity_key(&self, tenant: &str) -> Option<MacKey> {
        self.audit_chain_key(tenant)
            .map(|chain| MacKey::from_bytes(&chain.mac(&[b"fhirwall-integrity/1"])))
    }

    /// The blind indexer of a tenant.
    pub fn blind_indexer(&self, tenant: &str) -> Option<BlindIndexer> {
        self.secrets
            .get(&(PURPOSE_BLIND_INDEX.to_string(), tenant.to_string()))
            .map(|s| BlindIndexer {
                key: MacKey::from_bytes(s.expose()),
            })
    }

    /// The PKCS#8 document of the access-token signing key.
    pub fn token_signing_key(&self, tenant: &str) -> Option<SecretBytes> {
        self.secrets
            .get(&(PURPOSE_TOKEN_SIGNING.to_string(), tenant.to_string()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::FileKeyring;

    fn envelope() -> (Envelope, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fw-env-{}", crate::random_hex_128().unwrap()));
        let ring = FileKeyring::open_or_create(&dir.join("keyring.json")).unwrap();
        let mut env = Envelope::new(Arc::new(ring));
        env.create_key(PURPOSE_DATA, "t1", 0).unwrap();
        env.create_key(PURPOSE_DATA, "t2", 0).unwrap();
        (env, dir)
    }

    fn ctx<'a>(tenant: &'a str, id: &'a str, version: u64) -> AadContext<'a> {
        AadContext::Resource {
            tenant,
            resource_type: "Patient",
            id,
            version,
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let (env, dir) = envelope();
        let sealed = env.seal(&ctx("t1", "a", 1), b"{\"name\":\"Ada\"}").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"Ada"));
        assert_eq!(
            env.open(&ctx("t1", "a", 1), &sealed).unwrap(),
            b"{\"name\":\"Ada\"}"
        );
        assert!(env.open(&ctx("t1", "b", 1), &sealed).is_err());
        assert!(env.open(&ctx("t1", "a", 2), &sealed).is_err());
        assert!(env.open(&ctx("t2", "a", 1), &sealed).is_err());
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(env.open(&ctx("t1", "a", 1), &altered).is_err());
        assert!(env.open(&ctx("t1", "a", 1), &sealed[..5]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn data_keys_rotate_before_their_limit() {
        let (mut env, dir) = envelope();
        env.set_rotate_after(3);
        let first: Vec<Vec<u8>> = (0..3)
            .map(|i| env.seal(&ctx("t1", "a", i), b"x").unwrap())
            .collect();
        assert!(env.rotation_due("t1"));
        assert!(!env.rotation_due("t2"));
        let next = env.new_data_key("t1", 0).unwrap();
        assert!(
            env.rotation_due("t1"),
            "a new key is not used before it is activated"
        );
        env.activate_data_key("t1", &next.key_id).unwrap();
        assert!(!env.rotation_due("t1"));
        let later = env.seal(&ctx("t1", "a", 9), b"y").unwrap();
        let key_of = |c: &[u8]| c[2..2 + c[1] as usize].to_vec();
        assert_ne!(key_of(&first[0]), key_of(&later));
        assert_eq!(key_of(&later), next.key_id.as_bytes());
        for (i, sealed) in first.iter().enumerate() {
            assert_eq!(env.open(&ctx("t1", "a", i as u64), sealed).unwrap(), b"x");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrapped_keys_reload_in_a_new_envelope() {
        let dir = std::env::temp_dir().join(format!("fw-env-{}", crate::random_hex_128().unwrap()));
        let ring: Arc<dyn KeyProvider> =
            Arc::new(FileKeyring::open_or_create(&dir.join("keyring.json")).unwrap());
        let mut first = Envelope::new(ring.clone());
        let wrapped = first.create_key(PURPOSE_DATA, "t", 0).unwrap();
        let chain = first.create_key(PURPOSE_AUDIT_CHAIN, "t", 0).unwrap();
        let sealed = first.seal(&ctx("t", "x", 1), b"secret").unwrap();
        let mut second = Envelope::new(ring);
        second.load(&wrapped).unwrap();
        second.load(&chain).unwrap();
        assert_eq!(second.open(&ctx("t", "x", 1), &sealed).unwrap(), b"secret");
        assert!(second.audit_chain_key("t").is_some());
        let mut tampered = wrapped.clone();
        tampered.tenant = "other".into();
        assert!(second.load(&tampered).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
