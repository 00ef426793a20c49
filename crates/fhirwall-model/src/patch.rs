//! JSON Patch (RFC 6902) applied to a resource tree, all or nothing.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch must be a JSON array of operations")]
    NotAnArray,
    #[error("patch operation {index}: {reason}")]
    BadOperation { index: usize, reason: String },
    #[error("patch operation {index}: the test failed")]
    TestFailed { index: usize },
}

/// Applies `patch` to a copy of `target`; on any failure the target is untouched.
pub fn apply_json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or(PatchError::NotAnArray)?;
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let bad = |reason: &str| PatchError::BadOperation {
            index,
            reason: reason.to_string(),
        };
        let obj = op
            .as_object()
            .ok_or_else(|| bad("an operation must be an object"))?;
        let name = obj
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("'op' is missing"))?;
        let path = obj
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("'path' is missing"))?;
        let path = parse_pointer(path).ok_or_else(|| bad("'path' is not a JSON pointer"))?;
        let value = || {
            obj.get("value")
                .cloned()
                .ok_or_else(|| bad("'value' is missing"))
        };
        let from = || {
            obj.get("from")
                .and_then(Value::as_str)
                .and_then(parse_pointer)
                .ok_or_else(|| bad("'from' is missing or not a JSON pointer"))
        };
        match name {
            "add" => add(&mut doc, &path, value()?).map_err(&bad)?,
            "remove" => {
                remove(&mut doc, &path).map_err(&bad)?;
            }
            "replace" => {
                remove(&mut doc, &path).map_err(&bad)?;
                add(&mut doc, &path, value()?).map_err(&bad)?;
            }
            "move" => {
                let from = from()?;
                if path.len() > from.len() && path.starts_with(&from) {
                    return Err(bad("cannot move a value into itself"));
                }
                let moved = remove(&mut doc, &from).map_err(&bad)?;
                add(&mut doc, &path, moved).map_err(&bad)?;
            }
            "copy" => {
                let copied = get(&doc, &from()?)
                    .cloned()
                    .ok_or_else(|| bad("'from' names nothing"))?;
                add(&mut doc, &path, copied).map_err(&bad)?;
            }
            "test" => {
                let expected = value()?;
                if get(&doc, &path) != Some(&expected) {
                    return Err(PatchError::TestFailed { index });
                }
            }
            _ => return Err(bad("unknown 'op'")),
        }
    }
    Ok(doc)
}

fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|token| token.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = doc;
    for token in path {
        node = match node {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => items.get(array_index(token)?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    path: &[String],
) -> Result<(&'a mut Value, String), &'static str> {
    let (last, parents) = path
        .split_last()
        .ok_or("the whole document cannot be changed")?;
    let mut node = doc;
    for token in parents {
        node = match node {
            Value::Object(map) => map.get_mut(token).ok_or("the path names nothing")?,
            Value::Array(items) => {
                let index = array_index(token).ok_or("not an array index")?;
                items
                    .get_mut(index)
                    .ok_or("the array index is out of range")?
            }
            _ => return Err("the path goes through a primitive value"),
        };
    }
    Ok((node, last.clone()))
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), &'static str> {
    let (parent, last) = parent_mut(doc, path)?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
                return Ok(());
            }
            let index = array_index(&last).ok_or("not an array index")?;
            if index > items.len() {
                return Err("the array index is out of range");
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err("the path goes through a primitive value"),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, &'static str> {
    let (parent, last) = parent_mut(doc, path)?;
    match parent {
        Value::Object(map) => map.shift_remove(&last).ok_or("the path names nothing"),
        Value::Array(items) => {
            let index = array_index(&last).ok_or("not an array index")?;
            if index >= items.len() {
                return Err("the array index is out of range");
            }
            Ok(items.remove(index))
        }
        _ => Err("the path goes through a primitive value"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn operations() {
        let doc = json!({"a": 1, "b": [1, 2], "c": {"d": "x"}});
        let out = apply_json_patch(
            &doc,
            &json!([
                {"op": "replace", "path": "/a", "value": 2},
                {"op": "add", "path": "/b/-", "value": 3},
                {"op": "add", "path": "/b/0", "value": 0},
                {"op": "remove", "path": "/c/d"},
                {"op": "copy", "from": "/a", "path": "/e"},
                {"op": "move", "from": "/e", "path": "/f"},
                {"op": "test", "path": "/f", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": 2, "b": [0, 1, 2, 3], "c": {}, "f": 2}));
    }

    #[test]
    fn failures_leave_nothing() {
        let doc = json!({"a": 1});
        assert!(apply_json_patch(&doc, &json!({"op": "add"})).is_err());
        assert!(apply_json_patch(&doc, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(
            apply_json_patch(&doc, &json!([{"op": "test", "path": "/a", "value": 2}])).is_err()
        );
        assert!(apply_json_patch(&doc, &json!([{"op": "jump", "path": "/a"}])).is_err());
        assert!(apply_json_patch(&doc, &json!([{"op": "replace", "path": "/a"}])).is_err());
    }
}
