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
use crate::octoprint::{FOLDER, OctoPrint, clip, is_unreachable, printer_state};

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
    // Where the file will be is kept before it is uploaded: an agent that stops in
    // between finds the print OctoPrint started, instead of leaving it unfollowed.
    let name = file_name(job);
    let expected = format!("{FOLDER}/{name}");
    let remember = |path: &str| {
        ctx.shared.change(|b| {
            if let Some(j) = b.jobs.iter_mut().find(|j| j.id == job.id) {
                j.phase = Phase::Printing;
                j.remote = Some(path.to_owned());
            }
        })
    };
    remember(&expected)?;
    let path = octoprint.upload_and_print(file, &name).await?;
    if path != expected {
        remember(&path)?;
    }
    tracing::info!(job_id = %job.id, %path, "printing through OctoPrint");
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

/// How long after the print ended OctoPrint may take to record how (it writes the
/// file's `prints.last` in the background, after the state changed).
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// What the agent saw of a print while following it.
#[derive(Default)]
struct Seen {
    /// It printed (or was paused) as ours at least once.
    ours: bool,
    /// OctoPrint was finishing it, or it reached 100 %.
    finishing: bool,
    /// OctoPrint was cancelling it.
    cancelling: bool,
}

/// Fails once OctoPrint has been unreachable for `limit` since `since` (set now if not
/// yet).
fn still_reachable(
    since: &mut Option<tokio::time::Instant>,
    limit: Duration,
    e: &anyhow::Error,
) -> anyhow::Result<()> {
    let since = *since.get_or_insert_with(tokio::time::Instant::now);
    anyhow::ensure!(since.elapsed() < limit, "{}", clip(&format!("{e:#}"), 200));
    Ok(())
}

