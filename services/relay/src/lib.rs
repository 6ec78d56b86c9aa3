//! The relay service: print jobs — sent ([`upload`]), looked at and aborted ([`jobs`]),
//! ended when nobody ends them ([`lifecycle`]) — their sealed storage ([`seal`],
//! [`blob`]), dispatch across replicas ([`dispatch`]), and the printer endpoint — mutual
//! TLS on its own listener ([`endpoint`]) serving the printers' routes ([`printer_api`]).
//! Public routes live under [`PREFIX`]; the printers' under [`PRINTER_PREFIX`].

pub mod blob;
pub mod cura;
pub mod dispatch;
pub mod download;
pub mod endpoint;
pub mod events;
pub mod gcs;
pub mod jobs;
pub mod lifecycle;
mod listen;
pub mod octoprint;
pub mod printer_api;
pub mod registry;
pub mod seal;
pub mod status;
pub mod ufp;
pub mod upload;
pub mod upload_keys;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use printworks_common::AppContext;
use printworks_common::auth::Scope;
use printworks_common::http::apply_common_layers;
use printworks_common::routes::{Access, RouteTable};
use printworks_common::tasks::Task;
use printworks_pairing::PrinterCa;
use tokio::net::TcpListener;

pub use endpoint::{Printer, PrinterEndpoint};

/// The relay's sealed values: every job's data key (the files themselves are sealed
/// under those, which do not change).
pub const SEALED: &[printworks_common::reseal::SealedColumn] =
    &[printworks_common::reseal::SealedColumn {
        table: "print_jobs",
        key: "id",
        key_is_uuid: true,
        column: "key_sealed",
        context_prefix: "job-key:",
    }];

/// The tables the relay owns (see `printworks_common::db::Owned`).
pub const OWNED: printworks_common::db::Owned = printworks_common::db::Owned {
    tables: &[
        "print_jobs",
        "print_job_events",
        "printer_streams",
        "printer_status",
        "printer_status_history",
        "printer_upload_keys",
        "cura_uploads",
    ],
    functions: &["notify_printer_work"],
};

pub const NAME: &str = "relay";
pub const PREFIX: &str = "/relay/v1";
pub use printworks_proto::PRINTER_PREFIX;

#[derive(Clone)]
pub struct RelayState {
    pub ctx: AppContext,
    pub ca: Arc<PrinterCa>,
    pub store: Arc<dyn blob::BlobStore>,
    pub wakers: Arc<dispatch::Wakers>,
    /// Where UFP packages are checked: a few threads of their own.
    pub ufp_checkers: Arc<Checkers>,
    /// Printers whose status changed, for this replica's status streams.
    pub status_hints: status::Hints,
    /// The status streams open with this replica, per caller.
    pub status_streams: Arc<status::Streams>,
}

/// A bounded set of threads for CPU-heavy checks (UFP packages: unzipping and reading
/// every G-code part), apart from the runtime and from the blocking pool where passwords
/// are hashed, so that a few large packages slow neither logins nor anything else. At
/// most `n` run at once; the rest wait their turn.
pub struct Checkers {
    slots: Arc<tokio::sync::Semaphore>,
}

impl Checkers {
    pub fn new(n: usize) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
        }
    }

    /// Runs `check` on a thread of its own once a slot is free. The thread holds the
    /// slot until it ends, even when the request that asked is gone: a caller that hangs
    /// up cannot leave more than `n` checks running.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let slot = self.slots.clone().acquire_owned().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("check".into())
            .spawn(move || {
                let _ = tx.send(check());
                drop(slot);
            })?;
        Ok(rx.await?)
    }
}

impl FromRef<RelayState> for AppContext {
    fn from_ref(s: &RelayState) -> AppContext {
        s.ctx.clone()
    }
}

