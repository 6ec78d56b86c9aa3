//! The pairing service: six-digit codes, the printer CA, printer credentials, and the
//! printer endpoint's view of them.

mod agent;
mod certificates;
mod flow;
mod inputs;
