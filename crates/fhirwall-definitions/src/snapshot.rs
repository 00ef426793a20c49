//! Snapshot generation: builds a constraint StructureDefinition's `snapshot` from its `differential` and its base's snapshot; it must not validate resources, and it must not fetch definitions itself (the caller's lookup does).
//!
//! The base snapshot is read into a tree: every element holds its children in document order
//! and, separately, its slices (each slice with its own children and re-slices). Each
//! differential element is located in that tree by its id (`Observation.component:systolic.code`),
//! merged into the element it names, and the tree is written back out in document order with
//! ids and paths rebuilt from the tree. Where a differential reaches below an element whose
//! children the base snapshot does not list (a data type such as `Identifier`, or a content
//! reference), the children are taken from the type's own StructureDefinition.
//!
//! Two R4 habits are followed the way the HL7 publisher reads them, so that generated
//! snapshots match the published ones: a type-specific name for a choice element
//! (`Observation.valueQuantity`) becomes a type slice `value[x]:valueQuantity` with closed
//! `type` slicing (inside a slice it constrains the choice element directly), and the only
//! slice of an element that is neither sliced nor an extension names that element itself.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::structure::strings;
use crate::{canonical_without_version, type_suffix_matches};

/// Where the core data types and resources are defined.
const CORE_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";
const FHIR_TYPE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
/// Bounds element depth (path segments), so a crafted definition cannot exhaust the stack of
/// the recursive tree walks; the deepest core paths have fewer than ten.
const MAX_DEPTH: usize = 64;
/// Bounds the walk up a type's `baseDefinition`s, so that uploaded definitions that derive
/// from each other in a circle cannot hold generation up.
const MAX_ANCESTRY: usize = 16;

/// Why a snapshot could not be built. Each message names the differential element (by id) a
/// client has to change.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a StructureDefinition")]
    NotAStructureDefinition,
    #[error(
        "derivation is {0:?}: only constraint profiles (derivation = constraint) get a generated snapshot"
    )]
    NotAConstraint(String),
    #[error("the StructureDefinition has no differential elements")]
    NoDifferential,
    #[error("the StructureDefinition has no baseDefinition")]
    NoBaseDefinition,
    #[error("the base definition {0} is not known")]
    BaseNotFound(String),
    #[error("the base definition {0} has no usable snapshot: {1}")]
    BaseInvalid(String, String),
    #[error("type is {profile:?} but the base definition constrains {base:?}")]
    TypeMismatch { profile: String, base: String },
    #[error("differential element {index} has no path")]
    MissingPath { index: usize },
    #[error("differential element {id}: {reason}")]
    UnknownPath { id: String, reason: String },
    #[error("differential element {id}: min {min} is below the base's min {base_min}")]
    MinBelowBase { id: String, min: u64, base_min: u64 },
    #[error("differential element {id}: max {max} is above the base's max {base_max}")]
    MaxAboveBase {
        id: String,
        max: String,
        base_max: String,
    },
    #[error("differential element {id}: min {min} is above max {max}")]
    MinAboveMax { id: String, min: u64, max: String },
    #[error("differential element {id}: {field} {value} is not valid")]
    InvalidCardinality {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("differential element {id}: type {code} is not one of the base's types ({allowed})")]
    TypeNotInBase {
        id: String,
        code: String,
        allowed: String,
    },
    #[error("differential element {id}: the slice {slice} is not defined by an earlier element")]
    UnknownSlice { id: String, slice: String },
    #[error(
        "differential element {id}: slice {slice} needs a slicing (discriminator and rules) on the element it slices"
    )]
    SliceWithoutSlicing { id: String, slice: String },
    #[error(
        "differential element {id}: the base closes the slicing, so slice {slice} cannot be added"
    )]
    ClosedSlicing { id: String, slice: String },
    #[error(
        "differential element {id}: sliceName {slice:?} may only hold letters, digits, '/', '-', '_', '[', ']' and '@'"
    )]
    InvalidSliceName { id: String, slice: String },
    #[error("differential element {id}: cannot list the children of {element}: {reason}")]
    CannotExpand {
        id: String,
        element: String,
        reason: String,
    },
}

