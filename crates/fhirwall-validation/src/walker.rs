//! The base pass: one walk over a JSON resource against the core type model (JSON shape, primitives, cardinality, required bindings, references, contained resources, narrative, invariants), handing profiles to the profile pass; it must not clone the instance or compile anything per call.

use std::collections::HashMap;

use fhirwall_definitions::{
    BindingStrength, ChildDef, Constraint, Definitions, ElementDef, Max,
    Severity as ConstraintSeverity, TypeInfo, TypeKind,
};
use fhirwall_fhirpath::DateTimeValue;
use serde_json::{Map, Value};

use crate::invariant::{ConstraintEngine, ConstraintSite, Focus, Verdict, is_native};
use crate::issue::{Issue, IssueCode, IssueSink, Outcome, Severity};
use crate::narrative::{NarrativeProblem, check_narrative};
use crate::primitive::{
    JsonKind, check_primitive, has_character_xml_cannot_carry, is_uri_type, is_valid_id, json_kind,
};
use crate::reference::{
    ReferenceForm, ReferenceSyntaxError, parse_reference, target_type_of_profile,
};
use crate::terminology::{BindingCheck, allowed_codes_phrase, check_binding};
use crate::{ProfileEntry, ProfileMap};

/// Deepest nesting of resources inside resources (Bundle in Bundle, contained) the walker
/// follows; the server's JSON depth limit keeps this far away in practice.
const MAX_RESOURCE_NESTING: usize = 16;

/// How a resource sits in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nesting {
    /// The validated resource itself.
    Root,
    /// In `contained` of the resource in frame `container`, at position `index`.
    Contained { container: usize, index: usize },
    /// `Bundle.entry.resource`, `Parameters.parameter.resource` and other resource-typed
    /// elements: a resource of its own, not contained.
    Inline,
}

/// One resource being walked.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) resource: &'a Value,
    pub(crate) root_resource: &'a Value,
    resource_type: &'a str,
    /// For a container: the ids of its contained resources and whether each is referenced.
    contained_ids: Vec<Option<&'a str>>,
    contained_referenced: Vec<bool>,
    nesting: Nesting,
    in_bundle: bool,
}

/// The walk over one validation: issues, the current path, the resource frames.
pub(crate) struct Walker<'a> {
    pub(crate) defs: &'static Definitions,
    pub(crate) profiles: &'a ProfileMap,
    pub(crate) constraints: &'a ConstraintEngine,
    /// The instant of the request, for invariants that read the clock.
    now: Option<DateTimeValue>,
    pub(crate) sink: IssueSink,
    /// The JSON-shaped FHIRPath of the element being walked.
    pub(crate) path: String,
    pub(crate) frames: Vec<Frame<'a>>,
    /// `fullUrl` → resource type of the entries of the Bundles being walked, innermost last.
    bundles: Vec<HashMap<&'a str, &'a str>>,
    /// Keys of constraints that could not be evaluated, for one summary issue.
    pub(crate) unevaluated: Vec<String>,
    scratch_key: String,
}

/// A JSON key as it may appear in a message: a short identifier, or nothing at all.
pub(crate) fn printable_key(key: &str) -> &str {
    if !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key
    } else {
        "(unprintable)"
    }
}

/// The child a JSON key names: its position, definition and, for a choice, the type.
pub(crate) fn find_child<'t>(
    info: &'t TypeInfo,
    key: &str,
) -> Option<(usize, &'t ChildDef, Option<&'t str>)> {
    for (index, child) in info.children.iter().enumerate() {
        if !child.is_choice {
            if child.name == key {
                return Some((index, child, None));
            }
            continue;
        }
        let Some(suffix) = key.strip_prefix(child.name.as_str()) else {
            continue;
        };
        for ty in &child.types {
            if fhirwall_definitions::type_suffix_matches(ty, suffix) {
                return Some((index, child, Some(ty.as_str())));
            }
        }
    }
    None
}

/// A choice child whose name starts `key` followed by an upper-case letter (`valueFoo`).
fn choice_with_unknown_suffix<'t>(info: &'t TypeInfo, key: &str) -> Option<&'t ChildDef> {
    info.children.iter().find(|child| {
        child.is_choice
            && key
                .strip_prefix(child.name.as_str())
                .and_then(|suffix| suffix.bytes().next())
                .is_some_and(|b| b.is_ascii_uppercase())
    })
}

fn max_text(max: Max) -> String {
    match max {
        Max::Unbounded => "*".into(),
        Max::At(n) => n.to_string(),
    }
}

/// A small set of child positions, on the stack (no type has anywhere near 256 children).
#[derive(Default)]
struct ChildSet([u64; 4]);

impl ChildSet {
    fn insert(&mut self, index: usize) -> bool {
        let (word, bit) = (index / 64, index % 64);
        match self.0.get_mut(word) {
            Some(slot) => {
                let was = *slot & (1 << bit) != 0;
                *slot |= 1 << bit;
                !was
            }
            None => true,
        }
    }

    fn contains(&self, index: usize) -> bool {
        let (word, bit) = (index / 64, index % 64);
        self.0.get(word).is_some_and(|slot| *slot & (1 << bit) != 0)
    }
}

impl<'a> Walker<'a> {
    pub(crate) fn new(
        defs: &'static Definitions,
        profiles: &'a ProfileMap,
        constraints: &'a ConstraintEngine,
        now: Option<DateTimeValue>,
    ) -> Self {
        Walker {
            defs,
            profiles,
            constraints,
            now,
            sink: IssueSink::default(),
            path: String::with_capacity(128),
            frames: Vec::new(),
            bundles: Vec::new(),
            unevaluated: Vec::new(),
            scratch_key: String::new(),
        }
    }

