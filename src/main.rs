//! The `tracelink` command: parse the command line, load the configuration, set up
//! logging, run, and turn the outcome into an exit code (64 for a bad configuration).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracelink::config::RawConfig;

#[derive(Parser)]
#[command(
    name = "tracelink",
    version,
    about = "Follow requests across services: traces, logs and metrics by trace id"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Configuration file (default: config/tracelink.toml if present, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the service (as `serve` does) with a simulated shop sending it traces and logs,
    /// incidents coming and going on a cycle.
    Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        duration_seconds: Option<u64>,
        /// How long each incident phase lasts.
        #[arg(long, default_value_t = 60)]
        phase_seconds: u64,
        /// Time between two checkouts.
        #[arg(long, default_value_t = 400)]
        interval_ms: u64,
    },
    /// Print a trace as a tree: durations, slowest span, root cause, and its log lines.
    Trace {
        /// Trace id: hex, base64, or Datadog's decimal 64-bit id.
        trace_id: String,
        /// The tracelink to ask.
        #[arg(long, default_value = "http://127.0.0.1:3200")]
        server: String,
    },
    /// From a log record's id: the line, its trace as a tree, and whether its latency is normal.
    Join {
        log_id: String,
        #[arg(long, default_value = "http://127.0.0.1:3200")]
        server: String,
    },
    /// Which service is slow, which one failed: a window against a baseline, ranked, and the
    /// top suspect's example trace as a tree.
    Diagnose {
        /// Window start (unix seconds or RFC 3339; default: 15 minutes before the end).
        #[arg(long)]
        start: Option<String>,
        /// Window end (default: now).
        #[arg(long)]
        end: Option<String>,
        /// Baseline (default: the same length just before the window).
        #[arg(long)]
        baseline_start: Option<String>,
        #[arg(long)]
        baseline_end: Option<String>,
        /// Only traces through this service.
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:3200")]
        server: String,
    },
    /// A cluster's nodes, who owns which partition, and each partition's consumer lag,
    /// read from NATS with the `[cluster]` of the configuration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Measure throughput, latency, disk and memory on this machine.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Tempo search latency over traces spread across the last 24 hours.
    Search {
        /// Spans to ingest (10 a trace) before the queries.
        #[arg(long, default_value_t = 1_000_000)]
        spans: u64,
        /// How long to measure each query.
        #[arg(long, default_value_t = 5)]
        query_seconds: u64,
        /// Keep the data here instead of a removed temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// OTLP span ingest (gRPC) and trace-by-id latency under load.
    Spans {
        /// Spans to ingest in the throughput phase (and to hold during the query phase).
        #[arg(long, default_value_t = 1_000_000)]
        spans: u64,
        /// Spans per OTLP batch.
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Concurrent gRPC senders.
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Turn span metrics off, to measure what they cost.
        #[arg(long)]
        no_span_metrics: bool,
        /// Skip measuring the decode-and-drop null sink under the same load first.
        #[arg(long)]
        no_null_sink: bool,
        /// The server's sampling.fraction (default 1.0: keep every trace).
        #[arg(long)]
        sampling_fraction: Option<f64>,
        /// How long to measure trace-by-id latency.
        #[arg(long, default_value_t = 10)]
        query_seconds: u64,
        /// Keep the data here instead of a removed temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Measure the server of this tracelink binary (an earlier build, say) with this
        /// binary's load generator and null sink: before and after in one run.
        #[arg(long)]
        server_binary: Option<PathBuf>,
    },
    /// The cluster path's cost per span beside one node's: ingest acked, ack latency and
    /// CPU per span of one tracelink, then of 3 tracelinks on 3 JetStream servers.
    Cluster {
        /// Spans to ingest in each phase.
        #[arg(long, default_value_t = 500_000)]
        spans: u64,
        /// Spans per OTLP batch.
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Concurrent gRPC senders (spread over the cluster's nodes).
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// The cluster's partitions.
        #[arg(long, default_value_t = 64)]
        partitions: u32,
        /// Copies JetStream keeps of the stream.
        #[arg(long, default_value_t = 3)]
        stream_replicas: usize,
        /// The nats-server binary.
        #[arg(long, default_value = "nats-server")]
        nats_server: PathBuf,
        /// Keep the data here instead of a removed temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// `/api/join/trace/{id}` latency for a 50-span trace with 200 log lines.
    Join {
        /// Other spans (and as many other log records) stored.
        #[arg(long, default_value_t = 1_000_000)]
        spans: u64,
        /// How long to measure.
        #[arg(long, default_value_t = 10)]
        query_seconds: u64,
        /// Keep the data here instead of a removed temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// The decode-and-drop OTLP/gRPC sink `bench spans` compares with (serves until SIGTERM).
    #[command(hide = true)]
    NullSink,
    /// Span metrics in memory: record cost per span, /metrics render time, memory per operation.
    Metrics {
        /// Distinct label sets.
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Spans recorded.
        #[arg(long, default_value_t = 1_000_000)]
        spans: usize,
    },
    /// Tailing throughput, idle cost with many files, and log queries by trace id.
    Logs {
        /// Lines (~300 bytes) to tail.
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
        /// Files the lines are spread over.
        #[arg(long, default_value_t = 4)]
        files: usize,
        /// Extra one-line files that never grow.
        #[arg(long, default_value_t = 1000)]
        idle_files: usize,
        /// How long to measure idle CPU.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// How long to measure `/api/logs?trace_id=` latency.
        #[arg(long, default_value_t = 10)]
        query_seconds: u64,
        /// Keep the data here instead of a removed temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Spring-style text lines (with key=value fragments and a `TraceID:`) instead of
        /// JSON, to measure format detection and the text parser.
        #[arg(long)]
        text: bool,
    },
}

/// mimalloc instead of glibc's malloc: ingest allocates and frees many small buffers
/// across threads, where glibc spent over a third of the CPU (see the README's figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Demo {
            config,
            duration_seconds,
            phase_seconds,
            interval_ms,
        } => serve_with(
            config,
            Some(DemoOptions {
                duration: duration_seconds.map(std::time::Duration::from_secs),
                phase: std::time::Duration::from_secs(phase_seconds.max(1)),
                interval: std::time::Duration::from_millis(interval_ms.max(10)),
            }),
        ),
        Command::Bench { target } => bench(target),
        Command::Cluster {
            command: ClusterCommand::Status { config, json },
        } => cluster_status(config, json),
        Command::Trace { trace_id, server } => show(
            &format!("{}/api/join/trace/{trace_id}", server.trim_end_matches('/')),
            false,
        ),
        Command::Join { log_id, server } => show(
            &format!("{}/api/join/log/{log_id}", server.trim_end_matches('/')),
            true,
        ),
        Command::Diagnose {
            start,
            end,
            baseline_start,
            baseline_end,
            service,
            server,
        } => diagnose(
            server.trim_end_matches('/'),
            &[
                ("start", start),
                ("end", end),
                ("baseline_start", baseline_start),
                ("baseline_end", baseline_end),
                ("service", service),
            ],
        ),
    }
}

