//! Logging with `tracing`: human-readable lines by default, one JSON object per line with
//! `PRINTWORKS_LOG_FORMAT=json`. Both go to standard error.
//!
//! What is never logged: passwords, tokens, cookies, codes, keys, request bodies and
//! headers, query strings, and the database URL's password. Secrets are held in
//! `secrecy::SecretString` (whose `Debug` prints a placeholder) so that a careless
//! `?value` cannot print them either.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::builder().parse(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}