/// Builds the snapshot of `profile` (a StructureDefinition in JSON with a differential) from
/// its base definition, which `base` looks up by canonical URL: the core definitions through
/// `Definitions::core().core_structure_json(url)`, or a profile uploaded earlier. Data types
/// that the differential reaches into are looked up the same way
/// (`http://hl7.org/fhir/StructureDefinition/Identifier`). Returns `profile` with
/// `snapshot.element` filled, any earlier snapshot replaced.
pub fn generate_snapshot(
    profile: &Value,
    base: &dyn Fn(&str) -> Option<Value>,
) -> Result<Value, SnapshotError> {
    let object = profile
        .as_object()
        .filter(|o| str_of(o, "resourceType") == Some("StructureDefinition"))
        .ok_or(SnapshotError::NotAStructureDefinition)?;
    if let Some(derivation) = str_of(object, "derivation")
        && derivation != "constraint"
    {
        return Err(SnapshotError::NotAConstraint(derivation.to_owned()));
    }
    let differential = object
        .get("differential")
        .and_then(|d| d.get("element"))
        .and_then(Value::as_array)
        .filter(|elements| !elements.is_empty())
        .ok_or(SnapshotError::NoDifferential)?;
    let base_url = str_of(object, "baseDefinition")
        .map(canonical_without_version)
        .ok_or(SnapshotError::NoBaseDefinition)?;
    let base_sd = base(base_url).ok_or_else(|| SnapshotError::BaseNotFound(base_url.to_owned()))?;
    let base_elements = base_sd
        .get("snapshot")
        .and_then(|s| s.get("element"))
        .and_then(Value::as_array)
        .ok_or_else(|| SnapshotError::BaseInvalid(base_url.to_owned(), "no snapshot".into()))?;
    let tree = tree_from_snapshot(base_elements, base_url)
        .map_err(|reason| SnapshotError::BaseInvalid(base_url.to_owned(), reason))?;
    let base_type = base_sd
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(&tree.name);
    if let Some(profile_type) = str_of(object, "type")
        && canonical_without_version(profile_type) != base_type
        && profile_type.rsplit('/').next() != Some(base_type)
    {
        return Err(SnapshotError::TypeMismatch {
            profile: profile_type.to_owned(),
            base: base_type.to_owned(),
        });
    }

    let mut generator = Generator {
        lookup: base,
        definitions: HashMap::new(),
        trees: HashMap::new(),
        base_tree: tree.clone(),
    };
    let mut root = tree;
    let mut seen_ids: HashMap<String, String> = HashMap::new();
    for (index, element) in differential.iter().enumerate() {
        let Some(element) = element.as_object() else {
            return Err(SnapshotError::MissingPath { index });
        };
        let (id, segments) = locate(element, index, &mut seen_ids)?;
        generator.apply(&mut root, element, &id, &segments)?;
    }

    let mut elements = Vec::new();
    emit(&root, None, &mut elements);
    Ok(with_snapshot(object, elements))
}

/// One step of an element id: `component:systolic` is the name `component` and the slice
/// `systolic`.
#[derive(Debug, Clone)]
struct Segment {
    name: String,
    slice: Option<String>,
}

/// An element of the snapshot being built, with its children and its slices.
#[derive(Debug, Clone)]
struct Node {
    /// The last path segment (`value[x]`, `coding`); paths and ids are rebuilt from these.
    name: String,
    element: Map<String, Value>,
    children: Vec<Node>,
    /// Slices (and, under a slice, its re-slices) in the order they were defined.
    slices: Vec<Node>,
    /// The element as the base defined it, captured before the differential first touched
    /// it or anything below it: new slices start from the base's definition, not from the
    /// constraints the profile put on the sliced element.
    origin: Option<Box<Node>>,
    /// Whether this profile set the slicing, so it may add slices even when it closed them.
    sliced_here: bool,
    /// Whether the slicing was made implicitly from a type-specific choice name, so that each
    /// type slice also narrows the choice element's types.
    implicit_type_slicing: bool,
}

impl Node {
    fn new(name: &str, element: Map<String, Value>) -> Node {
        Node {
            name: name.to_owned(),
            element,
            children: Vec::new(),
            slices: Vec::new(),
            origin: None,
            sliced_here: false,
            implicit_type_slicing: false,
        }
    }

    /// Remembers the base's definition before the first change.
    fn keep_origin(&mut self) {
        if self.origin.is_none() {
            let mut copy = Node::new(&self.name, self.element.clone());
            copy.children = self.children.clone();
            self.origin = Some(Box::new(copy));
        }
    }

    /// A fresh slice of this element: the base's definition and children, without slicing,
    /// and optional (a slice is required only where the differential says so, even when the
    /// sliced element is).
    fn new_slice(&self, slice_name: &str) -> Node {
        let mut slice = match &self.origin {
            Some(origin) => (**origin).clone(),
            None => Node::new(&self.name, self.element.clone()),
        };
        slice.element.remove("slicing");
        slice.element.insert("min".into(), Value::from(0));
        slice
            .element
            .insert("sliceName".into(), Value::String(slice_name.to_owned()));
        slice
    }

    fn child_index(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|c| c.name == name)
    }

    fn slice_name(&self) -> Option<&str> {
        str_of(&self.element, "sliceName")
    }

    fn is_extension(&self) -> bool {
        self.name == "extension" || self.name == "modifierExtension"
    }
}

/// Lookups for one generation, cached because a lookup may be costly (the embedded core
/// definitions are parsed again on every call).
struct Generator<'a> {
    lookup: &'a dyn Fn(&str) -> Option<Value>,
    definitions: HashMap<String, Option<Value>>,
    trees: HashMap<String, Option<Node>>,
    /// The base snapshot as it was, for content references (`#Questionnaire.item`).
    base_tree: Node,
}

