//! Every service declares its routes the same way: one [`RouteTable`] whose rows carry
//! the method, the path, the handler, who may call it ([`Access`]) and any limit of its
//! own (body size, a longer deadline, the per-address rate limit). The router is built
//! from the table, and the scope an access token must grant is enforced here, from the
//! row, before the handler runs — nowhere else. Handlers that act for a token's caller
//! take [`crate::auth::Auth`], which only this layer fills.
//!
//! The tests read every table ([`RouteTable::specs`]): each row against the OpenAPI
//! document's `security` and `x-required-scope`, and each scoped row against callers
//! without a token and with a token lacking the scope.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::auth::{Caller, Scope, authenticate, bearer_token};
use crate::context::AppContext;
use crate::http::{LongerRoute, rate_limit, service_index};
use crate::settings::Settings;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone. The route serves public data, or checks by itself what the request
    /// carries (a pairing code, a password, a signed proof); a page may read an
    /// optional browser session.
    Public,
    /// A signed-in person's browser session (the account service's cookie), checked by
    /// the handler's session extractor; anonymous callers get 401.
    Session,
    /// An access token that grants the scope, checked by the table's layer.
    Token(Scope),
    /// A browser session, or else an access token that grants the scope (checked by
    /// the table's layer when a token is sent).
    SessionOrToken(Scope),
    /// An OAuth client authenticating itself (HTTP Basic or form), checked by the
    /// handler as RFC 6749 describes; some grants need no client secret.
    Client,
    /// A printer's client certificate, on the printer endpoint's mutual TLS.
    Printer,
    /// A printer upload key (`X-Api-Key`, as slicers send an OctoPrint key), checked by
    /// the handler; a request without a valid one gets 403, as OctoPrint answers.
    UploadKey,
}

impl Access {
    /// The scope a token must grant, if the route takes tokens.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Access::Token(s) | Access::SessionOrToken(s) => Some(s),
            _ => None,
        }
    }
}

/// The body a route accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLimit {
    /// `PRINTWORKS_MAX_BODY_BYTES`, the limit of every route.
    Default,
    /// At most this many bytes.
    Max(usize),
    /// Streamed by the handler under a limit of its own (a print job's upload).
    Streamed,
}

/// How long a route may take to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// `PRINTWORKS_REQUEST_TIMEOUT`.
    Request,
    /// `PRINTWORKS_UPLOAD_TIMEOUT`: an upload streaming to storage.
    Upload,
}

impl Deadline {
    fn longer_than_request(self, settings: &Settings) -> Option<Duration> {
        match self {
            Deadline::Request => None,
            Deadline::Upload => Some(settings.relay.upload_timeout),
        }
    }
}

/// One row of a table, without its handler: what the tests and the docs read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    /// The whole path template, prefix included (`/org/v1/organizations/{org}`).
    pub path: String,
    pub access: Access,
    pub body: BodyLimit,
    pub deadline: Deadline,
    /// Limited per source address with the service's other limited routes (429).
    pub rate_limited: bool,
}

/// A service's routes, one row each.
pub struct RouteTable<S> {
    prefix: &'static str,
    rows: Vec<(RouteSpec, MethodRouter<S>)>,
}

