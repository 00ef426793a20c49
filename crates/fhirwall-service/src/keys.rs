//! Keys in the store's terms: the one conversion between the crypto crate's wrapped keys and
//! the store's rows, the keys every store holds from its first start, data-key rotation while
//! serving (persisted first, activated after), and the re-wrapping of `keys rotate`.

use fhirwall_crypto::{Envelope, WrappedDataKey};
use fhirwall_model::{TenantId, Timestamp};
use fhirwall_store::{KeyStore, StoreError, StoredKey};

use crate::Service;

/// Keys every store holds from its first start. Data keys are made by `serve` (a fresh one at
/// each start) and by `keys rotate`.
const PURPOSES: &[&str] = &["audit-chain", "blind-index", "token-signing"];

/// A wrapped key as the store keeps it.
pub fn stored_key(key: &WrappedDataKey) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        key_id: key.key_id.clone(),
        purpose: key.purpose.clone(),
        tenant: TenantId::parse(&key.tenant)
            .map_err(|_| StoreError::Corrupt("a key names an invalid tenant".into()))?,
        kek_id: key.kek_id.clone(),
        wrapped: key.wrapped.clone(),
        created_unix: key.created_unix,
    })
}

/// A stored key as the crypto crate unwraps it.
pub fn wrapped_key(key: StoredKey) -> WrappedDataKey {
    WrappedDataKey {
        key_id: key.key_id,
        purpose: key.purpose,
        tenant: key.tenant.as_str().to_string(),
        kek_id: key.kek_id,
        wrapped: key.wrapped,
        created_unix: key.created_unix,
    }
}

/// Why the keys could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] fhirwall_crypto::CryptoError),
    #[error("a stored key does not unwrap with this keyring")]
    Unwrap(#[source] fhirwall_crypto::CryptoError),
    #[error("the store has no {0} key")]
    Missing(&'static str),
}

/// Loads every stored key into `envelope`; with `create`, makes any key of the default tenant
/// that is missing (a new store).
pub async fn bootstrap_keys(
    store: &dyn KeyStore,
    envelope: &mut Envelope,
    create: bool,
    now: Timestamp,
) -> Result<(), KeyError> {
    for key in store.load_keys().await? {
        envelope.load(&wrapped_key(key)).map_err(KeyError::Unwrap)?;
    }
    let tenant = TenantId::default_tenant();
    for purpose in PURPOSES {
        if envelope.has_key(purpose, tenant.as_str()) {
            continue;
        }
        if !create {
            return Err(KeyError::Missing(purpose));
        }
        let key = envelope.create_key(purpose, tenant.as_str(), now.unix_seconds())?;
        store.save_key(stored_key(&key)?).await?;
    }
    Ok(())
}

/// Makes a fresh data key for the default tenant, persists it, and only then activates it.
pub async fn start_new_data_key(
    store: &dyn KeyStore,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<String, KeyError> {
    let tenant = TenantId::default_tenant();
    let key = envelope.new_data_key(tenant.as_str(), now.unix_seconds())?;
    store.save_key(stored_key(&key)?).await?;
    envelope.activate_data_key(tenant.as_str(), &key.key_id)?;
    Ok(key.key_id)
}

/// What `keys rotate` did.
#[derive(Debug)]
pub struct Rotation {
    pub rewrapped: usize,
    pub new_data_key: String,
}

/// Re-wraps every stored key not yet under `new_kek` and adds a data key that becomes the
/// default tenant's active one at the next start. Nothing is re-encrypted.
pub async fn rewrap_all(
    store: &dyn KeyStore,
    envelope: &mut Envelope,
    new_kek: &str,
    now: Timestamp,
) -> Result<Rotation, KeyError> {
    let mut rewrapped = 0;
    for key in store.load_keys().await? {
        if key.kek_id == new_kek {
            continue;
        }
        let wrapped = envelope.rewrap(&wrapped_key(key))?;
        if store.rewrap_key(stored_key(&wrapped)?).await? {
            rewrapped += 1;
        }
    }
    let data_key = envelope.create_key("data", TenantId::DEFAULT, now.unix_seconds())?;
    let new_data_key = data_key.key_id.clone();
    store.save_key(stored_key(&data_key)?).await?;
    Ok(Rotation {
        rewrapped,
        new_data_key,
    })
}

/// When the tenant's data key has sealed enough, makes a new one in the background:
/// persisted first, activated after, so no ciphertext ever names a key a crash could lose.
pub(crate) fn rotate_data_key_if_due(service: &Service) {
    use std::sync::atomic::Ordering;
    let inner = &service.inner;
    let tenant = TenantId::default_tenant();
    if !inner.envelope.rotation_due(tenant.as_str()) || inner.rotating.swap(true, Ordering::SeqCst)
    {
        return;
    }
    let service = service.clone();
    tokio::spawn(async move {
        let inner = &service.inner;
        let now = inner.clock.now();
        match start_new_data_key(inner.store.as_ref(), &inner.envelope, now).await {
            Ok(_) => tracing::info!("data key rotated"),
            Err(error) => tracing::error!(error = %error, "data key rotation failed; will retry"),
        }
        inner.rotating.store(false, Ordering::SeqCst);
    });
}
