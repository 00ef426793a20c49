//! FHIRPath Patch (R4 `fhirpatch.html`): a Parameters resource whose `operation` parameters
//! add, insert, delete, replace and move elements named by FHIRPath expressions. Pure: the
//! result still goes through validation like any other write.
//!
//! The engine evaluates each path on the current content; the nodes it selects are found in
//! the tree by identity (the engine borrows the tree), which gives each one its place (keys
//! and array indexes) in a copy that the operation then changes. A primitive's `_name`
//! sibling (its id and extensions) moves with it.

use fhirwall_definitions::{ChildDef, Definitions};
use fhirwall_fhirpath::{Context, Item, Node};
use serde_json::{Map, Value};

use crate::DefinitionsModel;

/// Why a FHIRPath Patch was not applied. Messages name operations, paths and elements, never
/// values from the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirPathPatchError {
    /// The Parameters resource is not a FHIRPath Patch (400).
    #[error("{0}")]
    Malformed(String),
    /// The patch is well formed but cannot be applied to this resource (422).
    #[error("{0}")]
    NotApplicable(String),
}

use FhirPathPatchError::{Malformed, NotApplicable};

/// At most this many operations in one patch.
const MAX_OPERATIONS: usize = 1000;

#[derive(Debug)]
enum Op {
    Add {
        path: String,
        name: String,
        value: NewValue,
    },
    Insert {
        path: String,
        index: usize,
        value: NewValue,
    },
    Delete {
        path: String,
    },
    Replace {
        path: String,
        value: NewValue,
    },
    Move {
        path: String,
        source: usize,
        destination: usize,
    },
}

/// A value to put in place: its JSON form, the `_name` object of a primitive, and its type
/// (the suffix of `value[x]`, `String` or `Quantity`; None for a value given by parts).
#[derive(Debug, Clone)]
struct NewValue {
    json: Value,
    meta: Option<Value>,
    type_suffix: Option<String>,
}

/// One place in a JSON tree: object keys and array indexes from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Applies a FHIRPath Patch `parameters` to `resource`, returning the new content.
pub fn apply_fhirpath_patch(
    resource: &Value,
    parameters: &Value,
) -> Result<Value, FhirPathPatchError> {
    let ops = operations(parameters)?;
    let defs = Definitions::core();
    let mut current = resource.clone();
    for (n, op) in ops.iter().enumerate() {
        current = apply(defs, &current, op).map_err(|e| match e {
            Malformed(m) => Malformed(format!("operation {}: {m}", n + 1)),
            NotApplicable(m) => NotApplicable(format!("operation {}: {m}", n + 1)),
        })?;
    }
    Ok(current)
}

fn operations(parameters: &Value) -> Result<Vec<Op>, FhirPathPatchError> {
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(Malformed(
            "A FHIRPath Patch is a Parameters resource.".to_string(),
        ));
    }
    let params = match parameters.get("parameter") {
        Some(Value::Array(params)) => params,
        None => return Ok(Vec::new()),
        Some(_) => return Err(Malformed("Parameters.parameter is an array.".to_string())),
    };
    if params.len() > MAX_OPERATIONS {
        return Err(Malformed(format!(
            "A patch holds at most {MAX_OPERATIONS} operations."
        )));
    }
    params
        .iter()
        .enumerate()
        .map(|(i, p)| operation(i, p))
        .collect()
}