impl RelayState {
    /// Opens the blob store.
    pub async fn new(ctx: AppContext, ca: Arc<PrinterCa>) -> anyhow::Result<Self> {
        let store = blob::from_settings(&ctx.settings).await?;
        let state = Self {
            wakers: Arc::default(),
            status_hints: status::hints(),
            status_streams: Arc::default(),
            ufp_checkers: Arc::new(Checkers::new(
                usize::try_from(ctx.settings.relay.ufp_checkers).unwrap_or(1),
            )),
            store,
            ca,
            ctx,
        };
        Ok(state)
    }
}

/// The relay's background work: the dispatcher (which wakes the event streams of the
/// printers with new work, on every replica), and hourly the cleanup of unfinished
/// uploads, orphaned and expired jobs ([`lifecycle::cleanup`]).
pub fn tasks(state: &RelayState) -> Vec<Task> {
    let (ctx, wakers) = (state.ctx.clone(), state.wakers.clone());
    let hints = state.status_hints.clone();
    let pruner = state.ctx.clone();
    let cleaner = state.clone();
    vec![
        Task::looping("dispatch", move |stop| {
            dispatch::run(ctx, wakers, hints, stop)
        }),
        Task::periodic("status-history", Duration::from_secs(3600), move || {
            let ctx = pruner.clone();
            async move {
                status::prune(&ctx.db, ctx.now()).await?;
                Ok(())
            }
        }),
        Task::periodic("job-cleanup", Duration::from_secs(3600), move || {
            let state = cleaner.clone();
            async move {
                // Each sweep on its own: one failing does not stop the other.
                let uploads = cura::expire_uploads(&state).await;
                let n = lifecycle::cleanup(&state).await? + uploads?;
                if n > 0 {
                    tracing::info!(removed = n, "unfinished uploads and expired jobs cleaned");
                }
                Ok(())
            }
        }),
    ]
}

/// The public routes (people and apps), under [`PREFIX`].
#[rustfmt::skip]
pub fn routes() -> RouteTable<RelayState> {
    use Access::*;
    use Scope::*;
    RouteTable::new(PREFIX)
        .index(NAME, env!("CARGO_PKG_VERSION"))
        // The body streams to storage under its own limit (PRINTWORKS_MAX_JOB_BYTES).
        .post("/printers/{printer}/jobs", Token(PrintJobWrite), upload::submit).streamed_body().upload_deadline()
        .get("/printers/{printer}/jobs", Token(PrintJobRead), jobs::list)
        .get("/jobs/{job}", Token(PrintJobRead), jobs::get)
        .post("/jobs/{job}/abort", Token(PrintJobWrite), jobs::abort)
        .post("/jobs/{job}/pause", Token(PrintJobWrite), jobs::pause)
        .post("/jobs/{job}/resume", Token(PrintJobWrite), jobs::resume)
        .get("/printers/{printer}/status", Token(PrinterRead), status::get)
        .get("/printers/{printer}/status/events", Token(PrinterRead), status::events)
        .post("/jobs/{job}/start", Token(PrintJobWrite), jobs::start)
        .post("/printers/{printer}/upload-keys", Token(PrintJobWrite), upload_keys::create)
        .get("/printers/{printer}/upload-keys", Token(PrintJobRead), upload_keys::list)
        .delete("/printers/{printer}/upload-keys/{key}", Token(PrintJobWrite), upload_keys::revoke)
        .merge(octoprint_routes())
        .merge(cura_routes())
}

