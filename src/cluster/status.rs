//! `tracelink cluster status`: the nodes, who owns which partition, and how far behind
//! each partition's owner is.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{consumer_name, lease_key, Cluster, ClusterError};

#[derive(Debug, Serialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    pub partitions: Vec<PartitionStatus>,
    /// Messages the stream holds, and their bytes.
    pub stream_messages: u64,
    pub stream_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub url: String,
    pub partitions: usize,
}

#[derive(Debug, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub owner: Option<String>,
    /// Messages not yet delivered to the owner's consumer, plus those delivered and not
    /// yet acked.
    pub lag: Option<u64>,
}

/// Read the status from the cluster's buckets and the stream's consumers.
pub async fn read(cluster: &Cluster) -> Result<Status, ClusterError> {
    let live = cluster.live_nodes().await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut partitions = Vec::new();
    for partition in 0..cluster.config.partitions {
        let holder = cluster
            .leases
            .get(lease_key(partition))
            .await
            .map_err(ClusterError::nats)?
            .map(|value| String::from_utf8_lossy(&value).into_owned());
        let (owner, lag) = match holder.as_deref().and_then(|value| value.split_once('/')) {
            Some((node, incarnation)) => {
                *per_node.entry(node.to_owned()).or_default() += 1;
                let lag = consumer_lag(cluster, &consumer_name(node, incarnation, partition)).await;
                (Some(node.to_owned()), lag)
            }
            // Free, or handed over and not yet taken ("released:<sequence>").
            None => (None, None),
        };
        partitions.push(PartitionStatus {
            partition,
            owner,
            lag,
        });
    }
    let mut stream = cluster.stream.clone();
    let info = stream.info().await.map_err(ClusterError::nats)?;
    Ok(Status {
        nodes: live
            .into_iter()
            .map(|(node_id, url)| NodeStatus {
                partitions: per_node.get(&node_id).copied().unwrap_or(0),
                node_id,
                url,
            })
            .collect(),
        partitions,
        stream_messages: info.state.messages,
        stream_bytes: info.state.bytes,
    })
}

async fn consumer_lag(cluster: &Cluster, name: &str) -> Option<u64> {
    let mut consumer = cluster
        .stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
        .await
        .ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}

impl Status {
    /// The table `tracelink cluster status` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "stream {}: {} messages, {} bytes\n\nNODE\tPARTITIONS\tURL\n",
            super::STREAM,
            self.stream_messages,
            self.stream_bytes
        );
        for node in &self.nodes {
            out.push_str(&format!(
                "{}\t{}\t{}\n",
                node.node_id, node.partitions, node.url
            ));
        }
        out.push_str("\nPARTITION\tOWNER\tLAG\n");
        for partition in &self.partitions {
            out.push_str(&format!(
                "{}\t{}\t{}\n",
                partition.partition,
                partition.owner.as_deref().unwrap_or("-"),
                partition
                    .lag
                    .map(|lag| lag.to_string())
                    .unwrap_or_else(|| "-".into())
            ));
        }
        out
    }
}
