//! FHIR XML to FHIR JSON; it must not expand entities, accept a DTD, drop content it does not understand, or put element values into errors.

use fhirwall_definitions::{Definitions, JsonPrimitive, TypeInfo, TypeKind, json_primitive};
use roxmltree::{Document, Node, NodeType, ParsingOptions};
use serde_json::{Map, Number, Value};

use crate::path::{Path, truncated};
use crate::{
    FHIR_NS, Shape, XHTML_NS, XmlError, XmlLimits, find_child, is_xml_whitespace, shape, xhtml,
};

/// The namespace of `xsi:schemaLocation`, the one foreign attribute tolerated (on the root
/// element only) because many tools write it as a hint for schema-aware editors.
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

pub(crate) fn xml_to_json(
    xml: &[u8],
    defs: &Definitions,
    limits: &XmlLimits,
) -> Result<Value, XmlError> {
    if xml.len() > limits.max_bytes {
        return Err(XmlError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    // A UTF-16 byte order mark means the document is not UTF-8 at all.
    if xml.starts_with(&[0xFE, 0xFF]) || xml.starts_with(&[0xFF, 0xFE]) {
        return Err(XmlError::NotUtf8);
    }
    let text = std::str::from_utf8(xml).map_err(|_| XmlError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if is_xml_whitespace(text) {
        return Err(XmlError::Empty);
    }
    // roxmltree accepts a DTD without an internal subset even when DTDs are disabled, so any
    // DOCTYPE is refused here before parsing, whatever it contains.
    if text.contains("<!DOCTYPE") {
        return Err(XmlError::DtdNotAllowed);
    }
    check_declaration(text)?;
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: limits.max_nodes,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options).map_err(|e| parse_error(&e, limits))?;
    for node in doc.root().children() {
        if node.is_pi() {
            return Err(XmlError::ProcessingInstruction { path: None });
        }
    }
    let reader = Reader {
        defs,
        text,
        max_depth: limits.max_depth,
    };
    let root = doc.root_element();
    reader.resource(root, None, 1).map(Value::Object)
}

/// Refuses an XML declaration that names an encoding other than UTF-8.
fn check_declaration(text: &str) -> Result<(), XmlError> {
    let Some(rest) = text.strip_prefix("<?xml") else {
        return Ok(());
    };
    if !rest.starts_with([' ', '\t', '\r', '\n']) {
        // `<?xml-stylesheet ...?>` and the like are processing instructions, refused later.
        return Ok(());
    }
    let declaration = rest.split("?>").next().unwrap_or(rest);
    let Some(after) = declaration.split("encoding").nth(1) else {
        return Ok(());
    };
    let after = after.trim_start_matches([' ', '\t', '\r', '\n']);
    let Some(after) = after.strip_prefix('=') else {
        return Ok(());
    };
    let after = after.trim_start_matches([' ', '\t', '\r', '\n']);
    let mut chars = after.chars();
    let Some(quote @ ('"' | '\'')) = chars.next() else {
        return Ok(());
    };
    let value = chars.as_str().split(quote).next().unwrap_or_default();
    if value.eq_ignore_ascii_case("UTF-8") {
        Ok(())
    } else {
        Err(XmlError::UnsupportedEncoding)
    }
}

/// Maps a parser error to one that names a position but never the document's content.
fn parse_error(error: &roxmltree::Error, limits: &XmlLimits) -> XmlError {
    use roxmltree::Error as E;
    let reason = match error {
        E::DtdDetected => return XmlError::DtdNotAllowed,
        E::NodesLimitReached => {
            return XmlError::TooManyNodes {
                limit: limits.max_nodes,
            };
        }
        E::InvalidXmlPrefixUri(_)
        | E::UnexpectedXmlUri(_)
        | E::UnexpectedXmlnsUri(_)
        | E::InvalidElementNamePrefix(_)
        | E::DuplicatedNamespace(..) => "an invalid namespace declaration",
        E::UnknownNamespace(..) => "a namespace prefix that is not declared",
        E::UnexpectedCloseTag(..) => "a close tag that does not match its open tag",
        E::UnexpectedEntityCloseTag(_)
        | E::UnknownEntityReference(..)
        | E::EntityReferenceLoop(_)
        | E::EntityResolver(..) => "an entity reference that is not one of XML's predefined ones",
        E::MalformedEntityReference(_) => "a malformed entity or character reference",
        E::InvalidAttributeValue(_) => "an attribute value containing '<'",
        E::DuplicatedAttribute(..) => "a repeated attribute",
        E::NoRootNode => "no root element",
        E::UnclosedRootNode => "a root element that is never closed",
        E::UnexpectedDeclaration(_) => "an XML declaration that is not at the very start",
        E::AttributesLimitReached | E::NamespacesLimitReached => "too many attributes",
        E::InvalidName(_) => "an invalid name",
        E::NonXmlChar(..) => "a character XML does not allow",
        E::InvalidChar(..) | E::InvalidChar2(..) | E::InvalidString(..) => {
            "an unexpected character"
        }
        E::InvalidExternalID(_) => "an invalid external identifier",
        E::InvalidComment(_) => "a comment containing '--'",
        E::InvalidCharacterData(_) => "character data containing ']]>'",
        E::UnknownToken(_) => "unexpected content (for example text after the root element)",
        E::UnexpectedEndOfStream => "the document ends too early",
    };
    let position = error.pos();
    XmlError::Malformed {
        reason,
        line: position.row,
        column: position.col,
    }
}

/// Walks the document along the definitions.
struct Reader<'d, 'input> {
    defs: &'d Definitions,
    text: &'input str,
    max_depth: usize,
}

/// The consecutive occurrences of one child element, collected until the next child starts.
struct Run<'a> {
    position: usize,
    key: &'a str,
    array: bool,
    primitive: bool,
    values: Vec<Value>,
    /// The `_key` objects of primitives (id and extensions), `Null` where there is none.
    extras: Vec<Value>,
    has_value: bool,
    has_extra: bool,
}

impl Run<'_> {
    /// Moves the collected occurrences into `map` under the JSON key (and `_key`).
    fn flush(self, map: &mut Map<String, Value>) {
        if self.array {
            if !self.primitive || self.has_value {
                map.insert(self.key.to_owned(), Value::Array(self.values));
            }
            if self.has_extra {
                map.insert(format!("_{}", self.key), Value::Array(self.extras));
            }
            return;
        }
        if let Some(value) = self.values.into_iter().next()
            && !value.is_null()
        {
            map.insert(self.key.to_owned(), value);
        }
        if let Some(extra) = self.extras.into_iter().next()
            && !extra.is_null()
        {
            map.insert(format!("_{}", self.key), extra);
        }
    }
}

