//! The plumbing every Printworks service shares, written once.
//!
//! - [`settings`]: configuration from the environment (and flags), validated at start-up.
//! - [`db`]: the PostgreSQL pool, the embedded migrations and the readiness check.
//! - [`error`]: [`ApiError`], rendered as RFC 9457 `application/problem+json`.
//! - [`http`]: request ids, access logs, metrics, body limits, timeouts, the JSON
//!   extractor and the health routes, assembled by [`http::apply_common_layers`].
//! - [`clock`]: time as a parameter, so expiry is testable without waiting.
//! - [`auth`]: the scope catalogue, access-token verification and the `Auth` extractor.
//! - [`routes`]: the route table every service declares its routes in; the scope a
//!   token needs is enforced from it.
//! - [`audit`]: the hash-chained audit log: the writer every service calls, and the
//!   reading, checkpoints, verification and retention of the audit tables it owns.
//! - [`hooks`]: what one service does when another changes what it depends on.
//! - [`mail`]: the e-mail outbox (nothing lost while the mail server is down).
//! - [`printer`]: what printers and the cloud say to each other (credentials, renewal proofs).
//! - [`crypto`]: random tokens, digests, constant-time comparison, sealing at rest.
//! - [`hashing`]: Argon2id for secrets people choose (passwords, printer PINs).
//! - [`email`], [`names`]: e-mail addresses and names as every service accepts them.
//! - [`telemetry`]: `tracing` set-up, human or JSON.
//! - [`throttle`]: growing waits between failed attempts at a secret, in PostgreSQL.
//! - [`reseal`]: sealing again under a new master key what an old one sealed.
//! - [`server`]: serving a router with graceful shutdown.
//! - [`tasks`]: background work services declare and the binary starts and stops.

pub mod audit;
pub mod auth;
pub mod clock;
pub mod context;
pub mod crypto;
pub mod cura;
pub mod db;
pub mod email;
pub mod error;
pub mod hashing;
pub mod hooks;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod names;
pub mod printer;
pub mod reseal;
pub mod routes;
pub mod server;
pub mod settings;
pub mod tasks;
pub mod telemetry;
pub mod throttle;

pub use context::AppContext;
pub use error::{ApiError, Problem};
pub use settings::Settings;