fn operation(i: usize, param: &Value) -> Result<Op, FhirPathPatchError> {
    let at = |what: &str| format!("Parameters.parameter[{i}]: {what}");
    if param.get("name").and_then(Value::as_str) != Some("operation") {
        return Err(Malformed(at(
            "each parameter of a FHIRPath Patch is named 'operation'.",
        )));
    }
    let parts = param
        .get("part")
        .and_then(Value::as_array)
        .ok_or_else(|| Malformed(at("an operation has parts (type, path, ...).")))?;
    let mut ty = None;
    let mut path = None;
    let mut name = None;
    let mut value = None;
    let mut index = None;
    let mut source = None;
    let mut destination = None;
    for part in parts {
        let part_name = part.get("name").and_then(Value::as_str).unwrap_or("");
        let seen = match part_name {
            "type" => ty.replace(
                primitive_part(part, "valueCode")
                    .ok_or_else(|| Malformed(at("the 'type' part is a valueCode.")))?,
            ),
            "path" => path.replace(
                primitive_part(part, "valueString")
                    .ok_or_else(|| Malformed(at("the 'path' part is a valueString.")))?,
            ),
            "name" => name.replace(
                primitive_part(part, "valueString")
                    .ok_or_else(|| Malformed(at("the 'name' part is a valueString.")))?,
            ),
            "value" => value
                .replace(new_value(part).map_err(|m| Malformed(at(&m)))?)
                .map(|_| String::new()),
            "index" | "source" | "destination" => {
                let n = part
                    .get("valueInteger")
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        Malformed(at(&format!(
                            "the '{part_name}' part is a valueInteger of 0 or more."
                        )))
                    })?;
                let slot = match part_name {
                    "index" => &mut index,
                    "source" => &mut source,
                    _ => &mut destination,
                };
                slot.replace(n).map(|_| String::new())
            }
            other => {
                return Err(Malformed(at(&format!(
                    "'{other}' is not a part of a FHIRPath Patch operation."
                ))));
            }
        };
        if seen.is_some() {
            return Err(Malformed(at(&format!(
                "the '{part_name}' part is repeated."
            ))));
        }
    }
    let path = path.ok_or_else(|| Malformed(at("the 'path' part is missing.")))?;
    if path.contains("resolve(") {
        return Err(Malformed(at(
            "a patch path may not use resolve(): a patch changes only the resource it is sent to.",
        )));
    }
    let need = |v: Option<NewValue>| v.ok_or_else(|| Malformed(at("the 'value' part is missing.")));
    let need_n = |v: Option<usize>, what: &str| {
        v.ok_or_else(|| Malformed(at(&format!("the '{what}' part is missing."))))
    };
    let ty = ty.ok_or_else(|| Malformed(at("the 'type' part is missing.")))?;
    let op = match ty.as_str() {
        "add" => Op::Add {
            path,
            name: name.ok_or_else(|| Malformed(at("an add names the element ('name').")))?,
            value: need(value)?,
        },
        "insert" => Op::Insert {
            path,
            index: need_n(index, "index")?,
            value: need(value)?,
        },
        "delete" => Op::Delete { path },
        "replace" => Op::Replace {
            path,
            value: need(value)?,
        },
        "move" => Op::Move {
            path,
            source: need_n(source, "source")?,
            destination: need_n(destination, "destination")?,
        },
        other => {
            return Err(Malformed(at(&format!(
                "'{other}' is not a FHIRPath Patch operation (add, insert, delete, replace, move)."
            ))));
        }
    };
    Ok(op)
}

fn primitive_part(part: &Value, key: &str) -> Option<String> {
    part.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The value of a `value` part: a `value[x]`, or parts that build a complex value (a backbone
/// element has no data type of its own).
fn new_value(part: &Value) -> Result<NewValue, String> {
    let Value::Object(map) = part else {
        return Err("a part is an object.".to_string());
    };
    for (key, json) in map {
        if let Some(suffix) = key.strip_prefix("value")
            && suffix.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Ok(NewValue {
                json: json.clone(),
                meta: map.get(&format!("_{key}")).cloned(),
                type_suffix: Some(suffix.to_string()),
            });
        }
    }
    if let Some(Value::Array(parts)) = map.get("part") {
        let mut object = Map::new();
        for sub in parts {
            let name = sub
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| "each part of a value has a name.".to_string())?;
            let value = new_value(sub)?;
            object.insert(name.to_string(), value.json);
            if let Some(meta) = value.meta {
                object.insert(format!("_{name}"), meta);
            }
        }
        return Ok(NewValue {
            json: Value::Object(object),
            meta: None,
            type_suffix: None,
        });
    }
    Err("the 'value' part has a value[x] or parts.".to_string())
}

