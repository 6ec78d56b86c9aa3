//! Live printer status (process data, kept apart from print files): what a printer
//! reports with `POST /printer/v1/status` ([`PrinterStatus`]) — its state, heaters,
//! current job and progress, firmware — at most once a second while printing, and on
//! change otherwise. People read the latest with `GET /relay/v1/printers/{printer}/status`
//! and follow it with `…/status/events` (server-sent events, `status` events carrying a
//! [`StatusView`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// `POST`: the printer's status now.
pub const STATUS_PATH: &str = "/printer/v1/status";

/// Most heaters one status names.
pub const MAX_HEATERS: usize = 16;
/// Temperatures outside this range (°C) are refused as nonsense.
pub const TEMPERATURE_RANGE: std::ops::RangeInclusive<f32> = -60.0..=600.0;

/// What the printer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrinterState {
    Idle,
    Printing,
    Paused,
    /// The printer (or its firmware) reports an error; `message` says which.
    Error,
    /// The machine behind the agent does not answer (e.g. OctoPrint lost its printer).
    Offline,
}

impl PrinterState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrinterState::Idle => "idle",
            PrinterState::Printing => "printing",
            PrinterState::Paused => "paused",
            PrinterState::Error => "error",
            PrinterState::Offline => "offline",
        }
    }
}

/// One heater: its temperature now and the one it is driven to (none: off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heater {
    /// `tool0`, `bed`, `chamber` …: 1 to 32 letters, digits, `_` or `-`.
    pub name: String,
    pub actual: f32,
    pub target: Option<f32>,
}

/// A printer's status report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrinterStatus {
    pub state: PrinterState,
    #[serde(default)]
    pub heaters: Vec<Heater>,
    /// The job it is printing (or paused in).
    #[serde(default)]
    pub job_id: Option<Uuid>,
    /// Percent, 0 to 100, of that job.
    #[serde(default)]
    pub progress: Option<f32>,
    #[serde(default)]
    pub firmware_version: Option<String>,
    /// What the printer says of its state (an error's words), at most 200 characters.
    #[serde(default)]
    pub message: Option<String>,
}

impl PrinterStatus {
    /// Whether the report is within bounds; the reason if not.
    pub fn check(&self) -> Result<(), String> {
        if self.heaters.len() > MAX_HEATERS {
            return Err(format!("at most {MAX_HEATERS} heaters"));
        }
        for h in &self.heaters {
            let name_ok = (1..=32).contains(&h.name.len())
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err("a heater's name must be 1 to 32 letters, digits, _ or -".into());
            }
            let temperatures = std::iter::once(h.actual).chain(h.target);
            for t in temperatures {
                if !t.is_finite() || !TEMPERATURE_RANGE.contains(&t) {
                    return Err(format!(
                        "{}: temperatures must be between {} and {} °C",
                        h.name,
                        TEMPERATURE_RANGE.start(),
                        TEMPERATURE_RANGE.end()
                    ));
                }
            }
        }
        for (a, b) in self.heaters.iter().zip(self.heaters.iter().skip(1)) {
            if a.name == b.name {
                return Err("heater names must differ".into());
            }
        }
        if self
            .progress
            .is_some_and(|p| !p.is_finite() || !(0.0..=100.0).contains(&p))
        {
            return Err("progress must be between 0 and 100".into());
        }
        if self
            .firmware_version
            .as_ref()
            .is_some_and(|f| f.chars().count() > 100)
        {
            return Err("firmware_version: at most 100 characters".into());
        }
        if self
            .message
            .as_ref()
            .is_some_and(|m| m.chars().count() > 200)
        {
            return Err("message: at most 200 characters".into());
        }
        let printable =
            |s: &Option<String>| s.as_ref().is_none_or(|s| !s.chars().any(char::is_control));
        if !printable(&self.firmware_version) || !printable(&self.message) {
            return Err("firmware_version and message must be printable text".into());
        }
        Ok(())
    }
}

/// What `GET /relay/v1/printers/{printer}/status` answers, and each `status` event of
/// its stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub printer_id: Uuid,
    /// The printer holds its event stream now (with a replica of this deployment).
    pub connected: bool,
    /// The last report (none yet: null).
    pub status: Option<PrinterStatus>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub reported_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printing() -> PrinterStatus {
        PrinterStatus {
            state: PrinterState::Printing,
            heaters: vec![
                Heater {
                    name: "tool0".into(),
                    actual: 209.5,
                    target: Some(210.0),
                },
                Heater {
                    name: "bed".into(),
                    actual: 60.0,
                    target: Some(60.0),
                },
            ],
            job_id: Some(Uuid::nil()),
            progress: Some(42.0),
            firmware_version: Some("Marlin 2.1.2".into()),
            message: None,
        }
    }

    #[test]
    fn reports_out_of_bounds_are_refused_with_the_reason() {
        assert_eq!(printing().check(), Ok(()));
        let mut s = printing();
        s.heaters[0].actual = f32::NAN;
        assert!(s.check().unwrap_err().contains("temperatures"));
        let mut s = printing();
        s.heaters[1].target = Some(900.0);
        assert!(s.check().is_err());
        let mut s = printing();
        s.heaters[1].name = "bed\n".into();
        assert!(s.check().is_err());
        let mut s = printing();
        s.heaters[1].name = "tool0".into();
        assert!(s.check().is_err());
        let mut s = printing();
        s.heaters = (0..17)
            .map(|i| Heater {
                name: format!("h{i}"),
                actual: 20.0,
                target: None,
            })
            .collect();
        assert!(s.check().is_err());
        let mut s = printing();
        s.progress = Some(100.5);
        assert!(s.check().is_err());
        let mut s = printing();
        s.message = Some("x".repeat(201));
        assert!(s.check().is_err());
        let mut s = printing();
        s.firmware_version = Some("Marlin\u{1b}[2J".into());
        assert!(s.check().is_err());
        // The wire form: states in lower case, absent fields read as none.
        let parsed: PrinterStatus = serde_json::from_str(r#"{"state":"paused"}"#).unwrap();
        assert_eq!(parsed.state, PrinterState::Paused);
        assert!(parsed.heaters.is_empty());
        assert!(serde_json::from_str::<PrinterStatus>(r#"{"state":"melting"}"#).is_err());
    }
}
