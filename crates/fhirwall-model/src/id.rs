//! Parsed resource types and ids: functions downstream take these, never raw strings.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("'{0}' is not a resource type of FHIR R4")]
    UnknownType(String),
    #[error("a resource id is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '.'")]
    BadId,
    #[error("a tenant is 1 to 64 characters of a-z, 0-9 and '-'")]
    BadTenant,
}

/// A resource type known to FHIR R4 (checked against the generated table).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub fn parse(name: &str) -> Result<Self, IdError> {
        crate::generated::resource_type_info(name)
            .map(|info| ResourceType(info.name))
            .ok_or_else(|| IdError::UnknownType(truncate(name)))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    pub fn info(&self) -> Option<&'static crate::generated::ResourceTypeInfo> {
        crate::generated::resource_type_info(self.0)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(id: &str) -> Result<Self, IdError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            Ok(ResourceId(id.to_string()))
        } else {
            Err(IdError::BadId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant: `[a-z0-9-]{1,64}`. Every stored row, key, client and audit record belongs to one;
/// it travels with the caller from the access token to every store call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant of a single-tenant deployment.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(TenantId(name.to_string()))
        } else {
            Err(IdError::BadTenant)
        }
    }

    /// The tenant of a single-tenant deployment.
    pub fn default_tenant() -> Self {
        TenantId(Self::DEFAULT.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(ResourceId::parse("abc-1.2").is_ok());
        assert!(ResourceId::parse("").is_err());
        assert!(ResourceId::parse("a/b").is_err());
        assert!(ResourceId::parse(&"a".repeat(65)).is_err());
        assert!(ResourceId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn tenants() {
        assert!(TenantId::parse("default").is_ok());
        assert!(TenantId::parse("Clinic").is_err());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("a/b").is_err());
        assert_eq!(TenantId::default_tenant().as_str(), "default");
    }

    #[test]
    fn types() {
        assert_eq!(
            ResourceType::parse("Patient").map(|t| t.as_str()),
            Ok("Patient")
        );
        assert!(ResourceType::parse("patient").is_err());
        assert!(ResourceType::parse("Resource").is_err());
    }
}
