//! The parameters of every type, the keys a resource carries, the parsing of query parameters
//! into criteria, and the exact test of a criterion on a resource.
//!
//! Keys (each in the domain of its parameter; the service MACs them):
//! - token: `c:code` (any system), `sv:system|code`, `ns:code` (no system), `s:system|`
//!   (system only), `ic:code` (a `code` element, whose system its binding implies),
//!   `tw:abc` (the first three letters of each word of a display or text, for `:text`),
//!   `ot:typeSystem|typeCode|value` (an identifier's type, for `:of-type`);
//! - string: `p3:`, `p4:` the first three and four letters of the normalised value (shorter
//!   prefixes have no keys: such queries test every resource of the type), in the
//!   domain `param.part` (HumanName and Address parts are indexed separately, and a parameter
//!   that is a part of another, `family` of `name`, shares its keys); `ph:` Soundex codes for
//!   `phonetic`;
//! - date: calendar buckets of the start (`s:`) and of the end (`e:`) of each value's range:
//!   millennium, century, decade, year, month, day; `s:-` and `e:+` for open ends;
//! - number and quantity: `m:` the decimal magnitude; quantities also `q:system|code`,
//!   `qc:code`, and `cu:unit` for the canonical UCUM unit;
//! - reference: `r:Type/id`, `ru:url` (elsewhere, or a canonical), `ri:system|value` and
//!   `ri:value` (a logical reference's identifier);
//! - uri: `u:value` and `ub:prefix` at each `/`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use fhirwall_fhirpath::{Expression, Item};
use fhirwall_model::generated::{SEARCH_PARAMS, SearchParamDef};
use fhirwall_validation::DefinitionsModel;
use serde_json::Value;

use crate::values::{self, Range, Token};
use crate::{Context, Key, Link, ParamInfo, ParamKind, Plan, QueryError, SortKey, Window};

/// At most this many comma-separated values per parameter.
const MAX_ALTERNATIVES: usize = 64;
/// Chains and `_has` nest at most this deep.
const MAX_DEPTH: usize = 8;
/// Prefix keys are kept for strings up to this many letters; longer queries are confirmed.
const PREFIX_KEYS: usize = 4;
/// The parts of a HumanName and an Address, indexed each in its own domain (`name.family`).
const STRING_PARTS: &[&str] = &[
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];
/// Prefixes shorter than this have no keys (they would be most of a write's postings and
/// select most of a type): a query of one or two letters tests every resource of the type.
const MIN_PREFIX_KEY: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    Id,
    LastUpdated,
    Text,
    Content,
    Phonetic,
}

#[derive(Debug)]
struct Param {
    name: String,
    kind: ParamKind,
    url: String,
    targets: Vec<String>,
    expression: Option<Expression>,
    source: String,
    special: Special,
    /// A string parameter that is one part of another (`family` of `name`): (that parameter,
    /// the part). It carries no keys of its own.
    covered: Option<(String, &'static str)>,
    /// A composite's parts: each an expression relative to the composite's items and the
    /// parameter of the same type that defines the part (its keys serve the plan).
    components: Vec<(Expression, Arc<Param>)>,
}

/// The search parameters of every resource type, with their compiled expressions.
#[derive(Debug, Clone)]
pub struct SearchIndex {
    types: HashMap<String, BTreeMap<String, Arc<Param>>>,
}

fn model() -> &'static DefinitionsModel {
    static MODEL: OnceLock<DefinitionsModel> = OnceLock::new();
    MODEL.get_or_init(|| DefinitionsModel::new(fhirwall_definitions::Definitions::core()))
}

fn kind_of(code: &str) -> Option<ParamKind> {
    Some(match code {
        "number" => ParamKind::Number,
        "date" => ParamKind::Date,
        "string" => ParamKind::String,
        "token" => ParamKind::Token,
        "reference" => ParamKind::Reference,
        "composite" => ParamKind::Composite,
        "quantity" => ParamKind::Quantity,
        "uri" => ParamKind::Uri,
        "special" => ParamKind::Special,
        _ => return None,
    })
}

/// Splits at top-level `|` (outside parentheses and quotes).
fn alternatives(expression: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quote = false;
    let mut current = String::new();
    let mut chars = expression.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quote => {
                current.push(c);
                if let Some(n) = chars.next() {
                    current.push(n);
                }
                continue;
            }
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            '|' if !quote && depth == 0 => {
                out.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The part of `expression` that applies to `resource_type`, with a `Resource.` start made
/// concrete.
fn expression_for(expression: &str, resource_type: &str) -> Option<String> {
    let mut kept = Vec::new();
    for alt in alternatives(expression) {
        let bare = alt.trim_start_matches('(');
        let prefix_len = alt.len() - bare.len();
        let starts = |t: &str| {
            bare.strip_prefix(t).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with(' ')
            })
        };
        if starts(resource_type) {
            kept.push(alt.clone());
        } else if starts("Resource") || starts("DomainResource") {
            let rest = bare
                .strip_prefix("DomainResource")
                .or_else(|| bare.strip_prefix("Resource"))
                .unwrap_or(bare);
            kept.push(format!(
                "{}{resource_type}{rest}",
                alt.get(..prefix_len).unwrap_or("")
            ));
        }
    }
    (!kept.is_empty()).then(|| kept.join(" | "))
}

fn all_types() -> impl Iterator<Item = &'static str> {
    fhirwall_model::generated::RESOURCE_TYPES
        .iter()
        .map(|t| t.name)
}

fn modifiers_of(kind: ParamKind) -> Vec<&'static str> {
    match kind {
        ParamKind::String => vec!["missing", "exact", "contains"],
        ParamKind::Token => vec!["missing", "not", "text", "in", "not-in", "of-type"],
        ParamKind::Reference => vec!["missing", "identifier", "[type]"],
        ParamKind::Uri => vec!["missing", "above", "below"],
        ParamKind::Date | ParamKind::Number | ParamKind::Quantity => vec!["missing"],
        _ => Vec::new(),
    }
}

