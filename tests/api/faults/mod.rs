//! Faults, with real processes and a real PostgreSQL (`make test-faults` runs these and
//! `relay::agent::a_download_cut_in_the_middle_resumes_with_range`; `make test` runs
//! them with everything else):
//!
//! - a relay replica killed (`SIGKILL`) while a job is on its way to its printer: the
//!   printer reconnects to the other replica and prints the job exactly once;
//! - `SIGTERM`: requests in flight finish, printers are told to reconnect before their
//!   stream closes, and what the stopping replica had sent is delivered by another;
//! - PostgreSQL restarted under load: 503 while it is away, `/readyz` follows, all
//!   recovers without restarting Printworks, and no accepted job is lost;
//! - the disk of the local blob store full during an upload: 507, nothing half-written.
//!
//! The replicas are `printworks serve` processes (the binary under test) sharing one
//! database, data directory (master key, printer CA, local blobs) and printer URL; the
//! printer URL points at a [`crate::proxy::Proxy`], as the layer-4 load balancer of a
//! deployment.

mod database;
mod disk;
mod replicas;

pub use crate::binary::Server;
