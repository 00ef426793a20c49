//! FHIR JSON to FHIR XML; it must not drop properties it cannot write, reorder repetitions, or put element values into errors.

use std::borrow::Cow;

use fhirwall_definitions::{ChildDef, Definitions, JsonPrimitive, TypeInfo, json_primitive};
use serde_json::{Map, Value};

use crate::path::Path;
use crate::{Shape, XmlError, find_child, shape, xhtml};

/// The deepest element nesting written. The JSON parser's depth limit keeps real resources
/// far below this; it only stops a hand-built value from exhausting the stack.
const MAX_LEVEL: usize = 256;

pub(crate) fn json_to_xml(
    resource: &Value,
    defs: &Definitions,
    pretty: bool,
) -> Result<String, XmlError> {
    let object = resource
        .as_object()
        .ok_or(XmlError::NotAResource { path: None })?;
    let mut writer = Writer {
        defs,
        pretty,
        out: String::with_capacity(4096),
    };
    writer.resource(object, None, 0)?;
    Ok(writer.out)
}

/// One child element of an object: the JSON key and its `_key` companion, matched to the
/// definitions.
struct Entry<'v, 'd> {
    position: usize,
    child: &'d ChildDef,
    ty: &'d str,
    /// The element name (`valueQuantity` for a choice).
    name: &'v str,
    value: Option<&'v Value>,
    extra: Option<&'v Value>,
    attribute: bool,
    shape: Shape<'d>,
}

struct Writer<'d> {
    defs: &'d Definitions,
    pretty: bool,
    out: String,
}

impl<'d> Writer<'d> {
    /// Writes a resource; `path` is where it sits, `None` for the root.
    fn resource(
        &mut self,
        object: &Map<String, Value>,
        path: Option<&Path<'_>>,
        level: usize,
    ) -> Result<(), XmlError> {
        let Some(Value::String(name)) = object.get("resourceType") else {
            return Err(XmlError::NotAResource {
                path: path.map(Path::render),
            });
        };
        let info = crate::concrete_resource_type(self.defs, name, path)?;
        let own = match path {
            Some(path) => *path,
            None => Path::root(name),
        };
        self.element(name, Some(object), info, None, &own, level, true)
    }

