//! A job's way through OctoPrint, for `printworks printer run --octoprint`: the file
//! the worker downloaded and verified is checked once more against the printer
//! profile's limits, uploaded into `printworks/` and started; OctoPrint's job is then
//! followed ([`follow`]) and reported as Printworks job states, with Printworks'
//! abort, pause and resume carried to OctoPrint.
//!
//! The file's path in OctoPrint is kept on the job in `book.json` as soon as the print
//! starts, so an agent restarted mid-print follows the same print again instead of
//! calling it lost. A print that OctoPrint is still printing when the Printworks
//! connection drops goes on (the worker needs no connection to the cloud); its reports
//! wait in the outbox.

use std::time::Duration;

use printworks_proto::{PrinterState, ReportedState};
use tokio::io::AsyncReadExt as _;

use super::{Ctx, Live, LocalJob, Phase, aborted, held, stop_aborted};
use crate::octoprint::{OctoPrint, clip, is_unreachable, printer_state};

/// How the agent drives OctoPrint.
#[derive(Clone, Debug)]
pub struct Bridge {
    pub octoprint: OctoPrint,
    /// Leave each job's file in OctoPrint after it ended (else it is deleted).
    pub keep_files: bool,
    /// How often OctoPrint's job is read while it prints.
    pub poll: Duration,
    /// How long OctoPrint may be unreachable in the middle of a print before the job is
    /// failed (a restarted OctoPrint has forgotten its print).
    pub unreachable_for: Duration,
}

impl Bridge {
    pub fn new(octoprint: OctoPrint) -> Self {
        Self {
            octoprint,
            keep_files: false,
            poll: Duration::from_millis(500),
            unreachable_for: Duration::from_secs(10),
        }
    }
}

/// The name a job's file gets in OctoPrint: its own name's letters, digits, `-`, `_`
/// and `.` (at most 40), then the job's id, so that two jobs never share a file.
pub fn file_name(job: &LocalJob) -> String {
    let stem = job
        .name
        .rsplit_once('.')
        .map_or(job.name.as_str(), |(stem, _)| stem);
    let stem: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(40)
        .collect();
    let id = job.id.simple().to_string();
    match stem.as_str() {
        "" => format!("{id}.gcode"),
        stem => format!("{stem}-{id}.gcode"),
    }
}

/// Checks `file` against the printer's limits, uploads it and starts it, then follows it.
pub(super) async fn print(
    ctx: &Ctx,
    bridge: &Bridge,
    job: &LocalJob,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let octoprint = &bridge.octoprint;
    let now = octoprint.job().await?;
    anyhow::ensure!(
        now.state == "Operational",
        "OctoPrint's printer is not ready ({}); not printed",
        clip(&now.state, 60)
    );
    let limits = octoprint.limits().await?;
    check(file, limits)
        .await
        .map_err(|e| anyhow::anyhow!("refused before OctoPrint: {e}"))?;
    if aborted(ctx, job.id) {
        return stop_aborted(ctx, job);
    }
    let path = octoprint.upload_and_print(file, &file_name(job)).await?;
    tracing::info!(job_id = %job.id, %path, "printing through OctoPrint");
    ctx.shared.change(|b| {
        if let Some(j) = b.jobs.iter_mut().find(|j| j.id == job.id) {
            j.phase = Phase::Printing;
            j.remote = Some(path.clone());
        }
    })?;
    ctx.shared
        .report(job.id, ReportedState::Printing, Some(0.0), None)?;
    follow_then_tidy(ctx, bridge, job, &path).await
}

/// Follows the print at `path` (started earlier, before a restart), then tidies up.
pub(super) async fn follow_then_tidy(
    ctx: &Ctx,
    bridge: &Bridge,
    job: &LocalJob,
    path: &str,
) -> anyhow::Result<()> {
    let outcome = follow(ctx, bridge, job, path).await;
    if !bridge.keep_files
        && let Err(e) = bridge.octoprint.delete(path).await
    {
        tracing::info!(job_id = %job.id, error = %format!("{e:#}"), "the job's file stays in OctoPrint");
    }
    outcome
}

/// The file, read as the relay read it, against `limits`.
async fn check(file: &std::path::Path, limits: printworks_gcode::Profile) -> anyhow::Result<()> {
    let mut f = tokio::fs::File::open(file).await?;
    let mut checker = printworks_gcode::Checker::new(limits);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        checker.feed(&buf[..n]).map_err(anyhow::Error::msg)?;
    }
    checker.finish().map_err(anyhow::Error::msg)
}

/// What was last reported of the print: its state and whole percent.
type Reported = Option<(ReportedState, i32)>;

