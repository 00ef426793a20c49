//! fhirwall-xml: FHIR R4 XML <-> FHIR JSON, driven by the core definitions; it must not validate beyond what the conversion needs, do I/O, or echo element values in errors.
//!
//! The JSON form (a `serde_json::Value` with exact decimal text) is the server's internal
//! representation, so XML is only a wire format: [`xml_to_json`] turns a request body into the
//! JSON a client would have sent, and [`json_to_xml`] writes a stored resource as XML. Both
//! walk the type model of `fhirwall-definitions`, which knows each element's children in
//! document order, which elements repeat, which are primitives, and which are XML attributes.
//!
//! The XML side is parsed with roxmltree with DTDs refused, so no entity (internal or
//! external) is ever expanded; the document size, nesting depth and node count are bounded
//! before and while parsing.

mod path;
mod read;
mod write;
mod xhtml;

use fhirwall_definitions::Definitions;
use serde_json::Value;

/// The FHIR namespace every FHIR element lives in.
pub const FHIR_NS: &str = "http://hl7.org/fhir";
/// The namespace of the narrative's XHTML div.
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// Bounds on an XML document given to [`xml_to_json`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    /// The largest document accepted, in bytes.
    pub max_bytes: usize,
    /// The deepest nesting of JSON objects and arrays the result may have; the same measure
    /// as the JSON parser's depth limit, so a resource accepted as XML would also be accepted
    /// as JSON.
    pub max_depth: usize,
    /// The most XML nodes (elements, text, comments) the parser may create.
    pub max_nodes: u32,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_bytes: 16 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 1_000_000,
        }
    }
}

/// Why a document could not be converted. Messages name elements by path but never repeat
/// element values, which may be patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the XML document is empty")]
    Empty,
    #[error("the XML document is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the XML document has more than the limit of {limit} nodes")]
    TooManyNodes { limit: u32 },
    #[error("{path}: the resource nests deeper than the limit of {limit} levels")]
    TooDeep { path: String, limit: usize },
    #[error("the XML document is not valid UTF-8; FHIR XML must be encoded as UTF-8")]
    NotUtf8,
    #[error("the XML declaration names an encoding other than UTF-8; FHIR XML must be UTF-8")]
    UnsupportedEncoding,
    #[error("DTDs are not allowed in FHIR XML (the document contains <!DOCTYPE)")]
    DtdNotAllowed,
    #[error("the XML is not well-formed: {reason} at line {line}, column {column}")]
    Malformed {
        reason: &'static str,
        line: u32,
        column: u32,
    },
    #[error("{}processing instructions are not allowed in FHIR XML", prefix(.path))]
    ProcessingInstruction { path: Option<String> },
    #[error(
        "{path}: the element is not in the expected namespace (http://hl7.org/fhir for FHIR elements, http://www.w3.org/1999/xhtml for the narrative div)"
    )]
    WrongNamespace { path: String },
    #[error("{}'{name}' is not a FHIR resource type", prefix(.path))]
    UnknownResourceType { path: Option<String>, name: String },
    #[error("{path}: unknown element; the definitions of its parent do not name it")]
    UnknownElement { path: String },
    #[error("{path}: FHIR XML writes this element as an attribute, not as a child element")]
    AttributeAsElement { path: String },
    #[error(
        "{path}: the element is out of order; FHIR XML requires the order of the definitions, which puts it before '{before}'"
    )]
    OutOfOrder { path: String, before: String },
    #[error("{path}: the element appears more than once but allows at most one")]
    Repeated { path: String },
    #[error("{path}: only primitive elements may have a value attribute")]
    ValueOnNonPrimitive { path: String },
    #[error("{path}: the attribute '{name}' is not allowed here")]
    UnknownAttribute { path: String, name: String },
    #[error("{path}: text content is only allowed inside the narrative's XHTML div")]
    UnexpectedText { path: String },
    #[error("{path}: the element has neither a value nor extensions")]
    MissingValue { path: String },
    #[error("{path}: {reason}")]
    InvalidValue { path: String, reason: &'static str },
    #[error("{path}: the narrative div is not acceptable: {reason}")]
    Xhtml { path: String, reason: String },
    #[error("{}the resource must be a JSON object with a string resourceType", prefix(.path))]
    NotAResource { path: Option<String> },
    #[error("{path}: unknown property; the definitions of its parent do not name it")]
    UnknownProperty { path: String },
    #[error("{path}: {reason}")]
    InvalidJson { path: String, reason: &'static str },
    #[error("{path}: the definitions do not describe the type '{type_name}'")]
    MissingDefinition { path: String, type_name: String },
}

/// Renders an optional path as a message prefix.
/// The type model of a concrete resource type named in a document (an XML root or wrapper
/// element, a JSON `resourceType`).
fn concrete_resource_type<'d>(
    defs: &'d Definitions,
    name: &str,
    path: Option<&path::Path<'_>>,
) -> Result<&'d fhirwall_definitions::TypeInfo, XmlError> {
    defs.type_info(name)
        .filter(|info| info.kind == fhirwall_definitions::TypeKind::Resource && !info.is_abstract)
        .ok_or_else(|| XmlError::UnknownResourceType {
            path: path.map(path::Path::render),
            name: path::truncated(name).to_owned(),
        })
}