impl Generator<'_> {
    fn definition(&mut self, url: &str) -> Option<&Value> {
        let url = canonical_without_version(url);
        if !self.definitions.contains_key(url) {
            let found = (self.lookup)(url);
            self.definitions.insert(url.to_owned(), found);
        }
        self.definitions.get(url).and_then(Option::as_ref)
    }

    /// The snapshot tree of a definition, if it has a snapshot.
    fn tree(&mut self, url: &str) -> Option<&Node> {
        let url = canonical_without_version(url).to_owned();
        if !self.trees.contains_key(&url) {
            let tree = self
                .definition(&url)
                .and_then(|sd| sd.get("snapshot"))
                .and_then(|s| s.get("element"))
                .and_then(Value::as_array)
                .and_then(|elements| tree_from_snapshot(elements, &url).ok());
            self.trees.insert(url.clone(), tree);
        }
        self.trees.get(&url).and_then(Option::as_ref)
    }

    /// Applies one differential element.
    fn apply(
        &mut self,
        root: &mut Node,
        diff: &Map<String, Value>,
        id: &str,
        segments: &[Segment],
    ) -> Result<(), SnapshotError> {
        let unknown = |reason: String| SnapshotError::UnknownPath {
            id: id.to_owned(),
            reason,
        };
        let Some((first, rest)) = segments.split_first() else {
            return Err(unknown("the path is empty".into()));
        };
        if first.name != root.name || first.slice.is_some() {
            return Err(unknown(format!(
                "paths must start with the constrained type {}",
                root.name
            )));
        }
        let mut current: &mut Node = root;
        let mut current_path = first.name.clone();
        let mut in_slice = false;
        for (position, segment) in rest.iter().enumerate() {
            let last = position + 1 == rest.len();
            self.expand(current, &current_path, id)?;
            let (index, choice_type) = find_child(current, &segment.name)
                .ok_or_else(|| unknown(format!("{current_path} has no child {}", segment.name)))?;
            let Some(child) = current.children.get_mut(index) else {
                return Err(unknown(format!(
                    "{current_path} has no child {}",
                    segment.name
                )));
            };
            child.keep_origin();
            current_path = format!("{current_path}.{}", child.name);
            // A type-specific name inside a slice constrains the choice element itself, the
            // way the R4 publisher reads it; elsewhere it is a type slice of the choice.
            let slice = match (&segment.slice, &choice_type) {
                (Some(slice), _) => Some(slice.clone()),
                (None, Some(_)) if !in_slice => Some(segment.name.clone()),
                (None, _) => None,
            };
            if slice.is_none()
                && let Some(code) = &choice_type
            {
                restrict_types(child, code).map_err(|allowed| SnapshotError::TypeNotInBase {
                    id: id.to_owned(),
                    code: code.clone(),
                    allowed,
                })?;
            }
            current = match slice {
                None => child,
                Some(slice) => {
                    in_slice = true;
                    slice_of(child, &slice, last, diff, id)?
                }
            };
        }
        self.merge(current, diff, id)
    }

    /// Lists the children of `node` when the snapshot so far does not: from the data type's
    /// (or the type profile's) definition, or from the element a content reference names.
    fn expand(&mut self, node: &mut Node, path: &str, id: &str) -> Result<(), SnapshotError> {
        if !node.children.is_empty() {
            return Ok(());
        }
        let cannot = |reason: String| SnapshotError::CannotExpand {
            id: id.to_owned(),
            element: path.to_owned(),
            reason,
        };
        if let Some(reference) = str_of(&node.element, "contentReference") {
            let target = reference.rsplit('#').next().unwrap_or(reference).to_owned();
            let children = self
                .children_at(&target)
                .ok_or_else(|| cannot(format!("the content reference {reference} is unknown")))?;
            node.children = children;
            return Ok(());
        }
        let types: Vec<&Value> = node
            .element
            .get("type")
            .and_then(Value::as_array)
            .map(|t| t.iter().collect())
            .unwrap_or_default();
        let mut codes: Vec<String> = types.iter().filter_map(|t| type_code(t)).collect();
        codes.sort();
        codes.dedup();
        let [code] = codes.as_slice() else {
            return Err(cannot(if codes.is_empty() {
                "it has no type".into()
            } else {
                format!(
                    "it has several types ({}); name one, as in valueQuantity",
                    codes.join(", ")
                )
            }));
        };
        let profiles: Vec<String> = types
            .iter()
            .flat_map(|t| strings(t, "profile"))
            .collect::<Vec<_>>();
        // A type profile (SimpleQuantity, an extension definition) defines the children more
        // closely than the bare type, when it is known.
        let mut children = None;
        if let [profile] = profiles.as_slice() {
            let matches_type = self
                .definition(profile)
                .and_then(|sd| sd.get("type"))
                .and_then(Value::as_str)
                == Some(code.as_str());
            if matches_type {
                children = self.tree(profile).map(|t| t.children.clone());
            }
        }
        if children.is_none() {
            children = self
                .tree(&format!("{CORE_PREFIX}{code}"))
                .map(|t| t.children.clone());
        }
        let children = children.ok_or_else(|| {
            cannot(format!(
                "the definition of type {code} is not known or has no snapshot"
            ))
        })?;
        if children.is_empty() {
            return Err(cannot(format!("type {code} has no children")));
        }
        node.children = children;
        Ok(())
    }

    /// The children of the element at `path` (`Questionnaire.item`), in the base snapshot or
    /// in the definition of the type the path starts with.
    fn children_at(&mut self, path: &str) -> Option<Vec<Node>> {
        let mut names = path.split('.');
        let first = names.next()?;
        let tree = if first == self.base_tree.name {
            &self.base_tree
        } else {
            self.tree(&format!("{CORE_PREFIX}{first}"))?
        };
        let mut node = tree;
        for name in names {
            node = node.children.iter().find(|c| c.name == name)?;
        }
        (!node.children.is_empty()).then(|| node.children.clone())
    }

    /// Merges a differential element into the element it constrains.
    fn merge(
        &mut self,
        node: &mut Node,
        diff: &Map<String, Value>,
        id: &str,
    ) -> Result<(), SnapshotError> {
        let base_min = node.element.get("min").and_then(Value::as_u64).unwrap_or(0);
        let base_max = node
            .element
            .get("max")
            .map(|m| parse_max(m, id))
            .transpose()?;
        let min = match diff.get("min") {
            None => None,
            Some(value) => {
                Some(
                    value
                        .as_u64()
                        .ok_or_else(|| SnapshotError::InvalidCardinality {
                            id: id.to_owned(),
                            field: "min",
                            value: value.to_string(),
                        })?,
                )
            }
        };
        let max = diff.get("max").map(|m| parse_max(m, id)).transpose()?;
        if let Some(min) = min
            && min < base_min
        {
            return Err(SnapshotError::MinBelowBase {
                id: id.to_owned(),
                min,
                base_min,
            });
        }
        if let (Some(max), Some(base_max)) = (max, base_max)
            && max > base_max
        {
            return Err(SnapshotError::MaxAboveBase {
                id: id.to_owned(),
                max: max.to_string(),
                base_max: base_max.to_string(),
            });
        }
        let final_min = min.unwrap_or(base_min);
        if let Some(final_max) = max.or(base_max)
            && Max::At(final_min) > final_max
        {
            return Err(SnapshotError::MinAboveMax {
                id: id.to_owned(),
                min: final_min,
                max: final_max.to_string(),
            });
        }
        if let Some(types) = diff.get("type").and_then(Value::as_array) {
            self.check_types(&node.element, types, id)?;
            if let Some(template) = self.profile_root(types) {
                // An element given a type profile (SimpleQuantity, an extension definition)
                // is described by the profile's root and carries its invariants, as in the
                // published snapshots; everything that constrains the element stays.
                for key in DESCRIPTIVE {
                    if let Some(value) = template.get(*key) {
                        node.element.insert((*key).to_owned(), value.clone());
                    }
                }
                if let Some(constraints) = template.get("constraint").and_then(Value::as_array) {
                    add_missing_constraints(&mut node.element, constraints);
                }
                if let Some(conditions) = template.get("condition") {
                    merge_list(&mut node.element, "condition", conditions);
                }
            }
        }
        if diff.contains_key("slicing") {
            node.sliced_here = true;
            node.implicit_type_slicing = false;
        }
        merge_fields(&mut node.element, diff);
        Ok(())
    }

    /// The root element of the one profile a type list names, when its definition is known
    /// and profiles the same type.
    fn profile_root(&mut self, types: &[Value]) -> Option<Map<String, Value>> {
        let [ty] = types else {
            return None;
        };
        let [profile] = strings(ty, "profile").try_into().ok()?;
        let code = type_code(ty)?;
        let sd = self.definition(&profile)?;
        if sd.get("type").and_then(Value::as_str) != Some(code.as_str()) {
            return None;
        }
        self.tree(&profile).map(|tree| tree.element.clone())
    }

    /// Refuses types that are not among the base element's types or derived from one of them
    /// (`Patient` for `Resource`, `Age` for `Quantity`).
    fn check_types(
        &mut self,
        element: &Map<String, Value>,
        types: &[Value],
        id: &str,
    ) -> Result<(), SnapshotError> {
        let Some(base_types) = element.get("type").and_then(Value::as_array) else {
            // The root and content-reference elements have no types to restrict.
            return Ok(());
        };
        let mut allowed: Vec<String> = Vec::new();
        for ty in base_types {
            for code in [
                type_code(ty),
                ty.get("code").and_then(Value::as_str).map(str::to_owned),
            ]
            .into_iter()
            .flatten()
            {
                if !allowed.contains(&code) {
                    allowed.push(code);
                }
            }
        }
        if allowed.is_empty() || allowed.iter().any(|c| c == "*") {
            return Ok(());
        }
        for ty in types {
            let raw = ty.get("code").and_then(Value::as_str).unwrap_or_default();
            let code = type_code(ty).unwrap_or_else(|| raw.to_owned());
            if allowed.iter().any(|a| *a == code || a == raw) || self.derives_from(&code, &allowed)
            {
                continue;
            }
            return Err(SnapshotError::TypeNotInBase {
                id: id.to_owned(),
                code,
                allowed: allowed.join(", "),
            });
        }
        Ok(())
    }

    /// Whether type `code`'s definition descends from one of `ancestors`.
    fn derives_from(&mut self, code: &str, ancestors: &[String]) -> bool {
        let mut url = format!("{CORE_PREFIX}{code}");
        for _ in 0..MAX_ANCESTRY {
            let Some(parent) = self
                .definition(&url)
                .and_then(|sd| sd.get("baseDefinition"))
                .and_then(Value::as_str)
                .map(|u| canonical_without_version(u).to_owned())
            else {
                return false;
            };
            if ancestors
                .iter()
                .any(|a| parent.strip_prefix(CORE_PREFIX) == Some(a.as_str()) || parent == *a)
            {
                return true;
            }
            url = parent;
        }
        false
    }
}

