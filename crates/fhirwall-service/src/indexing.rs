//! One home for indexing: the bridge between the search semantics of `fhirwall-search` (which
//! keys a resource carries, what a query parameter means) and the store's blind index. A key
//! becomes a term by a keyed MAC over tenant, resource type, domain and value, so the store
//! never holds a searched value; the same function makes the terms of a resource at write
//! time and of a query at search time, so the two always agree.

use fhirwall_crypto::BlindIndexer;
use fhirwall_model::{ResourceId, ResourceType, TenantId};
use fhirwall_search::{Context, Criterion, Key, Link, Plan, QueryError, SearchIndex};
use fhirwall_store::{Clause, IndexTerm};
use serde_json::Value;

use crate::ServiceError;

/// At most this many criteria (AND) per search or condition.
pub const MAX_CRITERIA: usize = 32;
/// At most this many comma-separated values (OR) per criterion (the search crate's bound).
pub const MAX_ALTERNATIVES: usize = 64;

/// Parameters that shape a search's answer instead of selecting resources; the search module
/// reads them. Anything else is a criterion.
pub(crate) const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_cursor",
    "_type",
];

/// Makes the blind terms of one tenant.
pub struct Indexer<'a> {
    pub blind: &'a BlindIndexer,
    pub tenant: &'a TenantId,
    pub search: &'a SearchIndex,
    pub base_url: &'a str,
}

impl Indexer<'_> {
    pub(crate) fn context(&self) -> Context<'_> {
        Context {
            base_url: self.base_url,
        }
    }

    pub(crate) fn term(&self, resource_type: &ResourceType, key: &Key) -> IndexTerm {
        IndexTerm(self.blind.term(
            self.tenant.as_str(),
            resource_type.as_str(),
            &key.domain,
            &key.value,
        ))
    }

    /// The terms a resource version carries, sorted, without duplicates.
    pub fn resource_terms(&self, resource_type: &ResourceType, resource: &Value) -> Vec<IndexTerm> {
        let keys = self
            .search
            .keys(resource_type.as_str(), resource, &self.context());
        let mut terms: Vec<IndexTerm> = keys.iter().map(|k| self.term(resource_type, k)).collect();
        terms.sort();
        terms.dedup();
        terms
    }

    /// A criterion's plan as store clauses (AND), or `None` when it can match nothing.
    pub(crate) fn clauses(&self, resource_type: &ResourceType, plan: &Plan) -> Option<Vec<Clause>> {
        let mut out = Vec::new();
        self.push_plan(resource_type, plan, &mut out)?;
        Some(out)
    }

    fn push_plan(
        &self,
        resource_type: &ResourceType,
        plan: &Plan,
        out: &mut Vec<Clause>,
    ) -> Option<()> {
        match plan {
            Plan::Everything => {}
            Plan::AnyOf(keys) => {
                if keys.is_empty() {
                    return None;
                }
                let mut terms: Vec<IndexTerm> =
                    keys.iter().map(|k| self.term(resource_type, k)).collect();
                terms.sort();
                terms.dedup();
                out.push(Clause::Terms(terms));
            }
            Plan::All(plans) => {
                for plan in plans {
                    self.push_plan(resource_type, plan, out)?;
                }
            }
            Plan::Ids(ids) => {
                // An id that cannot exist matches nothing; the others stay alternatives.
                let ids: Vec<ResourceId> = ids
                    .iter()
                    .filter_map(|id| ResourceId::parse(id).ok())
                    .collect();
                if ids.is_empty() {
                    return None;
                }
                out.push(Clause::Ids(ids));
            }
            Plan::LastUpdated(windows) => {
                if windows.is_empty() {
                    return None;
                }
                out.push(Clause::Updated(
                    windows
                        .iter()
                        .map(|w| {
                            (
                                w.from.map(|ms| ms.saturating_mul(1000)),
                                w.to.map(|ms| ms.saturating_mul(1000).saturating_add(999)),
                            )
                        })
                        .collect(),
                ));
            }
        }
        Some(())
    }

    /// Parses search or conditional criteria of one type into [`Criteria`]; result parameters
    /// (`_count`, `_sort`...) are left to the caller.
    pub fn criteria(
        &self,
        resource_type: &ResourceType,
        params: &[(String, String)],
        mode: CriteriaMode,
    ) -> Result<Criteria, ServiceError> {
        let mut criteria = Criteria::default();
        for (name, value) in params {
            if RESULT_PARAMS.contains(&name.as_str()) {
                if mode == CriteriaMode::Conditional
                    && !matches!(name.as_str(), "_format" | "_pretty")
                {
                    return Err(ServiceError::invalid(
                        "invalid-condition",
                        format!(
                            "{} shapes a search's answer; a condition takes search criteria only.",
                            shown(name)
                        ),
                    ));
                }
                continue;
            }
            if criteria.criteria.len() >= MAX_CRITERIA {
                return Err(ServiceError::invalid(
                    "too-many-parameters",
                    format!("A search takes at most {MAX_CRITERIA} criteria."),
                ));
            }
            match self
                .search
                .parse_in(&self.context(), resource_type.as_str(), name, value)
            {
                Ok(criterion) => {
                    criteria.applied.push((name.clone(), value.clone()));
                    criteria.criteria.push(criterion);
                }
                Err(QueryError::UnknownParameter(_)) if mode == CriteriaMode::LenientSearch => {
                    criteria.ignored.push(name.clone());
                }
                Err(QueryError::UnknownParameter(_)) => {
                    return Err(ServiceError::invalid(
                        "unknown-search-parameter",
                        format!(
                            "The search parameter '{}' is not known on {resource_type}; the CapabilityStatement lists the parameters of each type.",
                            shown(name)
                        ),
                    ));
                }
                Err(QueryError::Invalid(message)) => {
                    return Err(ServiceError::invalid("invalid-search", message));
                }
            }
        }
        if mode == CriteriaMode::Conditional && criteria.criteria.is_empty() {
            return Err(ServiceError::invalid(
                "invalid-condition",
                "A conditional interaction needs search criteria.",
            ));
        }
        Ok(criteria)
    }
}

