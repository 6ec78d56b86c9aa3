//! What the cloud and printers say to each other, as types: the printer endpoint's
//! routes, the events of its stream and the bodies printers send ([`printer`]), pairing
//! and certificate renewal ([`pairing`]), a print job's states and how a printer's
//! reports move them ([`job`]), and the exact bytes the relay signs and the printer
//! verifies ([`job_message`]). Also the catalogue of OAuth scopes ([`Scope`],
//! [`ScopeSet`]) and organization roles ([`Role`]).
//!
//! Shared by the relay (the server side) and the reference printer agent (the printer
//! side), so both speak one protocol. No I/O, no HTTP, no database, no cryptography:
//! serde types and pure functions only, so that firmware can depend on it without the
//! server stack. The OpenAPI document (`openapi/printworks.json`) is the contract; the
//! types serialize to the JSON it describes, field for field.
//!
//! Field order: structs whose JSON was once built with `serde_json::json!` declare
//! their fields in alphabetical order, which is the order `json!` wrote them (the
//! workspace builds `serde_json` without `preserve_order`), so the bytes on the wire
//! are unchanged; the others keep the order of the struct they replace.

pub mod job;
pub mod pairing;
pub mod printer;
mod problem;
mod role;
mod scope;
pub mod status;

pub use job::{JobState, ReportOutcome, ReportedState, hex, job_message};
pub use pairing::{
    Credentials, PairingPending, PairingPollRequest, PairingPrevious, PairingRequestCreate,
    PairingRequestCreated, PrinterChallenge, RenewedCertificate, SecretRenewalRequest,
    renewal_message_from_digest, repair_message_from_digest,
};
pub use printer::{
    AbortEvent, HoldEvent, JobEvent, JobStatusAnswer, JobStatusReport, PRINTER_PREFIX,
    PrinterEvent, PrinterIdentity, SettingsAppliedRequest, SettingsEvent, TlsRenewalRequest,
};
pub use problem::ProblemReport;
pub use role::Role;
pub use scope::{Scope, ScopeSet};
pub use status::{Heater, PrinterState, PrinterStatus, StatusView};