/// Reads OctoPrint's job until the print at `path` ended, reporting its progress and
/// carrying Printworks' abort, pause and resume to OctoPrint.
async fn follow(ctx: &Ctx, bridge: &Bridge, job: &LocalJob, path: &str) -> anyhow::Result<()> {
    let octoprint = &bridge.octoprint;
    let id = job.id;
    let mut reported: Reported = None;
    let mut holds_seen: Option<u64> = None;
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    let mut cancel_sent = false;
    let started = tokio::time::Instant::now();
    loop {
        let now = match octoprint.job().await {
            Ok(now) => {
                unreachable_since = None;
                now
            }
            Err(e) if is_unreachable(&e) => {
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                anyhow::ensure!(
                    since.elapsed() < bridge.unreachable_for,
                    "{}",
                    clip(&format!("{e:#}"), 200)
                );
                wait(ctx, bridge.poll).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let ours = now.job.file.path.as_deref() == Some(path);
        let state = printer_state(&now.state);
        match state {
            PrinterState::Printing | PrinterState::Paused if ours => {
                if aborted(ctx, id) {
                    if !cancel_sent {
                        octoprint.cancel().await?;
                        cancel_sent = true;
                        tracing::info!(job_id = %id, "cancelled in OctoPrint");
                    }
                } else {
                    let holds = ctx.shared.holds();
                    let mut force = false;
                    // A new wish is carried out once OctoPrint can take it (not in the
                    // middle of pausing or resuming), and always answered with a report.
                    if holds_seen != Some(holds) {
                        let wish = held(ctx, id);
                        let settled = match (wish, now.state.as_str()) {
                            (true, "Printing") => octoprint.pause().await.map(|()| true)?,
                            (false, "Paused") => octoprint.resume().await.map(|()| true)?,
                            (true, "Resuming") | (false, "Pausing") => false,
                            _ => true,
                        };
                        if settled {
                            holds_seen = Some(holds);
                            force = reported.is_some();
                        }
                    }
                    let progress = now.progress.completion.map(|c| c.clamp(0.0, 100.0) as f32);
                    let as_reported = if state == PrinterState::Paused {
                        ReportedState::Paused
                    } else {
                        ReportedState::Printing
                    };
                    let key = (as_reported, progress.map_or(-1, |p| p.floor() as i32));
                    ctx.shared.set_live(Live {
                        job: Some(id),
                        progress,
                        paused: as_reported == ReportedState::Paused,
                    });
                    if force || reported != Some(key) {
                        ctx.shared.report(id, as_reported, progress, None)?;
                        reported = Some(key);
                    }
                }
            }
            PrinterState::Error => {
                let why = now.error.as_deref().unwrap_or(&now.state);
                anyhow::bail!("OctoPrint: {}", clip(why, 180));
            }
            PrinterState::Offline => {
                anyhow::bail!(
                    "OctoPrint lost the printer ({}) in the middle of the print",
                    clip(&now.state, 60)
                );
            }
            // Idle, or printing another file: ours ended. How, its record tells.
            _ => match octoprint.last_print_succeeded(path).await? {
                Some(true) => {
                    ctx.shared
                        .finish(id, ReportedState::Completed, Some(100.0), None)?;
                    tracing::info!(job_id = %id, "printed through OctoPrint");
                    return Ok(());
                }
                Some(false) if aborted(ctx, id) => return stop_aborted(ctx, job),
                Some(false) => {
                    ctx.shared.finish(
                        id,
                        ReportedState::Aborted,
                        None,
                        Some("cancelled in OctoPrint"),
                    )?;
                    return Ok(());
                }
                // Not begun yet, for a moment after the upload; else it is gone.
                None if started.elapsed() < Duration::from_secs(5) && reported.is_none() => {}
                None if aborted(ctx, id) => return stop_aborted(ctx, job),
                None => anyhow::bail!("the print ended in OctoPrint without finishing"),
            },
        }
        wait(ctx, bridge.poll).await;
    }
}

/// `poll`, or less when an abort, pause or resume arrives.
async fn wait(ctx: &Ctx, poll: Duration) {
    tokio::select! {
        () = tokio::time::sleep(poll) => {}
        () = ctx.shared.work.notified() => {}
    }
}

/// Whether the job is printing in OctoPrint already (started before a restart).
pub(super) fn started(job: &LocalJob) -> Option<&str> {
    (job.phase == Phase::Printing)
        .then_some(job.remote.as_deref())
        .flatten()
}

/// The live status: what OctoPrint sees of the printer, and the job the agent prints.
pub(super) async fn status(
    bridge: &Bridge,
    live: Live,
    firmware: &mut Option<String>,
) -> printworks_proto::PrinterStatus {
    let seen = bridge.octoprint.seen().await;
    if seen.state == PrinterState::Offline {
        *firmware = None;
    } else if firmware.is_none() {
        *firmware = bridge.octoprint.firmware_version().await;
    }
    let busy = matches!(seen.state, PrinterState::Printing | PrinterState::Paused);
    printworks_proto::PrinterStatus {
        state: seen.state,
        heaters: seen.heaters,
        job_id: live.job.filter(|_| busy),
        progress: live.progress.filter(|_| busy && live.job.is_some()),
        firmware_version: firmware.clone(),
        message: seen.message,
    }
}

/// The settings a printer behind OctoPrint cannot apply: OctoPrint has no firewall
/// the agent could close, and no PIN for its settings.
pub fn not_applied(settings: &printworks_proto::SettingsEvent) -> Vec<String> {
    let mut out = Vec::new();
    if settings.firewall_enabled {
        out.push("firewall".to_owned());
    }
    if settings.pin_hash.is_some() {
        out.push("pin".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn job(name: &str) -> LocalJob {
        LocalJob {
            id: Uuid::from_u128(0xabcdef),
            name: name.into(),
            size: 1,
            sha256: String::new(),
            signature: String::new(),
            phase: Phase::Waiting,
            aborted: false,
            paused: false,
            remote: None,
        }
    }

    #[test]
    fn file_names_are_safe_and_unique_per_job() {
        assert_eq!(
            file_name(&job("bracket v2.gcode")),
            "bracketv2-00000000000000000000000000abcdef.gcode"
        );
        assert_eq!(
            file_name(&job("../../etc/passwd")),
            "00000000000000000000000000abcdef.gcode"
        );
        assert_eq!(
            file_name(&job("Ünïcode_part.gco")),
            "ncode_part-00000000000000000000000000abcdef.gcode"
        );
    }
}