/// Reads OctoPrint's job until the print at `path` ended, reporting its progress and
/// carrying Printworks' abort, pause and resume to OctoPrint. A command OctoPrint does
/// not take is tried again at the next reading; only a lasting silence of OctoPrint, its
/// printer's error or loss, or a print gone without a record of how it ended, fail the
/// job.
async fn follow(ctx: &Ctx, bridge: &Bridge, job: &LocalJob, path: &str) -> anyhow::Result<()> {
    let octoprint = &bridge.octoprint;
    let id = job.id;
    let mut reported: Reported = None;
    // Only a pause or resume asked of this job is carried out, once per wish — never
    // because OctoPrint's state differs from the book (someone may have paused the
    // print at the printer). A pause asked before the print began is carried out.
    let mut holds_seen: Option<u64> = (!held(ctx, id)).then(|| holds_of(ctx, id));
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    let mut ended_since: Option<tokio::time::Instant> = None;
    let mut cancel_sent = false;
    let mut seen = Seen::default();
    let started = tokio::time::Instant::now();
    loop {
        let now = match octoprint.job().await {
            Ok(now) => {
                unreachable_since = None;
                now
            }
            Err(e) if is_unreachable(&e) => {
                still_reachable(&mut unreachable_since, bridge.unreachable_for, &e)?;
                wait(ctx, bridge.poll).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let ours = now.job.file.path.as_deref() == Some(path);
        let state = printer_state(&now.state);
        match state {
            PrinterState::Printing | PrinterState::Paused if ours => {
                seen.ours = true;
                ended_since = None;
                seen.cancelling |= now.state == "Cancelling";
                seen.finishing |=
                    now.state == "Finishing" || now.progress.completion.is_some_and(|c| c >= 100.0);
                if aborted(ctx, id) {
                    if !cancel_sent && now.state != "Cancelling" {
                        match octoprint.cancel().await {
                            Ok(()) => {
                                cancel_sent = true;
                                tracing::info!(job_id = %id, "cancelled in OctoPrint");
                            }
                            Err(e) => {
                                tracing::warn!(job_id = %id, error = %format!("{e:#}"), "OctoPrint did not take the cancel; trying again");
                            }
                        }
                    }
                } else {
                    let force = carry_hold(ctx, octoprint, id, &now.state, &mut holds_seen).await
                        && reported.is_some();
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
            // Idle, or printing another file: ours ended (or has not begun, for a
            // moment after the upload). How, OctoPrint's record of the file tells.
            _ => {
                let record = match octoprint.last_print_succeeded(path).await {
                    Ok(record) => record,
                    Err(e) if is_unreachable(&e) => {
                        still_reachable(&mut unreachable_since, bridge.unreachable_for, &e)?;
                        None
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %format!("{e:#}"), "OctoPrint's record of the print cannot be read");
                        None
                    }
                };
                let ended = *ended_since.get_or_insert_with(tokio::time::Instant::now);
                let beginning = !seen.ours && started.elapsed() < Duration::from_secs(5);
                match record {
                    Some(true) => return completed(ctx, id),
                    Some(false) if aborted(ctx, id) => return stop_aborted(ctx, job),
                    Some(false) => return cancelled_in_octoprint(ctx, id),
                    None if beginning || ended.elapsed() < RECORD_WAIT => {}
                    // No record: what was seen decides.
                    None if aborted(ctx, id) => return stop_aborted(ctx, job),
                    None if seen.cancelling => return cancelled_in_octoprint(ctx, id),
                    None if seen.finishing => return completed(ctx, id),
                    None => anyhow::bail!("the print ended in OctoPrint without finishing"),
                }
            }
        }
        wait(ctx, bridge.poll).await;
    }
}

fn completed(ctx: &Ctx, id: uuid::Uuid) -> anyhow::Result<()> {
    ctx.shared
        .finish(id, ReportedState::Completed, Some(100.0), None)?;
    tracing::info!(job_id = %id, "printed through OctoPrint");
    Ok(())
}

fn cancelled_in_octoprint(ctx: &Ctx, id: uuid::Uuid) -> anyhow::Result<()> {
    ctx.shared.finish(
        id,
        ReportedState::Aborted,
        None,
        Some("cancelled in OctoPrint"),
    )?;
    tracing::info!(job_id = %id, "cancelled in OctoPrint by someone there");
    Ok(())
}

/// Carries out a new pause or resume of the job once OctoPrint can take it: a pause
/// while it prints, a resume while it is paused. A wish OctoPrint already matches is
/// settled as it is; one it cannot take now (it is starting, finishing, pausing or
/// resuming the other way), or a command it refused, waits for the next reading.
/// Whether a wish was settled (and wants a report, even if nothing changed).
async fn carry_hold(
    ctx: &Ctx,
    octoprint: &crate::octoprint::OctoPrint,
    id: uuid::Uuid,
    state: &str,
    holds_seen: &mut Option<u64>,
) -> bool {
    let holds = holds_of(ctx, id);
    if *holds_seen == Some(holds) {
        return false;
    }
    let pause = held(ctx, id);
    let outcome = match (pause, state) {
        (true, "Printing") => octoprint.pause().await.map(|()| true),
        (false, "Paused") => octoprint.resume().await.map(|()| true),
        (true, "Paused" | "Pausing") | (false, "Printing" | "Resuming") => Ok(true),
        _ => Ok(false),
    };
    match outcome {
        Ok(true) => {
            *holds_seen = Some(holds);
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(job_id = %id, pause, error = %format!("{e:#}"), "OctoPrint did not take the hold; trying again");
            false
        }
    }
}

/// How many pause and resume events the job heard (this run).
fn holds_of(ctx: &Ctx, id: uuid::Uuid) -> u64 {
    ctx.shared
        .read(|b| b.jobs.iter().find(|j| j.id == id).map_or(0, |j| j.holds))
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
    firmware: &mut Option<Option<String>>,
) -> printworks_proto::PrinterStatus {
    let seen = bridge.octoprint.seen().await;
    // Read once per connection of the printer (a key without the SYSTEM permission
    // cannot read it at all: asked once, then not again until the printer reconnects).
    if seen.state == PrinterState::Offline {
        *firmware = None;
    } else if firmware.is_none() {
        *firmware = Some(bridge.octoprint.firmware_version().await);
    }
    let firmware = firmware.clone().flatten();
    let busy = matches!(seen.state, PrinterState::Printing | PrinterState::Paused);
    printworks_proto::PrinterStatus {
        state: seen.state,
        heaters: seen.heaters,
        job_id: live.job.filter(|_| busy),
        progress: live.progress.filter(|_| busy && live.job.is_some()),
        firmware_version: firmware,
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
            holds: 0,
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
