//! Settings shared by every service: read from the environment (each also has a
//! command-line flag), each with a default that works on a laptop, each validated when
//! the process starts so that a bad value stops it with one line naming the setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use url::Url;

pub const DEFAULT_DATA_DIR: &str = "./.printworks";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_PRINTER_ADDR: &str = "127.0.0.1:8443";
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";
pub const DEFAULT_MAX_BODY_BYTES: &str = "262144";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "30s";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
pub const DEFAULT_DB_MAX_CONNECTIONS: &str = "10";
pub const DEFAULT_DB_CONNECT_TIMEOUT: &str = "30s";

/// The file, under the data directory, in which `deploy/embedded-postgres.sh` leaves the
/// URL of the private PostgreSQL cluster it started. Used when `DATABASE_URL` is unset.
pub const EMBEDDED_DATABASE_URL_FILE: &str = "database-url";

/// Settings every service reads. Construct with clap (the binary) or
/// [`Settings::defaults`] (tests), then adjust fields.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/printworks. When unset, the
    /// private cluster that `make db` (deploy/embedded-postgres.sh) starts under the data
    /// directory is used.
    #[arg(long, global = true, env = "DATABASE_URL", value_name = "URL", hide_env_values = true, value_parser = DatabaseUrl::parse_setting)]
    pub database_url: Option<DatabaseUrl>,

    /// A file holding the PostgreSQL URL (e.g. a mounted Kubernetes Secret), instead of
    /// DATABASE_URL: the URL and its password then stay out of the environment.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,

    /// Directory for generated state: signing keys, the printer CA, local blobs, and the
    /// embedded PostgreSQL cluster.
    #[arg(long, global = true, env = "PRINTWORKS_DATA_DIR", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Address of the public HTTP API (people, apps, pairing printers).
    #[arg(long, global = true, env = "PRINTWORKS_HTTP_ADDR", value_name = "ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,

    /// Address of the printer listener (mutual TLS), opened by the relay service.
    #[arg(long, global = true, env = "PRINTWORKS_PRINTER_ADDR", value_name = "ADDR", default_value = DEFAULT_PRINTER_ADDR)]
    pub printer_addr: SocketAddr,

    /// The URL people and apps reach the API at: the OAuth issuer and the base of links.
    /// http or https, no path, query or fragment. With https, cookies are `Secure`.
    #[arg(long, global = true, env = "PRINTWORKS_PUBLIC_URL", value_name = "URL", default_value = DEFAULT_PUBLIC_URL, value_parser = PublicUrl::parse_setting)]
    pub public_url: PublicUrl,

    /// Log format on standard error: `human` or `json` (one object per line).
    #[arg(long, global = true, env = "PRINTWORKS_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Which log lines to keep, as `tracing` filter directives (e.g. `info,printworks=debug`).
    #[arg(long, global = true, env = "PRINTWORKS_LOG", value_name = "FILTER", default_value = DEFAULT_LOG_FILTER, value_parser = parse_log_filter)]
    pub log_filter: String,

    /// Largest request body accepted by the API routes, in bytes; larger ones answer 413.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_BODY_BYTES", value_name = "BYTES", default_value = DEFAULT_MAX_BODY_BYTES, value_parser = parse_body_limit)]
    pub max_body_bytes: usize,

    /// Longest time a request may take before it is answered 503 (e.g. `30s`, `500ms`).
    #[arg(long, global = true, env = "PRINTWORKS_REQUEST_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_REQUEST_TIMEOUT, value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// On SIGTERM or Ctrl-C, how long in-flight requests may take to finish.
    #[arg(long, global = true, env = "PRINTWORKS_SHUTDOWN_GRACE", value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Most database connections this process opens.
    #[arg(long, global = true, env = "PRINTWORKS_DB_MAX_CONNECTIONS", value_name = "N", default_value = DEFAULT_DB_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// How long start-up waits for the database, and a request waits for a connection.
    #[arg(long, global = true, env = "PRINTWORKS_DB_CONNECT_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_DB_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub db_connect_timeout: Duration,

    /// The key that encrypts secrets at rest (TOTP seeds, signing keys): 32 bytes in
    /// base64. Every replica needs the same one (e.g. from a Kubernetes Secret). Unset: one
    /// is generated once into <data dir>/keys/master.key.
    #[arg(long, global = true, env = "PRINTWORKS_MASTER_KEY", value_name = "BASE64", hide_env_values = true, value_parser = MasterKey::parse_setting)]
    pub master_key: Option<MasterKey>,

    /// Earlier master keys, comma separated: what they sealed still opens, and `printworks
    /// keys reseal` seals it again under PRINTWORKS_MASTER_KEY. Drop them once it reports
    /// nothing left (docs/operations.md, "Rotating the master key").
    #[arg(long, global = true, env = "PRINTWORKS_MASTER_KEY_PREVIOUS", value_name = "BASE64,...", hide_env_values = true, value_delimiter = ',', value_parser = MasterKey::parse_setting)]
    pub master_key_previous: Vec<MasterKey>,

    /// Requests per minute one source address may make to the login, token, TOTP and
    /// pairing routes (with bursts of a fifth of that); more answer 429.
    #[arg(long, global = true, env = "PRINTWORKS_AUTH_RATE_LIMIT", value_name = "N", default_value = DEFAULT_AUTH_RATE_LIMIT, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub auth_rate_limit_per_minute: u32,

    /// Comma-separated addresses or networks of reverse proxies whose `X-Forwarded-For`
    /// is believed (e.g. `10.0.0.0/8,fd00::/8`). Unset: the TCP peer is the client.
    #[arg(long, global = true, env = "PRINTWORKS_TRUSTED_PROXIES", value_name = "CIDRS", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    #[command(flatten, next_help_heading = "Account service")]
    pub account: AccountSettings,

    #[command(flatten, next_help_heading = "Organization service")]
    pub org: OrgSettings,

    #[command(flatten, next_help_heading = "Printers (pairing and relay)")]
    pub printers: PrinterSettings,

    #[command(flatten, next_help_heading = "Relay service (print jobs)")]
    pub relay: RelaySettings,
}