    pub(crate) fn report(
        &mut self,
        severity: Severity,
        code: IssueCode,
        rule: &'static str,
        message: String,
    ) {
        self.report_at(severity, code, rule, self.path.clone(), message, None);
    }

    pub(crate) fn report_at(
        &mut self,
        severity: Severity,
        code: IssueCode,
        rule: &'static str,
        expression: String,
        message: String,
        constraint_key: Option<&str>,
    ) {
        self.sink.push(Issue {
            severity,
            code,
            rule,
            expression,
            message,
            constraint_key: constraint_key.map(str::to_owned),
        });
    }

    pub(crate) fn error(&mut self, code: IssueCode, rule: &'static str, message: String) {
        self.report(Severity::Error, code, rule, message);
    }

    /// Appends `.name` to the path and returns the length to truncate back to.
    pub(crate) fn push_segment(&mut self, name: &str) -> usize {
        let mark = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        mark
    }

    pub(crate) fn push_index(&mut self, index: usize) -> usize {
        use std::fmt::Write as _;
        let mark = self.path.len();
        let _ = write!(self.path, "[{index}]");
        mark
    }

    pub(crate) fn pop(&mut self, mark: usize) {
        self.path.truncate(mark);
    }

    pub(crate) fn finish(mut self) -> Outcome {
        if !self.unevaluated.is_empty() {
            self.unevaluated.sort();
            self.unevaluated.dedup();
            let shown: Vec<&str> = self
                .unevaluated
                .iter()
                .take(8)
                .map(String::as_str)
                .collect();
            let more = if self.unevaluated.len() > shown.len() {
                ", ..."
            } else {
                ""
            };
            let root = self.root_name();
            self.sink.push(Issue {
                severity: Severity::Information,
                code: IssueCode::Informational,
                rule: "invariant-not-evaluated",
                expression: root,
                message: format!(
                    "{} invariant(s) could not be evaluated and were not checked: {}{more}.",
                    self.unevaluated.len(),
                    shown.join(", ")
                ),
                constraint_key: None,
            });
        }
        let root = self.root_name();
        self.sink.finish(&root)
    }

    fn root_name(&self) -> String {
        self.path
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Validates the resource the caller gave, then the profiles asked for.
    pub(crate) fn validate_root(&mut self, resource: &'a Value, extra_profiles: &[String]) {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .filter(|name| self.defs.is_resource_type(name))
            .unwrap_or("Resource");
        self.path.clear();
        self.path.push_str(resource_type);
        self.resource(resource, Nesting::Root, false, extra_profiles);
    }

    /// Validates a resource at the current path. Returns false when it is not a resource at
    /// all (no object, no known `resourceType`), so callers can stop.
    pub(crate) fn resource(
        &mut self,
        value: &'a Value,
        nesting: Nesting,
        in_bundle: bool,
        extra_profiles: &[String],
    ) -> bool {
        let Some(object) = value.as_object() else {
            self.error(
                IssueCode::Structure,
                "json-type",
                format!("{} must be a JSON object holding a resource.", self.path),
            );
            return false;
        };
        let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
            self.error(
                IssueCode::Structure,
                "resource-type-missing",
                format!("{} has no resourceType.", self.path),
            );
            return false;
        };
        let info = match self.defs.type_info(resource_type) {
            Some(info) if info.kind == TypeKind::Resource && !info.is_abstract => info,
            _ => {
                self.error(
                    IssueCode::Structure,
                    "resource-type-unknown",
                    format!(
                        "{}: '{}' is not a FHIR R4 resource type.",
                        self.path,
                        printable_key(resource_type)
                    ),
                );
                return false;
            }
        };
        if self.frames.len() >= MAX_RESOURCE_NESTING {
            self.error(
                IssueCode::TooCostly,
                "resource-nesting",
                format!("{} nests resources too deeply to validate.", self.path),
            );
            return false;
        }
        let root_resource = match nesting {
            Nesting::Contained { container, .. } => self
                .frames
                .get(container)
                .map_or(value, |frame| frame.root_resource),
            Nesting::Root | Nesting::Inline => value,
        };
        let contained_ids: Vec<Option<&'a str>> = object
            .get("contained")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.get("id").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        let contained_referenced = vec![false; contained_ids.len()];
        self.frames.push(Frame {
            resource: value,
            root_resource,
            resource_type: info.name.as_str(),
            contained_ids,
            contained_referenced,
            nesting,
            in_bundle,
        });
        let is_bundle = resource_type == "Bundle";
        if is_bundle {
            let mut full_urls = HashMap::new();
            if let Some(entries) = object.get("entry").and_then(Value::as_array) {
                for entry in entries {
                    if let (Some(url), Some(entry_type)) = (
                        entry.get("fullUrl").and_then(Value::as_str),
                        entry
                            .get("resource")
                            .and_then(|r| r.get("resourceType"))
                            .and_then(Value::as_str),
                    ) {
                        full_urls.insert(url, entry_type);
                    }
                }
            }
            self.bundles.push(full_urls);
        }

        if let Some(id) = object.get("id").and_then(Value::as_str)
            && !is_valid_id(id)
        {
            let mark = self.push_segment("id");
            self.error(
                IssueCode::Value,
                "format-id",
                format!(
                    "{} is not a valid resource id: expected 1 to 64 letters, digits, '-' or '.'.",
                    self.path
                ),
            );
            self.pop(mark);
        }
        self.object_children(object, info, true);
        self.resource_rules(object, info);
        if let Some(root_element) = info.element() {
            self.constraints_at(
                &root_element.constraints,
                &[],
                Focus::Element(value),
                info.name.as_str(),
            );
        }
        self.meta_profiles(value, object);
        self.extra_profiles(value, extra_profiles);

        if is_bundle {
            self.bundles.pop();
        }
        self.frames.pop();
        true
    }

