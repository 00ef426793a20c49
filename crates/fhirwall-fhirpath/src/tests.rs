//! Unit tests of the engine against a small hand-written model; they must not need the FHIR
//! package (the corpus tests in tests/it use the real definitions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::*;

/// A model of a few FHIR types, with inherited elements found through the base types.
struct TestModel {
    elements: HashMap<&'static str, HashMap<&'static str, (Vec<String>, bool)>>,
    bases: HashMap<&'static str, &'static str>,
}

const ELEMENTS: &[(&str, &str, &[&str])] = &[
    ("Element", "id", &["http://hl7.org/fhirpath/System.String"]),
    ("Element", "extension", &["Extension"]),
    ("Resource", "id", &["id"]),
    ("Resource", "meta", &["Meta"]),
    ("Meta", "versionId", &["id"]),
    ("DomainResource", "contained", &["Resource"]),
    ("DomainResource", "extension", &["Extension"]),
    ("DomainResource", "text", &["Narrative"]),
    ("Narrative", "div", &["xhtml"]),
    ("Extension", "url", &["uri"]),
    (
        "Extension",
        "value[x]",
        &[
            "string",
            "boolean",
            "code",
            "Quantity",
            "Reference",
            "dateTime",
        ],
    ),
    ("Patient", "name", &["HumanName"]),
    ("Patient", "birthDate", &["date"]),
    ("Patient", "active", &["boolean"]),
    ("Patient", "gender", &["code"]),
    ("Patient", "deceased[x]", &["boolean", "dateTime"]),
    ("Patient", "contact", &["Patient.contact"]),
    ("Patient", "managingOrganization", &["Reference"]),
    ("Patient", "generalPractitioner", &["Reference"]),
    ("Patient.contact", "name", &["HumanName"]),
    ("Patient.contact", "gender", &["code"]),
    ("HumanName", "use", &["code"]),
    ("HumanName", "family", &["string"]),
    ("HumanName", "given", &["string"]),
    ("Reference", "reference", &["string"]),
    ("Reference", "display", &["string"]),
    ("Quantity", "value", &["decimal"]),
    ("Quantity", "unit", &["string"]),
    ("Quantity", "system", &["uri"]),
    ("Quantity", "code", &["code"]),
    ("CodeableConcept", "coding", &["Coding"]),
    ("CodeableConcept", "text", &["string"]),
    ("Coding", "system", &["uri"]),
    ("Coding", "code", &["code"]),
    ("Period", "start", &["dateTime"]),
    ("Period", "end", &["dateTime"]),
    ("Range", "low", &["Quantity"]),
    ("Range", "high", &["Quantity"]),
    ("Observation", "status", &["code"]),
    ("Observation", "code", &["CodeableConcept"]),
    ("Observation", "subject", &["Reference"]),
    (
        "Observation",
        "value[x]",
        &[
            "Quantity",
            "CodeableConcept",
            "string",
            "boolean",
            "integer",
            "dateTime",
            "Period",
        ],
    ),
    (
        "Observation",
        "effective[x]",
        &["dateTime", "Period", "instant"],
    ),
    ("Observation", "component", &["Observation.component"]),
    ("Observation.component", "code", &["CodeableConcept"]),
    ("Observation.component", "value[x]", &["Quantity", "string"]),
    (
        "Condition",
        "onset[x]",
        &["dateTime", "Age", "Period", "string"],
    ),
    ("Bundle", "type", &["code"]),
    ("Bundle", "entry", &["Bundle.entry"]),
    ("Bundle.entry", "fullUrl", &["uri"]),
    ("Bundle.entry", "resource", &["Resource"]),
    ("Questionnaire", "item", &["Questionnaire.item"]),
    ("Questionnaire.item", "linkId", &["string"]),
    ("Questionnaire.item", "item", &["Questionnaire.item"]),
];

const BASES: &[(&str, &str)] = &[
    ("DomainResource", "Resource"),
    ("Patient", "DomainResource"),
    ("Observation", "DomainResource"),
    ("Condition", "DomainResource"),
    ("Questionnaire", "DomainResource"),
    ("Organization", "DomainResource"),
    ("Practitioner", "DomainResource"),
    ("Bundle", "Resource"),
    ("BackboneElement", "Element"),
    ("Patient.contact", "BackboneElement"),
    ("Observation.component", "BackboneElement"),
    ("Bundle.entry", "BackboneElement"),
    ("Questionnaire.item", "BackboneElement"),
    ("HumanName", "Element"),
    ("Extension", "Element"),
    ("Reference", "Element"),
    ("Quantity", "Element"),
    ("Age", "Quantity"),
    ("CodeableConcept", "Element"),
    ("Coding", "Element"),
    ("Period", "Element"),
    ("Range", "Element"),
    ("Meta", "Element"),
    ("Narrative", "Element"),
    ("string", "Element"),
    ("code", "string"),
    ("id", "string"),
    ("uri", "Element"),
    ("boolean", "Element"),
    ("date", "Element"),
    ("dateTime", "Element"),
    ("decimal", "Element"),
    ("integer", "Element"),
];

const RESOURCES: &[&str] = &[
    "Resource",
    "DomainResource",
    "Patient",
    "Observation",
    "Condition",
    "Questionnaire",
    "Organization",
    "Practitioner",
    "Bundle",
];

