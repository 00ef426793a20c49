//! StructureDefinitions as parsed values: the embedded core ones and profiles clients upload go through the same parser; it must not evaluate or validate resources.

use serde_json::Value;

use crate::DefinitionError;

/// What a StructureDefinition defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PrimitiveType,
    ComplexType,
    Resource,
    Logical,
}

/// Whether a StructureDefinition defines a new type or constrains (profiles) an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// The roots (`Element`, `Resource`) have none.
    Root,
    Specialization,
    Constraint,
}

/// A StructureDefinition's snapshot, the only view validation uses.
#[derive(Debug, Clone)]
pub struct StructureDef {
    pub url: String,
    pub version: Option<String>,
    pub name: String,
    /// The type defined or constrained (`Patient`, `Extension`, `Quantity`).
    pub type_name: String,
    pub kind: Kind,
    pub is_abstract: bool,
    pub derivation: Derivation,
    pub base_definition: Option<String>,
    /// Snapshot elements in document order (the order XML needs).
    pub elements: Vec<ElementDef>,
}

/// The upper cardinality of an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    Unbounded,
    At(u32),
}

impl Max {
    /// Whether more than one value is allowed (the JSON form is then an array).
    pub fn is_repeating(self) -> bool {
        !matches!(self, Max::At(0 | 1))
    }

    /// Whether `count` values are within this bound.
    pub fn allows(self, count: usize) -> bool {
        match self {
            Max::Unbounded => true,
            Max::At(max) => u32::try_from(count).is_ok_and(|count| count <= max),
        }
    }
}

/// One allowed type of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRef {
    /// The FHIR type code. System types (`http://hl7.org/fhirpath/System.String`) of `id`,
    /// `url` and primitive values are replaced by the FHIR type the definitions name for them.
    pub code: String,
    /// Profiles the value must conform to (`SimpleQuantity`, an extension definition).
    pub profiles: Vec<String>,
    /// For Reference and canonical: the profiles (usually resource types) the target may have.
    pub target_profiles: Vec<String>,
    /// The regex a primitive value must match, on a primitive type's `value` element.
    pub regex: Option<String>,
}

