//! Several tracelinks as one service, on NATS JetStream (`[cluster]`).
//!
//! The shape is Tempo 3's, with JetStream where Tempo has Kafka:
//! - **Ingest on any node.** A request's decoded spans and log records are grouped by
//!   partition (`hash(trace id) mod P`; log records without a trace id by service) and
//!   published to the subject of each, `tracelink.<p>.spans` or `tracelink.<p>.logs`, on
//!   the one replicated stream `TRACELINK`. The client is answered once JetStream has
//!   acked every publish of its request: the replicated ack takes the place of the local
//!   fsync ([`publish`]).
//! - **One owner per partition** ([`owner`]): a lease in the key-value bucket
//!   `tracelink-leases` (created if absent, refreshed by revision, gone after `lease_ttl`
//!   without a refresh), partitions spread evenly over the live nodes of the bucket
//!   `tracelink-nodes`. The owner consumes its partitions with durable consumers of its own
//!   into its local pipeline (WAL, head, sampling, metrics, tantivy), so a trace and its
//!   logs are whole on one node.
//! - **Queries on any node** ([`peers`]) ask every live node for what it holds, merge, and
//!   say which node did not answer.

pub mod latency;
pub mod owner;
pub mod peers;
pub mod publish;
pub mod status;

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::config::ClusterConfig;
use crate::model::TraceId;

/// The one stream every node publishes to.
pub const STREAM: &str = "TRACELINK";
/// Partition leases: key `p<partition>`, value the owner's node id.
pub const LEASES: &str = "tracelink-leases";
/// The registry of live nodes: key the node id, value its advertised query URL.
pub const NODES: &str = "tracelink-nodes";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("a record of {bytes} bytes is larger than a NATS message may be ({limit})")]
    TooLarge { bytes: usize, limit: usize },
}

impl ClusterError {
    fn nats(error: impl std::fmt::Display) -> ClusterError {
        ClusterError::Nats(error.to_string())
    }
}

/// The partition of a trace: the same on every node, for every version.
pub fn trace_partition(trace_id: &TraceId, partitions: u32) -> u32 {
    let (high, low) = trace_id.0.split_at(8);
    let high = u64::from_be_bytes(high.try_into().unwrap_or_default());
    let low = u64::from_be_bytes(low.try_into().unwrap_or_default());
    // Trace ids are random, but not always in both halves (Zipkin's and Datadog's 64-bit
    // ids leave the high half zero): fold both, then mix so that neighbouring ids spread.
    let mixed = (high ^ low).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) % u64::from(partitions)) as u32
}

/// The partition of a log record without a trace id: by its service (FNV-1a).
pub fn service_partition(service: &str, partitions: u32) -> u32 {
    let hash = service
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % u64::from(partitions)) as u32
}

/// What a message holds, from its subject's last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Spans,
    Logs,
}

impl Kind {
    fn token(self) -> &'static str {
        match self {
            Kind::Spans => "spans",
            Kind::Logs => "logs",
        }
    }

    fn of_subject(subject: &str) -> Option<Kind> {
        match subject.rsplit('.').next()? {
            "spans" => Some(Kind::Spans),
            "logs" => Some(Kind::Logs),
            _ => None,
        }
    }
}

pub fn subject(partition: u32, kind: Kind) -> String {
    format!("tracelink.{partition}.{}", kind.token())
}

fn lease_key(partition: u32) -> String {
    format!("p{partition}")
}

/// The durable consumer through which a node reads `partition`: one per node and data
/// directory (`incarnation`), so that a node taking a partition over reads everything the
/// stream retains, a node coming back with its data resumes where it left off, and one
/// coming back without it reads everything again.
fn consumer_name(node: &str, incarnation: &str, partition: u32) -> String {
    format!("{node}-{incarnation}-p{partition}")
}

/// A lease's value: who holds it, with which data directory.
fn lease_value(node: &str, incarnation: &str) -> String {
    format!("{node}/{incarnation}")
}

