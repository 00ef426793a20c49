//! Validation at the REST layer: every write is checked before it is sealed, validator findings become OperationOutcome issues, and StructureDefinitions written through the API become profiles the validator holds; it must not validate anything itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fhirwall_definitions::{Definitions, Derivation, Kind, StructureDef};
use fhirwall_model::{IssueSeverity, IssueType, OperationOutcome};
use fhirwall_validation::{Issue, IssueCode, Severity, ValidateOptions, Validator};
use http::StatusCode;
use serde_json::Value;

use crate::error::ApiError;

/// The validator and the profiles that arrived through the API (or a package at start-up),
/// kept as JSON with their snapshots so a later profile can build on them.
pub struct Validation {
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

impl Default for Validation {
    fn default() -> Self {
        Self::new()
    }
}

impl Validation {
    pub fn new() -> Self {
        Validation {
            validator: Validator::new(Definitions::core()),
            uploaded: RwLock::new(HashMap::new()),
            by_resource_id: RwLock::new(HashMap::new()),
        }
    }

    /// Checks a StructureDefinition about to be written: a constraint (a profile) gets a
    /// snapshot built from its differential when it has none, and must parse. Other
    /// StructureDefinitions (new types, logical models) are stored but not used to validate.
    pub(crate) fn prepare_profile(&self, sd: &Value) -> Result<Option<PreparedProfile>, ApiError> {
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
    pub(crate) fn register(&self, resource_id: &str, profile: PreparedProfile) {
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
    pub(crate) fn unregister(&self, resource_id: &str) {
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
    ) -> Result<Vec<OperationOutcome>, ApiError> {
        let outcome = self
            .validator
            .validate(resource, &ValidateOptions::default());
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
        let status = if structural && !is_patch {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let errors: Vec<OperationOutcome> = outcome.errors().map(issue_outcome).collect();
        match OperationOutcome::from_issues(errors) {
            Some(outcome) => Err(ApiError {
                status,
                outcome,
                www_authenticate: None,
            }),
            None => Err(ApiError::internal()),
        }
    }
}

fn profile_error(message: &str, expression: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
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
