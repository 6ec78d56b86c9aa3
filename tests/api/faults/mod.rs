//! Faults, with real processes and a real PostgreSQL (`make test-faults` runs these and
//! `relay::agent::a_download_cut_in_the_middle_resumes_with_range`; `make test` runs
//! them with everything else):
//!
//! - a relay replica killed (`SIGKILL`) while a job is on its way to its printer: the
//!   printer reconnects to the other replica and prints the job exactly once;
//! - `SIGTERM`: requests in flight finish, printers are told to reconnect before their
//!   stream closes, and what the stopping replica had sent is delivered by another;
//! - PostgreSQL restarted under load: 503 while it is away, `/readyz` follows, all
//!   recovers without restarting Printworks, and no accepted job is lost;
//! - the disk of the local blob store full during an upload: 507, nothing half-written.
//!
//! The replicas are `printworks serve` processes (the binary under test) sharing one
//! database, data directory (master key, printer CA, local blobs) and printer URL; the
//! printer URL points at a [`crate::proxy::Proxy`], as the layer-4 load balancer of a
//! deployment.

mod database;
mod disk;
mod replicas;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::binary::printworks;

/// A `printworks serve` process.
pub struct Server {
    /// `None` once it has been waited for.
    child: Option<Child>,
    pub http: SocketAddr,
    pub printer: Option<SocketAddr>,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Starts `printworks serve --services <services>` on loopback ports with `data_dir`
    /// and the environment `env` (DATABASE_URL, ...), and waits until it serves.
    /// Its public URL is its own address unless `env` says otherwise.
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
            logs,
        };
        loop {
            let line = server
                .logs
                .recv_timeout(Duration::from_secs(60))
                .expect("printworks serve logs that it serves");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
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
        let ok = std::process::Command::new("kill")
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

    /// Waits for the process to exit; its exit status and what it logged.
    pub async fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        (status, self.logs.try_iter().collect())
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
