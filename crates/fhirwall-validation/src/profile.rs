//! The profile pass: walks an instance against a profile's snapshot (cardinality, fixed and pattern values, types and type profiles, bindings, added constraints, slicing); it must not repeat what the base pass already reported, nor change the instance.

use fhirwall_definitions::{
    BindingStrength, Constraint, DiscriminatorType, ElementDef, Max, SlicingRules, StructureDef,
    TypeInfo, TypeKind,
};
use serde_json::{Map, Value};

use crate::invariant::Focus;
use crate::issue::{IssueCode, Severity};
use crate::reference::{ReferenceForm, parse_reference};
use crate::walker::{Walker, find_child, printable_url};
use crate::{ProfileEntry, ProfileMap};

/// How deep profiles may send the walk into type profiles of type profiles.
const MAX_PROFILE_DEPTH: usize = 12;

/// The children of one snapshot element that share a name: the unsliced definition and its
/// slices.
#[derive(Debug, Clone)]
pub(crate) struct ChildGroup {
    /// The last path segment (`identifier`, `value[x]`, `valueQuantity`).
    name: String,
    base: Option<usize>,
    slices: Vec<usize>,
}

/// For each snapshot element, its children grouped by name.
#[derive(Debug)]
pub(crate) struct ProfileIndex {
    children: Vec<Vec<ChildGroup>>,
}

impl ProfileIndex {
    pub(crate) fn build(structure: &StructureDef) -> Self {
        let elements = &structure.elements;
        let mut children = Vec::with_capacity(elements.len());
        for (index, element) in elements.iter().enumerate() {
            let prefix_len = element.path.len() + 1;
            let mut groups: Vec<ChildGroup> = Vec::new();
            for candidate in elements.iter().enumerate().skip(index + 1) {
                let (position, child) = candidate;
                let is_below = child.path.len() > prefix_len
                    && child.path.starts_with(element.path.as_str())
                    && child.path.as_bytes().get(prefix_len - 1) == Some(&b'.');
                if !is_below {
                    break;
                }
                let rest = child.path.get(prefix_len..).unwrap_or_default();
                if rest.contains('.') {
                    continue;
                }
                match groups.iter_mut().find(|g| g.name == rest) {
                    Some(group) => {
                        if child.slice_name.is_some() {
                            group.slices.push(position);
                        }
                    }
                    None => groups.push(ChildGroup {
                        name: rest.to_owned(),
                        base: child.slice_name.is_none().then_some(position),
                        slices: if child.slice_name.is_some() {
                            vec![position]
                        } else {
                            Vec::new()
                        },
                    }),
                }
            }
            children.push(groups);
        }
        ProfileIndex { children }
    }

    fn groups(&self, element: usize) -> &[ChildGroup] {
        self.children
            .get(element)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The child element of `element` called `name` (or `name[x]`), unsliced.
    fn child_named(&self, element: usize, name: &str) -> Option<&ChildGroup> {
        self.groups(element).iter().find(|g| {
            g.name == name
                || g.name
                    .strip_suffix("[x]")
                    .is_some_and(|prefix| prefix == name)
        })
    }
}

/// One profile being applied.
#[derive(Clone, Copy)]
struct Run<'a> {
    entry: &'a ProfileEntry,
    depth: usize,
}

impl<'a> Run<'a> {
    fn structure(&self) -> &'a StructureDef {
        &self.entry.structure
    }

    fn index(&self) -> &'a ProfileIndex {
        self.entry.index()
    }

    fn element(&self, index: usize) -> Option<&'a ElementDef> {
        self.entry.structure.elements.get(index)
    }

    fn url(&self) -> &'a str {
        &self.entry.structure.url
    }
}

/// One value in the instance that a snapshot element applies to.
#[derive(Clone, Copy)]
struct Item<'a> {
    value: Option<&'a Value>,
    shadow: Option<&'a Value>,
    /// The JSON key (`valueQuantity`, `given`).
    key: &'a str,
    index: Option<usize>,
    info: &'static TypeInfo,
    /// Whether the type comes from a choice suffix.
    from_choice: bool,
    /// The base definition's element for the key, to avoid repeating base checks.
    base_element: Option<&'static ElementDef>,
}

/// Validates a resource against a resource profile.
pub(crate) fn validate_resource_profile<'a>(
    walker: &mut Walker<'a>,
    resource: &'a Value,
    entry: &'a ProfileEntry,
) {
    let run = Run { entry, depth: 0 };
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if run.structure().type_name != resource_type {
        walker.error(
            IssueCode::Invalid,
            "profile-type-mismatch",
            format!(
                "{}: the profile {} is for {}, not for this resource type.",
                walker.path,
                printable_url(run.url()),
                run.structure().type_name
            ),
        );
        return;
    }
    let Some(info) = walker.defs.type_info(resource_type) else {
        return;
    };
    apply_root(walker, run, resource, info);
}

