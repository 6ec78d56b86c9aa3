//! The real peers of the federation tests: Node's `oidc-provider` (the OpenID provider
//! in `tests/idp/`, installed by `make test`), and an authoritative DNS server from the
//! `hickory-server` crate on loopback, holding the TXT records that prove domains.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use serde_json::{Value, json};

/// The client Printworks is at the test provider.
pub const CLIENT_ID: &str = "printworks";
pub const CLIENT_SECRET: &str = "printworks-test-client-secret";

/// A running test OpenID provider; stopped when dropped.
pub struct Idp {
    child: Child,
    pub issuer: String,
    http: reqwest::Client,
}

impl Idp {
    /// A fresh provider on `host` (its own users, keys and sign-ins). Its client
    /// `printworks` may return to any `http://127.0.0.1:` address (the app's port is
    /// picked at run time).
    pub fn start(host: &str) -> Self {
        Self::start_with(host, &[])
    }

    pub fn start_with(host: &str, env: &[(&str, &str)]) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/idp/oidc-test-provider.js"
        );
        let clients = json!([{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": ["http://127.0.0.1:1/never"],
        }]);
        let mut child = Command::new("node")
            .arg(script)
            .env("IDP_HOST", host)
            .env("IDP_PORT", "0")
            .env("IDP_CLIENTS", clients.to_string())
            .env("IDP_REDIRECT_PREFIXES", "http://127.0.0.1:")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test OpenID provider (node, tests/idp: run `make test-deps`)");
        let stdout = child.stdout.take().expect("its output");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the provider says where it listens");
        let issuer = line
            .trim()
            .strip_prefix("oidc-test-provider listening: ")
            .unwrap_or_else(|| panic!("the test provider did not start: {line:?}"))
            .to_owned();
        Self {
            child,
            issuer,
            http: reqwest::Client::new(),
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let res = self
            .http
            .request(method, format!("{}{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .expect("the provider's control route");
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.expect("json")
    }

    /// The next token response (for `sub`, or any) carries an ID token defective in
    /// `mode`'s way; `replay-codes` makes a spent code answer again.
    pub async fn tamper(&self, mode: &str) {
        self.control(
            reqwest::Method::POST,
            "/_test/tamper",
            json!({"mode": mode}),
        )
        .await;
    }

    /// Defects not yet used (empty once the relying party fetched the token).
    pub async fn pending_tamper(&self) -> Value {
        self.control(reqwest::Method::GET, "/_test/tamper", json!({}))
            .await
    }

    /// Adds or changes the person `sub` (a leaver: `{"disabled": true}`).
    pub async fn put_user(&self, sub: &str, fields: Value) {
        self.control(reqwest::Method::PUT, &format!("/_test/users/{sub}"), fields)
            .await;
    }

    /// A new signing key from now on; the old ones leave the JWKS with `retire`.
    pub async fn rotate(&self, retire: bool) {
        self.control(
            reqwest::Method::POST,
            "/_test/rotate",
            json!({"retire": retire}),
        )
        .await;
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An authoritative DNS server for the zone `test.` on a loopback UDP port.
pub struct Dns {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    serial: AtomicU32,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    pub async fn start() -> Self {
        let origin = Name::from_ascii("test.").unwrap();
        let zone = Arc::new(InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        ));
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("hostmaster.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        assert!(
            zone.upsert(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1)
                .await
        );
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        let mut server = Server::new(catalog);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        server.register_socket(socket);
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        Self {
            addr,
            zone,
            serial: AtomicU32::new(2),
            task,
        }
    }

    /// Publishes a TXT record `value` at `name` (e.g. `_printworks-challenge.corp.test`).
    pub async fn txt(&self, name: &str, value: &str) {
        let name = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).unwrap();
        let serial = self.serial.fetch_add(1, Ordering::SeqCst);
        let record = Record::from_rdata(name, 60, RData::TXT(TXT::new(vec![value.to_owned()])));
        assert!(self.zone.upsert(record, serial).await);
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
