//! Print jobs: their states, how they move from one to the next, and what the relay
//! signs for the printer.
//!
//! A job's life: `receiving` (the upload streams; nobody outside the relay sees it) →
//! (`held`: stored, waiting for someone to start it — a file sent without "print" through
//! the OctoPrint upload API —, then) `queued` (stored, waiting for the printer) → `dispatched` (announced on the printer's
//! event stream) → `downloading` (the printer asked for the file) → `printing` (or
//! `paused`, and back: the same stage) → `completed`, `failed` or `aborted`. The printer
//! may skip states; a job never goes back a stage.
//!
//! Who moves it:
//!
//! - the relay: `receiving → queued` when the upload is stored, `queued → dispatched`
//!   when the event stream claims it ([`JobState::on_dispatch`]), `queued | dispatched →
//!   downloading` at the first request for its file ([`JobState::on_download`]);
//! - the relay, failing it: any unfinished job (`receiving` included) when its printer
//!   is removed or its stored file is damaged, a `queued` one when it waited too long;
//! - a person or app, aborting it: any [active](JobState::is_active) job; one that
//!   [reached the printer](JobState::has_reached_printer) keeps telling the printer until
//!   the printer reports on it;
//! - the printer, reporting on it ([`JobState::on_report`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A print job's state: as stored (`print_jobs.state`, `print_job_events.state`), as the
/// APIs show it (OpenAPI `JobState`, `receiving` aside), and in `job` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// The upload is streaming in. Never shown to printers or in lists.
    Receiving,
    /// Stored, waiting for someone to start it (`POST /relay/v1/jobs/{job}/start`);
    /// never shown to printers.
    Held,
    /// Stored, waiting for the printer.
    Queued,
    /// Announced to the printer on its event stream.
    Dispatched,
    /// The printer asked for the file.
    Downloading,
    Printing,
    /// The printer holds the print (asked to with `pause`); `printing` again on `resume`.
    Paused,
    Completed,
    Failed,
    Aborted,
}

impl JobState {
    pub const ALL: [JobState; 10] = [
        JobState::Receiving,
        JobState::Held,
        JobState::Queued,
        JobState::Dispatched,
        JobState::Downloading,
        JobState::Printing,
        JobState::Paused,
        JobState::Completed,
        JobState::Failed,
        JobState::Aborted,
    ];

    /// Not finished: what the queue quotas count and what fails when the printer is
    /// removed (`state IN ('receiving', 'held', 'queued', 'dispatched', 'downloading',
    /// 'printing', 'paused')`).
    pub const UNFINISHED: [JobState; 7] = [
        JobState::Receiving,
        JobState::Held,
        JobState::Queued,
        JobState::Dispatched,
        JobState::Downloading,
        JobState::Printing,
        JobState::Paused,
    ];

    /// Stored and not finished: it may be aborted; its file may be downloaded once it
    /// is not `held` (`state IN ('held', 'queued', 'dispatched', 'downloading',
    /// 'printing', 'paused')`).
    pub const ACTIVE: [JobState; 6] = [
        JobState::Held,
        JobState::Queued,
        JobState::Dispatched,
        JobState::Downloading,
        JobState::Printing,
        JobState::Paused,
    ];

    /// Announced to the printer and not finished: sent again on every connection
    /// (`state IN ('dispatched', 'downloading', 'printing', 'paused')`).
    pub const WITH_PRINTER: [JobState; 4] = [
        JobState::Dispatched,
        JobState::Downloading,
        JobState::Printing,
        JobState::Paused,
    ];