/// Validates an extension against its definition (the registry holds it).
pub(crate) fn validate_extension<'a>(
    walker: &mut Walker<'a>,
    extension: &'a Value,
    entry: &'a ProfileEntry,
) {
    if entry.structure.type_name != "Extension" {
        return;
    }
    let Some(info) = walker.defs.type_info("Extension") else {
        return;
    };
    apply_root(walker, Run { entry, depth: 0 }, extension, info);
}

/// Applies a profile's root element and its children to a value of type `info`.
fn apply_root<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    value: &'a Value,
    info: &'static TypeInfo,
) {
    if run.depth > MAX_PROFILE_DEPTH {
        return;
    }
    let Some(root) = run.element(0) else { return };
    let base_root = info.element();
    let base_constraints: &[Constraint] = base_root.map_or(&[], |r| r.constraints.as_slice());
    fixed_and_pattern(walker, run, root, Some(value));
    for constraint in &root.constraints {
        if !base_constraints.iter().any(|c| c.key == constraint.key) {
            walker.evaluate_constraint(constraint, Focus::Element(value), info.name.as_str());
        }
    }
    if let Some(object) = value.as_object() {
        children(walker, run, 0, object, info);
    }
}

/// The instance items of one child group of a snapshot element.
fn gather_items<'a>(
    walker: &Walker<'a>,
    object: &'a Map<String, Value>,
    info: &'static TypeInfo,
    group_name: &str,
) -> Vec<Item<'a>> {
    let mut items = Vec::new();
    let choice_prefix = group_name.strip_suffix("[x]");
    let lookup_name = choice_prefix.unwrap_or(group_name);
    for (key, value) in object {
        let (name, shadow_only) = match key.strip_prefix('_') {
            Some(base) if object.contains_key(base) => continue,
            Some(base) => (base, true),
            None => (key.as_str(), false),
        };
        let matches = match choice_prefix {
            Some(prefix) => name.starts_with(prefix),
            None => name == lookup_name,
        };
        if !matches {
            continue;
        }
        let Some((_, child, choice_type)) = find_child(info, name) else {
            continue;
        };
        if choice_prefix.is_some() && child.name != lookup_name {
            continue;
        }
        let type_name =
            choice_type.unwrap_or_else(|| child.types.first().map_or("", String::as_str));
        let Some(item_info) = walker.defs.type_info(type_name) else {
            continue;
        };
        let base_element = info.child_element(child);
        let (value, shadow) = if shadow_only {
            (None, Some(value))
        } else {
            let shadow = object
                .iter()
                .find(|(k, _)| k.strip_prefix('_') == Some(name))
                .map(|(_, v)| v);
            (Some(value), shadow)
        };
        let template = Item {
            value,
            shadow,
            key: name,
            index: None,
            info: item_info,
            from_choice: choice_type.is_some(),
            base_element,
        };
        if child.max.is_repeating() {
            let values = value.and_then(Value::as_array);
            let shadows = shadow.and_then(Value::as_array);
            let count = values.map_or(0, Vec::len).max(shadows.map_or(0, Vec::len));
            for index in 0..count {
                let item_value = values.and_then(|v| v.get(index)).filter(|v| !v.is_null());
                let item_shadow = shadows.and_then(|v| v.get(index)).filter(|v| !v.is_null());
                items.push(Item {
                    value: item_value,
                    shadow: item_shadow,
                    index: Some(index),
                    ..template
                });
            }
        } else if !value.is_some_and(Value::is_array) {
            items.push(template);
        }
    }
    items
}

/// Walks the children of `element` in `object`.
fn children<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    element: usize,
    object: &'a Map<String, Value>,
    info: &'static TypeInfo,
) {
    for group in run.index().groups(element) {
        if walker.sink.is_full() {
            return;
        }
        let items = gather_items(walker, object, info, &group.name);
        let base = group.base.and_then(|b| run.element(b));
        if let Some(base) = base {
            group_cardinality(walker, run, group, base, &items, info);
        }
        let slicing = base.and_then(|b| b.slicing.as_ref());
        if !group.slices.is_empty() && !items.is_empty() {
            slice_items(walker, run, group, base, slicing, &items);
        } else if !group.slices.is_empty() {
            missing_slices(walker, run, group, &[], &items);
        } else if let Some(base_index) = group.base {
            for item in &items {
                item_against(walker, run, base_index, item);
            }
        }
    }
}

fn max_text(max: Max) -> String {
    match max {
        Max::Unbounded => "*".into(),
        Max::At(n) => n.to_string(),
    }
}

fn is_stricter_min(profile_min: u32, base_min: u32) -> bool {
    profile_min > base_min
}

fn is_stricter_max(profile: Max, base: Max) -> bool {
    match (profile, base) {
        (Max::At(p), Max::At(b)) => p < b,
        (Max::At(_), Max::Unbounded) => true,
        (Max::Unbounded, _) => false,
    }
}