    /// Whether the resource being walked is inside a Bundle or Parameters (urn: references
    /// and conditional references are allowed there).
    fn in_bundle(&self) -> bool {
        self.frames.last().is_some_and(|frame| frame.in_bundle)
    }

    /// The DomainResource rules checked natively: dom-2..dom-6.
    fn resource_rules(&mut self, object: &'a Map<String, Value>, info: &TypeInfo) {
        let is_domain_resource = self.defs.is_subtype(info.name.as_str(), "DomainResource");
        if !is_domain_resource {
            return;
        }
        let Some(frame) = self.frames.last() else {
            return;
        };
        let nesting = frame.nesting;
        let unreferenced: Vec<usize> = frame
            .contained_ids
            .iter()
            .zip(&frame.contained_referenced)
            .enumerate()
            .filter(|(_, (id, referenced))| id.is_some() && !**referenced)
            .map(|(index, _)| index)
            .collect();
        if let Nesting::Contained { .. } = nesting {
            if object.contains_key("contained") {
                let mark = self.push_segment("contained");
                self.report_keyed(
                    Severity::Error,
                    IssueCode::Invariant,
                    "contained-nested",
                    format!(
                        "{}: a contained resource SHALL NOT contain nested resources (dom-2).",
                        self.path
                    ),
                    "dom-2",
                );
                self.pop(mark);
            }
            if let Some(meta) = object.get("meta") {
                for (field, key, rule, sentence) in [
                    (
                        "versionId",
                        "dom-4",
                        "contained-meta-version",
                        "a contained resource SHALL NOT have a meta.versionId",
                    ),
                    (
                        "lastUpdated",
                        "dom-4",
                        "contained-meta-version",
                        "a contained resource SHALL NOT have a meta.lastUpdated",
                    ),
                    (
                        "security",
                        "dom-5",
                        "contained-security",
                        "a contained resource SHALL NOT have a security label",
                    ),
                ] {
                    if meta.get(field).is_some() {
                        let mark = self.push_segment("meta");
                        let inner = self.push_segment(field);
                        self.report_keyed(
                            Severity::Error,
                            IssueCode::Invariant,
                            rule,
                            format!("{}: {sentence} ({key}).", self.path),
                            key,
                        );
                        self.pop(inner);
                        self.pop(mark);
                    }
                }
            }
        } else {
            let has_div = object
                .get("text")
                .and_then(|text| text.get("div"))
                .is_some();
            if !has_div {
                self.report_keyed(
                    Severity::Warning,
                    IssueCode::Invariant,
                    "narrative-missing",
                    format!(
                        "{} should have a narrative (text.div) for robust management (dom-6).",
                        self.path
                    ),
                    "dom-6",
                );
            }
        }
        for index in unreferenced {
            let mark = self.push_segment("contained");
            let inner = self.push_index(index);
            self.report_keyed(
                Severity::Error,
                IssueCode::Invariant,
                "contained-unreferenced",
                format!(
                    "{}: the contained resource is not referenced from elsewhere in the resource and does not refer to its container (dom-3).",
                    self.path
                ),
                "dom-3",
            );
            self.pop(inner);
            self.pop(mark);
        }
    }

    /// Reports an issue at the current path that breaks the FHIR constraint `key`.
    pub(crate) fn report_keyed(
        &mut self,
        severity: Severity,
        code: IssueCode,
        rule: &'static str,
        message: String,
        key: &str,
    ) {
        self.report_at(severity, code, rule, self.path.clone(), message, Some(key));
    }

    /// Validates the `meta.profile` entries of a resource that the registry holds.
    fn meta_profiles(&mut self, value: &'a Value, object: &'a Map<String, Value>) {
        let Some(profiles) = object
            .get("meta")
            .and_then(|meta| meta.get("profile"))
            .and_then(Value::as_array)
        else {
            return;
        };
        for (index, url) in profiles.iter().enumerate() {
            let Some(url) = url.as_str() else { continue };
            let key = fhirwall_definitions::canonical_without_version(url);
            let profiles: &'a ProfileMap = self.profiles;
            match profiles.get(key) {
                Some(entry) => self.validate_resource_against_profile(value, entry),
                None => {
                    let mark = self.push_segment("meta");
                    let profile_mark = self.push_segment("profile");
                    let index_mark = self.push_index(index);
                    self.report(
                        Severity::Warning,
                        IssueCode::NotSupported,
                        "profile-unknown",
                        format!(
                            "{}: the profile {} is not known to this server, so the resource was not validated against it.",
                            self.path,
                            printable_url(url)
                        ),
                    );
                    self.pop(index_mark);
                    self.pop(profile_mark);
                    self.pop(mark);
                }
            }
        }
    }

    /// Validates against the profiles the caller asked for; an unknown one is an error.
    fn extra_profiles(&mut self, value: &'a Value, urls: &[String]) {
        let profiles: &'a ProfileMap = self.profiles;
        for url in urls {
            let key = fhirwall_definitions::canonical_without_version(url);
            match profiles.get(key) {
                Some(entry) => self.validate_resource_against_profile(value, entry),
                None => self.error(
                    IssueCode::NotSupported,
                    "profile-unknown",
                    format!(
                        "{}: the profile {} asked for is not known to this server, so the resource could not be validated against it.",
                        self.path,
                        printable_url(url)
                    ),
                ),
            }
        }
    }

    fn validate_resource_against_profile(&mut self, value: &'a Value, entry: &'a ProfileEntry) {
        crate::profile::validate_resource_profile(self, value, entry);
    }

