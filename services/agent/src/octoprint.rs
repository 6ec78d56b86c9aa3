//! The bridge to OctoPrint: the agent, beside an OctoPrint server, makes the printer
//! OctoPrint drives a Printworks printer. This is OctoPrint's REST API as the bridge
//! uses it ([`OctoPrint`]): the printer's identity and limits at pairing and before
//! every job, upload-and-print into a `printworks/` folder, the job's progress and end,
//! cancel, pause and resume, and the printer's live status. The job's way through
//! OctoPrint is followed by `run` (`run::bridge`).
//!
//! The API key is read from a file that only its owner may read (never from the
//! command line, where `ps` shows it to everyone), and never printed: [`OctoPrint`]'s
//! `Debug` shows the address only.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use printworks_proto::{Heater, PrinterState};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::PrinterInfo;
use crate::state::{ensure_private_dir, write_private};

/// The folder of OctoPrint's local storage the bridge uploads into.
pub const FOLDER: &str = "printworks";
/// How long one request (other than an upload) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest key file read.
const MAX_KEY_FILE: u64 = 4096;
/// The longest answer read from OctoPrint (its largest, `/api/system/info`, is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// An OctoPrint server and the API key to it (a header value marked sensitive, so that
/// no log of the HTTP stack shows it).
#[derive(Clone)]
pub struct OctoPrint {
    base: String,
    key: reqwest::header::HeaderValue,
    http: reqwest::Client,
}

impl std::fmt::Debug for OctoPrint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OctoPrint")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// OctoPrint could not be asked: it is down, or the network to it is.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OctoPrint is not reachable: {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `e` says OctoPrint could not be reached (as opposed to an answer it gave).
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>().is_some()
}

/// The API key in `path`: refused when the file may be read by anyone but its owner.
/// The file is opened once, and its permissions read from what was opened.
pub fn read_key_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("the OctoPrint key file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("the OctoPrint key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "the OctoPrint key file {} may be read by others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    anyhow::ensure!(
        meta.len() <= MAX_KEY_FILE,
        "the OctoPrint key file {} is too long for an API key",
        path.display()
    );
    let mut key = String::new();
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut key)
        .with_context(|| format!("the OctoPrint key file {}", path.display()))?;
    let key = key.trim();
    anyhow::ensure!(
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()),
        "the OctoPrint key file {} does not hold an API key (one line of printable characters)",
        path.display()
    );
    Ok(key.to_owned())
}

/// `GET /api/connection`'s `current`.
#[derive(Debug, Deserialize)]
struct Connection {
    current: CurrentConnection,
}

#[derive(Debug, Deserialize)]
struct CurrentConnection {
    state: String,
    #[serde(rename = "printerProfile")]
    printer_profile: Option<String>,
}

/// `GET /api/printerprofiles/{id}`, what the bridge reads of it.
#[derive(Debug, Deserialize)]
struct Profile {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    model: String,
    #[serde(rename = "heatedBed", default)]
    heated_bed: bool,
    #[serde(rename = "heatedChamber", default)]
    heated_chamber: bool,
}

impl Profile {
    /// The model it names (else its name), as pairing takes it.
    fn model_name(&self) -> String {
        match (field(&self.model), field(&self.name)) {
            (m, _) if !m.is_empty() => m,
            (_, n) if !n.is_empty() => n,
            _ => "OctoPrint printer".into(),
        }
    }
}

/// `GET /api/job`.
#[derive(Debug, Deserialize)]
pub struct Job {
    pub state: String,
    #[serde(default)]
    pub job: JobFile,
    #[serde(default)]
    pub progress: JobProgress,
    /// What went wrong, after a firmware error.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobFile {
    #[serde(default)]
    pub file: FileRef,
}