/// Settings of the relay service: where job files are kept and how large they may be.
#[derive(Clone, Debug, clap::Args)]
pub struct RelaySettings {
    /// Where sealed job files are stored: `gs://bucket/prefix` (Google Cloud Storage) or
    /// `file:///absolute/dir`. Unset: <data dir>/blobs. Every replica needs the same store.
    #[arg(long, global = true, env = "PRINTWORKS_BLOB_URL", value_name = "URL", value_parser = parse_blob_url)]
    pub blob_url: Option<Url>,

    /// The Cloud Storage endpoint, for an emulator (e.g. `http://127.0.0.2`). Unset: Google's,
    /// with the application default credentials.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_GCS_ENDPOINT",
        value_name = "URL"
    )]
    pub gcs_endpoint: Option<String>,

    /// The largest print job accepted, in bytes; larger ones answer 413 and leave nothing.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_JOB_BYTES", value_name = "BYTES", default_value = "536870912", value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024 * 1024))]
    pub max_job_bytes: u64,

    /// Longest an upload of a print job may take.
    #[arg(long, global = true, env = "PRINTWORKS_UPLOAD_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub upload_timeout: Duration,

    /// How long the files of finished jobs are kept (their records stay).
    #[arg(long, global = true, env = "PRINTWORKS_JOB_RETENTION", value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub job_retention: Duration,

    /// How often an idle printer connection carries a heartbeat.
    #[arg(long, global = true, env = "PRINTWORKS_HEARTBEAT_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Most unfinished jobs (waiting, being received, on their way or printing) one
    /// printer may have; more answer 429.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_QUEUED_JOBS_PER_PRINTER", value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_queued_jobs_per_printer: u32,

    /// Most unfinished jobs one organization may have across its printers; more answer 429.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_QUEUED_JOBS_PER_ORG", value_name = "N", default_value = "1000", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_queued_jobs_per_org: u32,

    /// Most bytes of job files one printer may have stored (finished jobs count until
    /// retention deletes their files); more answer 413.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_STORED_BYTES_PER_PRINTER", value_name = "BYTES", default_value = "10737418240", value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_stored_bytes_per_printer: u64,

    /// Most bytes of job files one organization may have stored; more answer 413.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_STORED_BYTES_PER_ORG", value_name = "BYTES", default_value = "107374182400", value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_stored_bytes_per_org: u64,

    /// Most uploads one person (or automated client) may have going at once; more answer 429.
    #[arg(long, global = true, env = "PRINTWORKS_MAX_UPLOADS_PER_CALLER", value_name = "N", default_value = "4", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_uploads_per_caller: u32,

    /// A job still waiting for its printer this long after it was sent fails (expired).
    #[arg(long, global = true, env = "PRINTWORKS_QUEUED_JOB_TTL", value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub queued_job_ttl: Duration,

    /// How many UFP packages are checked at once (each on a thread of its own, apart
    /// from password hashing); further uploads wait their turn.
    #[arg(long, global = true, env = "PRINTWORKS_UFP_CHECKERS", value_name = "N", default_value = "2", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub ufp_checkers: u32,

    /// How often the relay looks for work whose wake-up hint was lost.
    #[arg(long, global = true, env = "PRINTWORKS_DISPATCH_SWEEP_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub dispatch_sweep_interval: Duration,

    /// Most printer connections this process holds at once (each is an open file; the
    /// process may have few more than 20 000): further ones are closed at once.
    #[arg(long, global = true, env = "PRINTWORKS_PRINTER_MAX_CONNECTIONS", value_name = "N", default_value = "18000", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub printer_max_connections: u32,
}

