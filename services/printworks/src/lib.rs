//! The `printworks` binary's library half: which services run, how their routers are
//! assembled, and the [`Application`] that binds and serves them. Tests build the
//! same [`Application`] the binary runs.

pub mod backup;
pub mod keys;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use printworks_common::clock::SharedClock;
use printworks_common::hooks::PrinterJobs;
use printworks_common::http::{apply_common_layers, health_routes};
use printworks_common::routes::RouteSpec;
use printworks_common::{AppContext, Settings, server};
use printworks_pairing::PrinterCa;
use printworks_relay::{PrinterEndpoint, RelayState};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A service that `printworks serve --services` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Service {
    /// Every service below.
    All,
    /// People, sessions, TOTP, the OAuth2/OpenID Connect provider (/account/v1).
    Account,
    /// Organizations, roles, invitations, teams, projects, audit log (/org/v1).
    Org,
    /// Pairing keys, the printer CA, printer credentials (/pairing/v1).
    Pairing,
    /// Print jobs, blob storage, the printer endpoint (/relay/v1).
    Relay,
}

/// The set of services a process runs; `all` expands to every one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSet(BTreeSet<Service>);

impl ServiceSet {
    pub fn all() -> Self {
        Self::from_list(&[Service::All])
    }

    pub fn from_list(list: &[Service]) -> Self {
        let every = [
            Service::Account,
            Service::Org,
            Service::Pairing,
            Service::Relay,
        ];
        let set = if list.is_empty() || list.contains(&Service::All) {
            every.into_iter().collect()
        } else {
            list.iter().copied().collect()
        };
        Self(set)
    }

    pub fn contains(&self, s: Service) -> bool {
        self.0.contains(&s)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0
            .iter()
            .map(|s| match s {
                Service::All => "all",
                Service::Account => printworks_account::NAME,
                Service::Org => printworks_org::NAME,
                Service::Pairing => printworks_pairing::NAME,
                Service::Relay => printworks_relay::NAME,
            })
            .collect()
    }
}

/// The printer CA, when a service that needs it runs (pairing issues, relay verifies).
pub fn printer_ca(
    ctx: &AppContext,
    services: &ServiceSet,
) -> anyhow::Result<Option<Arc<PrinterCa>>> {
    if services.contains(Service::Pairing) || services.contains(Service::Relay) {
        Ok(Some(Arc::new(PrinterCa::from_settings(
            &ctx.settings,
            ctx.now(),
        )?)))
    } else {
        Ok(None)
    }
}

/// The whole HTTP application for `services`: health routes, each service's routes,
/// and the shared layers around all of them.
pub async fn router(
    ctx: &AppContext,
    services: &ServiceSet,
    ca: Option<&Arc<PrinterCa>>,
    relay: Option<&RelayState>,
) -> anyhow::Result<Router> {
    let mut app = health_routes().into_router(ctx).with_state(ctx.clone());
    // The relay owns print jobs; the services that remove printers fail theirs through
    // it, whichever services this process runs.
    let jobs: Arc<dyn PrinterJobs> = Arc::new(printworks_relay::lifecycle::PrinterJobsOfRelay);
    if services.contains(Service::Account) {
        let orgs = Arc::new(printworks_org::Directory::new(
            ctx.db.clone(),
            ctx.secrets.clone(),
        ));
        app = app.merge(printworks_account::router(ctx.clone(), orgs).await?);
    }
    if services.contains(Service::Org) {
        app = app.merge(printworks_org::router(ctx.clone(), jobs.clone())?);
    }
    if services.contains(Service::Pairing) {
        let ca = ca.context("the pairing service needs the printer CA")?;
        app = app.merge(printworks_pairing::router(
            ctx.clone(),
            ca.clone(),
            jobs.clone(),
        ));
    }
    let mut longer = Vec::new();
    if let Some(relay) = relay {
        app = app.merge(printworks_relay::router(relay.clone()));
        longer = printworks_relay::routes().longer_routes(&ctx.settings);
    }
    // Cura's API answers refusals in Cura's shape, those of the route layers too.
    let app = app.layer(axum::middleware::from_fn(
        printworks_common::cura::in_curas_shape,
    ));
    Ok(apply_common_layers(app, ctx, &longer))
}

/// Every route of every service, as their tables declare them: the health routes, each
/// service's routes, and the printers' routes on the printer endpoint.
pub fn route_specs() -> Vec<RouteSpec> {
    [
        health_routes().specs(),
        printworks_account::routes().specs(),
        printworks_org::routes().specs(),
        printworks_pairing::index().specs(),
        printworks_pairing::routes().specs(),
        printworks_relay::routes().specs(),
        printworks_relay::printer_routes().specs(),
    ]
    .concat()
}

