//! Who is asking: the requester as the connection shows it, and after authentication the
//! caller with its client, tenant and scopes. Every interaction takes a [`Caller`].

use fhirwall_auth::{Interaction as Permission, ScopeSet};
use fhirwall_model::TenantId;

/// What the connection shows about a request before anyone is authenticated.
#[derive(Clone, Debug)]
pub struct Requester {
    /// The correlation id, in every answer and audit record.
    pub request_id: String,
    pub source_address: Option<String>,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub requester: Requester,
    pub tenant: TenantId,
    pub client_id: String,
    pub scopes: ScopeSet,
}

impl Caller {
    /// Whether the caller's `system/` scopes grant `permission` on `resource_type`.
    pub fn may(&self, resource_type: &str, permission: Permission) -> bool {
        self.scopes.allows_system(resource_type, permission)
    }

    /// Whether a scope names `resource_type` itself, not through `*`: the audit trail is
    /// read only with such an explicit grant, since it holds every client's activity.
    pub fn may_explicitly(&self, resource_type: &str, permission: Permission) -> bool {
        self.scopes.resource_scopes().any(|scope| {
            scope.resource_type() == resource_type
                && scope.grants(
                    fhirwall_auth::ScopeContext::System,
                    resource_type,
                    permission,
                )
        })
    }
}
