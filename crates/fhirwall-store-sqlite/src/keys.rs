//! Wrapped keys (`KeyStore`): usable before the writer starts (the chain key is unwrapped from
//! them); afterwards new keys commit through the writer. Keys load in the order saved.

use fhirwall_store::{KeyStore, StoreFuture, StoredKey};
use rusqlite::{Connection, params};

use crate::rows::{self, KEY_COLUMNS};
use crate::writer::Command;
use crate::{SqliteStore, ready};

/// Stores a wrapped key (used by the admin connection and by the writer).
pub(crate) fn insert_key(conn: &Connection, key: &StoredKey) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO wrapped_keys (key_id, purpose, tenant, kek_id, wrapped, created) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        key.key_id,
        key.purpose,
        key.tenant.as_str(),
        key.kek_id,
        key.wrapped,
        key.created_unix
    ])
    .map(|_| ())
}

impl KeyStore for SqliteStore {
    fn load_keys(&self) -> StoreFuture<'_, Vec<StoredKey>> {
        let result = self.with_admin(|conn| {
            // Insertion order is rowid order: a rewrap updates in place and keeps it.
            let mut stmt = conn.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM wrapped_keys ORDER BY rowid"
            ))?;
            let rows = stmt.query_map([], rows::key)?;
            rows.collect()
        });
        ready(result)
    }

    fn save_key(&self, key: StoredKey) -> StoreFuture<'_, ()> {
        // Once the writer runs, keys commit through it like every other runtime write (no
        // competing for SQLite's write lock); before that (start-up, operator commands) the
        // admin connection stores them.
        if self.writer_running() {
            return self.send(move |reply| Command::SaveKey(key, reply));
        }
        ready(self.with_admin(|conn| insert_key(conn, &key)))
    }

    fn rewrap_key(&self, key: StoredKey) -> StoreFuture<'_, bool> {
        let result = self.with_admin(|conn| {
            conn.execute(
                "UPDATE wrapped_keys SET kek_id = ?2, wrapped = ?3 WHERE key_id = ?1",
                params![key.key_id, key.kek_id, key.wrapped],
            )
            .map(|n| n == 1)
        });
        ready(result)
    }
}
