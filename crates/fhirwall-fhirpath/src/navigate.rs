//! Model-driven navigation of the JSON tree: element lookup (choice elements, primitives split
//! across `name`/`_name`, resources typed by `resourceType`), children() and descendants().
//! It must only borrow from the tree and must not recurse on its depth.

use serde_json::{Map, Value};

use crate::Model;
use crate::value::{Item, Node, normalize_type, primitive_kind};

/// Whether values of `type_name` are FHIR primitives (with a possible `_name` sibling).
fn is_primitive(model: &dyn Model, type_name: &str) -> bool {
    primitive_kind(type_name).is_some() || model.is_primitive(type_name)
}

/// Whether `suffix` is `type_name` with its first letter upper-cased (`Quantity` for
/// `Quantity`, `DateTime` for `dateTime`), the way choice elements name their JSON property.
fn is_choice_suffix(type_name: &str, suffix: &str) -> bool {
    let mut t = type_name.chars();
    let mut s = suffix.chars();
    match (t.next(), s.next()) {
        (Some(a), Some(b)) if a.to_ascii_uppercase() == b => t.eq(s),
        _ => false,
    }
}

/// The type of a node: its `resourceType` when the element holds a resource (`Resource`,
/// `DomainResource`, or an untyped element), else the declared type.
fn effective_type<'a>(
    model: &dyn Model,
    value: Option<&'a Value>,
    declared: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(rt) = value
        .and_then(|v| v.get("resourceType"))
        .and_then(Value::as_str)
        && declared.is_none_or(|d| model.is_resource_type(d))
    {
        return Some(rt);
    }
    declared
}

/// Pushes the nodes of one element: JSON arrays flatten, and their `_name` array is paired by
/// position (either side may hold nulls).
fn push_values<'a>(
    model: &dyn Model,
    value: Option<&'a Value>,
    meta: Option<&'a Value>,
    declared: Option<&'a str>,
    out: &mut Vec<Item<'a>>,
) {
    let values = value.and_then(Value::as_array);
    let metas = meta.and_then(Value::as_array);
    if values.is_some() || metas.is_some() {
        let len = values.map_or(0, Vec::len).max(metas.map_or(0, Vec::len));
        for i in 0..len {
            let v = values.and_then(|vs| vs.get(i));
            let m = metas.and_then(|ms| ms.get(i));
            push_one(model, v, m, declared, out);
        }
    } else {
        push_one(model, value, meta, declared, out);
    }
}

fn push_one<'a>(
    model: &dyn Model,
    value: Option<&'a Value>,
    meta: Option<&'a Value>,
    declared: Option<&'a str>,
    out: &mut Vec<Item<'a>>,
) {
    let node = Node::new(value, meta, effective_type(model, value, declared));
    if node.json().is_some() || node.meta().is_some() {
        out.push(Item::Node(node));
    }
}

fn meta_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len() + 1);
    key.push('_');
    key.push_str(name);
    key
}

/// Pushes the items of element `name` of `item`.
pub(crate) fn child_items<'a>(
    model: &'a dyn Model,
    item: &Item<'a>,
    name: &str,
    out: &mut Vec<Item<'a>>,
) {
    match item {
        Item::Node(node) => node_child(model, node, name, out),
        Item::Stub(stub) if name == "id" => out.push(Item::string(stub.id)),
        Item::Stub(stub) if name == "resourceType" => out.push(Item::string(stub.type_name)),
        _ => {}
    }
}