/// Finds (or, for the element that defines it, creates) slice `name` of `element`.
fn slice_of<'n>(
    element: &'n mut Node,
    name: &str,
    defining: bool,
    diff: &Map<String, Value>,
    id: &str,
) -> Result<&'n mut Node, SnapshotError> {
    if !valid_slice_name(name) {
        return Err(SnapshotError::InvalidSliceName {
            id: id.to_owned(),
            slice: name.to_owned(),
        });
    }
    if element.slice_name() == Some(name) {
        // The element already carries this name (an R4-style lone slice in the base).
        return Ok(element);
    }
    // Re-slices (`a/b`) live under the slice they re-slice (`a`).
    let mut owner: &mut Node = element;
    let mut prefix = String::new();
    let parts: Vec<&str> = name.split('/').collect();
    let parents = parts.split_last().map(|(_, p)| p).unwrap_or_default();
    for part in parents {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let position = owner
            .slices
            .iter()
            .position(|s| s.slice_name() == Some(prefix.as_str()))
            .ok_or_else(|| SnapshotError::UnknownSlice {
                id: id.to_owned(),
                slice: prefix.clone(),
            })?;
        let Some(next) = owner.slices.get_mut(position) else {
            return Err(SnapshotError::UnknownSlice {
                id: id.to_owned(),
                slice: prefix.clone(),
            });
        };
        next.keep_origin();
        owner = next;
    }
    let existing = owner
        .slices
        .iter()
        .position(|s| s.slice_name() == Some(name));
    if let Some(position) = existing {
        return match owner.slices.get_mut(position) {
            Some(existing) => {
                existing.keep_origin();
                Ok(existing)
            }
            None => Err(SnapshotError::UnknownSlice {
                id: id.to_owned(),
                slice: name.to_owned(),
            }),
        };
    }
    let choice_type = choice_slice_type(owner, name);
    if !defining && choice_type.is_none() {
        return Err(SnapshotError::UnknownSlice {
            id: id.to_owned(),
            slice: name.to_owned(),
        });
    }
    let sliced = owner.element.get("slicing").is_some();
    if sliced {
        let closed = owner
            .element
            .get("slicing")
            .and_then(|s| s.get("rules"))
            .and_then(Value::as_str)
            == Some("closed");
        if closed && !owner.sliced_here {
            return Err(SnapshotError::ClosedSlicing {
                id: id.to_owned(),
                slice: name.to_owned(),
            });
        }
    } else if owner.is_extension() {
        // Extensions are always sliced by url; the base need not say so.
        owner.element.insert("slicing".into(), extension_slicing());
        owner.sliced_here = true;
    } else if choice_type.is_some() {
        // Naming a type slice of a choice slices the choice by type, closed (as the
        // publisher does): the named types become the only ones allowed.
        owner.element.insert("slicing".into(), type_slicing());
        owner.sliced_here = true;
        owner.implicit_type_slicing = true;
    } else if owner.slices.is_empty() && owner.slice_name().is_none() && parents.is_empty() {
        // R4 profiles name a lone "slice" of an unsliced element to constrain the element
        // itself; the published snapshots keep that element, renamed.
        owner
            .element
            .insert("sliceName".into(), Value::String(name.to_owned()));
        return Ok(owner);
    } else {
        return Err(SnapshotError::SliceWithoutSlicing {
            id: id.to_owned(),
            slice: name.to_owned(),
        });
    }
    let mut slice = owner.new_slice(name);
    if let Some(code) = &choice_type {
        // A type list in the differential is checked and merged afterwards; without one the
        // slice's name says which type it holds.
        let diff_has_type = defining && diff.contains_key("type");
        let entry = type_entry(&slice.element, code);
        if !diff_has_type && let Some(entry) = entry.clone() {
            slice
                .element
                .insert("type".into(), Value::Array(vec![entry]));
        }
        if owner.implicit_type_slicing
            && let Some(entry) = entry
        {
            let first = owner.slices.is_empty();
            let types = owner
                .element
                .entry("type")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(types) = types {
                if first {
                    types.clear();
                }
                if !types.contains(&entry) {
                    types.push(entry);
                }
            }
        }
    }
    owner.slices.push(slice);
    owner
        .slices
        .last_mut()
        .ok_or_else(|| SnapshotError::UnknownSlice {
            id: id.to_owned(),
            slice: name.to_owned(),
        })
}