/// Cardinality the profile adds to the base (the base pass reports the base's own).
fn group_cardinality<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    group: &ChildGroup,
    base: &ElementDef,
    items: &[Item<'a>],
    info: &'static TypeInfo,
) {
    let count = items.len();
    let plain_name = group.name.strip_suffix("[x]").unwrap_or(&group.name);
    let (base_min, base_max) = match info.child(plain_name) {
        Some(child) => (child.min, child.max),
        None => (0, Max::Unbounded),
    };
    if is_stricter_min(base.min, base_min) && usize::try_from(base.min).is_ok_and(|m| count < m) {
        let mark = walker.push_segment(&group.name);
        let message = if count == 0 {
            format!(
                "{} is required (min {}) by profile {} but missing.",
                walker.path,
                base.min,
                printable_url(run.url())
            )
        } else {
            format!(
                "{} requires at least {} values (profile {}) but has {count}.",
                walker.path,
                base.min,
                printable_url(run.url())
            )
        };
        walker.error(IssueCode::Required, "cardinality-min", message);
        walker.pop(mark);
    }
    if is_stricter_max(base.max, base_max) && !base.max.allows(count) {
        let name = items.first().map_or(plain_name, |item| item.key);
        let mark = walker.push_segment(name);
        let message = if base.max == Max::At(0) {
            format!(
                "{} is not allowed by profile {}.",
                walker.path,
                printable_url(run.url())
            )
        } else {
            format!(
                "{} allows at most {} values (profile {}) but has {count}.",
                walker.path,
                max_text(base.max),
                printable_url(run.url())
            )
        };
        walker.error(IssueCode::Invalid, "cardinality-max", message);
        walker.pop(mark);
    }
}

/// Pushes the path of an item and returns the mark to pop back to.
fn push_item_path(walker: &mut Walker<'_>, item: &Item<'_>) -> usize {
    let mark = walker.push_segment(item.key);
    if let Some(index) = item.index {
        walker.push_index(index);
    }
    mark
}

/// Applies one snapshot element to one instance item.
fn item_against<'a>(walker: &mut Walker<'a>, run: Run<'a>, element_index: usize, item: &Item<'a>) {
    let Some(element) = run.element(element_index) else {
        return;
    };
    let mark = push_item_path(walker, item);
    check_item(walker, run, element_index, element, item);
    walker.pop(mark);
}

fn type_allowed(walker: &Walker<'_>, element: &ElementDef, type_name: &str) -> bool {
    element.types.is_empty()
        || element
            .types
            .iter()
            .any(|t| t.code == type_name || walker.defs.is_subtype(type_name, t.code.as_str()))
}

fn check_item<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    element_index: usize,
    element: &'a ElementDef,
    item: &Item<'a>,
) {
    let type_name = item.info.name.as_str();
    if item.from_choice && !type_allowed(walker, element, type_name) {
        let allowed: Vec<&str> = element.types.iter().map(|t| t.code.as_str()).collect();
        walker.error(
            IssueCode::Invalid,
            "type-not-allowed",
            format!(
                "{}: the type {type_name} is not allowed here by profile {} (allowed: {}).",
                walker.path,
                printable_url(run.url()),
                allowed.join(", ")
            ),
        );
        return;
    }
    fixed_and_pattern(walker, run, element, item.value);
    if let Some(value) = item.value {
        profile_binding(walker, element, item, value);
        if item.info.kind == TypeKind::Primitive {
            if element.max_length.is_some()
                || element.min_value.is_some()
                || element.max_value.is_some()
            {
                walker.primitive_limits(element, type_name, value);
            }
        } else if type_name == "Reference" {
            reference_target(walker, element, value);
        }
    }
    let base_constraints: &[Constraint] =
        item.base_element.map_or(&[], |e| e.constraints.as_slice());
    let type_constraints: &[Constraint] = if item.info.kind == TypeKind::Complex {
        item.info
            .element()
            .map_or(&[], |root| root.constraints.as_slice())
    } else {
        &[]
    };
    let focus = match (item.info.kind, item.value) {
        (TypeKind::Primitive, value) => Focus::Primitive {
            value,
            extension: item.shadow,
        },
        (_, Some(value)) => Focus::Element(value),
        (_, None) => return,
    };
    for constraint in &element.constraints {
        let known = base_constraints.iter().any(|c| c.key == constraint.key)
            || type_constraints.iter().any(|c| c.key == constraint.key);
        if !known {
            walker.evaluate_constraint(constraint, focus, type_name);
        }
    }
    match item.info.kind {
        TypeKind::Primitive => {
            if let Some(object) = item.shadow.and_then(Value::as_object)
                && !run.index().groups(element_index).is_empty()
            {
                children(walker, run, element_index, object, item.info);
            }
        }
        TypeKind::Complex | TypeKind::Backbone => {
            let Some(value) = item.value else { return };
            let Some(object) = value.as_object() else {
                return;
            };
            if run.index().groups(element_index).is_empty() {
                type_profiles(walker, run, element, item, value);
            } else {
                children(walker, run, element_index, object, item.info);
            }
        }
        TypeKind::Resource => {
            if let Some(value) = item.value {
                resource_profiles(walker, run, element, value);
            }
        }
    }
}

