//! Narrative safety (narrative.html, txt-1 and txt-2): `Narrative.div` must be well-formed XHTML with only the elements and attributes FHIR allows and no markup a browser reads differently from XML (CDATA sections, comments, processing instructions); it must never resolve entities or DTDs, and never fetch or render anything.

/// The XHTML namespace the root `div` must be in.
pub(crate) const XHTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// The most XML nodes one narrative may have; a guard against memory blow-up, far above the
/// narratives of the specification's own examples.
const MAX_NARRATIVE_NODES: u32 = 1_000_000;

/// What is wrong with a narrative. Names of elements and attributes are markup, not patient
/// data, so messages may name them (kept short and printable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NarrativeProblem {
    NotWellFormed,
    RootNotXhtmlDiv,
    Empty,
    ElementNotAllowed(String),
    AttributeNotAllowed { element: String, attribute: String },
    UnsafeUrl { element: String, attribute: String },
    UnsafeStyle { element: String },
    ProcessingInstruction,
    CdataSection,
    Comment,
}

impl NarrativeProblem {
    /// The constraint the problem breaks: txt-2 for emptiness, txt-1 for everything else.
    pub(crate) fn constraint_key(&self) -> &'static str {
        match self {
            NarrativeProblem::Empty => "txt-2",
            _ => "txt-1",
        }
    }

    pub(crate) fn rule(&self) -> &'static str {
        match self {
            NarrativeProblem::NotWellFormed => "narrative-xhtml",
            NarrativeProblem::RootNotXhtmlDiv => "narrative-root",
            NarrativeProblem::Empty => "narrative-empty",
            NarrativeProblem::ElementNotAllowed(_) => "narrative-element",
            NarrativeProblem::AttributeNotAllowed { .. } => "narrative-attribute",
            NarrativeProblem::UnsafeUrl { .. } => "narrative-url",
            NarrativeProblem::UnsafeStyle { .. } => "narrative-style",
            NarrativeProblem::ProcessingInstruction => "narrative-element",
            NarrativeProblem::CdataSection => "narrative-cdata",
            NarrativeProblem::Comment => "narrative-comment",
        }
    }

    /// The tail of the message after the element path.
    pub(crate) fn describe(&self) -> String {
        match self {
            NarrativeProblem::NotWellFormed => {
                "is not well-formed XHTML (it must be XML: no HTML entities such as &nbsp;, no DTD, every tag closed)".into()
            }
            NarrativeProblem::RootNotXhtmlDiv => {
                "must be a single <div> element in the XHTML namespace http://www.w3.org/1999/xhtml".into()
            }
            NarrativeProblem::Empty => "must have some non-whitespace content (txt-2)".into(),
            NarrativeProblem::ElementNotAllowed(name) => format!(
                "contains the element <{name}>, which FHIR narrative does not allow (txt-1)"
            ),
            NarrativeProblem::AttributeNotAllowed { element, attribute } => format!(
                "contains the attribute '{attribute}' on <{element}>, which FHIR narrative does not allow (txt-1)"
            ),
            NarrativeProblem::UnsafeUrl { element, attribute } => format!(
                "has an active or unsafe URL scheme in '{attribute}' on <{element}> (javascript:, vbscript: and data: other than images are not allowed)"
            ),
            NarrativeProblem::UnsafeStyle { element } => format!(
                "has a style attribute on <{element}> with script or external content (expression(), url(javascript:...), behavior, @import)"
            ),
            NarrativeProblem::ProcessingInstruction => {
                "contains an XML processing instruction, which FHIR narrative does not allow (txt-1)".into()
            }
            NarrativeProblem::CdataSection => {
                "contains a CDATA section, which is not accepted in a narrative: a browser reads it as markup, not as text (txt-1)".into()
            }
            NarrativeProblem::Comment => {
                "contains an XML comment, which is not accepted in a narrative: a browser may end it elsewhere than XML does and show what follows as markup (txt-1)".into()
            }
        }
    }
}

/// The XHTML elements FHIR narrative allows: the basic formatting elements of HTML 4.0
/// chapters 7-11 and 15, anchors, images and image maps. Everything else (script, style,
/// form controls, frames, objects, head/body, base, link, meta) is refused by absence.
const ALLOWED_ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "samp",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
];

/// Attributes any allowed element may carry.
const GLOBAL_ATTRIBUTES: &[&str] = &[
    "id",
    "class",
    "style",
    "title",
    "lang",
    "dir",
    "accesskey",
    "tabindex",
];