/// A parameter name as it may appear in a message: bounded.
pub(crate) fn shown(name: &str) -> String {
    name.chars().take(64).collect()
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
    /// changes), at least one criterion.
    Conditional,
}

/// Parsed criteria of one type: all must hold.
#[derive(Debug, Default, Clone)]
pub struct Criteria {
    pub criteria: Vec<Criterion>,
    /// The parameters applied, as given (for the self link).
    pub applied: Vec<(String, String)>,
    /// Parameters a lenient search left out.
    pub ignored: Vec<String>,
}

impl Criteria {
    /// The one id an `_id` criterion names, if it names exactly one.
    pub fn single_id(&self) -> Option<ResourceId> {
        self.criteria.iter().find_map(|c| match c.plan() {
            Plan::Ids(ids) if ids.len() == 1 && c.link().is_none() => {
                ids.first().and_then(|id| ResourceId::parse(id).ok())
            }
            _ => None,
        })
    }

    /// The terms a conditional write re-checks atomically at commit, when every criterion is
    /// one exact key (an identifier, a code, a reference) or an id: a resource committed
    /// between the search and the write that carries all of them makes the write fail. With
    /// any other criterion the search alone decides (see ARCHITECTURE.md, "Conditional
    /// writes").
    pub fn guard_terms(
        &self,
        indexer: &Indexer<'_>,
        resource_type: &ResourceType,
    ) -> Vec<IndexTerm> {
        let mut terms = Vec::new();
        for criterion in &self.criteria {
            if criterion.link().is_some() || !criterion.plan_is_exact() {
                return Vec::new();
            }
            match criterion.plan() {
                Plan::AnyOf(keys) if keys.len() == 1 => {
                    if let Some(key) = keys.first() {
                        terms.push(indexer.term(resource_type, key));
                    }
                }
                Plan::Ids(_) => {}
                _ => return Vec::new(),
            }
        }
        terms
    }

    /// Whether any criterion needs another type resolved first.
    pub fn has_links(&self) -> bool {
        self.criteria.iter().any(|c| c.link().is_some())
    }

    /// The resource types the criteria reach through chains and `_has`, each with how it is
    /// reached (for the scope check).
    pub fn linked_types(&self) -> Vec<String> {
        fn walk(criterion: &Criterion, out: &mut Vec<String>) {
            match criterion.link() {
                Some(Link::Chain {
                    target_types,
                    inner,
                    ..
                }) => {
                    out.extend(target_types.iter().cloned());
                    walk(inner, out);
                }
                Some(Link::Has {
                    source_type, inner, ..
                }) => {
                    out.push(source_type.to_string());
                    walk(inner, out);
                }
                Some(Link::List { .. }) => out.push("List".into()),
                None => {}
            }
        }
        let mut out = Vec::new();
        for criterion in &self.criteria {
            walk(criterion, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }
}