    /// Walks the keys of an object of type `info`: every key must be a child, with the
    /// right JSON shape; then the cardinality of every child.
    pub(crate) fn object_children(
        &mut self,
        object: &'a Map<String, Value>,
        info: &'static TypeInfo,
        is_resource: bool,
    ) {
        let mut present = ChildSet::default();
        let mut choice_present = ChildSet::default();
        for (key, value) in object {
            if self.sink.is_full() {
                return;
            }
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, shadow_only) = match key.strip_prefix('_') {
                Some(base) => {
                    if object.contains_key(base) {
                        // Walked together with its value.
                        continue;
                    }
                    (base, true)
                }
                None => (key.as_str(), false),
            };
            if key == "fhir_comments" || name == "fhir_comments" {
                let mark = self.push_segment(key);
                self.error(
                    IssueCode::Structure,
                    "fhir-comments",
                    format!(
                        "{}: fhir_comments is not part of FHIR R4 JSON and is not accepted.",
                        self.path
                    ),
                );
                self.pop(mark);
                continue;
            }
            let Some((index, child, choice_type)) = find_child(info, name) else {
                self.unknown_key(info, key, name);
                continue;
            };
            let mark = self.push_segment(name);
            if child.is_choice && !choice_present.insert(index) {
                self.error(
                    IssueCode::Structure,
                    "choice-multiple",
                    format!(
                        "{}: {}.{}[x] already has a value of another type; a choice element holds one value.",
                        self.path, info.name, child.name
                    ),
                );
            }
            present.insert(index);
            let type_name = match choice_type {
                Some(ty) => ty,
                None => child.types.first().map_or("", String::as_str),
            };
            let element = info.child_element(child);
            let (value, shadow) = if shadow_only {
                (None, Some(value))
            } else {
                self.scratch_key.clear();
                self.scratch_key.push('_');
                self.scratch_key.push_str(name);
                (Some(value), object.get(self.scratch_key.as_str()))
            };
            let is_contained_list = is_resource && child.name == "contained";
            self.child_value(value, shadow, child, element, type_name, is_contained_list);
            self.pop(mark);
        }
        for (index, child) in info.children.iter().enumerate() {
            if child.min > 0 && !present.contains(index) {
                let shown = if child.is_choice {
                    format!("{}[x]", child.name)
                } else {
                    child.name.clone()
                };
                let mark = self.push_segment(&shown);
                self.error(
                    IssueCode::Required,
                    "cardinality-min",
                    format!("{} is required (min {}) but missing.", self.path, child.min),
                );
                self.pop(mark);
            }
        }
    }

    fn unknown_key(&mut self, info: &TypeInfo, key: &str, name: &str) {
        let mark = self.push_segment(key);
        if let Some(choice) = choice_with_unknown_suffix(info, name) {
            let allowed: Vec<&str> = choice.types.iter().map(String::as_str).collect();
            self.error(
                IssueCode::Structure,
                "choice-type",
                format!(
                    "{}: the type named by '{}' is not allowed for {}.{}[x] (allowed: {}).",
                    self.path,
                    printable_key(key),
                    info.name,
                    choice.name,
                    allowed.join(", ")
                ),
            );
        } else {
            self.error(
                IssueCode::Structure,
                "unknown-element",
                format!(
                    "Unknown element '{}' in {}.",
                    printable_key(key),
                    self.path.get(..mark).unwrap_or_default()
                ),
            );
        }
        self.pop(mark);
    }

    /// One child's JSON value (and `_name` object): array or single as its cardinality says.
    fn child_value(
        &mut self,
        value: Option<&'a Value>,
        shadow: Option<&'a Value>,
        child: &ChildDef,
        element: Option<&'static ElementDef>,
        type_name: &str,
        is_contained_list: bool,
    ) {
        let Some(info) = self.defs.type_info(type_name) else {
            return;
        };
        let is_primitive = info.kind == TypeKind::Primitive;
        if shadow.is_some() && !is_primitive {
            self.error(
                IssueCode::Structure,
                "primitive-extension-not-primitive",
                format!(
                    "{}: a '_' object (id and extensions of a primitive) is only allowed for primitive elements.",
                    self.path
                ),
            );
        }
        if !child.max.is_repeating() {
            if value.is_some_and(Value::is_array) || shadow.is_some_and(Value::is_array) {
                self.error(
                    IssueCode::Structure,
                    "array-unexpected",
                    format!(
                        "{} does not repeat (max {}), so FHIR JSON forbids an array here.",
                        self.path,
                        max_text(child.max)
                    ),
                );
                return;
            }
            self.item(value, shadow.filter(|_| is_primitive), info, element, None);
            return;
        }
        let values = match value {
            None => None,
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                self.error(
                    IssueCode::Structure,
                    "array-expected",
                    format!(
                        "{} repeats (max {}), so FHIR JSON requires an array even for one value.",
                        self.path,
                        max_text(child.max)
                    ),
                );
                return;
            }
        };
        let shadows = match shadow {
            None => None,
            Some(Value::Array(items)) if is_primitive => Some(items),
            Some(_) if is_primitive => {
                self.error(
                    IssueCode::Structure,
                    "array-expected",
                    format!(
                        "{}: the '_' extension object of a repeating primitive must be an array.",
                        self.path
                    ),
                );
                return;
            }
            Some(_) => None,
        };
        let value_count = values.map_or(0, Vec::len);
        let shadow_count = shadows.map_or(0, Vec::len);
        if values.is_some_and(Vec::is_empty) || shadows.is_some_and(Vec::is_empty) {
            self.error(
                IssueCode::Structure,
                "empty-array",
                format!(
                    "{} is an empty array; FHIR JSON leaves out elements without values.",
                    self.path
                ),
            );
            return;
        }
        if values.is_some() && shadows.is_some() && value_count != shadow_count {
            self.error(
                IssueCode::Structure,
                "primitive-extension-length",
                format!(
                    "{}: the value array and its '_' extension array must have the same length.",
                    self.path
                ),
            );
            return;
        }
        let count = value_count.max(shadow_count);
        if !child.max.allows(count) {
            self.error(
                IssueCode::Invalid,
                "cardinality-max",
                format!(
                    "{} allows at most {} values but has {count}.",
                    self.path,
                    max_text(child.max)
                ),
            );
        }
        if usize::try_from(child.min).is_ok_and(|min| count < min) {
            self.error(
                IssueCode::Required,
                "cardinality-min",
                format!(
                    "{} requires at least {} values but has {count}.",
                    self.path, child.min
                ),
            );
        }
        for index in 0..count {
            if self.sink.is_full() {
                return;
            }
            let item_value = values.and_then(|items| items.get(index));
            let item_shadow = shadows
                .and_then(|items| items.get(index))
                .filter(|v| !v.is_null());
            let mark = self.push_index(index);
            let slot = Some(index).filter(|_| is_contained_list);
            self.item(item_value, item_shadow, info, element, Some(slot));
            self.pop(mark);
        }
    }

    /// One value of an element, at the current path. `array_slot` is None for a single
    /// value, and for an array item Some(contained position) or Some(None).
    fn item(
        &mut self,
        value: Option<&'a Value>,
        shadow: Option<&'a Value>,
        info: &'static TypeInfo,
        element: Option<&'static ElementDef>,
        array_slot: Option<Option<usize>>,
    ) {
        match info.kind {
            TypeKind::Primitive => {
                self.primitive(value, shadow, info, element, array_slot.is_some());
            }
            TypeKind::Resource => {
                let Some(value) = value else { return };
                let nesting = match array_slot.flatten() {
                    Some(index) => Nesting::Contained {
                        container: self.frames.len().saturating_sub(1),
                        index,
                    },
                    None => Nesting::Inline,
                };
                let in_bundle = self.in_bundle() || matches!(nesting, Nesting::Inline);
                self.resource(value, nesting, in_bundle, &[]);
            }
            TypeKind::Complex | TypeKind::Backbone => {
                let Some(value) = value else { return };
                self.complex(value, info, element);
            }
        }
    }

    fn complex(
        &mut self,
        value: &'a Value,
        info: &'static TypeInfo,
        element: Option<&'static ElementDef>,
    ) {
        let Some(object) = value.as_object() else {
            self.error(
                IssueCode::Structure,
                "json-type",
                format!(
                    "{} must be a JSON object ({} in FHIR JSON).",
                    self.path, info.name
                ),
            );
            return;
        };
        if object.is_empty() {
            self.report_keyed(
                Severity::Error,
                IssueCode::Structure,
                "empty-object",
                format!(
                    "{} is an empty object; every element must have a value or children (ele-1).",
                    self.path
                ),
                "ele-1",
            );
            return;
        }
        self.object_children(object, info, false);
        if object.keys().all(|k| k == "id") {
            self.report_keyed(
                Severity::Error,
                IssueCode::Invariant,
                "element-empty",
                format!(
                    "{} has only an id; every element must have a value or children (ele-1).",
                    self.path
                ),
                "ele-1",
            );
        }
        match info.name.as_str() {
            "Reference" => self.reference(object, element),
            "Extension" => self.extension(value, object),
            _ => {}
        }
        if let Some(element) = element {
            self.binding(element, info.name.as_str(), value);
        }
        let type_constraints: &[_] = if info.kind == TypeKind::Complex {
            info.element()
                .map_or(&[], |root| root.constraints.as_slice())
        } else {
            &[]
        };
        let element_constraints = element.map_or(&[][..], |e| e.constraints.as_slice());
        self.constraints_at(
            element_constraints,
            type_constraints,
            Focus::Element(value),
            info.name.as_str(),
        );
    }

    fn primitive(
        &mut self,
        value: Option<&'a Value>,
        shadow: Option<&'a Value>,
        info: &'static TypeInfo,
        element: Option<&'static ElementDef>,
        in_array: bool,
    ) {
        let type_name = info.name.as_str();
        let value = match value {
            Some(Value::Null) if in_array && shadow.is_some() => None,
            Some(Value::Null) => {
                self.null_value();
                return;
            }
            other => other,
        };
        if value.is_none() && shadow.is_none() {
            self.null_value();
            return;
        }
        if let Some(value) = value {
            let kind = json_kind(type_name);
            let kind_ok = match kind {
                JsonKind::String => value.is_string(),
                JsonKind::Number => value.is_number(),
                JsonKind::Boolean => value.is_boolean(),
            };
            if !kind_ok {
                let expected = match kind {
                    JsonKind::String => "string",
                    JsonKind::Number => "number",
                    JsonKind::Boolean => "boolean (true or false)",
                };
                self.error(
                    IssueCode::Structure,
                    "json-type",
                    format!(
                        "{} must be a JSON {expected} ({type_name} in FHIR JSON).",
                        self.path
                    ),
                );
                return;
            }
            if let Some(text) = value.as_str()
                && has_character_xml_cannot_carry(text)
            {
                // Checked on every string (the narrative too): the value could be stored but
                // never written as XML. Its other checks are moot.
                self.error(
                    IssueCode::Structure,
                    "string-character",
                    format!(
                        "{} contains a character FHIR cannot carry: a control character other than tab, line feed and carriage return, or a Unicode noncharacter such as U+FFFF (XML 1.0 has no way to write it).",
                        self.path
                    ),
                );
            } else if type_name == "xhtml" {
                self.narrative_div(value);
            } else if let Err(problem) = check_primitive(type_name, value) {
                let sentence = if problem.rule == "empty-string" {
                    format!(
                        "{} is an empty string; FHIR forbids empty strings (leave the element out instead).",
                        self.path
                    )
                } else {
                    format!(
                        "{} is not a valid {type_name}: expected {}.",
                        self.path, problem.expected
                    )
                };
                let code = if problem.rule == "empty-string" {
                    IssueCode::Structure
                } else {
                    IssueCode::Value
                };
                self.error(code, problem.rule, sentence);
            } else if let Some(element) = element {
                self.primitive_limits(element, type_name, value);
                self.binding(element, type_name, value);
            }
            if is_uri_type(type_name)
                && let Some(target) = value.as_str().and_then(|t| t.strip_prefix('#'))
            {
                self.note_local_target(target);
            }
        }
        if let Some(shadow) = shadow {
            match shadow.as_object() {
                Some(object) if object.is_empty() => {
                    self.error(
                        IssueCode::Structure,
                        "empty-object",
                        format!(
                            "{}: the '_' extension object is empty; leave it out instead.",
                            self.path
                        ),
                    );
                }
                Some(object) => {
                    self.object_children(object, info, false);
                    if value.is_none() && !object.contains_key("extension") {
                        self.report_keyed(
                            Severity::Error,
                            IssueCode::Invariant,
                            "element-empty",
                            format!(
                                "{} has neither a value nor extensions (ele-1).",
                                self.path
                            ),
                            "ele-1",
                        );
                    }
                }
                None => self.error(
                    IssueCode::Structure,
                    "json-type",
                    format!(
                        "{}: the '_' extension of a primitive must be a JSON object with id and extension.",
                        self.path
                    ),
                ),
            }
        }
        if let Some(element) = element {
            self.constraints_at(
                &element.constraints,
                &[],
                Focus::Primitive {
                    value,
                    extension: shadow,
                },
                type_name,
            );
        }
    }

    /// maxLength, minValue and maxValue of an element.
    pub(crate) fn primitive_limits(
        &mut self,
        element: &ElementDef,
        type_name: &str,
        value: &Value,
    ) {
        if let (Some(max_length), Some(text)) = (element.max_length, value.as_str())
            && text.chars().count() > max_length as usize
        {
            self.error(
                IssueCode::Value,
                "max-length",
                format!(
                    "{} is longer than the {max_length} characters its definition allows.",
                    self.path
                ),
            );
        }
        for (limit, is_min) in [(&element.min_value, true), (&element.max_value, false)] {
            let Some(limit) = limit else { continue };
            if let Some(outside) = compare_limit(type_name, value, limit, is_min)
                && outside
            {
                let (rule, word) = if is_min {
                    ("min-value", "smaller than the minimum")
                } else {
                    ("max-value", "larger than the maximum")
                };
                self.error(
                    IssueCode::Value,
                    rule,
                    format!("{} is {word} its definition allows.", self.path),
                );
            }
        }
    }

    /// Checks a required binding (base definitions carry expansions only for those).
    fn binding(&mut self, element: &ElementDef, type_name: &str, value: &Value) {
        let Some(binding) = &element.binding else {
            return;
        };
        if binding.strength != BindingStrength::Required {
            return;
        }
        let Some(value_set) = binding.value_set.as_deref() else {
            return;
        };
        self.check_bound_value(value_set, type_name, value, Severity::Error, "required");
    }

    /// Reports a bound value that is not in the value set, with `severity`.
    pub(crate) fn check_bound_value(
        &mut self,
        value_set: &str,
        type_name: &str,
        value: &Value,
        severity: Severity,
        strength: &str,
    ) {
        match check_binding(self.defs, value_set, type_name, value) {
            BindingCheck::Accepted => {}
            BindingCheck::NotInValueSet => {
                let allowed = allowed_codes_phrase(self.defs, value_set);
                let what = if type_name == "CodeableConcept" {
                    "no coding is"
                } else {
                    "the code is"
                };
                self.report(
                    severity,
                    IssueCode::CodeInvalid,
                    "binding",
                    format!(
                        "{}: {what} not in the {strength} value set {value_set}{allowed}.",
                        self.path
                    ),
                );
            }
            BindingCheck::NoCode => {
                if severity.is_error() {
                    let allowed = allowed_codes_phrase(self.defs, value_set);
                    self.report(
                        severity,
                        IssueCode::CodeInvalid,
                        "binding-no-code",
                        format!(
                            "{}: no code was given, but the {strength} binding needs a code from the value set {value_set}{allowed}.",
                            self.path
                        ),
                    );
                }
            }
        }
    }

    fn null_value(&mut self) {
        self.error(
            IssueCode::Structure,
            "null-value",
            format!(
                "{} is null; FHIR JSON allows null only inside a primitive array paired with its '_' extension array.",
                self.path
            ),
        );
    }

    fn narrative_div(&mut self, value: &Value) {
        let Some(text) = value.as_str() else { return };
        if let Err(problem) = check_narrative(text) {
            let sentence = format!("{} {}.", self.path, problem.describe());
            let key = problem.constraint_key();
            // Safety problems refuse the resource. An empty (whitespace-only) narrative breaks
            // txt-2's text but not its R4 expression (`htmlChecks()`, which the HL7 validator
            // reads as the markup check), and four of the specification's own examples have
            // one: a warning, so what HL7 accepts is accepted here too.
            let severity = if problem == NarrativeProblem::Empty {
                Severity::Warning
            } else {
                Severity::Error
            };
            self.report_keyed(severity, IssueCode::Value, problem.rule(), sentence, key);
        }
    }

    /// Records a `#id` reference for dom-3 and resolves it against the container's contained
    /// resources. Returns the contained resource's type when it resolves.
    fn note_local_target(&mut self, target: &str) -> Option<&'a str> {
        let current = self.frames.len().checked_sub(1)?;
        let (owner, own_index) = match self.frames.get(current)?.nesting {
            Nesting::Contained { container, index } => (container, Some(index)),
            Nesting::Root | Nesting::Inline => (current, None),
        };
        let frame = self.frames.get_mut(owner)?;
        if target.is_empty() {
            // `#` is the container: a contained resource that points back to it is referenced.
            if let Some(index) = own_index
                && let Some(flag) = frame.contained_referenced.get_mut(index)
            {
                *flag = true;
            }
            return Some(frame.resource_type);
        }
        let position = frame
            .contained_ids
            .iter()
            .position(|id| *id == Some(target))?;
        if let Some(flag) = frame.contained_referenced.get_mut(position) {
            *flag = true;
        }
        let container = frame.resource;
        container
            .get("contained")
            .and_then(|c| c.get(position))
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str)
    }

    /// Reference rules: syntax, local resolution (ref-1), allowed target types, and a declared
    /// `type` that agrees with the reference.
    fn reference(&mut self, object: &'a Map<String, Value>, element: Option<&ElementDef>) {
        let target_type = match object.get("reference").and_then(Value::as_str) {
            Some(reference) => self.reference_target(reference, element),
            None => None,
        };
        let Some(declared) = object.get("type").and_then(Value::as_str) else {
            return;
        };
        // `type` is a StructureDefinition URL, relative to the core's for resource types.
        let declared = declared
            .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
            .unwrap_or(declared);
        if !self.defs.resource_types().iter().any(|t| t == declared) {
            return;
        }
        let mark = self.push_segment("type");
        match target_type {
            Some(target) if target != declared => {
                self.error(
                    IssueCode::Invalid,
                    "reference-type-mismatch",
                    format!(
                        "{} says {declared}, but the reference points to a {target}.",
                        self.path
                    ),
                );
            }
            Some(_) => {}
            None => {
                if let Some(element) = element {
                    self.check_reference_target(declared, element);
                }
            }
        }
        self.pop(mark);
    }

    /// The checks of `Reference.reference`; the type it points to, when it can tell.
    fn reference_target(
        &mut self,
        reference: &'a str,
        element: Option<&ElementDef>,
    ) -> Option<&'a str> {
        let mark = self.push_segment("reference");
        let target_type = match parse_reference(self.defs, reference) {
            Err(ReferenceSyntaxError::Malformed) => {
                self.error(
                    IssueCode::Value,
                    "reference-syntax",
                    format!(
                        "{} is not a valid reference: expected Type/id, Type/id/_history/version, an absolute URL, #id of a contained resource, or urn:uuid:/urn:oid: inside a Bundle.",
                        self.path
                    ),
                );
                None
            }
            Err(ReferenceSyntaxError::UnknownType) => {
                self.error(
                    IssueCode::Value,
                    "reference-type-unknown",
                    format!(
                        "{} does not name a FHIR R4 resource type before the id.",
                        self.path
                    ),
                );
                None
            }
            Ok(ReferenceForm::Local(target)) => {
                let resolved = self.note_local_target(target);
                if resolved.is_none() {
                    self.report_keyed(
                        Severity::Error,
                        IssueCode::Invalid,
                        "reference-local-unresolved",
                        format!(
                            "{} points to a contained resource that does not exist (ref-1).",
                            self.path
                        ),
                        "ref-1",
                    );
                }
                resolved
            }
            Ok(ReferenceForm::Relative { resource_type }) => Some(resource_type),
            Ok(ReferenceForm::Absolute { resource_type }) => {
                self.bundle_type_of(reference).or(resource_type)
            }
            Ok(ReferenceForm::Urn) => {
                if self.in_bundle() {
                    self.bundle_type_of(reference)
                } else {
                    self.error(
                        IssueCode::Value,
                        "reference-urn-outside-bundle",
                        format!(
                            "{} is a urn:uuid: or urn:oid: reference, which can only be resolved inside a Bundle.",
                            self.path
                        ),
                    );
                    None
                }
            }
            Ok(ReferenceForm::Conditional { resource_type }) => {
                if !self.in_bundle() {
                    self.error(
                        IssueCode::Value,
                        "reference-conditional-outside-bundle",
                        format!(
                            "{} is a conditional reference (Type?search), which is only allowed inside a transaction Bundle.",
                            self.path
                        ),
                    );
                }
                Some(resource_type)
            }
        };
        if let (Some(target_type), Some(element)) = (target_type, element) {
            self.check_reference_target(target_type, element);
        }
        self.pop(mark);
        target_type
    }

    fn bundle_type_of(&self, full_url: &str) -> Option<&'a str> {
        self.bundles.last()?.get(full_url).copied()
    }

    /// Whether `target_type` is allowed by the Reference type's target profiles of `element`.
    pub(crate) fn check_reference_target(&mut self, target_type: &str, element: &ElementDef) {
        let mut allowed: Vec<&str> = Vec::new();
        for type_ref in element.types.iter().filter(|t| t.code == "Reference") {
            if type_ref.target_profiles.is_empty() {
                return;
            }
            for profile in &type_ref.target_profiles {
                let registered = self
                    .profiles
                    .get(fhirwall_definitions::canonical_without_version(profile))
                    .map(|entry| entry.structure.type_name.as_str());
                match target_type_of_profile(self.defs, profile, registered) {
                    Some("Resource" | "DomainResource") | None => return,
                    Some(name) => allowed.push(name),
                }
            }
        }
        if allowed.is_empty() || allowed.contains(&target_type) {
            return;
        }
        allowed.sort_unstable();
        allowed.dedup();
        let element_path = element.path.clone();
        self.error(
            IssueCode::Invalid,
            "reference-target-type",
            format!(
                "{} points to a {target_type}, which {element_path} does not allow (allowed: {}).",
                self.path,
                allowed.join(", ")
            ),
        );
    }

    /// ext-1 and the extension's definition, when the registry holds it.
    fn extension(&mut self, value: &'a Value, object: &'a Map<String, Value>) {
        let has_children = object.contains_key("extension");
        let has_value = object.keys().any(|k| {
            k.strip_prefix('_')
                .unwrap_or(k)
                .strip_prefix("value")
                .is_some_and(|rest| rest.bytes().next().is_some_and(|b| b.is_ascii_uppercase()))
        });
        if has_children == has_value {
            self.report_keyed(
                Severity::Error,
                IssueCode::Invariant,
                "extension-value",
                format!(
                    "{} must have either extensions or a value[x], not both and not neither (ext-1).",
                    self.path
                ),
                "ext-1",
            );
        }
        let Some(url) = object.get("url").and_then(Value::as_str) else {
            return;
        };
        let is_modifier = self
            .path
            .rsplit('.')
            .next()
            .is_some_and(|last| last.starts_with("modifierExtension"));
        if !url.contains(':') {
            // A relative url names a part of a complex extension; its parent's definition
            // checks it.
            if is_modifier {
                self.unknown_modifier();
            }
            return;
        }
        let key = fhirwall_definitions::canonical_without_version(url);
        let profiles: &'a ProfileMap = self.profiles;
        match profiles.get(key) {
            Some(entry) => crate::profile::validate_extension(self, value, entry),
            None if is_modifier => self.unknown_modifier(),
            None => self.report(
                Severity::Information,
                IssueCode::Extension,
                "extension-unknown",
                format!(
                    "{}: the extension {} is not known to this server; it was accepted without checking its content.",
                    self.path,
                    printable_url(url)
                ),
            ),
        }
    }

    fn unknown_modifier(&mut self) {
        self.error(
            IssueCode::Extension,
            "modifier-extension-unknown",
            format!(
                "{} is a modifier extension this server does not know; it changes the meaning of the resource, so it cannot be accepted.",
                self.path
            ),
        );
    }

    /// Evaluates the constraints of an element (and of its type's root) that are not checked
    /// natively.
    pub(crate) fn constraints_at(
        &mut self,
        element_constraints: &[Constraint],
        type_constraints: &[Constraint],
        focus: Focus<'a>,
        focus_type: &str,
    ) {
        for constraint in element_constraints {
            self.evaluate_constraint(constraint, focus, focus_type);
        }
        for constraint in type_constraints {
            // A key in both lists (an element that repeats its type's rule) is checked once.
            if !element_constraints.iter().any(|c| c.key == constraint.key) {
                self.evaluate_constraint(constraint, focus, focus_type);
            }
        }
    }

    /// Evaluates one constraint at the current path, unless it is checked natively.
    pub(crate) fn evaluate_constraint(
        &mut self,
        constraint: &Constraint,
        focus: Focus<'a>,
        focus_type: &str,
    ) {
        if is_native(&constraint.key) || self.sink.is_full() {
            return;
        }
        let Some(expression) = constraint.expression.as_deref() else {
            return;
        };
        let Some(frame) = self.frames.last() else {
            return;
        };
        let site = ConstraintSite {
            focus,
            focus_type,
            resource: frame.resource,
            root_resource: frame.root_resource,
            now: self.now,
        };
        match self.constraints.evaluate(expression, &site) {
            Verdict::Pass => {}
            Verdict::NotEvaluated => {
                if !self.unevaluated.contains(&constraint.key) {
                    self.unevaluated.push(constraint.key.clone());
                }
            }
            Verdict::Fail => {
                let severity = match constraint.severity {
                    ConstraintSeverity::Error => Severity::Error,
                    ConstraintSeverity::Warning => Severity::Warning,
                };
                let message = format!(
                    "Constraint {} failed at {}: {}",
                    constraint.key,
                    self.path,
                    sentence(&constraint.human)
                );
                self.report_keyed(
                    severity,
                    IssueCode::Invariant,
                    "invariant",
                    message,
                    &constraint.key,
                );
            }
        }
    }
}

