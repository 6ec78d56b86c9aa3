//! A real OctoPrint (from PyPI, in `.tools/octoprint-venv`, installed by `make
//! test-deps`) with its bundled virtual printer, as `../shared/design/NOTES-octoprint.md`
//! found it runs offline: one per test binary, started on first use and shared by the
//! bridge tests one at a time ([`octoprint`] hands out a lock), each of which finds it
//! reset: running, its printer connected, the default profile, no `printworks/` files.
//!
//! Its admin user is made with OctoPrint's own `user add`, and the API key through
//! OctoPrint's own API (login, then the application keys plugin). It runs under
//! `tests/octoprint/serve.sh`, which stops it when the test binary has ended.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

const PASSWORD: &str = "octoprint-test-admin-password";

/// The shared OctoPrint.
pub struct OctoPrint {
    basedir: PathBuf,
    port: u16,
    child: Option<Child>,
    pub url: String,
    pub key: String,
}

static SHARED: OnceCell<Mutex<OctoPrint>> = OnceCell::const_new();

/// The test binary's OctoPrint, for this test alone until the guard is dropped; reset.
pub async fn octoprint() -> MutexGuard<'static, OctoPrint> {
    let shared = SHARED
        .get_or_init(|| async { Mutex::new(OctoPrint::create().await) })
        .await;
    let mut guard = shared.lock().await;
    guard.reset().await;
    guard
}

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/octoprint-venv")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl OctoPrint {
    async fn create() -> Self {
        let basedir = std::env::temp_dir().join(format!(
            "printworks-octoprint-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&basedir).unwrap();
        let port = free_port();
        // Before the first start: no wizard, nothing that reaches the internet or the
        // LAN, a virtual printer without injected errors that connects by itself, no
        // analysis of every upload.
        let config = format!(
            r#"server:
  host: 127.0.0.1
  port: {port}
  firstRun: false
  onlineCheck: {{enabled: false}}
  pluginBlacklist: {{enabled: false}}
  pythonEolCheck: {{enabled: false}}
gcodeAnalysis: {{runAt: never}}
serial: {{autoconnect: true, port: VIRTUAL, baudrate: 115200}}
plugins:
  _disabled: [announcements, discovery, errortracking, health_check, pluginmanager, softwareupdate, tracking]
  virtual_printer:
    enabled: true
    simulated_errors: []
"#
        );
        std::fs::write(basedir.join("config.yaml"), config).unwrap();
        let made = Command::new(venv().join("bin/octoprint"))
            .arg("--basedir")
            .arg(&basedir)
            .args(["user", "add", "admin", "--password", PASSWORD, "--admin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("OctoPrint in .tools/octoprint-venv: run `make test-deps`");
        assert!(made.success(), "octoprint user add: {made}");
        let mut octoprint = Self {
            basedir,
            port,
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            key: String::new(),
        };
        octoprint.start().await;
        octoprint.key = octoprint.make_key().await;
        octoprint.wait_operational().await;
        octoprint
    }

    /// Starts it (on the same basedir and port: users, keys and files stay).
    pub async fn start(&mut self) {
        use std::os::unix::process::CommandExt as _;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/octoprint/serve.sh");
        let child = Command::new(script)
            .arg(&self.basedir)
            .arg(self.port.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start OctoPrint");
        self.child = Some(child);
        // Up when anonymous requests are refused (there is no anonymous health route).
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(res) = http.get(format!("{}/api/version", self.url)).send().await
                && res.status() == StatusCode::FORBIDDEN
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "OctoPrint did not start; see {}",
                self.basedir.join("logs/octoprint.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it (SIGTERM to its process group), as a crash or an unplugged computer
    /// would for the bridge: the print in it is lost.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// The API key, through OctoPrint's own API as its admin: the login page's CSRF
    /// cookie, the login, then the application keys plugin.
    async fn make_key(&self) -> String {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap();
        let res = http
            .get(format!("{}/login/", self.url))
            .send()
            .await
            .unwrap();
        let csrf = res
            .cookies()
            .find(|c| c.name().starts_with("csrf_token"))
            .expect("OctoPrint's CSRF cookie")
            .value()
            .to_owned();
        let login = http
            .post(format!("{}/api/login", self.url))
            .header("X-CSRF-Token", &csrf)
            .json(&json!({"user": "admin", "pass": PASSWORD, "remember": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::OK);
        let key: Value = http
            .post(format!("{}/api/plugin/appkeys", self.url))
            .header("X-CSRF-Token", &csrf)
            .json(&json!({"command": "generate", "app": "Printworks"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        key["api_key"].as_str().expect("an API key").to_owned()
    }

    /// A call to its API with the key.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .header("X-Api-Key", &self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let body = res.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `/api/job`'s `state`.
    pub async fn state(&self) -> String {
        let (_, job) = self.api(Method::GET, "/api/job", None).await;
        job["state"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits (at most a minute) for `/api/job`'s state to be `want`.
    pub async fn wait_state(&self, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.state().await;
            if state == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "OctoPrint stayed {state}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_operational(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, c) = self.api(Method::GET, "/api/connection", None).await;
            match c["current"]["state"].as_str().unwrap_or_default() {
                "Operational" => return,
                "Offline" | "Offline after error" | "Error" | "Closed" => {
                    let (status, _) = self
                        .api(
                            Method::POST,
                            "/api/connection",
                            Some(json!({"command": "connect", "port": "VIRTUAL", "baudrate": 115_200})),
                        )
                        .await;
                    assert_eq!(status, StatusCode::NO_CONTENT);
                }
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "OctoPrint's virtual printer did not connect: {c}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// As the next test should find it.
    async fn reset(&mut self) {
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        if !alive {
            self.stop().await;
            self.start().await;
        }
        // A print left by a test that failed: cancelled.
        if !matches!(
            self.state().await.as_str(),
            "Operational" | "Offline" | "Offline after error" | "Error" | "Closed" | ""
        ) {
            let _ = self
                .api(Method::POST, "/api/job", Some(json!({"command": "cancel"})))
                .await;
            self.wait_state("Operational").await;
        }
        self.wait_operational().await;
        let (status, _) = self
            .api(
                Method::PATCH,
                "/api/printerprofiles/_default",
                Some(json!({"profile": {"model": "Generic RepRap Printer", "heatedBed": true}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let _ = self
            .api(Method::DELETE, "/api/files/local/printworks", None)
            .await;
    }

    /// The files in its `printworks/` folder.
    pub async fn printworks_files(&self) -> Vec<String> {
        let (status, folder) = self
            .api(Method::GET, "/api/files/local/printworks", None)
            .await;
        if status == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        folder["children"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|f| f["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Its API key in a file only its owner may read, in `dir`.
    pub fn key_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("octoprint.key");
        std::fs::write(&path, format!("{}\n", self.key)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Its log, where OctoPrint records each job it starts, finishes or cancels.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.basedir.join("logs/octoprint.log")).unwrap_or_default()
    }
}
