//! The CapabilityStatement, generated from what this server really implements.

use serde_json::{Value, json};

use crate::Service;

/// The search parameters of a type as the CapabilityStatement lists them: exactly those the
/// search index applies, each with the modifiers it honours.
fn search_params(search: &fhirwall_search::SearchIndex, type_name: &str) -> Vec<Value> {
    search
        .params(type_name)
        .into_iter()
        .map(|p| {
            let mut param = json!({
                "name": p.name,
                "type": p.kind.code(),
                "definition": p.definition,
            });
            if !p.modifiers.is_empty()
                && let Some(map) = param.as_object_mut()
            {
                map.insert(
                    "documentation".into(),
                    json!(format!("Modifiers: {}.", p.modifiers.join(", "))),
                );
            }
            param
        })
        .collect()
}

/// The result parameters every search takes.
const SEARCH_CONTROLS: &str = "Searches take _count, _sort (several keys, - for descending), _total (none, estimate, accurate), _summary (true, text, data, count, false), _elements, _include and _revinclude (with :iterate and *), chained parameters, _has, and POST [type]/_search with a form body. Paging links are sealed for the client they were issued to and expire after 30 minutes.";

pub(crate) fn capability_statement(service: &Service) -> Value {
    let base = service.fhir_base();
    let profiles = service.inner.profiles.validator.profiles();
    let search = service.search_index();
    let mut resources = Vec::new();
    for info in fhirwall_model::generated::RESOURCE_TYPES {
        if info.name == "AuditEvent" {
            resources.push(json!({
                "type": "AuditEvent",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "versioning": "no-version",
                "readHistory": false,
                "updateCreate": false,
            }));
            continue;
        }
        let search_params = search_params(&search, info.name);
        let reference_params: Vec<String> = search
            .params(info.name)
            .into_iter()
            .filter(|p| p.kind == fhirwall_search::ParamKind::Reference)
            .map(|p| format!("{}:{}", info.name, p.name))
            .collect();
        let mut search_include = vec!["*".to_string()];
        search_include.extend(reference_params);
        resources.push(json!({
            "type": info.name,
            "interaction": [
                {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
                {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
                {"code": "create"}, {"code": "search-type"}
            ],
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalRead": "full-support",
            "conditionalUpdate": true,
            "conditionalDelete": "single",
            "searchParam": search_params,
            "searchInclude": search_include,
            "documentation": SEARCH_CONTROLS,
            "operation": [{
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
            }],
        }));
        let held: Vec<&str> = profiles
            .iter()
            .filter(|(ty, _)| ty == info.name)
            .map(|(_, url)| url.as_str())
            .collect();
        if !held.is_empty()
            && let Some(Value::Object(resource)) = resources.last_mut()
        {
            resource.insert("supportedProfile".into(), json!(held));
        }
    }
    json!({
        "resourceType": "CapabilityStatement",
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Fhirwall FHIR R4 server: what it supports.</p></div>"
        },
        "name": "FhirwallCapabilityStatement",
        "title": "Fhirwall FHIR server",
        "status": "active",
        "date": "2026-11-28",
        "publisher": "Fhirwall",
        "kind": "instance",
        "software": {"name": "Fhirwall", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Fhirwall FHIR server", "url": base},
        "fhirVersion": fhirwall_model::generated::FHIR_VERSION,
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "patchFormat": [
            "application/json-patch+json",
            "application/fhir+json",
            "application/fhir+xml"
        ],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                // The oauth-uris extension would need an authorize endpoint, which backend
                // services do not have (its definition makes `authorize` mandatory); clients
                // find the token endpoint in .well-known/smart-configuration.
                "description": format!(
                    "SMART Backend Services (client_credentials with private_key_jwt, RS384 or ES384); token endpoint {}; see .well-known/smart-configuration.",
                    service.token_url()
                ),
            },
            "resource": resources,
            "interaction": [
                {"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                {"code": "search-system"}
            ],
            "searchParam": search_params(&search, "Resource"),
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
        }],
    })
}

/// The SMART configuration document (`.well-known/smart-configuration`).
pub(crate) fn smart_configuration(service: &Service) -> Value {
    let base = service.base_url();
    json!({
        "token_endpoint": service.token_url(),
        "jwks_uri": format!("{base}/auth/jwks"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/*.*", "system/AuditEvent.rs"],
        "response_types_supported": ["token"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })
}