/// Attributes allowed on particular elements (presentation and table layout of HTML 4.0, links
/// and images). Event handlers (`on*`) are in no list.
fn element_allows_attribute(element: &str, attribute: &str) -> bool {
    let specific: &[&str] = match element {
        "a" => &[
            "href", "name", "hreflang", "type", "rel", "rev", "charset", "shape", "coords",
        ],
        "img" => &[
            "src", "alt", "longdesc", "height", "width", "border", "hspace", "vspace", "usemap",
            "ismap", "align", "name",
        ],
        "map" => &["name"],
        "area" => &["shape", "coords", "href", "nohref", "alt"],
        "table" => &[
            "summary",
            "width",
            "border",
            "frame",
            "rules",
            "cellspacing",
            "cellpadding",
            "align",
            "bgcolor",
        ],
        "td" | "th" => &[
            "abbr", "axis", "headers", "scope", "rowspan", "colspan", "align", "char", "charoff",
            "valign", "nowrap", "bgcolor", "width", "height",
        ],
        "tr" | "thead" | "tbody" | "tfoot" => &["align", "char", "charoff", "valign", "bgcolor"],
        "col" | "colgroup" => &["span", "width", "align", "char", "charoff", "valign"],
        "caption" | "div" | "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "center" => &["align"],
        "hr" => &["align", "noshade", "size", "width"],
        "br" => &["clear"],
        "ol" => &["type", "start", "compact"],
        "ul" => &["type", "compact"],
        "li" => &["type", "value"],
        "dl" => &["compact"],
        "pre" => &["width"],
        "blockquote" | "q" => &["cite"],
        "del" | "ins" => &["cite", "datetime"],
        "font" => &["color", "face", "size"],
        _ => &[],
    };
    specific.contains(&attribute)
}

/// Attributes whose value is a URL the browser may follow or load.
fn is_url_attribute(attribute: &str) -> bool {
    matches!(attribute, "href" | "src" | "cite" | "longdesc" | "usemap")
}

/// A short printable form of a markup name for messages; anything odd is not echoed.
fn printable_name(name: &str) -> String {
    if name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
    {
        name.to_owned()
    } else {
        "(unprintable)".into()
    }
}

/// The URL with whitespace and control characters removed and lower-cased, as browsers read
/// a scheme (`java\tscript:` is still javascript:).
fn normalized_url_start(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(64)
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_unsafe_url(element: &str, attribute: &str, value: &str) -> bool {
    let start = normalized_url_start(value);
    // Decoded entities such as `&#106;avascript:` are already characters here, because the XML
    // parser resolved them.
    if start.starts_with("javascript:")
        || start.starts_with("vbscript:")
        || start.starts_with("livescript:")
    {
        return true;
    }
    if start.starts_with("data:") {
        return !(element == "img" && attribute == "src" && start.starts_with("data:image/"))
            || start.starts_with("data:image/svg");
    }
    false
}

fn is_unsafe_style(value: &str) -> bool {
    let compact: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && *c != '\\')
        .flat_map(char::to_lowercase)
        .collect();
    compact.contains("expression(")
        || compact.contains("javascript:")
        || compact.contains("vbscript:")
        || compact.contains("behavior:")
        || compact.contains("-moz-binding")
        || compact.contains("@import")
}

/// The markup an XML parser and a browser's HTML parser read differently, so that what this
/// check saw is not what a browser renders. A browser treats `<![CDATA[` outside SVG and MathML
/// as a bogus comment that ends at the first `>`, so `<![CDATA[><img onerror=...>]]>` is text
/// to XML and an image to the browser; `<!-->` ends an HTML comment at once but starts an XML
/// one; `<?` opens an HTML bogus comment that ends at the first `>`, not at `?>`.
///
/// Runs on text that already parsed as XML without a DTD. There `<` stands literally only where
/// markup starts (XML forbids it in attribute values and text escapes it), so each opener is
/// what it looks like, or lies inside another one that is refused as well. roxmltree merges
/// CDATA into plain text nodes, so the source text is the only place a CDATA section shows.
fn hidden_markup(xhtml: &str) -> Option<NarrativeProblem> {
    if xhtml.contains("<![CDATA[") {
        Some(NarrativeProblem::CdataSection)
    } else if xhtml.contains("<!--") {
        Some(NarrativeProblem::Comment)
    } else if xhtml.contains("<?") {
        // Processing instructions and an XML declaration, which has the same syntax.
        Some(NarrativeProblem::ProcessingInstruction)
    } else {
        None
    }
}