const PRIMITIVES: &[&str] = &[
    "boolean", "string", "code", "id", "uri", "date", "dateTime", "instant", "decimal", "integer",
    "xhtml",
];

impl Model for TestModel {
    fn child(&self, parent_type: &str, name: &str) -> Option<Child<'_>> {
        let mut current = Some(parent_type);
        while let Some(t) = current {
            if let Some((types, is_choice)) = self.elements.get(t).and_then(|m| m.get(name)) {
                return Some(Child {
                    types,
                    is_choice: *is_choice,
                });
            }
            current = self.base_type(t);
        }
        None
    }

    fn base_type(&self, type_name: &str) -> Option<&str> {
        self.bases.get(type_name).copied()
    }

    fn is_resource_type(&self, name: &str) -> bool {
        RESOURCES.contains(&name)
    }

    fn is_primitive(&self, type_name: &str) -> bool {
        PRIMITIVES.contains(&type_name)
    }
}

fn model() -> &'static TestModel {
    static MODEL: OnceLock<TestModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut elements: HashMap<&'static str, HashMap<&'static str, (Vec<String>, bool)>> =
            HashMap::new();
        for (parent, name, types) in ELEMENTS {
            let (name, is_choice) = match name.strip_suffix("[x]") {
                Some(n) => (n, true),
                None => (*name, false),
            };
            let types = types.iter().map(|t| (*t).to_owned()).collect();
            elements
                .entry(*parent)
                .or_default()
                .insert(name, (types, is_choice));
        }
        TestModel {
            elements,
            bases: BASES.iter().copied().collect(),
        }
    })
}

fn render(item: &Item<'_>) -> String {
    match item {
        Item::Value(SystemValue::String(s)) => format!("'{s}'"),
        Item::Value(SystemValue::Date(d) | SystemValue::DateTime(d)) => format!("@{d}"),
        Item::Value(SystemValue::Time(t)) => format!("@T{t}"),
        Item::Value(v) => v.to_string(),
        Item::Stub(s) => format!("{}/{} (stub)", s.type_name, s.id),
        Item::Node(n) => match n.json() {
            Some(Value::String(s)) => format!("'{s}'"),
            Some(Value::Object(_)) => format!("{{{}}}", n.type_name().unwrap_or("?")),
            Some(other) => other.to_string(),
            None => "<extensions only>".to_owned(),
        },
    }
}

fn run_with<'a>(ctx: &Context<'a>, focus: Item<'a>, expr: &str) -> String {
    let parsed = match parse(expr) {
        Ok(p) => p,
        Err(e) => return format!("parse error: {e}"),
    };
    match evaluate(&parsed, ctx, focus) {
        Ok(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        Err(e) => format!("error: {e}"),
    }
}

/// Evaluates `expr` on `resource` (as %resource and focus) and renders the result.
fn run(resource: &Value, expr: &str) -> String {
    let ctx = Context::new(model(), resource)
        .with_now(DateTimeValue::parse("2024-03-15T10:20:30.000Z").unwrap().0);
    run_with(&ctx, Item::resource(resource), expr)
}

fn check_all(resource: &Value, cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (expr, expected) in cases {
        let got = run(resource, expr);
        if got != *expected {
            failures.push(format!(
                "{expr}\n    expected {expected}\n    got      {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn patient() -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "gender": "female",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://example.org/time", "valueString": "14:35"}]},
        "deceasedBoolean": false,
        "name": [
            {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim", null], "_given": [null, {"id": "g2", "extension": [{"url": "http://example.org/nick", "valueString": "J"}]}]}
        ],
        "contact": [{"name": {"family": "du Marché"}, "gender": "female"}],
        "managingOrganization": {"reference": "Organization/1"},
        "generalPractitioner": [{"reference": "#pr1"}, {"display": "Dr Nobody"}],
        "contained": [{"resourceType": "Practitioner", "id": "pr1"}],
        "extension": [
            {"url": "http://example.org/a", "valueCode": "x"},
            {"url": "http://example.org/b", "valueQuantity": {"value": 0, "code": "mg", "system": "http://unitsofmeasure.org"}}
        ]
    });
    // json! would print 3.50 as 3.5; the decimal must keep the scale it was written with.
    p["extension"][1]["valueQuantity"]["value"] = serde_json::from_str("3.50").unwrap();
    p
}

