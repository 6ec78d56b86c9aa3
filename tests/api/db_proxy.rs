//! A TCP (or Unix socket) relay between the application and the test's PostgreSQL that a
//! test can cut and restore: the database "goes down" for the application (every open
//! connection is closed, new ones are refused) and comes back, without touching the
//! server other tests share.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

pub struct DbProxy {
    /// Cancelled to cut; replaced by a fresh token to restore.
    link: Arc<Mutex<Option<CancellationToken>>>,
    stop: CancellationToken,
    _socket_dir: Option<tempfile::TempDir>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Clone)]
enum Target {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl Target {
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Target::Tcp(host, port) => Box::new(TcpStream::connect((host.as_str(), *port)).await?),
            Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
        })
    }
}

impl DbProxy {
    /// Starts relaying to the server `target` points at; returns the proxy and the
    /// options that reach the same database through it.
    pub async fn start(target: &PgConnectOptions) -> (Self, PgConnectOptions) {
        let port = target.get_port();
        let upstream = match target.get_socket() {
            Some(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Target::Tcp(target.get_host().to_owned(), port),
        };
        let link = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let stop = CancellationToken::new();
        let (options, socket_dir) = match upstream {
            Target::Unix(_) => {
                let dir = tempfile::Builder::new()
                    .prefix("pwproxy")
                    .tempdir()
                    .expect("socket dir");
                let listener = UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}")))
                    .expect("bind proxy socket");
                let (link, stop, upstream) = (link.clone(), stop.clone(), upstream.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            accepted = listener.accept() => {
                                if let Ok((s, _)) = accepted {
                                    relay(Box::new(s), &upstream, &link);
                                }
                            }
                        }
                    }
                });
                (target.clone().socket(dir.path()), Some(dir))
            }
            Target::Tcp(..) => {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind proxy port");
                let local = listener.local_addr().expect("proxy address");
                let (link, stop, upstream) = (link.clone(), stop.clone(), upstream.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            accepted = listener.accept() => {
                                if let Ok((s, _)) = accepted {
                                    relay(Box::new(s), &upstream, &link);
                                }
                            }
                        }
                    }
                });
                (target.clone().host("127.0.0.1").port(local.port()), None)
            }
        };
        (
            Self {
                link,
                stop,
                _socket_dir: socket_dir,
            },
            options,
        )
    }

    /// The database is gone: open connections drop, new ones are closed at once.
    pub fn cut(&self) {
        if let Some(token) = self.link.lock().expect("lock").take() {
            token.cancel();
        }
    }

    /// The database is back.
    pub fn restore(&self) {
        *self.link.lock().expect("lock") = Some(CancellationToken::new());
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.cancel();
    }
}

fn relay(
    mut client: Box<dyn Stream>,
    upstream: &Target,
    link: &Arc<Mutex<Option<CancellationToken>>>,
) {
    let Some(token) = link.lock().expect("lock").clone() else {
        return; // cut: dropping the client closes it
    };
    let upstream = upstream.clone();
    tokio::spawn(async move {
        let Ok(mut server) = upstream.connect().await else {
            return;
        };
        tokio::select! {
            () = token.cancelled() => {}
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        }
    });
}
