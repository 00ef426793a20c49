//! The ceiling: a minimal in-process HTTPS hello-world server (hyper HTTP/1.1, rustls on
//! aws-lc-rs, an rcgen self-signed certificate) answering `GET /` with a small JSON body. It runs
//! on its own two-worker Tokio runtime, like the real server, so the load generator drives it
//! exactly as it drives Fhirwall: the gap between the two is the cost of Fhirwall's own work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

const BODY: &[u8] = br#"{"resourceType":"Basic","id":"hello","code":{"text":"hello, world"}}"#;

/// A running hello-world server; dropping it stops it.
pub struct HelloServer {
    pub addr: SocketAddr,
    /// The self-signed certificate to trust.
    pub cert: CertificateDer<'static>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HelloServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloServer")
            .field("addr", &self.addr)
            .finish()
    }
}

async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

impl HelloServer {
    /// Starts the server on 127.0.0.1 with an ephemeral port and `workers` runtime threads.
    pub fn start(workers: usize) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
            .context("generating the self-signed certificate")?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .context("the hello server's certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("hello-server")
            .enable_all()
            .build()
            .context("the hello server's runtime")?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hello-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            eprintln!("hello server: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop(listener, acceptor) => {}
                    }
                });
                runtime.shutdown_background();
            })
            .map_err(|e| anyhow!("starting the hello server thread: {e}"))?;
        Ok(HelloServer {
            addr,
            cert,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service_fn(hello))
                .await;
        });
    }
}

impl Drop for HelloServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
