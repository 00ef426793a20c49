//! Crashes, shutdowns, encryption at rest, and start-up configuration errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::{BIN, Server, patient};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let Ok(r) = c
                    .post("Patient", &patient("Crash", &format!("K-{t}-{i}")))
                    .send()
                    .await
                else {
                    break;
                };
                if r.status() == 201 {
                    let body: serde_json::Value = match r.json().await {
                        Ok(b) => b,
                        Err(_) => break,
                    };
                    acknowledged.push(body["id"].as_str().unwrap().to_string());
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "too few writes before the kill: {}",
        acknowledged.len()
    );
    let dir = server.data_dir.clone();
    let restarted = Server::start_in(&dir, &[]).await;
    let c2 = restarted.client("system/*.rs").await;
    crate::support::assert_patients_readable(&c2, &acknowledged).await;
    drop(restarted);
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests() {
    let mut server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..1000 {
                match c
                    .post("Patient", &patient("Term", &format!("T-{t}-{i}")))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => match r.json::<serde_json::Value>().await {
                        Ok(body) => acknowledged.push(body["id"].as_str().unwrap().to_string()),
                        Err(_) => break,
                    },
                    Ok(r) => panic!("unexpected status {} during shutdown", r.status()),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(server.terminate(), "the server exits cleanly on SIGTERM");
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    let dir = server.data_dir.clone();
    let restarted = Server::start_in(&dir, &[]).await;
    let c2 = restarted.client("system/*.rs").await;
    crate::support::assert_patients_readable(&c2, &acknowledged).await;
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[tokio::test]
async fn raw_files_and_logs_hold_no_patient_data_or_tokens() {
    let dir = crate::support::fresh_dir();
    let log = std::env::temp_dir().join(format!(
        "fhirwall-log-{}.txt",
        uuid::Uuid::new_v4().simple()
    ));
    let mut server =
        Server::start_logging(&dir, &["--log-format", "json"], "info", Some(&log)).await;
    let c = server.client("system/*.cruds").await;
    let canaries = [
        "Zyxwvutsrqpo",
        "MRN-CANARY-7731",
        "555-0199-4242",
        "77 Canarywharf Lane",
        "Quokkaville",
    ];
    let body = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": canaries[1]}],
        "name": [{"family": canaries[0], "given": ["Amelia"]}],
        "telecom": [{"system": "phone", "value": canaries[2]}],
        "address": [{"line": [canaries[3]], "city": canaries[4]}]
    });
    let created = c.create(&body).await;
    let id = created["id"].as_str().unwrap();
    // A data directory the server creates is its owner's alone.
    let private = dir.join("private-data");
    let private_server = Server::start_in(&private, &[]).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(private_server);
    // Conditional operations and searches put the identifier in URLs and the audit trail.
    let r = c
        .post("Patient", &body)
        .header("If-None-Exist", format!("identifier={}", canaries[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = c
        .get(&format!("Patient?identifier={}", canaries[1]))
        .send()
        .await
        .unwrap();
    let mut updated = created.clone();
    updated["name"][0]["given"] = json!(["Beatrix"]);
    let _ = c
        .put(&format!("Patient/{id}"), &updated)
        .send()
        .await
        .unwrap();
    let _ = c.get(&format!("Patient/{id}")).send().await.unwrap();
    for canary in canaries {
        let hits = files_contain(&server.data_dir, canary.as_bytes());
        assert!(hits.is_empty(), "{canary} found in {hits:?} while serving");
    }
    // Bad requests echo nothing either.
    let _ = c
        .post(
            "Patient",
            &json!({"resourceType": "Observation", "note": canaries[0]}),
        )
        .send()
        .await
        .unwrap();
    assert!(server.terminate());
    for canary in canaries {
        let hits = files_contain(&server.data_dir, canary.as_bytes());
        assert!(hits.is_empty(), "{canary} found in {hits:?} after shutdown");
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("request_id"), "the log has request lines");
    for line in log_text.lines() {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("a log line is not JSON: {line}"));
    }
    for secret in canaries.iter().copied().chain([c.token.as_str()]) {
        assert!(!log_text.contains(secret), "the log holds {secret}");
    }
    let token_signature = c.token.rsplit('.').next().unwrap();
    assert!(
        !log_text.contains(token_signature),
        "the log holds the token"
    );
    let _ = std::fs::remove_file(&log);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn configuration_mistakes_stop_start_up_by_name() {
    let dir = crate::support::fresh_dir();
    let config = dir.join("fhirwall.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nmax_body_byts = 10\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body_byts"));
    let out = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("FHIRWALL_LISTN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FHIRWALL_LISTN"));
    let _ = std::fs::remove_dir_all(dir);
}

fn key_id_of(dir: &std::path::Path, id: &str) -> String {
    let conn = rusqlite::Connection::open(dir.join("fhirwall.db")).unwrap();
    let body: Vec<u8> = conn
        .query_row(
            "SELECT body FROM resource_versions WHERE id = ?1 AND version = 1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    let len = body[1] as usize;
    String::from_utf8(body[2..2 + len].to_vec()).unwrap()
}

#[tokio::test]
async fn key_rotation_keeps_old_data_readable_and_encrypts_new_data_under_new_keys() {
    let mut server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let before = c.create(&patient("Rotate", "MRN-ROT1")).await;
    let before_id = before["id"].as_str().unwrap().to_string();
    let rotate = |dir: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["keys", "rotate", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    assert!(
        !rotate(&server.data_dir).status.success(),
        "rotation refuses to run beside a live server"
    );
    assert!(server.terminate());
    let data_keys = |dir: &std::path::Path| -> i64 {
        rusqlite::Connection::open(dir.join("fhirwall.db"))
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM wrapped_keys WHERE purpose = 'data'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let data_keys_before = data_keys(&server.data_dir);
    let out = rotate(&server.data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keyring: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data_dir.join("keyring.json")).unwrap())
            .unwrap();
    assert_eq!(keyring["keks"].as_object().unwrap().len(), 2);
    // Every stored key is now wrapped by the new KEK, and a new data key was added.
    let conn = rusqlite::Connection::open(server.data_dir.join("fhirwall.db")).unwrap();
    let wrapping: Vec<String> = conn
        .prepare("SELECT DISTINCT kek_id FROM wrapped_keys")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        wrapping,
        vec![keyring["active"].as_str().unwrap().to_string()]
    );
    assert_eq!(
        data_keys(&server.data_dir),
        data_keys_before + 1,
        "rotation adds a data key"
    );

    let dir = server.data_dir.clone();
    let restarted = Server::start_in(&dir, &[]).await;
    let c2 = restarted.client("system/*.cruds").await;
    let read = c2
        .get(&format!("Patient/{before_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(json_body(read).await["name"][0]["family"], "Rotate");
    let after = c2.create(&patient("Rotated", "MRN-ROT2")).await;
    assert_ne!(
        key_id_of(&dir, &before_id),
        key_id_of(&dir, after["id"].as_str().unwrap()),
        "new writes use the new data key"
    );
    drop(restarted);
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
}

async fn json_body(r: reqwest::Response) -> serde_json::Value {
    r.json().await.unwrap()
}

#[tokio::test]
async fn data_keys_rotate_automatically_before_their_limit() {
    let dir = crate::support::fresh_dir();
    let log = dir.join("server.log");
    let server =
        Server::start_logging(&dir, &["--data-key-rotate-after", "6"], "info", Some(&log)).await;
    let c = server.client("system/*.cruds").await;
    // Rotation runs in the background, so keep writing until it has happened a few times.
    let mut ids = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for i in 0..300 {
        let created = c.create(&patient("Rotating", &format!("MRN-AR{i}"))).await;
        let id = created["id"].as_str().unwrap().to_string();
        keys.insert(key_id_of(&dir, &id));
        ids.push(id);
        if keys.len() >= 3 {
            break;
        }
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let notable: Vec<&str> = log_text
        .lines()
        .filter(|l| !l.contains("request_id"))
        .collect();
    assert!(
        keys.len() >= 3,
        "only {} data keys after {} creates with rotation after 6 seals; log: {notable:?}",
        keys.len(),
        ids.len()
    );
    drop(server);
    let restarted = Server::start_in(&dir, &[]).await;
    let c2 = restarted.client("system/*.rs").await;
    crate::support::assert_patients_readable(&c2, &ids).await;
    drop(restarted);
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(dir);
}
