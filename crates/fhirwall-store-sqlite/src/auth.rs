//! Authorization state (`AuthState`): jti uses go to the writer thread, whose transaction makes
//! them single-use; clients are kept per tenant, keyed by (tenant, client id).

use fhirwall_store::{AuthState, ClientRecord, StoreFuture, TenantId};
use rusqlite::{OptionalExtension, params};

use crate::rows::{self, CLIENT_COLUMNS};
use crate::writer::Command;
use crate::{SqliteStore, ready};

impl AuthState for SqliteStore {
    fn use_jti<'a>(
        &'a self,
        client_id: &'a str,
        jti: &'a str,
        expires_unix: i64,
        now_unix: i64,
    ) -> StoreFuture<'a, bool> {
        let (client_id, jti) = (client_id.to_string(), jti.to_string());
        self.send(move |reply| Command::Jti {
            client_id,
            jti,
            expires_unix,
            now_unix,
            reply,
        })
    }

    fn add_client(&self, client: ClientRecord) -> StoreFuture<'_, ()> {
        let result = self.with_admin(|conn| {
            conn.execute(
                "INSERT INTO clients (tenant, client_id, name, jwks, jwks_uri, scope, created, tag) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    client.tenant.as_str(),
                    client.client_id,
                    client.name,
                    client.jwks,
                    client.jwks_uri,
                    client.scope,
                    client.created_unix,
                    client.tag.as_ref().map(|t| t.0.as_slice())
                ],
            )
            .map(|_| ())
        });
        ready(result)
    }

    fn get_client<'a>(
        &'a self,
        tenant: &'a TenantId,
        client_id: &'a str,
    ) -> StoreFuture<'a, Option<ClientRecord>> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {CLIENT_COLUMNS} FROM clients WHERE tenant = ?1 AND client_id = ?2"
            ))?
            .query_row(params![tenant.as_str(), client_id], rows::client)
            .optional()
        });
        ready(result)
    }

    fn list_clients<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<ClientRecord>> {
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CLIENT_COLUMNS} FROM clients WHERE tenant = ?1 \
                 ORDER BY created, client_id"
            ))?;
            let rows = stmt.query_map(params![tenant.as_str()], rows::client)?;
            rows.collect()
        });
        ready(result)
    }

    fn remove_client<'a>(
        &'a self,
        tenant: &'a TenantId,
        client_id: &'a str,
    ) -> StoreFuture<'a, bool> {
        let result = self.with_admin(|conn| {
            conn.execute(
                "DELETE FROM clients WHERE tenant = ?1 AND client_id = ?2",
                params![tenant.as_str(), client_id],
            )
            .map(|n| n > 0)
        });
        ready(result)
    }
}