    /// Finished: nothing moves it any more (`state IN ('completed', 'failed', 'aborted')`).
    pub const TERMINAL: [JobState; 3] = [JobState::Completed, JobState::Failed, JobState::Aborted];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Receiving => "receiving",
            JobState::Held => "held",
            JobState::Queued => "queued",
            JobState::Dispatched => "dispatched",
            JobState::Downloading => "downloading",
            JobState::Printing => "printing",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// `completed`, `failed` or `aborted`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Aborted
        )
    }

    /// Anything but [`is_terminal`](Self::is_terminal), `receiving` included.
    pub fn is_unfinished(self) -> bool {
        !self.is_terminal()
    }

    /// Stored and not finished: `queued`, `dispatched`, `downloading` or `printing`.
    pub fn is_active(self) -> bool {
        self.is_unfinished() && self != JobState::Receiving
    }

    /// Announced to the printer and not finished: `dispatched`, `downloading`,
    /// `printing` or `paused`. Aborting such a job tells the printer
    /// (`abort_requested_at`), and so does pausing or resuming it.
    pub fn has_reached_printer(self) -> bool {
        matches!(
            self,
            JobState::Dispatched | JobState::Downloading | JobState::Printing | JobState::Paused
        )
    }

    /// Whether anyone but the relay may see it (`state <> 'receiving'`).
    pub fn is_visible(self) -> bool {
        self != JobState::Receiving
    }

    /// How far along its life the job is; the three ends are equally far.
    fn stage(self) -> u8 {
        match self {
            JobState::Receiving => 0,
            JobState::Held | JobState::Queued => 1,
            JobState::Dispatched => 2,
            JobState::Downloading => 3,
            JobState::Printing | JobState::Paused => 4,
            JobState::Completed | JobState::Failed | JobState::Aborted => 5,
        }
    }

    /// Whether the job may go from this state to `next`, by anyone: a `receiving` job
    /// only to `held` or `queued` (stored) or `failed` (its printer was removed); a
    /// `held` one only to `queued` (started), `aborted` or `failed`; a finished one
    /// nowhere; `printing` and `paused` into each other; any other only forward,
    /// skipping states if it likes. Staying in a state (a progress report) is not a move.
    pub fn can_move_to(self, next: JobState) -> bool {
        match self {
            JobState::Receiving => {
                matches!(next, JobState::Held | JobState::Queued | JobState::Failed)
            }
            JobState::Held => {
                matches!(
                    next,
                    JobState::Queued | JobState::Aborted | JobState::Failed
                )
            }
            s if s.is_terminal() => false,
            JobState::Printing if next == JobState::Paused => true,
            JobState::Paused if next == JobState::Printing => true,
            s => next.stage() > s.stage(),
        }
    }

    /// The event stream claims the job for the printer: `queued → dispatched`. `None`:
    /// it is not waiting. (A job the stream sends again keeps its state.)
    pub fn on_dispatch(self) -> Option<JobState> {
        (self == JobState::Queued).then_some(JobState::Dispatched)
    }

    /// The printer asked for the file (a GET, not a HEAD): `queued | dispatched →
    /// downloading`. `None`: the state stays as it is.
    pub fn on_download(self) -> Option<JobState> {
        matches!(self, JobState::Queued | JobState::Dispatched).then_some(JobState::Downloading)
    }

    /// What a printer's report (`POST /printer/v1/jobs/{job}/status`) does to a job in
    /// this state. `aborted_at_printer`: the job was aborted from the cloud after it
    /// reached the printer (`abort_requested_at` is set).
    ///
    /// - A job aborted after it reached the printer stays `aborted`, whatever is
    ///   reported: the report acknowledges the abort.
    /// - A finished job reported in its own state again: nothing changes (200); in
    ///   another: refused (409).
    /// - An earlier state than the job's: refused (409).
    /// - Otherwise the job takes the reported state: the same one is a progress report,
    ///   a later one a move (states may be skipped), and `printing` and `paused` move
    ///   into each other.
    ///
    /// A `receiving` job takes no report (printers never see one: the relay answers 404
    /// before it asks).
    pub fn on_report(self, report: ReportedState, aborted_at_printer: bool) -> ReportOutcome {
        if self == JobState::Aborted && aborted_at_printer {
            return ReportOutcome::AcknowledgesAbort;
        }
        let new = report.state();
        // A held job is not the printer's to move (it never heard of it).
        let closed = self.is_terminal() || matches!(self, JobState::Receiving | JobState::Held);
        if closed || new.stage() < self.stage() {
            return if new == self {
                ReportOutcome::AlreadyThere
            } else {
                ReportOutcome::Refused
            };
        }
        ReportOutcome::MovesTo(new)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states a printer may report (OpenAPI `JobStatusReport.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedState {
    Downloading,
    Printing,
    Paused,
    Completed,
    Failed,
    Aborted,
}

impl ReportedState {
    pub const ALL: [ReportedState; 6] = [
        ReportedState::Downloading,
        ReportedState::Printing,
        ReportedState::Paused,
        ReportedState::Completed,
        ReportedState::Failed,
        ReportedState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        self.state().as_str()
    }

    /// `None` for anything a printer may not report (`queued`, `dispatched`, unknown).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The job state it names.
    pub fn state(self) -> JobState {
        match self {
            ReportedState::Downloading => JobState::Downloading,
            ReportedState::Printing => JobState::Printing,
            ReportedState::Paused => JobState::Paused,
            ReportedState::Completed => JobState::Completed,
            ReportedState::Failed => JobState::Failed,
            ReportedState::Aborted => JobState::Aborted,
        }
    }
}

impl From<ReportedState> for JobState {
    fn from(r: ReportedState) -> Self {
        r.state()
    }
}

impl TryFrom<JobState> for ReportedState {
    type Error = JobState;

    fn try_from(s: JobState) -> Result<Self, JobState> {
        Self::parse(s.as_str()).ok_or(s)
    }
}

impl fmt::Display for ReportedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a printer's report does to a job ([`JobState::on_report`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The job was aborted from the cloud after it reached the printer: the report
    /// acknowledges the abort (the `abort` events stop) and the job stays `aborted`
    /// (answered `status: aborted`; the first report after the abort is noted in the
    /// history when it names another state).
    AcknowledgesAbort,
    /// The job finished in this very state already: answered with it, nothing changes.
    AlreadyThere,
    /// An earlier state than the job's, or another end than the one it reached: 409.
    Refused,
    /// The job takes this state, with the report's progress and message. The job's own
    /// state is a progress report (history only when there is a message); a finished
    /// state sets `finished_at`.
    MovesTo(JobState),
}

/// What a job signature covers: the printer, the job, its size and its SHA-256 (lowercase
/// hex, as in the `job` event): the UTF-8 bytes of
/// `printworks-job-v1\n<printer id>\n<job id>\n<size>\n<sha256>` (UUIDs lowercase and
/// hyphenated, the size in decimal, no final line feed). The relay signs it with Ed25519;
/// the printer verifies it with the key it pinned when it paired.
pub fn job_message(printer_id: Uuid, job_id: Uuid, size: u64, sha256_hex: &str) -> Vec<u8> {
    format!("printworks-job-v1\n{printer_id}\n{job_id}\n{size}\n{sha256_hex}").into_bytes()
}

/// Lower-case hex, as the protocol writes digests (a job's `sha256`, a CSR's digest in
/// the renewal and re-pairing proofs).
pub fn hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    data.iter()
        .fold(String::with_capacity(data.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_written_as_stored() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
            let back: JobState = serde_json::from_str(&format!("\"{state}\"")).unwrap();
            assert_eq!(back, state);
        }
        assert_eq!(JobState::parse("Queued"), None);
        assert_eq!(JobState::parse("pending"), None);
        for r in ReportedState::ALL {
            assert_eq!(ReportedState::parse(r.as_str()), Some(r));
            assert_eq!(ReportedState::try_from(r.state()), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                serde_json::to_string(&r.state()).unwrap()
            );
        }
        for s in ["receiving", "queued", "dispatched", "pausing", ""] {
            assert_eq!(ReportedState::parse(s), None, "{s}");
        }
        assert_eq!(
            ReportedState::try_from(JobState::Queued),
            Err(JobState::Queued)
        );
    }

    #[test]
    fn groups_are_the_lists_the_queries_use() {
        let names = |states: &[JobState]| states.iter().map(|s| s.as_str()).collect::<Vec<_>>();
        assert_eq!(
            names(&JobState::UNFINISHED),
            [
                "receiving",
                "held",
                "queued",
                "dispatched",
                "downloading",
                "printing",
                "paused"
            ]
        );
        assert_eq!(
            names(&JobState::ACTIVE),
            [
                "held",
                "queued",
                "dispatched",
                "downloading",
                "printing",
                "paused"
            ]
        );
        assert_eq!(
            names(&JobState::WITH_PRINTER),
            ["dispatched", "downloading", "printing", "paused"]
        );
        assert_eq!(
            names(&JobState::TERMINAL),
            ["completed", "failed", "aborted"]
        );
        for s in JobState::ALL {
            assert_eq!(s.is_unfinished(), JobState::UNFINISHED.contains(&s), "{s}");
            assert_eq!(s.is_active(), JobState::ACTIVE.contains(&s), "{s}");
            assert_eq!(
                s.has_reached_printer(),
                JobState::WITH_PRINTER.contains(&s),
                "{s}"
            );
            assert_eq!(s.is_terminal(), JobState::TERMINAL.contains(&s), "{s}");
            assert_eq!(s.is_visible(), s != JobState::Receiving, "{s}");
        }
    }

    /// The rule the relay applied before it had [`JobState::on_report`]
    /// (`printer_api::status`), kept here as the reference — `paused` at `printing`'s
    /// rank since the two move into each other.
    fn relay_rule(current: &str, new: &str, abort_requested: bool) -> ReportOutcome {
        let rank = |s: &str| match s {
            "queued" => 0,
            "dispatched" => 1,
            "downloading" => 2,
            "printing" | "paused" => 3,
            _ => 4,
        };
        let terminal = rank(current) == 4;
        if current == "aborted" && abort_requested {
            return ReportOutcome::AcknowledgesAbort;
        }
        if terminal || rank(new) < rank(current) {
            if current == new {
                return ReportOutcome::AlreadyThere;
            }
            return ReportOutcome::Refused;
        }
        ReportOutcome::MovesTo(JobState::parse(new).unwrap())
    }

    #[test]
    fn reports_move_jobs_as_the_relay_always_did() {
        for current in JobState::ALL {
            for report in ReportedState::ALL {
                for aborted_at_printer in [false, true] {
                    assert_eq!(
                        current.on_report(report, aborted_at_printer),
                        relay_rule(current.as_str(), report.as_str(), aborted_at_printer),
                        "{current} reported {report} (aborted at printer: {aborted_at_printer})"
                    );
                }
            }
        }
    }

    #[test]
    fn reports_go_forward_only() {
        use JobState as J;
        use ReportOutcome::*;
        use ReportedState as R;
        // Forward, skipping states.
        assert_eq!(
            J::Queued.on_report(R::Downloading, false),
            MovesTo(J::Downloading)
        );
        assert_eq!(
            J::Dispatched.on_report(R::Completed, false),
            MovesTo(J::Completed)
        );
        assert_eq!(J::Printing.on_report(R::Failed, false), MovesTo(J::Failed));
        // The same state again: a progress report.
        assert_eq!(
            J::Printing.on_report(R::Printing, false),
            MovesTo(J::Printing)
        );
        assert_eq!(
            J::Downloading.on_report(R::Downloading, false),
            MovesTo(J::Downloading)
        );
        // Backwards.
        assert_eq!(J::Printing.on_report(R::Downloading, false), Refused);
        assert_eq!(J::Paused.on_report(R::Downloading, false), Refused);
        // Paused and printing again.
        assert_eq!(J::Printing.on_report(R::Paused, false), MovesTo(J::Paused));
        assert_eq!(
            J::Paused.on_report(R::Printing, false),
            MovesTo(J::Printing)
        );
        assert_eq!(
            J::Paused.on_report(R::Completed, false),
            MovesTo(J::Completed)
        );
        // A finished job: its own end again changes nothing, another is refused.
        assert_eq!(J::Completed.on_report(R::Completed, false), AlreadyThere);
        assert_eq!(J::Completed.on_report(R::Failed, false), Refused);
        assert_eq!(J::Failed.on_report(R::Printing, false), Refused);
        assert_eq!(J::Aborted.on_report(R::Aborted, false), AlreadyThere);
        assert_eq!(J::Aborted.on_report(R::Completed, false), Refused);
        // Aborted after it reached the printer: every report acknowledges the abort.
        for r in ReportedState::ALL {
            assert_eq!(J::Aborted.on_report(r, true), AcknowledgesAbort);
        }
        // Never a printer's.
        for r in ReportedState::ALL {
            assert_eq!(J::Receiving.on_report(r, false), Refused);
        }
    }

    #[test]
    fn every_move_is_a_legal_one() {
        use JobState as J;
        // The moves the relay makes itself.
        for (from, to) in [
            (J::Receiving, J::Queued),
            (J::Receiving, J::Failed),
            (J::Queued, J::Dispatched),
            (J::Queued, J::Downloading),
            (J::Dispatched, J::Downloading),
            (J::Queued, J::Aborted),
            (J::Dispatched, J::Aborted),
            (J::Downloading, J::Aborted),
            (J::Printing, J::Aborted),
            (J::Queued, J::Failed),
            (J::Printing, J::Failed),
        ] {
            assert!(from.can_move_to(to), "{from} → {to}");
        }
        // Never back, never out of an end, never into `receiving`, never in place.
        for (from, to) in [
            (J::Dispatched, J::Queued),
            (J::Printing, J::Downloading),
            (J::Completed, J::Failed),
            (J::Aborted, J::Queued),
            (J::Queued, J::Receiving),
            (J::Receiving, J::Dispatched),
            (J::Receiving, J::Aborted),
        ] {
            assert!(!from.can_move_to(to), "{from} → {to}");
        }
        for s in JobState::ALL {
            assert!(!s.can_move_to(s), "{s} → {s}");
            if s.is_terminal() {
                assert!(JobState::ALL.iter().all(|&n| !s.can_move_to(n)), "{s}");
            }
            if let Some(n) = s.on_dispatch() {
                assert!(s.can_move_to(n), "{s} → {n}");
            }
            if let Some(n) = s.on_download() {
                assert!(s.can_move_to(n), "{s} → {n}");
            }
            for r in ReportedState::ALL {
                if let ReportOutcome::MovesTo(n) = s.on_report(r, false)
                    && n != s
                {
                    assert!(s.can_move_to(n), "{s} → {n}");
                }
            }
        }
        assert_eq!(J::Queued.on_dispatch(), Some(J::Dispatched));
        assert_eq!(J::Dispatched.on_dispatch(), None);
        assert_eq!(J::Dispatched.on_download(), Some(J::Downloading));
        assert_eq!(J::Downloading.on_download(), None);
        assert_eq!(J::Printing.on_download(), None);
    }

    #[test]
    fn the_signed_message_is_byte_for_byte() {
        let printer = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let job = Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210);
        assert_eq!(
            job_message(printer, job, 42, "ab01"),
            b"printworks-job-v1\n01234567-89ab-cdef-0123-456789abcdef\nfedcba98-7654-3210-fedc-ba9876543210\n42\nab01"
        );
        assert_eq!(hex(&[0x00, 0xab, 0x0f, 0xff]), "00ab0fff");
        assert_eq!(hex(&[]), "");
    }
}
