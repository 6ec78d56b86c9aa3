//! The printer endpoint (mutual TLS, the relay): its routes, the events of its stream,
//! and the bodies printers send and receive there.
//!
//! - `GET /printer/v1/events`: server-sent events, held open ([`PrinterEvent`]):
//!   `settings` ([`SettingsEvent`]) first, a `job` ([`JobEvent`], with `id:` the job's
//!   id) for every job of the printer to print, an `abort` ([`AbortEvent`]) for each
//!   job aborted after it reached the printer, a `pause` or `resume` ([`HoldEvent`]) for
//!   a job someone paused or resumed, and `heartbeat` (no data) when idle.
//! - `GET /printer/v1/jobs/{job}/content`: the job's file (no JSON).
//! - `POST /printer/v1/jobs/{job}/status` [`JobStatusReport`] → [`JobStatusAnswer`].
//! - `POST /printer/v1/settings/applied` [`SettingsAppliedRequest`] → 204.
//! - `GET /printer/v1/identity` → [`PrinterIdentity`].
//! - `POST /printer/v1/certificate` [`TlsRenewalRequest`] →
//!   [`RenewedCertificate`](crate::RenewedCertificate).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::job::{JobState, ReportedState, job_message};

/// Where the printers' routes live, on the printer endpoint.
pub const PRINTER_PREFIX: &str = "/printer/v1";

/// The printer endpoint's routes: paths to call, and templates (axum's `{param}`
/// syntax) to route.
pub mod path {
    use uuid::Uuid;

    pub const EVENTS: &str = "/printer/v1/events";
    pub const IDENTITY: &str = "/printer/v1/identity";
    pub const CERTIFICATE: &str = "/printer/v1/certificate";
    pub const SETTINGS_APPLIED: &str = "/printer/v1/settings/applied";
    /// Route template of [`job_content`].
    pub const JOB_CONTENT_ROUTE: &str = "/printer/v1/jobs/{job}/content";
    /// Route template of [`job_status`].
    pub const JOB_STATUS_ROUTE: &str = "/printer/v1/jobs/{job}/status";

    /// `GET`: the job's file.
    pub fn job_content(job: Uuid) -> String {
        format!("/printer/v1/jobs/{job}/content")
    }

    /// `POST` a [`JobStatusReport`](super::JobStatusReport).
    pub fn job_status(job: Uuid) -> String {
        format!("/printer/v1/jobs/{job}/status")
    }
}

/// The names of the event stream's events (its `event:` lines).
pub mod event {
    pub const SETTINGS: &str = "settings";
    pub const JOB: &str = "job";
    pub const ABORT: &str = "abort";
    pub const PAUSE: &str = "pause";
    pub const RESUME: &str = "resume";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const RECONNECT: &str = "reconnect";
}

/// `settings`: the printer's security settings. Sent first on every connection and
/// again whenever an admin changes them; the printer applies them before it prints,
/// then confirms with [`SettingsAppliedRequest`]. With no settings ever set, the
/// [`Default`]: firewall off, no PIN, version 0.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsEvent {
    pub firewall_enabled: bool,
    /// The Argon2id hash (PHC string) of the six-digit PIN; `null` when there is none.
    pub pin_hash: Option<String>,
    /// 0: never set.
    pub version: i64,
}

/// The PIN's hash is not shown: six digits are quickly found from it.
impl fmt::Debug for SettingsEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettingsEvent")
            .field("firewall_enabled", &self.firewall_enabled)
            .field("pin_hash", &self.pin_hash.as_ref().map(|_| "…"))
            .field("version", &self.version)
            .finish()
    }
}

/// `job`: a job for the printer to print, sent once per connection while it is
/// `dispatched`, `downloading` or `printing`, in queue order. The printer keeps jobs by
/// id, downloads the file, and prints it only if its size and SHA-256 are these and
/// [`signature`](Self::signature) verifies over [`signed_message`](Self::signed_message)
/// with the key it pinned when it paired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// `text/x-gcode` or `application/x-ufp`.
    pub content_type: String,
    pub id: Uuid,
    /// The id of the key that signed it (`job-` and 16 hex digits): the printer's
    /// `job_signing_key_id`.
    pub key_id: String,
    pub name: String,
    /// The file's SHA-256, lowercase hex.
    pub sha256: String,
    /// Ed25519 over [`signed_message`](Self::signed_message), base64url without padding.
    pub signature: String,
    /// The file's length in bytes.
    pub size: u64,
    /// The job's state when it was sent: `dispatched`, `downloading` or `printing`.
    pub state: JobState,
}