#[derive(Debug, Default, Deserialize)]
pub struct FileRef {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobProgress {
    /// Percent, by file position.
    pub completion: Option<f64>,
}

/// `GET /api/printer?exclude=sd,state`.
#[derive(Debug, Deserialize)]
struct PrinterNow {
    #[serde(default)]
    temperature: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Temperature {
    actual: Option<f64>,
    target: Option<f64>,
}

/// How OctoPrint's state reads as a Printworks printer state.
pub fn printer_state(octoprint: &str) -> PrinterState {
    match octoprint {
        "Operational" => PrinterState::Idle,
        "Paused" | "Pausing" => PrinterState::Paused,
        "Error" | "Offline after error" => PrinterState::Error,
        s if s.starts_with("Printing")
            || s.starts_with("Sending file")
            || s.starts_with("Transferring file")
            || matches!(s, "Starting" | "Finishing" | "Cancelling" | "Resuming") =>
        {
            PrinterState::Printing
        }
        // Offline, Opening serial connection, Detecting…, Connecting, Closed, Unknown.
        _ => PrinterState::Offline,
    }
}

/// The live status as OctoPrint sees the printer (the job and progress come from the
/// agent, which knows which Printworks job it is).
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub state: PrinterState,
    pub heaters: Vec<Heater>,
    pub message: Option<String>,
}

/// At most `n` characters of `s`, control characters made spaces.
pub fn clip(s: &str, n: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(n)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Printable ASCII only, at most 64 characters (what pairing takes for serial and model).
fn field(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect::<String>()
        .trim()
        .to_owned()
}

impl OctoPrint {
    /// The server at `url` (`http://127.0.0.1:5000`, say), with the key in `key_file`.
    pub fn new(url: &str, key_file: &Path) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).context("--octoprint is not an address")?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some(),
            "--octoprint must be an http or https address"
        );
        anyhow::ensure!(
            parsed.username().is_empty() && parsed.password().is_none(),
            "--octoprint must not carry a user or password; the API key goes in --octoprint-key-file"
        );
        let local = match parsed.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        if parsed.scheme() == "http" && !local {
            tracing::warn!(
                "OctoPrint is reached over plain HTTP on the network: its API key travels in clear; use https, or run the agent on OctoPrint's computer"
            );
        }
        let mut key = reqwest::header::HeaderValue::from_str(&read_key_file(key_file)?)
            .context("the OctoPrint API key")?;
        key.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            key,
            http,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-Api-Key", self.key.clone())
            .timeout(REQUEST_TIMEOUT)
    }

    /// Sends `req`: an error of its own kind when OctoPrint cannot be reached, and
    /// OctoPrint's words when it refuses.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = req
            .send()
            .await
            .map_err(|e| Unreachable(e.without_url().to_string()))?;
        Self::check(res).await
    }

    /// `res` when it is a success; OctoPrint's words when it is not.
    async fn check(res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let text =
            String::from_utf8_lossy(&read_capped(res).await.unwrap_or_default()).into_owned();
        // OctoPrint answers errors as {"error": "…"}, or as an HTML page.
        let said = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default();
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            anyhow::bail!("OctoPrint refused the API key ({status}); check --octoprint-key-file");
        }
        match said.as_str() {
            "" => anyhow::bail!("OctoPrint answered {status}"),
            said => anyhow::bail!("OctoPrint answered {status}: {}", clip(said, 160)),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let res = self.send(self.request(reqwest::Method::GET, path)).await?;
        json(res).await
    }

    async fn connection(&self) -> anyhow::Result<CurrentConnection> {
        Ok(self.get::<Connection>("/api/connection").await?.current)
    }

    /// The profile of the printer OctoPrint is connected to (or its default one).
    async fn profile(&self) -> anyhow::Result<Profile> {
        let id = self
            .connection()
            .await?
            .printer_profile
            .unwrap_or_else(|| "_default".into());
        anyhow::ensure!(
            !id.is_empty()
                && id.len() <= 100
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')),
            "OctoPrint names a printer profile the agent does not take ({})",
            clip(&id, 40)
        );
        self.get(&format!("/api/printerprofiles/{id}")).await
    }

    /// The firmware's name, as the printer told OctoPrint when it connected.
    async fn firmware(&self) -> anyhow::Result<Option<String>> {
        let info: serde_json::Value = self.get("/api/system/info").await?;
        Ok(info
            .pointer("/systeminfo/printer.firmware")
            .and_then(|v| v.as_str())
            .map(|s| clip(s, 100))
            .filter(|s| !s.is_empty()))
    }

    /// What the printer says about itself when it pairs: its model from the printer
    /// profile, its firmware from the connection (the printer must be connected), and a
    /// serial made once from the profile and a random instance value and kept in
    /// `state_dir` (`octoprint-serial`), so that pairing again gives the same.
    pub async fn identity(&self, state_dir: &Path) -> anyhow::Result<PrinterInfo> {
        let connection = self.connection().await?;
        anyhow::ensure!(
            printer_state(&connection.state) != PrinterState::Offline,
            "OctoPrint's printer is not connected ({}); connect it in OctoPrint, then pair",
            connection.state
        );
        let profile = self.profile().await?;
        let model = profile.model_name();
        // A key without OctoPrint's SYSTEM permission may not read it: "unknown".
        let firmware_version = match self.firmware().await {
            Ok(Some(f)) => field(&f),
            Ok(None) => "unknown".into(),
            Err(e) if is_unreachable(&e) => return Err(e),
            Err(_) => "unknown".into(),
        };
        ensure_private_dir(state_dir)?;
        let serial_file = state_dir.join("octoprint-serial");
        let serial = match std::fs::read_to_string(&serial_file) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let mut seed = [0u8; 16];
                aws_lc_rs::rand::fill(&mut seed[..])
                    .map_err(|_| anyhow::anyhow!("no randomness"))?;
                let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                digest.update(&seed);
                digest.update(profile.id.as_bytes());
                let hex = printworks_proto::hex(digest.finish().as_ref());
                let serial = format!("OCTO-{}", hex[..16].to_uppercase());
                write_private(&serial_file, serial.as_bytes())?;
                serial
            }
        };
        Ok(PrinterInfo {
            serial,
            model,
            firmware_version,
        })
    }

    /// The limits a file is checked against before it is uploaded: the model's (as the
    /// relay checks it), and no bed or chamber heating where the profile has none.
    pub async fn limits(&self) -> anyhow::Result<printworks_gcode::Profile> {
        let profile = self.profile().await?;
        let mut limits = printworks_gcode::profile_for(Some(&profile.model_name()));
        if !profile.heated_bed {
            limits.bed_max = 0.0;
        }
        if !profile.heated_chamber {
            limits.chamber_max = 0.0;
        }
        Ok(limits)
    }

    /// `GET /api/job`.
    pub async fn job(&self) -> anyhow::Result<Job> {
        self.get("/api/job").await
    }

    /// Uploads `file` as `printworks/<name>` and starts printing it; its path in
    /// OctoPrint. Refused when OctoPrint did not start it (it prints something else).
    pub async fn upload_and_print(&self, file: &Path, name: &str) -> anyhow::Result<String> {
        let len = tokio::fs::metadata(file).await?.len();
        let body = reqwest::Body::from(tokio::fs::File::open(file).await?);
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(name.to_owned())
            .mime_str("application/octet-stream")?;
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("path", FOLDER)
            .text("select", "true")
            .text("print", "true");
        let res = self
            .send(
                self.request(reqwest::Method::POST, "/api/files/local")
                    .timeout(UPLOAD_TIMEOUT)
                    .multipart(form),
            )
            .await?;
        let answer: serde_json::Value = json(res).await.context("OctoPrint's upload answer")?;
        let path = answer
            .pointer("/files/local/path")
            .and_then(|p| p.as_str())
            .and_then(|p| ours(p).ok())
            .unwrap_or_default()
            .to_owned();
        if answer.get("effectivePrint").and_then(|v| v.as_bool()) != Some(true) {
            if !path.is_empty() {
                let _ = self.delete(&path).await;
            }
            anyhow::bail!("OctoPrint did not start the print (is it printing something else?)");
        }
        anyhow::ensure!(
            !path.is_empty(),
            "OctoPrint did not say where it stored the file, or named a place outside printworks/"
        );
        Ok(path)
    }

    async fn job_command(&self, body: serde_json::Value) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::POST, "/api/job").json(&body))
            .await?;
        Ok(())
    }

    pub async fn cancel(&self) -> anyhow::Result<()> {
        self.job_command(json!({"command": "cancel"})).await
    }

    pub async fn pause(&self) -> anyhow::Result<()> {
        self.job_command(json!({"command": "pause", "action": "pause"}))
            .await
    }

    pub async fn resume(&self) -> anyhow::Result<()> {
        self.job_command(json!({"command": "pause", "action": "resume"}))
            .await
    }

    /// The API path of a file of the bridge's folder (refused for any other).
    fn file_path(path: &str) -> anyhow::Result<String> {
        Ok(format!("/api/files/local/{}", ours(path)?))
    }

    /// Whether the last print of the file at `path` succeeded (none: never printed,
    /// or the file is gone).
    pub async fn last_print_succeeded(&self, path: &str) -> anyhow::Result<Option<bool>> {
        let res = self
            .request(reqwest::Method::GET, &Self::file_path(path)?)
            .send()
            .await
            .map_err(|e| Unreachable(e.without_url().to_string()))?;
        if res.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let res = Self::check(res).await?;
        let file: serde_json::Value = json(res).await?;
        Ok(file
            .pointer("/prints/last/success")
            .and_then(serde_json::Value::as_bool))
    }

    /// Removes the file at `path` from OctoPrint's storage.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::DELETE, &Self::file_path(path)?))
            .await?;
        Ok(())
    }

    /// The printer's state, heaters and (in an error) message, as OctoPrint sees it;
    /// `offline` when OctoPrint cannot be reached.
    pub async fn seen(&self) -> Seen {
        let connection = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                return Seen {
                    state: PrinterState::Offline,
                    heaters: Vec::new(),
                    message: Some(clip(&format!("{e:#}"), 200)),
                };
            }
        };
        let state = printer_state(&connection.state);
        let mut seen = Seen {
            state,
            heaters: Vec::new(),
            message: None,
        };
        match state {
            PrinterState::Error => {
                seen.message = self
                    .job()
                    .await
                    .ok()
                    .and_then(|j| j.error)
                    .map(|e| clip(&e, 200))
                    .or_else(|| Some(connection.state.clone()));
            }
            PrinterState::Offline => {
                seen.message = Some(format!(
                    "OctoPrint's printer: {}",
                    clip(&connection.state, 100)
                ));
            }
            _ => {
                if let Ok(now) = self
                    .get::<PrinterNow>("/api/printer?exclude=sd,state")
                    .await
                {
                    seen.heaters = heaters(&now.temperature);
                }
            }
        }
        seen
    }

    /// The firmware's name for status reports (none when it cannot be read now).
    pub async fn firmware_version(&self) -> Option<String> {
        self.firmware().await.ok().flatten()
    }
}

