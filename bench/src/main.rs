//! `printworks-bench`: the load generators of `make bench` (docs/benchmarks.md).
//!
//! Each command drives a running server (started, pinned to its core, by
//! `bench/run.py`) as real clients do, measures, and prints one line of JSON. Memory
//! and CPU are read from `/proc` for the server's process id when given.

mod http_load;
mod jobs;
mod measure;
mod printers;
mod setup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::measure::Server;
use crate::setup::Fixture;

#[derive(Parser)]
#[command(about = "Load generators for make bench (see docs/benchmarks.md)")]
struct Cli {
    /// Where `setup` keeps the account, token and paired printers.
    #[arg(long, global = true, default_value = ".printworks/bench")]
    state: PathBuf,
    /// The server's process id, to read its memory and CPU time.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An admin, their organization, an access token, and printers paired.
    Setup {
        #[arg(long)]
        api: String,
        /// The server's data directory (its e-mails are read from there).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        printers: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Printers hold their event streams; then all drop and come back.
    Idle {
        #[arg(long)]
        printer_url: String,
        #[arg(long)]
        printers: usize,
        #[arg(long, default_value_t = 64)]
        sources: usize,
        #[arg(long, default_value_t = 60)]
        hold_secs: u64,
    },
    /// Full mutual-TLS handshakes, one request each.
    Handshakes {
        #[arg(long)]
        printer_addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        workers: usize,
        #[arg(long, default_value_t = 16)]
        sources: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// One API route under load.
    Api {
        #[arg(long)]
        addr: SocketAddr,
        /// `db`: an organization read with the bearer token (verification and a
        /// database read); `memory`: `GET /healthz`.
        #[arg(long)]
        route: Route,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Logins, while API callers keep calling.
    Login {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        #[arg(long, default_value_t = 4)]
        api_connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Submit at one replica, the job event at a printer on another.
    Dispatch {
        #[arg(long)]
        api: String,
        #[arg(long)]
        printer_url: String,
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// One large job uploaded, then streamed to the printer.
    Transfer {
        #[arg(long)]
        api: String,
        #[arg(long)]
        printer_url: String,
        #[arg(long, default_value_t = 512)]
        mib: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Route {
    Db,
    Memory,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let server = cli.server_pid.map(Server);
    let state = &cli.state;
    let need = |s: Option<Server>| s.context("--server-pid is needed for this benchmark");
    let result = match cli.command {
        Command::Setup {
            api,
            data_dir,
            printers,
            concurrency,
        } => setup::run(&api, &data_dir, state, printers, concurrency).await?,
        Command::Idle {
            printer_url,
            printers,
            sources,
            hold_secs,
        } => {
            let saved = Fixture::printers(state, 0..printers)?;
            printers::idle(
                &saved,
                &printer_url,
                need(server)?,
                sources,
                Duration::from_secs(hold_secs),
            )
            .await?
        }
        Command::Handshakes {
            printer_addr,
            workers,
            sources,
            seconds,
        } => {
            let saved = Fixture::printers(state, 0..workers)?;
            printers::handshakes(&saved, printer_addr, server, sources, seconds).await?
        }
        Command::Api {
            addr,
            route,
            connections,
            seconds,
        } => {
            let make = match route {
                Route::Db => {
                    let f = Fixture::load(state)?;
                    let path = format!("/org/v1/organizations/{}", f.organization_id);
                    http_load::get(addr, &path, Some(&f.access_token))
                }
                Route::Memory => http_load::get(addr, "/healthz", None),
            };
            http_load::api(addr, make, connections, seconds, server).await?
        }
        Command::Login {
            addr,
            workers,
            api_connections,
            seconds,
        } => {
            let f = Fixture::load(state)?;
            let path = format!("/org/v1/organizations/{}", f.organization_id);
            let background = http_load::get(addr, &path, Some(&f.access_token));
            http_load::login(
                &format!("http://{addr}"),
                addr,
                workers,
                background,
                api_connections,
                seconds,
                server,
            )
            .await?
        }
        Command::Dispatch {
            api,
            printer_url,
            count,
        } => {
            let f = Fixture::load(state)?;
            let saved = Fixture::printers(state, 0..1)?;
            jobs::dispatch(&saved[0], &api, &printer_url, &f.access_token, count).await?
        }
        Command::Transfer {
            api,
            printer_url,
            mib,
        } => {
            let f = Fixture::load(state)?;
            let saved = Fixture::printers(state, 1..2)?;
            jobs::transfer(
                &saved[0],
                &api,
                &printer_url,
                &f.access_token,
                need(server)?,
                mib,
            )
            .await?
        }
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    Ok(())
}
