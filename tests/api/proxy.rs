//! A TCP proxy on loopback, for the tests that need the network between a printer and
//! the printer endpoint to misbehave. Bytes pass untouched both ways (mutual TLS ends at
//! Printworks). It can be:
//!
//! - the layer-4 load balancer of a deployment: each new connection goes to the first
//!   backend that accepts it ([`Proxy::set_backends`]);
//! - a slow link: at most [`ProxyOptions::bytes_per_second`] towards the client, through
//!   a small receive buffer, so that a download lasts and a fault lands in its middle;
//! - a connection cut in the middle of a download ([`ProxyOptions::cut_first_after`]);
//! - a network that goes down — every connection dropped, new ones refused — and comes
//!   back ([`Proxy::set_down`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[derive(Clone, Copy, Default)]
pub struct ProxyOptions {
    /// The most bytes per second passed towards the client.
    pub bytes_per_second: Option<usize>,
    /// Cut the first connection that carries more than this many bytes towards the
    /// client (once).
    pub cut_first_after: Option<usize>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    options: ProxyOptions,
    down: AtomicBool,
    drop_all: Notify,
    cut: AtomicBool,
}

impl Proxy {
    pub async fn start(backends: &[SocketAddr], options: ProxyOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends.to_vec()),
            options,
            down: AtomicBool::new(false),
            drop_all: Notify::new(),
            cut: AtomicBool::new(false),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    continue; // dropped at once
                }
                let s = s.clone();
                tokio::spawn(async move {
                    let candidates = s.backends.lock().unwrap().clone();
                    for backend in candidates {
                        if let Some(server) = connect(backend, s.options).await {
                            tokio::select! {
                                () = carry(client, server, &s) => {}
                                () = s.drop_all.notified() => {}
                            }
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, shared }
    }

    /// `https://` and the proxy's address: the printer URL that goes through it.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Where new connections go: the first of these that accepts.
    pub fn set_backends(&self, backends: &[SocketAddr]) {
        *self.shared.backends.lock().unwrap() = backends.to_vec();
    }

    /// The network goes down (every connection dropped, new ones refused), or back up.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.drop_all.notify_waiters();
        }
    }

    /// Whether a connection was cut ([`ProxyOptions::cut_first_after`]).
    pub fn was_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }
}

async fn connect(backend: SocketAddr, options: ProxyOptions) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    if options.bytes_per_second.is_some() {
        // What the backend sent must not all be waiting here when it dies.
        let _ = socket.set_recv_buffer_size(64 * 1024);
    }
    socket.connect(backend).await.ok()
}

async fn carry(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    };
    let down = async {
        let rate = shared.options.bytes_per_second;
        let mut buf = vec![0u8; rate.map_or(16 * 1024, |r| (r / 20).max(1024))];
        let mut sent = 0usize;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            sent += n;
            if shared
                .options
                .cut_first_after
                .is_some_and(|after| sent > after)
                && !shared.cut.swap(true, Ordering::SeqCst)
            {
                return; // both sides dropped mid-transfer
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if let Some(rate) = rate {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
    };
    // Either side closing (or dying) ends the connection, as a load balancer's would.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
