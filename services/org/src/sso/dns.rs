//! The TXT records that prove an organization owns an e-mail domain, asked of the DNS:
//! the system's resolvers, or the server `PRINTWORKS_DNS_SERVER` names (UDP, then TCP
//! for a truncated answer). The tests run a real authoritative DNS server on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

/// Most TXT values read for one name, and their longest.
const MAX_VALUES: usize = 50;
const MAX_VALUE_BYTES: usize = 1024;

fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let mut config = ResolverConfig::default();
            config.add_name_server(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => Resolver::builder_tokio().map_err(|e| format!("no system resolver: {e}"))?,
    };
    let options = builder.options_mut();
    options.timeout = Duration::from_secs(5);
    options.attempts = 2;
    // A proof must be current: no answer from a cache.
    options.cache_size = 0;
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// The TXT values at `name` (each record's strings joined), or why the lookup failed.
/// No such name, or no TXT record there, is an empty list.
pub async fn txt(server: Option<SocketAddr>, name: &str) -> Result<Vec<String>, String> {
    let resolver = resolver(server)?;
    let lookup = match resolver.txt_lookup(name).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string().chars().take(200).collect()),
    };
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => {
                let bytes: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                (bytes.len() <= MAX_VALUE_BYTES)
                    .then(|| String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        })
        .take(MAX_VALUES)
        .collect())
}
