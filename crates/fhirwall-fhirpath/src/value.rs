//! The items of FHIRPath collections: borrowed nodes of a JSON resource (typed by the model),
//! computed System values, and stubs for references resolved to a type without content. It
//! must not copy JSON subtrees: nodes borrow the tree they come from.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::Model;
use crate::decimal::Decimal;
use crate::quantity::Quantity;
use crate::temporal::{DateTimeValue, TimeValue};

/// A value computed by an expression (or written as a literal): FHIRPath's System types.
#[derive(Clone, Debug)]
pub enum SystemValue {
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Date(DateTimeValue),
    DateTime(DateTimeValue),
    Time(TimeValue),
    Quantity(Quantity),
}

impl SystemValue {
    /// The System type name (`Boolean`, `String`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            SystemValue::Boolean(_) => "Boolean",
            SystemValue::String(_) => "String",
            SystemValue::Integer(_) => "Integer",
            SystemValue::Decimal(_) => "Decimal",
            SystemValue::Date(_) => "Date",
            SystemValue::DateTime(_) => "DateTime",
            SystemValue::Time(_) => "Time",
            SystemValue::Quantity(_) => "Quantity",
        }
    }
}

impl fmt::Display for SystemValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SystemValue::Boolean(b) => write!(f, "{b}"),
            SystemValue::String(s) => f.write_str(s),
            SystemValue::Integer(i) => write!(f, "{i}"),
            SystemValue::Decimal(d) => write!(f, "{d}"),
            SystemValue::Date(d) | SystemValue::DateTime(d) => write!(f, "{d}"),
            SystemValue::Time(t) => write!(f, "{t}"),
            SystemValue::Quantity(q) => write!(f, "{q}"),
        }
    }
}

/// A node of the JSON tree with its FHIR type.
///
/// A primitive element is split across two JSON properties: `name` holds the value and `_name`
/// its `id` and `extension`. A node keeps both; either may be absent (a primitive that has only
/// extensions has no value).
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    value: Option<&'a Value>,
    meta: Option<&'a Value>,
    type_name: Option<&'a str>,
}

impl<'a> Node<'a> {
    pub(crate) fn new(
        value: Option<&'a Value>,
        meta: Option<&'a Value>,
        type_name: Option<&'a str>,
    ) -> Self {
        Node {
            value: value.filter(|v| !v.is_null()),
            meta: meta.filter(|v| !v.is_null()),
            type_name,
        }
    }

    /// The JSON value (None for a primitive that has only `_name` content).
    pub fn json(&self) -> Option<&'a Value> {
        self.value
    }

    /// The `_name` object of a primitive (its `id` and `extension`).
    pub fn meta(&self) -> Option<&'a Value> {
        self.meta
    }

    /// The FHIR type code (a backbone element's path for backbone elements); None when the
    /// model did not know the element.
    pub fn type_name(&self) -> Option<&'a str> {
        self.type_name
    }

    /// Whether two nodes are the same place in the same tree.
    pub(crate) fn same(&self, other: &Node<'_>) -> bool {
        let ptr = |v: Option<&Value>| v.map(|v| v as *const Value);
        ptr(self.value) == ptr(other.value) && ptr(self.meta) == ptr(other.meta)
    }
}

/// A resource known only by type and id: what `resolve()` yields for a reference that names a
/// resource which is not at hand, so that `resolve() is Patient` still works.
#[derive(Clone, Copy, Debug)]
pub struct Stub<'a> {
    pub type_name: &'a str,
    pub id: &'a str,
}

