//! Audit records: what each access left behind, the keyed hash chain that makes the trail
//! tamper-evident, and the FHIR AuditEvent view of a record (IHE Basic Audit Log Patterns).
//! It must never hold a resource body: records name resources, they do not contain them.

use base64::Engine;
use fhirwall_crypto::MacKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The coarse outcome of an audited event, as AuditEvent.outcome codes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// 0: success.
    Success,
    /// 4: the request was refused or invalid (a 4xx).
    MinorFailure,
    /// 8: the server failed (a 5xx).
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
        }
    }

    /// The outcome an HTTP status stands for.
    pub fn from_status(status: u16) -> Self {
        match status {
            0..=399 => Outcome::Success,
            400..=499 => Outcome::MinorFailure,
            _ => Outcome::SeriousFailure,
        }
    }
}

/// AuditEvent.action: what the event did to data. Stored as its one-letter code, so records
/// written before this type existed read the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "C")]
    Create,
    #[serde(rename = "R")]
    Read,
    #[serde(rename = "U")]
    Update,
    #[serde(rename = "D")]
    Delete,
    #[serde(rename = "E")]
    Execute,
}

impl Action {
    pub fn code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }

    /// Whether the event wrote a resource version.
    pub fn writes(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
}

/// What kind of event this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A FHIR RESTful interaction (AuditEvent.type `rest`).
    Rest,
    /// An authentication at the token endpoint or with a bearer token (DICOM 110114).
    Authentication,
}

/// One audited event. Everything here is safe to keep: references, codes, addresses, ids;
/// the record is still encrypted at rest because who read which patient is itself sensitive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// A unique id (UUID) chosen before the record is stored; it is the AEAD context.
    pub record_id: String,
    pub tenant: String,
    pub kind: EventKind,
    /// The FHIR restful-interaction code (`read`, `create`, `history-type`, ...) or, for
    /// authentication, `login` / `token-check`.
    pub subtype: String,
    pub action: Action,
    /// RFC 3339 time of the event.
    pub recorded: String,
    pub outcome: Outcome,
    /// A stable error code when the outcome is not success.
    pub outcome_code: Option<String>,
    pub http_status: u16,
    pub client_id: Option<String>,
    pub user: Option<String>,
    pub source_address: Option<String>,
    pub request_id: String,
    /// Resources the event touched, as relative references (`Observation/1/_history/2`).
    pub entities: Vec<String>,
    /// Patients the event concerns (`Patient/123`).
    pub patients: Vec<String>,
    /// The query of a search or conditional interaction, when there was one: parameter names
    /// with keyed hashes of their values (never the values).
    pub query: Option<String>,
    /// For a summary record: how many further events of the same kind from the same source it
    /// stands for (failed authentications past the rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

impl AuditRecord {
    /// The record as a FHIR R4 AuditEvent following IHE BALP.
    pub fn to_audit_event(&self, id: &str) -> Value {
        let event_type = match self.kind {
            EventKind::Rest => json!({
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest", "display": "Restful Operation"
            }),
            EventKind::Authentication => json!({
                "system": DCM, "code": "110114", "display": "User Authentication"
            }),
        };
        let subtype = match self.kind {
            EventKind::Rest => json!({
                "system": "http://hl7.org/fhir/restful-interaction", "code": self.subtype
            }),
            EventKind::Authentication => json!({
                "system": DCM, "code": "110122", "display": "Login"
            }),
        };
        let mut client = json!({
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "requestor": true,
        });
        if let Some(client_id) = &self.client_id {
            put(
                &mut client,
                "who",
                json!({"identifier": {"system": "urn:fhirwall:client", "value": client_id}}),
            );
        }
        if let Some(address) = &self.source_address {
            put(
                &mut client,
                "network",
                json!({"address": address, "type": "2"}),
            );
        }
        let mut agents = vec![client];
        if let Some(user) = &self.user {
            agents.push(json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV"}]},
                "who": {"reference": user},
                "requestor": true,
            }));
        }
        agents.push(json!({
            "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
            "who": {"display": "fhirwall"},
            "requestor": false,
        }));
        let mut entities: Vec<Value> = Vec::new();
        for patient in &self.patients {
            entities.push(json!({
                "what": {"reference": patient},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
            }));
        }
        for entity in &self.entities {
            entities.push(json!({
                "what": {"reference": entity},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
            }));
        }
        if let Some(query) = &self.query {
            entities.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(query.as_bytes()),
            }));
        }
        entities.push(json!({
            "what": {"identifier": {"system": "urn:fhirwall:request-id", "value": self.request_id}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "detail": [{"type": "http-status", "valueString": self.http_status.to_string()}],
        }));
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": id,
            "type": event_type,
            "subtype": [subtype],
            "action": self.action.code(),
            "recorded": self.recorded,
            "outcome": self.outcome.code(),
            "agent": agents,
            "source": {
                "observer": {"display": "fhirwall"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
            },
            "entity": entities,
        });
        match (&self.outcome_code, self.repeated) {
            (Some(code), Some(n)) => put(
                &mut event,
                "outcomeDesc",
                Value::String(format!(
                    "{code}; stands for {n} further events from this source"
                )),
            ),
            (Some(code), None) => put(&mut event, "outcomeDesc", Value::String(code.clone())),
            (None, _) => {}
        }
        event
    }
}