macro_rules! method_rows {
    ($($name:ident => $method:ident),* $(,)?) => {$(
        #[doc = concat!("A `", stringify!($method), "` row: `path` under the table's prefix.")]
        pub fn $name<H, T>(self, path: &'static str, access: Access, handler: H) -> Self
        where
            H: Handler<T, S>,
            T: 'static,
        {
            self.row(Method::$method, path, access, on(MethodFilter::$method, handler))
        }
    )*};
}

impl<S> RouteTable<S>
where
    S: Clone + Send + Sync + 'static,
{
    /// A table whose paths are under `prefix` (`""` for paths written whole).
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            rows: Vec::new(),
        }
    }

    method_rows!(get => GET, post => POST, put => PUT, patch => PATCH, delete => DELETE);

    /// `GET <prefix>/`: the service's name and version, so the wiring is visible.
    pub fn index(self, name: &'static str, version: &'static str) -> Self {
        self.row(
            Method::GET,
            "/",
            Access::Public,
            service_index(name, version),
        )
    }

    fn row(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<S>,
    ) -> Self {
        let spec = RouteSpec {
            method,
            path: format!("{}{path}", self.prefix),
            access,
            body: BodyLimit::Default,
            deadline: Deadline::Request,
            rate_limited: false,
        };
        self.rows.push((spec, handler));
        self
    }

    fn last(&mut self) -> &mut RouteSpec {
        #[allow(clippy::expect_used)]
        let (spec, _) = self
            .rows
            .last_mut()
            .expect("a limit follows the row it belongs to");
        spec
    }

    /// The previous row accepts bodies up to `bytes`.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.last().body = BodyLimit::Max(bytes);
        self
    }

    /// The previous row's handler streams its body under a limit of its own.
    pub fn streamed_body(mut self) -> Self {
        self.last().body = BodyLimit::Streamed;
        self
    }

    /// The previous row may take `PRINTWORKS_UPLOAD_TIMEOUT`.
    pub fn upload_deadline(mut self) -> Self {
        self.last().deadline = Deadline::Upload;
        self
    }

    /// The previous row is limited per source address (it lets strangers guess).
    pub fn rate_limited(mut self) -> Self {
        self.last().rate_limited = true;
        self
    }

    /// Adds another table's rows (a service's printer routes next to its own).
    pub fn merge(mut self, other: RouteTable<S>) -> Self {
        self.rows.extend(other.rows);
        self
    }

    /// The rows, without handlers.
    pub fn specs(&self) -> Vec<RouteSpec> {
        self.rows.iter().map(|(spec, _)| spec.clone()).collect()
    }

    /// The rows allowed longer than the request timeout, for the deadline layer.
    pub fn longer_routes(&self, settings: &Settings) -> Vec<LongerRoute> {
        self.rows
            .iter()
            .filter_map(|(spec, _)| {
                Some(LongerRoute {
                    method: spec.method.clone(),
                    route: spec.path.clone(),
                    timeout: spec.deadline.longer_than_request(settings)?,
                })
            })
            .collect()
    }

    /// The router: each row's handler behind its limits and its access check. The rate
    /// limit is one bucket per source address for all the limited rows of this table.
    /// Must be called inside the runtime when a row is rate limited.
    pub fn into_router(self, ctx: &AppContext) -> Router<S> {
        let limit = self
            .rows
            .iter()
            .any(|(spec, _)| spec.rate_limited)
            .then(|| rate_limit(&ctx.settings));
        let mut router = Router::new();
        for (spec, mut handler) in self.rows {
            handler = match spec.body {
                BodyLimit::Default => handler,
                BodyLimit::Max(n) => handler.layer(DefaultBodyLimit::max(n)),
                BodyLimit::Streamed => handler.layer(DefaultBodyLimit::disable()),
            };
            if let Some(scope) = spec.access.scope() {
                let session_instead = matches!(spec.access, Access::SessionOrToken(_));
                handler = handler.route_layer(middleware::from_fn_with_state(
                    (ctx.clone(), scope, session_instead),
                    enforce_access,
                ));
            }
            if spec.rate_limited
                && let Some(limit) = &limit
            {
                handler = handler.route_layer(limit.clone());
            }
            router = router.route(&spec.path, handler);
        }
        router
    }
}

/// The access check of a row that takes tokens: a token that grants `scope`, whose
/// caller the handler then reads with [`crate::auth::Auth`]. A row that also takes a
/// browser session (`session_instead`) lets a request without a token through to the
/// handler, which checks the session.
async fn enforce_access(
    State((ctx, scope, session_instead)): State<(AppContext, Scope, bool)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    if session_instead && bearer_token(&parts).is_none() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match authenticate(&ctx, &parts, scope).await {
        Ok(caller) => {
            parts.extensions.insert::<Caller>(caller);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(refused) => refused.into_response(),
    }
}
