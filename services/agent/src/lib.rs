//! The reference printer agent: the printer's side of the protocol, as firmware would
//! speak it. It generates its key (which never leaves it), asks to be paired, shows the
//! code, waits for someone to enter it, keeps its credentials in a state directory
//! ([`state`]), talks to the printer endpoint over mutual TLS ([`printer_client`]) and
//! renews its certificate ([`renew`]).
//!
//! `printworks printer pair|identity|renew|run` run it from the command line ([`cli`]);
//! [`run`] holds the connection and prints.
//!
//! Everything it sends and reads is a type of `printworks_proto`, the protocol the
//! relay and the pairing service speak too; it depends on nothing of the server.

pub mod cli;
pub mod crypto;
pub mod octoprint;
pub mod run;
pub mod state;

use std::time::Duration;

use anyhow::Context as _;
use printworks_proto::pairing::path as pairing_path;
use printworks_proto::printer::path as printer_path;
use printworks_proto::{
    Credentials, PairingPollRequest, PairingRequestCreate, PairingRequestCreated, PrinterChallenge,
    ProblemReport, RenewedCertificate, SecretRenewalRequest, TlsRenewalRequest,
};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::StatusCode;

pub use state::{PrinterRecord, Saved, StateDir};

/// What the printer says about itself when it asks to be paired.
#[derive(Clone, Debug)]
pub struct PrinterInfo {
    pub serial: String,
    pub model: String,
    pub firmware_version: String,
}

/// How the agent paces itself.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// Poll at most this often, even if the server suggests a longer interval (tests).
    pub max_poll_interval: Option<Duration>,
}

/// A fresh key and a CSR for it (PEM).
pub fn new_key_and_csr() -> anyhow::Result<(KeyPair, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    Ok((key, csr))
}

/// The DER of a CSR in PEM.
fn csr_der(csr_pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = csr_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body.trim())?)
}

/// What went wrong, from a problem+json answer (its title and detail).
async fn problem(res: reqwest::Response) -> anyhow::Error {
    let status = res.status();
    let body: ProblemReport = res.json().await.unwrap_or_default();
    let title = match body.title.as_str() {
        "" => "request failed",
        title => title,
    };
    match body.detail {
        Some(detail) => anyhow::anyhow!("{status}: {title}: {detail}"),
        None => anyhow::anyhow!("{status}: {title}"),
    }
}

fn retry_after(res: &reqwest::Response) -> Duration {
    res.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(5), Duration::from_secs)
        .min(Duration::from_secs(300))
}

/// Pairs the printer with the cloud at `server` (the public API URL): asks for a code,
/// hands it to `show_code` (with how long it lasts), waits until someone enters it,
/// and saves the credentials into `state`.
pub async fn pair(
    http: &reqwest::Client,
    server: &str,
    info: &PrinterInfo,
    state: &StateDir,
    options: &PairOptions,
    mut show_code: impl FnMut(&str, Duration),
) -> anyhow::Result<Saved> {
    let server = server.trim_end_matches('/');
    // Over plain HTTP, someone in the middle could hand the printer another CA and
    // another job-signing key. Fine on this machine; not across a network.
    if let Ok(url) = url::Url::parse(server)
        && url.scheme() == "http"
        && !url.host_str().is_some_and(|h| {
            h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
        })
    {
        tracing::warn!(%server, "pairing over plain HTTP: the credentials could be swapped in transit; use https");
    }
    let (key, csr_pem) = new_key_and_csr()?;
    let body = PairingRequestCreate {
        csr_pem,
        firmware_version: info.firmware_version.clone(),
        model: info.model.clone(),
        previous: None,
        serial: info.serial.clone(),
    };
    let created: PairingRequestCreated = loop {
        let res = http
            .post(format!("{server}{}", pairing_path::REQUESTS))
            .json(&body)
            .send()
            .await
            .context("cannot reach the Printworks server")?;
        match res.status() {
            StatusCode::CREATED => break res.json().await?,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(retry_after(&res)).await;
            }
            _ => return Err(problem(res).await.context("the server refused to pair")),
        }
    };
    show_code(&created.code, Duration::from_secs(created.expires_in));
    let mut interval = Duration::from_secs(created.interval.max(1));
    if let Some(max) = options.max_poll_interval {
        interval = interval.min(max);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(created.expires_in + 60);
    let poll = PairingPollRequest {
        poll_token: created.poll_token,
    };
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("nobody entered the code in time; pair again");
        }
        let res = match http
            .post(format!(
                "{server}{}",
                pairing_path::poll(created.request_id)
            ))
            .json(&poll)
            .send()
            .await
        {
            Ok(res) => res,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the server; polling again");
                continue;
            }
        };
        match res.status() {
            StatusCode::ACCEPTED => continue,
            StatusCode::OK => {
                let credentials: Credentials = res.json().await?;
                return state.save_paired(&key.serialize_pem(), &credentials, server);
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(retry_after(&res)).await;
            }
            StatusCode::GONE => anyhow::bail!("the pairing request expired; pair again"),
            _ => return Err(problem(res).await.context("polling for the credentials")),
        }
    }
}