/// The child of `node` a path segment names, and for a type-specific choice name
/// (`valueQuantity`) the type it picks.
fn find_child(node: &Node, name: &str) -> Option<(usize, Option<String>)> {
    if let Some(index) = node.child_index(name) {
        return Some((index, None));
    }
    node.children.iter().enumerate().find_map(|(index, child)| {
        let stem = child.name.strip_suffix("[x]")?;
        let suffix = name.strip_prefix(stem)?;
        choice_types(&child.element)
            .into_iter()
            .find(|code| type_suffix_matches(code, suffix))
            .map(|code| (index, Some(code)))
    })
}

/// The type a slice of a choice element picks when it is named like `valueQuantity`.
fn choice_slice_type(element: &Node, slice: &str) -> Option<String> {
    let stem = element.name.strip_suffix("[x]")?;
    let suffix = slice.strip_prefix(stem)?;
    choice_types(&element.element)
        .into_iter()
        .find(|code| type_suffix_matches(code, suffix))
}

fn choice_types(element: &Map<String, Value>) -> Vec<String> {
    element
        .get("type")
        .and_then(Value::as_array)
        .map(|types| types.iter().filter_map(type_code).collect())
        .unwrap_or_default()
}

/// The base's type entry for `code` (keeping its profiles), if the element allows it.
fn type_entry(element: &Map<String, Value>, code: &str) -> Option<Value> {
    element
        .get("type")
        .and_then(Value::as_array)?
        .iter()
        .find(|t| type_code(t).as_deref() == Some(code))
        .cloned()
}

/// Narrows a choice element to one of its types; on failure returns the allowed types.
fn restrict_types(node: &mut Node, code: &str) -> Result<(), String> {
    let Some(entry) = type_entry(&node.element, code) else {
        return Err(choice_types(&node.element).join(", "));
    };
    node.element
        .insert("type".into(), Value::Array(vec![entry]));
    Ok(())
}

