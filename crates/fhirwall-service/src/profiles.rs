//! The profile registry and the validation of writes: every write is checked before it is
//! sealed, validator findings become OperationOutcome issues, and StructureDefinitions written
//! through the API (or loaded from a package at start-up) become profiles the validator holds.
//! It must not validate anything itself: `fhirwall-validation` does.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fhirwall_definitions::{Definitions, Derivation, Kind, StructureDef};
use fhirwall_model::{IssueSeverity, IssueType, OperationOutcome};
use fhirwall_validation::{Issue, IssueCode, Severity, ValidateOptions, Validator};
use serde_json::Value;

use fhirwall_model::{ResourceType, Timestamp};
use fhirwall_store::CurrentQuery;

use crate::{ErrorKind, Service, ServiceError};

/// The validator and the profiles that arrived through the API (or a package at start-up),
/// kept as JSON with their snapshots so a later profile can build on them.
pub(crate) struct Profiles {
    pub validator: Validator,
    /// Uploaded profiles: url -> StructureDefinition JSON with a snapshot.
    uploaded: RwLock<HashMap<String, Arc<Value>>>,
    /// StructureDefinition resource id -> url, so a delete can retire its profile.
    by_resource_id: RwLock<HashMap<String, String>>,
}

/// A profile checked before its StructureDefinition is stored, registered after the commit.
pub(crate) struct PreparedProfile {
    url: String,
    with_snapshot: Arc<Value>,
    parsed: Arc<StructureDef>,
}

impl Profiles {
    pub fn new() -> Self {
        Profiles {
            validator: Validator::new(Definitions::core()),
            uploaded: RwLock::new(HashMap::new()),
            by_resource_id: RwLock::new(HashMap::new()),
        }
    }

    /// Checks a StructureDefinition about to be written: a constraint (a profile) gets a
    /// snapshot built from its differential when it has none, and must parse. Other
    /// StructureDefinitions (new types, logical models) are stored but not used to validate.
    pub(crate) fn prepare_profile(
        &self,
        sd: &Value,
    ) -> Result<Option<PreparedProfile>, ServiceError> {
        if sd.get("derivation").and_then(Value::as_str) != Some("constraint") {
            return Ok(None);
        }
        let Some(url) = sd.get("url").and_then(Value::as_str) else {
            return Err(profile_error(
                "A profile (derivation constraint) needs a url.",
                "StructureDefinition.url",
            ));
        };
        let with_snapshot = if sd
            .get("snapshot")
            .and_then(|s| s.get("element"))
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
        {
            sd.clone()
        } else {
            let lookup = |canonical: &str| self.structure_json(canonical);
            fhirwall_definitions::generate_snapshot(sd, &lookup).map_err(|error| {
                profile_error(
                    &format!(
                        "The profile's snapshot could not be built from its differential: {error}"
                    ),
                    "StructureDefinition.differential",
                )
            })?
        };
        let parsed = StructureDef::from_json(&with_snapshot).map_err(|error| {
            profile_error(
                &format!("The profile cannot be used: {error}"),
                "StructureDefinition.snapshot",
            )
        })?;
        // Constraints on logical models are stored but describe no resource to validate.
        if parsed.derivation != Derivation::Constraint || parsed.kind == Kind::Logical {
            return Ok(None);
        }
        if let Err(error) = self.validator.check_profile(&parsed) {
            return Err(profile_error(
                &format!("The profile cannot be used: {error}"),
                "StructureDefinition",
            ));
        }
        Ok(Some(PreparedProfile {
            url: url.to_owned(),
            with_snapshot: Arc::new(with_snapshot),
            parsed: Arc::new(parsed),
        }))
    }

    /// Makes a stored profile live. `resource_id` is its StructureDefinition's id.
    /// Makes a profile live under `key`: its StructureDefinition's id, or `package:` and its url.
    pub(crate) fn register(&self, key: &str, profile: PreparedProfile) {
        let resource_id = key;
        if let Err(error) = self.validator.add_profile(Arc::clone(&profile.parsed)) {
            tracing::warn!(error = %error, "a stored profile could not be registered");
            return;
        }
        if let Ok(mut uploaded) = self.uploaded.write() {
            uploaded.insert(profile.url.clone(), profile.with_snapshot);
        }
        if let Ok(mut ids) = self.by_resource_id.write()
            && let Some(previous) = ids.insert(resource_id.to_owned(), profile.url.clone())
            && previous != profile.url
        {
            self.retire(&previous);
        }
    }

    /// A StructureDefinition was deleted, or replaced by something that is not a profile.
    pub(crate) fn unregister(&self, key: &str) {
        let resource_id = key;
        let url = self
            .by_resource_id
            .write()
            .ok()
            .and_then(|mut ids| ids.remove(resource_id));
        if let Some(url) = url {
            self.retire(&url);
        }
    }

    fn retire(&self, url: &str) {
        if let Ok(mut uploaded) = self.uploaded.write() {
            uploaded.remove(url);
        }
        self.validator.remove_profile(url);
        // A core profile of the same url comes back rather than leaving a hole.
        if let Some(core) = Definitions::core().structure_by_url(url) {
            let _ = self.validator.add_profile(Arc::clone(core));
        }
    }

    /// A StructureDefinition with a snapshot by canonical URL: uploaded ones first, then core.
    fn structure_json(&self, canonical: &str) -> Option<Value> {
        let url = fhirwall_definitions::canonical_without_version(canonical);
        if let Some(found) = self
            .uploaded
            .read()
            .ok()
            .and_then(|uploaded| uploaded.get(url).cloned())
        {
            return Some((*found).clone());
        }
        Definitions::core().core_structure_json(url)
    }

