//! The printer endpoint: its own listener (`PRINTWORKS_PRINTER_ADDR`), TLS 1.3 only,
//! a client certificate required and chained to the printer CA. The printer's identity
//! comes from that certificate and is checked against the database on every connection
//! (unknown, revoked, expired, or its printer unpaired: every request is refused). No
//! bearer tokens here.
//!
//! Built for many mostly idle connections: a task per connection (no thread), HTTP/1.1
//! with keep-alive, and revocation pushed rather than polled per connection — a
//! PostgreSQL trigger notifies on every revocation and unpairing, and one watcher task
//! drops the affected connections at once; a sweep every [`SWEEP_INTERVAL`] (and after
//! every reconnect of the watcher) catches what a lost notification or an expiry by the
//! clock would miss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use printworks_common::crypto::sha256;
use printworks_common::error::Problem;
use printworks_common::http::apply_common_layers;
use printworks_common::{ApiError, AppContext};
use printworks_pairing::{PrinterCa, PrinterIdentity};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::listen::{Follower, Next};
use crate::registry::Registry;

/// How often every open connection's certificate is checked again.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The notification channel of the revocation trigger.
const REVOKED_CHANNEL: &str = "printworks_printer_revoked";
/// The printer endpoint's own certificate, when the printer CA issues it.
const SERVER_CERT_TTL: time::Duration = time::Duration::days(365);
/// Connections one certificate may hold at once on one replica (the event stream, a
/// download and a report need three; more is a loop or a stolen key).
pub const MAX_CONNECTIONS_PER_CERTIFICATE: usize = 8;

/// TLS handshakes one source address (an IPv6 /64) may have under way at once. A
/// handshake holds one of the endpoint's connection slots for up to
/// [`HANDSHAKE_TIMEOUT`] before any certificate is seen; without this, one host opening
/// sockets and saying nothing could hold them all. A print farm behind one address
/// reconnecting at once only waits a moment: handshakes take milliseconds.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// Handshakes under way, by source address.
#[derive(Default)]
struct Handshakes(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One handshake under way, counted until dropped.
struct Handshake {
    of: Arc<Handshakes>,
    addr: std::net::IpAddr,
}

impl Handshakes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A handshake from `addr`, unless it has as many under way as it may.
    fn start(self: &Arc<Self>, addr: std::net::IpAddr) -> Option<Handshake> {
        let addr = printworks_common::http::limit_key(addr);
        let mut map = self.lock();
        let n = map.entry(addr).or_default();
        if *n >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Handshake {
            of: self.clone(),
            addr,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut map = self.of.lock();
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// The printer a request comes from (from its client certificate, checked).
#[derive(Clone, Debug)]
pub struct Printer(pub PrinterIdentity);

impl<S: Send + Sync> FromRequestParts<S> for Printer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<PrinterIdentity>()
            .cloned()
            .map(Printer)
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("printer route served without identity"))
            })
    }
}

/// The TLS configuration: TLS 1.3, a client certificate from the printer CA required,
/// and the endpoint's certificate (configured, or issued by the CA for `names`).
pub fn tls_config(ctx: &AppContext, ca: &PrinterCa) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .context("the printer CA certificate")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("the printer client-certificate verifier")?;
    let (chain, key) = server_certificate(ctx, ca)?;
    let clock = Arc::new(ClockTime(ctx.clock.clone()));
    let mut config = rustls::ServerConfig::builder_with_details(provider, clock)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the printer endpoint certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// rustls reads the time (to check certificates' validity) from the injected clock,
/// like every other expiry here.
struct ClockTime(printworks_common::clock::SharedClock);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let secs = u64::try_from(self.0.now().unix_timestamp()).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            Duration::from_secs(secs),
        ))
    }
}

