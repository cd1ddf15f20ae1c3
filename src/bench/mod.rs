//! `tracelink bench`: measures a real tracelink, in this process, through its real ports
//! and files. Nothing is asserted; figures are printed. `spans` measures OTLP ingest and
//! trace-by-id latency, `logs` measures tailing throughput, idle cost and log queries.

pub mod child;
pub mod cluster;
pub mod join;
pub mod logs;
pub mod metrics;
pub mod search;
pub mod spans;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::RawConfig;
use crate::pipeline::PipelineStats;

pub use crate::store::dir_bytes;
pub use spans::{bench_trace_id, make_batch, BenchOptions};

/// A tracelink serving on 127.0.0.1:0 inside the bench process.
pub struct BenchServer {
    pub http: SocketAddr,
    pub otlp_grpc: SocketAddr,
    pub stats: std::sync::Arc<PipelineStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl BenchServer {
    pub async fn start(
        data_dir: &Path,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> anyhow::Result<BenchServer> {
        let mut raw = RawConfig::default();
        raw.server.http_addr = "127.0.0.1:0".into();
        raw.server.otlp_http_addr = "127.0.0.1:0".into();
        raw.server.otlp_grpc_addr = "127.0.0.1:0".into();
        raw.storage.data_dir = data_dir.to_owned();
        tweak(&mut raw);
        let server = crate::Server::bind(raw.validate()?).await?;
        let http = server.http_addr();
        let otlp_grpc = server.otlp_grpc_addr();
        let stats = server.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        while client
            .get(format!("http://{http}/ready"))
            .send()
            .await
            .map(|response| response.status() != 200)
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(BenchServer {
            http,
            otlp_grpc,
            stats,
            stop,
            serving,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.serving.await?;
        Ok(())
    }
}

/// Process CPU time (user + system) from /proc, in seconds; Linux's clock tick is 100 Hz.
pub fn cpu_seconds() -> f64 {
    child::proc_cpu_seconds("/proc/self/stat")
}

pub fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sort the latencies and say p50, p90, p99 and max in milliseconds.
pub fn latency_summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let ms = |quantile| percentile(latencies, quantile).as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(1.0)
    )
}

/// The directory to work in: the one given, or a fresh one under the system temp dir.
pub fn scratch_dir(chosen: Option<PathBuf>) -> std::io::Result<PathBuf> {
    let path = match chosen {
        Some(path) => path,
        None => std::env::temp_dir().join(format!("tracelink-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&values, 1.0), Duration::from_millis(100));
    }
}