impl SearchIndex {
    /// The parameters of the core package (built once, shared).
    pub fn core() -> &'static SearchIndex {
        static CORE: OnceLock<SearchIndex> = OnceLock::new();
        CORE.get_or_init(SearchIndex::build_core)
    }

    fn build_core() -> SearchIndex {
        let mut index = SearchIndex {
            types: HashMap::new(),
        };
        let defs: Vec<&SearchParamDef> = SEARCH_PARAMS.iter().collect();
        for def in defs {
            let _ = index.add(
                def.name,
                def.kind,
                def.bases,
                def.expression,
                def.targets,
                def.url,
                false,
            );
        }
        // Common parameters without an expression in the package.
        for t in all_types().chain(["Resource"]) {
            let map = index.types.entry(t.to_string()).or_default();
            for (name, kind, special, url) in [
                (
                    "_id",
                    ParamKind::Token,
                    Special::Id,
                    "http://hl7.org/fhir/SearchParameter/Resource-id",
                ),
                (
                    "_lastUpdated",
                    ParamKind::Date,
                    Special::LastUpdated,
                    "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
                ),
                (
                    "_text",
                    ParamKind::String,
                    Special::Text,
                    "http://hl7.org/fhir/SearchParameter/DomainResource-text",
                ),
                (
                    "_content",
                    ParamKind::String,
                    Special::Content,
                    "http://hl7.org/fhir/SearchParameter/Resource-content",
                ),
            ] {
                map.insert(
                    name.to_string(),
                    Arc::new(Param {
                        name: name.to_string(),
                        kind,
                        url: url.to_string(),
                        targets: Vec::new(),
                        expression: None,
                        source: String::new(),
                        special,
                        covered: None,
                        components: Vec::new(),
                    }),
                );
            }
        }
        index.mark_covered();
        for def in SEARCH_PARAMS.iter().filter(|d| d.kind == "composite") {
            index.add_composite(def);
        }
        index
    }

    fn add_composite(&mut self, def: &SearchParamDef) {
        for base in def.bases {
            let Some(map) = self.types.get_mut(*base) else {
                continue;
            };
            let Some(source) = expression_for(def.expression, base) else {
                continue;
            };
            let Ok(parsed) = fhirwall_fhirpath::parse(&source) else {
                continue;
            };
            let mut components = Vec::new();
            for component in def.components {
                let proxy = map
                    .values()
                    .find(|p| p.url == component.definition)
                    .cloned();
                let expression = fhirwall_fhirpath::parse(component.expression).ok();
                match (proxy, expression) {
                    (Some(p), Some(e)) => components.push((e, p)),
                    _ => break,
                }
            }
            if components.len() != def.components.len() || components.is_empty() {
                continue;
            }
            map.insert(
                def.name.to_string(),
                Arc::new(Param {
                    name: def.name.to_string(),
                    kind: ParamKind::Composite,
                    url: def.url.to_string(),
                    targets: Vec::new(),
                    expression: Some(parsed),
                    source,
                    special: Special::None,
                    covered: None,
                    components,
                }),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        name: &str,
        kind: &str,
        bases: &[&str],
        expression: &str,
        targets: &[&str],
        url: &str,
        replace: bool,
    ) -> Result<(), QueryError> {
        let kind = kind_of(kind)
            .ok_or_else(|| QueryError::Invalid(format!("unknown search parameter type {kind}")))?;
        if matches!(kind, ParamKind::Composite | ParamKind::Special) || expression.is_empty() {
            return Ok(());
        }
        let mut types: Vec<String> = Vec::new();
        for base in bases {
            match *base {
                "Resource" | "DomainResource" => {
                    types.extend(all_types().map(str::to_string));
                    types.push("Resource".to_string());
                }
                t => types.push(t.to_string()),
            }
        }
        for t in &types {
            let t = t.as_str();
            let map = self.types.entry(t.to_string()).or_default();
            if !replace && map.contains_key(name) {
                continue;
            }
            let source_type = if t == "Resource" { "Resource" } else { t };
            let Some(source) = expression_for(expression, source_type) else {
                continue;
            };
            let Ok(parsed) = fhirwall_fhirpath::parse(&source) else {
                continue;
            };
            let special = if name == "phonetic" {
                Special::Phonetic
            } else {
                Special::None
            };
            map.insert(
                name.to_string(),
                Arc::new(Param {
                    name: name.to_string(),
                    kind,
                    url: url.to_string(),
                    targets: targets.iter().map(|s| (*s).to_string()).collect(),
                    expression: Some(parsed),
                    source,
                    special,
                    covered: None,
                    components: Vec::new(),
                }),
            );
        }
        Ok(())
    }

    /// Finds string parameters that are a part of another (`T.a.b` beside `T.a`).
    fn mark_covered(&mut self) {
        for map in self.types.values_mut() {
            let strings: Vec<(String, String)> = map
                .values()
                .filter(|p| p.kind == ParamKind::String && p.special == Special::None)
                .map(|p| (p.name.clone(), p.source.clone()))
                .collect();
            for (name, source) in &strings {
                for (other, other_source) in &strings {
                    if other == name {
                        continue;
                    }
                    let Some(leaf) = source
                        .strip_prefix(other_source.as_str())
                        .and_then(|r| r.strip_prefix('.'))
                    else {
                        continue;
                    };
                    let Some(part) = STRING_PARTS.iter().find(|p| **p == leaf) else {
                        continue;
                    };
                    if let Some(param) = map.get(name) {
                        let mut copy = Param {
                            name: param.name.clone(),
                            kind: param.kind,
                            url: param.url.clone(),
                            targets: param.targets.clone(),
                            expression: param.expression.clone(),
                            source: param.source.clone(),
                            special: param.special,
                            covered: None,
                            components: param.components.clone(),
                        };
                        copy.covered = Some((other.clone(), part));
                        map.insert(name.clone(), Arc::new(copy));
                    }
                    break;
                }
            }
        }
    }

    /// A new index: this one plus SearchParameter resources registered at run time (each one
    /// checked: a known type, bases that exist, an expression that parses, no clash with a
    /// core parameter of the same name on the same base).
    pub fn with_custom(&self, search_parameters: &[Value]) -> Result<SearchIndex, QueryError> {
        let mut index = self.clone();
        for sp in search_parameters {
            let text = |k: &str| sp.get(k).and_then(Value::as_str);
            if text("resourceType") != Some("SearchParameter") {
                return Err(QueryError::Invalid("not a SearchParameter".into()));
            }
            if text("status") == Some("retired") {
                continue;
            }
            // A definition of the core specification (the package's own SearchParameters, as
            // its examples hold them) is already in force; it cannot be redefined.
            if let Some(core) = text("url").and_then(fhirwall_model::generated::search_param_by_url)
            {
                let same = text("code") == Some(core.name)
                    && text("type") == Some(core.kind)
                    && text("expression").unwrap_or("") == core.expression;
                if same {
                    continue;
                }
                return Err(QueryError::Invalid(format!(
                    "{} is the url of a parameter of the core specification, whose definition cannot be changed; give this SearchParameter a url of its own",
                    core.url
                )));
            }
            let code = text("code")
                .filter(|c| {
                    !c.is_empty()
                        && c.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
                .ok_or_else(|| {
                    QueryError::Invalid("code must be letters, digits, - or _".into())
                })?;
            let kind =
                text("type").ok_or_else(|| QueryError::Invalid("type is required".into()))?;
            let parsed_kind =
                kind_of(kind).ok_or_else(|| QueryError::Invalid(format!("unknown type {kind}")))?;
            if matches!(parsed_kind, ParamKind::Composite | ParamKind::Special) {
                return Err(QueryError::Invalid(format!(
                    "{kind} parameters cannot be registered on this server"
                )));
            }
            let expression = text("expression")
                .filter(|e| !e.is_empty())
                .ok_or_else(|| QueryError::Invalid("expression is required".into()))?;
            let bases: Vec<&str> = sp
                .get("base")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if bases.is_empty() {
                return Err(QueryError::Invalid("base is required".into()));
            }
            let url = text("url").unwrap_or_default();
            for base in &bases {
                if *base != "Resource" && !all_types().any(|t| t == *base) {
                    return Err(QueryError::Invalid(format!(
                        "base {base} is not a resource type"
                    )));
                }
                let known = SearchIndex::core()
                    .types
                    .get(*base)
                    .and_then(|m| m.get(code));
                if let Some(core) = known
                    && core.url != url
                {
                    return Err(QueryError::Invalid(format!(
                        "{base} already has a search parameter {code}"
                    )));
                }
                if expression_for(expression, base)
                    .and_then(|e| fhirwall_fhirpath::parse(&e).ok())
                    .is_none()
                {
                    return Err(QueryError::Invalid(format!(
                        "the expression has no valid part for {base}"
                    )));
                }
            }
            let targets: Vec<&str> = sp
                .get("target")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            index.add(code, kind, &bases, expression, &targets, url, true)?;
        }
        index.mark_covered();
        Ok(index)
    }

    fn param(&self, resource_type: &str, name: &str) -> Option<&Arc<Param>> {
        self.types.get(resource_type).and_then(|m| m.get(name))
    }

    /// The parameters a type supports, for the CapabilityStatement (common ones included).
    pub fn params(&self, resource_type: &str) -> Vec<ParamInfo> {
        let Some(map) = self.types.get(resource_type) else {
            return Vec::new();
        };
        map.values()
            .map(|p| ParamInfo {
                name: p.name.clone(),
                kind: p.kind,
                definition: p.url.clone(),
                modifiers: match p.special {
                    Special::Id | Special::LastUpdated => Vec::new(),
                    Special::Text | Special::Content => Vec::new(),
                    _ => modifiers_of(p.kind),
                },
                targets: p.targets.clone(),
            })
            .collect()
    }

    /// The nodes (typed) a parameter's expression selects.
    fn nodes<'a>(&self, param: &Param, resource: &'a Value) -> Vec<(String, &'a Value)> {
        let Some(expression) = &param.expression else {
            return Vec::new();
        };
        let context = fhirwall_fhirpath::Context::new(model(), resource);
        let Ok(items) = fhirwall_fhirpath::evaluate(expression, &context, Item::resource(resource))
        else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                let node = item.as_node()?;
                Some((node.type_name().unwrap_or("").to_string(), node.json()?))
            })
            .collect()
    }

    /// Every index key of a resource: sorted, without duplicates.
    pub fn keys(&self, resource_type: &str, resource: &Value, ctx: &Context<'_>) -> Vec<Key> {
        let mut out = Vec::new();
        let Some(map) = self.types.get(resource_type) else {
            return out;
        };
        for param in map.values() {
            if param.covered.is_some() || param.expression.is_none() {
                continue;
            }
            let nodes = self.nodes(param, resource);
            let key = |value: String| Key {
                domain: param.name.clone(),
                value,
            };
            match (param.special, param.kind) {
                (Special::Phonetic, _) => {
                    for (t, v) in &nodes {
                        for (part, s) in values::strings(t, v) {
                            if matches!(part, "family" | "given" | "") {
                                for word in s.split_whitespace() {
                                    if let Some(code) = values::soundex(word) {
                                        out.push(key(format!("ph:{code}")));
                                    }
                                }
                            }
                        }
                    }
                }
                (_, ParamKind::String) => {
                    for (t, v) in &nodes {
                        for (part, s) in values::strings(t, v) {
                            let domain = if part.is_empty() {
                                param.name.clone()
                            } else {
                                format!("{}.{part}", param.name)
                            };
                            let n = values::normalize(&s);
                            for (k, (end, _)) in
                                n.char_indices().skip(1).chain([(n.len(), ' ')]).enumerate()
                            {
                                if k >= PREFIX_KEYS {
                                    break;
                                }
                                if k + 1 < MIN_PREFIX_KEY {
                                    continue;
                                }
                                if let Some(prefix) = n.get(..end) {
                                    out.push(Key {
                                        domain: domain.clone(),
                                        value: format!("p{}:{prefix}", k + 1),
                                    });
                                }
                            }
                        }
                    }
                }
                (_, ParamKind::Token) => {
                    for (t, v) in &nodes {
                        for token in values::tokens(t, v) {
                            token_keys(&token, &mut |s| out.push(key(s)));
                        }
                    }
                }
                (_, ParamKind::Date) => {
                    for (t, v) in &nodes {
                        for range in values::dates(t, v) {
                            date_keys(range, &mut |s| out.push(key(s)));
                        }
                    }
                }
                (_, ParamKind::Number) => {
                    for (t, v) in &nodes {
                        for q in values::quantities(t, v) {
                            out.push(key(format!("m:{}", values::magnitude(q.low))));
                        }
                    }
                }
                (_, ParamKind::Quantity) => {
                    for (t, v) in &nodes {
                        for q in values::quantities(t, v) {
                            if let (Some(s), Some(c)) = (&q.system, &q.code) {
                                out.push(key(format!("q:{s}|{c}")));
                            }
                            for c in q.code.iter().chain(q.unit.iter()) {
                                out.push(key(format!("qc:{c}")));
                            }
                            if let Some((unit, _, _)) = &q.canonical {
                                out.push(key(format!("cu:{unit}")));
                            }
                            out.push(key(format!("m:{}", values::magnitude(q.low))));
                        }
                    }
                }
                (_, ParamKind::Reference) => {
                    for (t, v) in &nodes {
                        for r in values::references(t, v, ctx.base_url) {
                            if let Some((rt, id)) = &r.local {
                                out.push(key(format!("r:{rt}/{id}")));
                            }
                            if let Some(url) = &r.url {
                                out.push(key(format!("ru:{url}")));
                                if let Some((bare, _)) = url.split_once('|') {
                                    out.push(key(format!("ru:{bare}")));
                                }
                            }
                            if let Some((system, value)) = &r.identifier {
                                out.push(key(format!("ri:{value}")));
                                if let Some(s) = system {
                                    out.push(key(format!("ri:{s}|{value}")));
                                }
                            }
                        }
                    }
                }
                (_, ParamKind::Uri) => {
                    for (_, v) in &nodes {
                        if let Value::String(s) = v {
                            out.push(key(format!("u:{s}")));
                            for prefix in segment_prefixes(s) {
                                out.push(key(format!("ub:{prefix}")));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Parses one query parameter (`name[:modifier][.chain]=value[,value]`, the raw name and the
    /// raw, already percent-decoded value).
    pub fn parse(
        &self,
        resource_type: &str,
        name: &str,
        value: &str,
    ) -> Result<Criterion, QueryError> {
        self.parse_at(resource_type, name, value, 0, "")
    }

    /// [`SearchIndex::parse`] on a server whose base is `ctx.base_url`: absolute references
    /// under it are local.
    pub fn parse_in(
        &self,
        ctx: &Context<'_>,
        resource_type: &str,
        name: &str,
        value: &str,
    ) -> Result<Criterion, QueryError> {
        self.parse_at(resource_type, name, value, 0, ctx.base_url)
    }

    fn parse_at(
        &self,
        resource_type: &str,
        name: &str,
        value: &str,
        depth: usize,
        base: &str,
    ) -> Result<Criterion, QueryError> {
        if depth > MAX_DEPTH {
            return Err(QueryError::Invalid(
                "chains and _has nest at most 8 deep".into(),
            ));
        }
        let shown: String = name.chars().take(64).collect();
        if let Some(rest) = name.strip_prefix("_has:") {
            let mut parts = rest.splitn(3, ':');
            let (Some(source), Some(param), Some(inner)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(QueryError::Invalid(
                    "_has takes _has:Type:reference-parameter:parameter=value".into(),
                ));
            };
            let reference = self
                .param(source, param)
                .filter(|p| p.kind == ParamKind::Reference)
                .ok_or_else(|| QueryError::UnknownParameter(shown.clone()))?;
            let inner = self.parse_at(source, inner, value, depth + 1, base)?;
            return Ok(Criterion {
                name: name.to_string(),
                inner: Inner::Has {
                    source: source.to_string(),
                    param: reference.name.clone(),
                    inner: Box::new(inner),
                },
            });
        }
        if name == "_list" {
            if value.contains(',') || value.is_empty() {
                return Err(QueryError::Invalid("_list takes one List id".into()));
            }
            return Ok(Criterion {
                name: name.to_string(),
                inner: Inner::List(value.to_string()),
            });
        }
        // A chain: `param[:Type].rest`.
        if let Some((head, rest)) = name.split_once('.') {
            let (param_name, type_modifier) = match head.split_once(':') {
                Some((p, t)) => (p, Some(t)),
                None => (head, None),
            };
            let param = self
                .param(resource_type, param_name)
                .filter(|p| p.kind == ParamKind::Reference)
                .ok_or_else(|| QueryError::UnknownParameter(shown.clone()))?;
            let candidates: Vec<String> = match type_modifier {
                Some(t) => vec![t.to_string()],
                None if param.targets.is_empty() => all_types().map(str::to_string).collect(),
                None => param.targets.clone(),
            };
            let mut per_type = Vec::new();
            for t in &candidates {
                match self.parse_at(t, rest, value, depth + 1, base) {
                    Ok(c) => per_type.push((t.clone(), c)),
                    Err(QueryError::UnknownParameter(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if per_type.is_empty() {
                return Err(QueryError::UnknownParameter(shown));
            }
            let targets = per_type.iter().map(|(t, _)| t.clone()).collect();
            return Ok(Criterion {
                name: name.to_string(),
                inner: Inner::Chain {
                    param: param.name.clone(),
                    targets,
                    inner: Box::new(Criterion {
                        name: rest.to_string(),
                        inner: Inner::PerType(per_type),
                    }),
                },
            });
        }
        let (param_name, modifier) = match name.split_once(':') {
            Some((p, m)) => (p, Some(m)),
            None => (name, None),
        };
        let param = self
            .param(resource_type, param_name)
            .ok_or_else(|| QueryError::UnknownParameter(shown.clone()))?
            .clone();
        if value.is_empty() {
            return Err(QueryError::Invalid(format!("{shown} needs a value")));
        }
        if modifier == Some("missing") {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(QueryError::Invalid(format!("{shown} takes true or false"))),
            };
            return Ok(Criterion {
                name: name.to_string(),
                inner: Inner::Missing { param, missing },
            });
        }
        let raw = split_escaped(value, ',');
        if raw.len() > MAX_ALTERNATIVES {
            return Err(QueryError::Invalid(format!(
                "A parameter takes at most {MAX_ALTERNATIVES} comma-separated values."
            )));
        }
        if raw.iter().any(String::is_empty) {
            return Err(QueryError::Invalid(format!("{shown} has an empty value")));
        }
        let modifier = Modifier::parse(modifier, &param, &shown)?;
        let mut values = Vec::with_capacity(raw.len());
        for v in &raw {
            values.push(QValue::parse(&param, &modifier, v, &shown, base)?);
        }
        Ok(Criterion {
            name: name.to_string(),
            inner: Inner::Values {
                param,
                modifier,
                values,
            },
        })
    }

    /// The keys under which resources of `resource_type` whose reference parameter `param`
    /// points to `target_type/target_id` are indexed (exact: a posting means a match).
    pub fn reference_keys(
        &self,
        resource_type: &str,
        param: &str,
        target_type: &str,
        target_id: &str,
    ) -> Vec<Key> {
        match self.param(resource_type, param) {
            Some(p) if p.kind == ParamKind::Reference => vec![Key {
                domain: p.name.clone(),
                value: format!("r:{target_type}/{target_id}"),
            }],
            _ => Vec::new(),
        }
    }

    /// The local resources a resource refers to through reference parameter `param` (`*` for
    /// all of its reference parameters), as (type, id); `target_type` keeps only that type.
    pub fn references(
        &self,
        resource_type: &str,
        param: &str,
        target_type: Option<&str>,
        resource: &Value,
        ctx: &Context<'_>,
    ) -> Result<Vec<(String, String)>, QueryError> {
        let params: Vec<&Arc<Param>> = if param == "*" {
            self.types
                .get(resource_type)
                .map(|m| {
                    m.values()
                        .filter(|p| p.kind == ParamKind::Reference)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            match self.param(resource_type, param) {
                Some(p) if p.kind == ParamKind::Reference => vec![p],
                _ => return Err(QueryError::UnknownParameter(param.to_string())),
            }
        };
        let mut out = Vec::new();
        for p in params {
            for (t, v) in self.nodes(p, resource) {
                for r in values::references(&t, v, ctx.base_url) {
                    if let Some((rt, id)) = r.local
                        && target_type.is_none_or(|t| t == rt)
                        && !out.contains(&(rt.clone(), id.clone()))
                    {
                        out.push((rt, id));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The value a resource sorts by on `param`: the lowest for ascending, the highest for
    /// descending; None when it has none (those sort last).
    pub fn sort_key(
        &self,
        resource_type: &str,
        param: &str,
        descending: bool,
        resource: &Value,
    ) -> Result<Option<SortKey>, QueryError> {
        let p = self
            .param(resource_type, param)
            .ok_or_else(|| QueryError::UnknownParameter(param.to_string()))?;
        let nodes = self.nodes(p, resource);
        let mut keys: Vec<SortKey> = Vec::new();
        match p.kind {
            ParamKind::String => {
                for (t, v) in &nodes {
                    for (_, s) in values::strings(t, v) {
                        keys.push(SortKey::Text(values::normalize(&s)));
                    }
                }
            }
            ParamKind::Date => {
                for (t, v) in &nodes {
                    for r in values::dates(t, v) {
                        keys.push(SortKey::Instant(if descending { r.high } else { r.low }));
                    }
                }
            }
            ParamKind::Number | ParamKind::Quantity => {
                for (t, v) in &nodes {
                    for q in values::quantities(t, v) {
                        keys.push(SortKey::Number(q.canonical.map_or(q.low, |c| c.1)));
                    }
                }
            }
            ParamKind::Token => {
                for (t, v) in &nodes {
                    for token in values::tokens(t, v) {
                        keys.push(SortKey::Text(token.code));
                    }
                }
            }
            ParamKind::Reference | ParamKind::Uri => {
                for (t, v) in &nodes {
                    for r in values::references(t, v, "") {
                        if let Some((rt, id)) = r.local {
                            keys.push(SortKey::Text(format!("{rt}/{id}")));
                        } else if let Some(url) = r.url {
                            keys.push(SortKey::Text(url));
                        }
                    }
                }
            }
            _ => {
                return Err(QueryError::Invalid(format!("cannot sort by {param}")));
            }
        }
        let pick = keys.into_iter().reduce(|a, b| {
            let a_first = a.partial_cmp(&b) != Some(std::cmp::Ordering::Greater);
            if a_first != descending { a } else { b }
        });
        Ok(pick)
    }
}

/// `/`-boundary prefixes of a URI, the value itself included (at most 12).
fn segment_prefixes(uri: &str) -> Vec<String> {
    let mut out: Vec<String> = uri
        .match_indices('/')
        .map(|(i, _)| uri.get(..i).unwrap_or("").to_string())
        .filter(|p| !p.is_empty() && !p.ends_with(':') && !p.ends_with('/'))
        .take(11)
        .collect();
    out.push(uri.trim_end_matches('/').to_string());
    out
}

fn words_of(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .flat_map(|t| {
            values::normalize(t)
                .split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn first3(word: &str) -> Option<&str> {
    let end = word.char_indices().nth(3).map_or(word.len(), |(i, _)| i);
    (word.chars().count() >= 3)
        .then(|| word.get(..end))
        .flatten()
}

fn token_keys(token: &Token, push: &mut dyn FnMut(String)) {
    if !token.code.is_empty() {
        push(format!("c:{}", token.code));
        match &token.system {
            Some(s) => {
                push(format!("sv:{s}|{}", token.code));
                push(format!("s:{s}|"));
            }
            None if token.implicit => push(format!("ic:{}", token.code)),
            None => push(format!("ns:{}", token.code)),
        }
        for (ts, tc) in &token.types {
            push(format!(
                "ot:{}|{tc}|{}",
                ts.as_deref().unwrap_or(""),
                token.code
            ));
        }
    }
    for word in words_of(&token.texts) {
        if let Some(f) = first3(&word) {
            push(format!("tw:{f}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Date buckets

#[derive(Clone, Copy)]
enum Level {
    Millennium,
    Century,
    Decade,
    Year,
    Month,
    Day,
}

fn bucket(level: Level, day: i64) -> String {
    let (y, m, d) = values::civil_from_days(day);
    match level {
        Level::Millennium => format!("M{}", y.div_euclid(1000)),
        Level::Century => format!("C{}", y.div_euclid(100)),
        Level::Decade => format!("D{}", y.div_euclid(10)),
        Level::Year => format!("Y{y}"),
        Level::Month => format!("m{y}-{m}"),
        Level::Day => format!("d{y}-{m}-{d}"),
    }
}

const DAY_MS: i64 = 86_400_000;
const MIN_DAY: i64 = values::MIN_MS / DAY_MS;
const MAX_DAY: i64 = values::MAX_MS.div_euclid(DAY_MS);

fn date_keys(range: Range, push: &mut dyn FnMut(String)) {
    let levels = [
        Level::Millennium,
        Level::Century,
        Level::Decade,
        Level::Year,
        Level::Month,
        Level::Day,
    ];
    if range.low <= values::MIN_MS {
        push("s:-".into());
    } else {
        let day = range.low.div_euclid(DAY_MS);
        for l in levels {
            push(format!("s:{}", bucket(l, day)));
        }
    }
    if range.high >= values::MAX_MS {
        push("e:+".into());
    } else {
        let day = range.high.div_euclid(DAY_MS);
        for l in levels {
            push(format!("e:{}", bucket(l, day)));
        }
    }
}

/// The first day of the bucket at `level` holding `day`, and the bucket's last day.
fn bucket_span(level: Level, day: i64) -> (i64, i64) {
    let (y, m, _) = values::civil_from_days(day);
    let years = |from: i64, n: i64| {
        (
            values::days_from_civil(from, 1, 1),
            values::days_from_civil(from + n, 1, 1) - 1,
        )
    };
    match level {
        Level::Millennium => years(y.div_euclid(1000) * 1000, 1000),
        Level::Century => years(y.div_euclid(100) * 100, 100),
        Level::Decade => years(y.div_euclid(10) * 10, 10),
        Level::Year => years(y, 1),
        Level::Month => {
            let first = values::days_from_civil(y, m, 1);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (first, values::days_from_civil(ny, nm, 1) - 1)
        }
        Level::Day => (day, day),
    }
}

/// Buckets that together cover the days `from..=to` exactly (`side` is `s` or `e`).
fn tile(side: &str, from: i64, to: i64, out: &mut Vec<String>) {
    let levels = [
        Level::Millennium,
        Level::Century,
        Level::Decade,
        Level::Year,
        Level::Month,
        Level::Day,
    ];
    let mut day = from.max(MIN_DAY);
    let to = to.min(MAX_DAY);
    let mut guard = 0;
    while day <= to && guard < 400 {
        guard += 1;
        let mut chosen = None;
        for l in levels {
            let (start, end) = bucket_span(l, day);
            if start == day && end <= to {
                chosen = Some((l, end));
                break;
            }
        }
        let (l, end) = chosen.unwrap_or((Level::Day, day));
        out.push(format!("{side}:{}", bucket(l, day)));
        day = end + 1;
    }
}

/// The start or end keys of values whose start (or end) lies in `from..=to` (ms; `None`
/// unbounded), open ends included when unbounded on their side.
fn date_plan(side: &str, from: Option<i64>, to: Option<i64>) -> Vec<String> {
    let mut out = Vec::new();
    let from_day = from.map_or(MIN_DAY, |ms| ms.div_euclid(DAY_MS));
    let to_day = to.map_or(MAX_DAY, |ms| ms.div_euclid(DAY_MS));
    tile(side, from_day, to_day, &mut out);
    if side == "s" && from.is_none() {
        out.push("s:-".into());
    }
    if side == "e" && to.is_none() {
        out.push("e:+".into());
    }
    out
}

// ---------------------------------------------------------------------------------------
// Queries

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

fn split_prefix(value: &str) -> (Prefix, &str) {
    let table = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in table {
        if let Some(rest) = value.strip_prefix(text)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// Splits at `sep` not escaped by `\`, unescaping `\,` `\|` `\$` `\\`.
fn split_escaped(value: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) if n != sep => {
                    current.push('\\');
                    current.push(n);
                }
                Some(n) => {
                    if n == sep {
                        current.push('\\');
                    }
                    current.push(n);
                }
                None => current.push('\\'),
            }
        } else if c == sep {
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    out.push(current);
    out
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Modifier {
    None,
    Exact,
    Contains,
    Text,
    Not,
    Above,
    Below,
    In,
    NotIn,
    OfType,
    Identifier,
    Type(String),
}

impl Modifier {
    fn parse(text: Option<&str>, param: &Param, shown: &str) -> Result<Modifier, QueryError> {
        let Some(text) = text else {
            return Ok(Modifier::None);
        };
        let bad = || {
            QueryError::Invalid(format!(
                "the modifier :{text} does not apply to {shown} (a {} parameter); it takes {}",
                param.kind.code(),
                modifiers_of(param.kind).join(", ")
            ))
        };
        let modifier = match (param.kind, text) {
            (ParamKind::String, "exact") => Modifier::Exact,
            (ParamKind::String, "contains") => Modifier::Contains,
            (ParamKind::Token, "text") => Modifier::Text,
            (ParamKind::Token, "not") => Modifier::Not,
            (ParamKind::Token, "of-type") => Modifier::OfType,
            (ParamKind::Token, "in") => Modifier::In,
            (ParamKind::Token, "not-in") => Modifier::NotIn,
            (ParamKind::Uri, "above") => Modifier::Above,
            (ParamKind::Uri, "below") => Modifier::Below,
            (ParamKind::Reference, "identifier") => Modifier::Identifier,
            (ParamKind::Reference, t) if all_types().any(|x| x == t) => {
                if !param.targets.is_empty() && !param.targets.iter().any(|x| x == t) {
                    return Err(QueryError::Invalid(format!("{shown} cannot refer to {t}")));
                }
                Modifier::Type(t.to_string())
            }
            (ParamKind::Token, "above" | "below") => {
                return Err(QueryError::Invalid(format!(
                    ":{text} on tokens needs code system hierarchies, which this server does not hold; search by the codes themselves"
                )));
            }
            _ => return Err(bad()),
        };
        Ok(modifier)
    }
}

#[derive(Debug, Clone)]
enum QValue {
    Token {
        /// None: any system; Some(None): no system; Some(Some(s)): that system.
        system: Option<Option<String>>,
        code: Option<String>,
    },
    OfType {
        system: String,
        code: String,
        value: String,
    },
    Text(String),
    ValueSet(Vec<(String, String)>),
    Str(String),
    Date(Prefix, Range),
    Number(Prefix, f64, f64),
    Quantity {
        prefix: Prefix,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Ref {
        local: Option<(Option<String>, String)>,
        url: Option<String>,
    },
    RefIdentifier(Option<String>, String),
    Uri(String),
    Composite(Vec<QValue>),
}

impl QValue {
    fn parse(
        param: &Param,
        modifier: &Modifier,
        raw: &str,
        shown: &str,
        base: &str,
    ) -> Result<QValue, QueryError> {
        let invalid = |what: &str| QueryError::Invalid(format!("{shown}: {what}"));
        match param.special {
            Special::Id => return Ok(QValue::Str(unescape(raw))),
            Special::LastUpdated => {
                let (prefix, rest) = split_prefix(raw);
                let range = values::date_range(rest)
                    .ok_or_else(|| invalid("a date is YYYY, YYYY-MM, YYYY-MM-DD or a dateTime"))?;
                return Ok(QValue::Date(prefix, range));
            }
            Special::Text | Special::Content | Special::Phonetic => {
                return Ok(QValue::Str(unescape(raw)));
            }
            Special::None => {}
        }
        Ok(match (param.kind, modifier) {
            (ParamKind::Token, Modifier::Text) => QValue::Text(unescape(raw)),
            (ParamKind::Token, Modifier::OfType) => {
                let parts: Vec<String> = split_escaped(raw, '|')
                    .iter()
                    .map(|p| unescape(p))
                    .collect();
                match parts.as_slice() {
                    [s, c, v] if !c.is_empty() && !v.is_empty() => QValue::OfType {
                        system: s.clone(),
                        code: c.clone(),
                        value: v.clone(),
                    },
                    _ => return Err(invalid(":of-type takes type-system|type-code|value")),
                }
            }
            (ParamKind::Token, Modifier::In | Modifier::NotIn) => {
                let url = unescape(raw);
                let vs = fhirwall_definitions::Definitions::core()
                    .value_set(&url)
                    .ok_or_else(|| invalid("the value set is not one this server holds (it holds the core package's required bindings)"))?;
                if vs.is_incomplete() {
                    return Err(invalid(
                        "the server holds only part of this value set, so :in and :not-in cannot be decided",
                    ));
                }
                let codes = vs
                    .codes()
                    .map(|(system, code)| (system.to_string(), code.to_string()))
                    .collect();
                QValue::ValueSet(codes)
            }
            (ParamKind::Token, _) => {
                let parts = split_escaped(raw, '|');
                match parts.as_slice() {
                    [code] => QValue::Token {
                        system: None,
                        code: Some(unescape(code)),
                    },
                    [system, code] => {
                        let system = unescape(system);
                        let code = unescape(code);
                        if system.is_empty() && code.is_empty() {
                            return Err(invalid(
                                "a token takes code, system|code, |code or system|",
                            ));
                        }
                        QValue::Token {
                            system: Some((!system.is_empty()).then_some(system)),
                            code: (!code.is_empty()).then_some(code),
                        }
                    }
                    _ => return Err(invalid("a token takes code, system|code, |code or system|")),
                }
            }
            (ParamKind::String, _) => QValue::Str(unescape(raw)),
            (ParamKind::Date, _) => {
                let (prefix, rest) = split_prefix(raw);
                let range = values::date_range(rest)
                    .ok_or_else(|| invalid("a date is YYYY, YYYY-MM, YYYY-MM-DD or a dateTime such as 2024-05-01T10:00:00Z, after an optional prefix (eq, ne, gt, lt, ge, le, sa, eb, ap)"))?;
                QValue::Date(prefix, range)
            }
            (ParamKind::Number, _) => {
                let (prefix, rest) = split_prefix(raw);
                let (_, low, high) = values::number_range(rest)
                    .ok_or_else(|| invalid("a number, after an optional prefix"))?;
                QValue::Number(prefix, low, high)
            }
            (ParamKind::Quantity, _) => {
                let (prefix, rest) = split_prefix(raw);
                let parts: Vec<String> = split_escaped(rest, '|')
                    .iter()
                    .map(|p| unescape(p))
                    .collect();
                let (number, system, code) = match parts.as_slice() {
                    [n] => (n.clone(), None, None),
                    [n, s, c] => (
                        n.clone(),
                        (!s.is_empty()).then(|| s.clone()),
                        (!c.is_empty()).then(|| c.clone()),
                    ),
                    _ => return Err(invalid("a quantity is [prefix]number[|system|code]")),
                };
                let (_, mut low, mut high) = values::number_range(&number)
                    .ok_or_else(|| invalid("a quantity starts with a number"))?;
                let mut system = system;
                let mut code = code;
                if system.as_deref() == Some("http://unitsofmeasure.org")
                    && let Some((unit, f, o)) = code.as_deref().and_then(values::ucum_canonical)
                {
                    let (a, b) = (low * f + o, high * f + o);
                    low = a.min(b);
                    high = a.max(b);
                    system = Some("canonical".into());
                    code = Some(unit);
                }
                QValue::Quantity {
                    prefix,
                    low,
                    high,
                    system,
                    code,
                }
            }
            (ParamKind::Reference, Modifier::Identifier) => {
                let parts: Vec<String> = split_escaped(raw, '|')
                    .iter()
                    .map(|p| unescape(p))
                    .collect();
                match parts.as_slice() {
                    [v] => QValue::RefIdentifier(None, v.clone()),
                    [s, v] if !v.is_empty() => {
                        QValue::RefIdentifier((!s.is_empty()).then(|| s.clone()), v.clone())
                    }
                    _ => return Err(invalid(":identifier takes system|value or value")),
                }
            }
            (ParamKind::Reference, m) => {
                let text = unescape(raw);
                let forced = match m {
                    Modifier::Type(t) => Some(t.clone()),
                    _ => None,
                };
                if let Some((t, id)) = values::local_of(&text, base) {
                    if forced.as_ref().is_some_and(|f| *f != t) {
                        return Err(invalid("the modifier names another type than the value"));
                    }
                    QValue::Ref {
                        local: Some((Some(t), id)),
                        url: None,
                    }
                } else if text.contains("://") || text.starts_with("urn:") {
                    QValue::Ref {
                        local: None,
                        url: Some(text),
                    }
                } else if text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    && text.len() <= 64
                {
                    QValue::Ref {
                        local: Some((forced, text)),
                        url: None,
                    }
                } else {
                    return Err(invalid("a reference is id, Type/id or a URL"));
                }
            }
            (ParamKind::Uri, _) => QValue::Uri(unescape(raw)),
            (ParamKind::Composite, Modifier::None) => {
                let parts = split_escaped(raw, '$');
                if parts.len() != param.components.len() {
                    return Err(invalid(&format!(
                        "a composite takes {} parts separated by $",
                        param.components.len()
                    )));
                }
                let mut out = Vec::new();
                for (part, (_, proxy)) in parts.iter().zip(&param.components) {
                    out.push(QValue::parse(proxy, &Modifier::None, part, shown, base)?);
                }
                QValue::Composite(out)
            }
            _ => return Err(invalid("this parameter type cannot be searched here")),
        })
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Values {
        param: Arc<Param>,
        modifier: Modifier,
        values: Vec<QValue>,
    },
    Missing {
        param: Arc<Param>,
        missing: bool,
    },
    Chain {
        param: String,
        targets: Vec<String>,
        inner: Box<Criterion>,
    },
    PerType(Vec<(String, Criterion)>),
    Has {
        source: String,
        param: String,
        inner: Box<Criterion>,
    },
    List(String),
}

/// A parsed search criterion on one resource type. All of a query's criteria must hold (AND);
/// within one, the comma-separated values are alternatives (OR).
#[derive(Debug, Clone)]
pub struct Criterion {
    name: String,
    inner: Inner,
}

fn key(param: &Param, value: String) -> Key {
    Key {
        domain: param.name.clone(),
        value,
    }
}

/// The instants of the implicit range above or below a search range, for `_lastUpdated`.
fn windows(prefix: Prefix, q: Range) -> Vec<Window> {
    let span = (q.high - q.low).max(1);
    match prefix {
        Prefix::Eq => vec![Window {
            from: Some(q.low),
            to: Some(q.high),
        }],
        Prefix::Ne => vec![
            Window {
                from: None,
                to: Some(q.low - 1),
            },
            Window {
                from: Some(q.high + 1),
                to: None,
            },
        ],
        Prefix::Gt | Prefix::Sa => vec![Window {
            from: Some(q.high + 1),
            to: None,
        }],
        Prefix::Lt | Prefix::Eb => vec![Window {
            from: None,
            to: Some(q.low - 1),
        }],
        Prefix::Ge => vec![Window {
            from: Some(q.low),
            to: None,
        }],
        Prefix::Le => vec![Window {
            from: None,
            to: Some(q.high),
        }],
        Prefix::Ap => vec![Window {
            from: Some(q.low - span / 10 - DAY_MS),
            to: Some(q.high + span / 10 + DAY_MS),
        }],
    }
}

/// Whether a value range matches a search range under a prefix (R4's implicit ranges).
fn range_matches(prefix: Prefix, v_low: f64, v_high: f64, q_low: f64, q_high: f64) -> bool {
    let contained = v_low >= q_low && v_high <= q_high;
    match prefix {
        Prefix::Eq => contained,
        Prefix::Ne => !contained,
        Prefix::Gt => v_high > q_high,
        Prefix::Lt => v_low < q_low,
        Prefix::Ge => v_high > q_high || contained,
        Prefix::Le => v_low < q_low || contained,
        Prefix::Sa => v_low > q_high,
        Prefix::Eb => v_high < q_low,
        Prefix::Ap => {
            let slack = ((q_high - q_low).abs() * 0.1).max(q_low.abs() * 0.1);
            v_low <= q_high + slack && v_high >= q_low - slack
        }
    }
}

fn date_plan_of(prefix: Prefix, q: Range) -> Plan {
    let any = |v: Vec<String>| v;
    let keys = match prefix {
        Prefix::Eq => {
            return Plan::All(vec![
                Plan::AnyOf(
                    date_plan("s", Some(q.low), Some(q.high))
                        .into_iter()
                        .map(|v| Key {
                            domain: String::new(),
                            value: v,
                        })
                        .collect(),
                ),
                Plan::AnyOf(
                    date_plan("e", Some(q.low), Some(q.high))
                        .into_iter()
                        .map(|v| Key {
                            domain: String::new(),
                            value: v,
                        })
                        .collect(),
                ),
            ]);
        }
        Prefix::Ne => return Plan::Everything,
        Prefix::Gt | Prefix::Ge => any(date_plan(
            "e",
            Some(if prefix == Prefix::Gt { q.high } else { q.low }),
            None,
        )),
        Prefix::Lt | Prefix::Le => any(date_plan(
            "s",
            None,
            Some(if prefix == Prefix::Lt { q.low } else { q.high }),
        )),
        Prefix::Sa => any(date_plan("s", Some(q.high), None)),
        Prefix::Eb => any(date_plan("e", None, Some(q.low))),
        Prefix::Ap => {
            let span = (q.high - q.low).max(1);
            let lo = q.low - span / 10 - DAY_MS;
            let hi = q.high + span / 10 + DAY_MS;
            return Plan::All(vec![
                Plan::AnyOf(
                    date_plan("s", None, Some(hi))
                        .into_iter()
                        .map(|v| Key {
                            domain: String::new(),
                            value: v,
                        })
                        .collect(),
                ),
                Plan::AnyOf(
                    date_plan("e", Some(lo), None)
                        .into_iter()
                        .map(|v| Key {
                            domain: String::new(),
                            value: v,
                        })
                        .collect(),
                ),
            ]);
        }
    };
    Plan::AnyOf(
        keys.into_iter()
            .map(|v| Key {
                domain: String::new(),
                value: v,
            })
            .collect(),
    )
}

/// Sets the domain of every key of a plan.
fn in_domain(plan: Plan, domain: &str) -> Plan {
    match plan {
        Plan::AnyOf(keys) => Plan::AnyOf(
            keys.into_iter()
                .map(|k| Key {
                    domain: if k.domain.is_empty() {
                        domain.to_string()
                    } else {
                        k.domain
                    },
                    value: k.value,
                })
                .collect(),
        ),
        Plan::All(plans) => Plan::All(plans.into_iter().map(|p| in_domain(p, domain)).collect()),
        other => other,
    }
}

/// The union of alternatives' plans, as a superset when they are not all simple key lists.
fn union(plans: Vec<Plan>) -> Plan {
    let mut keys = Vec::new();
    for plan in plans {
        match plan {
            Plan::AnyOf(k) => keys.extend(k),
            Plan::All(parts) => match parts.into_iter().next() {
                Some(Plan::AnyOf(k)) => keys.extend(k),
                _ => return Plan::Everything,
            },
            _ => return Plan::Everything,
        }
    }
    keys.sort();
    keys.dedup();
    Plan::AnyOf(keys)
}

fn magnitudes(low: f64, high: f64) -> Option<Vec<String>> {
    if !low.is_finite() || !high.is_finite() || low <= 0.0 || high <= 0.0 {
        return None;
    }
    let a = low.log10().floor() as i64;
    let b = high.log10().floor() as i64;
    (b - a <= 12).then(|| (a..=b).map(|e| format!("m:+{e}")).collect())
}

impl Criterion {
    /// The parameter name as the client wrote it (with modifier and chain), for reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The criterion as it applies on `resource_type` (a chain's inner criterion names a
    /// parameter that several target types share); None when that type lacks it.
    pub fn for_type(&self, resource_type: &str) -> Option<Criterion> {
        match &self.inner {
            Inner::PerType(list) => list
                .iter()
                .find(|(t, _)| t == resource_type)
                .map(|(_, c)| c.clone()),
            _ => Some(self.clone()),
        }
    }

    /// For chained and `_has` criteria, what the service must resolve first; None otherwise.
    pub fn link(&self) -> Option<Link<'_>> {
        match &self.inner {
            Inner::Chain {
                param,
                targets,
                inner,
            } => Some(Link::Chain {
                param,
                target_types: targets,
                inner,
            }),
            Inner::Has {
                source,
                param,
                inner,
            } => Some(Link::Has {
                source_type: source,
                param,
                inner,
            }),
            Inner::List(id) => Some(Link::List { list_id: id }),
            _ => None,
        }
    }

    /// A superset of the matches, as index keys. For a link, the plan of the outer criterion
    /// comes from the service (reference keys or ids); this returns `Everything`.
    pub fn plan(&self) -> Plan {
        let Inner::Values {
            param,
            modifier,
            values,
            ..
        } = &self.inner
        else {
            return Plan::Everything;
        };
        match param.special {
            Special::Id => {
                return Plan::Ids(
                    values
                        .iter()
                        .filter_map(|v| match v {
                            QValue::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                );
            }
            Special::LastUpdated => {
                return Plan::LastUpdated(
                    values
                        .iter()
                        .flat_map(|v| match v {
                            QValue::Date(p, r) => windows(*p, *r),
                            _ => Vec::new(),
                        })
                        .collect(),
                );
            }
            Special::Text | Special::Content => return Plan::Everything,
            Special::Phonetic => {
                let mut keys = Vec::new();
                for v in values {
                    if let QValue::Str(s) = v {
                        for word in s.split_whitespace() {
                            if let Some(code) = values::soundex(word) {
                                keys.push(key(param, format!("ph:{code}")));
                            }
                        }
                    }
                }
                return Plan::AnyOf(keys);
            }
            Special::None => {}
        }
        let mut plans = Vec::new();
        for value in values {
            let plan = match (param.kind, modifier, value) {
                (ParamKind::String, Modifier::Contains, _) => return Plan::Everything,
                (ParamKind::String, _, QValue::Str(s)) => {
                    let n = values::normalize(s);
                    if n.chars().count() < MIN_PREFIX_KEY {
                        return Plan::Everything;
                    }
                    let count = n.chars().count().min(PREFIX_KEYS);
                    let end = n.char_indices().nth(count).map_or(n.len(), |(i, _)| i);
                    let prefix = format!("p{count}:{}", n.get(..end).unwrap_or(""));
                    let domains: Vec<String> = match &param.covered {
                        Some((owner, part)) => vec![format!("{owner}.{part}")],
                        None => std::iter::once(param.name.clone())
                            .chain(STRING_PARTS.iter().map(|p| format!("{}.{p}", param.name)))
                            .collect(),
                    };
                    Plan::AnyOf(
                        domains
                            .into_iter()
                            .map(|domain| Key {
                                domain,
                                value: prefix.clone(),
                            })
                            .collect(),
                    )
                }
                (ParamKind::Token, Modifier::Not | Modifier::NotIn, _) => {
                    return Plan::Everything;
                }
                (ParamKind::Token, _, QValue::Text(t)) => {
                    let words: Vec<String> = words_of(std::slice::from_ref(t));
                    let mut parts = Vec::new();
                    for w in &words {
                        match first3(w) {
                            Some(f) => parts.push(Plan::AnyOf(vec![key(param, format!("tw:{f}"))])),
                            None => return Plan::Everything,
                        }
                    }
                    if parts.is_empty() {
                        return Plan::Everything;
                    }
                    Plan::All(parts)
                }
                (
                    ParamKind::Token,
                    _,
                    QValue::OfType {
                        system,
                        code,
                        value,
                    },
                ) => Plan::AnyOf(vec![key(param, format!("ot:{system}|{code}|{value}"))]),
                (ParamKind::Token, _, QValue::ValueSet(codes)) => Plan::AnyOf(
                    codes
                        .iter()
                        .map(|(s, c)| key(param, format!("sv:{s}|{c}")))
                        .collect(),
                ),
                (ParamKind::Token, _, QValue::Token { system, code }) => match (system, code) {
                    (None, Some(c)) => Plan::AnyOf(vec![key(param, format!("c:{c}"))]),
                    (Some(None), Some(c)) => Plan::AnyOf(vec![key(param, format!("ns:{c}"))]),
                    (Some(Some(s)), Some(c)) => Plan::AnyOf(vec![
                        key(param, format!("sv:{s}|{c}")),
                        key(param, format!("ic:{c}")),
                    ]),
                    (Some(Some(s)), None) => Plan::AnyOf(vec![key(param, format!("s:{s}|"))]),
                    _ => return Plan::Everything,
                },
                (ParamKind::Date, _, QValue::Date(p, r)) => {
                    in_domain(date_plan_of(*p, *r), &param.name)
                }
                (ParamKind::Number, _, QValue::Number(p, lo, hi)) => {
                    match (p, magnitudes(*lo, *hi)) {
                        (Prefix::Eq, Some(m)) => {
                            Plan::AnyOf(m.into_iter().map(|v| key(param, v)).collect())
                        }
                        _ => return Plan::Everything,
                    }
                }
                (
                    ParamKind::Quantity,
                    _,
                    QValue::Quantity {
                        prefix,
                        low,
                        high,
                        system,
                        code,
                    },
                ) => match (system.as_deref(), code) {
                    (Some("canonical"), Some(u)) => {
                        Plan::AnyOf(vec![key(param, format!("cu:{u}"))])
                    }
                    (Some(s), Some(c)) => Plan::AnyOf(vec![key(param, format!("q:{s}|{c}"))]),
                    (None, Some(c)) => Plan::AnyOf(vec![key(param, format!("qc:{c}"))]),
                    _ => match (prefix, magnitudes(*low, *high)) {
                        (Prefix::Eq, Some(m)) => {
                            Plan::AnyOf(m.into_iter().map(|v| key(param, v)).collect())
                        }
                        _ => return Plan::Everything,
                    },
                },
                (ParamKind::Reference, _, QValue::Ref { local, url }) => match (local, url) {
                    (Some((Some(t), id)), _) => {
                        Plan::AnyOf(vec![key(param, format!("r:{t}/{id}"))])
                    }
                    (Some((None, id)), _) => {
                        let targets: Vec<String> = if param.targets.is_empty() {
                            all_types().map(str::to_string).collect()
                        } else {
                            param.targets.clone()
                        };
                        Plan::AnyOf(
                            targets
                                .iter()
                                .map(|t| key(param, format!("r:{t}/{id}")))
                                .collect(),
                        )
                    }
                    (None, Some(u)) => Plan::AnyOf(vec![key(param, format!("ru:{u}"))]),
                    _ => return Plan::Everything,
                },
                (ParamKind::Reference, _, QValue::RefIdentifier(s, v)) => Plan::AnyOf(vec![key(
                    param,
                    match s {
                        Some(s) => format!("ri:{s}|{v}"),
                        None => format!("ri:{v}"),
                    },
                )]),
                (ParamKind::Uri, Modifier::Below, QValue::Uri(u)) => {
                    Plan::AnyOf(vec![key(param, format!("ub:{}", u.trim_end_matches('/')))])
                }
                (ParamKind::Uri, Modifier::Above, QValue::Uri(u)) => {
                    let mut keys: Vec<Key> = segment_prefixes(u)
                        .into_iter()
                        .map(|p| key(param, format!("u:{p}")))
                        .collect();
                    keys.push(key(param, format!("u:{u}")));
                    Plan::AnyOf(keys)
                }
                (ParamKind::Uri, _, QValue::Uri(u)) => {
                    Plan::AnyOf(vec![key(param, format!("u:{u}"))])
                }
                (ParamKind::Composite, _, QValue::Composite(parts)) => Plan::All(
                    parts
                        .iter()
                        .zip(&param.components)
                        .map(|(part, (_, proxy))| {
                            Criterion {
                                name: String::new(),
                                inner: Inner::Values {
                                    param: proxy.clone(),
                                    modifier: Modifier::None,
                                    values: vec![part.clone()],
                                },
                            }
                            .plan()
                        })
                        .collect(),
                ),
                _ => return Plan::Everything,
            };
            plans.push(plan);
        }
        if plans.len() == 1 {
            plans.pop().unwrap_or(Plan::Everything)
        } else {
            union(plans)
        }
    }

    /// Whether every candidate of [`Criterion::plan`] matches (no confirmation needed).
    pub fn plan_is_exact(&self) -> bool {
        let Inner::Values {
            param,
            modifier,
            values,
            ..
        } = &self.inner
        else {
            return false;
        };
        match param.special {
            Special::Id | Special::LastUpdated => return true,
            Special::None => {}
            _ => return false,
        }
        values.iter().all(|v| match (param.kind, modifier, v) {
            (ParamKind::String, Modifier::None, QValue::Str(s)) => {
                let n = values::normalize(s);
                (MIN_PREFIX_KEY..=PREFIX_KEYS).contains(&n.chars().count())
            }
            (ParamKind::Token, Modifier::None, QValue::Token { code: Some(_), .. }) => true,
            (
                ParamKind::Token,
                Modifier::None,
                QValue::Token {
                    system: Some(Some(_)),
                    code: None,
                },
            ) => true,
            (ParamKind::Token, Modifier::OfType, _) => true,
            (ParamKind::Token, Modifier::In, _) => true,
            (ParamKind::Reference, Modifier::None | Modifier::Type(_), QValue::Ref { .. }) => true,
            (ParamKind::Reference, Modifier::Identifier, _) => true,
            (ParamKind::Uri, Modifier::None | Modifier::Below | Modifier::Above, _) => true,
            _ => false,
        })
    }

    /// The exact test on a resource of the criterion's type. Links are not decided here.
    pub fn matches(&self, index: &SearchIndex, resource: &Value, ctx: &Context<'_>) -> bool {
        match &self.inner {
            Inner::Missing { param, missing, .. } => {
                let present = match param.special {
                    Special::Id => resource.get("id").is_some(),
                    Special::LastUpdated => resource.pointer("/meta/lastUpdated").is_some(),
                    _ => !index.nodes(param, resource).is_empty(),
                };
                present != *missing
            }
            Inner::Values {
                param,
                modifier,
                values,
                ..
            } => {
                let any = |f: &dyn Fn(&QValue) -> bool| values.iter().any(f);
                match param.special {
                    Special::Id => {
                        let id = resource.get("id").and_then(Value::as_str);
                        return any(&|v| matches!(v, QValue::Str(s) if Some(s.as_str()) == id));
                    }
                    Special::LastUpdated => {
                        let Some(at) = resource
                            .pointer("/meta/lastUpdated")
                            .and_then(Value::as_str)
                            .and_then(values::date_range)
                        else {
                            return false;
                        };
                        return any(&|v| match v {
                            QValue::Date(p, q) => windows(*p, *q).iter().any(|w| {
                                w.from.is_none_or(|f| at.low >= f)
                                    && w.to.is_none_or(|t| at.low <= t)
                            }),
                            _ => false,
                        });
                    }
                    Special::Text => {
                        let text = resource
                            .pointer("/text/div")
                            .and_then(Value::as_str)
                            .map(strip_tags)
                            .unwrap_or_default();
                        let text = values::normalize(&text);
                        return any(&|v| matches!(v, QValue::Str(s) if contains_words(&text, s)));
                    }
                    Special::Content => {
                        let mut all = String::new();
                        collect_strings(resource, &mut all);
                        let text = values::normalize(&all);
                        return any(&|v| matches!(v, QValue::Str(s) if contains_words(&text, s)));
                    }
                    Special::Phonetic => {
                        let mut codes = Vec::new();
                        for (t, v) in index.nodes(param, resource) {
                            for (part, s) in values::strings(&t, v) {
                                if matches!(part, "family" | "given" | "") {
                                    codes.extend(s.split_whitespace().filter_map(values::soundex));
                                }
                            }
                        }
                        return any(&|v| match v {
                            QValue::Str(s) => s
                                .split_whitespace()
                                .filter_map(values::soundex)
                                .any(|c| codes.contains(&c)),
                            _ => false,
                        });
                    }
                    Special::None => {}
                }
                let nodes = index.nodes(param, resource);
                match_nodes(param, modifier, values, &nodes, resource, ctx)
            }
            _ => false,
        }
    }
}

/// Whether the values a parameter's expression selected (`nodes`) match any of `values`.
fn match_nodes(
    param: &Param,
    modifier: &Modifier,
    values: &[QValue],
    nodes: &[(String, &Value)],
    resource: &Value,
    ctx: &Context<'_>,
) -> bool {
    let any = |f: &dyn Fn(&QValue) -> bool| values.iter().any(f);
    match param.kind {
        ParamKind::String => {
            let strings: Vec<String> = nodes
                .iter()
                .flat_map(|(t, v)| {
                    values::strings(t, v)
                        .into_iter()
                        .filter(|(part, _)| match &param.covered {
                            Some((_, p)) => part == p || part.is_empty(),
                            None => true,
                        })
                        .map(|(_, s)| s)
                })
                .collect();
            any(&|v| match v {
                QValue::Str(q) => strings.iter().any(|s| match modifier {
                    Modifier::Exact => s == q,
                    Modifier::Contains => values::normalize(s).contains(&values::normalize(q)),
                    _ => values::normalize(s).starts_with(&values::normalize(q)),
                }),
                _ => false,
            })
        }
        ParamKind::Token => {
            let tokens: Vec<Token> = nodes
                .iter()
                .flat_map(|(t, v)| values::tokens(t, v))
                .collect();
            let hit = |v: &QValue| tokens.iter().any(|t| token_matches(t, v));
            match modifier {
                Modifier::Not | Modifier::NotIn => !values.iter().any(hit),
                _ => values.iter().any(hit),
            }
        }
        ParamKind::Date => {
            let ranges: Vec<Range> = nodes
                .iter()
                .flat_map(|(t, v)| values::dates(t, v))
                .collect();
            any(&|v| match v {
                QValue::Date(p, q) => ranges.iter().any(|r| {
                    range_matches(*p, r.low as f64, r.high as f64, q.low as f64, q.high as f64)
                }),
                _ => false,
            })
        }
        ParamKind::Number => {
            let qs: Vec<values::QuantityValue> = nodes
                .iter()
                .flat_map(|(t, v)| values::quantities(t, v))
                .collect();
            any(&|v| match v {
                QValue::Number(p, lo, hi) => qs
                    .iter()
                    .any(|q| range_matches(*p, q.low, q.high, *lo, *hi)),
                _ => false,
            })
        }
        ParamKind::Quantity => {
            let qs: Vec<values::QuantityValue> = nodes
                .iter()
                .flat_map(|(t, v)| values::quantities(t, v))
                .collect();
            any(&|v| match v {
                QValue::Quantity {
                    prefix,
                    low,
                    high,
                    system,
                    code,
                } => qs.iter().any(|q| {
                    let (vl, vh) = match (system.as_deref(), code) {
                        (Some("canonical"), Some(u)) => match &q.canonical {
                            Some((cu, a, b)) if cu == u => (*a, *b),
                            _ => return false,
                        },
                        (Some(s), Some(c)) => {
                            if q.system.as_deref() != Some(s) || q.code.as_ref() != Some(c) {
                                return false;
                            }
                            (q.low, q.high)
                        }
                        (None, Some(c)) => {
                            if q.code.as_ref() != Some(c) && q.unit.as_ref() != Some(c) {
                                return false;
                            }
                            (q.low, q.high)
                        }
                        _ => (q.low, q.high),
                    };
                    range_matches(*prefix, vl, vh, *low, *high)
                }),
                _ => false,
            })
        }
        ParamKind::Reference => {
            let refs: Vec<values::ReferenceValue> = nodes
                .iter()
                .flat_map(|(t, v)| values::references(t, v, ctx.base_url))
                .collect();
            any(&|v| refs.iter().any(|r| reference_matches(r, v, &param.targets)))
        }
        ParamKind::Uri => {
            let uris: Vec<&str> = nodes.iter().filter_map(|(_, v)| v.as_str()).collect();
            any(&|v| match v {
                QValue::Uri(q) => uris.iter().any(|u| match modifier {
                    Modifier::Below => {
                        let q = q.trim_end_matches('/');
                        *u == q || u.starts_with(&format!("{q}/"))
                    }
                    Modifier::Above => {
                        let u = u.trim_end_matches('/');
                        q == u || q.starts_with(&format!("{u}/"))
                    }
                    _ => u == q,
                }),
                _ => false,
            })
        }
        ParamKind::Composite => any(&|v| {
            let QValue::Composite(parts) = v else {
                return false;
            };
            // Every part must hold on the same item.
            nodes.iter().any(|(t, item)| {
                parts
                    .iter()
                    .zip(&param.components)
                    .all(|(part, (expr, proxy))| {
                        let context = fhirwall_fhirpath::Context::new(model(), resource);
                        let found: Vec<(String, &Value)> = match fhirwall_fhirpath::evaluate(
                            expr,
                            &context,
                            Item::node(item, t),
                        ) {
                            Ok(items) => items
                                .iter()
                                .filter_map(|i| {
                                    let n = i.as_node()?;
                                    Some((n.type_name().unwrap_or("").to_string(), n.json()?))
                                })
                                .collect(),
                            Err(_) => Vec::new(),
                        };
                        match_nodes(
                            proxy,
                            &Modifier::None,
                            std::slice::from_ref(part),
                            &found,
                            resource,
                            ctx,
                        )
                    })
            })
        }),
        _ => false,
    }
}

fn token_matches(t: &Token, v: &QValue) -> bool {
    match v {
        QValue::Token { system, code } => {
            let code_ok = code.as_ref().is_none_or(|c| *c == t.code);
            if t.code.is_empty() {
                return false;
            }
            code_ok
                && match system {
                    None => true,
                    Some(None) => t.system.is_none() && !t.implicit,
                    Some(Some(s)) => t.system.as_ref() == Some(s) || (t.implicit && code.is_some()),
                }
        }
        QValue::Text(q) => {
            let q = values::normalize(q);
            let words = words_of(&t.texts);
            let texts: Vec<String> = t.texts.iter().map(|x| values::normalize(x)).collect();
            !q.is_empty()
                && (texts.iter().any(|x| x.starts_with(&q))
                    || q.split(' ')
                        .all(|qw| words.iter().any(|w| w.starts_with(qw))))
        }
        QValue::OfType {
            system,
            code,
            value,
        } => {
            t.code == *value
                && t.types
                    .iter()
                    .any(|(s, c)| c == code && s.as_deref().unwrap_or("") == system)
        }
        QValue::ValueSet(codes) => t
            .system
            .as_ref()
            .is_some_and(|s| codes.iter().any(|(cs, c)| cs == s && *c == t.code)),
        _ => false,
    }
}

fn reference_matches(r: &values::ReferenceValue, v: &QValue, targets: &[String]) -> bool {
    match v {
        QValue::Ref { local, url } => match (local, &r.local) {
            (Some((Some(t), id)), Some((rt, rid))) => t == rt && id == rid,
            (Some((None, id)), Some((rt, rid))) => {
                id == rid && (targets.is_empty() || targets.iter().any(|t| t == rt))
            }
            (None, _) => {
                url.is_some()
                    && (r.url == *url
                        || r.url
                            .as_ref()
                            .and_then(|u| u.split_once('|'))
                            .map(|(b, _)| b)
                            == url.as_deref())
            }
            _ => false,
        },
        QValue::RefIdentifier(s, value) => r.identifier.as_ref().is_some_and(|(rs, rv)| {
            rv == value && s.as_ref().is_none_or(|s| rs.as_ref() == Some(s))
        }),
        _ => false,
    }
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn collect_strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push(' ');
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Whether every word of the query starts a word of the text.
fn contains_words(text: &str, query: &str) -> bool {
    let q = values::normalize(query);
    if q.is_empty() {
        return false;
    }
    let words: Vec<&str> = text.split(' ').collect();
    q.split(' ')
        .all(|qw| words.iter().any(|w| w.starts_with(qw)))
}