fn apply(
    defs: &'static Definitions,
    current: &Value,
    op: &Op,
) -> Result<Value, FhirPathPatchError> {
    let mut next = current.clone();
    match op {
        Op::Replace { path, value } => {
            let places = select(defs, current, path)?;
            let [place] = places.as_slice() else {
                return Err(one_expected(path, places.len()));
            };
            let (parent, key, index) = split(place)?;
            put(&mut next, &parent, &key, index, value, true)?;
        }
        Op::Delete { path } => {
            let places = select(defs, current, path)?;
            match places.as_slice() {
                [] => {}
                [place] => {
                    let (parent, key, index) = split(place)?;
                    remove(&mut next, &parent, &key, index);
                }
                many => return Err(one_expected(path, many.len())),
            }
        }
        Op::Add { path, name, value } => {
            let nodes = select_nodes(defs, current, path)?;
            let [(place, node)] = nodes.as_slice() else {
                return Err(one_expected(path, nodes.len()));
            };
            let parent_type = node.type_name().ok_or_else(|| {
                NotApplicable(format!("the type of what '{path}' selects is not known."))
            })?;
            let (child, key) = child_key(defs, parent_type, name, value)?;
            let target = walk(&next, place)
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    NotApplicable(format!(
                        "'{path}' does not select an element with children."
                    ))
                })?;
            let exists = target.contains_key(&key) || target.contains_key(&format!("_{key}"));
            if child.is_array() {
                let len = target
                    .get(&key)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                insert_at(&mut next, place, &key, len, value)?;
            } else if exists {
                return Err(NotApplicable(format!(
                    "{parent_type}.{key} already has a value: add does not replace a single element (use replace)."
                )));
            } else {
                put(&mut next, place, &key, None, value, false)?;
            }
        }
        Op::Insert { path, index, value } => {
            let (parent, key, len) = list(defs, current, path)?;
            if *index > len {
                return Err(NotApplicable(format!(
                    "insert at {index} into '{path}', which holds {len}."
                )));
            }
            insert_at(&mut next, &parent, &key, *index, value)?;
        }
        Op::Move {
            path,
            source,
            destination,
        } => {
            let (parent, key, len) = list(defs, current, path)?;
            if *source >= len || *destination >= len {
                return Err(NotApplicable(format!(
                    "move from {source} to {destination} in '{path}', which holds {len}."
                )));
            }
            move_within(&mut next, &parent, &key, *source, *destination);
        }
    }
    Ok(next)
}

fn one_expected(path: &str, found: usize) -> FhirPathPatchError {
    NotApplicable(format!(
        "'{path}' must select a single element; it selects {found}."
    ))
}

fn evaluate<'a>(
    model: &'a DefinitionsModel,
    resource: &'a Value,
    path: &str,
) -> Result<Vec<Item<'a>>, FhirPathPatchError> {
    let expr = fhirwall_fhirpath::parse(path)
        .map_err(|e| Malformed(format!("the path '{path}' is not FHIRPath: {e}")))?;
    let ctx = Context::new(model, resource);
    fhirwall_fhirpath::evaluate(&expr, &ctx, Item::resource(resource))
        .map_err(|e| NotApplicable(format!("the path '{path}' cannot be evaluated: {e}")))
}