/// One item of a collection.
#[derive(Clone, Debug)]
pub enum Item<'a> {
    Node(Node<'a>),
    Value(SystemValue),
    Stub(Stub<'a>),
}

/// A FHIRPath collection: ordered, possibly with duplicates.
pub type Collection<'a> = Vec<Item<'a>>;

impl<'a> Item<'a> {
    /// A resource (or any object with `resourceType`), typed by its `resourceType`.
    pub fn resource(value: &'a Value) -> Self {
        let type_name = value.get("resourceType").and_then(Value::as_str);
        Item::Node(Node::new(Some(value), None, type_name))
    }

    /// A node of the given FHIR type (a backbone element's path for backbone elements).
    pub fn node(value: &'a Value, type_name: &'a str) -> Self {
        Item::Node(Node::new(Some(value), None, Some(type_name)))
    }

    /// A primitive node from its `name` value and `_name` object, either of which may be absent.
    pub fn primitive(
        value: Option<&'a Value>,
        meta: Option<&'a Value>,
        type_name: &'a str,
    ) -> Self {
        Item::Node(Node::new(value, meta, Some(type_name)))
    }

    /// A node whose type is unknown: navigation falls back to plain JSON property lookup.
    pub fn untyped(value: &'a Value) -> Self {
        Item::Node(Node::new(Some(value), None, None))
    }

    /// A computed value.
    pub fn system(value: SystemValue) -> Self {
        Item::Value(value)
    }

    pub(crate) fn boolean(b: bool) -> Self {
        Item::Value(SystemValue::Boolean(b))
    }

    pub(crate) fn string(s: impl Into<String>) -> Self {
        Item::Value(SystemValue::String(s.into()))
    }

    /// The node, when this item is one.
    pub fn as_node(&self) -> Option<&Node<'a>> {
        match self {
            Item::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The JSON value of a node item.
    pub fn json(&self) -> Option<&'a Value> {
        self.as_node().and_then(Node::json)
    }

    /// The type name: the FHIR type of a node or stub, `System.X` for a computed value.
    pub fn type_name(&self) -> Option<Cow<'a, str>> {
        match self {
            Item::Node(n) => n.type_name.map(Cow::Borrowed),
            Item::Value(v) => Some(Cow::Owned(format!("System.{}", v.type_name()))),
            Item::Stub(s) => Some(Cow::Borrowed(s.type_name)),
        }
    }

    /// The value as a Boolean, if it is one (a System Boolean or a FHIR boolean node).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Value(SystemValue::Boolean(b)) => Some(*b),
            Item::Node(n) => match (n.type_name.map(normalize_type), n.value) {
                (Some("boolean" | "System.Boolean") | None, Some(Value::Bool(b))) => Some(*b),
                _ => None,
            },
            _ => None,
        }
    }

    /// The System value of a primitive item (what getValue() gives), or of a Quantity node:
    /// FHIR `date` becomes a Date, `decimal` an exact Decimal, `code` a String, and so on. None
    /// for other complex values, stubs, and primitives that only have extensions.
    pub fn system_value(&self, model: &dyn Model) -> Option<SystemValue> {
        self.prim(model).map(|p| p.to_system())
    }

    /// The primitive view of the item, for operators and functions.
    pub(crate) fn prim(&self, model: &dyn Model) -> Option<Prim<'_>> {
        match self {
            Item::Value(v) => Some(match v {
                SystemValue::Boolean(b) => Prim::Bool(*b),
                SystemValue::String(s) => Prim::Str(s),
                SystemValue::Integer(i) => Prim::Int(*i),
                SystemValue::Decimal(d) => Prim::Dec(*d),
                SystemValue::Date(d) => Prim::Date(*d),
                SystemValue::DateTime(d) => Prim::DateTime(*d),
                SystemValue::Time(t) => Prim::Time(*t),
                SystemValue::Quantity(q) => Prim::Qty(Cow::Borrowed(q)),
            }),
            Item::Node(n) => node_prim(n, model),
            Item::Stub(_) => None,
        }
    }

    /// The text of a primitive (its JSON text for nodes, so decimals and dates keep their
    /// original form), or of a Quantity. None for other complex values.
    pub(crate) fn text(&self, model: &dyn Model) -> Option<Cow<'_, str>> {
        match self {
            Item::Value(SystemValue::String(s)) => Some(Cow::Borrowed(s)),
            Item::Value(v) => Some(Cow::Owned(v.to_string())),
            Item::Node(n) => match n.value? {
                Value::String(s) => Some(Cow::Borrowed(s)),
                Value::Number(num) => Some(Cow::Owned(num.to_string())),
                Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                Value::Object(_) => match node_prim(n, model)? {
                    Prim::Qty(q) => Some(Cow::Owned(q.to_string())),
                    _ => None,
                },
                _ => None,
            },
            Item::Stub(_) => None,
        }
    }
}

/// Strips the `http://hl7.org/fhirpath/` prefix that R4 snapshots put on System types
/// (`http://hl7.org/fhirpath/System.String` → `System.String`).
pub(crate) fn normalize_type(t: &str) -> &str {
    t.strip_prefix("http://hl7.org/fhirpath/").unwrap_or(t)
}

/// A borrowed primitive view of an item.
#[derive(Debug)]
pub(crate) enum Prim<'x> {
    Bool(bool),
    Str(&'x str),
    Int(i64),
    Dec(Decimal),
    Date(DateTimeValue),
    DateTime(DateTimeValue),
    Time(TimeValue),
    Qty(Cow<'x, Quantity>),
}

impl Prim<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Prim::Bool(_) => "Boolean",
            Prim::Str(_) => "String",
            Prim::Int(_) => "Integer",
            Prim::Dec(_) => "Decimal",
            Prim::Date(_) => "Date",
            Prim::DateTime(_) => "DateTime",
            Prim::Time(_) => "Time",
            Prim::Qty(_) => "Quantity",
        }
    }

    pub fn to_system(&self) -> SystemValue {
        match self {
            Prim::Bool(b) => SystemValue::Boolean(*b),
            Prim::Str(s) => SystemValue::String((*s).to_owned()),
            Prim::Int(i) => SystemValue::Integer(*i),
            Prim::Dec(d) => SystemValue::Decimal(*d),
            Prim::Date(d) => SystemValue::Date(*d),
            Prim::DateTime(d) => SystemValue::DateTime(*d),
            Prim::Time(t) => SystemValue::Time(*t),
            Prim::Qty(q) => SystemValue::Quantity(q.as_ref().clone()),
        }
    }
}