    /// Writes `<name ...>` with the object's children in definition order: attributes for the
    /// elements FHIR XML writes as attributes, `value` for primitives, child elements for the
    /// rest.
    #[expect(
        clippy::too_many_arguments,
        reason = "one writer for resources, complex elements and primitives keeps the attribute rules in one place"
    )]
    fn element(
        &mut self,
        name: &str,
        object: Option<&Map<String, Value>>,
        info: &'d TypeInfo,
        value: Option<&str>,
        path: &Path<'_>,
        level: usize,
        resource: bool,
    ) -> Result<(), XmlError> {
        if level > MAX_LEVEL {
            return Err(XmlError::TooDeep {
                path: path.render(),
                limit: MAX_LEVEL,
            });
        }
        let mut entries: Vec<Entry<'_, 'd>> = Vec::new();
        if let Some(object) = object {
            for (key, item) in object {
                if resource && key == "resourceType" {
                    continue;
                }
                let (base, is_extra) = match key.strip_prefix('_') {
                    Some(base) => (base, true),
                    None => (key.as_str(), false),
                };
                let unknown = || XmlError::UnknownProperty {
                    path: path.child(key, None).render(),
                };
                let hint = entries.last().map_or(0, |entry| entry.position);
                let Some((position, child, ty)) = find_child(info, base, hint) else {
                    return Err(unknown());
                };
                let entry = match entries.iter_mut().find(|e| e.position == position) {
                    Some(entry) => {
                        if entry.name != base {
                            return Err(XmlError::Repeated {
                                path: path.child(key, None).render(),
                            });
                        }
                        entry
                    }
                    None => {
                        let element = info.child_element(child);
                        let xhtml = element.is_some_and(|e| e.xhtml);
                        let Some(shape) = shape(self.defs, xhtml, ty) else {
                            return Err(XmlError::MissingDefinition {
                                path: path.child(key, None).render(),
                                type_name: ty.to_owned(),
                            });
                        };
                        entries.push(Entry {
                            position,
                            child,
                            ty,
                            name: base,
                            value: None,
                            extra: None,
                            attribute: element.is_some_and(|e| e.xml_attribute),
                            shape,
                        });
                        let Some(entry) = entries.last_mut() else {
                            return Err(unknown());
                        };
                        entry
                    }
                };
                if is_extra {
                    // Only primitives have `_key` companions (the div is refused later with
                    // a clearer message).
                    if matches!(entry.shape, Shape::Resource | Shape::Complex(_)) {
                        return Err(unknown());
                    }
                    entry.extra = Some(item);
                } else {
                    entry.value = Some(item);
                }
            }
        }
        entries.sort_by_key(|entry| entry.position);

        self.line(level);
        self.out.push('<');
        self.out.push_str(name);
        if resource {
            self.out.push_str(" xmlns=\"http://hl7.org/fhir\"");
        }
        for entry in entries.iter().filter(|entry| entry.attribute) {
            let attribute_path = path.child(entry.name, None);
            if entry.extra.is_some() {
                return Err(XmlError::InvalidJson {
                    path: attribute_path.render(),
                    reason: "FHIR XML writes this element as an attribute, which cannot carry an id or extensions",
                });
            }
            let Some(Value::String(text)) = entry.value else {
                return Err(XmlError::InvalidJson {
                    path: attribute_path.render(),
                    reason: "the value must be a JSON string",
                });
            };
            self.attribute(entry.name, text, &attribute_path)?;
        }
        if let Some(value) = value {
            self.attribute("value", value, path)?;
        }
        if entries.iter().all(|entry| entry.attribute) {
            self.out.push_str("/>");
            return Ok(());
        }
        self.out.push('>');
        for entry in entries.iter().filter(|entry| !entry.attribute) {
            self.child(entry, path, level + 1)?;
        }
        self.line(level);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        Ok(())
    }

    /// Writes every occurrence of one child: an array's items (with their `_key` companions
    /// matched by position) or the single value.
    fn child(
        &mut self,
        entry: &Entry<'_, 'd>,
        parent: &Path<'_>,
        level: usize,
    ) -> Result<(), XmlError> {
        let invalid = |reason| XmlError::InvalidJson {
            path: parent.child(entry.name, None).render(),
            reason,
        };
        if !entry.child.is_array() {
            if matches!(entry.value, Some(Value::Array(_)))
                || matches!(entry.extra, Some(Value::Array(_)))
            {
                return Err(invalid(
                    "the element does not repeat, so it must not be a JSON array",
                ));
            }
            let path = parent.child(entry.name, None);
            return self.occurrence(entry, entry.value, entry.extra, &path, level);
        }
        let values = match entry.value {
            None => None,
            Some(Value::Array(items)) => Some(items),
            Some(_) => return Err(invalid("the element repeats, so it must be a JSON array")),
        };
        let extras = match entry.extra {
            None => None,
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                return Err(invalid(
                    "the element repeats, so its '_' companion must be a JSON array",
                ));
            }
        };
        let count = match (values, extras) {
            (Some(values), Some(extras)) if values.len() != extras.len() => {
                return Err(invalid(
                    "the element's values and its '_' companion must be arrays of the same length",
                ));
            }
            (Some(items), _) | (None, Some(items)) => items.len(),
            (None, None) => 0,
        };
        if count == 0 {
            return Err(invalid("an array must not be empty"));
        }
        for index in 0..count {
            let value = values.and_then(|items| items.get(index));
            let extra = extras.and_then(|items| items.get(index));
            let path = parent.child(entry.name, Some(index));
            self.occurrence(entry, value, extra, &path, level)?;
        }
        Ok(())
    }

    /// Writes one occurrence of a child element.
    fn occurrence(
        &mut self,
        entry: &Entry<'_, 'd>,
        value: Option<&Value>,
        extra: Option<&Value>,
        path: &Path<'_>,
        level: usize,
    ) -> Result<(), XmlError> {
        let value = value.filter(|v| !v.is_null());
        // An empty `_key` object adds nothing, and without a value it would become an empty
        // primitive element, which FHIR XML cannot have.
        let extra = extra.filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()));
        let invalid = |reason| XmlError::InvalidJson {
            path: path.render(),
            reason,
        };
        if value.is_none() && extra.is_none() {
            return Err(invalid("the element has neither a value nor extensions"));
        }
        match entry.shape {
            Shape::Xhtml => {
                if extra.is_some() {
                    return Err(invalid(
                        "the narrative div cannot carry an id or extensions",
                    ));
                }
                let Some(Value::String(div)) = value else {
                    return Err(invalid("the narrative div must be a JSON string"));
                };
                xhtml::check_div(div, path)?;
                self.line(level);
                self.out.push_str(div);
                Ok(())
            }
            Shape::Resource => {
                let Some(Value::Object(resource)) = value else {
                    return Err(XmlError::NotAResource {
                        path: Some(path.render()),
                    });
                };
                self.line(level);
                self.out.push('<');
                self.out.push_str(entry.name);
                self.out.push('>');
                self.resource(resource, Some(path), level + 1)?;
                self.line(level);
                self.out.push_str("</");
                self.out.push_str(entry.name);
                self.out.push('>');
                Ok(())
            }
            Shape::Primitive(info) => {
                let text = match value {
                    Some(value) => Some(primitive_text(value, entry.ty, path)?),
                    None => None,
                };
                let extra = match extra {
                    None => None,
                    Some(Value::Object(extra)) => Some(extra),
                    Some(_) => return Err(invalid("the '_' companion must be a JSON object")),
                };
                self.element(entry.name, extra, info, text.as_deref(), path, level, false)
            }
            Shape::Complex(info) => {
                let Some(Value::Object(object)) = value else {
                    return Err(invalid("the element must be a JSON object"));
                };
                self.element(entry.name, Some(object), info, None, path, level, false)
            }
        }
    }

    fn attribute(&mut self, name: &str, value: &str, path: &Path<'_>) -> Result<(), XmlError> {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape_attribute(&mut self.out, value).map_err(|()| XmlError::InvalidValue {
            path: path.render(),
            reason: "the value contains a control character that XML cannot represent",
        })?;
        self.out.push('"');
        Ok(())
    }

    /// Starts a new line indented for `level` when pretty-printing.
    fn line(&mut self, level: usize) {
        if self.pretty && !self.out.is_empty() {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str("  ");
            }
        }
    }
}

