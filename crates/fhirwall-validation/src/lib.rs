//! fhirwall-validation: validates FHIR R4 JSON resources against the core definitions and registered profiles; pure computation, it must not do I/O, log, or put instance values (possible patient data) into messages.
//!
//! One [`Validator`] serves the whole server. [`Validator::validate`] walks a parsed JSON
//! resource once against the core type model (structure, JSON shape, primitive formats,
//! cardinality, required bindings, references, contained resources, narrative safety,
//! invariants), then once per profile that applies (`meta.profile` entries the registry holds
//! and [`ValidateOptions::profiles`]). Issues carry a JSON-shaped FHIRPath
//! (`Patient.name[0].given[1]`), a stable rule id and a sentence that names the element and
//! the rule but never the offending value.

mod fhirpath_patch;
mod invariant;
mod issue;
mod model;
mod narrative;
mod primitive;
mod profile;
mod reference;
mod terminology;
mod walker;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use fhirwall_definitions::{Definitions, Kind, StructureDef};
use fhirwall_fhirpath::DateTimeValue;
use serde_json::Value;

pub use fhirpath_patch::{FhirPathPatchError, apply_fhirpath_patch};
pub use invariant::InvariantSupport;
pub use issue::{Issue, IssueCode, Outcome, Severity};
pub use model::DefinitionsModel;

use crate::invariant::ConstraintEngine;
use crate::profile::ProfileIndex;

/// Why a profile could not be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationSetupError {
    #[error("the StructureDefinition has no url")]
    MissingUrl,
    #[error("the StructureDefinition's snapshot is empty")]
    EmptySnapshot,
    #[error("the StructureDefinition constrains the unknown type {0}")]
    UnknownType(String),
    #[error("logical models cannot be used to validate resources")]
    LogicalModel,
}

/// What to validate against besides the resource's own type and its `meta.profile` entries,
/// and the instant the validation happens at.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// Extra profiles (`$validate?profile=`). An unknown one is an error: the caller asked for
    /// a check the server cannot make.
    pub profiles: Vec<String>,
    /// The instant of the request, in milliseconds since the Unix epoch (UTC): what `now()`,
    /// `today()` and `timeOfDay()` mean in invariants. The validator has no clock of its own;
    /// without an instant, an invariant that reads the clock is not evaluated (and counted in
    /// the `invariant-not-evaluated` issue) rather than failed.
    pub now_millis: Option<i64>,
}

/// A registered profile and the child index built from its snapshot on first use.
#[derive(Debug)]
pub(crate) struct ProfileEntry {
    pub(crate) structure: Arc<StructureDef>,
    index: OnceLock<ProfileIndex>,
}

impl ProfileEntry {
    fn new(structure: Arc<StructureDef>) -> Self {
        ProfileEntry {
            structure,
            index: OnceLock::new(),
        }
    }

    pub(crate) fn index(&self) -> &ProfileIndex {
        self.index
            .get_or_init(|| ProfileIndex::build(&self.structure))
    }
}

/// Profiles by canonical URL (no version). Replaced whole on change, so one validation sees
/// one consistent set without holding a lock.
pub(crate) type ProfileMap = HashMap<String, Arc<ProfileEntry>>;

/// The validator: core definitions, a registry of profiles, and the invariant engine with
/// its cache of parsed expressions.
pub struct Validator {
    defs: &'static Definitions,
    profiles: RwLock<Arc<ProfileMap>>,
    constraints: ConstraintEngine,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("profiles", &self.profile_map().len())
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator over the core definitions, its registry pre-filled with the core's
    /// profiles (vitalsigns and the others) and extension definitions.
    pub fn new(defs: &'static Definitions) -> Self {
        let mut map = ProfileMap::new();
        for structure in defs.core_profiles() {
            map.insert(
                structure.url.clone(),
                Arc::new(ProfileEntry::new(Arc::clone(structure))),
            );
        }
        Validator {
            defs,
            profiles: RwLock::new(Arc::new(map)),
            constraints: ConstraintEngine::new(defs),
        }
    }

