//! Criterion micro-benchmarks of the in-process costs of one request body: strict JSON parse of
//! the ~3 KB Patient, its serialization, validation against the definitions, FHIR XML both
//! ways, and AES-256-GCM seal and open through the envelope.

// The load generator is an outside client with its own clock, not part of the server.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fhirwall_bench::payloads::{Observations, Patients};
use fhirwall_crypto::{AadContext, Envelope, FileKeyring};
use fhirwall_model::{JsonLimits, parse_strict};

/// A keyring file in a fresh temporary directory, removed on drop.
struct TempKeyring {
    dir: std::path::PathBuf,
}

impl TempKeyring {
    fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "fhirwall-bench-criterion-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempKeyring { dir })
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.join("keyring.json")
    }
}

impl Drop for TempKeyring {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn benches(c: &mut Criterion) -> Result<(), Box<dyn std::error::Error>> {
    let patients = Patients::new()?;
    let patient = patients.body(42);
    let observation = Observations::new()?.body(42, "0195f3c2-8e6b-7a1d-9c4e-2f6a8b0c1d3e");
    let value = parse_strict(&patient, JsonLimits::default())?;

    let mut group = c.benchmark_group("patient");
    group.throughput(Throughput::Bytes(patient.len() as u64));
    group.bench_function("parse_strict", |b| {
        b.iter(|| parse_strict(black_box(&patient), JsonLimits::default()))
    });
    group.bench_function("serde_json_from_slice", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&patient)))
    });
    group.bench_function("serialize", |b| {
        b.iter(|| serde_json::to_vec(black_box(&value)))
    });
    group.bench_function("template_render", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            patients.body(black_box(seq))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("observation");
    group.throughput(Throughput::Bytes(observation.len() as u64));
    group.bench_function("parse_strict", |b| {
        b.iter(|| parse_strict(black_box(&observation), JsonLimits::default()))
    });
    group.finish();

    // Validation and XML, next to the parse they are added to.
    let definitions = fhirwall_definitions::Definitions::core();
    let validator = fhirwall_validation::Validator::new(definitions);
    let options = fhirwall_validation::ValidateOptions::default();
    let observation_value = parse_strict(&observation, JsonLimits::default())?;
    for (name, resource) in [("patient", &value), ("observation", &observation_value)] {
        let outcome = validator.validate(resource, &options);
        if !outcome.is_valid() {
            return Err(format!("the bench {name} is invalid: {:?}", outcome.issues).into());
        }
    }
    let mut group = c.benchmark_group("validate");
    group.bench_function("patient", |b| {
        b.iter(|| validator.validate(black_box(&value), &options))
    });
    group.bench_function("observation", |b| {
        b.iter(|| validator.validate(black_box(&observation_value), &options))
    });
    group.finish();

    let xml = fhirwall_xml::json_to_xml(&value, definitions, false)?;
    let limits = fhirwall_xml::XmlLimits::default();
    let mut group = c.benchmark_group("xml");
    group.throughput(Throughput::Bytes(xml.len() as u64));
    group.bench_function("patient_json_to_xml", |b| {
        b.iter(|| fhirwall_xml::json_to_xml(black_box(&value), definitions, false))
    });
    group.bench_function("patient_xml_to_json", |b| {
        b.iter(|| fhirwall_xml::xml_to_json(black_box(xml.as_bytes()), definitions, &limits))
    });
    group.finish();

    let keyring_dir = TempKeyring::new()?;
    let keyring = FileKeyring::open_or_create(&keyring_dir.path())?;
    let mut envelope = Envelope::new(Arc::new(keyring));
    envelope.create_key("data", "default", 0)?;
    let context = AadContext::Resource {
        tenant: "default",
        resource_type: "Patient",
        id: "x",
        version: 1,
    };
    let sealed = envelope.seal(&context, &patient)?;
    let opened = envelope.open(&context, &sealed)?;
    if opened != patient {
        return Err("open(seal(x)) != x".into());
    }

    let mut group = c.benchmark_group("aes_256_gcm");
    group.throughput(Throughput::Bytes(patient.len() as u64));
    group.bench_function("seal_patient", |b| {
        b.iter(|| envelope.seal(black_box(&context), black_box(&patient)))
    });
    group.bench_function("open_patient", |b| {
        b.iter(|| envelope.open(black_box(&context), black_box(&sealed)))
    });
    group.finish();
    Ok(())
}

fn core(c: &mut Criterion) {
    if let Err(e) = benches(c) {
        eprintln!("benchmark setup failed: {e}");
        std::process::exit(1);
    }
}

criterion_group!(all, core);
criterion_main!(all);