impl<'d, 'input> Reader<'d, 'input> {
    /// Converts a resource element (`<Patient>`). `path` is where it sits (`Bundle.entry[0]
    /// .resource`), `None` for the document's root; `depth` is its JSON object's depth.
    fn resource(
        &self,
        node: Node<'_, 'input>,
        path: Option<&Path<'_>>,
        depth: usize,
    ) -> Result<Map<String, Value>, XmlError> {
        let name = node.tag_name().name();
        let own = match path {
            Some(path) => *path,
            None => Path::root(name),
        };
        if node.tag_name().namespace() != Some(FHIR_NS) {
            return Err(XmlError::WrongNamespace { path: own.render() });
        }
        let info = crate::concrete_resource_type(self.defs, name, path)?;
        if depth > self.max_depth {
            return Err(XmlError::TooDeep {
                path: own.render(),
                limit: self.max_depth,
            });
        }
        let mut map = Map::new();
        map.insert("resourceType".to_owned(), Value::String(name.to_owned()));
        self.content(node, info, &own, depth, path.is_none(), &mut map)?;
        Ok(map)
    }

    /// Reads an element's attributes and child elements into `map` (the JSON object at
    /// `depth`), and returns its `value` attribute when `info` is a primitive type.
    fn content<'n>(
        &self,
        node: Node<'n, 'input>,
        info: &'d TypeInfo,
        path: &Path<'_>,
        depth: usize,
        document_root: bool,
        map: &mut Map<String, Value>,
    ) -> Result<Option<&'n str>, XmlError> {
        let mut value = None;
        for attribute in node.attributes() {
            let name = attribute.name();
            if let Some(namespace) = attribute.namespace() {
                if document_root && namespace == XSI_NS && name == "schemaLocation" {
                    continue;
                }
                return Err(XmlError::UnknownAttribute {
                    path: path.render(),
                    name: truncated(name).to_owned(),
                });
            }
            if name == "value" {
                if info.kind == TypeKind::Primitive {
                    value = Some(attribute.value());
                    continue;
                }
                return Err(XmlError::ValueOnNonPrimitive {
                    path: path.render(),
                });
            }
            let is_attribute = info
                .child(name)
                .and_then(|child| info.child_element(child))
                .is_some_and(|element| element.xml_attribute);
            if !is_attribute {
                return Err(XmlError::UnknownAttribute {
                    path: path.render(),
                    name: truncated(name).to_owned(),
                });
            }
            map.insert(name.to_owned(), Value::String(attribute.value().to_owned()));
        }

        let mut run: Option<Run<'n>> = None;
        for child in node.children() {
            match child.node_type() {
                NodeType::Element => {}
                NodeType::Comment | NodeType::Root => continue,
                NodeType::Text => {
                    if child.text().is_some_and(|text| !is_xml_whitespace(text)) {
                        return Err(XmlError::UnexpectedText {
                            path: path.render(),
                        });
                    }
                    continue;
                }
                NodeType::PI => {
                    return Err(XmlError::ProcessingInstruction {
                        path: Some(path.render()),
                    });
                }
            }
            let tag = child.tag_name();
            let local = tag.name();
            let hint = run.as_ref().map_or(0, |current| current.position);
            let Some((position, def, ty)) = find_child(info, local, hint) else {
                return Err(XmlError::UnknownElement {
                    path: path.child(local, None).render(),
                });
            };
            let element = info.child_element(def);
            if element.is_some_and(|e| e.xml_attribute) {
                return Err(XmlError::AttributeAsElement {
                    path: path.child(local, None).render(),
                });
            }
            let xhtml = element.is_some_and(|e| e.xhtml);
            let expected = if xhtml { XHTML_NS } else { FHIR_NS };
            if tag.namespace() != Some(expected) {
                return Err(XmlError::WrongNamespace {
                    path: path.child(local, None).render(),
                });
            }
            let Some(shape) = shape(self.defs, xhtml, ty) else {
                return Err(XmlError::MissingDefinition {
                    path: path.child(local, None).render(),
                    type_name: ty.to_owned(),
                });
            };
            let array = def.is_array();
            let continues = match &run {
                Some(current) if current.position == position => {
                    if !array {
                        return Err(XmlError::Repeated {
                            path: path.child(local, None).render(),
                        });
                    }
                    true
                }
                Some(current) if current.position > position => {
                    return Err(XmlError::OutOfOrder {
                        path: path.child(local, None).render(),
                        before: current.key.to_owned(),
                    });
                }
                _ => false,
            };
            if !continues && let Some(done) = run.take() {
                done.flush(map);
            }
            let current = run.get_or_insert_with(|| Run {
                position,
                key: local,
                array,
                primitive: matches!(shape, Shape::Primitive(_)),
                values: Vec::new(),
                extras: Vec::new(),
                has_value: false,
                has_extra: false,
            });
            let index = array.then_some(current.values.len());
            let child_path = path.child(local, index);
            // Arrays add a level of nesting in JSON, as the JSON depth limit counts them.
            let child_depth = depth + 1 + usize::from(array);
            match shape {
                Shape::Xhtml => {
                    let div = xhtml::div_source(child, self.text, &child_path)?;
                    current.values.push(Value::String(div));
                    current.extras.push(Value::Null);
                    current.has_value = true;
                }
                Shape::Resource => {
                    let resource = self.wrapped_resource(child, &child_path, child_depth)?;
                    current.values.push(Value::Object(resource));
                }
                Shape::Primitive(primitive_info) => {
                    let mut extra = Map::new();
                    let value = self.content(
                        child,
                        primitive_info,
                        &child_path,
                        child_depth,
                        false,
                        &mut extra,
                    )?;
                    let value = match value {
                        Some(text) => Some(primitive_value(text, ty, &child_path)?),
                        None => None,
                    };
                    if !extra.is_empty() && child_depth > self.max_depth {
                        return Err(XmlError::TooDeep {
                            path: child_path.render(),
                            limit: self.max_depth,
                        });
                    }
                    if value.is_none() && extra.is_empty() {
                        return Err(XmlError::MissingValue {
                            path: child_path.render(),
                        });
                    }
                    current.has_value |= value.is_some();
                    current.values.push(value.unwrap_or(Value::Null));
                    if extra.is_empty() {
                        current.extras.push(Value::Null);
                    } else {
                        current.has_extra = true;
                        current.extras.push(Value::Object(extra));
                    }
                }
                Shape::Complex(complex_info) => {
                    if child_depth > self.max_depth {
                        return Err(XmlError::TooDeep {
                            path: child_path.render(),
                            limit: self.max_depth,
                        });
                    }
                    let mut object = Map::new();
                    self.content(
                        child,
                        complex_info,
                        &child_path,
                        child_depth,
                        false,
                        &mut object,
                    )?;
                    current.values.push(Value::Object(object));
                }
            }
        }
        if let Some(done) = run {
            done.flush(map);
        }
        Ok(value)
    }

    /// Converts `<contained><Patient>..</Patient></contained>` and the like: an element of
    /// type Resource holds exactly one resource element.
    fn wrapped_resource(
        &self,
        node: Node<'_, 'input>,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<Map<String, Value>, XmlError> {
        if let Some(attribute) = node.attributes().next() {
            return Err(XmlError::UnknownAttribute {
                path: path.render(),
                name: truncated(attribute.name()).to_owned(),
            });
        }
        let mut inner = None;
        for child in node.children() {
            match child.node_type() {
                NodeType::Element => {
                    if inner.is_some() {
                        return Err(XmlError::Repeated {
                            path: path.render(),
                        });
                    }
                    inner = Some(child);
                }
                NodeType::Comment | NodeType::Root => {}
                NodeType::Text => {
                    if child.text().is_some_and(|text| !is_xml_whitespace(text)) {
                        return Err(XmlError::UnexpectedText {
                            path: path.render(),
                        });
                    }
                }
                NodeType::PI => {
                    return Err(XmlError::ProcessingInstruction {
                        path: Some(path.render()),
                    });
                }
            }
        }
        let Some(inner) = inner else {
            return Err(XmlError::MissingValue {
                path: path.render(),
            });
        };
        self.resource(inner, Some(path), depth)
    }
}