impl RelaySettings {
    pub fn defaults() -> Self {
        #[allow(clippy::expect_used)]
        Self {
            blob_url: None,
            gcs_endpoint: None,
            max_job_bytes: 536_870_912,
            upload_timeout: parse_duration("1h").expect("default"),
            job_retention: parse_duration("30d").expect("default"),
            heartbeat_interval: parse_duration("30s").expect("default"),
            dispatch_sweep_interval: parse_duration("10s").expect("default"),
            max_queued_jobs_per_printer: 100,
            max_queued_jobs_per_org: 1000,
            max_stored_bytes_per_printer: 10 * 1024 * 1024 * 1024,
            max_stored_bytes_per_org: 100 * 1024 * 1024 * 1024,
            max_uploads_per_caller: 4,
            queued_job_ttl: parse_duration("7d").expect("default"),
            ufp_checkers: 2,
            printer_max_connections: 18_000,
        }
    }
}

pub fn parse_blob_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("is not a URL ({e})"))?;
    match url.scheme() {
        "gs" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        "file" if url.to_file_path().is_ok() => Ok(url),
        _ => Err("must be gs://bucket/prefix or file:///absolute/dir".into()),
    }
}

/// Settings of the pairing and relay services: the printer certificate authority, the
/// printer endpoint's certificate and address, and the limits of pairing.
#[derive(Clone, Debug, clap::Args)]
pub struct PrinterSettings {
    /// The URL printers reach the printer endpoint at (handed to them when they pair).
    /// Unset: https:// and PRINTWORKS_PRINTER_ADDR.
    #[arg(long, global = true, env = "PRINTWORKS_PRINTER_URL", value_name = "URL", value_parser = parse_printer_url)]
    pub printer_url: Option<Url>,

    /// Extra DNS names or IP addresses the printer endpoint's certificate names, comma
    /// separated (the host of PRINTWORKS_PRINTER_URL, the listener's address and
    /// `localhost` are always named).
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_PRINTER_HOSTNAMES",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub printer_hostnames: Vec<String>,

