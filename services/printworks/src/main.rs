//! `printworks`: runs the Printworks services. See `printworks --help`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};
use printworks::{Application, Service, ServiceSet};
use printworks_common::audit::integrity;
use printworks_common::clock::{Clock as _, SystemClock};
use printworks_common::crypto::SecretBox;
use printworks_common::settings::{MasterKey, ensure_private_dir, parse_blob_url, parse_duration};
use printworks_common::{Settings, db, server, telemetry};

/// mimalloc instead of the C library's allocator: when thousands of printer
/// connections close, their memory goes back to the system (with glibc's allocator
/// none of it did, and a reconnect storm grew the process further). It costs about
/// 8 KiB more per idle connection; docs/benchmarks.md has the measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Printworks: a self-hostable cloud backend for fleets of networked 3D printers.
///
/// Every setting is read from the environment variable shown (or the flag), and each has a
/// default that runs on a laptop. A bad value stops start-up with one line naming it.
#[derive(Parser)]
#[command(name = "printworks", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    settings: Settings,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run services in this process (all four by default), applying pending migrations
    /// first. Stops gracefully on SIGTERM or Ctrl-C.
    Serve {
        /// Which services to run: `all`, or a comma-separated list of account, org,
        /// pairing, relay (one per Deployment when scaled out).
        #[arg(
            long,
            env = "PRINTWORKS_SERVICES",
            value_enum,
            value_delimiter = ',',
            default_value = "all"
        )]
        services: Vec<Service>,
    },
    /// Apply pending database migrations and exit. Safe to run from several replicas at
    /// once: an advisory lock serialises them.
    Migrate,
    /// Manage the keys that sign access and ID tokens.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Back up the database into the blob store (encrypted), list the backups, restore
    /// one into an empty database (docs/operations.md, "Backups").
    Backup {
        /// The key that encrypts backups: 32 bytes in base64, not the master key. Unset:
        /// <data dir>/keys/backup.key, created on first use.
        #[arg(long = "backup-key", global = true, env = "PRINTWORKS_BACKUP_KEY", value_name = "BASE64", hide_env_values = true, value_parser = MasterKey::parse_setting)]
        key: Option<MasterKey>,
        /// Where backups are kept: `gs://bucket/prefix` or `file:///absolute/dir`, ideally
        /// apart from the job files (a bucket only the backup job may write). Unset: the
        /// blob store (PRINTWORKS_BLOB_URL), under backups/.
        #[arg(long = "backup-url", global = true, env = "PRINTWORKS_BACKUP_URL", value_name = "URL", value_parser = parse_blob_url)]
        url: Option<url::Url>,
        #[command(subcommand)]
        action: BackupAction,
    },
    /// The reference printer agent: what a printer's firmware does to pair with
    /// Printworks and talk to it.
    Printer(printworks_agent::cli::PrinterArgs),
}