/// Bindings the profile sets or tightens (the base pass checked the base's required ones).
fn profile_binding(walker: &mut Walker<'_>, element: &ElementDef, item: &Item<'_>, value: &Value) {
    let Some(binding) = &element.binding else {
        return;
    };
    let Some(value_set) = binding.value_set.as_deref() else {
        return;
    };
    let same_as_base = item
        .base_element
        .and_then(|b| b.binding.as_ref())
        .is_some_and(|b| b == binding);
    if same_as_base && binding.strength == BindingStrength::Required {
        return;
    }
    let (severity, strength) = match binding.strength {
        BindingStrength::Required => (Severity::Error, "required"),
        BindingStrength::Extensible => (Severity::Warning, "extensible"),
        BindingStrength::Preferred | BindingStrength::Example => return,
    };
    walker.check_bound_value(
        value_set,
        item.info.name.as_str(),
        value,
        severity,
        strength,
    );
}

/// Target types a profile allows for a reference (the base pass checked the base's).
fn reference_target(walker: &mut Walker<'_>, element: &ElementDef, value: &Value) {
    let Some(reference) = value.get("reference").and_then(Value::as_str) else {
        return;
    };
    let target_type = match parse_reference(walker.defs, reference) {
        Ok(ReferenceForm::Relative { resource_type })
        | Ok(ReferenceForm::Conditional { resource_type })
        | Ok(ReferenceForm::Absolute {
            resource_type: Some(resource_type),
        }) => resource_type,
        _ => return,
    };
    let mark = walker.push_segment("reference");
    walker.check_reference_target(target_type, element);
    walker.pop(mark);
}

/// A complex value whose element the snapshot does not expand: apply the profiles its type
/// names (`SimpleQuantity`, a datatype profile). Extensions are checked against their
/// definitions by the base pass, keyed by their url.
fn type_profiles<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    element: &'a ElementDef,
    item: &Item<'a>,
    value: &'a Value,
) {
    let type_name = item.info.name.as_str();
    if type_name == "Extension" {
        return;
    }
    let profiles: &'a ProfileMap = walker.profiles;
    for type_ref in element.types.iter().filter(|t| t.code == type_name) {
        for url in &type_ref.profiles {
            let key = fhirwall_definitions::canonical_without_version(url);
            if let Some(entry) = profiles.get(key)
                && entry.structure.type_name == type_name
            {
                apply_root(
                    walker,
                    Run {
                        entry,
                        depth: run.depth + 1,
                    },
                    value,
                    item.info,
                );
            }
        }
    }
}

/// A resource-typed element (contained, Bundle entry) whose type names profiles.
fn resource_profiles<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    element: &'a ElementDef,
    value: &'a Value,
) {
    let Some(resource_type) = value.get("resourceType").and_then(Value::as_str) else {
        return;
    };
    let Some(info) = walker.defs.type_info(resource_type) else {
        return;
    };
    let profiles: &'a ProfileMap = walker.profiles;
    for type_ref in &element.types {
        for url in &type_ref.profiles {
            let key = fhirwall_definitions::canonical_without_version(url);
            if let Some(entry) = profiles.get(key)
                && entry.structure.type_name == resource_type
            {
                apply_root(
                    walker,
                    Run {
                        entry,
                        depth: run.depth + 1,
                    },
                    value,
                    info,
                );
            }
        }
    }
}

/// fixed[x] (exactly this) and pattern[x] (at least this).
fn fixed_and_pattern(
    walker: &mut Walker<'_>,
    run: Run<'_>,
    element: &ElementDef,
    value: Option<&Value>,
) {
    if let Some(fixed) = &element.fixed {
        let matches = value.is_some_and(|v| json_equal_fixed(v, fixed));
        if !matches {
            walker.error(
                IssueCode::Value,
                "fixed-value",
                format!(
                    "{} does not have the fixed value{} that profile {} requires.",
                    walker.path,
                    shown_value(fixed),
                    printable_url(run.url())
                ),
            );
        }
    }
    if let Some(pattern) = &element.pattern {
        let matches = value.is_some_and(|v| json_contains(v, pattern));
        if !matches {
            walker.error(
                IssueCode::Value,
                "pattern-value",
                format!(
                    "{} does not match the pattern{} that profile {} requires.",
                    walker.path,
                    shown_value(pattern),
                    printable_url(run.url())
                ),
            );
        }
    }
}