/// The JSON value of a primitive's `value` attribute: booleans and numbers must be
/// representable as JSON booleans and numbers (numbers keep their exact text).
fn primitive_value(text: &str, ty: &str, path: &Path<'_>) -> Result<Value, XmlError> {
    match json_primitive(ty) {
        JsonPrimitive::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(XmlError::InvalidValue {
                path: path.render(),
                reason: "a boolean value must be 'true' or 'false'",
            }),
        },
        JsonPrimitive::Number => {
            // serde_json skips surrounding whitespace, which would change the exact text.
            let padded = text.bytes().next().is_none_or(|b| b.is_ascii_whitespace())
                || text.bytes().last().is_none_or(|b| b.is_ascii_whitespace());
            let number = if padded {
                None
            } else {
                serde_json::from_str::<Number>(text).ok()
            };
            number
                .map(Value::Number)
                .ok_or_else(|| XmlError::InvalidValue {
                    path: path.render(),
                    reason: "the value is not a number JSON can represent",
                })
        }
        JsonPrimitive::String => Ok(Value::String(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn declarations_name_utf8_or_nothing() {
        assert!(check_declaration("<?xml version=\"1.0\"?><a/>").is_ok());
        assert!(check_declaration("<?xml version=\"1.0\" encoding=\"utf-8\"?><a/>").is_ok());
        assert!(check_declaration("<?xml version='1.0' encoding = 'UTF-8' ?><a/>").is_ok());
        assert_eq!(
            check_declaration("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>"),
            Err(XmlError::UnsupportedEncoding)
        );
        assert!(check_declaration("<a/>").is_ok());
    }

    #[test]
    fn numbers_keep_their_text() {
        let path = Path::root("X");
        for text in ["1.50", "1e-3", "-0", "12345678901234567890.000", "1e+2"] {
            let value = primitive_value(text, "decimal", &path).unwrap();
            assert_eq!(value.as_number().unwrap().as_str(), text);
        }
        // serde_json writes every exponent marker in lower case, for JSON input too.
        let value = primitive_value("1E+2", "decimal", &path).unwrap();
        assert_eq!(value.as_number().unwrap().as_str(), "1e+2");
        for text in ["", " 1", "1 ", "01", "+1", "1.", ".5", "NaN", "1x", "0x10"] {
            assert!(primitive_value(text, "decimal", &path).is_err(), "{text:?}");
        }
        assert_eq!(
            primitive_value("true", "boolean", &path).unwrap(),
            Value::Bool(true)
        );
        assert!(primitive_value("True", "boolean", &path).is_err());
        assert!(primitive_value("1", "boolean", &path).is_err());
    }
}
