//! `printworks printer …`: the agent's commands, as clap arguments ([`PrinterArgs`]) and
//! what each does ([`run`]). The `printworks` binary mounts them as its `printer`
//! subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use printworks_proto::printer::path;
use tokio_util::sync::CancellationToken;

use crate::octoprint::OctoPrint;
use crate::run::{Bridge, RunOptions};
use crate::{PairOptions, PrinterInfo, StateDir};

/// Where `pair` finds Printworks unless told: the server's own default public URL
/// (`printworks_common::settings::DEFAULT_PUBLIC_URL`, what `printworks serve` listens
/// on out of the box), kept here so that the agent does not depend on the server.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

// No doc comment: the `printer` subcommand takes its help from the variant that holds
// these arguments.
#[derive(Args)]
pub struct PrinterArgs {
    /// The printer's state directory: its key, certificate, the CA it trusts and
    /// its shared secret (created owner-only).
    #[arg(
        long,
        global = true,
        env = "PRINTWORKS_PRINTER_STATE",
        value_name = "DIR",
        default_value = "./.printworks-printer"
    )]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub action: PrinterAction,
}

#[derive(Subcommand)]
pub enum PrinterAction {
    /// Pair this printer: shows a six-digit code to enter in Printworks (valid ten
    /// minutes), waits until someone does, and keeps the credentials.
    Pair {
        /// The Printworks public API.
        #[arg(long, env = "PRINTWORKS_SERVER", value_name = "URL", default_value = DEFAULT_PUBLIC_URL)]
        server: String,
        /// The printer's serial number [default: PW-VIRTUAL-0001; with --octoprint, one
        /// made once and kept in the state directory].
        #[arg(long)]
        serial: Option<String>,
        /// The printer's model [default: Printworks Virtual Printer; with --octoprint,
        /// the model of OctoPrint's printer profile].
        #[arg(long, conflicts_with = "octoprint")]
        model: Option<String>,
        /// The printer's firmware version [default: the agent's version; with
        /// --octoprint, the firmware OctoPrint's printer reported].
        #[arg(long, conflicts_with = "octoprint")]
        firmware_version: Option<String>,
        #[command(flatten)]
        octoprint: OctoPrintArgs,
    },
    /// Ask the printer endpoint who it takes this printer for (checks the credentials).
    Identity,
    /// Get a new certificate: over the printer endpoint while the current one is
    /// valid, with the shared secret after it expired.
    Renew,
    /// Run the printer: hold the connection to the printer endpoint, download and
    /// "print" the jobs it is sent (checking their digest and signature first), apply
    /// settings, report every state. Stops on SIGTERM or Ctrl-C.
    Run {
        /// How long a simulated print takes, in seconds.
        #[arg(long, default_value = "20", value_parser = clap::value_parser!(u32).range(0..=86400))]
        print_seconds: u32,
        #[command(flatten)]
        octoprint: OctoPrintArgs,
        /// Leave each job's file in OctoPrint after it ended (with --octoprint).
        #[arg(long, requires = "octoprint")]
        octoprint_keep_files: bool,
    },
}

/// The bridge to OctoPrint: the printer is the one OctoPrint drives.
#[derive(Args)]
pub struct OctoPrintArgs {
    /// Bridge to the OctoPrint server at URL: its printer is the printer (e.g.
    /// http://127.0.0.1:5000).
    #[arg(long, value_name = "URL", requires = "octoprint_key_file")]
    pub octoprint: Option<String>,
    /// A file holding OctoPrint's API key, readable by its owner only (chmod 600).
    #[arg(long, value_name = "FILE", requires = "octoprint")]
    pub octoprint_key_file: Option<PathBuf>,
}

impl OctoPrintArgs {
    fn connect(&self) -> anyhow::Result<Option<OctoPrint>> {
        match (&self.octoprint, &self.octoprint_key_file) {
            (Some(url), Some(key)) => Ok(Some(OctoPrint::new(url, key)?)),
            _ => Ok(None),
        }
    }
}

/// Runs one of the agent's commands. `now` is the wall clock when the command started
/// (the caller reads it: time is a parameter here, as everywhere in the workspace);
/// `renew` judges the certificate's validity by it. `stop` is cancelled when the
/// process is asked to stop (the binary listens for the signals); `run` then ends.
#[allow(clippy::print_stdout)] // the commands' answers
pub async fn run(
    args: PrinterArgs,
    now: time::OffsetDateTime,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let state_dir = args.state_dir.as_path();
    let state = StateDir::new(state_dir);
    match args.action {
        PrinterAction::Pair {
            server,
            serial,
            model,
            firmware_version,
            octoprint,
        } => {
            if state.is_paired() {
                anyhow::bail!(
                    "{} already holds a paired printer; pair again with another --state-dir, or remove it first",
                    state_dir.display()
                );
            }
            let info = match octoprint.connect()? {
                Some(octoprint) => {
                    let mut info = octoprint.identity(state_dir).await?;
                    if let Some(serial) = serial {
                        info.serial = serial;
                    }
                    info
                }
                None => PrinterInfo {
                    serial: serial.unwrap_or_else(|| "PW-VIRTUAL-0001".into()),
                    model: model.unwrap_or_else(|| "Printworks Virtual Printer".into()),
                    firmware_version: firmware_version
                        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
                },
            };
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?;
            let saved = crate::pair(
                &http,
                &server,
                &info,
                &state,
                &PairOptions {
                    max_poll_interval: None,
                },
                |code, valid| {
                    println!(
                        "Pairing code: {} {} (valid {} minutes). Enter it in Printworks to add this printer.",
                        &code[..3],
                        &code[3..],
                        valid.as_secs() / 60
                    );
                },
            )
            .await?;
            println!(
                "Paired: printer {} in organization \"{}\". Credentials are in {}.",
                saved.printer.printer_id,
                saved.printer.organization_name,
                state_dir.display()
            );
            Ok(())
        }
        PrinterAction::Identity => {
            let saved = state.load()?;
            let res = crate::printer_client(&saved)?
                .get(format!("{}{}", saved.printer.printer_url, path::IDENTITY))
                .send()
                .await?;
            let status = res.status();
            let body = res.text().await?;
            println!("{body}");
            anyhow::ensure!(
                status.is_success(),
                "the printer endpoint answered {status}"
            );
            Ok(())
        }
        PrinterAction::Run {
            print_seconds,
            octoprint,
            octoprint_keep_files,
        } => {
            let octoprint = octoprint.connect()?.map(|o| Bridge {
                keep_files: octoprint_keep_files,
                ..Bridge::new(o)
            });
            let options = RunOptions {
                print_time: Duration::from_secs(u64::from(print_seconds)),
                octoprint,
                ..Default::default()
            };
            crate::run::run(&state, options, stop).await
        }
        PrinterAction::Renew => {
            let saved = crate::renew(&state, now).await?;
            println!(
                "New certificate for printer {}, valid until {}.",
                saved.printer.printer_id,
                crate::certificate_expiry(&saved)?
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            );
            Ok(())
        }
    }
}