    /// The core definitions this validator uses.
    pub fn definitions(&self) -> &'static Definitions {
        self.defs
    }

    /// Whether [`Validator::add_profile`] would take this definition, so a caller can refuse it
    /// before storing it.
    pub fn check_profile(&self, structure: &StructureDef) -> Result<(), ValidationSetupError> {
        if structure.url.is_empty() {
            return Err(ValidationSetupError::MissingUrl);
        }
        if structure.elements.is_empty() {
            return Err(ValidationSetupError::EmptySnapshot);
        }
        if structure.kind == Kind::Logical {
            return Err(ValidationSetupError::LogicalModel);
        }
        if self.defs.type_info(&structure.type_name).is_none() {
            return Err(ValidationSetupError::UnknownType(
                structure.type_name.clone(),
            ));
        }
        Ok(())
    }

    /// Registers a profile or extension definition (with its snapshot), replacing one with
    /// the same url.
    pub fn add_profile(&self, structure: Arc<StructureDef>) -> Result<(), ValidationSetupError> {
        self.check_profile(&structure)?;
        let url = fhirwall_definitions::canonical_without_version(&structure.url).to_owned();
        let entry = Arc::new(ProfileEntry::new(structure));
        // Build the index now: registration is rare, validation should not pay for it.
        entry.index();
        let mut guard = self
            .profiles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map = ProfileMap::clone(&guard);
        map.insert(url, entry);
        *guard = Arc::new(map);
        Ok(())
    }

    /// Removes a registered profile (core ones included).
    pub fn remove_profile(&self, url: &str) {
        let url = fhirwall_definitions::canonical_without_version(url);
        let mut guard = self
            .profiles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.contains_key(url) {
            let mut map = ProfileMap::clone(&guard);
            map.remove(url);
            *guard = Arc::new(map);
        }
    }

    /// Whether a profile with this url (version ignored) is registered.
    pub fn has_profile(&self, url: &str) -> bool {
        self.profile_map()
            .contains_key(fhirwall_definitions::canonical_without_version(url))
    }

    /// The profiles held, as (constrained type, canonical URL), sorted: what a
    /// CapabilityStatement lists as supported profiles.
    pub fn profiles(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .profile_map()
            .iter()
            .map(|(url, entry)| (entry.structure.type_name.clone(), url.clone()))
            .collect();
        out.sort();
        out
    }

    /// Whether invariants (FHIRPath constraints) are evaluated, and how.
    pub fn invariant_support(&self) -> InvariantSupport {
        self.constraints.support()
    }

    fn profile_map(&self) -> Arc<ProfileMap> {
        let guard = self
            .profiles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard)
    }

    /// Validates a parsed JSON resource against its base definition, every `meta.profile` the
    /// registry holds (unknown ones give a warning, not an error), and `options.profiles`
    /// (unknown ones give an error).
    pub fn validate(&self, resource: &Value, options: &ValidateOptions) -> Outcome {
        let profiles = self.profile_map();
        let now = options.now_millis.map(DateTimeValue::from_unix_millis);
        let mut walker = walker::Walker::new(self.defs, &profiles, &self.constraints, now);
        walker.validate_root(resource, &options.profiles);
        walker.finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_validator_is_shared_between_threads() {
        assert_send_sync::<Validator>();
        assert_send_sync::<Outcome>();
    }

    #[test]
    fn core_profiles_are_registered_and_replaceable() {
        let validator = Validator::new(Definitions::core());
        let vitals = "http://hl7.org/fhir/StructureDefinition/vitalsigns";
        assert!(validator.has_profile(vitals));
        assert!(validator.has_profile("http://hl7.org/fhir/StructureDefinition/patient-birthTime"));
        let structure = Arc::clone(Definitions::core().structure_by_url(vitals).unwrap());
        validator.add_profile(Arc::clone(&structure)).unwrap();
        assert!(validator.has_profile(vitals));
        validator.remove_profile(vitals);
        assert!(!validator.has_profile(vitals));
        let mut empty = (*structure).clone();
        empty.elements.clear();
        assert_eq!(
            validator.add_profile(Arc::new(empty)),
            Err(ValidationSetupError::EmptySnapshot)
        );
        let mut no_url = (*structure).clone();
        no_url.url.clear();
        assert_eq!(
            validator.add_profile(Arc::new(no_url)),
            Err(ValidationSetupError::MissingUrl)
        );
        assert_eq!(validator.invariant_support(), InvariantSupport::FhirPath);
    }

    #[test]
    fn a_minimal_patient_is_valid_and_messages_do_not_echo_values() {
        let validator = Validator::new(Definitions::core());
        let patient = json!({
            "resourceType": "Patient",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jan</div>"},
            "name": [{"family": "Secretname"}],
            "birthDate": "1980-02-30"
        });
        let outcome = validator.validate(&patient, &ValidateOptions::default());
        assert!(!outcome.is_valid());
        let issue = outcome.errors().next().unwrap();
        assert_eq!(issue.rule, "format-date");
        assert_eq!(issue.code.code(), "value");
        assert_eq!(issue.expression, "Patient.birthDate");
        assert_eq!(
            issue.message,
            "Patient.birthDate is not a valid date: expected YYYY, YYYY-MM or YYYY-MM-DD with a real month and day."
        );
        for issue in &outcome.issues {
            assert!(!issue.message.contains("1980"));
            assert!(!issue.message.contains("Secretname"));
        }
    }
}