/// How strongly an element is bound to a value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingStrength {
    Required,
    Extensible,
    Preferred,
    Example,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub strength: BindingStrength,
    /// The value set's canonical URL, version removed.
    pub value_set: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// An invariant on an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub severity: Severity,
    pub human: String,
    pub expression: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscriminatorType {
    Value,
    Exists,
    Pattern,
    Type,
    Profile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discriminator {
    pub kind: DiscriminatorType,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlicingRules {
    Closed,
    Open,
    OpenAtEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slicing {
    pub discriminators: Vec<Discriminator>,
    pub ordered: bool,
    pub rules: SlicingRules,
}

/// One snapshot element.
#[derive(Debug, Clone)]
pub struct ElementDef {
    /// `Patient.identifier:mrn.system`.
    pub id: String,
    /// `Patient.identifier.system`; choice elements end in `[x]`.
    pub path: String,
    pub slice_name: Option<String>,
    pub min: u32,
    pub max: Max,
    pub types: Vec<TypeRef>,
    /// `#Questionnaire.item` style references to another element's definition, `#` removed.
    pub content_reference: Option<String>,
    /// `fixed[x]`: the value must be exactly this.
    pub fixed: Option<Value>,
    /// `pattern[x]`: the value must contain at least this.
    pub pattern: Option<Value>,
    pub min_value: Option<Value>,
    pub max_value: Option<Value>,
    pub max_length: Option<u32>,
    pub binding: Option<Binding>,
    pub constraints: Vec<Constraint>,
    pub slicing: Option<Slicing>,
    pub is_modifier: bool,
    pub is_summary: bool,
    /// XML: an attribute rather than an element (`id` of elements, `Extension.url`).
    pub xml_attribute: bool,
    /// XML: XHTML content (`Narrative.div`, type `xhtml`).
    pub xhtml: bool,
}

impl ElementDef {
    /// The last path segment, `[x]` kept (`value[x]`).
    pub fn last_segment(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    /// Whether this is a choice element (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.path.ends_with("[x]")
    }
}

const FHIR_TYPE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const REGEX_EXTENSION: &str = "http://hl7.org/fhir/StructureDefinition/regex";

fn str_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// The strings of a JSON array field (non-strings skipped; empty when absent).
pub(crate) fn strings(value: &Value, field: &str) -> Vec<String> {
    value
        .get(field)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a `|version` suffix from a canonical URL.
pub fn canonical_without_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

impl StructureDef {
    /// Parses a StructureDefinition resource (JSON) that has a snapshot.
    pub fn from_json(sd: &Value) -> Result<Self, DefinitionError> {
        let invalid = |what: &str| DefinitionError::Invalid(what.to_owned());
        if str_field(sd, "resourceType") != Some("StructureDefinition") {
            return Err(invalid("not a StructureDefinition"));
        }
        let url = str_field(sd, "url").ok_or_else(|| invalid("url is missing"))?;
        let type_name = str_field(sd, "type").ok_or_else(|| invalid("type is missing"))?;
        let kind = match str_field(sd, "kind") {
            Some("primitive-type") => Kind::PrimitiveType,
            Some("complex-type") => Kind::ComplexType,
            Some("resource") => Kind::Resource,
            Some("logical") => Kind::Logical,
            _ => return Err(invalid("kind is missing or unknown")),
        };
        let derivation = match str_field(sd, "derivation") {
            None => Derivation::Root,
            Some("specialization") => Derivation::Specialization,
            Some("constraint") => Derivation::Constraint,
            Some(_) => return Err(invalid("derivation is unknown")),
        };
        let elements = sd
            .get("snapshot")
            .and_then(|s| s.get("element"))
            .and_then(Value::as_array)
            .ok_or(DefinitionError::NoSnapshot)?;
        let mut parsed = Vec::with_capacity(elements.len());
        for element in elements {
            parsed.push(parse_element(element)?);
        }
        match parsed.first() {
            Some(root) if root.path == type_name => {}
            _ => {
                return Err(invalid(
                    "the snapshot's first element is not the type's root",
                ));
            }
        }
        Ok(StructureDef {
            url: url.to_owned(),
            version: str_field(sd, "version").map(str::to_owned),
            name: str_field(sd, "name").unwrap_or(type_name).to_owned(),
            type_name: type_name.to_owned(),
            kind,
            is_abstract: sd.get("abstract").and_then(Value::as_bool) == Some(true),
            derivation,
            base_definition: str_field(sd, "baseDefinition")
                .map(|u| canonical_without_version(u).to_owned()),
            elements: parsed,
        })
    }

    /// The root element (the first of the snapshot).
    pub fn root(&self) -> Option<&ElementDef> {
        self.elements.first()
    }
}

fn parse_element(element: &Value) -> Result<ElementDef, DefinitionError> {
    let path = str_field(element, "path")
        .ok_or_else(|| DefinitionError::Invalid("an element has no path".into()))?;
    let id = str_field(element, "id").unwrap_or(path).to_owned();
    let min = element
        .get("min")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    let max = match str_field(element, "max") {
        None | Some("*") => Max::Unbounded,
        Some(text) => Max::At(text.parse().map_err(|_| {
            DefinitionError::Invalid(format!("{id}: max {text:?} is not a number or *"))
        })?),
    };
    let mut types = Vec::new();
    if let Some(list) = element.get("type").and_then(Value::as_array) {
        for ty in list {
            types.push(parse_type(ty));
        }
    }
    let mut fixed = None;
    let mut pattern = None;
    let mut min_value = None;
    let mut max_value = None;
    if let Some(object) = element.as_object() {
        for (key, value) in object {
            if key.starts_with("fixed") {
                fixed = Some(value.clone());
            } else if key.starts_with("pattern") {
                pattern = Some(value.clone());
            } else if key.starts_with("minValue") {
                min_value = Some(value.clone());
            } else if key.starts_with("maxValue") {
                max_value = Some(value.clone());
            }
        }
    }
    let binding = element.get("binding").and_then(|b| {
        let strength = match str_field(b, "strength")? {
            "required" => BindingStrength::Required,
            "extensible" => BindingStrength::Extensible,
            "preferred" => BindingStrength::Preferred,
            _ => BindingStrength::Example,
        };
        Some(Binding {
            strength,
            value_set: str_field(b, "valueSet").map(|u| canonical_without_version(u).to_owned()),
        })
    });
    let constraints = element
        .get("constraint")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    Some(Constraint {
                        key: str_field(c, "key")?.to_owned(),
                        severity: if str_field(c, "severity") == Some("warning") {
                            Severity::Warning
                        } else {
                            Severity::Error
                        },
                        human: str_field(c, "human").unwrap_or_default().to_owned(),
                        expression: str_field(c, "expression").map(str::to_owned),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let slicing = element.get("slicing").map(|s| Slicing {
        discriminators: s
            .get("discriminator")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|d| {
                        let kind = match str_field(d, "type")? {
                            "value" => DiscriminatorType::Value,
                            "exists" => DiscriminatorType::Exists,
                            "pattern" => DiscriminatorType::Pattern,
                            "type" => DiscriminatorType::Type,
                            "profile" => DiscriminatorType::Profile,
                            _ => return None,
                        };
                        Some(Discriminator {
                            kind,
                            path: str_field(d, "path")?.to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ordered: s.get("ordered").and_then(Value::as_bool) == Some(true),
        rules: match str_field(s, "rules") {
            Some("closed") => SlicingRules::Closed,
            Some("openAtEnd") => SlicingRules::OpenAtEnd,
            _ => SlicingRules::Open,
        },
    });
    let representation = strings(element, "representation");
    let xhtml =
        representation.iter().any(|r| r == "xhtml") || types.iter().any(|t| t.code == "xhtml");
    Ok(ElementDef {
        id,
        path: path.to_owned(),
        slice_name: str_field(element, "sliceName").map(str::to_owned),
        min,
        max,
        types,
        content_reference: str_field(element, "contentReference")
            .map(|r| r.rsplit('#').next().unwrap_or(r).to_owned()),
        fixed,
        pattern,
        min_value,
        max_value,
        max_length: element
            .get("maxLength")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok()),
        binding,
        constraints,
        slicing,
        is_modifier: element.get("isModifier").and_then(Value::as_bool) == Some(true),
        is_summary: element.get("isSummary").and_then(Value::as_bool) == Some(true),
        xml_attribute: representation.iter().any(|r| r == "xmlAttr"),
        xhtml,
    })
}

fn parse_type(ty: &Value) -> TypeRef {
    let mut code = str_field(ty, "code").unwrap_or_default().to_owned();
    let mut regex = None;
    if let Some(extensions) = ty.get("extension").and_then(Value::as_array) {
        for extension in extensions {
            match str_field(extension, "url") {
                Some(FHIR_TYPE_EXTENSION) => {
                    if let Some(fhir_type) = str_field(extension, "valueUrl")
                        .or_else(|| str_field(extension, "valueUri"))
                    {
                        code = fhir_type.to_owned();
                    }
                }
                Some(REGEX_EXTENSION) => {
                    regex = str_field(extension, "valueString").map(str::to_owned);
                }
                _ => {}
            }
        }
    }
    if let Some(system) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        // Without the FHIR-type extension: map the System type to its FHIR primitive.
        code = match system {
            "Boolean" => "boolean",
            "Integer" => "integer",
            "Decimal" => "decimal",
            "Date" => "date",
            "DateTime" => "dateTime",
            "Time" => "time",
            _ => "string",
        }
        .to_owned();
    }
    TypeRef {
        code,
        profiles: strings(ty, "profile"),
        target_profiles: strings(ty, "targetProfile"),
        regex,
    }
}