#[derive(Subcommand)]
enum BackupAction {
    /// Take a consistent backup of DATABASE_URL's database now, then remove the backups
    /// older than the retention (never the newest).
    Create {
        /// How long backups are kept (e.g. `30d`).
        #[arg(long, env = "PRINTWORKS_BACKUP_RETENTION", value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
        retention: std::time::Duration,
    },
    /// List the backups in the blob store, oldest first.
    List,
    /// Restore a backup into DATABASE_URL, which must be an empty database, and verify it:
    /// row counts, every audit chain and checkpoint. Needs the master key the backed-up
    /// deployment used.
    Restore {
        /// The backup's id, as `backup list` shows it.
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check every audit chain record by record: an edited, removed or reordered record
    /// is reported with the first one that breaks its chain. Exits 1 if any chain is broken.
    Verify,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Publish a new token signing key now. It starts signing 10 minutes later (so that
    /// every JWKS cache has it first); the keys it replaces stay published until the last
    /// token they signed has expired.
    Rotate,
    /// Rotate the master key kept in the data directory (keys/master.key): the old one is
    /// kept in keys/previous/ and every secret is sealed again under the new one. Stop the
    /// servers first and start them after. With PRINTWORKS_MASTER_KEY set, rotate by
    /// configuration instead (see `new-master` and `reseal`).
    RotateMaster,
    /// Seal again, under PRINTWORKS_MASTER_KEY, what the keys in
    /// PRINTWORKS_MASTER_KEY_PREVIOUS (or keys/previous/) sealed. Run it once every replica
    /// runs with the new key; drop the previous keys once `--check` finds nothing left.
    Reseal {
        /// Only count what is still sealed under a previous key (exits 1 if anything is).
        #[arg(long)]
        check: bool,
    },
    /// Print a new random master key (base64), for PRINTWORKS_MASTER_KEY.
    NewMaster,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return settings_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("printworks: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("printworks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    telemetry::init(settings.log_format, &settings.log_filter)?;
    if let Command::Printer(args) = cli.command {
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            server::shutdown_signal().await;
            on_signal.cancel();
        });
        return printworks_agent::cli::run(args, SystemClock.now(), stop).await;
    }
    if let Command::Backup { key, url, action } = cli.command {
        let creating = matches!(action, BackupAction::Create { .. });
        let key = printworks::backup::backup_key(&settings, key, creating)?;
        let mut at = settings.clone();
        if url.is_some() {
            at.relay.blob_url = url;
        }
        let store = printworks_relay::blob::from_settings(&at).await?;
        return backup_command(&settings, &*store, &key, action).await;
    }
    let database_url = settings
        .resolve_database_url()
        .map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Printer(_) | Command::Backup { .. } => Ok(()),
        Command::Migrate => {
            let pool = db::connect(&settings, &database_url).await?;
            db::migrate(&pool).await?;
            tracing::info!(database = %database_url.redacted(), "database is up to date");
            pool.close().await;
            Ok(())
        }
        Command::Keys {
            action: KeysAction::NewMaster,
        } => {
            say(&printworks::keys::new_master_key());
            Ok(())
        }
        Command::Keys {
            action: KeysAction::RotateMaster,
        } => {
            let pool = db::connect(&settings, &database_url).await?;
            db::migrate(&pool).await?;
            let rotated = printworks::keys::rotate_master_file(&settings, &pool).await?;
            say(&format!(
                "new master key {} in {}",
                rotated.new_key_id,
                settings.data_dir.join("keys").join("master.key").display()
            ));
            say(&format!(
                "resealed {} values under it ({} under no key known here, left as they are)",
                rotated.resealed.resealed, rotated.resealed.unopenable
            ));
            say(&format!(
                "the old key is kept in {}: delete it once `printworks keys reseal --check` finds nothing left",
                rotated.previous_file.display()
            ));
            pool.close().await;
            Ok(())
        }
        Command::Keys {
            action: KeysAction::Reseal { check },
        } => {
            let pool = db::connect(&settings, &database_url).await?;
            db::migrate(&pool).await?;
            let r = printworks::keys::reseal(&settings, &pool, check).await?;
            pool.close().await;
            if check {
                say(&format!(
                    "{} values under a previous key ({} under no key known here)",
                    r.resealed, r.unopenable
                ));
                anyhow::ensure!(
                    r.resealed == 0,
                    "values are still sealed under a previous key"
                );
            } else {
                say(&format!(
                    "resealed {} values ({} under no key known here, left as they are)",
                    r.resealed, r.unopenable
                ));
            }
            Ok(())
        }
        Command::Keys {
            action: KeysAction::Rotate,
        } => {
            let pool = db::connect(&settings, &database_url).await?;
            db::migrate(&pool).await?;
            let secrets = SecretBox::from_settings(&settings)?;
            let rotation = printworks_account::keys::rotate(
                &pool,
                &secrets,
                SystemClock.now(),
                printworks_account::keys::PUBLISH_LEAD,
                settings.account.access_token_ttl,
            )
            .await?;
            report_rotation(&rotation);
            pool.close().await;
            Ok(())
        }
        Command::Audit {
            action: AuditAction::Verify,
        } => {
            let pool = db::connect(&settings, &database_url).await?;
            let secrets = SecretBox::load(&settings, &pool).await?;
            let rule = integrity::RetentionRule {
                now: SystemClock.now(),
                retention: settings.org.audit_retention,
            };
            let results = integrity::verify_all(&pool, &secrets, rule).await?;
            pool.close().await;
            if report_verification(&results) {
                Ok(())
            } else {
                anyhow::bail!("the audit log has been tampered with")
            }
        }
        Command::Serve { services } => {
            let services = ServiceSet::from_list(&services);
            ensure_private_dir(&settings.data_dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create PRINTWORKS_DATA_DIR {}: {e}",
                    settings.data_dir.display()
                )
            })?;
            let pool = db::connect(&settings, &database_url).await?;
            db::migrate(&pool).await?;
            let app = Application::build(
                settings.clone(),
                &services,
                pool.clone(),
                Arc::new(SystemClock),
            )
            .await?;
            tracing::info!(
                address = %app.local_addr(),
                printer_endpoint = ?app.printer_addr(),
                public_url = %settings.public_url,
                services = ?services.names(),
                database = %database_url.redacted(),
                "printworks is serving"
            );
            let token = app.shutdown_token();
            tokio::spawn(async move {
                server::shutdown_signal().await;
                token.cancel();
            });
            app.run().await?;
            pool.close().await;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// `printworks backup ...`: listing needs only the blob store and the backup key; taking
/// and restoring a backup also the database.
async fn backup_command(
    settings: &Settings,
    store: &dyn printworks_relay::blob::BlobStore,
    key: &MasterKey,
    action: BackupAction,
) -> anyhow::Result<()> {
    use printworks::backup::{self, Listed};
    let database = || async {
        let url = settings
            .resolve_database_url()
            .map_err(anyhow::Error::msg)?;
        db::connect(settings, &url).await
    };
    match action {
        BackupAction::Create { retention } => {
            let pool = database().await?;
            let m = backup::create(&pool, store, key, SystemClock.now()).await;
            pool.close().await;
            let m = m?;
            say(&format!(
                "backup {} taken: schema {}, {} tables, {} rows, {} bytes sealed",
                m.id,
                m.schema_version,
                m.tables.len(),
                m.rows(),
                m.sealed_bytes
            ));
            for id in backup::prune(store, key, SystemClock.now(), retention).await? {
                say(&format!("backup {id} removed (older than the retention)"));
            }
        }
        BackupAction::List => {
            let listed = backup::list(store, key).await?;
            for l in &listed {
                say(&match l {
                    Listed::Complete(m) => format!(
                        "{}  {}  schema {}  {} rows  {} bytes",
                        m.id,
                        m.created_at
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        m.schema_version,
                        m.rows(),
                        m.sealed_bytes
                    ),
                    Listed::Incomplete { id } => format!("{id}  incomplete (no manifest)"),
                    Listed::Unreadable { id } => {
                        format!("{id}  does not open with this backup key")
                    }
                    Listed::Damaged { id, .. } => {
                        format!("{id}  damaged: its data is missing or cut short")
                    }
                });
            }
            if listed.is_empty() {
                say("no backups yet");
            }
        }
        BackupAction::Restore { id } => {
            let pool = database().await?;
            let r = backup::restore(&pool, store, key, id, settings, SystemClock.now()).await;
            pool.close().await;
            let r = r?;
            say(&format!(
                "backup {} restored: schema {}, {} tables, {} rows; {} audit chains verified",
                r.manifest.id,
                r.manifest.schema_version,
                r.manifest.tables.len(),
                r.manifest.rows(),
                r.audit.len()
            ));
        }
    }
    Ok(())
}

/// One line of a command's answer, on standard output.
#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}

#[allow(clippy::print_stdout)] // the command's answer
fn report_rotation(r: &printworks_account::keys::Rotation) {
    let at = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    println!("published key {} (signs from {})", r.kid, at(r.signs_from));
    for (kid, until) in &r.retiring {
        println!("key {kid} stays published until {}", at(*until));
    }
}

/// Prints one line per chain; true when all are intact.
#[allow(clippy::print_stdout)] // the command's answer
fn report_verification(results: &[integrity::Verification]) -> bool {
    let mut all_ok = true;
    for v in results {
        match &v.first_bad_record {
            None => println!("chain {}: ok, {} records", v.chain_id, v.records_checked),
            Some(b) => {
                all_ok = false;
                let id = b.id.map(|i| format!(" ({i})")).unwrap_or_default();
                println!(
                    "chain {}: BROKEN at record #{}{id}: {}",
                    v.chain_id, b.chain_index, b.reason
                );
            }
        }
    }
    if results.is_empty() {
        println!("no audit records yet");
    }
    all_ok
}

/// Help and version go to standard output as usual. A bad setting is reported in one
/// line that names its environment variable, without echoing secret values.
fn settings_error(e: &clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    eprintln!("printworks: {}", one_line(e));
    ExitCode::from(2)
}

fn one_line(e: &clap::Error) -> String {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    // "--http-addr <ADDR>" → the argument, and from it the environment variable.
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches("--")
        .to_owned();
    let command = Cli::command();
    let found = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
        .find(|a| a.get_long() == Some(long.as_str()));
    let reason = std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default();
    match (found, e.kind()) {
        (Some(a), ErrorKind::ValueValidation | ErrorKind::InvalidValue) => {
            let name = a
                .get_env()
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("--{long}"));
            let value = match e.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(v)) if !a.is_hide_env_values_set() => {
                    format!(" {v:?}")
                }
                _ => String::new(),
            };
            let reason = if reason.is_empty() {
                match e.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(v)) => format!("expected one of {}", v.join(", ")),
                    _ => "is not valid".to_owned(),
                }
            } else {
                reason
            };
            format!("invalid {name} (--{long}){value}: {reason}")
        }
        _ => e
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid arguments")
            .trim_start_matches("error: ")
            .to_owned(),
    }
}