fn diagnose(server: &str, params: &[(&str, Option<String>)]) -> ExitCode {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|value| format!("{key}={}", tracelink::cli::query_escape(value)))
        })
        .collect();
    let url = format!("{server}/api/diagnose?{}", query.join("&"));
    let result = tokio::runtime::Runtime::new()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let diagnosis = tracelink::cli::fetch(&url)
                    .await
                    .map_err(|error| error.to_string())?;
                let example = match diagnosis["suspects"][0]["example_trace_id"].as_str() {
                    Some(trace_id) => {
                        tracelink::cli::fetch(&format!("{server}/api/join/trace/{trace_id}"))
                            .await
                            .ok()
                    }
                    None => None,
                };
                Ok::<_, String>((diagnosis, example))
            })
        });
    match result {
        Ok((diagnosis, example)) => {
            let colour = std::io::stdout().is_terminal();
            print!(
                "{}",
                tracelink::cli::render_diagnosis(&diagnosis, example.as_ref(), colour)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// What `demo` adds to `serve`.
struct DemoOptions {
    duration: Option<std::time::Duration>,
    phase: std::time::Duration,
    interval: std::time::Duration,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print the nodes, partitions per node and consumer lag per partition.
    Status {
        /// Configuration file (default: config/tracelink.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn cluster_status(config_path: Option<PathBuf>, json: bool) -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match RawConfig::load(config_path.as_deref(), &env).and_then(RawConfig::validate) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let Some(cluster) = config.cluster else {
        eprintln!("config: cluster.nats_urls is empty: this tracelink is not part of a cluster");
        return ExitCode::from(EX_USAGE);
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let connected = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    tracelink::cluster::Cluster::connect(cluster),
                )
                .await
                .map_err(|_| "NATS did not answer in 10 s".to_owned())?
                .map_err(|error| error.to_string())?;
                tracelink::cluster::status::read(&connected)
                    .await
                    .map_err(|error| error.to_string())
            })
        });
    match result {
        Ok(status) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", status.render());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cluster status: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    serve_with(config_path, None)
}