/// The services, bound to their listener and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// The printer endpoint, when the relay service runs here.
    printer: Option<PrinterEndpoint>,
    /// The services' background tasks, started with the application.
    tasks: JoinSet<()>,
    ctx: AppContext,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds `settings.http_addr` (port 0 picks a free port) and assembles the routers.
    /// The database is expected to be migrated.
    pub async fn build(
        settings: Settings,
        services: &ServiceSet,
        db: PgPool,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on PRINTWORKS_HTTP_ADDR {}",
                    settings.http_addr
                )
            })?;
        Self::build_on(listener, settings, services, db, clock).await
    }

    /// Like [`Application::build`], on a listener bound already (tests bind first to
    /// learn the address, which becomes the public URL).
    pub async fn build_on(
        listener: TcpListener,
        settings: Settings,
        services: &ServiceSet,
        db: PgPool,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let mut settings = settings;
        // The printer endpoint is bound first, so that port 0 becomes the real port in
        // the settings (its certificate and the URL given to printers name it).
        let printer_listener = if services.contains(Service::Relay) {
            let l = TcpListener::bind(settings.printer_addr)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on PRINTWORKS_PRINTER_ADDR {}",
                        settings.printer_addr
                    )
                })?;
            settings.printer_addr = l.local_addr()?;
            Some(l)
        } else {
            None
        };
        let keys = Arc::new(printworks_account::keys::Published(db.clone()));
        let ctx = AppContext::new(db, settings, clock, keys).await?;
        // The background work of the services that run here.
        let mut tasks = Vec::new();
        // One e-mail worker for the services that send mail (invitations, address
        // verification); replicas share the outbox safely.
        if services.contains(Service::Account) || services.contains(Service::Org) {
            let sender = printworks_common::mail::sender_from_settings(&ctx)?;
            tasks.push(ctx.outbox.worker(ctx.clone(), sender));
        }
        if services.contains(Service::Org) {
            tasks.extend(printworks_org::tasks(&ctx));
        }
        if services.contains(Service::Pairing) {
            tasks.extend(printworks_pairing::tasks(&ctx));
        }
        let ca = printer_ca(&ctx, services)?;
        let relay = match (&ca, services.contains(Service::Relay)) {
            (Some(ca), true) => Some(RelayState::new(ctx.clone(), ca.clone()).await?),
            _ => None,
        };
        if let Some(relay) = &relay {
            tasks.extend(printworks_relay::tasks(relay));
        }
        let router = router(&ctx, services, ca.as_ref(), relay.as_ref()).await?;
        let tasks = printworks_common::tasks::start(tasks, &ctx.shutdown);
        let printer = match (printer_listener, relay) {
            (Some(l), Some(relay)) => Some(printworks_relay::printer_endpoint(l, relay)?),
            _ => None,
        };
        Ok(Self {
            listener,
            router,
            printer,
            tasks,
            shutdown: ctx.shutdown.clone(),
            ctx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.ctx.settings.http_addr)
    }

    /// Where the printer endpoint listens, when the relay service runs here.
    pub fn printer_addr(&self) -> Option<SocketAddr> {
        self.printer.as_ref().and_then(|p| p.local_addr().ok())
    }

    pub fn context(&self) -> &AppContext {
        &self.ctx
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled and in-flight requests are done, and
    /// the background tasks have stopped — both within one grace period, counted from
    /// the cancellation.
    pub async fn run(mut self) -> std::io::Result<()> {
        let grace = self.ctx.settings.shutdown_grace;
        let mut tasks = std::mem::take(&mut self.tasks);
        let printers = async {
            if let Some(p) = self.printer {
                p.run().await;
            }
        };
        let shutdown = self.shutdown.clone();
        let http = async {
            let served = server::serve(self.listener, self.router, shutdown.clone(), grace).await;
            // However serving ended, the rest stops too.
            shutdown.cancel();
            served
        };
        // The tasks have the same grace period as the requests, from the same moment.
        let stop = self.shutdown.clone();
        let tasks = async {
            stop.cancelled().await;
            let stopped =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if stopped.is_err() {
                tracing::warn!("background tasks still running at the end of the grace period");
            }
        };
        let (http, (), ()) = tokio::join!(http, printers, tasks);
        http
    }
}