    /// PEM file of the printer CA's certificate (production: e.g. a Kubernetes Secret;
    /// every replica needs the same CA). Unset: one is generated into <data dir>/ca/.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_PRINTER_CA_CERT",
        value_name = "FILE",
        requires = "printer_ca_key"
    )]
    pub printer_ca_cert: Option<PathBuf>,

    /// PEM file (PKCS#8) of the printer CA's private key; goes with PRINTWORKS_PRINTER_CA_CERT.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_PRINTER_CA_KEY",
        value_name = "FILE",
        requires = "printer_ca_cert"
    )]
    pub printer_ca_key: Option<PathBuf>,

    /// PEM certificate chain for the printer endpoint, when it has a publicly trusted
    /// certificate. Unset: the printer CA issues one.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_PRINTER_TLS_CERT",
        value_name = "FILE",
        requires = "printer_tls_key"
    )]
    pub printer_tls_cert: Option<PathBuf>,

    /// PEM private key for PRINTWORKS_PRINTER_TLS_CERT.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_PRINTER_TLS_KEY",
        value_name = "FILE",
        requires = "printer_tls_cert"
    )]
    pub printer_tls_key: Option<PathBuf>,

    /// Lifetime of the certificates issued to printers.
    #[arg(long, global = true, env = "PRINTWORKS_PRINTER_CERT_TTL", value_name = "DURATION", default_value = "90d", value_parser = parse_duration)]
    pub printer_cert_ttl: Duration,

    /// Most pairing requests waiting for a claim at once (all printers); more answer 503.
    #[arg(long, global = true, env = "PRINTWORKS_PAIRING_MAX_PENDING", value_name = "N", default_value = "10000", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairing_max_pending: u32,

    /// Most pairing requests waiting at once from one network (IPv4 /24, IPv6 /48), so
    /// that one network cannot fill PRINTWORKS_PAIRING_MAX_PENDING; more answer 429.
    #[arg(long, global = true, env = "PRINTWORKS_PAIRING_MAX_PENDING_PER_NETWORK", value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairing_max_pending_per_network: u32,

    /// Wrong pairing codes the whole service accepts in any ten minutes from claims that
    /// do not name the printer's serial; once spent, a claim must name it. Each wrong
    /// code finds a given waiting printer with probability 1 in 10^6 (docs/security.md).
    #[arg(long, global = true, env = "PRINTWORKS_PAIRING_GUESS_BUDGET", value_name = "N", default_value = "80", value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub pairing_guess_budget: u32,
}

impl PrinterSettings {
    pub fn defaults() -> Self {
        #[allow(clippy::expect_used)]
        Self {
            printer_url: None,
            printer_hostnames: Vec::new(),
            printer_ca_cert: None,
            printer_ca_key: None,
            printer_tls_cert: None,
            printer_tls_key: None,
            printer_cert_ttl: parse_duration("90d").expect("default"),
            pairing_max_pending: 10_000,
            pairing_max_pending_per_network: 100,
            pairing_guess_budget: 80,
        }
    }
}

fn parse_printer_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("is not a URL ({e})"))?;
    if url.scheme() != "https" || url.host().is_none() {
        return Err("must be an https:// URL with a host".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must have no path, query or fragment".into());
    }
    Ok(url)
}

/// Settings of the organization service (invitations, e-mail, audit log).
#[derive(Clone, Debug, clap::Args)]
pub struct OrgSettings {
    /// How long an invitation can be accepted.
    #[arg(long, global = true, env = "PRINTWORKS_INVITATION_TTL", value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub invitation_ttl: Duration,

    /// How long audit records are kept before the retention job removes them.
    #[arg(long, global = true, env = "PRINTWORKS_AUDIT_RETENTION", value_name = "DURATION", default_value = "365d", value_parser = parse_duration)]
    pub audit_retention: Duration,