fn node_child<'a>(model: &'a dyn Model, node: &Node<'a>, name: &str, out: &mut Vec<Item<'a>>) {
    let Some(Value::Object(obj)) = node.json() else {
        // A primitive: only its id and extensions are navigable, and they live in `_name`.
        if let Some(meta) = node.meta().and_then(Value::as_object) {
            match name {
                "extension" => {
                    push_values(model, meta.get("extension"), None, Some("Extension"), out)
                }
                "id" => push_values(model, meta.get("id"), None, Some("string"), out),
                _ => {}
            }
        }
        return;
    };
    let Some(type_name) = node.type_name() else {
        // An untyped object: plain JSON lookup, typing resources by their resourceType.
        push_values(model, obj.get(name), obj.get(&meta_key(name)), None, out);
        return;
    };
    let Some(child) = model.child(type_name, name) else {
        return;
    };
    if !child.is_choice {
        let declared = child.types.first().map(|t| normalize_type(t));
        let meta = match declared {
            Some(t) if is_primitive(model, t) => obj.get(&meta_key(name)),
            _ => None,
        };
        push_values(model, obj.get(name), meta, declared, out);
        return;
    }
    for (key, value) in obj {
        let (is_meta, base) = match key.strip_prefix('_') {
            Some(base) => (true, base),
            None => (false, key.as_str()),
        };
        let Some(suffix) = base.strip_prefix(name) else {
            continue;
        };
        let Some(t) = child.types.iter().find(|t| is_choice_suffix(t, suffix)) else {
            continue;
        };
        let t = normalize_type(t);
        if is_meta {
            // Extensions-only primitive: handled with its value when there is one.
            if !obj.contains_key(base) {
                push_values(model, None, Some(value), Some(t), out);
            }
        } else {
            let meta = if is_primitive(model, t) {
                obj.get(&meta_key(key))
            } else {
                None
            };
            push_values(model, Some(value), meta, Some(t), out);
        }
    }
}

/// The declared type of the JSON property `key` of an object of type `parent`, handling
/// choice elements (`valueQuantity` → `Quantity`).
fn property_type<'a>(model: &'a dyn Model, parent: &str, key: &str) -> Option<&'a str> {
    if let Some(child) = model.child(parent, key) {
        return if child.is_choice {
            None
        } else {
            child.types.first().map(|t| normalize_type(t))
        };
    }
    for (at, c) in key.char_indices().skip(1) {
        if !c.is_ascii_uppercase() {
            continue;
        }
        let (name, suffix) = key.split_at(at);
        if let Some(child) = model.child(parent, name)
            && child.is_choice
            && let Some(t) = child.types.iter().find(|t| is_choice_suffix(t, suffix))
        {
            return Some(normalize_type(t));
        }
    }
    None
}

/// Pushes every child item of `item` (children()), in document order. Properties the model does
/// not know are included untyped.
pub(crate) fn children<'a>(model: &'a dyn Model, item: &Item<'a>, out: &mut Vec<Item<'a>>) {
    let Item::Node(node) = item else {
        return;
    };
    match node.json() {
        Some(Value::Object(obj)) => object_children(model, obj, node.type_name(), out),
        Some(Value::Array(values)) => {
            // Only reachable for untyped arrays of arrays, which FHIR does not have.
            for v in values {
                push_one(model, Some(v), None, None, out);
            }
        }
        _ => {
            if let Some(meta) = node.meta().and_then(Value::as_object) {
                push_values(model, meta.get("id"), None, Some("string"), out);
                push_values(model, meta.get("extension"), None, Some("Extension"), out);
            }
        }
    }
}

fn object_children<'a>(
    model: &'a dyn Model,
    obj: &'a Map<String, Value>,
    type_name: Option<&'a str>,
    out: &mut Vec<Item<'a>>,
) {
    for (key, value) in obj {
        if key == "resourceType" {
            continue;
        }
        if let Some(base) = key.strip_prefix('_') {
            if obj.contains_key(base) {
                continue;
            }
            let declared = type_name.and_then(|t| property_type(model, t, base));
            push_values(model, None, Some(value), declared, out);
            continue;
        }
        let declared = type_name.and_then(|t| property_type(model, t, key));
        let meta = match declared {
            Some(t) if !is_primitive(model, t) => None,
            _ => obj.get(&meta_key(key)),
        };
        push_values(model, Some(value), meta, declared, out);
    }
}