#[test]
fn literals_and_arithmetic() {
    let p = json!({});
    check_all(
        &p,
        &[
            ("1 + 2 * 3", "[7]"),
            ("(1 + 2) * 3", "[9]"),
            ("1.5 + 1", "[2.5]"),
            ("0.1 + 0.2 = 0.3", "[true]"),
            ("7 / 2", "[3.5]"),
            ("1 / 3", "[0.33333333]"),
            ("7 div 2", "[3]"),
            ("-7 div 2", "[-3]"),
            ("7 mod 2", "[1]"),
            ("7.5 mod 2", "[1.5]"),
            ("1 / 0", "[]"),
            ("5 div 0", "[]"),
            ("9223372036854775807 + 1", "[]"),
            ("-(3)", "[-3]"),
            ("-2.50", "[-2.50]"),
            ("'a' + 'b'", "['ab']"),
            ("'a' + {}", "[]"),
            ("'a' & {}", "['a']"),
            ("{} & {}", "['']"),
            ("'tab\\there' = 'tab' + '\\t' + 'here'", "[true]"),
            ("'\\u00e9t\\u00e9'", "['été']"),
            ("'it\\'s'", "['it's']"),
            ("4 'mg' + 1 'g'", "[1004 'mg']"),
            ("2 'mg' * 3", "[6 'mg']"),
            ("1.0.toString()", "['1.0']"),
            ("2 // a comment\n + /* another */ 3", "[5]"),
            ("{}", "[]"),
            ("(1 | 2 | 3).aggregate($this + $total, 0)", "[6]"),
            ("(1 | 2 | 3).select($this * $index)", "[0, 2, 6]"),
            ("(3 | 1 | 3 | 2)", "[3, 1, 2]"),
            ("(1 | 1.0)", "[1]"),
            ("(1 | 2).combine(2)", "[1, 2, 2]"),
            ("2.power(10)", "[1024]"),
            ("2.5.power(2)", "[6.25]"),
            ("16.sqrt()", "[4]"),
            ("(-5).abs()", "[5]"),
            ("1.5.ceiling()", "[2]"),
            ("-1.5.floor()", "[-1]"),
            ("(-1.5).floor()", "[-2]"),
            ("3.14159.round(2)", "[3.14]"),
            ("3.7.truncate()", "[3]"),
            ("100.log(10)", "[2]"),
            ("1.exp().round(5)", "[2.71828]"),
        ],
    );
}

#[test]
fn three_valued_logic_and_empty_collections() {
    let p = json!({});
    check_all(
        &p,
        &[
            ("true and {}", "[]"),
            ("false and {}", "[false]"),
            ("{} and false", "[false]"),
            ("true or {}", "[true]"),
            ("{} or false", "[]"),
            ("{} or true", "[true]"),
            ("true xor true", "[false]"),
            ("true xor {}", "[]"),
            ("false implies {}", "[true]"),
            ("true implies {}", "[]"),
            ("{} implies true", "[true]"),
            ("{} implies false", "[]"),
            ("{}.not()", "[]"),
            ("true.not()", "[false]"),
            ("true or false and false", "[true]"),
            ("{} = 1", "[]"),
            ("{} != 1", "[]"),
            ("{}.count()", "[0]"),
            ("{}.empty()", "[true]"),
            ("{}.exists()", "[false]"),
            ("{}.all($this > 1)", "[true]"),
            ("{} | {}", "[]"),
            ("{} in (1 | 2)", "[]"),
            ("1 in {}", "[false]"),
            ("(1 | 2) contains 2", "[true]"),
            ("{}.first()", "[]"),
            ("(1 | 2 | 3).tail()", "[2, 3]"),
            ("(1 | 2 | 3).skip(1).take(1)", "[2]"),
            ("(1 | 2 | 3).last()", "[3]"),
            (
                "(1 | 2).single()",
                "error: single() expects a single item but got 2",
            ),
            (
                "(1 | 2).not()",
                "error: not() expects a single item but got 2",
            ),
            ("(1 | 2) + 1", "error: + expects a single item but got 2"),
            ("(1 | 2 | 3).intersect(2 | 3 | 4)", "[2, 3]"),
            ("(1 | 2 | 3).exclude(2)", "[1, 3]"),
            ("(1 | 2).subsetOf(1 | 2 | 3)", "[true]"),
            ("(1 | 2 | 3).supersetOf(4)", "[false]"),
            ("(1 | 2 | 2).isDistinct()", "[true]"),
            ("(1).combine(1).isDistinct()", "[false]"),
            ("(true | false).allTrue()", "[false]"),
            ("(true | false).anyTrue()", "[true]"),
            ("{}.allFalse()", "[true]"),
            ("iif(true, 'a', 'b')", "['a']"),
            ("iif({}, 'a', 'b')", "['b']"),
            ("iif(false, 'a')", "[]"),
        ],
    );
}

#[test]
fn equality_equivalence_and_comparison() {
    let p = json!({});
    check_all(
        &p,
        &[
            ("1 = 1.0", "[true]"),
            ("'a' = 'A'", "[false]"),
            ("'a' ~ 'A'", "[true]"),
            ("'a  b' ~ 'A b'", "[true]"),
            ("1.2 ~ 1.21", "[true]"),
            ("(1 | 2) = (1 | 2)", "[true]"),
            ("(1 | 2) = (2 | 1)", "[false]"),
            ("(1 | 2) ~ (2 | 1)", "[true]"),
            ("{} ~ {}", "[true]"),
            ("1 ~ {}", "[false]"),
            ("'a' != 'b'", "[true]"),
            ("1 = 'a'", "[false]"),
            ("'abc' < 'abd'", "[true]"),
            ("2 >= 2.0", "[true]"),
            (
                "1 < 'a'",
                "error: operator '<' cannot combine System.Integer and System.String",
            ),
            ("5 'mg' < 1 'g'", "[true]"),
            ("1 'kg' = 1000 'g'", "[true]"),
            ("1 'kg' < 1 'm'", "[]"),
            ("1 year = 1 'a'", "[false]"),
            ("1 year ~ 1 'a'", "[true]"),
            ("7 days = 1 week", "[true]"),
            ("@2020-01-01 < @2020-01-02", "[true]"),
            ("@2020-01 < @2020-01-15", "[]"),
            ("@2020-02 > @2020-01-15", "[true]"),
            ("@2012-01 = @2012-01-01", "[]"),
            ("@2012-01 ~ @2012-01-01", "[false]"),
            (
                "@2020-01-01T10:00:00+02:00 = @2020-01-01T08:00:00Z",
                "[true]",
            ),
            (
                "@2020-01-01T10:00:00.000Z = @2020-01-01T10:00:00Z",
                "[true]",
            ),
            ("@2020-01-01 = @2020-01-01T00:00:00Z", "[]"),
            ("@T10:00 < @T11:00", "[true]"),
            ("@T10:00 < @T10:00:01", "[]"),
            ("@2015T.toString()", "['2015']"),
        ],
    );
}