/// The MAC that links record `seq` to its predecessor. Keyed, so whoever can rewrite the
/// database but does not hold the chain key cannot recompute the chain after an edit.
pub fn chain_link(
    key: &MacKey,
    previous: &[u8; 32],
    seq: u64,
    record_id: &str,
    sealed_record: &[u8],
) -> [u8; 32] {
    key.mac(&[
        b"fhirwall-audit-chain/1",
        previous,
        &seq.to_be_bytes(),
        record_id.as_bytes(),
        sealed_record,
    ])
}

/// The link before the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Why a trail failed verification.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("record {found} follows record {expected_previous}: records are missing or reordered")]
    Gap { expected_previous: u64, found: u64 },
    #[error("record {seq}: its chain link does not match (altered, removed or reordered records)")]
    BadLink { seq: u64 },
    #[error("record {seq}: it does not decrypt (altered or moved)")]
    Undecryptable { seq: u64 },
    #[error("record {seq}: it is not a well-formed audit record")]
    Unreadable { seq: u64 },
}

/// Walks a trail in order and checks each record's position and link.
pub struct ChainVerifier {
    key: MacKey,
    previous: [u8; 32],
    last_seq: u64,
    count: u64,
}

impl ChainVerifier {
    pub fn new(key: MacKey) -> Self {
        ChainVerifier {
            key,
            previous: GENESIS,
            last_seq: 0,
            count: 0,
        }
    }

    /// Checks the next stored record; sequence numbers start at 1 and have no gaps.
    pub fn check(
        &mut self,
        seq: u64,
        record_id: &str,
        sealed_record: &[u8],
        stored_link: &[u8],
    ) -> Result<(), ChainBreak> {
        if seq != self.last_seq + 1 {
            return Err(ChainBreak::Gap {
                expected_previous: self.last_seq,
                found: seq,
            });
        }
        let expected = chain_link(&self.key, &self.previous, seq, record_id, sealed_record);
        if !self.key.verify(
            &[
                b"fhirwall-audit-chain/1",
                &self.previous,
                &seq.to_be_bytes(),
                record_id.as_bytes(),
                sealed_record,
            ],
            stored_link,
        ) {
            return Err(ChainBreak::BadLink { seq });
        }
        self.previous = expected;
        self.last_seq = seq;
        self.count += 1;
        Ok(())
    }

    pub fn records_checked(&self) -> u64 {
        self.count
    }

    /// The link of the last record checked.
    pub fn head(&self) -> [u8; 32] {
        self.previous
    }
}

/// Sets `key` on a JSON object (a no-op on anything else).
fn put(value: &mut Value, key: &str, new: Value) {
    if let Some(map) = value.as_object_mut() {
        map.insert(key.to_string(), new);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn key() -> MacKey {
        // A MacKey can only come from the crypto crate's envelope; build one through it.
        let dir = std::env::temp_dir().join(format!(
            "fw-audit-{}",
            fhirwall_crypto::random_hex_128().unwrap()
        ));
        let ring = fhirwall_crypto::FileKeyring::open_or_create(&dir.join("k.json")).unwrap();
        let mut env = fhirwall_crypto::Envelope::new(std::sync::Arc::new(ring));
        env.create_key("audit-chain", "t", 0).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        env.audit_chain_key("t").unwrap()
    }

    #[test]
    fn chain_detects_alteration_gap_and_reorder() {
        let key = key();
        let records: Vec<(u64, String, Vec<u8>)> = (1..=3)
            .map(|i| (i, format!("r{i}"), vec![i as u8; 10]))
            .collect();
        let mut links = Vec::new();
        let mut prev = GENESIS;
        for (seq, id, body) in &records {
            prev = chain_link(&key, &prev, *seq, id, body);
            links.push(prev);
        }
        let mut ok = ChainVerifier::new(key.clone());
        for ((seq, id, body), link) in records.iter().zip(&links) {
            ok.check(*seq, id, body, link).unwrap();
        }
        assert_eq!(ok.records_checked(), 3);

        let mut altered = ChainVerifier::new(key.clone());
        altered.check(1, "r1", &records[0].2, &links[0]).unwrap();
        assert_eq!(
            altered.check(2, "r2", b"changed", &links[1]),
            Err(ChainBreak::BadLink { seq: 2 })
        );

        let mut gap = ChainVerifier::new(key.clone());
        gap.check(1, "r1", &records[0].2, &links[0]).unwrap();
        assert!(matches!(
            gap.check(3, "r3", &records[2].2, &links[2]),
            Err(ChainBreak::Gap { .. })
        ));
    }

    #[test]
    fn audit_event_has_no_body_and_names_patient() {
        let record = AuditRecord {
            record_id: "x".into(),
            tenant: "default".into(),
            kind: EventKind::Rest,
            subtype: "read".into(),
            action: Action::Read,
            recorded: "2026-01-01T00:00:00Z".into(),
            outcome: Outcome::Success,
            outcome_code: None,
            http_status: 200,
            client_id: Some("c1".into()),
            user: None,
            source_address: Some("127.0.0.1".into()),
            request_id: "req".into(),
            entities: vec!["Patient/1/_history/1".into()],
            patients: vec!["Patient/1".into()],
            query: None,
            repeated: None,
        };
        let event = record.to_audit_event("7");
        assert_eq!(event["resourceType"], "AuditEvent");
        assert_eq!(event["entity"][0]["what"]["reference"], "Patient/1");
        assert_eq!(event["outcome"], "0");
    }
}
