//! What a benchmark reads: latencies (as percentiles) and what the server process
//! spends (resident memory and CPU time, from `/proc`).

use std::time::Duration;

use anyhow::Context as _;

/// Latencies, in microseconds.
#[derive(Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile in milliseconds (0 when nothing was recorded).
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let last = self.0.len() - 1;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((p / 100.0) * last as f64).round() as usize;
        f64::from(self.0[i.min(last)]) / 1000.0
    }

    /// `{"p50_ms", "p90_ms", "p99_ms"}`.
    pub fn summary(&mut self) -> serde_json::Value {
        serde_json::json!({
            "p50_ms": round(self.percentile_ms(50.0)),
            "p90_ms": round(self.percentile_ms(90.0)),
            "p99_ms": round(self.percentile_ms(99.0)),
        })
    }
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The server process under test.
#[derive(Clone, Copy)]
pub struct Server(pub u32);

impl Server {
    /// `field` (`VmRSS:`, ...) of `/proc/PID/<file>`, in KiB; `None` when absent.
    fn proc_kib(self, file: &str, field: &str) -> anyhow::Result<Option<u64>> {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.0))
            .context("the server process is gone")?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
    }

    fn status_kib(self, field: &str) -> anyhow::Result<u64> {
        self.proc_kib("status", field)?
            .with_context(|| format!("no {field} in /proc/{}/status", self.0))
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// Resident memory the allocator has handed back lazily (`MADV_FREE`: the kernel
    /// takes it when it needs it, but counts it as resident until then), in KiB.
    pub fn lazy_free_kib(self) -> anyhow::Result<u64> {
        Ok(self.proc_kib("smaps_rollup", "LazyFree:")?.unwrap_or(0))
    }

    /// Resident memory the process still holds: [`Server::rss_kib`] less what was
    /// handed back lazily.
    pub fn held_kib(self) -> anyhow::Result<u64> {
        Ok(self.rss_kib()?.saturating_sub(self.lazy_free_kib()?))
    }

    /// The most resident memory since [`Server::reset_peak`], in KiB.
    pub fn peak_kib(self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// Starts counting the peak afresh (`/proc/PID/clear_refs`, 5).
    pub fn reset_peak(self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.0), "5")
            .context("resetting the server's peak memory")
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_secs(self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .context("the server process is gone")?;
        // The fields after the command (in parentheses, which may hold spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        #[allow(clippy::cast_precision_loss)]
        Ok(ticks as f64 / CLOCK_TICKS)
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// CPU the server spent over a stretch of wall time, as a share of one core.
pub struct CpuShare {
    server: Option<Server>,
    cpu: f64,
    wall: std::time::Instant,
}

impl CpuShare {
    pub fn start(server: Option<Server>) -> Self {
        Self {
            server,
            cpu: server.and_then(|s| s.cpu_secs().ok()).unwrap_or_default(),
            wall: std::time::Instant::now(),
        }
    }

    /// The share of one core (1.0 = a whole core), or null without a server.
    pub fn read(&self) -> serde_json::Value {
        let Some(server) = self.server else {
            return serde_json::Value::Null;
        };
        let used = server.cpu_secs().unwrap_or_default() - self.cpu;
        serde_json::json!(round(used / self.wall.elapsed().as_secs_f64()))
    }
}
