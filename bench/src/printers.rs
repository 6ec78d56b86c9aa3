//! Printers as load: the agent's own connection code (`printer_client_from`,
//! `run::Events`), many printers per process, spread over several source addresses in
//! 127.0.0.0/8 so that the ephemeral port range is no limit.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use printworks_agent::Saved;
use printworks_agent::run::Events;
use printworks_proto::PrinterEvent;
use serde_json::{Value, json};

use crate::measure::{CpuShare, Latencies, Server, round};

/// The `i`-th of `n` source addresses: 127.1.0.1, 127.1.0.2, ...
pub fn source(i: usize, n: usize) -> IpAddr {
    let k = u32::try_from(i % n.max(1)).unwrap_or(0) + 1;
    IpAddr::V4(Ipv4Addr::from(0x7f01_0000 | k))
}

/// Handshakes a well-behaved farm behind one address has under way at once (the
/// endpoint's per-address limit, `MAX_HANDSHAKES_PER_ADDRESS`).
const PER_ADDRESS: usize = 16;

/// A printer that cannot connect this many times in a row gives up (and is missing
/// from the count of connections held).
const MAX_ATTEMPTS: u64 = 100;

/// A printer connection kept open by a task reading its events.
struct Held {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts what the held streams saw.
#[derive(Default)]
struct Seen {
    heartbeats: AtomicU64,
    ended: AtomicU64,
}

/// Opens every printer's event stream, at most [`PER_ADDRESS`] connecting at once per
/// source address; a refused or failed attempt is retried after a short pause, as the
/// agent does. Returns the held streams, the latency of each open, and the retries.
async fn open_all(
    printers: &[reqwest::Client],
    url: &str,
    sources: usize,
    seen: &Arc<Seen>,
) -> (Vec<Held>, Latencies, u64) {
    let gates: Vec<Arc<tokio::sync::Semaphore>> = (0..sources)
        .map(|_| Arc::new(tokio::sync::Semaphore::new(PER_ADDRESS)))
        .collect();
    let retries = Arc::new(AtomicU64::new(0));
    let mut opening = tokio::task::JoinSet::new();
    for (i, client) in printers.iter().enumerate() {
        // The printer's source address is `source(i, sources)`: its gate is that one's.
        let gate = gates[i % sources.max(1)].clone();
        let (client, url, retries, seen) = (
            client.clone(),
            url.to_owned(),
            retries.clone(),
            seen.clone(),
        );
        opening.spawn(async move {
            let mut attempt = 0u64;
            loop {
                let permit = gate.acquire().await.ok();
                let t0 = Instant::now();
                let opened = Events::open(&client, &url).await;
                drop(permit);
                match opened {
                    Ok(events) => {
                        let took = t0.elapsed();
                        let task = tokio::spawn(hold(events, seen));
                        return Some((i, Held { task }, took));
                    }
                    Err(_) => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        attempt += 1;
                        if attempt > MAX_ATTEMPTS {
                            return None;
                        }
                        let pause = 50 * attempt.min(20) + (i as u64 % 50);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
        });
    }
    let mut held = Vec::with_capacity(printers.len());
    let mut latencies = Latencies::default();
    while let Some(done) = opening.join_next().await {
        if let Ok(Some((_, h, took))) = done {
            held.push(h);
            latencies.record(took);
        }
    }
    (held, latencies, retries.load(Ordering::Relaxed))
}

/// Reads a stream's events until it ends, counting heartbeats.
async fn hold(mut events: Events, seen: Arc<Seen>) {
    loop {
        match events.next(Duration::from_secs(600)).await {
            Ok(Some(PrinterEvent::Heartbeat)) => {
                seen.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                seen.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// `idle`: `printers` printers connect and hold their event streams for `hold`; the
/// server's resident memory (less what its allocator handed back lazily) before, while
/// held and after they close gives the cost of one idle connection. Then all drop at once and come back (the reconnect storm).
pub async fn idle(
    saved: &[Saved],
    url: &str,
    server: Server,
    sources: usize,
    hold_for: Duration,
) -> anyhow::Result<Value> {
    let printers: Vec<reqwest::Client> = saved
        .iter()
        .enumerate()
        .map(|(i, s)| printworks_agent::printer_client_from(s, Some(source(i, sources))))
        .collect::<anyhow::Result<_>>()?;
    let n = printers.len();
    let seen = Arc::new(Seen::default());
    let rss_before = server.held_kib()?;

    let cpu = CpuShare::start(Some(server));
    let t0 = Instant::now();
    let (held, mut connect, connect_retries) = open_all(&printers, url, sources, &seen).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connect_cpu = cpu.read();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_held = server.held_kib()?;

    // Held: sample the memory, and whether every stream is still open.
    let mut rss_max = rss_held;
    let until = Instant::now() + hold_for;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5).min(until - Instant::now())).await;
        rss_max = rss_max.max(server.held_kib()?);
    }
    let rss_end_of_hold = server.held_kib()?;
    let ended_while_held = seen.ended.load(Ordering::Relaxed);
    let heartbeats = seen.heartbeats.load(Ordering::Relaxed);

    // The storm: every connection drops at once, every printer comes straight back.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let storm_seen = Arc::new(Seen::default());
    let cpu = CpuShare::start(Some(server));
    let t0 = Instant::now();
    let (held, mut storm, storm_retries) = open_all(&printers, url, sources, &storm_seen).await;
    let storm_secs = t0.elapsed().as_secs_f64();
    let storm_cpu = cpu.read();
    let reconnected = held.len();

    // Closed: what the server gives back.
    drop(held);
    drop(printers);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_closed_raw = server.rss_kib()?;
    let held_closed = server.held_kib()?;

    #[allow(clippy::cast_precision_loss)]
    let per = |kib: u64| round(kib.saturating_sub(rss_before) as f64 / n.max(1) as f64);
    #[allow(clippy::cast_precision_loss)]
    let returned = if rss_held > rss_before {
        round((rss_held.saturating_sub(held_closed)) as f64 / (rss_held - rss_before) as f64)
    } else {
        0.0
    };
    #[allow(clippy::cast_precision_loss)]
    Ok(json!({
        "connections": n,
        "sources": sources,
        "connect_per_sec": round(n as f64 / connect_secs),
        "connect_latency": connect.summary(),
        "connect_retries": connect_retries,
        "connect_server_cpu": connect_cpu,
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "rss_max_while_held_kib": rss_max,
        "rss_end_of_hold_kib": rss_end_of_hold,
        "rss_closed_kib": rss_closed_raw,
        "held_closed_kib": held_closed,
        "kib_per_connection": per(rss_held),
        "kib_per_connection_end_of_hold": per(rss_end_of_hold),
        "share_returned_on_close": returned,
        "held_secs": hold_for.as_secs(),
        "ended_while_held": ended_while_held,
        "heartbeats": heartbeats,
        "storm_reconnected": reconnected,
        "storm_per_sec": round(reconnected as f64 / storm_secs),
        "storm_latency": storm.summary(),
        "storm_retries": storm_retries,
        "storm_server_cpu": storm_cpu,
    }))
}

/// A rustls client for one printer: its certificate, the printer CA, and no
/// resumption, so that every connection is a full mutual-TLS handshake.
fn full_handshake_config(saved: &Saved) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(saved.ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_slice_iter(saved.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(saved.key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One connection: TCP from `source`, a full mutual-TLS handshake, `GET
/// /printer/v1/identity`, the answer read, closed.
async fn one_handshake(
    addr: std::net::SocketAddr,
    source: IpAddr,
    connector: &tokio_rustls::TlsConnector,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!(
            "GET {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n",
            printworks_proto::printer::path::IDENTITY
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = Vec::with_capacity(1024);
    tls.read_to_end(&mut answer).await?;
    anyhow::ensure!(answer.starts_with(b"HTTP/1.1 200"), "identity refused");
    Ok(())
}

/// `handshakes`: `workers` printers connect, handshake, ask who they are and close, in
/// a loop, for `seconds`.
pub async fn handshakes(
    saved: &[Saved],
    addr: std::net::SocketAddr,
    server: Option<Server>,
    sources: usize,
    seconds: f64,
) -> anyhow::Result<Value> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let failures = Arc::new(AtomicU64::new(0));
    let cpu = CpuShare::start(server);
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (i, s) in saved.iter().enumerate() {
        let connector = tokio_rustls::TlsConnector::from(full_handshake_config(s)?);
        let source = source(i, sources);
        let failures = failures.clone();
        workers.spawn(async move {
            let mut lat = Latencies::default();
            while Instant::now() < until {
                let t = Instant::now();
                match one_handshake(addr, source, &connector).await {
                    Ok(()) => lat.record(t.elapsed()),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        });
    }
    let mut all = Latencies::default();
    while let Some(lat) = workers.join_next().await {
        all.extend(lat.context("a handshake worker")?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.read();
    #[allow(clippy::cast_precision_loss)]
    Ok(json!({
        "workers": saved.len(),
        "handshakes": all.len(),
        "handshakes_per_sec": round(all.len() as f64 / secs),
        "latency": all.summary(),
        "failures": failures.load(Ordering::Relaxed),
        "server_cpu": cpu,
    }))
}