/// A fixed or pattern value from a profile, for a message: short primitives only (they come
/// from the definition, not the instance).
fn shown_value(value: &Value) -> String {
    match value {
        Value::String(text) if text.len() <= 80 && !text.chars().any(char::is_control) => {
            format!(" '{text}'")
        }
        Value::Bool(flag) => format!(" {flag}"),
        Value::Number(number) => format!(" {number}"),
        Value::Object(object) => {
            let codes: Vec<String> = object
                .get("coding")
                .and_then(Value::as_array)
                .map(|codings| {
                    codings
                        .iter()
                        .filter_map(|c| {
                            let code = c.get("code")?.as_str()?;
                            let system = c.get("system").and_then(Value::as_str).unwrap_or("");
                            Some(format!("{system}#{code}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if codes.is_empty() || codes.iter().map(String::len).sum::<usize>() > 200 {
                String::new()
            } else {
                format!(" ({})", codes.join(", "))
            }
        }
        _ => String::new(),
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    a.as_str() == b.as_str()
        || matches!(
            (a.as_str().parse::<f64>(), b.as_str().parse::<f64>()),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Exact equality for fixed[x]; ids and extensions on the instance are not part of the value.
fn json_equal_fixed(instance: &Value, fixed: &Value) -> bool {
    match (instance, fixed) {
        (Value::Object(i), Value::Object(f)) => {
            let relevant = |k: &String| k != "id" && k != "extension";
            i.keys().filter(|k| relevant(k)).count() == f.keys().filter(|k| relevant(k)).count()
                && f.iter().all(|(k, fv)| {
                    !relevant(k) || i.get(k).is_some_and(|iv| json_equal_fixed(iv, fv))
                })
        }
        (Value::Array(i), Value::Array(f)) => {
            i.len() == f.len() && i.iter().zip(f).all(|(a, b)| json_equal_fixed(a, b))
        }
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        _ => instance == fixed,
    }
}

/// Containment for pattern[x]: every property of the pattern is in the instance; every item
/// of a pattern array matches some item of the instance array.
pub(crate) fn json_contains(instance: &Value, pattern: &Value) -> bool {
    match (instance, pattern) {
        (Value::Object(i), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| i.get(k).is_some_and(|iv| json_contains(iv, pv))),
        (Value::Array(i), Value::Array(p)) => {
            p.iter().all(|pv| i.iter().any(|iv| json_contains(iv, pv)))
        }
        (Value::Array(i), p) => i.iter().any(|iv| json_contains(iv, p)),
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        _ => instance == pattern,
    }
}

/// What a slice expects at a discriminator path.
#[derive(Debug, Clone)]
enum Expected {
    Fixed(Value),
    Pattern(Value),
    Exists(bool),
    Types(Vec<String>),
    Profiles(Vec<String>),
    /// The slice cannot be told apart by this discriminator: nothing matches it.
    Unknown,
}

/// Splits a discriminator path on dots outside parentheses and quotes.
fn split_path(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut start = 0;
    for (position, c) in path.char_indices() {
        match c {
            '\'' => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => depth = depth.saturating_sub(1),
            '.' if !in_quote && depth == 0 => {
                segments.push(path.get(start..position).unwrap_or_default());
                start = position + 1;
            }
            _ => {}
        }
    }
    segments.push(path.get(start..).unwrap_or_default());
    segments
}

/// The argument of `name('arg')`.
fn function_argument<'p>(segment: &'p str, name: &str) -> Option<&'p str> {
    segment
        .strip_prefix(name)?
        .strip_prefix("('")?
        .strip_suffix("')")
}

/// Instance nodes at a discriminator path; None when the path cannot be followed here
/// (`resolve()`).
fn nodes_at<'v>(start: &'v Value, segments: &[&str]) -> Option<Vec<&'v Value>> {
    let mut nodes = vec![start];
    let mut position = 0;
    while let Some(segment) = segments.get(position) {
        position += 1;
        if *segment == "$this" {
            continue;
        }
        if segment.starts_with("resolve(") {
            return None;
        }
        let mut next = Vec::new();
        if let Some(url) = function_argument(segment, "extension") {
            for node in &nodes {
                for extension in children_named(node, "extension") {
                    if extension.get("url").and_then(Value::as_str) == Some(url) {
                        next.push(extension);
                    }
                }
            }
        } else if let Some(type_name) = segment
            .strip_prefix("ofType(")
            .and_then(|s| s.strip_suffix(')'))
        {
            // Handled with the previous name; here it only keeps the nodes.
            let _ = type_name;
            next = nodes;
        } else {
            // A choice element followed by ofType(T) names the key `nameT`.
            let typed_key = segments
                .get(position)
                .and_then(|s| s.strip_prefix("ofType(")?.strip_suffix(')'))
                .map(|ty| fhirwall_definitions::choice_json_key(segment, ty));
            for node in &nodes {
                match &typed_key {
                    Some(key) => next.extend(children_named(node, key)),
                    None => {
                        let direct = children_named(node, segment);
                        if direct.is_empty() {
                            next.extend(choice_children(node, segment));
                        } else {
                            next.extend(direct);
                        }
                    }
                }
            }
        }
        nodes = next;
    }
    Some(nodes)
}

fn children_named<'v>(node: &'v Value, name: &str) -> Vec<&'v Value> {
    match node.get(name) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(value) => vec![value],
        None => Vec::new(),
    }
}

/// Values of the choice element `name` whatever its type (`value` → `valueQuantity`).
fn choice_children<'v>(node: &'v Value, name: &str) -> Vec<&'v Value> {
    let Some(object) = node.as_object() else {
        return Vec::new();
    };
    object
        .iter()
        .filter(|(key, _)| {
            key.strip_prefix(name)
                .and_then(|rest| rest.bytes().next())
                .is_some_and(|b| b.is_ascii_uppercase())
        })
        .map(|(_, value)| value)
        .collect()
}