impl JobEvent {
    /// What [`signature`](Self::signature) covers, for the printer `printer_id`.
    pub fn signed_message(&self, printer_id: Uuid) -> Vec<u8> {
        job_message(printer_id, self.id, self.size, &self.sha256)
    }
}

/// `abort`: stop this job. Sent once per connection for each job aborted after it
/// reached the printer, until the printer reports on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortEvent {
    pub id: Uuid,
}

/// `pause` or `resume`: hold this job's print (report `paused`), or go on with it
/// (report `printing`). Sent once per connection for a job someone paused or resumed
/// while it is with the printer; the newest wish counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldEvent {
    pub id: Uuid,
}

/// One event of `GET /printer/v1/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrinterEvent {
    Settings(SettingsEvent),
    Job(JobEvent),
    Abort(AbortEvent),
    Pause(HoldEvent),
    Resume(HoldEvent),
    /// Sent after a while without another event; no data.
    Heartbeat,
    /// The replica holding the stream is stopping, and ends the stream after this: connect
    /// again at once (the load balancer sends the printer to another replica). No data.
    Reconnect,
}

impl PrinterEvent {
    /// Its `event:` line.
    pub fn name(&self) -> &'static str {
        match self {
            PrinterEvent::Settings(_) => event::SETTINGS,
            PrinterEvent::Job(_) => event::JOB,
            PrinterEvent::Abort(_) => event::ABORT,
            PrinterEvent::Pause(_) => event::PAUSE,
            PrinterEvent::Resume(_) => event::RESUME,
            PrinterEvent::Heartbeat => event::HEARTBEAT,
            PrinterEvent::Reconnect => event::RECONNECT,
        }
    }

    /// Its `id:` line: the job's id for a `job`, none for the others.
    pub fn id(&self) -> Option<String> {
        match self {
            PrinterEvent::Job(job) => Some(job.id.to_string()),
            _ => None,
        }
    }

    /// Its `data:` line: one line of JSON, none for a heartbeat or a reconnect.
    pub fn data(&self) -> serde_json::Result<Option<String>> {
        Ok(match self {
            PrinterEvent::Settings(s) => Some(serde_json::to_string(s)?),
            PrinterEvent::Job(j) => Some(serde_json::to_string(j)?),
            PrinterEvent::Abort(a) => Some(serde_json::to_string(a)?),
            PrinterEvent::Pause(h) | PrinterEvent::Resume(h) => Some(serde_json::to_string(h)?),
            PrinterEvent::Heartbeat | PrinterEvent::Reconnect => None,
        })
    }

    /// An event from its name and its data (the `data:` lines joined). `Ok(None)` for an
    /// event of another name, which a printer ignores; an error when the data of a known
    /// one does not parse.
    pub fn parse(name: &str, data: &str) -> serde_json::Result<Option<Self>> {
        Ok(Some(match name {
            event::SETTINGS => PrinterEvent::Settings(serde_json::from_str(data)?),
            event::JOB => PrinterEvent::Job(serde_json::from_str(data)?),
            event::ABORT => PrinterEvent::Abort(serde_json::from_str(data)?),
            event::PAUSE => PrinterEvent::Pause(serde_json::from_str(data)?),
            event::RESUME => PrinterEvent::Resume(serde_json::from_str(data)?),
            event::HEARTBEAT => PrinterEvent::Heartbeat,
            event::RECONNECT => PrinterEvent::Reconnect,
            _ => return Ok(None),
        }))
    }
}

/// `POST /printer/v1/jobs/{job}/status`: how one of the printer's jobs is going (OpenAPI
/// `JobStatusReport`). What the report does to the job: [`JobState::on_report`].
///
/// `S` is the state as it travels: a printer writes a [`ReportedState`]; the relay may
/// read a `String` (`JobStatusReport<String>`) to refuse an unknown one with its own
/// words, then [`ReportedState::parse`] it. `progress` and `message` are written as
/// `null` when absent, and read as absent when missing or `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatusReport<S = ReportedState> {
    /// Control characters are removed and the rest cut to 500 characters; blank counts
    /// as none. None keeps the earlier message.
    pub message: Option<String>,
    /// Percent, 0 to 100. None keeps the earlier value.
    pub progress: Option<f32>,
    pub state: S,
}

