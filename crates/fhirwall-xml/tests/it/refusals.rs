//! Documents that must be refused, each with its error and expression; it must not depend on the examples package.

use fhirwall_definitions::Definitions;
use fhirwall_xml::{XmlError, XmlLimits, json_to_xml, xml_to_json};
use serde_json::{Value, json};

fn read(xml: &[u8]) -> Result<Value, XmlError> {
    xml_to_json(xml, Definitions::core(), &XmlLimits::default())
}

fn refused(xml: &str) -> XmlError {
    read(xml.as_bytes()).expect_err(xml)
}

fn patient(body: &str) -> String {
    format!("<Patient xmlns=\"http://hl7.org/fhir\">{body}</Patient>")
}

#[test]
fn billion_laughs_is_refused_as_a_dtd() {
    let xml = r#"<?xml version="1.0"?>
<!DOCTYPE Patient [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol3;"/></name></Patient>"#;
    let error = refused(xml);
    assert_eq!(error, XmlError::DtdNotAllowed);
    assert_eq!(
        error.to_string(),
        "DTDs are not allowed in FHIR XML (the document contains <!DOCTYPE)"
    );
    assert_eq!(error.expression(), None);
}

#[test]
fn external_entities_and_dtds_are_refused() {
    let external_entity = r#"<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Patient>"#;
    assert_eq!(refused(external_entity), XmlError::DtdNotAllowed);
    let external_dtd = r#"<!DOCTYPE Patient SYSTEM "http://example.org/evil.dtd"><Patient xmlns="http://hl7.org/fhir"/>"#;
    assert_eq!(refused(external_dtd), XmlError::DtdNotAllowed);
    let empty_dtd = r#"<!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"/>"#;
    assert_eq!(refused(empty_dtd), XmlError::DtdNotAllowed);
    // An entity used without any DTD is simply undefined.
    let undefined = patient("<name><family value=\"&xxe;\"/></name>");
    assert!(matches!(refused(&undefined), XmlError::Malformed { .. }));
}

#[test]
fn wrong_namespaces_are_refused() {
    let error = refused("<Patient xmlns=\"http://hl7.org/fhir/other\"/>");
    assert!(matches!(error, XmlError::WrongNamespace { .. }));
    assert_eq!(error.expression(), Some("Patient"));
    assert_eq!(refused("<Patient/>").expression(), Some("Patient"));
    let child = refused(&patient("<active xmlns=\"urn:other\" value=\"true\"/>"));
    assert!(matches!(child, XmlError::WrongNamespace { .. }));
    assert_eq!(child.expression(), Some("Patient.active"));
    // A narrative div that is not in the XHTML namespace.
    let div = refused(&patient(
        "<text><status value=\"generated\"/><div>x</div></text>",
    ));
    assert!(matches!(div, XmlError::WrongNamespace { .. }));
    assert_eq!(div.expression(), Some("Patient.text.div"));
}

#[test]
fn unknown_resource_types_are_refused() {
    let error = refused("<Patientx xmlns=\"http://hl7.org/fhir\"/>");
    assert!(matches!(error, XmlError::UnknownResourceType { .. }));
    assert_eq!(error.expression(), None);
    let abstract_type = refused("<DomainResource xmlns=\"http://hl7.org/fhir\"/>");
    assert!(matches!(
        abstract_type,
        XmlError::UnknownResourceType { .. }
    ));
    let data_type = refused("<HumanName xmlns=\"http://hl7.org/fhir\"/>");
    assert!(matches!(data_type, XmlError::UnknownResourceType { .. }));
    let contained = refused(&patient("<contained><Nonsense/></contained>"));
    assert!(matches!(contained, XmlError::UnknownResourceType { .. }));
    assert_eq!(contained.expression(), Some("Patient.contained[0]"));
}

#[test]
fn unknown_elements_are_refused() {
    let error = refused(&patient("<active value=\"true\"/><foo value=\"x\"/>"));
    assert!(matches!(error, XmlError::UnknownElement { .. }));
    assert_eq!(error.expression(), Some("Patient.foo"));
    let nested = refused(&patient(
        "<name><given value=\"a\"/><given value=\"b\"/><nick value=\"c\"/></name>",
    ));
    assert_eq!(nested.expression(), Some("Patient.name[0].nick"));
    let wrong_choice = refused(&patient("<deceasedString value=\"x\"/>"));
    assert_eq!(wrong_choice.expression(), Some("Patient.deceasedString"));
    let bare_choice = refused(&patient("<deceased value=\"true\"/>"));
    assert_eq!(bare_choice.expression(), Some("Patient.deceased"));
    // Element ids are attributes, never child elements.
    let id_element = refused(&patient("<name><id value=\"n1\"/></name>"));
    assert!(matches!(id_element, XmlError::AttributeAsElement { .. }));
    assert_eq!(id_element.expression(), Some("Patient.name[0].id"));
    let url_element = refused(&patient(
        "<extension><url value=\"http://x\"/><valueString value=\"a\"/></extension>",
    ));
    assert_eq!(url_element.expression(), Some("Patient.extension[0].url"));
}

#[test]
fn out_of_order_elements_are_refused() {
    let error = refused(&patient("<gender value=\"male\"/><active value=\"true\"/>"));
    assert_eq!(
        error,
        XmlError::OutOfOrder {
            path: "Patient.active".into(),
            before: "gender".into()
        }
    );
    assert_eq!(error.expression(), Some("Patient.active"));
    let interleaved = refused(&patient(
        "<name><given value=\"a\"/><family value=\"b\"/></name>",
    ));
    assert_eq!(interleaved.expression(), Some("Patient.name[0].family"));
    let split_run = refused(&patient(
        "<name><family value=\"x\"/></name><gender value=\"male\"/><name><family value=\"y\"/></name>",
    ));
    assert_eq!(split_run.expression(), Some("Patient.name"));
}

#[test]
fn repeated_single_elements_are_refused() {
    let error = refused(&patient(
        "<active value=\"true\"/><active value=\"false\"/>",
    ));
    assert_eq!(
        error,
        XmlError::Repeated {
            path: "Patient.active".into()
        }
    );
    let nested = refused(&patient(
        "<name><family value=\"a\"/><family value=\"b\"/></name>",
    ));
    assert_eq!(nested.expression(), Some("Patient.name[0].family"));
    let two_choices = refused(&patient(
        "<deceasedBoolean value=\"true\"/><deceasedDateTime value=\"2020\"/>",
    ));
    assert_eq!(two_choices.expression(), Some("Patient.deceasedDateTime"));
    let two_resources = refused(&patient("<contained><Patient/><Patient/></contained>"));
    assert_eq!(two_resources.expression(), Some("Patient.contained[0]"));
}

#[test]
fn over_deep_nesting_is_refused() {
    let depth = 100;
    let mut body = String::new();
    for _ in 0..depth {
        body.push_str("<extension url=\"http://x\">");
    }
    body.push_str("<valueString value=\"deep\"/>");
    for _ in 0..depth {
        body.push_str("</extension>");
    }
    let error = refused(&patient(&body));
    let XmlError::TooDeep { path, limit } = &error else {
        panic!("{error}");
    };
    assert_eq!(*limit, 64);
    assert!(
        path.starts_with("Patient.extension[0].extension[0]"),
        "{path}"
    );
    // The same measure as the JSON depth limit: the root object is level 1, each array and
    // object below it one more.
    let shallow = patient("<name><family value=\"x\"/></name>");
    let limits = |max_depth| XmlLimits {
        max_depth,
        ..XmlLimits::default()
    };
    assert!(xml_to_json(shallow.as_bytes(), Definitions::core(), &limits(3)).is_ok());
    let error = xml_to_json(shallow.as_bytes(), Definitions::core(), &limits(2)).unwrap_err();
    assert_eq!(error.expression(), Some("Patient.name[0]"));
}

#[test]
fn over_size_and_over_node_count_are_refused() {
    let xml = patient("<active value=\"true\"/>");
    let small = XmlLimits {
        max_bytes: 20,
        ..XmlLimits::default()
    };
    assert_eq!(
        xml_to_json(xml.as_bytes(), Definitions::core(), &small),
        Err(XmlError::TooLarge { limit: 20 })
    );
    let mut many = String::new();
    for _ in 0..200 {
        many.push_str("<given value=\"a\"/>");
    }
    let xml = patient(&format!("<name>{many}</name>"));
    let few = XmlLimits {
        max_nodes: 100,
        ..XmlLimits::default()
    };
    assert_eq!(
        xml_to_json(xml.as_bytes(), Definitions::core(), &few),
        Err(XmlError::TooManyNodes { limit: 100 })
    );
    assert!(read(xml.as_bytes()).is_ok());
}

#[test]
fn unrepresentable_values_are_refused_without_echoing_them() {
    let error = refused(&patient("<active value=\"SECRET-yes\"/>"));
    assert!(matches!(error, XmlError::InvalidValue { .. }));
    assert_eq!(error.expression(), Some("Patient.active"));
    assert!(!error.to_string().contains("SECRET"), "{error}");
    let number = refused(&patient("<multipleBirthInteger value=\"SECRET-two\"/>"));
    assert_eq!(number.expression(), Some("Patient.multipleBirthInteger"));
    assert!(!number.to_string().contains("SECRET"));
    let padded = refused(&patient("<multipleBirthInteger value=\" 2\"/>"));
    assert!(matches!(padded, XmlError::InvalidValue { .. }));
    let missing = refused(&patient("<active/>"));
    assert!(matches!(missing, XmlError::MissingValue { .. }));
    assert_eq!(missing.expression(), Some("Patient.active"));
}

#[test]
fn misplaced_attributes_and_text_are_refused() {
    let value = refused(&patient("<name value=\"SECRET\"/>"));
    assert!(matches!(value, XmlError::ValueOnNonPrimitive { .. }));
    assert_eq!(value.expression(), Some("Patient.name[0]"));
    assert!(!value.to_string().contains("SECRET"));
    let unknown = refused(&patient("<active value=\"true\" foo=\"x\"/>"));
    assert!(matches!(unknown, XmlError::UnknownAttribute { .. }));
    assert_eq!(unknown.expression(), Some("Patient.active"));
    let resource_id = refused("<Patient xmlns=\"http://hl7.org/fhir\" id=\"x\"/>");
    assert_eq!(resource_id.expression(), Some("Patient"));
    let namespaced = refused(&patient(
        "<active xmlns:o=\"urn:o\" o:value=\"true\" value=\"true\"/>",
    ));
    assert!(matches!(namespaced, XmlError::UnknownAttribute { .. }));
    let text = refused(&patient("<active value=\"true\">SECRET</active>"));
    assert!(matches!(text, XmlError::UnexpectedText { .. }));
    assert_eq!(text.expression(), Some("Patient.active"));
    assert!(!text.to_string().contains("SECRET"));
    let root_text = refused(&patient("SECRET"));
    assert_eq!(root_text.expression(), Some("Patient"));
    let cdata = refused(&patient("<name><![CDATA[SECRET]]></name>"));
    assert_eq!(cdata.expression(), Some("Patient.name[0]"));
}

#[test]
fn encodings_other_than_utf8_are_refused() {
    let latin1 =
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Patient xmlns=\"http://hl7.org/fhir\"/>";
    assert_eq!(refused(latin1), XmlError::UnsupportedEncoding);
    let bytes = b"<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"M\xfcller\"/></name></Patient>";
    assert_eq!(read(bytes), Err(XmlError::NotUtf8));
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("<Patient/>".bytes().flat_map(|b| [b, 0]))
        .collect();
    assert_eq!(read(&utf16), Err(XmlError::NotUtf8));
    let declared_utf8 = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Patient xmlns=\"http://hl7.org/fhir\"/>";
    assert_eq!(
        read(declared_utf8.as_bytes()).unwrap(),
        json!({"resourceType": "Patient"})
    );
}

#[test]
fn processing_instructions_are_refused() {
    let stylesheet = "<?xml-stylesheet href=\"x.xsl\"?><Patient xmlns=\"http://hl7.org/fhir\"/>";
    assert_eq!(
        refused(stylesheet),
        XmlError::ProcessingInstruction { path: None }
    );
    let inside = refused(&patient("<name><?pi data?></name>"));
    assert_eq!(inside.expression(), Some("Patient.name[0]"));
    let in_div = refused(&patient(
        "<text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\"><?pi x?></div></text>",
    ));
    assert_eq!(in_div.expression(), Some("Patient.text.div"));
}

#[test]
fn malformed_documents_are_refused() {
    for xml in [
        "<Patient xmlns=\"http://hl7.org/fhir\"/>garbage",
        "<Patient xmlns=\"http://hl7.org/fhir\"/><Patient xmlns=\"http://hl7.org/fhir\"/>",
        "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"></Patient>",
        "<Patient xmlns=\"http://hl7.org/fhir\"",
        "just text",
        " <?xml version=\"1.0\"?><Patient xmlns=\"http://hl7.org/fhir\"/>",
    ] {
        let error = refused(xml);
        assert!(
            matches!(error, XmlError::Malformed { .. }),
            "{xml}: {error}"
        );
        assert_eq!(error.expression(), None);
    }
    let error = refused(
        "<Patient xmlns=\"http://hl7.org/fhir\">\n<name>\n<family value=\"SECRET\"></given></name></Patient>",
    );
    assert!(
        matches!(error, XmlError::Malformed { line: 3, .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("SECRET"));
}

#[test]
fn empty_input_is_refused() {
    assert_eq!(read(b""), Err(XmlError::Empty));
    assert_eq!(read(b" \n\t"), Err(XmlError::Empty));
    assert_eq!(read("\u{feff}".as_bytes()), Err(XmlError::Empty));
}

fn write_refused(resource: Value) -> XmlError {
    json_to_xml(&resource, Definitions::core(), false).expect_err(&resource.to_string())
}

#[test]
fn json_that_cannot_be_written_is_refused() {
    let unknown = write_refused(json!({"resourceType": "Patient", "foo": 1}));
    assert!(matches!(unknown, XmlError::UnknownProperty { .. }));
    assert_eq!(unknown.expression(), Some("Patient.foo"));
    let underscore = write_refused(json!({"resourceType": "Patient", "_name": [{}]}));
    assert_eq!(underscore.expression(), Some("Patient._name"));
    let nested =
        write_refused(json!({"resourceType": "Patient", "name": [{"family": "a"}, {"nick": "b"}]}));
    assert_eq!(nested.expression(), Some("Patient.name[1].nick"));
    let boolean = write_refused(json!({"resourceType": "Patient", "active": "true"}));
    assert!(matches!(boolean, XmlError::InvalidJson { .. }));
    assert_eq!(boolean.expression(), Some("Patient.active"));
    let not_array = write_refused(json!({"resourceType": "Patient", "name": {"family": "a"}}));
    assert_eq!(not_array.expression(), Some("Patient.name"));
    let array = write_refused(json!({"resourceType": "Patient", "active": [true]}));
    assert_eq!(array.expression(), Some("Patient.active"));
    let mismatch = write_refused(json!({
        "resourceType": "Patient",
        "name": [{"given": ["a", "b"], "_given": [{"id": "x"}]}]
    }));
    assert_eq!(mismatch.expression(), Some("Patient.name[0].given"));
    let gap = write_refused(json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}));
    assert_eq!(gap.expression(), Some("Patient.name[0].given[1]"));
    let empty = write_refused(json!({"resourceType": "Patient", "name": []}));
    assert_eq!(empty.expression(), Some("Patient.name"));
    let control =
        write_refused(json!({"resourceType": "Patient", "name": [{"family": "a\u{1}b"}]}));
    assert!(matches!(control, XmlError::InvalidValue { .. }));
    assert_eq!(control.expression(), Some("Patient.name[0].family"));
    let two_choices = write_refused(json!({
        "resourceType": "Patient",
        "deceasedBoolean": true,
        "deceasedDateTime": "2020"
    }));
    assert!(matches!(two_choices, XmlError::Repeated { .. }));
    let url_extension = write_refused(json!({
        "resourceType": "Patient",
        "extension": [{"url": "http://x", "_url": {"id": "u"}, "valueString": "a"}]
    }));
    assert_eq!(url_extension.expression(), Some("Patient.extension[0].url"));
}

#[test]
fn json_resources_must_be_known() {
    assert_eq!(
        write_refused(json!([1])),
        XmlError::NotAResource { path: None }
    );
    assert_eq!(
        write_refused(json!({"id": "x"})),
        XmlError::NotAResource { path: None }
    );
    assert!(matches!(
        write_refused(json!({"resourceType": "Resource"})),
        XmlError::UnknownResourceType { .. }
    ));
    let contained = write_refused(json!({"resourceType": "Patient", "contained": [{"id": "x"}]}));
    assert_eq!(contained.expression(), Some("Patient.contained[0]"));
    let entry = write_refused(json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "bogus": true}}]
    }));
    assert_eq!(entry.expression(), Some("Bundle.entry[0].resource.bogus"));
}

#[test]
fn json_divs_must_be_xhtml() {
    for div in [
        "<div>no namespace</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>unclosed</div>",
        "plain text",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">&nbsp;</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"/><script/>",
    ] {
        let error = write_refused(json!({
            "resourceType": "Patient",
            "text": {"status": "generated", "div": div}
        }));
        assert!(matches!(error, XmlError::Xhtml { .. }), "{div}: {error}");
        assert_eq!(error.expression(), Some("Patient.text.div"), "{div}");
    }
}