/// The places of the nodes `path` selects, each with the node.
fn select_nodes<'a>(
    defs: &'static Definitions,
    resource: &'a Value,
    path: &str,
) -> Result<Vec<(Vec<Step>, Node<'a>)>, FhirPathPatchError> {
    static MODEL: std::sync::OnceLock<DefinitionsModel> = std::sync::OnceLock::new();
    let model = MODEL.get_or_init(|| DefinitionsModel::new(defs));
    let items = evaluate(model, resource, path)?;
    items
        .into_iter()
        .map(|item| {
            let node = *item.as_node().ok_or_else(|| {
                NotApplicable(format!(
                    "'{path}' selects a computed value, not an element."
                ))
            })?;
            let place = locate(resource, &node).ok_or_else(|| {
                NotApplicable(format!("'{path}' selects something outside the resource."))
            })?;
            Ok((place, node))
        })
        .collect()
}

fn select(
    defs: &'static Definitions,
    resource: &Value,
    path: &str,
) -> Result<Vec<Vec<Step>>, FhirPathPatchError> {
    Ok(select_nodes(defs, resource, path)?
        .into_iter()
        .map(|(place, _)| place)
        .collect())
}

/// The list `path` names (for insert and move): its parent's place, its key and its length.
/// An absent list is found through its parent (`Patient.identifier` through `Patient`).
fn list(
    defs: &'static Definitions,
    resource: &Value,
    path: &str,
) -> Result<(Vec<Step>, String, usize), FhirPathPatchError> {
    let places = select(defs, resource, path)?;
    if let Some(first) = places.first() {
        let (parent, key, _) = split(first)?;
        let mut indexes = Vec::new();
        for place in &places {
            match split(place)? {
                (p, k, Some(i)) if p == parent && k == key => indexes.push(i),
                _ => {
                    return Err(NotApplicable(format!(
                        "'{path}' must select the items of one list."
                    )));
                }
            }
        }
        let len = walk(resource, &parent)
            .and_then(|p| p.get(&key))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if indexes.len() != len || indexes.iter().enumerate().any(|(n, i)| n != *i) {
            return Err(NotApplicable(format!(
                "'{path}' must select a whole list, not some of its items."
            )));
        }
        return Ok((parent, key, len));
    }
    // Nothing there yet: the parent is the path without its last name.
    let (parent_path, name) = path
        .rsplit_once('.')
        .filter(|(_, name)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .ok_or_else(|| NotApplicable(format!("'{path}' selects no list.")))?;
    let parents = select_nodes(defs, resource, parent_path)?;
    let [(place, node)] = parents.as_slice() else {
        return Err(one_expected(parent_path, parents.len()));
    };
    let parent_type = node
        .type_name()
        .ok_or_else(|| NotApplicable(format!("the type of '{parent_path}' is not known.")))?;
    match find_child(defs, parent_type, name) {
        Some((child, None)) if child.is_array() => Ok((place.clone(), name.to_string(), 0)),
        _ => Err(NotApplicable(format!(
            "{parent_type}.{name} is not a list."
        ))),
    }
}

/// The child `name` of `type_name`, looked up through base types, and the JSON key a value
/// of the given type takes (for a choice element, the name with the type's suffix).
fn child_key(
    defs: &'static Definitions,
    type_name: &str,
    name: &str,
    value: &NewValue,
) -> Result<(&'static ChildDef, String), FhirPathPatchError> {
    let unknown = || NotApplicable(format!("{type_name} has no element '{name}'."));
    let (child, chosen) = find_child(defs, type_name, name).ok_or_else(unknown)?;
    if !child.is_choice {
        return Ok((child, name.to_string()));
    }
    if chosen.is_some() {
        return Ok((child, name.to_string()));
    }
    let suffix = value.type_suffix.as_deref().ok_or_else(|| {
        NotApplicable(format!(
            "{type_name}.{name}[x] takes a value of one of its types (value[x])."
        ))
    })?;
    let key = format!("{name}{suffix}");
    match find_child(defs, type_name, &key) {
        Some((c, Some(_))) if std::ptr::eq(c, child) => Ok((child, key)),
        _ => Err(NotApplicable(format!(
            "{type_name}.{name}[x] does not take a {suffix}."
        ))),
    }
}

fn find_child(
    defs: &'static Definitions,
    type_name: &str,
    key: &str,
) -> Option<(&'static ChildDef, Option<&'static str>)> {
    let mut current = Some(type_name.to_string());
    for _ in 0..16 {
        let info = defs.type_info(current.as_deref()?)?;
        if let Some(found) = info.child_for_json_key(key) {
            return Some(found);
        }
        if let Some(choice) = info.child(key) {
            return Some((choice, None));
        }
        current = info.base.clone();
    }
    None
}

/// Where `node` is in `root`: found by identity, since the engine borrows `root`'s values.
fn locate(root: &Value, node: &Node<'_>) -> Option<Vec<Step>> {
    let (target, is_meta) = match (node.json(), node.meta()) {
        (Some(v), _) => (v, false),
        (None, Some(m)) => (m, true),
        (None, None) => return None,
    };
    let mut path = Vec::new();
    if !find(root, target, &mut path) {
        return None;
    }
    if is_meta {
        // `_given[1]` stands for `given[1]`.
        let step = path.iter_mut().rev().find(|s| matches!(s, Step::Key(_)))?;
        if let Step::Key(k) = step {
            *k = k.strip_prefix('_')?.to_string();
        }
    }
    Some(path)
}

fn find(here: &Value, target: &Value, path: &mut Vec<Step>) -> bool {
    if std::ptr::eq(here, target) {
        return true;
    }
    match here {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Step::Key(k.clone()));
                if find(v, target, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Step::Index(i));
                if find(v, target, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// A place as (its parent object's place, its key, its index in the key's array).
fn split(place: &[Step]) -> Result<(Vec<Step>, String, Option<usize>), FhirPathPatchError> {
    let not_element = || NotApplicable("the path selects the resource itself.".to_string());
    match place {
        [rest @ .., Step::Key(k), Step::Index(i)] => Ok((rest.to_vec(), k.clone(), Some(*i))),
        [rest @ .., Step::Key(k)] => Ok((rest.to_vec(), k.clone(), None)),
        _ => Err(not_element()),
    }
}

fn walk<'v>(root: &'v Value, place: &[Step]) -> Option<&'v Value> {
    place.iter().try_fold(root, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn walk_mut<'v>(root: &'v mut Value, place: &[Step]) -> Option<&'v mut Value> {
    place.iter().try_fold(root, |v, step| match step {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(i),
    })
}

fn object_at<'v>(
    root: &'v mut Value,
    place: &[Step],
) -> Result<&'v mut Map<String, Value>, FhirPathPatchError> {
    walk_mut(root, place)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            NotApplicable("the path does not select an element with children.".to_string())
        })
}

