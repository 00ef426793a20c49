//! One home for indexing: the extraction of index terms from a resource at write time, the
//! normalisation of query values at search time (one function serves both, so the two always
//! agree), and the turning of parsed criteria into a [`CurrentQuery`] plan that a backend
//! executes. Terms are blind: a keyed MAC of the normalised value, so the store never holds
//! the value.
//!
//! Today the indexed parameter is `identifier` (and `_id`, which needs no term); search builds
//! its other parameter types here.

use fhirwall_crypto::BlindIndexer;
use fhirwall_model::{ResourceId, ResourceType, TenantId};
use fhirwall_store::{CurrentQuery, IndexTerm};
use serde_json::Value;

use crate::ServiceError;

/// At most this many criteria (AND) per search or condition.
pub const MAX_CRITERIA: usize = 32;
/// At most this many comma-separated values (OR) per criterion.
pub const MAX_ALTERNATIVES: usize = 64;

/// Parameters that shape a search's answer instead of selecting resources.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_summary",
    "_elements",
    "_format",
    "_pretty",
    "_cursor",
];

/// One value of the `identifier` parameter, as written in a resource or asked in a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentifierValue<'a> {
    /// `value`: any system.
    Any(&'a str),
    /// `system|value`.
    InSystem(&'a str, &'a str),
    /// `|value`: identifiers without a system.
    WithoutSystem(&'a str),
}

impl IdentifierValue<'_> {
    /// The normalised form that is MAC'd: the one rule for index time and query time.
    pub fn normalized(&self) -> String {
        match self {
            IdentifierValue::Any(value) => format!("v:{value}"),
            IdentifierValue::InSystem(system, value) => format!("sv:{system}|{value}"),
            IdentifierValue::WithoutSystem(value) => format!("ns:{value}"),
        }
    }

    /// Parses a query value: `value`, `system|value` or `|value`. A system alone
    /// (`system|`) is refused: its term would be a posting list of every resource in the
    /// system, so it is not indexed.
    pub fn parse_query(value: &str) -> Result<IdentifierValue<'_>, ServiceError> {
        if value.is_empty() || value == "|" {
            return Err(ServiceError::invalid(
                "invalid-search",
                "identifier needs a value.",
            ));
        }
        match value.split_once('|') {
            None => Ok(IdentifierValue::Any(value)),
            Some(("", value)) => Ok(IdentifierValue::WithoutSystem(value)),
            Some((_, "")) => Err(ServiceError::invalid(
                "unsupported-search",
                "identifier=system| (any value in a system) is not supported; give system|value or value.",
            )),
            Some((system, value)) => Ok(IdentifierValue::InSystem(system, value)),
        }
    }
}

/// Makes the blind terms of one tenant.
pub struct Indexer<'a> {
    pub blind: &'a BlindIndexer,
    pub tenant: &'a TenantId,
}