    /// Validates a resource about to be written. A failure lists every problem: 400 when the
    /// body does not even have FHIR's shape, 422 when it breaks the definitions' rules (and
    /// always 422 for the result of a patch, whose document itself was fine).
    /// On success, the warnings (not the information notes), for a client that prefers an
    /// OperationOutcome back.
    pub(crate) fn check_write(
        &self,
        resource: &Value,
        is_patch: bool,
        now: Timestamp,
    ) -> Result<Vec<OperationOutcome>, ServiceError> {
        let outcome = self.validator.validate(
            resource,
            &ValidateOptions {
                now_millis: Some(now.millis()),
                ..ValidateOptions::default()
            },
        );
        if outcome.is_valid() {
            return Ok(outcome
                .issues
                .iter()
                .filter(|issue| issue.severity == Severity::Warning)
                .map(issue_outcome)
                .collect());
        }
        let structural = outcome
            .errors()
            .any(|issue| issue.code == IssueCode::Structure);
        let kind = if structural && !is_patch {
            ErrorKind::Invalid
        } else {
            ErrorKind::Unprocessable
        };
        let errors: Vec<OperationOutcome> = outcome.errors().map(issue_outcome).collect();
        match OperationOutcome::from_issues(errors) {
            Some(outcome) => Err(ServiceError {
                kind,
                outcome,
                bearer_error: None,
            }),
            None => Err(ServiceError::internal()),
        }
    }
}

fn profile_error(message: &str, expression: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::Unprocessable,
        IssueType::Invalid,
        "invalid-profile",
        message,
    )
    .with_expression(expression)
}

/// One validator finding as an OperationOutcome issue.
pub(crate) fn issue_outcome(issue: &Issue) -> OperationOutcome {
    let severity = match issue.severity {
        Severity::Fatal => IssueSeverity::Fatal,
        Severity::Error => IssueSeverity::Error,
        Severity::Warning => IssueSeverity::Warning,
        Severity::Information => IssueSeverity::Information,
    };
    let issue_type = match issue.code {
        IssueCode::Structure => IssueType::Structure,
        IssueCode::Required => IssueType::Required,
        IssueCode::Value => IssueType::Value,
        IssueCode::Invariant => IssueType::Invariant,
        IssueCode::CodeInvalid => IssueType::CodeInvalid,
        IssueCode::Invalid => IssueType::Invalid,
        IssueCode::Extension => IssueType::Extension,
        IssueCode::NotSupported => IssueType::NotSupported,
        IssueCode::BusinessRule => IssueType::BusinessRule,
        IssueCode::TooCostly => IssueType::TooCostly,
        IssueCode::Informational => IssueType::Informational,
    };
    let mut outcome = OperationOutcome {
        severity,
        issue_type,
        code: issue.rule,
        message: issue.message.clone(),
        expression: None,
        more: Vec::new(),
    };
    if !issue.expression.is_empty() {
        outcome = outcome.with_expression(issue.expression.clone());
    }
    outcome
}

/// Makes profiles live before serving: those given (a package loaded at start-up) and every
/// profile stored through the API. Returns how many were registered; a given profile that
/// cannot be used is named in the error.
pub(crate) async fn load(service: &Service, given: Vec<Value>) -> Result<usize, String> {
    let profiles = &service.inner.profiles;
    let mut count = 0;
    for sd in given {
        let url = sd
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("(no url)")
            .to_owned();
        let prepared = profiles
            .prepare_profile(&sd)
            .map_err(|e| format!("profile {url}: {}", e.outcome.message))?;
        if let Some(prepared) = prepared {
            profiles.register(&format!("package:{url}"), prepared);
            count += 1;
        }
    }
    let resource_type = ResourceType::parse("StructureDefinition")
        .map_err(|_| "StructureDefinition is not a resource type".to_string())?;
    for tenant in service.inner.keys.keys() {
        let stored = service
            .inner
            .store
            .find_current(CurrentQuery {
                tenant: tenant.clone(),
                resource_type: resource_type.clone(),
                clauses: Vec::new(),
                after_seq: None,
                up_to_seq: None,
                limit: 1_000_000,
            })
            .await
            .map_err(|e| format!("cannot list stored StructureDefinitions: {e}"))?;
        let keys = service
            .tenant_keys(tenant)
            .map_err(|_| "a tenant's keys are missing".to_string())?;
        for row in stored {
            if row.is_deleted() {
                continue;
            }
            if !crate::integrity::version_is_genuine(&keys.integrity, &row) {
                return Err(format!(
                    "StructureDefinition/{} failed its integrity tag",
                    row.key.id
                ));
            }
            let plain = crate::reads::open_row(service, &row)
                .map_err(|e| format!("cannot open StructureDefinition/{}: {e}", row.key.id))?;
            let sd: Value = serde_json::from_slice(&plain)
                .map_err(|_| format!("StructureDefinition/{} is not JSON", row.key.id))?;
            // A stored profile that no longer builds is skipped, not fatal: it was valid
            // when written, and the server must still start.
            match profiles.prepare_profile(&sd) {
                Ok(Some(prepared)) => {
                    profiles.register(row.key.id.as_str(), prepared);
                    count += 1;
                }
                Ok(None) => {}
                Err(_) => tracing::warn!("a stored profile could not be loaded; skipped"),
            }
        }
    }
    Ok(count)
}