/// The human text of a constraint as a sentence (it comes from the definitions, not from the
/// instance).
fn sentence(human: &str) -> String {
    let trimmed = human.trim();
    if trimmed.ends_with('.') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}.")
    }
}

/// A URL from the instance as it may appear in a message: canonical URLs of profiles and
/// extensions identify definitions, not patients, but are still cut short and kept printable.
pub(crate) fn printable_url(url: &str) -> String {
    let printable = url.len() <= 200 && url.chars().all(|c| c.is_ascii_graphic());
    if printable {
        url.to_owned()
    } else {
        "(unprintable url)".into()
    }
}

/// Whether `value` lies outside `limit` (below a minimum or above a maximum). None when the
/// two cannot be compared.
fn compare_limit(type_name: &str, value: &Value, limit: &Value, is_min: bool) -> Option<bool> {
    let ordering = match (value, limit) {
        (Value::Number(v), Value::Number(l)) => {
            let (v, l) = (
                v.as_str().parse::<f64>().ok()?,
                l.as_str().parse::<f64>().ok()?,
            );
            v.partial_cmp(&l)?
        }
        (Value::String(v), Value::String(l))
            if matches!(type_name, "date" | "dateTime" | "instant" | "time")
                && v.len() == l.len() =>
        {
            v.cmp(l)
        }
        (Value::Object(v), Value::Object(l)) => {
            // Quantity limits: compare values of the same unit code.
            if v.get("code") != l.get("code") {
                return None;
            }
            let v = v.get("value")?.as_number()?.as_str().parse::<f64>().ok()?;
            let l = l.get("value")?.as_number()?.as_str().parse::<f64>().ok()?;
            v.partial_cmp(&l)?
        }
        _ => return None,
    };
    Some(if is_min {
        ordering == std::cmp::Ordering::Less
    } else {
        ordering == std::cmp::Ordering::Greater
    })
}