/// The FHIR type code of a type entry: the `structuredefinition-fhir-type` extension wins
/// over a FHIRPath system type (`id` and `url` elements), which otherwise maps to a primitive.
fn type_code(ty: &Value) -> Option<String> {
    if let Some(extensions) = ty.get("extension").and_then(Value::as_array) {
        for extension in extensions {
            if extension.get("url").and_then(Value::as_str) == Some(FHIR_TYPE_EXTENSION)
                && let Some(code) = extension
                    .get("valueUrl")
                    .or_else(|| extension.get("valueUri"))
                    .and_then(Value::as_str)
            {
                return Some(code.to_owned());
            }
        }
    }
    let code = ty.get("code").and_then(Value::as_str)?;
    Some(match code.strip_prefix("http://hl7.org/fhirpath/System.") {
        Some("Boolean") => "boolean".to_owned(),
        Some("Integer") => "integer".to_owned(),
        Some("Decimal") => "decimal".to_owned(),
        Some("Date") => "date".to_owned(),
        Some("DateTime") => "dateTime".to_owned(),
        Some("Time") => "time".to_owned(),
        Some(_) => "string".to_owned(),
        None => code.to_owned(),
    })
}

fn extension_slicing() -> Value {
    serde_json::json!({
        "discriminator": [{"type": "value", "path": "url"}],
        "ordered": false,
        "rules": "open"
    })
}

fn type_slicing() -> Value {
    serde_json::json!({
        "discriminator": [{"type": "type", "path": "$this"}],
        "ordered": false,
        "rules": "closed"
    })
}

/// eld-16: slice names are restricted so they can sit in element ids.
fn valid_slice_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '[' | ']' | '@'))
}

/// An upper cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Max {
    At(u64),
    Unbounded,
}

impl std::fmt::Display for Max {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Max::At(n) => write!(f, "{n}"),
            Max::Unbounded => f.write_str("*"),
        }
    }
}

fn parse_max(value: &Value, id: &str) -> Result<Max, SnapshotError> {
    let invalid = || SnapshotError::InvalidCardinality {
        id: id.to_owned(),
        field: "max",
        value: value.to_string(),
    };
    match value.as_str() {
        Some("*") => Ok(Max::Unbounded),
        Some(text) => text.parse().map(Max::At).map_err(|_| invalid()),
        None => Err(invalid()),
    }
}

/// The fields that describe an element rather than constrain it.
const DESCRIPTIVE: &[&str] = &[
    "short",
    "definition",
    "comment",
    "requirements",
    "alias",
    "label",
    "meaningWhenMissing",
];

/// Adds the invariants whose keys the element does not have yet.
fn add_missing_constraints(element: &mut Map<String, Value>, added: &[Value]) {
    let list = element
        .entry("constraint")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        for constraint in added {
            let key = constraint.get("key");
            if !list.iter().any(|c| c.get("key") == key) {
                list.push(constraint.clone());
            }
        }
    }
}