fn serve_with(config_path: Option<PathBuf>, demo: Option<DemoOptions>) -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded = RawConfig::load(config_path.as_deref(), &env).map(|mut raw| {
        if demo.is_some() {
            // The shop's log files, followed by the tailer like any others.
            let glob = tracelink::demo::logs_dir(&raw.storage.data_dir).join("*.log");
            raw.logs.sources.push(tracelink::config::RawLogSource {
                paths: vec![glob.display().to_string()],
                format: tracelink::ingest::logline::Format::Json,
                ..Default::default()
            });
        }
        raw
    });
    let config = match loaded.and_then(RawConfig::validate) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = config.data_dir.clone();
    runtime.block_on(async {
        let shutdown = tracelink::shutdown_signal();
        let server = match tracelink::Server::bind(config).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("{error}");
                return match error {
                    tracelink::StartError::Bind { .. } => ExitCode::from(EX_USAGE),
                    tracelink::StartError::Storage { .. } => ExitCode::FAILURE,
                };
            }
        };
        let Some(demo) = demo else {
            server.run(shutdown).await;
            return ExitCode::SUCCESS;
        };
        let (http, otlp_http) = (server.http_addr(), server.otlp_http_addr());
        let stop = tokio_util::sync::CancellationToken::new();
        let shop = tokio::spawn(tracelink::demo::run(
            otlp_http,
            data_dir,
            demo.interval,
            demo.phase,
            stop.clone(),
        ));
        println!("tracelink demo: a shop (gateway, orders, inventory, pricing, payments, notifier) is sending traces and logs; incidents change every {} s", demo.phase.as_secs());
        println!("  the page:        http://{http}/");
        println!("  services:        http://{http}/services");
        println!("  diagnose:        http://{http}/diagnose");
        println!("  Grafana (Tempo): http://{http}   Prometheus: http://{http}/metrics");
        let until = async move {
            match demo.duration {
                Some(duration) => {
                    tokio::select! {
                        _ = shutdown => {}
                        _ = tokio::time::sleep(duration) => {}
                    }
                }
                None => shutdown.await,
            }
            stop.cancel();
            let _ = shop.await;
        };
        server.run(until).await;
        ExitCode::SUCCESS
    })
}

fn bench(target: BenchTarget) -> ExitCode {
    let outcome = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match target {
                    BenchTarget::Spans {
                        spans,
                        batch,
                        senders,
                        no_span_metrics,
                        no_null_sink,
                        sampling_fraction,
                        query_seconds,
                        data_dir,
                        server_binary,
                    } => {
                        tracelink::bench::spans::run(tracelink::bench::BenchOptions {
                            spans,
                            batch,
                            senders,
                            query_seconds,
                            data_dir,
                            span_metrics: !no_span_metrics,
                            null_sink: !no_null_sink,
                            sampling_fraction,
                            server_binary,
                        })
                        .await
                    }
                    BenchTarget::NullSink => tracelink::bench::child::run_null_sink().await,
                    BenchTarget::Cluster {
                        spans,
                        batch,
                        senders,
                        partitions,
                        stream_replicas,
                        nats_server,
                        data_dir,
                    } => {
                        tracelink::bench::cluster::run(
                            tracelink::bench::cluster::ClusterBenchOptions {
                                spans,
                                batch,
                                senders,
                                partitions,
                                stream_replicas,
                                data_dir,
                                nats_server,
                            },
                        )
                        .await
                    }
                    BenchTarget::Search {
                        spans,
                        query_seconds,
                        data_dir,
                    } => {
                        tracelink::bench::search::run(
                            tracelink::bench::search::SearchBenchOptions {
                                spans,
                                query_seconds,
                                data_dir,
                            },
                        )
                        .await
                    }
                    BenchTarget::Join {
                        spans,
                        query_seconds,
                        data_dir,
                    } => {
                        tracelink::bench::join::run(tracelink::bench::join::JoinBenchOptions {
                            spans,
                            query_seconds,
                            data_dir,
                        })
                        .await
                    }
                    BenchTarget::Metrics { series, spans } => {
                        tracelink::bench::metrics::run(
                            tracelink::bench::metrics::MetricsBenchOptions { series, spans },
                        );
                        Ok(())
                    }
                    BenchTarget::Logs {
                        lines,
                        files,
                        idle_files,
                        idle_seconds,
                        query_seconds,
                        data_dir,
                        text,
                    } => {
                        tracelink::bench::logs::run(tracelink::bench::logs::LogsBenchOptions {
                            text,
                            lines,
                            files,
                            idle_files,
                            idle_seconds,
                            query_seconds,
                            data_dir,
                        })
                        .await
                    }
                }
            })
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn show(url: &str, as_join: bool) -> ExitCode {
    let fetched = tokio::runtime::Runtime::new()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(tracelink::cli::fetch(url))
                .map_err(|error| error.to_string())
        });
    match fetched {
        Ok(joined) => {
            let colour = std::io::stdout().is_terminal();
            let text = if as_join {
                tracelink::cli::render_join(&joined, colour)
            } else {
                tracelink::cli::render_trace(&joined, colour)
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