    /// SMTP server for e-mail, e.g. `smtps://user:pass@mail.example.com:465` or
    /// `smtp://user:pass@mail.example.com:587?tls=required`. Unset: each message is
    /// written to a file under <data dir>/mail/ (development).
    #[arg(long, global = true, env = "PRINTWORKS_SMTP_URL", value_name = "URL", hide_env_values = true, value_parser = parse_secret)]
    pub smtp_url: Option<SecretString>,

    /// A file holding PRINTWORKS_SMTP_URL (e.g. a mounted Kubernetes Secret), read at
    /// start-up: the URL then stays out of the environment.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_SMTP_URL_FILE",
        value_name = "FILE",
        conflicts_with = "smtp_url"
    )]
    pub smtp_url_file: Option<PathBuf>,

    /// The sender of e-mail.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_MAIL_FROM",
        value_name = "ADDRESS",
        default_value = "Printworks <no-reply@printworks.invalid>"
    )]
    pub mail_from: String,

    /// The DNS server (`IP:PORT`) asked for the TXT records that prove an organization
    /// owns an e-mail domain (federated sign-in). Unset: the system's resolvers
    /// (/etc/resolv.conf).
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_DNS_SERVER",
        value_name = "IP:PORT"
    )]
    pub dns_server: Option<std::net::SocketAddr>,
}

impl OrgSettings {
    pub fn defaults() -> Self {
        #[allow(clippy::expect_used)]
        Self {
            invitation_ttl: parse_duration("7d").expect("default"),
            audit_retention: parse_duration("365d").expect("default"),
            smtp_url: None,
            smtp_url_file: None,
            mail_from: "Printworks <no-reply@printworks.invalid>".into(),
            dns_server: None,
        }
    }
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(s.trim().to_owned()))
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or network (CIDR)"))
}

pub const DEFAULT_AUTH_RATE_LIMIT: &str = "60";

/// Settings of the account service (people, sessions, tokens).
#[derive(Clone, Debug, clap::Args)]
pub struct AccountSettings {
    /// Shortest password accepted, in characters (NIST SP 800-63B asks for at least 8; 15
    /// without MFA).
    #[arg(long, global = true, env = "PRINTWORKS_PASSWORD_MIN_LENGTH", value_name = "N", default_value = "12", value_parser = clap::value_parser!(u32).range(8..=128))]
    pub password_min_length: u32,

    /// Longest password accepted, in characters.
    #[arg(long, global = true, env = "PRINTWORKS_PASSWORD_MAX_LENGTH", value_name = "N", default_value = "256", value_parser = clap::value_parser!(u32).range(64..=1024))]
    pub password_max_length: u32,

    /// Argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long, global = true, env = "PRINTWORKS_ARGON2_MEMORY_KIB", value_name = "KIB", default_value = "19456", value_parser = clap::value_parser!(u32).range(19456..=4_194_304))]
    pub argon2_memory_kib: u32,

    /// Argon2id passes (OWASP minimum with 19 MiB: 2).
    #[arg(long, global = true, env = "PRINTWORKS_ARGON2_ITERATIONS", value_name = "N", default_value = "2", value_parser = clap::value_parser!(u32).range(2..=100))]
    pub argon2_iterations: u32,

    /// Argon2id lanes.
    #[arg(long, global = true, env = "PRINTWORKS_ARGON2_PARALLELISM", value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub argon2_parallelism: u32,