/// A client for the printer endpoint: it trusts only the printer CA and presents the
/// printer's certificate.
pub fn printer_client(saved: &Saved) -> anyhow::Result<reqwest::Client> {
    printer_client_from(saved, None)
}

/// [`printer_client`], its connections made from `local` (a host with several
/// addresses, or a load test spreading many printers over 127.0.0.0/8).
pub fn printer_client_from(
    saved: &Saved,
    local: Option<std::net::IpAddr>,
) -> anyhow::Result<reqwest::Client> {
    let mut identity = saved.certificate_pem.clone();
    identity.push_str(&saved.key_pem);
    let roots = reqwest::Certificate::from_pem_bundle(saved.ca_pem.as_bytes())
        .context("the saved CA certificate")?;
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .identity(
            reqwest::Identity::from_pem(identity.as_bytes())
                .context("the saved key and certificate")?,
        )
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        // A connection that goes silent (a replica that stopped answering, a load
        // balancer holding it) fails instead of hanging: every request, and the event
        // stream (which hears a heartbeat every 30 s, and gives up itself after its idle
        // timeout, 90 s by default), is retried.
        .read_timeout(Duration::from_secs(120))
        .local_address(local)
        .build()
        .context("building the printer endpoint client")
}

/// When the saved certificate stops being valid.
pub fn certificate_expiry(saved: &Saved) -> anyhow::Result<time::OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(saved.certificate_pem.as_bytes())
        .map_err(|_| anyhow::anyhow!("the saved certificate is not PEM"))?;
    let cert = pem
        .parse_x509()
        .map_err(|_| anyhow::anyhow!("the saved certificate does not parse"))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Whether `certificate_pem` is for `key` (the public key in it is the key's).
fn certificate_is_for(certificate_pem: &str, key: &KeyPair) -> bool {
    x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| {
            pem.parse_x509()
                .ok()
                .map(|c| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
        })
        .unwrap_or(false)
}

async fn renew_over_tls(saved: &Saved, csr_pem: &str) -> anyhow::Result<RenewedCertificate> {
    let res = printer_client(saved)?
        .post(format!(
            "{}{}",
            saved.printer.printer_url,
            printer_path::CERTIFICATE
        ))
        .json(&TlsRenewalRequest {
            csr_pem: csr_pem.to_owned(),
        })
        .send()
        .await
        .context("cannot reach the printer endpoint")?;
    if res.status() != StatusCode::CREATED {
        return Err(problem(res)
            .await
            .context("renewal over the printer endpoint"));
    }
    Ok(res.json().await?)
}

async fn renew_with_secret(saved: &Saved, csr_pem: &str) -> anyhow::Result<RenewedCertificate> {
    let http = reqwest::Client::new();
    let server = &saved.printer.server_url;
    let printer = saved.printer.printer_id;
    let res = http
        .post(format!("{server}{}", pairing_path::challenge(printer)))
        .send()
        .await?;
    if res.status() != StatusCode::CREATED {
        return Err(problem(res).await.context("asking for a renewal challenge"));
    }
    let PrinterChallenge { challenge, .. } = res.json().await.context("no challenge")?;
    let proof = crypto::renewal_proof(
        &saved.shared_secret,
        printer,
        &challenge,
        &csr_der(csr_pem)?,
    );
    let res = http
        .post(format!("{server}{}", pairing_path::certificate(printer)))
        .json(&SecretRenewalRequest {
            challenge,
            csr_pem: csr_pem.to_owned(),
            proof,
        })
        .send()
        .await?;
    if res.status() != StatusCode::CREATED {
        return Err(problem(res).await.context("renewal with the shared secret"));
    }
    Ok(res.json().await?)
}

/// A new certificate (and key): over the printer endpoint while the current
/// certificate looks valid at `now`; with the shared secret after it expired — or when
/// the printer endpoint will not renew it (it retired after a renewal whose answer was
/// lost, say, or the saved key and certificate no longer match). The answer is checked
/// to be for the new key before anything is saved.
pub async fn renew(state: &StateDir, now: time::OffsetDateTime) -> anyhow::Result<Saved> {
    let saved = state.load()?;
    let (key, csr_pem) = new_key_and_csr()?;
    let valid = certificate_expiry(&saved).is_ok_and(|t| t > now + time::Duration::minutes(1));
    let renewed = if valid {
        match renew_over_tls(&saved, &csr_pem).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "renewal over the printer endpoint failed; using the shared secret");
                renew_with_secret(&saved, &csr_pem).await?
            }
        }
    } else {
        renew_with_secret(&saved, &csr_pem).await?
    };
    anyhow::ensure!(
        certificate_is_for(&renewed.certificate_pem, &key),
        "the renewed certificate is not for the key that asked; not saved"
    );
    state.save_certificate(&key.serialize_pem(), &renewed.certificate_pem)?;
    state.load()
}