/// The names the endpoint's certificate carries: `localhost`, the listener's address
/// (when not a wildcard), the host of the printer URL, and any configured extras.
pub fn server_names(ctx: &AppContext) -> Vec<String> {
    let s = &ctx.settings;
    let mut names = vec!["localhost".to_owned()];
    if !s.printer_addr.ip().is_unspecified() {
        names.push(s.printer_addr.ip().to_string());
    }
    if let Some(host) = s.printers.printer_url.as_ref().and_then(|u| u.host_str()) {
        names.push(host.trim_matches(['[', ']']).to_owned());
    }
    names.extend(
        s.printers
            .printer_hostnames
            .iter()
            .map(|n| n.trim().to_owned()),
    );
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

fn server_certificate(
    ctx: &AppContext,
    ca: &PrinterCa,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let p = &ctx.settings.printers;
    if let (Some(cert), Some(key)) = (&p.printer_tls_cert, &p.printer_tls_key) {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("PRINTWORKS_PRINTER_TLS_CERT {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("PRINTWORKS_PRINTER_TLS_KEY {}", key.display()))?;
        return Ok((chain, key));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let issued = ca.issue_server(&key, &server_names(ctx), ctx.now(), SERVER_CERT_TTL)?;
    Ok((
        vec![issued.der, ca.cert_der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// An open printer connection: the certificate it presented, and how to drop it.
#[derive(Clone)]
pub struct Open {
    fingerprint: Vec<u8>,
    drop: CancellationToken,
}

/// Open connections by printer, so that a revocation can drop them.
pub type Connections = Registry<Open>;

/// Drops the connections (of `printer`, or all) whose certificate is no longer valid.
async fn recheck(
    ctx: &AppContext,
    connections: &Connections,
    printer: Option<uuid::Uuid>,
) -> sqlx::Result<usize> {
    let open = match printer {
        Some(p) => connections.of(p),
        None => connections.all(),
    };
    let mut dropped = 0;
    for chunk in open.chunks(1000) {
        let fingerprints: Vec<Vec<u8>> = chunk.iter().map(|o| o.fingerprint.clone()).collect();
        let valid =
            printworks_pairing::identity::still_valid(&ctx.db, &fingerprints, ctx.now()).await?;
        for o in chunk {
            if !valid.contains(&o.fingerprint) && !o.drop.is_cancelled() {
                o.drop.cancel();
                dropped += 1;
            }
        }
    }
    if dropped > 0 {
        ctx.metrics
            .printer_connections_refused
            .inc_by(dropped as u64);
        tracing::info!(
            dropped,
            "printer connections dropped: certificate no longer valid"
        );
    }
    Ok(dropped)
}

/// Listens for revocations and sweeps periodically, until `stop`.
async fn watch_revocations(
    ctx: AppContext,
    connections: Arc<Connections>,
    stop: CancellationToken,
) {
    let mut follow = Follower::new(
        &ctx,
        "revocation watcher",
        &[REVOKED_CHANNEL],
        SWEEP_INTERVAL,
        &stop,
    );
    while let Some(next) = follow.next().await {
        // A sweep rechecks every connection; a hint, that printer's.
        let printer = match next {
            Next::Sweep => None,
            Next::Hint(_, printer) => printer,
        };
        if let Err(e) = recheck(&ctx, &connections, printer).await {
            tracing::warn!(error = %e, "revocation check");
        }
    }
}

/// The printer endpoint, bound and ready to run.
pub struct PrinterEndpoint {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    /// Answers every request of a connection whose certificate was refused.
    refusal: Router,
    /// Answers every request of a connection beyond its certificate's limit.
    busy: Router,
    ctx: AppContext,
    connections: Arc<Connections>,
    /// One permit per connection held (`PRINTWORKS_PRINTER_MAX_CONNECTIONS`).
    slots: Arc<tokio::sync::Semaphore>,
    handshakes: Arc<Handshakes>,
}

impl PrinterEndpoint {
    /// On a bound listener; `router` serves the printers' requests (every request
    /// carries the [`PrinterIdentity`] and the peer's `ConnectInfo`).
    pub fn new(
        listener: TcpListener,
        ctx: AppContext,
        ca: &PrinterCa,
        router: Router,
    ) -> anyhow::Result<Self> {
        let config = tls_config(&ctx, ca)?;
        let answering = |handler: fn() -> std::future::Ready<Response>| {
            apply_common_layers(
                Router::new()
                    .route("/", axum::routing::any(handler))
                    .route("/{*path}", axum::routing::any(handler)),
                &ctx,
                &[],
            )
        };
        let (refusal, busy) = (answering(refused), answering(too_many));
        let slots = usize::try_from(ctx.settings.relay.printer_max_connections).unwrap_or(1);
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            router,
            refusal,
            busy,
            ctx,
            connections: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            handshakes: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the context's shutdown; then stops accepting, lets
    /// requests in flight finish for the grace period, and returns.
    pub async fn run(self) {
        let stop = self.ctx.shutdown.clone();
        tokio::spawn(watch_revocations(
            self.ctx.clone(),
            self.connections.clone(),
            stop.child_token(),
        ));
        let tracker = tokio_util::task::TaskTracker::new();
        let listener = self.listener;
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: pause rather than spin.
                        tracing::warn!(error = %e, "printer endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // At the limit, a connection is closed at once: it costs no handshake.
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                self.ctx.metrics.printer_connections_refused.inc();
                tracing::debug!(%peer, "printer connection refused: the endpoint is at its limit");
                drop(tcp);
                continue;
            };
            // So is one from an address with as many handshakes under way as it may.
            let Some(handshake) = self.handshakes.start(peer.ip()) else {
                self.ctx.metrics.printer_connections_refused.inc();
                tracing::debug!(%peer, "printer connection refused: too many handshakes from its address");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let served = serve_connection(
                tcp,
                handshake,
                peer,
                self.acceptor.clone(),
                (self.router.clone(), self.refusal.clone(), self.busy.clone()),
                self.ctx.clone(),
                self.connections.clone(),
            );
            tracker.spawn(async move {
                served.await;
                drop(slot);
            });
        }
        // Closed now, not after the grace: a printer that connects meanwhile is refused at
        // once and tries again (through the load balancer, another replica), instead of
        // waiting in the backlog of a listener nobody accepts from.
        drop(listener);
        tracker.close();
        let grace = self.ctx.settings.shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "printer connections still open after the grace period; dropping them"
            );
        }
    }
}

fn refused() -> std::future::Ready<Response> {
    closing(
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "printer-certificate-refused",
            "This printer certificate is unknown, revoked or expired",
        )
        .detail("Renew the certificate with the shared secret, or pair the printer again."),
    )
}

fn too_many() -> std::future::Ready<Response> {
    closing(
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "printer-connections-exceeded",
            "This printer certificate holds too many connections",
        )
        .detail(format!(
            "A printer may hold at most {MAX_CONNECTIONS_PER_CERTIFICATE} connections at once; reuse them."
        ))
        .header(header::RETRY_AFTER, HeaderValue::from_static("5")),
    )
}

/// `problem`, answered on a connection that closes after it.
fn closing(problem: Problem) -> std::future::Ready<Response> {
    let mut res = problem.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    std::future::ready(res)
}

/// Answers every request on `tls` with `router` (one of the refusals), then closes.
async fn answer_and_close(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    router: Router,
) {
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(Body::new))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    handshake: Handshake,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    (router, refusal, busy): (Router, Router, Router),
    ctx: AppContext,
    connections: Arc<Connections>,
) {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
    drop(handshake);
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "printer TLS handshake refused");
            ctx.metrics.printer_connections_refused.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "printer TLS handshake timed out");
            return;
        }
    };
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| sha256(c).to_vec());
    let identity = match &fingerprint {
        Some(f) => printworks_pairing::identify(&ctx.db, f, ctx.now()).await,
        None => Ok(None),
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot check a printer certificate");
            None
        }
    };
    let Some(identity) = identity else {
        tracing::info!(%peer, "printer certificate refused: unknown, revoked or expired");
        ctx.metrics.printer_connections_refused.inc();
        answer_and_close(tls, peer, refusal).await;
        return;
    };

    let dropped = CancellationToken::new();
    let fingerprint = fingerprint.unwrap_or_default();
    let registration = connections.register_bounded(
        identity.printer_id,
        Open {
            fingerprint: fingerprint.clone(),
            drop: dropped.clone(),
        },
        MAX_CONNECTIONS_PER_CERTIFICATE,
        |o| o.fingerprint == fingerprint,
    );
    let Some(_registration) = registration else {
        tracing::info!(%peer, printer_id = %identity.printer_id, "printer connection refused: too many on one certificate");
        ctx.metrics.printer_connections_refused.inc();
        answer_and_close(tls, peer, busy).await;
        return;
    };
    ctx.metrics.printer_connections.inc();
    let _gauge = scopeguard(ctx.metrics.printer_connections.clone());
    tracing::debug!(%peer, printer_id = %identity.printer_id, "printer connected");
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(identity.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let req = req.map(Body::new);
            router.oneshot(req).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let stop = ctx.shutdown.clone();
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "printer connection ended");
            }
        }
        // Revoked or unpaired: gone now, mid-request or not.
        () = dropped.cancelled() => {
            tracing::info!(%peer, "printer connection dropped: certificate no longer valid");
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Decrements the gauge when the connection ends, however it ends.
fn scopeguard(gauge: prometheus_client::metrics::gauge::Gauge) -> impl Drop {
    struct Dec(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}
