//! HTTP callers: keep-alive connections (hyper's own client connection, so that the
//! load generator is not what limits the rate), each sending one request after another
//! for a while, every latency recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::measure::{CpuShare, Latencies, Server, round};

/// How to make each request of a load.
pub type MakeRequest = Arc<dyn Fn(usize) -> http::Request<Full<Bytes>> + Send + Sync>;

/// A GET of `path` at `addr`, with `token` as the bearer token when given.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> MakeRequest {
    let (path, auth) = (path.to_owned(), token.map(|t| format!("Bearer {t}")));
    Arc::new(move |_| {
        let mut req = http::Request::get(&path).header(http::header::HOST, addr.to_string());
        if let Some(a) = &auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        req.body(Full::default()).unwrap_or_default()
    })
}

/// What a load did.
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
    pub secs: f64,
    pub latencies: Latencies,
}

impl Outcome {
    pub fn summary(mut self) -> Value {
        #[allow(clippy::cast_precision_loss)]
        let rate = round(self.ok as f64 / self.secs);
        json!({
            "requests": self.ok,
            "per_sec": rate,
            "failed": self.failed,
            "latency": self.latencies.summary(),
        })
    }
}

/// `connections` connections each sending `make(i)` (i its number) until `seconds`
/// pass; a request answered with anything but `expect` counts as failed.
pub async fn run(
    addr: SocketAddr,
    make: MakeRequest,
    expect: http::StatusCode,
    connections: usize,
    seconds: f64,
) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let make = make.clone();
        tasks.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let (mut lat, mut failed) = (Latencies::default(), 0usize);
            while Instant::now() < until {
                let t = Instant::now();
                let res = sender.send_request(make(i)).await?;
                let status = res.status();
                res.into_body().collect().await?;
                if status == expect {
                    lat.record(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            anyhow::Ok((lat, failed))
        });
    }
    let mut out = Outcome {
        ok: 0,
        failed: 0,
        secs: 0.0,
        latencies: Latencies::default(),
    };
    while let Some(done) = tasks.join_next().await {
        let (lat, failed) = done.context("a load connection")??;
        out.ok += lat.len();
        out.failed += failed;
        out.latencies.extend(lat);
    }
    out.secs = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// `api`: one route under load, with the share of a core the server spent.
pub async fn api(
    addr: SocketAddr,
    make: MakeRequest,
    connections: usize,
    seconds: f64,
    server: Option<Server>,
) -> anyhow::Result<Value> {
    // A second of warm-up: connections made, caches filled.
    run(addr, make.clone(), http::StatusCode::OK, connections, 1.0).await?;
    let cpu = CpuShare::start(server);
    let out = run(addr, make, http::StatusCode::OK, connections, seconds).await?;
    let mut v = out.summary();
    v["connections"] = json!(connections);
    v["server_cpu"] = cpu.read();
    Ok(v)
}

/// `login`: `workers` people logging in over and over while `api_connections` callers
/// keep using the API, for `seconds`.
pub async fn login(
    api_url: &str,
    addr: SocketAddr,
    workers: usize,
    background: MakeRequest,
    api_connections: usize,
    seconds: f64,
    server: Option<Server>,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let emails: Vec<String> = (0..workers)
        .map(|i| format!("login{i}-{suffix}@example.com"))
        .collect();
    for e in &emails {
        crate::setup::sign_up(&http, api_url, e).await?;
    }
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        emails
            .iter()
            .map(|e| {
                Bytes::from(json!({"email": e, "password": crate::setup::PASSWORD}).to_string())
            })
            .collect(),
    );
    let make: MakeRequest = Arc::new(move |i| {
        http::Request::post("/account/v1/sessions")
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bodies[i].clone()))
            .unwrap_or_default()
    });
    let cpu = CpuShare::start(server);
    let (logins, calls) = tokio::join!(
        run(addr, make, http::StatusCode::CREATED, workers, seconds),
        run(
            addr,
            background,
            http::StatusCode::OK,
            api_connections,
            seconds
        ),
    );
    Ok(json!({
        "workers": workers,
        "logins": logins?.summary(),
        "api_connections": api_connections,
        "api_meanwhile": calls?.summary(),
        "server_cpu": cpu.read(),
    }))
}