/// Which System type a FHIR type's values map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Str,
    Int,
    Dec,
    Date,
    DateTime,
    Time,
}

/// The System kind of a FHIR primitive type code (or of a `System.X` type).
pub(crate) fn primitive_kind(type_name: &str) -> Option<Kind> {
    Some(match normalize_type(type_name) {
        "boolean" | "System.Boolean" => Kind::Bool,
        "integer" | "positiveInt" | "unsignedInt" | "integer64" | "System.Integer" => Kind::Int,
        "decimal" | "System.Decimal" => Kind::Dec,
        "date" | "System.Date" => Kind::Date,
        "dateTime" | "instant" | "System.DateTime" => Kind::DateTime,
        "time" | "System.Time" => Kind::Time,
        "string" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid" | "markdown"
        | "base64Binary" | "xhtml" | "System.String" => Kind::Str,
        _ => return None,
    })
}

/// Whether values of `type_name` are quantities (Quantity and its specialisations such as Age).
pub(crate) fn is_quantity_type(model: &dyn Model, type_name: &str) -> bool {
    let mut current = Some(type_name);
    let mut steps = 0;
    while let Some(t) = current {
        if t == "Quantity" || t == "System.Quantity" {
            return true;
        }
        steps += 1;
        if steps > 32 {
            return false;
        }
        current = model.base_type(t);
    }
    false
}

fn node_prim<'x>(n: &Node<'x>, model: &dyn Model) -> Option<Prim<'x>> {
    let value = n.value?;
    let kind = match n.type_name {
        Some(t) => match primitive_kind(t) {
            Some(kind) => Some(kind),
            None if value.is_object() => {
                if is_quantity_type(model, t) {
                    return quantity_of(value).map(|q| Prim::Qty(Cow::Owned(q)));
                }
                return None;
            }
            None => None,
        },
        None => None,
    };
    json_prim(value, kind)
}

/// Reads a FHIR Quantity object as a System Quantity (UCUM code preferred over the display
/// unit). None without a numeric value.
pub(crate) fn quantity_of(value: &Value) -> Option<Quantity> {
    let amount = match value.get("value")? {
        Value::Number(n) => Decimal::parse(&n.to_string())?,
        _ => return None,
    };
    let unit = value
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| value.get("unit").and_then(Value::as_str))
        .unwrap_or("1");
    Some(Quantity::new(amount, unit))
}

/// Reads a JSON scalar as the System kind its FHIR type asks for, falling back on the JSON
/// kind when the type is unknown or the text does not fit it.
fn json_prim(value: &Value, kind: Option<Kind>) -> Option<Prim<'_>> {
    match value {
        Value::Bool(b) => Some(Prim::Bool(*b)),
        Value::Number(n) => {
            let text = n.as_str();
            if kind != Some(Kind::Dec)
                && let Ok(i) = text.parse::<i64>()
            {
                return Some(Prim::Int(i));
            }
            Decimal::parse(text).map(Prim::Dec)
        }
        Value::String(s) => Some(match kind {
            Some(Kind::Date) => match DateTimeValue::parse(s) {
                Some((d, false)) => Prim::Date(d),
                Some((d, true)) => Prim::DateTime(d),
                None => Prim::Str(s),
            },
            Some(Kind::DateTime) => match DateTimeValue::parse(s) {
                Some((d, _)) => Prim::DateTime(d),
                None => Prim::Str(s),
            },
            Some(Kind::Time) => match TimeValue::parse(s) {
                Some(t) => Prim::Time(t),
                None => Prim::Str(s),
            },
            _ => Prim::Str(s),
        }),
        _ => None,
    }
}

/// Deep equality of two JSON trees, numbers compared as decimals (so `1.0` equals `1`).
/// Depth beyond `limit` counts as unequal rather than recursing further.
pub(crate) fn json_equal(a: &Value, b: &Value, limit: usize) -> bool {
    if limit == 0 {
        return false;
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (Decimal::parse(x.as_str()), Decimal::parse(y.as_str())) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_str() == y.as_str(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y, limit - 1))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w, limit - 1)))
        }
        _ => a == b,
    }
}
