//! TLS as an outside scanner sees it: 1.2 and 1.3 with AEAD suites only, no plain HTTP.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::support::Server;

/// Runs `openssl s_client` with `args`; true if the handshake completed.
fn handshake(server: &Server, args: &[&str]) -> bool {
    let port = server.origin.rsplit(':').next().unwrap();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command line tool is needed for the TLS tests");
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)")
}

#[tokio::test]
async fn only_modern_tls_is_served() {
    let server = Server::start().await;
    assert!(handshake(&server, &["-tls1_3"]), "TLS 1.3 works");
    assert!(
        handshake(
            &server,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        ),
        "TLS 1.2 AEAD works"
    );
    assert!(
        !handshake(
            &server,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"]
        ),
        "CBC suites are refused"
    );
    assert!(
        !handshake(&server, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
        "TLS 1.1 is refused"
    );
    assert!(
        !handshake(&server, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
        "TLS 1.0 is refused"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let port: u16 = server.origin.rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    assert!(!String::from_utf8_lossy(&buf).contains("CapabilityStatement"));
}

#[tokio::test]
async fn operators_can_bring_their_own_certificate() {
    let dir = crate::support::fresh_dir();
    let pki = crate::support::test_pki();
    let cert_path = dir.join("operator.pem");
    let key_path = dir.join("operator.key");
    std::fs::write(&cert_path, format!("{}{}", pki.cert.pem(), pki.ca_pem)).unwrap();
    std::fs::write(&key_path, pki.key.serialize_pem()).unwrap();
    let cert_arg = cert_path.display().to_string();
    let key_arg = key_path.display().to_string();
    let mut server =
        Server::start_in(&dir, &["--tls-cert", &cert_arg, "--tls-key", &key_arg]).await;
    assert!(
        !dir.join("tls/ca.pem").exists(),
        "no development CA when the operator brings one"
    );
    let client = crate::support::http_client(pki.ca_pem.as_bytes());
    let r = client
        .get(server.url("/fhir/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.kill9();
    let _ = std::fs::remove_dir_all(dir);
}
