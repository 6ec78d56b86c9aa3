//! The real `printworks` binary: its help, its refusal of bad settings (one line naming
//! the setting, no secret echoed), serving with JSON logs, and stopping on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

const CANARY: &str = "canary-pw-7Hq2";

/// The binary with an empty environment but for PATH and what the test sets.
pub(crate) fn printworks(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_printworks"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PRINTWORKS_DATA_DIR", data_dir)
        .stdin(Stdio::null());
    cmd
}

/// A `printworks serve` process of the binary under test.
pub struct Server {
    /// `None` once it has been waited for.
    child: Option<Child>,
    pub http: SocketAddr,
    pub printer: Option<SocketAddr>,
    /// What it logged until it served.
    seen: Vec<String>,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Starts `printworks serve --services <services>` on loopback ports with `data_dir`
    /// and the environment `env` (DATABASE_URL, ...), logging JSON, and waits until it
    /// serves. Its public URL is its own address unless `env` says otherwise.
    pub fn start(data_dir: &std::path::Path, services: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = printworks(data_dir);
        cmd.env("PRINTWORKS_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("PRINTWORKS_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("PRINTWORKS_PRINTER_ADDR", "127.0.0.1:0")
            .env("PRINTWORKS_LOG_FORMAT", "json")
            .env("PRINTWORKS_LOG", "info")
            .env("PRINTWORKS_SHUTDOWN_GRACE", "20s")
            .env("PRINTWORKS_AUTH_RATE_LIMIT", "1000000");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["serve", "--services", services])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("printworks serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Held from here on, so that a failure below still stops the process.
        let mut server = Self {
            child: Some(child),
            http: SocketAddr::from(([127, 0, 0, 1], port)),
            printer: None,
            seen: Vec::new(),
            logs,
        };
        loop {
            let line = server
                .logs
                .recv_timeout(Duration::from_secs(60))
                .expect("printworks serve logs that it serves");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            server.seen.push(line);
            if v["message"] == "printworks is serving" {
                server.http = v["address"].as_str().expect("address").parse().unwrap();
                // `printer_endpoint` is logged as `Some(127.0.0.1:port)` or `None`.
                server.printer = v["printer_endpoint"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("Some(")?.strip_suffix(')'))
                    .map(|a| a.parse().unwrap());
                return server;
            }
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal}");
    }

    /// `SIGKILL`: gone at once, nothing finished.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// `SIGTERM`: the graceful stop.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Waits for the process to exit; its exit status and every line it logged.
    pub async fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let mut lines = std::mem::take(&mut self.seen);
        let (_, rest) = std::sync::mpsc::channel();
        let logs = std::mem::replace(&mut self.logs, rest);
        let (status, rest) = tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            // The reader ends at the end of the process's output.
            (status, logs.iter().collect::<Vec<_>>())
        })
        .await
        .unwrap();
        lines.extend(rest);
        (status, lines)
    }
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn help_explains_every_subcommand_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = printworks(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "serve",
        "migrate",
        "DATABASE_URL",
        "PRINTWORKS_DATA_DIR",
        "PRINTWORKS_HTTP_ADDR",
        "PRINTWORKS_PRINTER_ADDR",
        "PRINTWORKS_PUBLIC_URL",
        "PRINTWORKS_LOG_FORMAT",
        "PRINTWORKS_LOG",
        "PRINTWORKS_MAX_BODY_BYTES",
        "PRINTWORKS_REQUEST_TIMEOUT",
        "PRINTWORKS_SHUTDOWN_GRACE",
        "PRINTWORKS_DB_MAX_CONNECTIONS",
        "PRINTWORKS_DB_CONNECT_TIMEOUT",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    let out = printworks(dir.path())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("PRINTWORKS_SERVICES")
    );
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("PRINTWORKS_HTTP_ADDR", "localhost"),
        ("PRINTWORKS_HTTP_ADDR", "127.0.0.1:99999"),
        ("PRINTWORKS_PRINTER_ADDR", "nonsense"),
        ("PRINTWORKS_PUBLIC_URL", "print.example.com"),
        (
            "PRINTWORKS_PUBLIC_URL",
            "https://print.example.com/sub/path",
        ),
        ("PRINTWORKS_LOG_FORMAT", "xml"),
        ("PRINTWORKS_LOG", "info,=foo=bar[["),
        ("PRINTWORKS_MAX_BODY_BYTES", "-5"),
        ("PRINTWORKS_REQUEST_TIMEOUT", "forever"),
        ("PRINTWORKS_SHUTDOWN_GRACE", "0s"),
        ("PRINTWORKS_DB_MAX_CONNECTIONS", "0"),
        ("PRINTWORKS_DB_CONNECT_TIMEOUT", "3 days"),
        ("PRINTWORKS_SERVICES", "account,billing"),
    ];
    for (name, value) in cases {
        let out = printworks(dir.path())
            .env(name, value)
            .arg("serve")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{name}={value}: {err}");
        assert!(
            err.starts_with("printworks: invalid "),
            "{name}={value}: {err}"
        );
        assert!(err.contains(name), "{name}={value}: {err}");
    }
}