/// The types of the values at a path (for `type` discriminators): the choice suffixes.
fn types_at(item: &Item<'_>, segments: &[&str]) -> Vec<String> {
    match segments {
        [] | ["$this"] => vec![item.info.name.clone()],
        [parents @ .., last] => {
            let Some(value) = item.value else {
                return Vec::new();
            };
            let Some(nodes) = nodes_at(value, parents) else {
                return Vec::new();
            };
            let mut types = Vec::new();
            for node in nodes {
                if let Some(object) = node.as_object() {
                    for key in object.keys() {
                        if let Some(suffix) = key.strip_prefix(*last)
                            && suffix
                                .bytes()
                                .next()
                                .is_some_and(|b| b.is_ascii_uppercase())
                        {
                            types.push(suffix.to_owned());
                        }
                    }
                }
            }
            types
        }
    }
}

/// What slice `slice` expects at `segments`, read from the snapshot (and from fixed or pattern
/// values met on the way).
fn expected_at(
    walker: &Walker<'_>,
    run: Run<'_>,
    slice: usize,
    kind: DiscriminatorType,
    segments: &[&str],
) -> Expected {
    let index = run.index();
    let mut current = slice;
    let mut position = 0;
    while position < segments.len() {
        let Some(element) = run.element(current) else {
            return Expected::Unknown;
        };
        let rest = segments.get(position..).unwrap_or_default();
        if matches!(kind, DiscriminatorType::Value | DiscriminatorType::Pattern)
            && let Some(found) = project_value(element, rest)
        {
            return found;
        }
        let Some(segment) = segments.get(position) else {
            break;
        };
        position += 1;
        if *segment == "$this" || segment.starts_with("ofType(") {
            continue;
        }
        if segment.starts_with("resolve(") {
            if kind == DiscriminatorType::Profile {
                let targets: Vec<String> = element
                    .types
                    .iter()
                    .flat_map(|t| t.target_profiles.iter().cloned())
                    .collect();
                return Expected::Profiles(targets);
            }
            return Expected::Unknown;
        }
        if let Some(url) = function_argument(segment, "extension") {
            let Some(group) = index.child_named(current, "extension") else {
                return Expected::Unknown;
            };
            let found = group.slices.iter().copied().find(|&s| {
                run.element(s).is_some_and(|e| {
                    e.types.iter().any(|t| t.profiles.iter().any(|p| p == url))
                        || extension_slice_url(run, s).is_some_and(|u| u == url)
                })
            });
            match found {
                Some(s) => current = s,
                None => return Expected::Unknown,
            }
            continue;
        }
        match index.child_named(current, segment) {
            Some(group) => match group.base {
                Some(base) => current = base,
                None => return Expected::Unknown,
            },
            None => {
                // The snapshot does not expand this element: an extension's url is its
                // type profile's url.
                if *segment == "url"
                    && position == segments.len()
                    && let Some(url) = element
                        .types
                        .iter()
                        .find(|t| t.code == "Extension")
                        .and_then(|t| t.profiles.first())
                {
                    return Expected::Fixed(Value::String(
                        fhirwall_definitions::canonical_without_version(url).to_owned(),
                    ));
                }
                return Expected::Unknown;
            }
        }
    }
    let Some(element) = run.element(current) else {
        return Expected::Unknown;
    };
    let _ = walker;
    match kind {
        DiscriminatorType::Value | DiscriminatorType::Pattern => {
            project_value(element, &[]).unwrap_or(Expected::Unknown)
        }
        DiscriminatorType::Exists => {
            if element.max == Max::At(0) {
                Expected::Exists(false)
            } else if element.min >= 1 {
                Expected::Exists(true)
            } else {
                Expected::Unknown
            }
        }
        DiscriminatorType::Type => {
            Expected::Types(element.types.iter().map(|t| t.code.clone()).collect())
        }
        DiscriminatorType::Profile => Expected::Profiles(
            element
                .types
                .iter()
                .flat_map(|t| t.profiles.iter().cloned())
                .collect(),
        ),
    }
}

