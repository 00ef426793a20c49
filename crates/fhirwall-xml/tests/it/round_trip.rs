//! Every example resource of the FHIR R4 examples package goes JSON -> XML -> JSON unchanged; it must not skip a resource silently.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};

use fhirwall_definitions::Definitions;
use fhirwall_xml::{XmlError, XmlLimits, json_to_xml, xml_to_json};
use serde_json::Value;

/// The examples whose JSON the definitions reject, with the error each must give. The spec's
/// own examples are all convertible, so this list is empty; it stays so that a future
/// exception is written down with its reason rather than skipped.
const EXPECTED_FAILURES: &[(&str, &str)] = &[];

/// Pretty output differs from compact output only in whitespace between elements, so it is
/// checked on the smaller examples only, to keep the debug-build test fast.
const PRETTY_BELOW_BYTES: usize = 64 * 1024;

/// What one worker found.
#[derive(Default)]
struct Tally {
    converted: usize,
    pretty: usize,
    over_default_limits: Vec<String>,
    failures: Vec<String>,
}

#[test]
fn every_example_round_trips() {
    let Some(package) = fhirwall_testdata::shared_file_or_skip(fhirwall_testdata::EXAMPLES_PACKAGE)
    else {
        return;
    };
    let (sender, receiver) = sync_channel::<(String, Vec<u8>)>(32);
    let receiver = Mutex::new(receiver);
    let tallies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2).map(|_| scope.spawn(|| work(&receiver))).collect();
        // The archive is read here while the workers convert what it has handed over so far.
        fhirwall_testdata::for_each_package_json(
            &package,
            |_| true,
            |file, bytes| sender.send((file, bytes)).unwrap(),
        )
        .unwrap();
        drop(sender);
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut total = Tally::default();
    for tally in tallies {
        total.converted += tally.converted;
        total.pretty += tally.pretty;
        total.over_default_limits.extend(tally.over_default_limits);
        total.failures.extend(tally.failures);
    }
    total.over_default_limits.sort();
    println!(
        "round-tripped {} example resources ({} also pretty-printed); over the default limits, checked with raised ones: {:?}",
        total.converted, total.pretty, total.over_default_limits
    );
    assert!(
        total.converted > 5000,
        "only {} examples were found",
        total.converted
    );
    assert!(
        total.failures.is_empty(),
        "{} failures:\n{}",
        total.failures.len(),
        total
            .failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn work(receiver: &Mutex<Receiver<(String, Vec<u8>)>>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let next = receiver.lock().unwrap().recv();
        let Ok((file, bytes)) = next else {
            return tally;
        };
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        if json.get("resourceType").is_none() {
            // package.json and the index describe the package; they are not resources.
            continue;
        }
        tally.converted += 1;
        let modes: &[bool] = if bytes.len() < PRETTY_BELOW_BYTES {
            tally.pretty += 1;
            &[false, true]
        } else {
            &[false]
        };
        for &pretty in modes {
            if let Err(failure) = round_trip(&json, pretty, &file, &mut tally) {
                tally
                    .failures
                    .push(format!("{file} (pretty {pretty}): {failure}"));
            }
        }
    }
}

fn round_trip(json: &Value, pretty: bool, file: &str, tally: &mut Tally) -> Result<(), String> {
    let defs = Definitions::core();
    let xml = match json_to_xml(json, defs, pretty) {
        Ok(xml) => xml,
        Err(error) => return expected_failure(file, &error),
    };
    let back = match xml_to_json(xml.as_bytes(), defs, &XmlLimits::default()) {
        Ok(back) => back,
        Err(XmlError::TooLarge { .. } | XmlError::TooManyNodes { .. }) => {
            // The packaged bundles of all definitions are larger than a request may be.
            if !pretty {
                tally.over_default_limits.push(file.to_owned());
            }
            let raised = XmlLimits {
                max_bytes: 512 * 1024 * 1024,
                max_nodes: u32::MAX,
                ..XmlLimits::default()
            };
            match xml_to_json(xml.as_bytes(), defs, &raised) {
                Ok(back) => back,
                Err(error) => return expected_failure(file, &error),
            }
        }
        Err(error) => return expected_failure(file, &error),
    };
    if back == *json {
        Ok(())
    } else {
        Err(format!("differs after the round trip:\n{xml}"))
    }
}

fn expected_failure(file: &str, error: &XmlError) -> Result<(), String> {
    let message = error.to_string();
    match EXPECTED_FAILURES.iter().find(|(f, _)| *f == file) {
        Some((_, expected)) if message == *expected => Ok(()),
        _ => Err(message),
    }
}