#[test]
fn a_bad_database_url_is_named_but_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("mysql://root:{CANARY}@db/printworks"),
        format!("postgres://app:{CANARY}@db:notaport/printworks"),
    ] {
        let out = printworks(dir.path())
            .env("DATABASE_URL", &url)
            .arg("migrate")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(!err.contains(CANARY), "{err}");
    }
}

#[test]
fn an_unreachable_database_fails_start_up_clearly_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens there.
    let out = printworks(dir.path())
        .env(
            "DATABASE_URL",
            format!("postgres://app:{CANARY}@127.0.0.1:9/printworks"),
        )
        .env("PRINTWORKS_DB_CONNECT_TIMEOUT", "1s")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains(CANARY), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("printworks: cannot reach the database at app@127.0.0.1:9/printworks"),
        "{err}"
    );
}

#[test]
fn without_any_database_it_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = printworks(dir.path()).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("DATABASE_URL is not set") && err.contains("make db"),
        "{err}"
    );
}

/// `printworks serve` as an operator runs it: migrates, serves, logs JSON with request
/// ids and never the database password, and exits 0 on SIGTERM.
#[sqlx::test(migrations = false)]
async fn serve_migrates_serves_logs_json_and_stops_on_sigterm(
    _pool: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let dir = tempfile::tempdir().unwrap();
    // The test database trusts local connections, so a password is ignored by the
    // server: it is there to prove it never reaches a log line.
    let with_password = if connect.to_url_lossy().password().is_some() {
        connect.clone()
    } else {
        connect.clone().password(CANARY)
    };
    let server = Server::start(
        dir.path(),
        "account,relay",
        &[("DATABASE_URL", with_password.to_url_lossy().as_str())],
    );
    let address = server.http;

    let res = reqwest::get(format!("http://{address}/readyz"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "serve applied the migrations");
    let res = reqwest::get(format!("http://{address}/account/v1/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let res = reqwest::get(format!("http://{address}/org/v1/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "org was not asked for");

    server.terminate();
    let (status, logs) = server.wait().await;
    assert!(status.success(), "exit after SIGTERM: {status}");

    let all = logs.join("\n");
    assert!(
        !all.contains(CANARY),
        "the database password reached the logs"
    );
    for line in &logs {
        let _: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    assert!(all.contains("SIGTERM received"), "{all}");
    assert!(
        logs.iter()
            .any(|l| l.contains(&request_id) && l.contains("/account/v1/")),
        "access log carries the request id:\n{all}"
    );

    // The migrations are recorded in the database it was given.
    assert_every_migration_applied(connect).await;
}

/// Every migration the binary carries is applied in the database at `connect`.
async fn assert_every_migration_applied(connect: PgConnectOptions) {
    let pool = PgPoolOptions::new().connect_with(connect).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
}

/// `printworks keys rotate` publishes a new key that signs later, and says so.
#[sqlx::test(migrator = "MIGRATOR")]
async fn keys_rotate_publishes_a_new_key(_pool: PgPoolOptions, connect: PgConnectOptions) {
    let dir = tempfile::tempdir().unwrap();
    let url = connect.to_url_lossy().to_string();
    let run = |args: &[&str]| {
        printworks(dir.path())
            .env("DATABASE_URL", &url)
            .env("PRINTWORKS_LOG", "warn")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8(out.stdout).unwrap();
    assert!(first.starts_with("published key "), "{first}");
    let out = run(&["keys", "rotate"]);
    let second = String::from_utf8(out.stdout).unwrap();
    assert!(
        second.lines().any(|l| l.contains("stays published until")),
        "{second}"
    );

    let pool = PgPoolOptions::new().connect_with(connect).await.unwrap();
    let keys: Vec<(String, bool)> =
        sqlx::query_as("SELECT kid, published_until IS NULL FROM signing_keys ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].1, keys[1].1),
        (false, true),
        "the older key retires, the newer stays"
    );
    // The private half is sealed, not stored in the clear.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT private_key_sealed FROM signing_keys LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sealed[0], 2, "sealed-box format version (with the key id)");
}

/// `printworks backup create`, `list` and `restore` as an operator runs them, with the
/// backup key from the environment; a backup key that is the master key is refused.
#[sqlx::test(migrator = "MIGRATOR")]
async fn backup_create_list_and_restore(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let url = pool.connect_options().to_url_lossy().to_string();
    let backup_key = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="; // 32 × 'B'
    let master_key = "TU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU0="; // 32 × 'M'
    // Backups kept apart from the job files.
    let store = tempfile::tempdir().unwrap();
    let store_url = url::Url::from_directory_path(store.path()).unwrap();
    // `printworks <args>` with `data_dir` and `env`: exit code, stdout, stderr.
    let cli = |data_dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = printworks(data_dir);
        cmd.env("PRINTWORKS_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // ... as the operator of this deployment, on the database at `url`.
    let run = |url: &str, args: &[&str]| {
        cli(
            dir.path(),
            &[
                ("DATABASE_URL", url),
                ("PRINTWORKS_MASTER_KEY", master_key),
                ("PRINTWORKS_BACKUP_KEY", backup_key),
                ("PRINTWORKS_BACKUP_URL", store_url.as_str()),
            ],
            args,
        )
    };
    let (code, out, err) = run(&url, &["backup", "create"]);
    assert_eq!(code, Some(0), "{err}");
    let id = out
        .strip_prefix("backup ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let (code, out, _) = run(&url, &["backup", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.lines().any(|l| l.starts_with(&id)), "{out}");
    assert!(store.path().join(format!("backups/{id}/manifest")).exists());
    assert!(
        !dir.path().join("blobs/backups").exists(),
        "not beside the job files"
    );
    // Listing elsewhere needs only the store and the backup key: no database, and no
    // master key is made where there was none.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = cli(
        elsewhere.path(),
        &[
            ("PRINTWORKS_BACKUP_KEY", backup_key),
            ("PRINTWORKS_BACKUP_URL", store_url.as_str()),
        ],
        &["backup", "list"],
    );
    assert!(
        code == Some(0) && out.lines().any(|l| l.starts_with(&id)),
        "{out}{err}"
    );
    assert!(!elsewhere.path().join("keys/master.key").exists());
    // Without the backup key, nothing to list with (and no key is made up).
    let (code, _, err) = cli(
        elsewhere.path(),
        &[("PRINTWORKS_BACKUP_URL", store_url.as_str())],
        &["backup", "list"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("no backup key"), "{err}");
    assert!(!elsewhere.path().join("keys/backup.key").exists());

    // Restore into a new database.
    let (target, name) = crate::backup::scratch_database(&pool, "cli").await;
    let target_url = target.connect_options().to_url_lossy().to_string();
    let (code, out, err) = run(&target_url, &["backup", "restore", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("restored"), "{out}");
    // A second restore into the same database is refused.
    let (code, _, err) = run(&target_url, &["backup", "restore", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not empty"), "{err}");
    crate::backup::drop_database(&pool, target, &name).await;

    // The master key as the backup key.
    let (code, _, err) = cli(
        dir.path(),
        &[
            ("DATABASE_URL", &url),
            ("PRINTWORKS_MASTER_KEY", master_key),
            ("PRINTWORKS_BACKUP_KEY", master_key),
        ],
        &["backup", "list"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("must not be the master key"), "{err}");
}

/// `DATABASE_URL_FILE`: the URL from a file (a mounted Secret), as in Kubernetes.
#[sqlx::test(migrations = false)]
async fn the_database_url_can_come_from_a_file(_pool: PgPoolOptions, connect: PgConnectOptions) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("uri");
    std::fs::write(&file, format!("{}\n", connect.to_url_lossy())).unwrap();
    let out = printworks(dir.path())
        .env("DATABASE_URL_FILE", &file)
        .env("PRINTWORKS_LOG", "warn")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_every_migration_applied(connect).await;
}
