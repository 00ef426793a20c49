//! The listener: accepts TCP, completes TLS (with a handshake timeout), serves HTTP/1.1 and
//! HTTP/2 on each connection, and on shutdown stops accepting and lets in-flight requests end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{any, get, post};
use http::{HeaderValue, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::state::{Edge, RequestId};

/// Open connections served at once.
const MAX_CONNECTIONS: usize = 16_384;

/// A bound, not yet serving, HTTPS listener.
pub struct BoundServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    local_addr: SocketAddr,
}

/// Binds `addr` (port 0 picks a free port) with the given TLS configuration.
pub async fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<BoundServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    Ok(BoundServer {
        listener,
        acceptor: TlsAcceptor::from(tls),
        local_addr,
    })
}

fn router(state: Edge) -> Router {
    let max_head = state.limits.max_header_bytes;
    Router::new()
        .route("/fhir", any(crate::fhir::entry_root))
        .route("/fhir/", any(crate::fhir::entry_root))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(crate::auth::smart_configuration),
        )
        .route("/fhir/{*rest}", any(crate::fhir::entry))
        .route("/auth/token", post(crate::auth::token_endpoint))
        .route("/auth/jwks", get(crate::auth::jwks))
        .route(
            "/.well-known/smart-configuration",
            get(crate::auth::smart_configuration),
        )
        .fallback(crate::fhir::not_found)
        .layer(axum::middleware::from_fn(move |request, next| {
            head_limit(max_head, request, next)
        }))
        .layer(axum::middleware::from_fn(request_context))
        .with_state(state)
}

/// The size of a request's head as HTTP/1.1 writes it: request line and header lines.
fn head_bytes(request: &Request) -> usize {
    let uri = request.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len() + 8)
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + target + 12;
    request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    })
}

/// Refuses a request whose head is past the limit with 431, the same on HTTP/1.1 and HTTP/2.
/// hyper bounds what it buffers (`max_buf_size`, `max_header_list_size`), but on a kept-alive
/// HTTP/1.1 connection its buffer may already be large enough to take a bigger head whole, so
/// the limit is checked here on every request.
async fn head_limit(max: usize, request: Request, next: Next) -> Response {
    if head_bytes(&request) > max {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        return crate::error::error_response(
            fhirwall_service::ServiceError::new(
                fhirwall_service::ErrorKind::HeadersTooLarge,
                fhirwall_model::IssueType::TooLong,
                "headers-too-large",
                format!("The request line and headers are larger than the limit of {max} bytes."),
            ),
            &request_id,
        );
    }
    next.run(request).await
}

/// Gives each request its correlation id, sets the headers every answer carries, and logs one
/// line per request without ePHI: no query string, no body, no token.
async fn request_context(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let route = request
        .uri()
        .path()
        .split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", value);
    }
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Counts a request as in flight until it is dropped.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and waits up to `grace` for
    /// open requests to finish.
    pub async fn run(self, edge: Edge, shutdown: impl Future<Output = ()>, grace: Duration) {
        // hyper's HTTP/1.1 read buffer, which must hold the request line and headers, cannot
        // be smaller than 8 KiB.
        let header_bytes = edge.limits.max_header_bytes.max(8192);
        let app = router(edge);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Each open connection holds a permit; past the limit new connections are closed at
        // once instead of exhausting memory and file descriptors.
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::warn!("connection limit reached; closing a new connection");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let app = app.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service =
                    tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(peer));
                        let guard = InFlight::enter(&in_flight);
                        let response = app.clone().oneshot(request);
                        async move {
                            let response = response.await;
                            drop(guard);
                            response
                        }
                    });
                let connection =
                    builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
                let _ = watcher.watch(connection).await;
                drop(permit);
            });
        }
        drop(self.listener);
        // Connections end when their requests are answered; an idle HTTP/2 client that never
        // closes must not hold the process, so stop once nothing is in flight and the last
        // answers have had a moment to be written.
        let drained = async {
            while in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let finished = tokio::time::timeout(grace, async {
            tokio::select! {
                () = graceful.shutdown() => {}
                () = drained => {}
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("requests were still running when the grace period ended");
        }
    }
}
