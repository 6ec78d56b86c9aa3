//! Jobs end to end: submitted through the public API, seen by a printer (the agent's
//! event stream and download), on the same replica or another.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use printworks_agent::Saved;
use printworks_agent::run::Events;
use printworks_proto::{JobStatusReport, PrinterEvent, ReportedState};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::measure::{CpuShare, Latencies, Server, round};

/// Submits `body` as a G-code job for `printer` at `api`; returns its id.
async fn submit(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    printer: Uuid,
    name: &str,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<Uuid> {
    let res = http
        .post(format!("{api}/relay/v1/printers/{printer}/jobs"))
        .query(&[("name", name)])
        .bearer_auth(token)
        .header("content-type", "text/x-gcode")
        .body(body)
        .send()
        .await?;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "submit: {status} {text}");
    let v: Value = serde_json::from_str(&text)?;
    serde_json::from_value(v["id"].clone()).context("no job id")
}

/// Waits for the job event of `job`, skipping everything else.
async fn job_event(events: &mut Events, job: Uuid) -> anyhow::Result<()> {
    loop {
        match events.next(Duration::from_secs(120)).await? {
            Some(PrinterEvent::Job(j)) if j.id == job => return Ok(()),
            Some(_) => {}
            None => anyhow::bail!("the event stream ended"),
        }
    }
}

/// The printer's client and its event stream at `printer_url`, open, with what the
/// stream sends on opening (settings, jobs left over) read until it pauses.
async fn listening(saved: &Saved, printer_url: &str) -> anyhow::Result<(reqwest::Client, Events)> {
    let client = printworks_agent::printer_client(saved)?;
    let mut events = Events::open(&client, printer_url).await?;
    while let Ok(next) = tokio::time::timeout(
        Duration::from_millis(300),
        events.next(Duration::from_secs(120)),
    )
    .await
    {
        next?;
    }
    Ok((client, events))
}

/// The printer says the job is done (so that the queue does not grow).
async fn complete(client: &reqwest::Client, printer_url: &str, job: Uuid) -> anyhow::Result<()> {
    let res = client
        .post(format!(
            "{printer_url}{}",
            printworks_proto::printer::path::job_status(job)
        ))
        .json(&JobStatusReport {
            message: None,
            progress: None,
            state: ReportedState::Completed,
        })
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "report: {}", res.status());
    Ok(())
}

/// `dispatch`: a printer holds its event stream on the replica at `printer_url`; jobs
/// are submitted one after another at `api` (another replica); the time from sending
/// each submission to its job event at the printer.
pub async fn dispatch(
    saved: &Saved,
    api: &str,
    printer_url: &str,
    token: &str,
    count: usize,
) -> anyhow::Result<Value> {
    let (client, mut events) = listening(saved, printer_url).await?;
    let http = reqwest::Client::new();
    let body = printworks_gcode::sample::sample(4096);
    let (mut to_event, mut to_answer) = (Latencies::default(), Latencies::default());
    for i in 0..count {
        let t0 = Instant::now();
        let job = submit(
            &http,
            api,
            token,
            saved.printer.printer_id,
            &format!("dispatch {i}"),
            body.clone(),
        )
        .await?;
        to_answer.record(t0.elapsed());
        job_event(&mut events, job).await?;
        to_event.record(t0.elapsed());
        complete(&client, printer_url, job).await?;
    }
    Ok(json!({
        "jobs": count,
        "submit_to_event": to_event.summary(),
        "submit_answered": to_answer.summary(),
    }))
}

/// `transfer`: one job of `mib` MiB uploaded (hashed, checked, sealed, stored), then
/// streamed to the printer (unsealed, over mutual TLS); the rate of each and the most
/// memory the server held above its resting size while doing it.
pub async fn transfer(
    saved: &Saved,
    api: &str,
    printer_url: &str,
    token: &str,
    server: Server,
    mib: usize,
) -> anyhow::Result<Value> {
    let (client, mut events) = listening(saved, printer_url).await?;
    let http = reqwest::Client::new();
    let body = bytes::Bytes::from(printworks_gcode::sample::sample(mib * 1024 * 1024));
    let size = body.len();

    let rest = server.rss_kib()?;
    server.reset_peak()?;
    let cpu = CpuShare::start(Some(server));
    let t0 = Instant::now();
    let job = submit(
        &http,
        api,
        token,
        saved.printer.printer_id,
        "transfer",
        body,
    )
    .await?;
    let upload_secs = t0.elapsed().as_secs_f64();
    let upload_cpu = cpu.read();
    let upload_peak = server.peak_kib()?.saturating_sub(rest);

    job_event(&mut events, job).await?;
    let rest = server.rss_kib()?;
    server.reset_peak()?;
    let cpu = CpuShare::start(Some(server));
    let t0 = Instant::now();
    let mut res = client
        .get(format!(
            "{printer_url}{}",
            printworks_proto::printer::path::job_content(job)
        ))
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "download: {}", res.status());
    let mut got = 0usize;
    while let Some(chunk) = res.chunk().await? {
        got += chunk.len();
    }
    let download_secs = t0.elapsed().as_secs_f64();
    let download_cpu = cpu.read();
    let download_peak = server.peak_kib()?.saturating_sub(rest);
    anyhow::ensure!(got == size, "downloaded {got} of {size} bytes");
    complete(&client, printer_url, job).await?;
    #[allow(clippy::cast_precision_loss)]
    let mb = size as f64 / 1e6;
    Ok(json!({
        "bytes": size,
        "upload_mb_per_sec": round(mb / upload_secs),
        "upload_server_cpu": upload_cpu,
        "upload_peak_above_rest_kib": upload_peak,
        "download_mb_per_sec": round(mb / download_secs),
        "download_server_cpu": download_cpu,
        "download_peak_above_rest_kib": download_peak,
    }))
}