#[test]
fn dates_and_clock() {
    let p = json!({});
    check_all(
        &p,
        &[
            ("@2020-01-31 + 1 month", "[@2020-02-29]"),
            ("@2020-02-29 + 1 year", "[@2021-02-28]"),
            (
                "@2020-01-01T10:00:00Z - 30 minutes",
                "[@2020-01-01T09:30:00Z]",
            ),
            ("@2020-01-01 + 2 'd'", "[@2020-01-03]"),
            (
                "@2020-01-01 + 1 'mg'",
                "error: operator '+' cannot combine System.Date and System.Quantity",
            ),
            ("@T23:00 + 2 hours", "[@T01:00]"),
            ("now()", "[@2024-03-15T10:20:30.000Z]"),
            ("today()", "[@2024-03-15]"),
            ("timeOfDay()", "[@T10:20:30.000]"),
            ("today() > @2024-03-14", "[true]"),
            ("now() = now()", "[true]"),
            ("'2020-01-02'.toDate()", "[@2020-01-02]"),
            (
                "'2020-01-02T10:00:00Z'.toDateTime() > @2020-01-01",
                "[true]",
            ),
            ("'12:30'.toTime()", "[@T12:30]"),
            ("'2020-13-01'.convertsToDate()", "[false]"),
            (
                "@2020-01-02T03:04:05.678+01:00.toString()",
                "['2020-01-02T03:04:05.678+01:00']",
            ),
        ],
    );
}

#[test]
fn the_clock_is_the_callers_or_empty() {
    let p = json!({"birthDate": "2000-01-01"});
    // Without an instant from the caller the engine has no clock: the three are empty.
    let ctx = Context::new(model(), &p);
    for (expr, expected) in [
        ("now()", "[]"),
        ("today()", "[]"),
        ("timeOfDay()", "[]"),
        ("now() = now()", "[]"),
        ("today().empty()", "[true]"),
    ] {
        assert_eq!(run_with(&ctx, Item::untyped(&p), expr), expected, "{expr}");
    }
    // 2024-02-29T23:59:59.999Z, in milliseconds since the Unix epoch.
    let ctx = Context::new(model(), &p).with_now_unix_millis(1_709_251_199_999);
    for (expr, expected) in [
        ("now()", "[@2024-02-29T23:59:59.999Z]"),
        ("today()", "[@2024-02-29]"),
        ("timeOfDay()", "[@T23:59:59.999]"),
    ] {
        assert_eq!(run_with(&ctx, Item::untyped(&p), expr), expected, "{expr}");
    }
    for (expr, reads) in [
        ("now()", true),
        ("birthDate < today()", true),
        ("name.where(period.start > now() - 1 year).exists()", true),
        ("(@T10:00 | timeOfDay()).count()", true),
        ("birthDate < @2020-01-01", false),
        ("'now()'.length()", false),
    ] {
        assert_eq!(parse(expr).unwrap().reads_clock(), reads, "{expr}");
    }
}

