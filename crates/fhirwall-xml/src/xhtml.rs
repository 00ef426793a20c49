//! The narrative's XHTML div: its exact source text for JSON, and the checks before a JSON div string is embedded in XML; it must not rewrite the markup beyond adding namespace declarations the div inherited, or accept a DTD.

use roxmltree::{Document, Node, NodeType, ParsingOptions};

use crate::path::Path;
use crate::write::escape_attribute;
use crate::{XHTML_NS, XmlError};

/// The namespace bound to the `xml` prefix, which never needs a declaration.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// The most nodes a JSON div string may have; it is already in memory, so this only keeps a
/// pathological narrative from costing more than any document the XML reader would accept.
const DIV_NODES_LIMIT: u32 = 1_000_000;

/// The div's text exactly as the document wrote it, so that JSON -> XML -> JSON keeps the
/// string byte for byte. Namespaces the div uses but inherits from an ancestor are declared
/// on its start tag, because the JSON string must stand alone.
pub(crate) fn div_source(
    node: Node<'_, '_>,
    text: &str,
    path: &Path<'_>,
) -> Result<String, XmlError> {
    let source = text.get(node.range()).ok_or_else(|| XmlError::Xhtml {
        path: path.render(),
        reason: "its source text could not be located".to_owned(),
    })?;
    let mut used: Vec<&str> = Vec::new();
    for descendant in node.descendants() {
        match descendant.node_type() {
            NodeType::PI => {
                return Err(XmlError::ProcessingInstruction {
                    path: Some(path.render()),
                });
            }
            NodeType::Element => {
                let namespaces = descendant
                    .tag_name()
                    .namespace()
                    .into_iter()
                    .chain(descendant.attributes().filter_map(|a| a.namespace()));
                for namespace in namespaces {
                    if namespace != XML_NS && !used.contains(&namespace) {
                        used.push(namespace);
                    }
                }
            }
            NodeType::Root | NodeType::Text | NodeType::Comment => {}
        }
    }
    let (name_end, declared) = start_tag_declarations(source);
    let mut missing = String::new();
    for namespace in node.namespaces() {
        let uri = namespace.uri();
        if uri == XML_NS || declared.contains(&namespace.name()) || !used.contains(&uri) {
            continue;
        }
        missing.push_str(" xmlns");
        if let Some(prefix) = namespace.name() {
            missing.push(':');
            missing.push_str(prefix);
        }
        missing.push_str("=\"");
        // A namespace URI parsed from the document holds only characters XML allows.
        let _ = escape_attribute(&mut missing, uri);
        missing.push('"');
    }
    if missing.is_empty() {
        return Ok(source.to_owned());
    }
    let Some((head, tail)) = source.split_at_checked(name_end) else {
        return Err(XmlError::Xhtml {
            path: path.render(),
            reason: "its start tag could not be read".to_owned(),
        });
    };
    Ok(format!("{head}{missing}{tail}"))
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Reads the start tag at the beginning of `source` (already known to be well-formed): where
/// its element name ends, and the prefixes it declares (`None` for a default namespace).
fn start_tag_declarations(source: &str) -> (usize, Vec<Option<&str>>) {
    let bytes = source.as_bytes();
    let mut at = 1;
    while let Some(&byte) = bytes.get(at) {
        if is_space(byte) || byte == b'>' || byte == b'/' {
            break;
        }
        at += 1;
    }
    let name_end = at;
    let mut declared = Vec::new();
    loop {
        while bytes.get(at).copied().is_some_and(is_space) {
            at += 1;
        }
        match bytes.get(at) {
            None | Some(b'>' | b'/') => break,
            Some(_) => {}
        }
        let start = at;
        while let Some(&byte) = bytes.get(at) {
            if is_space(byte) || byte == b'=' {
                break;
            }
            at += 1;
        }
        let name = source.get(start..at).unwrap_or_default();
        while bytes.get(at).copied().is_some_and(is_space) {
            at += 1;
        }
        if bytes.get(at) != Some(&b'=') {
            break;
        }
        at += 1;
        while bytes.get(at).copied().is_some_and(is_space) {
            at += 1;
        }
        let quote = match bytes.get(at) {
            Some(&quote @ (b'"' | b'\'')) => quote,
            _ => break,
        };
        at += 1;
        while let Some(&byte) = bytes.get(at) {
            at += 1;
            if byte == quote {
                break;
            }
        }
        if name == "xmlns" {
            declared.push(None);
        } else if let Some(prefix) = name.strip_prefix("xmlns:") {
            declared.push(Some(prefix));
        }
    }
    (name_end, declared)
}

/// Checks that a JSON div string is one well-formed `div` element in the XHTML namespace with
/// nothing around it, so that embedding it verbatim yields well-formed FHIR XML.
pub(crate) fn check_div(div: &str, path: &Path<'_>) -> Result<(), XmlError> {
    let refuse = |reason: String| XmlError::Xhtml {
        path: path.render(),
        reason,
    };
    if div.contains("<!DOCTYPE") {
        return Err(refuse("DTDs are not allowed".to_owned()));
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: DIV_NODES_LIMIT,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(div, options).map_err(|error| {
        let position = error.pos();
        refuse(format!(
            "it is not well-formed XML (line {}, column {})",
            position.row, position.col
        ))
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "div" {
        return Err(refuse("its root element must be a div".to_owned()));
    }
    if root.tag_name().namespace() != Some(XHTML_NS) {
        return Err(refuse(format!(
            "the div must declare the XHTML namespace (xmlns=\"{XHTML_NS}\")"
        )));
    }
    if root.range() != (0..div.len()) {
        return Err(refuse(
            "nothing may come before or after the div element".to_owned(),
        ));
    }
    if root.descendants().any(|node| node.is_pi()) {
        return Err(refuse("processing instructions are not allowed".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn start_tags_are_read() {
        let (end, declared) = start_tag_declarations(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\" class='a>b' xmlns:x = \"u\">x</div>",
        );
        assert_eq!(end, 4);
        assert_eq!(declared, [None, Some("x")]);
        let (end, declared) = start_tag_declarations("<h:div>");
        assert_eq!(end, 6);
        assert!(declared.is_empty());
        let (end, declared) = start_tag_declarations("<div/>");
        assert_eq!(end, 4);
        assert!(declared.is_empty());
    }

    #[test]
    fn inherited_namespaces_are_declared() {
        let text = "<r xmlns=\"http://hl7.org/fhir\" xmlns:h=\"http://www.w3.org/1999/xhtml\" xmlns:o=\"urn:other\"><h:div class=\"c\"><h:p>x</h:p></h:div></r>";
        let doc = Document::parse(text).unwrap();
        let div = doc.root_element().first_element_child().unwrap();
        let path = Path::root("X");
        assert_eq!(
            div_source(div, text, &path).unwrap(),
            "<h:div xmlns:h=\"http://www.w3.org/1999/xhtml\" class=\"c\"><h:p>x</h:p></h:div>"
        );
        let text = "<r xmlns=\"http://hl7.org/fhir\"><div xmlns=\"http://www.w3.org/1999/xhtml\">a &amp; b<br/></div></r>";
        let doc = Document::parse(text).unwrap();
        let div = doc.root_element().first_element_child().unwrap();
        assert_eq!(
            div_source(div, text, &path).unwrap(),
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">a &amp; b<br/></div>"
        );
    }

    #[test]
    fn json_divs_are_checked() {
        let root = Path::root("Patient");
        let text = root.child("text", None);
        let path = text.child("div", None);
        assert!(
            check_div(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>x</p></div>",
                &path
            )
            .is_ok()
        );
        for bad in [
            "<div><p>x</p></div>",
            "<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>x</div>",
            " <div xmlns=\"http://www.w3.org/1999/xhtml\"/>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"/><!-- x -->",
            "<?xml version=\"1.0\"?><div xmlns=\"http://www.w3.org/1999/xhtml\"/>",
            "<!DOCTYPE div><div xmlns=\"http://www.w3.org/1999/xhtml\"/>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">&nbsp;</div>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><?pi x?></div>",
            "",
            "text",
        ] {
            let error = check_div(bad, &path).unwrap_err();
            assert_eq!(error.expression(), Some("Patient.text.div"), "{bad}");
        }
    }
}