    /// Most password hashes computed at once (each takes the Argon2 memory); further
    /// logins wait their turn. 0: the number of CPUs.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_MAX_CONCURRENT_HASHES",
        value_name = "N",
        default_value = "0"
    )]
    pub max_concurrent_hashes: usize,

    /// A browser session ends this long after login at the latest.
    #[arg(long, global = true, env = "PRINTWORKS_SESSION_LIFETIME", value_name = "DURATION", default_value = "14d", value_parser = parse_duration)]
    pub session_lifetime: Duration,

    /// A browser session ends after this long without use.
    #[arg(long, global = true, env = "PRINTWORKS_SESSION_IDLE_TIMEOUT", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,

    /// Lifetime of OAuth access tokens (and ID tokens).
    #[arg(long, global = true, env = "PRINTWORKS_ACCESS_TOKEN_TTL", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of OAuth refresh tokens (each use issues a new one).
    #[arg(long, global = true, env = "PRINTWORKS_REFRESH_TOKEN_TTL", value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// Failed logins (or TOTP codes) for one account before each further attempt must wait.
    #[arg(long, global = true, env = "PRINTWORKS_LOGIN_FREE_ATTEMPTS", value_name = "N", default_value = "3", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub login_free_attempts: u32,

    /// The longest an account's growing wait between failed attempts becomes.
    #[arg(long, global = true, env = "PRINTWORKS_LOGIN_MAX_DELAY", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub login_max_delay: Duration,

    /// Clients (by id, comma separated) that may introspect any token — resource servers
    /// the operator trusts. Any other client learns only about tokens issued to itself
    /// (RFC 7662 §4: others are answered `active: false`).
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_INTROSPECTION_CLIENTS",
        value_name = "CLIENT_IDS",
        value_delimiter = ','
    )]
    pub introspection_clients: Vec<String>,

    /// A system use notification (IEC 62443 CR 1.12) shown on the login page, e.g. the
    /// terms under which this system may be used. Unset: none.
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_SYSTEM_USE_NOTICE",
        value_name = "TEXT"
    )]
    pub system_use_notice: Option<String>,

    /// A session that came from an organization's identity provider ends this long
    /// after sign-in at the latest; the person then signs in at the provider again (a
    /// leaver disabled there cannot), and the refresh tokens issued through it end too.
    #[arg(long, global = true, env = "PRINTWORKS_FEDERATED_SESSION_MAX", value_name = "DURATION", default_value = "12h", value_parser = parse_duration)]
    pub federated_session_max: Duration,

    /// Let organizations' identity providers be on this machine (a loopback address,
    /// plain http allowed): for tests and development only. Off, an admin cannot point
    /// Printworks at its own ports.
    #[arg(long, global = true, env = "PRINTWORKS_FEDERATION_ALLOW_LOOPBACK", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub federation_allow_loopback: bool,
}

impl AccountSettings {
    pub fn defaults() -> Self {
        #[allow(clippy::expect_used)]
        Self {
            password_min_length: 12,
            password_max_length: 256,
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            session_lifetime: parse_duration("14d").expect("default"),
            session_idle_timeout: parse_duration("24h").expect("default"),
            access_token_ttl: parse_duration("10m").expect("default"),
            refresh_token_ttl: parse_duration("30d").expect("default"),
            login_free_attempts: 3,
            login_max_delay: parse_duration("5m").expect("default"),
            introspection_clients: Vec::new(),
            system_use_notice: None,
            federated_session_max: parse_duration("12h").expect("default"),
            federation_allow_loopback: false,
        }
    }
}

/// The 32-byte key that seals secrets at rest. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey(std::sync::Arc<secrecy::SecretBox<[u8; 32]>>);