/// Checks a narrative `div`. Returns the first problem found.
pub(crate) fn check_narrative(xhtml: &str) -> Result<(), NarrativeProblem> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NARRATIVE_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(xhtml, options)
        .map_err(|_| NarrativeProblem::NotWellFormed)?;
    if let Some(problem) = hidden_markup(xhtml) {
        return Err(problem);
    }
    let root = document.root_element();
    if root.tag_name().name() != "div" || root.tag_name().namespace() != Some(XHTML_NAMESPACE) {
        return Err(NarrativeProblem::RootNotXhtmlDiv);
    }
    let mut has_content = false;
    for node in document.root().descendants() {
        if node.is_text() {
            has_content |= node.text().is_some_and(|t| !t.trim().is_empty());
            continue;
        }
        if !node.is_element() {
            continue;
        }
        let name = node.tag_name().name();
        if node.tag_name().namespace() != Some(XHTML_NAMESPACE) || !ALLOWED_ELEMENTS.contains(&name)
        {
            return Err(NarrativeProblem::ElementNotAllowed(printable_name(name)));
        }
        if name == "img" {
            has_content = true;
        }
        for attribute in node.attributes() {
            let attribute_name = attribute.name();
            let allowed = match attribute.namespace() {
                None => {
                    GLOBAL_ATTRIBUTES.contains(&attribute_name)
                        || element_allows_attribute(name, attribute_name)
                }
                Some(XML_NAMESPACE) => matches!(attribute_name, "lang" | "space"),
                Some(_) => false,
            };
            if !allowed {
                return Err(NarrativeProblem::AttributeNotAllowed {
                    element: printable_name(name),
                    attribute: printable_name(attribute_name),
                });
            }
            if is_url_attribute(attribute_name)
                && is_unsafe_url(name, attribute_name, attribute.value())
            {
                return Err(NarrativeProblem::UnsafeUrl {
                    element: printable_name(name),
                    attribute: printable_name(attribute_name),
                });
            }
            if attribute_name == "style" && is_unsafe_style(attribute.value()) {
                return Err(NarrativeProblem::UnsafeStyle {
                    element: printable_name(name),
                });
            }
        }
    }
    if has_content {
        Ok(())
    } else {
        Err(NarrativeProblem::Empty)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn div(inner: &str) -> String {
        format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{inner}</div>")
    }

    #[test]
    fn safe_narratives_pass() {
        assert_eq!(check_narrative(&div("<p>Hello <b>world</b></p>")), Ok(()));
        assert_eq!(
            check_narrative(&div(
                "<table class=\"grid\"><tr><td colspan=\"2\" style=\"color: red\">x</td></tr></table>"
            )),
            Ok(())
        );
        assert_eq!(
            check_narrative(&div("<img src=\"data:image/png;base64,AAAA\"/>")),
            Ok(())
        );
        assert_eq!(
            check_narrative(&div("<a href=\"http://example.org\">x</a>")),
            Ok(())
        );
        assert_eq!(
            check_narrative(&div("<p xml:lang=\"en\">x &amp; y</p>")),
            Ok(())
        );
        // Escaped, these openers are text to the browser as well.
        assert_eq!(
            check_narrative(&div("&lt;![CDATA[ &lt;!-- &lt;?x ?&gt;")),
            Ok(())
        );
    }

    #[test]
    fn unsafe_narratives_fail() {
        let cases = [
            (div("<script>alert(1)</script>"), "narrative-element"),
            (div("<p onclick=\"alert(1)\">x</p>"), "narrative-attribute"),
            (div("<a href=\"javascript:alert(1)\">x</a>"), "narrative-url"),
            (div("<a href=\" JaVa&#x09;script:alert(1)\">x</a>"), "narrative-url"),
            (div("<a href=\"data:text/html,x\">x</a>"), "narrative-url"),
            (div("<img src=\"data:image/svg+xml,x\"/>"), "narrative-url"),
            (div("<iframe src=\"http://x\"></iframe>"), "narrative-element"),
            (div("<p style=\"width: expression(alert(1))\">x</p>"), "narrative-style"),
            (div("<p>x"), "narrative-xhtml"),
            (div("a&nbsp;b"), "narrative-xhtml"),
            (div("   "), "narrative-empty"),
            ("<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>".to_owned(), "narrative-root"),
            ("<div>x</div>".to_owned(), "narrative-root"),
            (
                "<!DOCTYPE div [<!ENTITY x \"y\">]><div xmlns=\"http://www.w3.org/1999/xhtml\">&x;</div>"
                    .to_owned(),
                "narrative-xhtml",
            ),
            (div("<svg xmlns=\"http://www.w3.org/2000/svg\"/>x"), "narrative-element"),
            (div("<form><input/></form>"), "narrative-element"),
            (div("<?php x ?>x"), "narrative-element"),
            (
                format!("<?xml version=\"1.0\"?>{}", div("x")),
                "narrative-element",
            ),
            (div("<![CDATA[><img src=x onerror=alert(1)>]]>x"), "narrative-cdata"),
            (div("<p>a<![CDATA[b]]></p>"), "narrative-cdata"),
            (div("<!--><img src=x onerror=alert(1)>-->x"), "narrative-comment"),
            (div("x<!-- a note -->"), "narrative-comment"),
            (format!("<!-- before -->{}", div("x")), "narrative-comment"),
            (format!("{}<!-- after -->", div("x")), "narrative-comment"),
        ];
        for (xhtml, rule) in cases {
            let problem = check_narrative(&xhtml).unwrap_err();
            assert_eq!(problem.rule(), rule, "{xhtml}");
        }
    }
}
