//! Prometheus metrics: requests by method, route and status; latency by method and
//! route; database pool use. Routes are the matched templates (`/org/v1/organizations/{org}`),
//! never raw paths, so the number of series stays bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    /// Printer connections open now on the printer endpoint.
    pub printer_connections: Gauge,
    /// Printer connections refused (certificate unknown, revoked or expired) or dropped
    /// because their certificate stopped being valid.
    pub printer_connections_refused: Counter,
    /// Times an event stream looked at its printer's work (one query each).
    pub printer_event_collects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("printworks");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let pool_max = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head), by method and route",
            latency.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections held by this process, by state (idle, in_use)",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Most database connections this process may open",
            pool_max.clone(),
        );
        let printer_connections = Gauge::default();
        let printer_connections_refused = Counter::default();
        registry.register(
            "printer_connections",
            "Printer connections open on the printer endpoint",
            printer_connections.clone(),
        );
        registry.register(
            "printer_connections_refused",
            "Printer connections refused or dropped because their certificate is not (or no longer) valid",
            printer_connections_refused.clone(),
        );
        let printer_event_collects = Counter::default();
        registry.register(
            "printer_event_collects",
            "Times a printer's event stream looked for new work (one database query each)",
            printer_event_collects.clone(),
        );
        Self {
            registry,
            printer_event_collects,
            requests,
            latency,
            pool_connections,
            pool_max,
            printer_connections,
            printer_connections_refused,
        }
    }

    /// Counts a request. The method label is one of the standard methods or `other`: a
    /// made-up method must not make a new series (nor a route: routes are matched
    /// templates or `unmatched`).
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" | "CONNECT"
            | "TRACE" => method,
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Reads the pool's gauges; called just before each scrape.
    pub fn observe_pool(&self, pool: &PgPool) {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(idle);
        self.pool_connections
            .get_or_create(&PoolLabels { state: "in_use" })
            .set((size - idle).max(0));
        self.pool_max
            .set(i64::from(pool.options().get_max_connections()));
    }

    pub fn encode(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