impl Indexer<'_> {
    fn term(&self, resource_type: &ResourceType, value: &IdentifierValue<'_>) -> IndexTerm {
        IndexTerm(self.blind.term(
            self.tenant.as_str(),
            resource_type.as_str(),
            "identifier",
            &value.normalized(),
        ))
    }

    /// The terms a resource version carries: for each identifier, `value` (any system) and
    /// either `system|value` or `|value`. Each term is a random-looking key, so each costs a
    /// B-tree page per write; a system-only term is not kept.
    pub fn resource_terms(&self, resource_type: &ResourceType, resource: &Value) -> Vec<IndexTerm> {
        let identifiers = match resource.get("identifier") {
            Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
            Some(obj @ Value::Object(_)) => vec![obj],
            _ => return Vec::new(),
        };
        let mut terms = Vec::new();
        for identifier in identifiers {
            let system = identifier.get("system").and_then(Value::as_str);
            let Some(value) = identifier.get("value").and_then(Value::as_str) else {
                continue;
            };
            terms.push(self.term(resource_type, &IdentifierValue::Any(value)));
            terms.push(match system {
                Some(system) => self.term(resource_type, &IdentifierValue::InSystem(system, value)),
                None => self.term(resource_type, &IdentifierValue::WithoutSystem(value)),
            });
        }
        terms.sort();
        terms.dedup();
        terms
    }

    /// Parses search or conditional criteria into [`Criteria`].
    pub fn criteria(
        &self,
        resource_type: &ResourceType,
        params: &[(String, String)],
        mode: CriteriaMode,
    ) -> Result<Criteria, ServiceError> {
        let conditional = mode == CriteriaMode::Conditional;
        let mut criteria = Criteria::default();
        let mut count = 0usize;
        for (name, value) in params {
            match name.as_str() {
                "_id" | "identifier" => {
                    count += 1;
                    if count > MAX_CRITERIA {
                        return Err(ServiceError::invalid(
                            "too-many-parameters",
                            format!("A search takes at most {MAX_CRITERIA} criteria."),
                        ));
                    }
                }
                _ => {}
            }
            match name.as_str() {
                "_id" => {
                    if criteria.id.is_some() || value.contains(',') {
                        return Err(ServiceError::invalid(
                            "unsupported-search",
                            "_id may be given once, with one value.",
                        ));
                    }
                    criteria.id = Some(ResourceId::parse(value).map_err(|_| {
                        ServiceError::invalid(
                            "invalid-id",
                            "A resource id is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '.'.",
                        )
                    })?);
                }
                "identifier" => {
                    let values: Vec<&str> = value.split(',').collect();
                    if values.len() > 1 && conditional {
                        return Err(ServiceError::invalid(
                            "unsupported-search",
                            "A conditional interaction takes one identifier value per parameter.",
                        ));
                    }
                    if values.len() > MAX_ALTERNATIVES {
                        return Err(ServiceError::invalid(
                            "too-many-values",
                            format!(
                                "A parameter takes at most {MAX_ALTERNATIVES} comma-separated values."
                            ),
                        ));
                    }
                    let mut clause = Vec::with_capacity(values.len());
                    for v in values {
                        clause.push(self.term(resource_type, &IdentifierValue::parse_query(v)?));
                    }
                    criteria.clauses.push(clause);
                }
                n if RESULT_PARAMS.contains(&n) => {}
                _ if mode == CriteriaMode::LenientSearch => criteria.ignored.push(name.clone()),
                _ => {
                    return Err(ServiceError::invalid(
                        "unknown-search-parameter",
                        format!(
                            "The search parameter '{}' is not supported on {resource_type}; this server searches by _id and identifier.",
                            name.chars().take(64).collect::<String>()
                        ),
                    ));
                }
            }
        }
        if conditional && criteria.id.is_none() && criteria.clauses.is_empty() {
            return Err(ServiceError::invalid(
                "invalid-condition",
                "A conditional interaction needs _id or identifier criteria.",
            ));
        }
        Ok(criteria)
    }
}

/// How unknown parameters are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriteriaMode {
    /// A search the client lets the server narrow: unsupported parameters are left out (and
    /// reported). FHIR's default.
    LenientSearch,
    /// `Prefer: handling=strict`: unsupported parameters are errors.
    StrictSearch,
    /// A conditional interaction: always strict (ignoring a criterion would widen what it
    /// changes), one value per parameter, at least one criterion.
    Conditional,
}

/// Parsed criteria: all must hold.
#[derive(Debug, Default, Clone)]
pub struct Criteria {
    pub id: Option<ResourceId>,
    /// Each inner list is one parameter; its entries are OR'd (comma values).
    pub clauses: Vec<Vec<IndexTerm>>,
    /// Parameters a lenient search left out.
    pub ignored: Vec<String>,
}

impl Criteria {
    /// The plan a backend executes.
    pub fn plan(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        after_seq: Option<u64>,
        limit: usize,
    ) -> CurrentQuery {
        CurrentQuery {
            tenant: tenant.clone(),
            resource_type: resource_type.clone(),
            id: self.id.clone(),
            clauses: self.clauses.clone(),
            after_seq,
            limit,
        }
    }

    /// The terms a conditional write re-checks atomically at commit: each clause has one
    /// term (conditions take one value per parameter).
    pub fn guard_terms(&self) -> Vec<IndexTerm> {
        self.clauses
            .iter()
            .filter_map(|clause| clause.first().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn query_values_normalise_as_resource_values_do() {
        assert_eq!(
            IdentifierValue::parse_query("http://x|1")
                .unwrap()
                .normalized(),
            IdentifierValue::InSystem("http://x", "1").normalized()
        );
        assert_eq!(
            IdentifierValue::parse_query("|1").unwrap(),
            IdentifierValue::WithoutSystem("1")
        );
        assert_eq!(
            IdentifierValue::parse_query("1").unwrap(),
            IdentifierValue::Any("1")
        );
        assert!(IdentifierValue::parse_query("http://x|").is_err());
        assert!(IdentifierValue::parse_query("").is_err());
    }
}