#[test]
fn strings_and_regexes() {
    let p = json!({});
    check_all(
        &p,
        &[
            ("'abcdef'.substring(2)", "['cdef']"),
            ("'abcdef'.substring(2, 2)", "['cd']"),
            ("'abcdef'.substring(10)", "[]"),
            (
                "'abc'.substring('a')",
                "error: substring(): expected an Integer, got System.String",
            ),
            ("'abcdef'.indexOf('cd')", "[2]"),
            ("'abcdef'.indexOf('x')", "[-1]"),
            ("'été'.length()", "[3]"),
            ("'abc'.upper()", "['ABC']"),
            ("'ABC'.lower()", "['abc']"),
            ("'a-b-c'.replace('-', '+')", "['a+b+c']"),
            ("'abc'.replace('', 'x')", "['xaxbxcx']"),
            ("'abc'.startsWith('ab')", "[true]"),
            ("'abc'.endsWith('bc')", "[true]"),
            ("'abc'.contains('b')", "[true]"),
            ("'abc'.startsWith('')", "[true]"),
            ("{}.startsWith('a')", "[false]"),
            ("{}.contains('a').not()", "[true]"),
            ("{}.upper()", "[]"),
            ("'abc'.matches('b')", "[false]"),
            ("'abc'.matches('a.c')", "[true]"),
            ("'a\\nc'.matches('a.c')", "[true]"),
            ("'ABC'.matches('(?i)abc')", "[true]"),
            (
                "'abc'.matches('(')",
                "error: invalid regular expression \"(\": error: unclosed group",
            ),
            (
                "'Patient.name'.matches('[A-Za-z][A-Za-z0-9]*(\\\\.[a-z][A-Za-z0-9]*(\\\\[x])?)*')",
                "[true]",
            ),
            ("'a/b'.matches('a\\\\/b')", "[true]"),
            (
                "'Organization.a.b'.replaceMatches('\\\\..*', '')",
                "['Organization']",
            ),
            (
                "'John Smith'.replaceMatches('(\\\\w+) (\\\\w+)', '$2, $1')",
                "['Smith, John']",
            ),
            ("'a1b'.replaceMatches('(\\\\d)', '[$1x]')", "['a[1x]b']"),
            ("'abc'.toChars()", "['a', 'b', 'c']"),
            ("'  x '.trim()", "['x']"),
            ("'a,b,,c'.split(',')", "['a', 'b', '', 'c']"),
            ("('a' | 'b').join('-')", "['a-b']"),
            ("'hello'.encode('base64')", "['aGVsbG8=']"),
            ("'aGVsbG8='.decode('base64')", "['hello']"),
            ("'hi'.encode('hex')", "['6869']"),
            ("'<a & b>'.escape('html')", "['&lt;a &amp; b&gt;']"),
            ("'a\"b'.escape('json')", "['a\\\"b']"),
            ("'12'.toInteger() + 1", "[13]"),
            ("'1.50'.toDecimal()", "[1.50]"),
            ("'x'.toInteger()", "[]"),
            ("'yes'.toBoolean()", "[true]"),
            ("'4 \\'mg\\''.toQuantity()", "[4 'mg']"),
            ("'1 kg'.toQuantity()", "[]"),
            ("'5 days'.toQuantity()", "[5 day]"),
            ("1000 'mg'.toQuantity('g')", "[1 'g']"),
            ("1.convertsToString()", "[true]"),
            ("true.toString()", "['true']"),
            ("%ucum", "['http://unitsofmeasure.org']"),
            (
                "%`vs-administrative-gender`",
                "['http://hl7.org/fhir/ValueSet/administrative-gender']",
            ),
            (
                "%`ext-patient-birthTime`",
                "['http://hl7.org/fhir/StructureDefinition/patient-birthTime']",
            ),
            ("%nope", "error: unknown variable %nope"),
        ],
    );
}

#[test]
fn navigation_and_primitive_extensions() {
    let p = patient();
    check_all(
        &p,
        &[
            (
                "Patient.name.given",
                "['Peter', 'James', 'Jim', <extensions only>]",
            ),
            ("name.given.count()", "[4]"),
            (
                "Patient.name.where(use = 'official').given.first()",
                "['Peter']",
            ),
            ("Patient.name[1].given[0]", "['Jim']"),
            (
                "Patient.name.family | Patient.contact.name.family",
                "['Chalmers', 'du Marché']",
            ),
            ("Patient.`name`.family", "['Chalmers']"),
            ("Person.name", "[]"),
            ("Patient.nonsense", "[]"),
            ("DomainResource.id", "['p1']"),
            ("Patient.birthDate", "['1974-12-25']"),
            (
                "Patient.birthDate.extension('http://example.org/time').value",
                "['14:35']",
            ),
            (
                "Patient.birthDate.extension.url",
                "['http://example.org/time']",
            ),
            ("Patient.birthDate.hasValue()", "[true]"),
            ("Patient.name.given.where(hasValue().not()).id", "['g2']"),
            (
                "Patient.name.given.extension('http://example.org/nick').value",
                "['J']",
            ),
            ("Patient.name.given.where(hasValue()).count()", "[3]"),
            ("Patient.name.given.last().extension.exists()", "[true]"),
            ("Patient.birthDate.getValue()", "[@1974-12-25]"),
            ("Patient.birthDate < @2000-01-01", "[true]"),
            ("Patient.birthDate = @1974-12-25", "[true]"),
            ("Patient.deceased", "[false]"),
            (
                "Patient.deceased.exists() and Patient.deceased != false",
                "[false]",
            ),
            (
                "Patient.extension('http://example.org/b').value.value",
                "[3.50]",
            ),
            (
                "Patient.extension('http://example.org/b').value > 3 'mg'",
                "[true]",
            ),
            (
                "Patient.extension('http://example.org/b').value.value.toString()",
                "['3.50']",
            ),
            ("Patient.extension.value.ofType(code)", "['x']"),
            ("Patient.hasExtension('http://example.org/a')", "[true]"),
            ("Patient.contact.name.family", "['du Marché']"),
            ("Patient.contact.children().count()", "[2]"),
            ("Patient.name.first().children().count()", "[4]"),
            ("Patient.contained.id", "['pr1']"),
            ("Patient.descendants().ofType(HumanName).count()", "[3]"),
            (
                "Patient.name.given.single()",
                "error: single() expects a single item but got 4",
            ),
            ("%resource.id", "['p1']"),
            ("%context.id", "['p1']"),
            ("%rootResource.id", "['p1']"),
            ("Patient.gender = 'female'", "[true]"),
            ("Patient.gender in ('male' | 'female')", "[true]"),
            ("Patient.active and Patient.gender.exists()", "[true]"),
            ("trace('x').id", "['p1']"),
            ("Patient.name.select(given.first())", "['Peter', 'Jim']"),
            ("Patient.name.given.distinct().count()", "[4]"),
        ],
    );
}