impl MasterKey {
    pub fn parse_setting(s: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim()))
            .map_err(|_| "must be 32 bytes in base64".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "must be 32 bytes in base64".to_owned())?;
        Ok(Self::from_bytes(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(std::sync::Arc::new(secrecy::SecretBox::new(Box::new(key))))
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl Settings {
    /// Every setting at its documented default, without reading the environment.
    pub fn defaults() -> Self {
        // The constants above are the same strings clap parses; a test pins them together.
        fn p<T: FromStr>(s: &str) -> T
        where
            T::Err: fmt::Debug,
        {
            s.parse().expect("built-in default parses")
        }
        #[allow(clippy::expect_used)]
        Self {
            database_url: None,
            database_url_file: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            http_addr: p(DEFAULT_HTTP_ADDR),
            printer_addr: p(DEFAULT_PRINTER_ADDR),
            public_url: PublicUrl::parse_setting(DEFAULT_PUBLIC_URL).expect("default URL"),
            log_format: LogFormat::Human,
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            max_body_bytes: p(DEFAULT_MAX_BODY_BYTES),
            request_timeout: parse_duration(DEFAULT_REQUEST_TIMEOUT).expect("default duration"),
            shutdown_grace: parse_duration(DEFAULT_SHUTDOWN_GRACE).expect("default duration"),
            db_max_connections: p(DEFAULT_DB_MAX_CONNECTIONS),
            db_connect_timeout: parse_duration(DEFAULT_DB_CONNECT_TIMEOUT)
                .expect("default duration"),
            master_key: None,
            master_key_previous: Vec::new(),
            trusted_proxies: Vec::new(),
            auth_rate_limit_per_minute: p(DEFAULT_AUTH_RATE_LIMIT),
            account: AccountSettings::defaults(),
            org: OrgSettings::defaults(),
            printers: PrinterSettings::defaults(),
            relay: RelaySettings::defaults(),
        }
    }

    /// Where printers reach the printer endpoint: PRINTWORKS_PRINTER_URL, or https:// and
    /// the listener's address.
    pub fn printer_url(&self) -> String {
        match &self.printers.printer_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => format!("https://{}", self.printer_addr),
        }
    }

    /// The database to use: `DATABASE_URL`, or else the URL the embedded cluster left in
    /// the data directory.
    pub fn resolve_database_url(&self) -> Result<DatabaseUrl, String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        if let Some(file) = &self.database_url_file {
            let text = secret_from_file("DATABASE_URL_FILE", file)?;
            return DatabaseUrl::parse_setting(text.expose_secret())
                .map_err(|e| format!("DATABASE_URL_FILE {}: {e}", file.display()));
        }
        let file = self.data_dir.join(EMBEDDED_DATABASE_URL_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => DatabaseUrl::parse_setting(text.trim())
                .map_err(|e| format!("{}: {e}", file.display())),
            Err(_) => Err(format!(
                "DATABASE_URL is not set and no embedded database was started under {} \
                 (run `make db`, or set DATABASE_URL)",
                self.data_dir.display()
            )),
        }
    }
}

/// The secret in the file a `*_FILE` setting names (e.g. a mounted Kubernetes Secret),
/// trimmed; an error, naming the setting and the file but never echoing the content,
/// when it cannot be read or is empty.
pub fn secret_from_file(setting: &str, path: &Path) -> Result<SecretString, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("{setting} {} is empty", path.display()));
    }
    Ok(SecretString::from(text.trim().to_owned()))
}

/// A PostgreSQL URL. Kept secret (it may carry a password): `Debug` and [`Self::redacted`]
/// show only user, host, port and database.
#[derive(Clone)]
pub struct DatabaseUrl {
    url: SecretString,
}

impl DatabaseUrl {
    pub fn parse_setting(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err("must start with postgres:// or postgresql://".into());
        }
        // Never echo the value: it may hold a password.
        PgConnectOptions::from_str(s).map_err(|_| "is not a valid PostgreSQL URL".to_owned())?;
        Ok(Self {
            url: SecretString::from(s.to_owned()),
        })
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(self.url.expose_secret())
            .unwrap_or_else(|_| PgConnectOptions::new_without_pgpass())
    }

    /// `user@host:port/database`, or `user@/socket/dir/database`, without the password.
    pub fn redacted(&self) -> String {
        let o = self.connect_options();
        let place = match o.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => format!("{}:{}", o.get_host(), o.get_port()),
        };
        format!(
            "{}@{place}/{}",
            o.get_username(),
            o.get_database().unwrap_or("")
        )
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// The public base URL: http or https, a host, nothing after the authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl(Url);

impl PublicUrl {
    pub fn parse_setting(s: &str) -> Result<Self, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if url.host().is_none() {
            return Err("must name a host".into());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err("must have no path, query or fragment".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        Ok(Self(url))
    }

    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// The URL without the trailing slash, e.g. `https://print.example.com`: the issuer.
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    /// An absolute link to `path` (which starts with `/`).
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.as_str())
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("is not a valid filter ({e})"))
}

