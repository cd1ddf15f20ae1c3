//! `tracelink bench cluster`: what the cluster path costs per span beside the single-node
//! path, in one run on this machine, with the same load generator.
//!
//! 1. One node (local WAL), `senders` gRPC clients sending `spans` spans as fast as they
//!    are acked.
//! 2. Three `nats-server` processes as one JetStream cluster (the stream replicated three
//!    times) and three tracelinks on it, the senders spread over the three nodes.
//!
//! For each: acked spans per second, ack latency per batch, and CPU per span until every
//! span is indexed (tracelink processes, and for the cluster the NATS servers apart).
//! Everything runs on one machine, so the cluster shows its cost, not its scaling.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::child::{proc_cpu_seconds, ChildServer};
use super::scratch_dir;
use super::spans::{ingest_to, make_batch, wait_indexed, wait_ready};

pub struct ClusterBenchOptions {
    pub spans: u64,
    pub batch: usize,
    pub senders: usize,
    pub partitions: u32,
    /// Copies JetStream keeps of the stream (3 by default, as in production).
    pub stream_replicas: usize,
    pub data_dir: Option<PathBuf>,
    /// The `nats-server` to start.
    pub nats_server: PathBuf,
}

/// A `nats-server` the bench started, killed when dropped.
struct NatsServer(Child);

impl NatsServer {
    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.0.id()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Three clustered JetStream servers under `dir`, and their client URLs.
fn start_nats(binary: &Path, dir: &Path) -> anyhow::Result<(Vec<NatsServer>, String)> {
    let client_ports = (0..3).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
    let route_ports = (0..3).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
    let routes: Vec<String> = route_ports
        .iter()
        .map(|port| format!("nats-route://127.0.0.1:{port}"))
        .collect();
    let mut servers = Vec::new();
    for index in 0..3 {
        let config = format!(
            "server_name: bench{index}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\ncluster {{ name: tracelink-bench-{}, listen: 127.0.0.1:{}, routes: [{}] }}\n",
            client_ports[index],
            dir.join(format!("nats{index}")),
            std::process::id(),
            route_ports[index],
            routes.join(", ")
        );
        let path = dir.join(format!("nats{index}.conf"));
        std::fs::write(&path, config)?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot start {}: {error}", binary.display()))?;
        servers.push(NatsServer(child));
    }
    let urls = client_ports
        .iter()
        .map(|port| format!("nats://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok((servers, urls))
}

/// A metric of a node's `/metrics` (0 when absent).
async fn metric(http: std::net::SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

pub async fn run(options: ClusterBenchOptions) -> anyhow::Result<()> {
    let scratch = scratch_dir(options.data_dir.clone())?;
    let batches = options.spans.div_ceil(options.batch as u64);
    let batch = options.batch;
    println!(
        "cluster bench: {} spans in batches of {batch} (10 spans a trace) from {} gRPC senders, one node, then 3 tracelinks on 3 JetStream servers (stream replicated {} times, {} partitions), all on this machine",
        batches * batch as u64,
        options.senders,
        options.stream_replicas,
        options.partitions
    );

    // 1. One node.
    let single = ChildServer::serve(None, &scratch.join("single"), &[])?;
    let single_http = single
        .http
        .ok_or_else(|| anyhow::anyhow!("no http address"))?;
    wait_ready(single_http).await?;
    let run_tag = 1;
    let mut measured = ingest_to(
        &[format!("http://{}", single.otlp_grpc)],
        || single.cpu_seconds(),
        options.senders,
        batches,
        move |number| make_batch(run_tag, number * batch as u64, batch),
    )
    .await?;
    measured.report("one node");
    let cpu_before = measured.server_cpu_before();
    wait_indexed(single_http, measured.spans).await?;
    println!(
        "one node: {:.1} µs of server CPU per span, counting indexing to the end",
        (single.cpu_seconds() - cpu_before) / measured.spans as f64 * 1e6
    );
    single.terminate()?;

    // 2. Three nodes on three JetStream servers.
    let (nats, urls) = start_nats(&options.nats_server, &scratch)?;
    let mut nodes = Vec::new();
    for index in 0..3 {
        let env = [
            ("TRACELINK_CLUSTER_NATS_URLS", urls.clone()),
            ("TRACELINK_CLUSTER_NODE_ID", format!("bench{index}")),
            (
                "TRACELINK_CLUSTER_PARTITIONS",
                options.partitions.to_string(),
            ),
            ("TRACELINK_CLUSTER_LEASE_TTL_MS", "5000".to_owned()),
            (
                "TRACELINK_CLUSTER_STREAM_REPLICAS",
                options.stream_replicas.to_string(),
            ),
        ];
        nodes.push(ChildServer::serve(
            None,
            &scratch.join(format!("node{index}")),
            &env,
        )?);
    }
    let https: Vec<std::net::SocketAddr> = nodes
        .iter()
        .map(|node| node.http.ok_or_else(|| anyhow::anyhow!("no http address")))
        .collect::<Result<_, _>>()?;
    let settle = Instant::now();
    loop {
        let mut owned = 0.0;
        let mut ready = true;
        for http in &https {
            ready &= reqwest::get(format!("http://{http}/ready"))
                .await
                .is_ok_and(|response| response.status() == 200);
            owned += metric(*http, "tracelink_cluster_partitions_owned").await?;
        }
        if ready && owned as u32 == options.partitions {
            let shares: Vec<f64> = futures_util::future::join_all(
                https
                    .iter()
                    .map(|http| metric(*http, "tracelink_cluster_partitions_owned")),
            )
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
            // Settled when every node holds its even share.
            if shares
                .iter()
                .all(|share| (*share as u32) >= options.partitions / 3)
            {
                break;
            }
        }
        if settle.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the cluster's partitions never settled");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "cluster: ready, partitions settled in {:.1} s",
        settle.elapsed().as_secs_f64()
    );
    let tracelink_cpu = || nodes.iter().map(ChildServer::cpu_seconds).sum::<f64>();
    let nats_cpu = || nats.iter().map(NatsServer::cpu_seconds).sum::<f64>();
    let nats_before = nats_cpu();
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|node| format!("http://{}", node.otlp_grpc))
        .collect();
    let run_tag = 2;
    let mut clustered = ingest_to(
        &endpoints,
        tracelink_cpu,
        options.senders,
        batches,
        move |number| make_batch(run_tag, number * batch as u64, batch),
    )
    .await?;
    let nats_during = nats_cpu() - nats_before;
    clustered.report("cluster (tracelink processes)");
    println!(
        "cluster: NATS servers {:.0} µs of CPU per span while ingesting ({:.2} cores)",
        nats_during / clustered.spans as f64 * 1e6,
        nats_during / clustered.seconds()
    );
    let cpu_before = clustered.server_cpu_before();
    let indexed_deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut indexed = 0.0;
        for http in &https {
            indexed += metric(*http, "tracelink_spans_indexed_total").await?;
        }
        if indexed as u64 >= clustered.spans {
            break;
        }
        if Instant::now() > indexed_deadline {
            anyhow::bail!("only {indexed} of {} spans indexed", clustered.spans);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "cluster: {:.1} µs of tracelink CPU and {:.1} µs of NATS CPU per span, counting indexing to the end",
        (tracelink_cpu() - cpu_before) / clustered.spans as f64 * 1e6,
        (nats_cpu() - nats_before) / clustered.spans as f64 * 1e6
    );
    println!(
        "cluster / one node, acked spans per second: {:.2}",
        clustered.rate() / measured.rate()
    );
    for node in nodes {
        node.terminate()?;
    }
    drop(nats);
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}