#[test]
fn choice_elements_and_types() {
    let obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "valueQuantity": {"value": 185, "unit": "lbs", "code": "[lb_av]", "system": "http://unitsofmeasure.org"},
        "effectiveDateTime": "2016-03-28",
        "component": [
            {"code": {"text": "a"}, "valueQuantity": {"value": 1, "code": "mg"}},
            {"code": {"text": "b"}, "valueString": "x"}
        ]
    });
    check_all(
        &obs,
        &[
            ("Observation.value.unit", "['lbs']"),
            ("Observation.value is Quantity", "[true]"),
            ("Observation.value is FHIR.Quantity", "[true]"),
            ("Observation.value.is(Quantity)", "[true]"),
            ("Observation.value is Age", "[false]"),
            ("Observation.value as string", "[]"),
            ("(Observation.value as Quantity).value", "[185]"),
            ("Observation.value.as(Quantity).code", "['[lb_av]']"),
            ("Observation.valueQuantity", "[]"),
            ("Observation.value > 80 '[lb_av]'", "[true]"),
            ("Observation.value > 80000 'g'", "[true]"),
            ("Observation.component.value", "[{Quantity}, 'x']"),
            ("Observation.component.value.ofType(string)", "['x']"),
            ("(Observation.component.value as Quantity).value", "[1]"),
            ("Observation.effective is dateTime", "[true]"),
            ("Observation.effective is DateTime", "[true]"),
            ("Observation.effective is System.DateTime", "[true]"),
            ("Observation.effective is FHIR.dateTime", "[true]"),
            ("Observation.effective is string", "[false]"),
            ("Observation.status is code", "[true]"),
            ("Observation.status is string", "[true]"),
            ("Observation.status is String", "[true]"),
            ("Observation.status is System.Integer", "[false]"),
            ("Observation is DomainResource", "[true]"),
            ("Observation is Resource", "[true]"),
            ("Observation is Patient", "[false]"),
            ("Observation.component.first() is BackboneElement", "[true]"),
            ("Observation.missing is string", "[false]"),
            ("'a' is String", "[true]"),
            ("'a' is string", "[true]"),
            ("1 is Integer", "[true]"),
            ("1 is Decimal", "[false]"),
            ("1.0 is System.Decimal", "[true]"),
            (
                "(1 | 2) is Integer",
                "error: is expects a single item but got 2",
            ),
            (
                "(Observation.effective as dateTime).toString().length() >= 8",
                "[true]",
            ),
        ],
    );
    let range = json!({"low": {"unit": "mg"}, "high": {"value": 2, "code": "mg"}});
    let ctx = Context::new(model(), &range);
    assert_eq!(
        run_with(&ctx, Item::node(&range, "Range"), "low <= high"),
        "[]"
    );
    let condition =
        json!({"resourceType": "Condition", "onsetAge": {"value": 52, "unit": "yr", "code": "a"}});
    check_all(
        &condition,
        &[
            ("Condition.onset is Age", "[true]"),
            ("Condition.onset is Quantity", "[true]"),
            ("Condition.onset.as(Quantity).value", "[52]"),
            (
                "Condition.onset.as(Age) | Condition.onset.as(Range)",
                "[{Age}]",
            ),
            ("Condition.onset > 50 'a'", "[true]"),
            ("Condition.onset.as(Quantity).value.toString()", "['52']"),
        ],
    );
}

#[test]
fn strict_spec_turns_off_the_hl7_compatibility() {
    let p = json!({"resourceType": "Patient"});
    let ctx = Context::new(model(), &p).with_strict_spec();
    assert_eq!(
        run_with(&ctx, Item::resource(&p), "{}.startsWith('a')"),
        "[]"
    );
    assert_eq!(run_with(&ctx, Item::resource(&p), "{} is Patient"), "[]");
    assert_eq!(run(&p, "{} is Patient"), "[false]");
    // R4's ref-1 on a Reference with only a display.
    let ref1 = "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))";
    let reference = json!({"display": "x"});
    let lenient = Context::new(model(), &p);
    let result = evaluate(
        &parse(ref1).unwrap(),
        &lenient,
        Item::node(&reference, "Reference"),
    )
    .unwrap();
    assert!(passes(&result));
}