/// The fixed or pattern value of `element`, followed along `rest` when the path goes below it.
fn project_value(element: &ElementDef, rest: &[&str]) -> Option<Expected> {
    let (value, is_fixed) = match (&element.fixed, &element.pattern) {
        (Some(fixed), _) => (fixed, true),
        (None, Some(pattern)) => (pattern, false),
        (None, None) => return None,
    };
    let rest: Vec<&str> = rest.iter().copied().filter(|s| *s != "$this").collect();
    let projected = if rest.is_empty() {
        value.clone()
    } else {
        let nodes = nodes_at(value, &rest)?;
        match nodes.as_slice() {
            [single] => (*single).clone(),
            _ => return Some(Expected::Unknown),
        }
    };
    Some(if is_fixed {
        Expected::Fixed(projected)
    } else {
        Expected::Pattern(projected)
    })
}

/// The fixed `url` of an inline extension slice (`Extension.extension:ombCategory.url`).
fn extension_slice_url<'a>(run: Run<'a>, slice: usize) -> Option<&'a str> {
    let group = run.index().child_named(slice, "url")?;
    run.element(group.base?)?.fixed.as_ref()?.as_str()
}

/// Whether an item fits what a slice expects for one discriminator.
fn item_matches<'a>(
    walker: &mut Walker<'a>,
    item: &Item<'a>,
    segments: &[&str],
    expected: &Expected,
) -> bool {
    match expected {
        Expected::Unknown => false,
        Expected::Fixed(value) | Expected::Pattern(value) => {
            let Some(start) = item.value else {
                return false;
            };
            let Some(nodes) = nodes_at(start, segments) else {
                return false;
            };
            let is_fixed = matches!(expected, Expected::Fixed(_));
            nodes.iter().any(|node| {
                if is_fixed {
                    json_equal_fixed(node, value)
                } else {
                    json_contains(node, value)
                }
            })
        }
        Expected::Exists(should) => {
            let found = item
                .value
                .and_then(|start| nodes_at(start, segments))
                .is_some_and(|nodes| !nodes.is_empty());
            found == *should
        }
        Expected::Types(types) => types_at(item, segments).iter().any(|found| {
            types
                .iter()
                .any(|ty| ty == found || fhirwall_definitions::type_suffix_matches(ty, found))
        }),
        Expected::Profiles(urls) => profile_conforms(walker, item, segments, urls),
    }
}

/// Trial validation for `profile` discriminators: the item matches when it passes one of the
/// profiles without errors. Issues of the trial are thrown away.
fn profile_conforms<'a>(
    walker: &mut Walker<'a>,
    item: &Item<'a>,
    segments: &[&str],
    urls: &[String],
) -> bool {
    let Some(start) = item.value else {
        return false;
    };
    let Some(nodes) = nodes_at(start, segments) else {
        return false;
    };
    let Some(node) = nodes.first().copied() else {
        return false;
    };
    let profiles: &'a ProfileMap = walker.profiles;
    for url in urls {
        let key = fhirwall_definitions::canonical_without_version(url);
        let Some(entry) = profiles.get(key) else {
            continue;
        };
        let type_name = node
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or(item.info.name.as_str());
        if entry.structure.type_name != type_name {
            continue;
        }
        let Some(info) = walker.defs.type_info(type_name) else {
            continue;
        };
        let mark = walker.sink.len();
        let errors_before = walker.sink.error_count();
        let run = Run {
            entry,
            depth: MAX_PROFILE_DEPTH.saturating_sub(2),
        };
        let path_mark = walker.path.len();
        apply_root(walker, run, node, info);
        walker.path.truncate(path_mark);
        let conforms = walker.sink.error_count() == errors_before;
        walker.sink.truncate(mark);
        if conforms {
            return true;
        }
    }
    false
}