/// The text of a primitive's `value` attribute; the JSON type must match the FHIR type.
fn primitive_text<'v>(
    value: &'v Value,
    ty: &str,
    path: &Path<'_>,
) -> Result<Cow<'v, str>, XmlError> {
    let text = match (json_primitive(ty), value) {
        (JsonPrimitive::Boolean, Value::Bool(true)) => Some(Cow::Borrowed("true")),
        (JsonPrimitive::Boolean, Value::Bool(false)) => Some(Cow::Borrowed("false")),
        (JsonPrimitive::Number, Value::Number(number)) => Some(Cow::Borrowed(number.as_str())),
        (JsonPrimitive::String, Value::String(text)) => Some(Cow::Borrowed(text.as_str())),
        _ => None,
    };
    text.ok_or_else(|| XmlError::InvalidJson {
        path: path.render(),
        reason: match json_primitive(ty) {
            JsonPrimitive::Boolean => "the value must be a JSON boolean",
            JsonPrimitive::Number => "the value must be a JSON number",
            JsonPrimitive::String => "the value must be a JSON string",
        },
    })
}

/// Appends `text` escaped for a double-quoted attribute. Tabs, line feeds and carriage
/// returns become character references, which attribute-value normalisation leaves alone, so
/// they survive a round trip; other control characters cannot be written in XML 1.0 at all.
pub(crate) fn escape_attribute(out: &mut String, text: &str) -> Result<(), ()> {
    let mut rest = text;
    while let Some(at) =
        rest.find(|c: char| matches!(c, '&' | '<' | '>' | '"' | '\u{FFFE}' | '\u{FFFF}') || c < ' ')
    {
        let (clean, tail) = rest.split_at(at);
        out.push_str(clean);
        let mut chars = tail.chars();
        let replacement = match chars.next() {
            Some('&') => "&amp;",
            Some('<') => "&lt;",
            Some('>') => "&gt;",
            Some('"') => "&quot;",
            Some('\t') => "&#x9;",
            Some('\n') => "&#xA;",
            Some('\r') => "&#xD;",
            _ => return Err(()),
        };
        out.push_str(replacement);
        rest = chars.as_str();
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn attributes_are_escaped() {
        let mut out = String::new();
        escape_attribute(&mut out, "a&b<c>d\"e'f\tg\nh\ri é").unwrap();
        assert_eq!(out, "a&amp;b&lt;c&gt;d&quot;e'f&#x9;g&#xA;h&#xD;i é");
        assert!(escape_attribute(&mut String::new(), "a\u{1}b").is_err());
        assert!(escape_attribute(&mut String::new(), "a\u{FFFF}").is_err());
        assert!(escape_attribute(&mut String::new(), "\u{0}").is_err());
    }
}