/// The identity of this node's data directory in the cluster: made once, with the
/// directory, and kept in `cluster/incarnation`.
pub fn incarnation(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("cluster").join("incarnation");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut hasher = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(data_dir.as_os_str().as_encoded_bytes());
    let made = hasher.finalize().to_hex()[..12].to_owned();
    std::fs::create_dir_all(path.parent().unwrap_or(data_dir))?;
    let temporary = path.with_extension("new");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(made.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    Ok(made)
}

/// A connection to the cluster: the stream and both buckets exist.
pub struct Cluster {
    pub config: ClusterConfig,
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub stream: stream::Stream,
    pub leases: kv::Store,
    pub nodes: kv::Store,
    /// The registry bucket's stream, whose subjects name the live nodes.
    nodes_stream: stream::Stream,
    /// Requests waiting for their records to be published together.
    outbox: std::sync::Arc<publish::Outbox>,
}

impl Cluster {
    /// Connect (the client keeps reconnecting on its own afterwards) and make sure the
    /// stream and the buckets exist. Fails while JetStream has no leader yet; callers
    /// retry.
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("tracelink {}", config.node_id))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(config.nats_urls.clone())
            .await
            .map_err(ClusterError::nats)?;
        let jetstream = jetstream::new(client.clone());
        let stream = ensure_stream(&jetstream, &config).await?;
        let leases = ensure_bucket(&jetstream, LEASES, config.lease_ttl, &config).await?;
        let nodes = ensure_bucket(&jetstream, NODES, config.lease_ttl, &config).await?;
        let nodes_stream = jetstream
            .get_stream(format!("KV_{NODES}"))
            .await
            .map_err(ClusterError::nats)?;
        let outbox = std::sync::Arc::new(publish::Outbox::default());
        tokio::spawn(publish::run_outbox(
            outbox.clone(),
            jetstream.clone(),
            publish::message_limit(&client),
        ));
        Ok(Cluster {
            outbox,
            nodes_stream,
            config,
            client,
            jetstream,
            stream,
            leases,
            nodes,
        })
    }

    /// Connect, retrying every second until it works or `token` is cancelled.
    pub async fn join(
        config: ClusterConfig,
        token: &tokio_util::sync::CancellationToken,
    ) -> Option<Cluster> {
        let mut said = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), Cluster::connect(config.clone()))
                .await
            {
                Ok(Ok(cluster)) => return Some(cluster),
                Ok(Err(error)) if !said => {
                    tracing::warn!(%error, "cluster not reachable yet; ingest waits (503) and retries");
                    said = true;
                }
                Err(_) if !said => {
                    tracing::warn!("cluster not reachable yet (timed out); retrying");
                    said = true;
                }
                _ => {}
            }
            tokio::select! {
                _ = token.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The live nodes (id, query URL), by id. Bounded by the lease TTL: listing keys
    /// reads through a consumer that can wait forever on a bucket's stream that has just
    /// been made or is electing a leader.
    pub async fn live_nodes(&self) -> Result<Vec<(String, String)>, ClusterError> {
        tokio::time::timeout(self.config.lease_ttl / 2, self.read_live_nodes())
            .await
            .map_err(|_| ClusterError::Nats("the node registry did not answer in time".into()))?
    }

    async fn read_live_nodes(&self) -> Result<Vec<(String, String)>, ClusterError> {
        use futures_util::StreamExt as _;
        // The keys from the bucket stream's subjects, one request: the client's key
        // listing reads through an ephemeral consumer, which stops answering for a while
        // after a NATS server of the cluster dies.
        let prefix = format!("$KV.{NODES}.");
        let mut subjects = self
            .nodes_stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(ClusterError::nats)?;
        let mut keys = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(ClusterError::nats)?;
            if let Some(key) = subject.strip_prefix(&prefix) {
                keys.push(key.to_owned());
            }
        }
        let mut nodes = Vec::new();
        for key in keys {
            if let Some(url) = self
                .nodes
                .get(key.as_str())
                .await
                .map_err(ClusterError::nats)?
            {
                nodes.push((key, String::from_utf8_lossy(&url).into_owned()));
            }
        }
        nodes.sort();
        Ok(nodes)
    }
}