/// `path` if it is a file of the bridge's folder, named as the bridge names files
/// (letters, digits, `-`, `_`, one `.`): nothing OctoPrint answers can send a request
/// elsewhere.
pub fn ours(path: &str) -> anyhow::Result<&str> {
    let ok = path
        .strip_prefix(FOLDER)
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(|name| {
            (1..=100).contains(&name.len())
                && !name.starts_with('.')
                && name.bytes().filter(|b| *b == b'.').count() <= 1
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    anyhow::ensure!(
        ok,
        "not a file of OctoPrint's {FOLDER}/ folder: {}",
        clip(path, 80)
    );
    Ok(path)
}

/// At most [`MAX_ANSWER`] bytes of `res`'s body (OctoPrint is not trusted to be small).
async fn read_capped(mut res: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| Unreachable(e.without_url().to_string()))?
    {
        anyhow::ensure!(
            body.len() + chunk.len() <= MAX_ANSWER,
            "OctoPrint's answer is longer than {MAX_ANSWER} bytes"
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `res`'s body, at most [`MAX_ANSWER`] bytes, as JSON.
async fn json<T: serde::de::DeserializeOwned>(res: reqwest::Response) -> anyhow::Result<T> {
    let body = read_capped(res).await?;
    serde_json::from_slice(&body).context("OctoPrint's answer is not what the bridge expects")
}

/// OctoPrint's temperatures (`tool0`, `bed`, `chamber`, …) as heaters, the ones it
/// does not measure left out, rounded to a tenth of a degree.
fn heaters(temperature: &BTreeMap<String, serde_json::Value>) -> Vec<Heater> {
    let round = |t: f64| ((t * 10.0).round() / 10.0) as f32;
    temperature
        .iter()
        .filter(|(name, _)| {
            (1..=32).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .filter_map(|(name, v)| {
            let t: Temperature = serde_json::from_value(v.clone()).ok()?;
            let actual = round(t.actual?);
            let in_range = |t: f32| printworks_proto::status::TEMPERATURE_RANGE.contains(&t);
            in_range(actual).then(|| Heater {
                name: name.clone(),
                actual,
                target: t.target.map(round).filter(|t| *t > 0.0 && in_range(*t)),
            })
        })
        .take(printworks_proto::status::MAX_HEATERS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_the_bridges_folder_are_touched() {
        assert!(ours("printworks/bracketv2-0123abcd.gcode").is_ok());
        for bad in [
            "printworks/../api/connection",
            "printworks/..",
            "printworks/",
            "printworks/a/b.gcode",
            "other/part.gcode",
            "printworks/a b.gcode",
            "printworks/a%2F..gcode",
            "printworks/.hidden",
            "/printworks/a.gcode",
        ] {
            assert!(ours(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn octoprint_states_read_as_printer_states() {
        for (octoprint, ours) in [
            ("Operational", PrinterState::Idle),
            ("Printing", PrinterState::Printing),
            ("Printing from SD", PrinterState::Printing),
            ("Starting", PrinterState::Printing),
            ("Finishing", PrinterState::Printing),
            ("Cancelling", PrinterState::Printing),
            ("Pausing", PrinterState::Paused),
            ("Paused", PrinterState::Paused),
            ("Error", PrinterState::Error),
            ("Offline after error", PrinterState::Error),
            ("Offline", PrinterState::Offline),
            ("Detecting serial connection", PrinterState::Offline),
        ] {
            assert_eq!(printer_state(octoprint), ours, "{octoprint}");
        }
    }

    #[test]
    fn temperatures_become_heaters() {
        let t: BTreeMap<String, serde_json::Value> = serde_json::from_value(json!({
            "tool0": {"actual": 59.081, "target": 205.0, "offset": 0},
            "bed": {"actual": 54.69, "target": 0.0, "offset": 0},
            "chamber": {"actual": null, "target": null},
            "bad name": {"actual": 20.0, "target": null},
            "tool1": {"actual": 9000.0, "target": null},
        }))
        .unwrap();
        let h = heaters(&t);
        assert_eq!(
            h,
            vec![
                Heater {
                    name: "bed".into(),
                    actual: 54.7,
                    target: None
                },
                Heater {
                    name: "tool0".into(),
                    actual: 59.1,
                    target: Some(205.0)
                },
            ]
        );
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "ABC_def-123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), "ABC_def-123");
        std::fs::write(&path, "two words\n").unwrap();
        assert!(read_key_file(&path).is_err());
        let o = OctoPrint::new("http://127.0.0.1:5000/", &{
            std::fs::write(&path, "SECRETKEY").unwrap();
            path.clone()
        })
        .unwrap();
        assert!(!format!("{o:?}").contains("SECRETKEY"));
        let e = OctoPrint::new("http://admin:hunter2@127.0.0.1:5000/", &path)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