fn parse_body_limit(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1024..=1 << 30).contains(&n) => Ok(n),
        _ => Err("must be a number of bytes from 1024 to 1073741824".into()),
    }
}

/// `250ms`, `30s`, `5m`, `2h`, `14d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "must be a duration such as 500ms, 30s, 5m, 2h or 14d".to_owned())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return Err("must be a duration such as 500ms, 30s, 5m, 2h or 14d".into()),
    };
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Creates `dir` (and parents) if missing, readable only by the owner when created.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_url_can_come_from_a_file_whose_content_is_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::defaults();
        s.data_dir = dir.path().join("data");
        let file = dir.path().join("uri");
        std::fs::write(
            &file,
            "postgresql://app:s3cret@db.example:5432/printworks\n",
        )
        .unwrap();
        s.database_url_file = Some(file.clone());
        let url = s.resolve_database_url().unwrap();
        assert!(!format!("{url:?}").contains("s3cret"));
        std::fs::write(&file, "mysql://app:s3cret@db/printworks").unwrap();
        let e = s.resolve_database_url().err().unwrap();
        assert!(
            e.contains("DATABASE_URL_FILE") && !e.contains("s3cret"),
            "{e}"
        );
        s.database_url_file = Some(dir.path().join("missing"));
        let e = s.resolve_database_url().err().unwrap();
        assert!(
            e.contains("DATABASE_URL_FILE") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86400)));
        for bad in ["", "s", "0s", "-1s", "1.5s", "10 parsecs", "3w"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn public_url_accepts_origins_only() {
        let u = PublicUrl::parse_setting("https://print.example.com/").unwrap();
        assert_eq!(u.as_str(), "https://print.example.com");
        assert!(u.is_https());
        assert_eq!(u.link("/a"), "https://print.example.com/a");
        assert!(
            !PublicUrl::parse_setting("http://127.0.0.1:8080")
                .unwrap()
                .is_https()
        );
        for bad in [
            "print.example.com",
            "ftp://print.example.com",
            "https://print.example.com/app",
            "https://print.example.com/?x=1",
            "https://print.example.com/#x",
            "https://user:pw@print.example.com",
        ] {
            assert!(PublicUrl::parse_setting(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn database_url_never_shows_its_password() {
        let url = DatabaseUrl::parse_setting("postgres://app:hunter2@db.internal:5433/pw").unwrap();
        assert_eq!(url.redacted(), "app@db.internal:5433/pw");
        assert!(!format!("{url:?}").contains("hunter2"));
        let sock = DatabaseUrl::parse_setting("postgres:///pw?host=/run/pg&user=postgres").unwrap();
        assert_eq!(sock.redacted(), "postgres@/run/pg/pw");
        for bad in ["mysql://x/y", "hunter2", "postgres://app:pw@db:notaport/x"] {
            let err = DatabaseUrl::parse_setting(bad).unwrap_err();
            assert!(!err.contains("hunter2") && !err.contains("pw@"), "{err}");
        }
    }

    #[test]
    fn body_limit_bounds() {
        assert_eq!(parse_body_limit("262144"), Ok(262144));
        assert!(parse_body_limit("12").is_err());
        assert!(parse_body_limit("lots").is_err());
    }

    #[test]
    fn defaults_match_what_clap_parses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            s: Settings,
        }
        // Parse without consulting the environment of whoever runs the test.
        let cmd = <Cli as clap::CommandFactory>::command();
        let mut cmd = cmd.mut_args(|a| a.env(None::<&str>));
        let m = cmd.try_get_matches_from_mut(["x"]).unwrap();
        let parsed = <Cli as clap::FromArgMatches>::from_arg_matches(&m)
            .unwrap()
            .s;
        let d = Settings::defaults();
        assert_eq!(format!("{parsed:?}"), format!("{d:?}"));
    }
}