/// UltiMaker Cura's cloud printing API, at the paths Cura builds from its API root.
#[rustfmt::skip]
fn cura_routes() -> RouteTable<RelayState> {
    use Access::Token;
    use Scope::{PrintJobWrite, PrinterRead};
    let connect = RouteTable::new("/connect/v1")
        .get("/clusters", Token(PrinterRead), cura::clusters)
        .get("/clusters/{cluster}/status", Token(PrinterRead), cura::status)
        .post("/clusters/{cluster}/print/{job_id}", Token(PrintJobWrite), cura::print)
        .post("/clusters/{cluster}/print_jobs/{job}/action/{action}", Token(PrintJobWrite), cura::action);
    let uploads = RouteTable::new("/cura/v1")
        .put("/jobs/upload", Token(PrintJobWrite), cura::request_upload)
        // Pre-signed: the token in the path is the credential. The body streams to
        // storage under its own limit (PRINTWORKS_MAX_JOB_BYTES, and the size asked for).
        .put("/uploads/{token}", Access::Public, cura::upload).streamed_body().upload_deadline().rate_limited();
    // Polled by Cura's Marketplace; harmless.
    let packages = RouteTable::new("/cura-packages/v1")
        .get("/user/packages", Access::Public, cura::user_packages);
    connect.merge(uploads).merge(packages)
}

/// The OctoPrint-compatible hosts, one per printer, under [`octoprint::PREFIX`]: the
/// upload key each request carries is checked by the handlers.
#[rustfmt::skip]
fn octoprint_routes() -> RouteTable<RelayState> {
    use Access::UploadKey;
    RouteTable::new(octoprint::PREFIX)
        .get("/{printer}/api/version", UploadKey, octoprint::version).rate_limited()
        .get("/{printer}/api/job", UploadKey, octoprint::job).rate_limited()
        // The file streams to storage under its own limit (PRINTWORKS_MAX_JOB_BYTES).
        .post("/{printer}/api/files/local", UploadKey, octoprint::upload).streamed_body().upload_deadline().rate_limited()
}

/// The printers' routes, under [`PRINTER_PREFIX`] on the printer endpoint, whose mutual
/// TLS has identified the printer before any of them runs.
#[rustfmt::skip]
pub fn printer_routes() -> RouteTable<RelayState> {
    use Access::Printer;
    RouteTable::new(PRINTER_PREFIX)
        .get("/identity", Printer, printer_api::identity)
        .post("/certificate", Printer, printer_api::renew)
        .get("/events", Printer, events::events)
        .get("/jobs/{job}/content", Printer, download::content)
        .post("/jobs/{job}/status", Printer, printer_api::status)
        .post("/settings/applied", Printer, printer_api::settings_applied)
        .post("/status", Printer, status::report)
}

/// The public routes, built from [`routes`].
pub fn router(state: RelayState) -> Router {
    routes().into_router(&state.ctx).with_state(state)
}

/// The printers' routes, built from [`printer_routes`], with the shared layers.
pub fn printer_router(state: RelayState) -> Router {
    let ctx = state.ctx.clone();
    let table = printer_routes();
    let longer = table.longer_routes(&ctx.settings);
    let routes = table.into_router(&ctx).with_state(state);
    apply_common_layers(routes, &ctx, &longer)
}

/// Binds the printer endpoint on `listener` with the printers' routes.
pub fn printer_endpoint(
    listener: TcpListener,
    state: RelayState,
) -> anyhow::Result<PrinterEndpoint> {
    let ca = state.ca.clone();
    let ctx = state.ctx.clone();
    PrinterEndpoint::new(listener, ctx, &ca, printer_router(state))
}

#[cfg(test)]
mod tests {
    use super::Checkers;

    #[tokio::test]
    async fn a_caller_that_hangs_up_leaves_its_check_holding_the_slot() {
        let checkers = Checkers::new(1);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let mut first = Box::pin(checkers.run(move || {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
        }));
        let started = tokio::task::spawn_blocking(move || started_rx.recv());
        tokio::select! {
            _ = &mut first => panic!("the check ended before it was released"),
            r = started => r.unwrap().unwrap(),
        }
        // The request is gone; its check runs on, and still counts.
        drop(first);
        assert_eq!(checkers.slots.available_permits(), 0);
        release_tx.send(()).unwrap();
        assert_eq!(checkers.run(|| 7).await.unwrap(), 7);
    }
}
