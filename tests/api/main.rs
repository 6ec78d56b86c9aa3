//! Printworks' API tests: one test binary (one link step), real HTTP over loopback, a
//! fresh PostgreSQL database per test (`#[sqlx::test]`, against `DATABASE_URL`).
//! `make test` provides the database; see README.md.

#![allow(clippy::unwrap_used)]

mod browser;
mod db_proxy;
mod helpers;
mod proxy;
mod tls;

mod account;
mod backup;
mod binary;
mod cura;
mod errors;
mod faults;
mod federation;
mod hardening;
mod health;
mod octoprint;
mod openapi;
mod org;
mod ownership;
mod pairing;
mod plumbing;
mod relay;
mod routes;
mod services;
mod shutdown;
mod slicers;