/// Sets `key` (or its item at `index`) of the object at `parent` to `value`, with its `_key`
/// companion; `replace` drops the old companion when the new value has none.
fn put(
    root: &mut Value,
    parent: &[Step],
    key: &str,
    index: Option<usize>,
    value: &NewValue,
    replace: bool,
) -> Result<(), FhirPathPatchError> {
    let object = object_at(root, parent)?;
    let meta_key = format!("_{key}");
    match index {
        None => {
            object.insert(key.to_string(), value.json.clone());
            match &value.meta {
                Some(meta) => {
                    object.insert(meta_key, meta.clone());
                }
                None if replace => {
                    object.remove(&meta_key);
                }
                None => {}
            }
        }
        Some(i) => {
            let slot = object
                .get_mut(key)
                .and_then(|v| v.get_mut(i))
                .ok_or_else(|| NotApplicable("the element is no longer there.".to_string()))?;
            *slot = value.json.clone();
            let len = object
                .get(key)
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            set_meta_item(object, &meta_key, i, len, value.meta.clone());
        }
    }
    Ok(())
}

/// Keeps `_key[i]` in step with `key[i]`.
fn set_meta_item(
    object: &mut Map<String, Value>,
    meta_key: &str,
    i: usize,
    len: usize,
    meta: Option<Value>,
) {
    if meta.is_none() && !object.contains_key(meta_key) {
        return;
    }
    let metas = object
        .entry(meta_key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = metas {
        items.resize(len, Value::Null);
        if let Some(slot) = items.get_mut(i) {
            *slot = meta.unwrap_or(Value::Null);
        }
    }
    tidy_meta(object, meta_key);
}

/// Drops a `_key` array that holds nothing but nulls.
fn tidy_meta(object: &mut Map<String, Value>, meta_key: &str) {
    if let Some(Value::Array(items)) = object.get(meta_key)
        && items.iter().all(Value::is_null)
    {
        object.remove(meta_key);
    }
}

fn insert_at(
    root: &mut Value,
    parent: &[Step],
    key: &str,
    index: usize,
    value: &NewValue,
) -> Result<(), FhirPathPatchError> {
    let object = object_at(root, parent)?;
    let meta_key = format!("_{key}");
    let list = object
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = list else {
        return Err(NotApplicable(format!("'{key}' is not a list.")));
    };
    let index = index.min(items.len());
    items.insert(index, value.json.clone());
    let len = items.len();
    if value.meta.is_some() || object.contains_key(&meta_key) {
        let metas = object
            .entry(meta_key.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(m) = metas {
            m.resize(len - 1, Value::Null);
            m.insert(index, value.meta.clone().unwrap_or(Value::Null));
        }
        tidy_meta(object, &meta_key);
    }
    Ok(())
}

fn remove(root: &mut Value, parent: &[Step], key: &str, index: Option<usize>) {
    let Some(object) = walk_mut(root, parent).and_then(Value::as_object_mut) else {
        return;
    };
    let meta_key = format!("_{key}");
    match index {
        None => {
            object.remove(key);
            object.remove(&meta_key);
        }
        Some(i) => {
            for k in [key, meta_key.as_str()] {
                if let Some(Value::Array(items)) = object.get_mut(k)
                    && i < items.len()
                {
                    items.remove(i);
                }
                if object
                    .get(k)
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    object.remove(k);
                }
            }
            tidy_meta(object, &meta_key);
        }
    }
}

fn move_within(root: &mut Value, parent: &[Step], key: &str, source: usize, destination: usize) {
    let Some(object) = walk_mut(root, parent).and_then(Value::as_object_mut) else {
        return;
    };
    for k in [key.to_string(), format!("_{key}")] {
        if let Some(Value::Array(items)) = object.get_mut(&k)
            && source < items.len()
        {
            let item = items.remove(source);
            let at = destination.min(items.len());
            items.insert(at, item);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patch(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "active": true,
            "name": [{"family": "Ng", "given": ["Ann", "Bo"]}],
            "birthDate": "1970-01-01",
            "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
            "identifier": [{"value": "a"}, {"value": "b"}, {"value": "c"}]
        })
    }

    fn apply_one(parts: Value) -> Result<Value, FhirPathPatchError> {
        apply_fhirpath_patch(&patient(), &patch(vec![op(parts)]))
    }

    #[test]
    fn replace_a_primitive_drops_its_extensions() {
        let out = apply_one(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.birthDate"},
            {"name": "value", "valueDate": "1980-02-02"}
        ]))
        .unwrap();
        assert_eq!(out["birthDate"], "1980-02-02");
        assert!(out.get("_birthDate").is_none());
    }

    #[test]
    fn add_to_a_list_and_to_a_single_element() {
        let out = apply_one(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient.name[0]"},
            {"name": "name", "valueString": "given"},
            {"name": "value", "valueString": "Cy"}
        ]))
        .unwrap();
        assert_eq!(out["name"][0]["given"], json!(["Ann", "Bo", "Cy"]));
        let out = apply_one(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "gender"},
            {"name": "value", "valueCode": "female"}
        ]))
        .unwrap();
        assert_eq!(out["gender"], "female");
        let again = apply_one(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "active"},
            {"name": "value", "valueBoolean": false}
        ]));
        assert!(matches!(again, Err(NotApplicable(_))));
    }

    #[test]
    fn add_a_choice_and_a_backbone_by_parts() {
        let out = apply_one(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "deceased"},
            {"name": "value", "valueBoolean": true}
        ]))
        .unwrap();
        assert_eq!(out["deceasedBoolean"], true);
        let out = apply_one(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "contact"},
            {"name": "value", "part": [
                {"name": "name", "valueHumanName": {"family": "Ng"}},
                {"name": "gender", "valueCode": "male"}
            ]}
        ]))
        .unwrap();
        assert_eq!(
            out["contact"],
            json!([{"name": {"family": "Ng"}, "gender": "male"}])
        );
    }

    #[test]
    fn insert_delete_and_move_in_lists() {
        let out = apply_one(json!([
            {"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.identifier"},
            {"name": "index", "valueInteger": 1},
            {"name": "value", "valueIdentifier": {"value": "z"}}
        ]))
        .unwrap();
        let values: Vec<&str> = out["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].as_str().unwrap())
            .collect();
        assert_eq!(values, ["a", "z", "b", "c"]);
        let out = apply_one(json!([
            {"name": "type", "valueCode": "move"},
            {"name": "path", "valueString": "Patient.identifier"},
            {"name": "source", "valueInteger": 0},
            {"name": "destination", "valueInteger": 2}
        ]))
        .unwrap();
        assert_eq!(out["identifier"][2]["value"], "a");
        let out = apply_one(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.identifier.where(value = 'b')"}
        ]))
        .unwrap();
        assert_eq!(out["identifier"].as_array().unwrap().len(), 2);
        // Deleting what is not there changes nothing.
        let out = apply_one(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.telecom"}
        ]))
        .unwrap();
        assert_eq!(out, patient());
        // Insert into a list that does not exist yet.
        let out = apply_one(json!([
            {"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.telecom"},
            {"name": "index", "valueInteger": 0},
            {"name": "value", "valueContactPoint": {"system": "phone", "value": "1"}}
        ]))
        .unwrap();
        assert_eq!(out["telecom"][0]["system"], "phone");
    }

    #[test]
    fn refusals() {
        let several = apply_one(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.identifier"}
        ]));
        assert!(matches!(several, Err(NotApplicable(_))));
        let out_of_range = apply_one(json!([
            {"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.identifier"},
            {"name": "index", "valueInteger": 9},
            {"name": "value", "valueIdentifier": {"value": "z"}}
        ]));
        assert!(matches!(out_of_range, Err(NotApplicable(_))));
        let bad_type = apply_one(json!([
            {"name": "type", "valueCode": "frobnicate"},
            {"name": "path", "valueString": "Patient"}
        ]));
        assert!(matches!(bad_type, Err(Malformed(_))));
        let resolve = apply_one(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.managingOrganization.resolve().name"}
        ]));
        assert!(matches!(resolve, Err(Malformed(_))));
        let not_parameters = apply_fhirpath_patch(&patient(), &json!([]));
        assert!(matches!(not_parameters, Err(Malformed(_))));
        let syntax = apply_one(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.(("}
        ]));
        assert!(matches!(syntax, Err(Malformed(_))));
    }

    #[test]
    fn primitive_list_extensions_stay_aligned() {
        let mut p = patient();
        p["name"][0]["_given"] = json!([null, {"id": "g2"}]);
        let parameters = patch(vec![op(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.name[0].given[0]"}
        ]))]);
        let out = apply_fhirpath_patch(&p, &parameters).unwrap();
        assert_eq!(out["name"][0]["given"], json!(["Bo"]));
        assert_eq!(out["name"][0]["_given"], json!([{"id": "g2"}]));
    }
}