fn prefix(path: &Option<String>) -> String {
    match path {
        Some(path) => format!("{path}: "),
        None => String::new(),
    }
}

impl XmlError {
    /// The FHIRPath-like location of the offending element (`Patient.name[0].given[1]`), for
    /// `OperationOutcome.issue.expression`; `None` when the problem is the document as a whole.
    pub fn expression(&self) -> Option<&str> {
        match self {
            XmlError::Empty
            | XmlError::TooLarge { .. }
            | XmlError::TooManyNodes { .. }
            | XmlError::NotUtf8
            | XmlError::UnsupportedEncoding
            | XmlError::DtdNotAllowed
            | XmlError::Malformed { .. } => None,
            XmlError::ProcessingInstruction { path }
            | XmlError::UnknownResourceType { path, .. }
            | XmlError::NotAResource { path } => path.as_deref(),
            XmlError::TooDeep { path, .. }
            | XmlError::WrongNamespace { path }
            | XmlError::UnknownElement { path }
            | XmlError::AttributeAsElement { path }
            | XmlError::OutOfOrder { path, .. }
            | XmlError::Repeated { path }
            | XmlError::ValueOnNonPrimitive { path }
            | XmlError::UnknownAttribute { path, .. }
            | XmlError::UnexpectedText { path }
            | XmlError::MissingValue { path }
            | XmlError::InvalidValue { path, .. }
            | XmlError::Xhtml { path, .. }
            | XmlError::UnknownProperty { path }
            | XmlError::InvalidJson { path, .. }
            | XmlError::MissingDefinition { path, .. } => Some(path),
        }
    }
}

/// Converts a FHIR XML resource to its FHIR JSON form.
///
/// The document must be UTF-8 without a DTD, its root element a concrete resource type in the
/// FHIR namespace, and its elements known to the definitions and in their order. Primitive
/// values are not checked beyond what JSON needs (booleans and numbers); that is the
/// validator's job. Comments are dropped; `xsi:schemaLocation` on the root element is
/// tolerated and dropped, since schema-aware tools write it and it carries no data. Numbers
/// keep their text as serde_json keeps it for JSON input (an exponent marker becomes `e`).
pub fn xml_to_json(xml: &[u8], defs: &Definitions, limits: &XmlLimits) -> Result<Value, XmlError> {
    read::xml_to_json(xml, defs, limits)
}

/// Writes a FHIR JSON resource as FHIR XML; `pretty` indents nested elements by two spaces.
///
/// The resource need not be valid, but everything in it must be writable: a property the
/// definitions do not know is an error rather than being dropped.
pub fn json_to_xml(resource: &Value, defs: &Definitions, pretty: bool) -> Result<String, XmlError> {
    write::json_to_xml(resource, defs, pretty)
}

/// The child of `info` an XML element name or JSON key (without `_`) names: its position in
/// document order, its definition and, for a choice element, the type the name selects. The
/// search starts at `hint`, the position of the previous child, because documents list their
/// elements in definition order; it wraps around so that any child is found.
pub(crate) fn find_child<'d>(
    info: &'d fhirwall_definitions::TypeInfo,
    name: &str,
    hint: usize,
) -> Option<(usize, &'d fhirwall_definitions::ChildDef, &'d str)> {
    let children = &info.children;
    let hint = hint.min(children.len());
    let after = children.iter().enumerate().skip(hint);
    let before = children.iter().enumerate().take(hint);
    for (position, child) in after.chain(before) {
        if !child.is_choice {
            if child.name == name {
                return child.types.first().map(|ty| (position, child, ty.as_str()));
            }
            continue;
        }
        let Some(suffix) = name.strip_prefix(child.name.as_str()) else {
            continue;
        };
        for ty in &child.types {
            if fhirwall_definitions::type_suffix_matches(ty, suffix) {
                return Some((position, child, ty.as_str()));
            }
        }
    }
    None
}

/// How a child element is written, decided once per element from its type.
pub(crate) enum Shape<'d> {
    /// The narrative's XHTML div.
    Xhtml,
    /// An element of type Resource, wrapping one resource.
    Resource,
    Primitive(&'d fhirwall_definitions::TypeInfo),
    /// A data type or backbone element.
    Complex(&'d fhirwall_definitions::TypeInfo),
}

/// The shape of a child of type `ty`; `None` when the definitions lack the type.
pub(crate) fn shape<'d>(defs: &'d Definitions, xhtml: bool, ty: &str) -> Option<Shape<'d>> {
    if xhtml {
        return Some(Shape::Xhtml);
    }
    let info = defs.type_info(ty)?;
    Some(match info.kind {
        fhirwall_definitions::TypeKind::Resource => Shape::Resource,
        fhirwall_definitions::TypeKind::Primitive => Shape::Primitive(info),
        fhirwall_definitions::TypeKind::Complex | fhirwall_definitions::TypeKind::Backbone => {
            Shape::Complex(info)
        }
    })
}

/// Whether `text` is only XML whitespace (space, tab, carriage return, line feed).
pub(crate) fn is_xml_whitespace(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}
