//! Servers measured from outside: `tracelink serve` (or the null sink) as a child process
//! of the bench, so that its CPU time and peak memory are its own, read from `/proc`, and
//! the load generator's share of the cores is not counted. Also the null sink itself:
//! an OTLP/gRPC trace service that decodes each request and drops it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A server process the bench started, with the addresses it reported.
pub struct ChildServer {
    pub http: Option<SocketAddr>,
    pub otlp_grpc: SocketAddr,
    child: Child,
}

impl ChildServer {
    /// `tracelink serve` on 127.0.0.1:0 over `data_dir`, with `TRACELINK_*` overrides; this
    /// binary's, or `binary`'s.
    pub fn serve(
        binary: Option<&Path>,
        data_dir: &Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<ChildServer> {
        let binary = match binary {
            Some(binary) => binary.to_owned(),
            None => std::env::current_exe()?,
        };
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("TRACELINK_SERVER_HTTP_ADDR", "127.0.0.1:0")
            .env("TRACELINK_SERVER_OTLP_HTTP_ADDR", "127.0.0.1:0")
            .env("TRACELINK_SERVER_OTLP_GRPC_ADDR", "127.0.0.1:0")
            .env("TRACELINK_STORAGE_DATA_DIR", data_dir);
        for (key, value) in env {
            command.env(key, value);
        }
        ChildServer::spawn(command, "tracelink listening")
    }

    /// The decode-and-drop OTLP/gRPC sink (`tracelink bench null-sink`).
    pub fn null_sink() -> anyhow::Result<ChildServer> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["bench", "null-sink"]);
        ChildServer::spawn(command, "null sink listening")
    }

    fn spawn(mut command: Command, ready_line: &str) -> anyhow::Result<ChildServer> {
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("child has no stderr"))?;
        let (lines_sender, lines) = mpsc::channel();
        // Drained for the child's whole life: a full pipe would stall it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = lines_sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("server process never said {ready_line:?}");
            };
            if !line.contains(ready_line) {
                continue;
            }
            let field = |name: &str| -> Option<SocketAddr> {
                let start = line.find(&format!(" {name}="))? + name.len() + 2;
                line[start..].split_whitespace().next()?.parse().ok()
            };
            let otlp_grpc = field("otlp_grpc")
                .ok_or_else(|| anyhow::anyhow!("no otlp_grpc address in {line:?}"))?;
            return Ok(ChildServer {
                http: field("http"),
                otlp_grpc,
                child,
            });
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds the process has used.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// Peak resident memory (VmHWM), current resident memory (VmRSS) and its anonymous
    /// part (RssAnon: the heap, without the mapped index files the page cache holds), MiB.
    pub fn memory_mib(&self) -> (f64, f64, f64) {
        let status = format!("/proc/{}/status", self.pid());
        (
            status_mib(&status, "VmHWM:"),
            status_mib(&status, "VmRSS:"),
            status_mib(&status, "RssAnon:"),
        )
    }

    /// SIGTERM (drain, final commit) and wait for the exit.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !sent.success() {
            anyhow::bail!("kill -TERM {} failed", self.pid());
        }
        let status = self.child.wait()?;
        if !status.success() {
            anyhow::bail!("server exited with {status}");
        }
        Ok(())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One kB field of a `/proc/…/status` file, in MiB (NaN when unreadable).
pub fn status_mib(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// utime + stime of a `/proc/…/stat` file, in seconds (Linux's clock tick is 100 Hz).
pub fn proc_cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Decodes every request (tonic's protobuf codec) and drops it.
struct NullSink;

#[tonic::async_trait]
impl TraceService for NullSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        std::hint::black_box(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serve the null sink on 127.0.0.1:0 until SIGTERM; says where on stderr.
pub async fn run_null_sink() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    tracing::info!(otlp_grpc = %listener.local_addr()?, "null sink listening");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(NullSink).max_decoding_message_size(256 << 20))
        .serve_with_incoming_shutdown(incoming, crate::shutdown_signal())
        .await?;
    Ok(())
}