async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    if let Ok(stream) = jetstream.get_stream(STREAM).await {
        return Ok(stream);
    }
    jetstream
        .create_stream(stream::Config {
            name: STREAM.into(),
            description: Some("tracelink: spans and log records by partition".into()),
            subjects: vec!["tracelink.>".into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: config.replay_window,
            storage: stream::StorageType::File,
            num_replicas: config.stream_replicas,
            duplicate_window: Duration::from_secs(60).min(config.replay_window),
            ..Default::default()
        })
        .await
        .map_err(ClusterError::nats)
}

async fn ensure_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    config: &ClusterConfig,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = jetstream.get_key_value(bucket).await {
        return Ok(store);
    }
    // The bucket's stream made here, as a key-value bucket's must be: the client's
    // `create_key_value` first reads the account's limits in a form nats-server 2.9
    // does not answer in.
    jetstream
        .create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            duplicate_window: max_age.min(Duration::from_secs(120)),
            storage: stream::StorageType::File,
            num_replicas: config.stream_replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(ClusterError::nats)?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(ClusterError::nats)
}

/// Which node owns each partition when `live` are the nodes: each partition goes to the
/// node that ranks it highest (rendezvous hashing, so few partitions move when a node
/// comes or goes) among those not yet holding their even share (`P / nodes`, and one
/// more for `P mod nodes` of them).
/// Every node computes the same answer from the same list.
pub fn assignment(partitions: u32, live: &[String]) -> Vec<Option<usize>> {
    if live.is_empty() {
        return vec![None; partitions as usize];
    }
    // Every node holds `share` partitions, and `extra` of them one more.
    let share = partitions as usize / live.len();
    let mut extra = partitions as usize % live.len();
    let mut load = vec![0usize; live.len()];
    (0..partitions)
        .map(|partition| {
            let mut ranked: Vec<(u64, usize)> = live
                .iter()
                .enumerate()
                .map(|(index, node)| {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(node.as_bytes());
                    hasher.update(&partition.to_le_bytes());
                    let digest = hasher.finalize();
                    let score =
                        u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap_or_default());
                    (score, index)
                })
                .collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            let chosen = ranked
                .iter()
                .map(|(_, index)| *index)
                .find(|index| load[*index] < share || (load[*index] == share && extra > 0))?;
            if load[chosen] == share {
                extra -= 1;
            }
            load[chosen] += 1;
            Some(chosen)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_and_move_little_when_a_node_leaves() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let assigned = assignment(64, &three);
        let mut counts = [0; 3];
        for owner in &assigned {
            counts[owner.unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|count| (21..=22).contains(count)),
            "{counts:?}"
        );
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let after = assignment(64, &two);
        // What a and c held stays with them, but for the rebalancing of the even share.
        let kept = (0..64)
            .filter(|&p| {
                let before = assigned[p].map(|i| three[i].clone());
                before.as_deref() != Some("b") && before == after[p].map(|i| two[i].clone())
            })
            .count();
        assert!(kept >= 40, "only {kept} of 43 partitions stayed");
        assert!(after.iter().all(Option::is_some));
        assert_eq!(assignment(4, &[]), vec![None; 4]);
    }

    #[test]
    fn a_trace_has_one_partition_and_ids_spread() {
        let mut seen = [0u32; 8];
        for n in 0..8000u64 {
            let mut bytes = [0u8; 16];
            bytes[8..].copy_from_slice(&n.to_be_bytes());
            let id = TraceId(bytes);
            let p = trace_partition(&id, 8);
            assert_eq!(p, trace_partition(&id, 8));
            seen[p as usize] += 1;
        }
        // Sequential 64-bit ids still spread over every partition.
        assert!(seen.iter().all(|count| *count > 800), "{seen:?}");
        assert!(service_partition("checkout", 64) < 64);
        assert_eq!(Kind::of_subject(&subject(7, Kind::Logs)), Some(Kind::Logs));
    }
}