/// Assigns items to slices and checks slice cardinality, closed and ordered slicing.
fn slice_items<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    group: &ChildGroup,
    base: Option<&'a ElementDef>,
    slicing: Option<&'a fhirwall_definitions::Slicing>,
    items: &[Item<'a>],
) {
    let default_discriminator = [fhirwall_definitions::Discriminator {
        kind: DiscriminatorType::Value,
        path: "url".to_owned(),
    }];
    let discriminators: &[fhirwall_definitions::Discriminator] = match slicing {
        Some(s) if !s.discriminators.is_empty() => &s.discriminators,
        _ if group.name == "extension" || group.name == "modifierExtension" => {
            &default_discriminator
        }
        _ => &[],
    };
    let paths: Vec<Vec<&str>> = discriminators
        .iter()
        .map(|d| split_path(d.path.as_str()))
        .collect();
    // What each slice expects, computed once per group.
    let expectations: Vec<Vec<Expected>> = group
        .slices
        .iter()
        .map(|&slice| {
            discriminators
                .iter()
                .zip(&paths)
                .map(|(d, segments)| expected_at(walker, run, slice, d.kind, segments))
                .collect()
        })
        .collect();
    let mut assigned: Vec<Option<usize>> = Vec::with_capacity(items.len());
    for item in items {
        let slot = if discriminators.is_empty() {
            None
        } else {
            expectations.iter().position(|slice_expectations| {
                slice_expectations
                    .iter()
                    .zip(&paths)
                    .all(|(expected, segments)| item_matches(walker, item, segments, expected))
            })
        };
        assigned.push(slot);
    }
    missing_slices(walker, run, group, &assigned, items);
    let rules = slicing.map_or(SlicingRules::Open, |s| s.rules);
    let ordered = slicing.is_some_and(|s| s.ordered);
    let mut last_slot = 0usize;
    let mut seen_unmatched = false;
    for (item, slot) in items.iter().zip(&assigned) {
        match slot {
            Some(slot) => {
                if (ordered && *slot < last_slot)
                    || (rules == SlicingRules::OpenAtEnd && seen_unmatched)
                {
                    let mark = push_item_path(walker, item);
                    walker.error(
                        IssueCode::Invalid,
                        "slice-order",
                        format!(
                            "{} is out of the order of the slices that profile {} defines.",
                            walker.path,
                            printable_url(run.url())
                        ),
                    );
                    walker.pop(mark);
                }
                last_slot = last_slot.max(*slot);
                if let Some(&slice_index) = group.slices.get(*slot) {
                    item_against(walker, run, slice_index, item);
                }
            }
            None => {
                seen_unmatched = true;
                if rules == SlicingRules::Closed {
                    let mark = push_item_path(walker, item);
                    walker.error(
                        IssueCode::Invalid,
                        "slice-closed",
                        format!(
                            "{} matches none of the slices of profile {}, and the slicing is closed.",
                            walker.path,
                            printable_url(run.url())
                        ),
                    );
                    walker.pop(mark);
                } else if let Some(base_index) = group.base {
                    item_against(walker, run, base_index, item);
                }
            }
        }
    }
    let _ = base;
}

/// Per-slice minimum and maximum.
fn missing_slices<'a>(
    walker: &mut Walker<'a>,
    run: Run<'a>,
    group: &ChildGroup,
    assigned: &[Option<usize>],
    items: &[Item<'a>],
) {
    let _ = items;
    for (slot, &slice_index) in group.slices.iter().enumerate() {
        let Some(slice) = run.element(slice_index) else {
            continue;
        };
        let count = assigned.iter().filter(|a| **a == Some(slot)).count();
        let name = slice.slice_name.as_deref().unwrap_or_default();
        let plain = group.name.strip_suffix("[x]").unwrap_or(&group.name);
        if usize::try_from(slice.min).is_ok_and(|min| count < min) {
            let mark = walker.push_segment(plain);
            walker.error(
                IssueCode::Required,
                "slice-min",
                format!(
                    "{}: the slice '{name}' of profile {} requires at least {} item(s) but {count} match.",
                    walker.path,
                    printable_url(run.url()),
                    slice.min
                ),
            );
            walker.pop(mark);
        }
        if !slice.max.allows(count) {
            let mark = walker.push_segment(plain);
            walker.error(
                IssueCode::Invalid,
                "slice-max",
                format!(
                    "{}: the slice '{name}' of profile {} allows at most {} item(s) but {count} match.",
                    walker.path,
                    printable_url(run.url()),
                    max_text(slice.max)
                ),
            );
            walker.pop(mark);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_split_outside_parentheses() {
        assert_eq!(
            split_path("extension('http://a.b/c').value"),
            ["extension('http://a.b/c')", "value"]
        );
        assert_eq!(split_path("coding.code"), ["coding", "code"]);
        assert_eq!(split_path("$this"), ["$this"]);
    }

    #[test]
    fn patterns_are_contained() {
        let instance = json!({"coding": [{"system": "s", "code": "a"}, {"system": "l", "code": "b", "display": "x"}], "text": "t"});
        assert!(json_contains(
            &instance,
            &json!({"coding": [{"system": "l", "code": "b"}]})
        ));
        assert!(!json_contains(
            &instance,
            &json!({"coding": [{"system": "l", "code": "a"}]})
        ));
        assert!(json_equal_fixed(
            &json!({"id": "x", "code": "a"}),
            &json!({"code": "a"})
        ));
        assert!(!json_equal_fixed(
            &json!({"code": "a", "display": "b"}),
            &json!({"code": "a"})
        ));
    }

    #[test]
    fn discriminator_nodes() {
        let value =
            json!({"extension": [{"url": "a", "valueCode": "x"}], "valueQuantity": {"value": 1}});
        assert_eq!(
            nodes_at(&value, &["extension('a')", "value"]).unwrap(),
            vec![&json!("x")]
        );
        assert_eq!(
            nodes_at(&value, &["value", "ofType(Quantity)"]).unwrap(),
            vec![&json!({"value": 1})]
        );
        assert!(nodes_at(&value, &["resolve()"]).is_none());
    }
}
