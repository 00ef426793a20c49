//! SMART Backend Services: discovery, token failures, scope enforcement, client management.

use fhirwall_auth::testkeys::{TestClientKey, hmac_token, unsigned_token};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use crate::support::{BIN, Server, json, now_unix, patient};

#[tokio::test]
async fn discovery_and_jwks() {
    let server = Server::start().await;
    let r = server
        .http
        .get(server.url("/fhir/.well-known/smart-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let config = json(r).await;
    assert_eq!(config["token_endpoint"], server.token_url());
    assert!(
        config["token_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    let list = |k: &str| {
        config[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(list("grant_types_supported").contains(&"client_credentials".into()));
    assert!(list("token_endpoint_auth_methods_supported").contains(&"private_key_jwt".into()));
    assert!(list("token_endpoint_auth_signing_alg_values_supported").contains(&"RS384".into()));
    assert!(list("token_endpoint_auth_signing_alg_values_supported").contains(&"ES384".into()));
    let jwks = json(
        server
            .http
            .get(server.url("/auth/jwks"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key.get(private).is_none(),
                "the JWKS publishes a private part"
            );
        }
    }
}

#[tokio::test]
async fn token_endpoint_accepts_es384_and_rs384_and_refuses_bad_assertions() {
    let server = Server::start().await;
    let es = TestClientKey::generate_es384("es-key").unwrap();
    let es_id = server.register(&es, "system/*.rs");
    let url = server.token_url();
    let now = now_unix();
    let fresh = || uuid::Uuid::new_v4().to_string();

    let r = server
        .token_response(
            &es.sign_assertion(&es_id, &url, now, &fresh()).unwrap(),
            Some("system/*.rs"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
    let body = json(r).await;
    assert_eq!(
        body["token_type"].as_str().unwrap().to_ascii_lowercase(),
        "bearer"
    );
    assert!(body["expires_in"].as_i64().unwrap() <= 300);
    assert_eq!(body["scope"], "system/*.rs");

    let rs = TestClientKey::generate_rs384("rs-key").unwrap();
    let rs_id = server.register(&rs, "system/Patient.read");
    let r = server
        .token_response(
            &rs.sign_assertion(&rs_id, &url, now, &fresh()).unwrap(),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);

    // Replay: the same jti twice.
    let jti = fresh();
    let assertion = es.sign_assertion(&es_id, &url, now, &jti).unwrap();
    assert_eq!(server.token_response(&assertion, None).await.status(), 200);
    let r = server.token_response(&assertion, None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(r).await["error"], "invalid_client");

    let claims = |exp: i64, aud: &str| json!({"iss": es_id, "sub": es_id, "aud": aud, "exp": exp, "iat": now, "jti": fresh()});
    let header = es.assertion_header();
    let refused: Vec<(&str, String)> = vec![
        ("expired", es.sign_with(&header, &claims(now - 600, &url)).unwrap()),
        ("exp too far", es.sign_with(&header, &claims(now + 3600, &url)).unwrap()),
        ("wrong audience", es.sign_with(&header, &claims(now + 120, "https://elsewhere.example/token")).unwrap()),
        ("alg none", unsigned_token(&json!({"alg": "none", "typ": "JWT", "kid": "es-key"}), &claims(now + 120, &url))),
        ("HS384 with the public key", hmac_token(&es.public_key_bytes(), &json!({"alg": "HS384", "typ": "JWT", "kid": "es-key"}), &claims(now + 120, &url))),
        ("unknown kid", es.sign_with(&json!({"alg": "ES384", "typ": "JWT", "kid": "nope"}), &claims(now + 120, &url)).unwrap()),
        ("iss != sub", es.sign_with(&header, &json!({"iss": es_id, "sub": "someone", "aud": url, "exp": now + 120, "jti": fresh()})).unwrap()),
        ("unknown client", es.sign_with(&header, &json!({"iss": "ghost", "sub": "ghost", "aud": url, "exp": now + 120, "jti": fresh()})).unwrap()),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, assertion) in refused {
        let r = server.token_response(&assertion, None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(json(r).await["error"], "invalid_client", "{what}");
    }
    // Another client's key cannot sign for this client.
    let other = TestClientKey::generate_es384("es-key").unwrap();
    let r = server
        .token_response(
            &other.sign_assertion(&es_id, &url, now, &fresh()).unwrap(),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Grant type and scope errors.
    let r = server
        .http
        .post(server.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=a&password=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "unsupported_grant_type");
    let r = server
        .http
        .post(server.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_assertion_type=not_an_assertion_type&client_assertion={}",
            es.sign_assertion(&es_id, &url, now, &fresh()).unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_client");
    let r = server
        .http
        .post(server.token_url())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_request");
    let r = server
        .token_response(
            &es.sign_assertion(&es_id, &url, now, &fresh()).unwrap(),
            Some("system/*.cruds"),
        )
        .await;
    assert_eq!(
        r.status(),
        200,
        "a wider request is narrowed to what was granted"
    );
    assert_eq!(json(r).await["scope"], "system/*.rs");
    let r = server
        .token_response(
            &es.sign_assertion(&es_id, &url, now, &fresh()).unwrap(),
            Some("system/Patient.c"),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_scope");
}

#[tokio::test]
async fn bearer_tokens_and_scopes_are_enforced() {
    let server = Server::start().await;
    let admin = server.client("system/*.cruds").await;
    let created = admin.create(&patient("Scoped", "MRN-SC")).await;
    let id = created["id"].as_str().unwrap();

    // No token, a bad token, a token signed by someone else.
    let r = server
        .http
        .get(server.url(&format!("/fhir/Patient/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    let r = server
        .http
        .get(server.url(&format!("/fhir/Patient/{id}")))
        .bearer_auth("abc.def.ghi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let forged = TestClientKey::generate_es384("fhirwall-token-1")
        .unwrap()
        .sign_with(
            &json!({"alg": "ES384", "typ": "at+jwt", "kid": "fhirwall-token-1"}),
            &json!({"iss": server.origin, "aud": server.origin, "sub": admin.client_id, "client_id": admin.client_id,
                    "scope": "system/*.cruds", "exp": now_unix() + 200, "iat": now_unix(), "jti": "x"}),
        )
        .unwrap();
    let r = server
        .http
        .get(server.url(&format!("/fhir/Patient/{id}")))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // v2 read-only scope on Patient.
    let reader = server.client("system/Patient.rs").await;
    assert_eq!(
        reader
            .get(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reader
            .get("Patient?identifier=MRN-SC")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = reader
        .post("Patient", &patient("No", "MRN-NO"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    assert_eq!(
        reader.get("Observation/1").send().await.unwrap().status(),
        403
    );
    assert_eq!(
        reader
            .delete(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(reader.get("_history").send().await.unwrap().status(), 403);
    // v1 syntax.
    let v1 = server.client("system/Patient.write").await;
    assert_eq!(
        v1.get(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        v1.post("Patient", &patient("V1", "MRN-V1"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let v1_read = server.client("system/*.read").await;
    assert_eq!(
        v1_read
            .get(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(v1_read.get("Patient").send().await.unwrap().status(), 200);
    // Update-as-create needs create permission too.
    let updater = server.client("system/Patient.u").await;
    let mut fresh = patient("Fresh", "MRN-F");
    fresh["id"] = json!("fresh-id");
    assert_eq!(
        updater
            .put("Patient/fresh-id", &fresh)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let mut existing = created.clone();
    existing["active"] = json!(true);
    assert_eq!(
        updater
            .put(&format!("Patient/{id}"), &existing)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Nothing was created by the refused requests.
    let r: Value = json(admin.get("Patient?identifier=MRN-NO").send().await.unwrap()).await;
    assert_eq!(r["total"], 0);
}

#[tokio::test]
async fn client_commands_work_while_serving() {
    let server = Server::start().await;
    let key = TestClientKey::generate_es384("k").unwrap();
    let id = server.register(&key, "system/*.rs");
    let assertion = key
        .sign_assertion(&id, &server.token_url(), now_unix(), "before-removal")
        .unwrap();
    let token: Value = json(server.token_response(&assertion, None).await).await;
    let token = token["access_token"].as_str().unwrap().to_string();
    let read = |token: String| {
        let http = server.http.clone();
        let url = server.url("/fhir/Patient");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(read(token.clone()).await, 200);
    let out = std::process::Command::new(BIN)
        .args(["client", "list", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = std::process::Command::new(BIN)
        .args(["client", "remove", "--data-dir"])
        .arg(&server.data_dir)
        .arg(&id)
        .output()
        .unwrap();
    assert!(out.status.success());
    let assertion = key
        .sign_assertion(&id, &server.token_url(), now_unix(), "after-removal")
        .unwrap();
    assert_eq!(server.token_response(&assertion, None).await.status(), 400);
    // Tokens issued before the removal stop working within seconds.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(read(token).await, 401);
    // Registration refuses private keys and non-system scopes.
    let bad = server.data_dir.join("bad.json");
    std::fs::write(&bad, r#"{"keys":[{"kty":"oct","kid":"x","k":"c2VjcmV0"}]}"#).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["client", "add", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--name", "bad", "--jwks"])
        .arg(&bad)
        .args(["--scope", "system/*.rs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let good = server.data_dir.join("good.json");
    std::fs::write(&good, key.jwks_json()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["client", "add", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--name", "bad", "--jwks"])
        .arg(&good)
        .args(["--scope", "patient/*.rs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A one-route HTTPS server that serves a JWKS and counts its fetches.
struct JwksHost {
    url: String,
    ca_path: std::path::PathBuf,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn serve_jwks(dir: &std::path::Path, jwks: String) -> JwksHost {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = crate::support::test_pki();
    let ca_path = dir.join("jwks-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(pki.key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    JwksHost {
        url: format!("https://127.0.0.1:{port}/jwks.json"),
        ca_path,
        fetches,
    }
}

#[tokio::test]
async fn keys_are_fetched_from_jwks_uri_and_cached() {
    use std::sync::atomic::Ordering;
    let dir = crate::support::fresh_dir();
    let key = TestClientKey::generate_rs384("remote-key").unwrap();
    let host = serve_jwks(&dir, key.jwks_json()).await;
    let ca = host.ca_path.display().to_string();
    let server = Server::start_in(&dir, &["--jwks-ca", &ca]).await;
    let out = std::process::Command::new(BIN)
        .args(["client", "add", "--data-dir"])
        .arg(&dir)
        .args([
            "--name",
            "remote",
            "--jwks-uri",
            &host.url,
            "--scope",
            "system/Patient.rs",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    for round in 0..3 {
        let assertion = key
            .sign_assertion(
                &id,
                &server.token_url(),
                now_unix(),
                &format!("remote-{round}"),
            )
            .unwrap();
        let r = server.token_response(&assertion, None).await;
        assert_eq!(r.status(), 200, "round {round}");
    }
    assert_eq!(
        host.fetches.load(Ordering::SeqCst),
        1,
        "the JWKS is cached within max-age"
    );
    // A key the JWKS does not hold is refused.
    let stranger = TestClientKey::generate_rs384("other-key").unwrap();
    let assertion = stranger
        .sign_assertion(&id, &server.token_url(), now_unix(), "stranger")
        .unwrap();
    assert_eq!(server.token_response(&assertion, None).await.status(), 400);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