/// The answer to a [`JobStatusReport`]: the job's state now (OpenAPI `JobStatusAnswer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatusAnswer {
    pub id: Uuid,
    pub status: JobState,
}

/// `POST /printer/v1/settings/applied`: the printer applied the settings of `version`
/// (from its [`SettingsEvent`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsAppliedRequest {
    pub version: i64,
    /// The settings the printer could not apply (`firewall`, `pin`): a printer behind
    /// OctoPrint, say, has no firewall the agent could close. Empty: all applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
}

/// `GET /printer/v1/identity`: who the printer endpoint takes the caller for, from the
/// client certificate of the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrinterIdentity {
    pub printer_id: Uuid,
    pub organization_id: Uuid,
    /// Serial number (hex) of the certificate it presented.
    pub certificate_serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `POST /printer/v1/certificate`: a new certificate for a fresh key while the current
/// one is valid (OpenAPI `TlsRenewalRequest`). Answered with a
/// [`RenewedCertificate`](crate::RenewedCertificate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRenewalRequest {
    /// A PKCS#10 request (PEM) for the new key.
    pub csr_pem: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ids() -> (Uuid, Uuid) {
        (
            Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210),
        )
    }

    // Each shape is compared with the JSON the relay and the agent built by hand, as
    // they built it (`json!`): the same bytes.

    #[test]
    fn job_events_are_what_the_relay_sent() {
        let (printer, job) = ids();
        let event = JobEvent {
            content_type: "text/x-gcode".into(),
            id: job,
            key_id: "job-0123456789abcdef".into(),
            name: "benchy.gcode".into(),
            sha256: "ab01".into(),
            signature: "c2ln".into(),
            size: 42,
            state: JobState::Dispatched,
        };
        let by_hand = json!({
            "id": job,
            "name": "benchy.gcode",
            "content_type": "text/x-gcode",
            "size": 42u64,
            "sha256": "ab01",
            "state": "dispatched",
            "signature": "c2ln",
            "key_id": "job-0123456789abcdef",
        });
        let typed = PrinterEvent::Job(event.clone());
        assert_eq!(typed.data().unwrap().unwrap(), by_hand.to_string());
        assert_eq!(typed.name(), "job");
        assert_eq!(typed.id(), Some(job.to_string()));
        assert_eq!(
            PrinterEvent::parse("job", &by_hand.to_string()).unwrap(),
            Some(typed)
        );
        assert_eq!(
            event.signed_message(printer),
            job_message(printer, job, 42, "ab01")
        );
    }

    #[test]
    fn settings_abort_and_heartbeat_events_are_what_the_relay_sent() {
        let (_, job) = ids();
        let settings = SettingsEvent {
            firewall_enabled: true,
            pin_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            version: 3,
        };
        let by_hand = json!({
            "firewall_enabled": true,
            "pin_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "version": 3i64,
        });
        assert_eq!(
            PrinterEvent::Settings(settings.clone())
                .data()
                .unwrap()
                .unwrap(),
            by_hand.to_string()
        );
        assert!(!format!("{settings:?}").contains("argon2id"));
        // No settings ever: firewall off, no PIN (null, not missing), version 0.
        let none = json!({ "firewall_enabled": false, "pin_hash": null, "version": 0i64 });
        assert_eq!(
            serde_json::to_string(&SettingsEvent::default()).unwrap(),
            none.to_string()
        );
        assert_eq!(
            PrinterEvent::parse("settings", &none.to_string()).unwrap(),
            Some(PrinterEvent::Settings(SettingsEvent::default()))
        );

        let abort = PrinterEvent::Abort(AbortEvent { id: job });
        assert_eq!(
            abort.data().unwrap().unwrap(),
            json!({ "id": job }).to_string()
        );
        assert_eq!(abort.id(), None);
        assert_eq!(
            PrinterEvent::parse("abort", &json!({ "id": job }).to_string()).unwrap(),
            Some(abort)
        );

        assert_eq!(PrinterEvent::Heartbeat.data().unwrap(), None);
        assert_eq!(PrinterEvent::Heartbeat.name(), "heartbeat");
        assert_eq!(
            PrinterEvent::parse("heartbeat", "").unwrap(),
            Some(PrinterEvent::Heartbeat)
        );
        assert_eq!(PrinterEvent::Reconnect.data().unwrap(), None);
        assert_eq!(
            PrinterEvent::parse(PrinterEvent::Reconnect.name(), "").unwrap(),
            Some(PrinterEvent::Reconnect)
        );
        assert_eq!(PrinterEvent::Reconnect.name(), "reconnect");
        // Unknown events are ignored; a known one that does not parse is an error.
        assert_eq!(PrinterEvent::parse("message", "{}").unwrap(), None);
        assert!(PrinterEvent::parse("job", "{}").is_err());
        assert!(PrinterEvent::parse("abort", "not json").is_err());
    }

    #[test]
    fn status_reports_are_what_the_agent_sent() {
        let cases = [
            (ReportedState::Downloading, Some(0.0f32), None),
            (ReportedState::Printing, Some(12.5), None),
            (ReportedState::Aborted, None, Some("stopped")),
            (ReportedState::Failed, None, None),
        ];
        for (state, progress, message) in cases {
            let report = JobStatusReport {
                message: message.map(str::to_owned),
                progress,
                state,
            };
            let by_hand =
                json!({ "state": state.as_str(), "progress": progress, "message": message });
            assert_eq!(serde_json::to_string(&report).unwrap(), by_hand.to_string());
            // The relay reads the state as a string, and the rest as the agent wrote it.
            let read: JobStatusReport<String> = serde_json::from_str(&by_hand.to_string()).unwrap();
            assert_eq!(read.state, state.as_str());
            assert_eq!(ReportedState::parse(&read.state), Some(state));
            assert_eq!(
                (read.progress, read.message.as_deref()),
                (progress, message)
            );
        }
        // Missing progress and message read as none.
        let bare: JobStatusReport = serde_json::from_str(r#"{"state":"completed"}"#).unwrap();
        assert_eq!(
            bare,
            JobStatusReport {
                message: None,
                progress: None,
                state: ReportedState::Completed
            }
        );
        // A state a printer may not report does not read as a ReportedState.
        assert!(serde_json::from_str::<JobStatusReport>(r#"{"state":"queued"}"#).is_err());
    }

    #[test]
    fn answers_and_requests_are_the_documented_shapes() {
        let (printer, job) = ids();
        assert_eq!(
            serde_json::to_string(&JobStatusAnswer {
                id: job,
                status: JobState::Aborted
            })
            .unwrap(),
            format!(r#"{{"id":"{job}","status":"aborted"}}"#)
        );
        assert_eq!(
            serde_json::to_string(&SettingsAppliedRequest {
                version: 7,
                not_applied: Vec::new()
            })
            .unwrap(),
            json!({ "version": 7i64 }).to_string()
        );
        assert_eq!(
            serde_json::to_string(&TlsRenewalRequest {
                csr_pem: "CSR".into()
            })
            .unwrap(),
            json!({ "csr_pem": "CSR" }).to_string()
        );
        let identity = PrinterIdentity {
            printer_id: printer,
            organization_id: job,
            certificate_serial: "00ff".into(),
            not_after: time::macros::datetime!(2027-01-02 03:04:05 UTC),
        };
        let text = serde_json::to_string(&identity).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"printer_id":"{printer}","organization_id":"{job}","certificate_serial":"00ff","not_after":"2027-01-02T03:04:05Z"}}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<PrinterIdentity>(&text).unwrap(),
            identity
        );
    }

    #[test]
    fn paths_are_under_the_prefix() {
        let (_, job) = ids();
        for p in [
            path::EVENTS,
            path::IDENTITY,
            path::CERTIFICATE,
            path::SETTINGS_APPLIED,
            path::JOB_CONTENT_ROUTE,
            path::JOB_STATUS_ROUTE,
        ] {
            assert!(p.starts_with(PRINTER_PREFIX), "{p}");
        }
        assert_eq!(
            path::job_content(job),
            path::JOB_CONTENT_ROUTE.replace("{job}", &job.to_string())
        );
        assert_eq!(
            path::job_status(job),
            path::JOB_STATUS_ROUTE.replace("{job}", &job.to_string())
        );
    }
}