/// Merges the fields a differential element sets into an element: most replace the base's
/// value; constraints, conditions, aliases and mappings add to the inherited ones.
fn merge_fields(element: &mut Map<String, Value>, diff: &Map<String, Value>) {
    for (key, value) in diff {
        match key.as_str() {
            // Rebuilt from the tree; `base` always describes the base definition.
            "id" | "path" | "base" => {}
            "constraint" => merge_constraints(element, value),
            "condition" | "alias" | "mapping" | "extension" | "modifierExtension" => {
                merge_list(element, key, value);
            }
            // A slicing restated in part keeps the base's description and ordering; a binding
            // (below) is replaced whole, as its description belongs to the value set it names.
            "slicing" => merge_object(element, key, value),
            "short" | "definition" | "comment" | "requirements" | "meaningWhenMissing" => {
                // A text starting with "..." continues the base's text rather than replacing it.
                let text = match (value.as_str(), element.get(key).and_then(Value::as_str)) {
                    (Some(more), Some(inherited)) if more.starts_with("...") => {
                        Value::String(format!(
                            "{inherited}\r\n{}",
                            more.trim_start_matches("...").trim_start()
                        ))
                    }
                    _ => value.clone(),
                };
                element.insert(key.clone(), text);
            }
            _ => {
                // A choice value (fixedUri) replaces any value of another type for the same
                // field (fixedString).
                for prefix in ["fixed", "pattern", "defaultValue", "minValue", "maxValue"] {
                    if key.starts_with(prefix) {
                        element.retain(|k, _| !k.starts_with(prefix) || k == key);
                    }
                }
                element.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Adds constraints to the inherited ones; one with an inherited key replaces it.
fn merge_constraints(element: &mut Map<String, Value>, added: &Value) {
    let Some(added) = added.as_array() else {
        return;
    };
    let list = element
        .entry("constraint")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = list else {
        *list = Value::Array(added.clone());
        return;
    };
    for constraint in added {
        let key = constraint.get("key");
        match list
            .iter_mut()
            .find(|c| key.is_some() && c.get("key") == key)
        {
            Some(existing) => *existing = constraint.clone(),
            None => list.push(constraint.clone()),
        }
    }
}

/// Appends the items the element does not have yet.
fn merge_list(element: &mut Map<String, Value>, key: &str, added: &Value) {
    let Some(added) = added.as_array() else {
        element.insert(key.to_owned(), added.clone());
        return;
    };
    let list = element
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = list else {
        *list = Value::Array(added.clone());
        return;
    };
    for item in added {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
}

/// Overrides an object's fields one by one, keeping those the differential leaves out.
fn merge_object(element: &mut Map<String, Value>, key: &str, value: &Value) {
    match (element.get_mut(key), value.as_object()) {
        (Some(Value::Object(existing)), Some(fields)) => {
            for (field, v) in fields {
                existing.insert(field.clone(), v.clone());
            }
        }
        _ => {
            element.insert(key.to_owned(), value.clone());
        }
    }
}

/// Works out a differential element's id and its segments. The id is trusted when it agrees
/// with the path; otherwise (or without one) the element belongs to the slice the latest
/// element on its parent path opened.
fn locate(
    element: &Map<String, Value>,
    index: usize,
    seen: &mut HashMap<String, String>,
) -> Result<(String, Vec<Segment>), SnapshotError> {
    let path = str_of(element, "path").ok_or(SnapshotError::MissingPath { index })?;
    let slice_name = str_of(element, "sliceName");
    let path_names: Vec<&str> = path.split('.').collect();
    if path_names.len() > MAX_DEPTH {
        return Err(SnapshotError::UnknownPath {
            id: path.to_owned(),
            reason: format!("paths may have at most {MAX_DEPTH} segments"),
        });
    }
    let from_id = str_of(element, "id").map(parse_id).filter(|segments| {
        segments.len() == path_names.len()
            && segments
                .iter()
                .zip(&path_names)
                .all(|(segment, name)| same_name(&segment.name, name))
    });
    let mut segments = match from_id {
        Some(segments) => segments,
        None => {
            let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
            let parent_id = if parent.is_empty() {
                None
            } else {
                Some(
                    seen.get(parent)
                        .cloned()
                        .unwrap_or_else(|| parent.to_owned()),
                )
            };
            let own = match slice_name {
                Some(slice) => format!("{last}:{slice}"),
                None => last.to_owned(),
            };
            let id = match parent_id {
                Some(parent_id) => format!("{parent_id}.{own}"),
                None => own,
            };
            parse_id(&id)
        }
    };
    if let (Some(slice), Some(last)) = (slice_name, segments.last_mut()) {
        last.slice = Some(slice.to_owned());
    }
    let id = segments
        .iter()
        .map(|s| match &s.slice {
            Some(slice) => format!("{}:{slice}", s.name),
            None => s.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(".");
    seen.insert(path.to_owned(), id.clone());
    Ok((id, segments))
}

/// Whether an id segment and a path segment name the same element (`value[x]` and
/// `valueQuantity` do).
fn same_name(from_id: &str, from_path: &str) -> bool {
    if from_id == from_path {
        return true;
    }
    let stem = |name: &str| name.strip_suffix("[x]").map(str::to_owned);
    match (stem(from_id), stem(from_path)) {
        (Some(stem), None) => from_path.starts_with(&stem),
        (None, Some(stem)) => from_id.starts_with(&stem),
        _ => false,
    }
}

fn parse_id(id: &str) -> Vec<Segment> {
    id.split('.')
        .map(|part| match part.split_once(':') {
            Some((name, slice)) => Segment {
                name: name.to_owned(),
                slice: Some(slice.to_owned()),
            },
            None => Segment {
                name: part.to_owned(),
                slice: None,
            },
        })
        .collect()
}

/// Reads the snapshot of definition `url` (elements in document order) into a tree.
fn tree_from_snapshot(elements: &[Value], url: &str) -> Result<Node, String> {
    let elements: Vec<Value> = elements
        .iter()
        .map(|element| inherited(element, url))
        .collect();
    let first = elements
        .first()
        .and_then(Value::as_object)
        .ok_or("the snapshot is empty")?;
    let root_path = str_of(first, "path").ok_or("the first element has no path")?;
    if root_path.contains('.') {
        return Err(format!("the first element {root_path} is not a root"));
    }
    let mut root = Node::new(root_path, first.clone());
    let mut position = 1;
    root.children = read_children(&elements, &mut position, root_path)?;
    if let Some(stray) = elements.get(position) {
        let path = stray.get("path").and_then(Value::as_str).unwrap_or("?");
        return Err(format!("element {path} is out of document order"));
    }
    Ok(root)
}

/// Extensions that, on a root element, describe the defining artifact (its maturity, its
/// standards status) rather than the element, so a profile does not inherit them.
const ARTIFACT_EXTENSIONS: &[&str] = &[
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-standards-status",
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-normative-version",
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fmm",
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-wg",
];

/// An element of definition `url` as a profile inherits it: invariants remember where they
/// come from (`source`), and the root's status extensions stay behind.
fn inherited(element: &Value, url: &str) -> Value {
    let mut element = element.clone();
    let Some(object) = element.as_object_mut() else {
        return element;
    };
    if let Some(Value::Array(constraints)) = object.get_mut("constraint") {
        for constraint in constraints.iter_mut() {
            if let Some(constraint) = constraint.as_object_mut()
                && !constraint.contains_key("source")
            {
                constraint.insert("source".into(), Value::String(url.to_owned()));
            }
        }
    }
    let is_root = object
        .get("path")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.contains('.'));
    if is_root && let Some(Value::Array(extensions)) = object.get_mut("extension") {
        extensions.retain(|e| {
            !ARTIFACT_EXTENSIONS.contains(&e.get("url").and_then(Value::as_str).unwrap_or_default())
        });
        if extensions.is_empty() {
            object.remove("extension");
        }
    }
    element
}

/// Reads the children of `parent_path` (and their slices) starting at `position`.
fn read_children(
    elements: &[Value],
    position: &mut usize,
    parent_path: &str,
) -> Result<Vec<Node>, String> {
    let mut children: Vec<Node> = Vec::new();
    while let Some(element) = elements.get(*position).and_then(Value::as_object) {
        let path = str_of(element, "path").ok_or("an element has no path")?;
        if path.split('.').count() > MAX_DEPTH {
            return Err(format!("element {path} is nested too deeply"));
        }
        let Some(name) = path
            .strip_prefix(parent_path)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            break;
        };
        if name.contains('.') {
            return Err(format!("element {path} comes before its parent"));
        }
        *position += 1;
        let mut node = Node::new(name, element.clone());
        node.children = read_children(elements, position, path)?;
        let owner = match node.slice_name() {
            Some(_) => children.iter_mut().find(|c| c.name == name),
            None => None,
        };
        match owner {
            Some(owner) => attach_slice(owner, node),
            // A slice without an unsliced element before it names the element itself.
            None => children.push(node),
        }
    }
    Ok(children)
}

/// Files a slice under the element it slices, or under the slice it re-slices (`a/b` under
/// `a`, `a/b/c` under `a/b`).
fn attach_slice(owner: &mut Node, slice: Node) {
    let name = slice.slice_name().unwrap_or_default().to_owned();
    let resliced = owner.slices.iter().position(|s| {
        s.slice_name()
            .is_some_and(|n| name.strip_prefix(n).is_some_and(|r| r.starts_with('/')))
    });
    match resliced.and_then(|i| owner.slices.get_mut(i)) {
        Some(resliced) => attach_slice(resliced, slice),
        None => owner.slices.push(slice),
    }
}

/// Writes a node, its children and then its slices in document order, with ids and paths
/// rebuilt (`Observation.component:systolic.code`).
fn emit(node: &Node, parent: Option<(&str, &str)>, out: &mut Vec<Value>) {
    let own = match node.slice_name() {
        Some(slice) => format!("{}:{slice}", node.name),
        None => node.name.clone(),
    };
    let (id, path) = match parent {
        None => (own, node.name.clone()),
        Some((parent_id, parent_path)) => (
            format!("{parent_id}.{own}"),
            format!("{parent_path}.{}", node.name),
        ),
    };
    out.push(Value::Object(ordered_element(&node.element, &id, &path)));
    for child in &node.children {
        emit(child, Some((&id, &path)), out);
    }
    for slice in &node.slices {
        emit(slice, parent, out);
    }
}

/// The order of ElementDefinition's fields, so generated elements read like published ones.
const FIELD_ORDER: &[&str] = &[
    "id",
    "extension",
    "modifierExtension",
    "path",
    "representation",
    "sliceName",
    "sliceIsConstraining",
    "label",
    "code",
    "slicing",
    "short",
    "definition",
    "comment",
    "requirements",
    "alias",
    "min",
    "max",
    "base",
    "contentReference",
    "type",
    "defaultValue",
    "meaningWhenMissing",
    "orderMeaning",
    "fixed",
    "pattern",
    "example",
    "minValue",
    "maxValue",
    "maxLength",
    "condition",
    "constraint",
    "mustSupport",
    "isModifier",
    "isModifierReason",
    "isSummary",
    "binding",
    "mapping",
];

fn field_rank(key: &str) -> usize {
    FIELD_ORDER
        .iter()
        .position(|f| *f == key)
        .or_else(|| {
            FIELD_ORDER.iter().position(|f| {
                matches!(
                    *f,
                    "defaultValue" | "fixed" | "pattern" | "minValue" | "maxValue"
                ) && key.starts_with(f)
            })
        })
        .unwrap_or(FIELD_ORDER.len())
}

fn ordered_element(element: &Map<String, Value>, id: &str, path: &str) -> Map<String, Value> {
    let mut keys: Vec<&String> = element
        .keys()
        .filter(|k| *k != "id" && *k != "path")
        .collect();
    keys.sort_by_key(|k| field_rank(k));
    let mut out = Map::new();
    out.insert("id".into(), Value::String(id.to_owned()));
    for key in keys {
        if field_rank(key) > field_rank("path") && !out.contains_key("path") {
            out.insert("path".into(), Value::String(path.to_owned()));
        }
        if let Some(value) = element.get(key) {
            out.insert(key.clone(), value.clone());
        }
    }
    if !out.contains_key("path") {
        out.insert("path".into(), Value::String(path.to_owned()));
    }
    out
}

/// The profile with `snapshot` set, placed before the differential as in published
/// definitions.
fn with_snapshot(profile: &Map<String, Value>, elements: Vec<Value>) -> Value {
    let snapshot = serde_json::json!({ "element": elements });
    let mut out = Map::new();
    let mut snapshot = Some(snapshot);
    for (key, value) in profile {
        if key == "snapshot" {
            continue;
        }
        if key == "differential"
            && let Some(s) = snapshot.take()
        {
            out.insert("snapshot".into(), s);
        }
        out.insert(key.clone(), value.clone());
    }
    if let Some(s) = snapshot {
        out.insert("snapshot".into(), s);
    }
    Value::Object(out)
}

fn str_of<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    object.get(field).and_then(Value::as_str)
}