#[test]
fn resolve_references() {
    let p = patient();
    check_all(
        &p,
        &[
            (
                "Patient.managingOrganization.resolve()",
                "[Organization/1 (stub)]",
            ),
            (
                "Patient.managingOrganization.resolve() is Organization",
                "[true]",
            ),
            (
                "Patient.managingOrganization.resolve() is DomainResource",
                "[true]",
            ),
            (
                "Patient.managingOrganization.where(resolve() is Patient)",
                "[]",
            ),
            ("Patient.managingOrganization.resolve().id", "['1']"),
            ("Patient.generalPractitioner.resolve()", "[{Practitioner}]"),
            (
                "Patient.generalPractitioner.resolve().ofType(Practitioner).id",
                "['pr1']",
            ),
            (
                "Patient.generalPractitioner.resolve().iif(empty(), true, ofType(Practitioner).exists())",
                "[true]",
            ),
        ],
    );
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a"}},
            {"fullUrl": "http://example.org/fhir/Observation/o1", "resource": {
                "resourceType": "Observation", "subject": {"reference": "urn:uuid:1"}}},
            {"fullUrl": "http://example.org/fhir/Observation/o2", "resource": {
                "resourceType": "Observation", "subject": {"reference": "Patient/a"}}},
            {"fullUrl": "http://example.org/fhir/Observation/o3", "resource": {
                "resourceType": "Observation", "subject": {"reference": "urn:uuid:404"}}},
            {"fullUrl": "http://example.org/fhir/Observation/o4", "resource": {
                "resourceType": "Observation", "subject": {"reference": "http://other.org/fhir/Patient/9/_history/2"}}},
            {"fullUrl": "http://example.org/fhir/Observation/o5", "resource": {
                "resourceType": "Observation", "subject": {"reference": "Practitioner/x"}}},
            {"fullUrl": "http://example.org/fhir/Practitioner/x", "resource": {"resourceType": "Practitioner"}}
        ]
    });
    let ctx = Context::new(model(), &bundle);
    let subjects = |i: usize| {
        let obs = &bundle["entry"][i]["resource"];
        let ctx = Context::new(model(), obs).with_bundle(&bundle);
        run_with(&ctx, Item::resource(obs), "Observation.subject.resolve()")
    };
    assert_eq!(subjects(1), "[{Patient}]");
    assert_eq!(subjects(2), "[{Patient}]");
    assert_eq!(subjects(3), "[]");
    assert_eq!(subjects(4), "[Patient/9 (stub)]");
    assert_eq!(subjects(5), "[{Practitioner}]");
    assert_eq!(
        run_with(
            &ctx,
            Item::resource(&bundle),
            "Bundle.entry.resource.subject.where(resolve() is Patient).count()"
        ),
        "[3]"
    );

    struct Fixed<'a>(&'a Value);
    impl<'a> Resolver<'a> for Fixed<'a> {
        fn resolve(&self, reference: &'a str) -> Resolution<'a> {
            match reference {
                "Organization/1" => Resolution::Found(Item::resource(self.0)),
                "Patient/gone" => Resolution::NotFound,
                _ => Resolution::Builtin,
            }
        }
    }
    let org = json!({"resourceType": "Organization", "id": "1"});
    let fixed = Fixed(&org);
    let ctx = Context::new(model(), &p).with_resolver(&fixed);
    assert_eq!(
        run_with(
            &ctx,
            Item::resource(&p),
            "Patient.managingOrganization.resolve()"
        ),
        "[{Organization}]"
    );
    assert_eq!(
        run_with(
            &ctx,
            Item::resource(&p),
            "Patient.generalPractitioner.resolve().id"
        ),
        "['pr1']"
    );
}

#[test]
fn contained_resources_see_their_container() {
    let p = patient();
    let contained = &p["contained"][0];
    let ctx = Context::new(model(), contained).with_root_resource(&p);
    assert_eq!(
        run_with(
            &ctx,
            Item::resource(contained),
            "%resource.id | %rootResource.id"
        ),
        "['pr1', 'p1']"
    );
    assert_eq!(
        run_with(&ctx, Item::resource(contained), "Practitioner.id"),
        "['pr1']"
    );
}

#[test]
fn repeat_and_descendants() {
    let q = json!({
        "resourceType": "Questionnaire",
        "item": [
            {"linkId": "1", "item": [{"linkId": "1.1"}, {"linkId": "1.2", "item": [{"linkId": "1.2.1"}]}]},
            {"linkId": "2"}
        ]
    });
    check_all(
        &q,
        &[
            (
                "Questionnaire.repeat(item).linkId",
                "['1', '2', '1.1', '1.2', '1.2.1']",
            ),
            ("descendants().linkId.isDistinct()", "[true]"),
            ("Questionnaire.item.item.item.linkId", "['1.2.1']"),
            ("Questionnaire.item.first() is Questionnaire.item", "[true]"),
            (
                "Questionnaire.item.first() is FHIR.Questionnaire",
                "[false]",
            ),
            ("Questionnaire.item.first().is(BackboneElement)", "[true]"),
            ("(1 | 2).repeat($this)", "[1, 2]"),
        ],
    );
}

#[test]
fn hooks_answer_member_of_and_conforms_to() {
    struct Terms;
    impl Hooks for Terms {
        fn member_of(&self, item: &Item<'_>, value_set: &str) -> Option<bool> {
            (value_set == "http://hl7.org/fhir/ValueSet/administrative-gender").then(|| {
                item.json()
                    .and_then(Value::as_str)
                    .is_some_and(|c| c == "female" || c == "male")
            })
        }
    }
    let p = patient();
    let ctx = Context::new(model(), &p).with_hooks(&Terms);
    let focus = Item::resource(&p);
    assert_eq!(
        run_with(
            &ctx,
            focus.clone(),
            "gender.memberOf(%`vs-administrative-gender`)"
        ),
        "[true]"
    );
    assert_eq!(
        run_with(
            &ctx,
            focus.clone(),
            "gender.memberOf('http://example.org/vs')"
        ),
        "[]"
    );
    assert_eq!(
        run(&p, "gender.memberOf(%`vs-administrative-gender`)"),
        "[]"
    );
    assert_eq!(run(&p, "conformsTo('http://example.org/profile')"), "[]");
    assert_eq!(run(&p, "text.div.htmlChecks()"), "[true]");
    let ctx = Context::new(model(), &p)
        .with_variable("limit", vec![Item::system(SystemValue::Integer(2))]);
    assert_eq!(run_with(&ctx, focus, "name.count() <= %limit"), "[true]");
}

