//! A real rustls client for the printer endpoint: TLS 1.3, the CA a printer was given,
//! and (or not) a client certificate. Requests are plain HTTP/1.1 written on the
//! stream, so a test sees exactly what a printer would, including a dropped connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type Conn = TlsStream<TcpStream>;

/// A client configuration trusting `ca_pem`, presenting `identity` (cert and key PEM).
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

/// Connects and completes the handshake (as far as the client can tell: with TLS 1.3
/// a refused client certificate shows on the first read).
pub async fn connect(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<Conn> {
    handshake(TcpStream::connect(addr).await?, addr, config).await
}

/// [`connect`] from the local address `from` (another loopback address, say).
pub async fn connect_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<Conn> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    handshake(socket.connect(addr).await?, addr, config).await
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<Conn> {
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 request on the connection; the status and the JSON body (or an error
/// when the server closed the connection or the TLS session failed).
pub async fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: printworks\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status: u16 = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[end + 4..(end + 4 + length).min(buf.len())];
        let json = serde_json::from_slice(body).unwrap_or(Value::Null);
        return Ok((status, json));
    }
}

/// Waits (at most `within`) for the server to close an idle connection: true if it did.
pub async fn closed_within(conn: &mut Conn, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, conn.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

/// Whether the endpoint refuses this client: at the handshake (seen at the first read
/// with TLS 1.3) or with 401 to a request.
pub async fn refused(addr: SocketAddr, config: rustls::ClientConfig) -> bool {
    match connect(addr, config).await {
        Err(_) => true,
        Ok(mut conn) => match request(&mut conn, "GET", "/printer/v1/identity", None).await {
            Err(_) => true,
            Ok((status, _)) => status == 401,
        },
    }
}