#[test]
fn untyped_json_falls_back_to_property_lookup() {
    let data = json!({"a": {"b": [1, 2.5, "x", true]}, "resourceType": "Unknown"});
    let ctx = Context::new(model(), &data);
    let focus = Item::untyped(&data);
    assert_eq!(run_with(&ctx, focus.clone(), "a.b"), "[1, 2.5, 'x', true]");
    assert_eq!(
        run_with(&ctx, focus.clone(), "a.b.where($this is Integer)"),
        "[1]"
    );
    assert_eq!(run_with(&ctx, focus, "a.b[1] + 1"), "[3.5]");
}

#[test]
fn parse_errors_carry_positions() {
    let cases = [
        ("Patient.name.", 13),
        ("name.where(", 11),
        ("1 +", 3),
        ("'abc", 0),
        ("foo(1)", 0),
        ("name.exists(1, 2)", 5),
        ("$that", 0),
        ("@2020-13", 0),
        ("a ! b", 2),
    ];
    for (source, position) in cases {
        let e = parse(source).expect_err(source);
        assert_eq!(e.position, position, "{source}: {e}");
    }
    assert!(
        parse("name.where(use = 'a'")
            .unwrap_err()
            .message
            .contains("')'")
    );
    let expr = parse("Patient.name").unwrap();
    assert_eq!(expr.source(), "Patient.name");
    assert_eq!(format!("{expr:?}"), "Expression(\"Patient.name\")");
}

#[test]
fn nesting_is_bounded() {
    let deep = format!(
        "{}1{}",
        "(".repeat(MAX_DEPTH + 5),
        ")".repeat(MAX_DEPTH + 5)
    );
    assert!(parse(&deep).is_err());
    let hostile = "(".repeat(100_000);
    assert!(parse(&hostile).is_err());
    let minus = "-".repeat(100_000) + "1";
    assert!(parse(&minus).is_err());
    let chain = vec!["1"; MAX_DEPTH + 5].join(" + ");
    assert!(parse(&chain).is_err());
    // Just inside the limit, evaluation (which recurses along the tree) must fit a test
    // thread's stack even in a debug build.
    let allowed = format!(
        "{}1{}",
        "(1 + ".repeat(MAX_DEPTH / 2 - 2),
        ")".repeat(MAX_DEPTH / 2 - 2)
    );
    let p = json!({});
    assert_eq!(run(&p, &allowed), format!("[{}]", MAX_DEPTH / 2 - 1));
    let exists_chain = format!(
        "{}true{}",
        "(1 | 2).exists(".repeat(MAX_DEPTH - 5),
        ")".repeat(MAX_DEPTH - 5)
    );
    assert_eq!(run(&p, &exists_chain), "[true]");
}

#[test]
fn items_expose_their_values() {
    let p = patient();
    let ctx = Context::new(model(), &p);
    let birth = evaluate(&parse("birthDate").unwrap(), &ctx, Item::resource(&p)).unwrap();
    let [birth] = birth.as_slice() else {
        panic!("one birthDate")
    };
    assert_eq!(birth.type_name().as_deref(), Some("date"));
    assert!(matches!(
        birth.system_value(model()),
        Some(SystemValue::Date(_))
    ));
    assert_eq!(
        birth
            .as_node()
            .and_then(|n| n.meta())
            .map(|m| m["extension"][0]["valueString"].clone()),
        Some(json!("14:35"))
    );
    let qty = evaluate(
        &parse("extension[1].value").unwrap(),
        &ctx,
        Item::resource(&p),
    )
    .unwrap();
    match qty.first().and_then(|q| q.system_value(model())) {
        Some(SystemValue::Quantity(q)) => assert_eq!(q.to_string(), "3.50 'mg'"),
        other => panic!("{other:?}"),
    }
    let name = evaluate(&parse("name.first()").unwrap(), &ctx, Item::resource(&p)).unwrap();
    assert!(name[0].system_value(model()).is_none());
    assert!(name[0].json().is_some_and(Value::is_object));
}

#[test]
fn passes_follows_the_java_validator() {
    let f = json!(false);
    let t = json!(true);
    assert!(passes(&[Item::system(SystemValue::Boolean(true))]));
    assert!(!passes(&[Item::system(SystemValue::Boolean(false))]));
    assert!(!passes(&[]));
    assert!(passes(&[
        Item::system(SystemValue::Integer(1)),
        Item::system(SystemValue::Integer(2))
    ]));
    assert!(passes(&[Item::system(SystemValue::String("x".into()))]));
    assert!(!passes(&[Item::primitive(Some(&f), None, "boolean")]));
    assert!(passes(&[Item::primitive(Some(&t), None, "boolean")]));
}

#[test]
fn expressions_are_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Expression>();
    let expr = parse("name.given.first().matches('[A-Z].*')").unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let expr = expr.clone();
            std::thread::spawn(move || {
                let p = patient();
                let ctx = Context::new(model(), &p);
                evaluate(&expr, &ctx, Item::resource(&p))
                    .map(|r| r.len())
                    .ok()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(1));
    }
}
