//! Partition ownership: leases, the live-node registry, and the consumers that feed the
//! partitions this node owns into its local pipeline.
//!
//! Every `lease_ttl / 4` a node refreshes its registry entry, reads the live nodes, works
//! out the even [`assignment`](super::assignment) every node works out alike, and then:
//! refreshes the leases it holds and should hold (an update by revision, which fails if
//! the lease expired and someone else took it), releases those another live node should
//! hold now (its consumer stops first), and creates the leases of the partitions it
//! should hold that nobody holds. A node that stops refreshing loses its leases when the
//! bucket's `max_age` (the lease TTL) removes them, and the next round on the other nodes
//! takes them. A consumer stops feeding the pipeline as soon as its lease is older than
//! the TTL, before anyone else may have taken it.
//!
//! A partition's messages are written to the local WAL (fsynced, then into the head, as
//! any ingest), each followed by a record of its stream sequence, and acked to JetStream
//! once a tantivy commit holds them (their traces left the head and were indexed, or
//! dropped by sampling). A message delivered again after a crash (written, not yet
//! committed, so not acked) is recognised by the sequences the WAL replayed, and not
//! written twice. A node taking a partition over reads everything the stream retains
//! with a durable consumer of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{assignment, consumer_name, lease_key, lease_value, Cluster, Kind};
use crate::lock;
use crate::pipeline::{Batch, Pipeline, StreamMark, SubmitError};
use crate::wal::RecordKind;

/// Messages fetched from a partition at once.
const FETCH_MESSAGES: usize = 256;

/// Messages delivered and not yet acked (written, waiting for a commit) per partition:
/// past it the stream holds back the partition until commits catch up.
const MAX_ACK_PENDING: i64 = 20_000;

/// The longest a fetch may take (it asks for at most 500 ms of waiting).
const FETCH_WAIT: Duration = Duration::from_secs(3);

/// A lease this node holds, and the consumer reading its partition.
struct Held {
    revision: u64,
    /// The durable consumer reading the partition.
    name: String,
    /// Until when the lease is surely still ours (its last refresh + TTL − a margin).
    valid_until: Arc<Mutex<Instant>>,
    stop: CancellationToken,
    /// Ends with the sequence its consumer started after (`None`: never opened).
    consumer: JoinHandle<Option<u64>>,
}

/// What this node owns, for `/metrics` and `tracelink cluster status`.
#[derive(Default)]
pub struct Ownership {
    pub partitions: Mutex<Vec<u32>>,
}

/// Hold this node's share of the partitions until `token` is cancelled; then stop the
/// consumers, give the leases back and leave the registry, so that the others take over
/// at once instead of after the TTL.
pub async fn run(
    cluster: Arc<Cluster>,
    pipeline: Arc<Pipeline>,
    peers: Arc<super::peers::Peers>,
    ownership: Arc<Ownership>,
    incarnation: String,
    token: CancellationToken,
) {
    let me = cluster.config.node_id.clone();
    let holder = lease_value(&me, &incarnation);
    let ttl = cluster.config.lease_ttl;
    let tick = ttl / 4;
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    loop {
        let round = Instant::now();
        if let Err(error) = cluster
            .nodes
            .put(
                me.as_str(),
                Bytes::from(cluster.config.advertise_url.clone()),
            )
            .await
        {
            tracing::warn!(%error, "cluster: cannot refresh this node's registry entry");
        }
        match cluster.live_nodes().await {
            Ok(live) => {
                peers.set_nodes(&live);
                let ids: Vec<String> = live.iter().map(|(id, _)| id.clone()).collect();
                let wanted = assignment(cluster.config.partitions, &ids);
                let mine = Mine {
                    node: &me,
                    incarnation: &incarnation,
                    holder: &holder,
                };
                balance(&cluster, &pipeline, &mine, &ids, &wanted, &mut held, round).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cluster: cannot read the node registry");
                refresh_held(&cluster, &holder, &mut held, round).await;
            }
        }
        *lock(&ownership.partitions) = held.keys().copied().collect();
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(tick.saturating_sub(round.elapsed())) => {}
        }
    }
    release_all(&cluster, std::mem::take(&mut held).into_iter().collect()).await;
    lock(&ownership.partitions).clear();
    if let Err(error) = cluster.nodes.delete(me.as_str()).await {
        tracing::warn!(%error, "cluster: cannot leave the node registry");
    }
}

/// This node's names: its id, its data directory's incarnation, and both as a lease
/// holds them.
struct Mine<'a> {
    node: &'a str,
    incarnation: &'a str,
    holder: &'a str,
}

async fn balance(
    cluster: &Arc<Cluster>,
    pipeline: &Arc<Pipeline>,
    me: &Mine<'_>,
    live: &[String],
    wanted: &[Option<usize>],
    held: &mut BTreeMap<u32, Held>,
    round: Instant,
) {
    let mine =
        |partition: u32| wanted[partition as usize].is_some_and(|index| live[index] == me.node);
    // Not in the registry this round (its entry was not refreshed in time): it keeps what
    // it holds and takes nothing new, since the others do not count it.
    let listed = live.iter().any(|node| node == me.node);
    let to_release: Vec<u32> = held
        .keys()
        .copied()
        .filter(|partition| listed && !mine(*partition))
        .collect();
    let leaving = to_release
        .into_iter()
        .filter_map(|partition| {
            tracing::info!(
                partition,
                "cluster: handing a partition over to its new owner"
            );
            held.remove(&partition).map(|lease| (partition, lease))
        })
        .collect();
    release_all(cluster, leaving).await;
    refresh_held(cluster, me.holder, held, round).await;
    for partition in 0..cluster.config.partitions {
        if held.contains_key(&partition) || !listed || !mine(partition) {
            continue;
        }
        let Some((revision, handed_over_at)) = acquire(cluster, partition, me.holder).await else {
            continue;
        };
        match handed_over_at {
            Some(sequence) => tracing::info!(
                partition,
                after_sequence = sequence,
                "cluster: partition taken over from its previous owner"
            ),
            None => tracing::info!(partition, "cluster: partition taken"),
        }
        let valid_until = Arc::new(Mutex::new(round + cluster.config.lease_ttl * 3 / 4));
        let stop = CancellationToken::new();
        let consumer = tokio::spawn(consume(
            cluster.clone(),
            pipeline.clone(),
            consumer_name(me.node, me.incarnation, partition),
            partition,
            handed_over_at,
            valid_until.clone(),
            stop.clone(),
        ));
        held.insert(
            partition,
            Held {
                revision,
                valid_until,
                stop,
                consumer,
                name: consumer_name(me.node, me.incarnation, partition),
            },
        );
    }
}

/// The value a lease is left with when its owner hands the partition over alive: the
/// stream sequence through which it has written the partition.
const RELEASED: &str = "released:";

/// Take a partition's lease if nobody holds it: its revision, and, when the previous
/// owner handed it over alive, the sequence through which that owner wrote it (the
/// partition then continues after it; otherwise this node reads all the stream retains).
async fn acquire(cluster: &Cluster, partition: u32, holder: &str) -> Option<(u64, Option<u64>)> {
    let key = lease_key(partition);
    let entry = cluster.leases.entry(key.as_str()).await.ok()?;
    let released = entry.as_ref().and_then(|entry| {
        (entry.operation == kv::Operation::Put)
            .then(|| std::str::from_utf8(&entry.value).ok())
            .flatten()
            .and_then(|value| value.strip_prefix(RELEASED))
            .and_then(|sequence| sequence.parse::<u64>().ok())
            .map(|sequence| (entry.revision, sequence))
    });
    let value = Bytes::from(holder.to_owned());
    match released {
        Some((revision, sequence)) => cluster
            .leases
            .update(key, value, revision)
            .await
            .ok()
            .map(|revision| (revision, Some(sequence))),
        None => cluster
            .leases
            .create(key, value)
            .await
            .ok()
            .map(|revision| (revision, None)),
    }
}

/// Refresh every lease held; a lease that cannot be refreshed (it expired and another
/// node took it) is dropped, its consumer stopped.
async fn refresh_held(
    cluster: &Cluster,
    holder: &str,
    held: &mut BTreeMap<u32, Held>,
    round: Instant,
) {
    let refreshes = held.iter().map(|(partition, lease)| async move {
        let result = cluster
            .leases
            .update(
                lease_key(*partition),
                Bytes::from(holder.to_owned()),
                lease.revision,
            )
            .await;
        (*partition, result)
    });
    let results = futures_util::future::join_all(refreshes).await;
    for (partition, result) in results {
        match result {
            Ok(revision) => {
                if let Some(lease) = held.get_mut(&partition) {
                    lease.revision = revision;
                    *lock(&lease.valid_until) = round + cluster.config.lease_ttl * 3 / 4;
                }
            }
            Err(error) => {
                let lost = matches!(
                    error.kind(),
                    async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                );
                if lost || Instant::now() > round + cluster.config.lease_ttl {
                    tracing::warn!(partition, %error, "cluster: lease lost; the partition's consumer stops");
                    if let Some(lease) = held.remove(&partition) {
                        lease.stop.cancel();
                        let _ = lease.consumer.await;
                    }
                } else {
                    tracing::warn!(partition, %error, "cluster: lease not refreshed; retrying");
                }
            }
        }
    }
}

/// Stop the partitions' consumers (what they took is written and acked), then give the
/// leases back, all at once, each with the stream sequence through which this node wrote
/// the partition, so that the next owner continues from there instead of reading again
/// what this node holds and still serves.
async fn release_all(cluster: &Cluster, leases: Vec<(u32, Held)>) {
    for (_, lease) in &leases {
        lease.stop.cancel();
    }
    let released = leases.into_iter().map(|(partition, lease)| async move {
        let written_through = match lease.consumer.await {
            Ok(Some(started_after)) => written_through(cluster, &lease.name)
                .await
                .map(|floor| floor.max(started_after)),
            _ => None,
        };
        let given_back = match written_through {
            Some(sequence) => cluster
                .leases
                .update(
                    lease_key(partition),
                    Bytes::from(format!("{RELEASED}{sequence}")),
                    lease.revision,
                )
                .await
                .map(drop)
                .map_err(|error| error.to_string()),
            // Not known: the next owner reads everything the stream retains.
            None => cluster
                .leases
                .delete_expect_revision(lease_key(partition), Some(lease.revision))
                .await
                .map_err(|error| error.to_string()),
        };
        if let Err(error) = given_back {
            tracing::warn!(partition, %error, "cluster: lease not given back; it expires instead");
        }
    });
    futures_util::future::join_all(released).await;
}

/// The stream sequence through which a consumer's messages are all acked.
async fn written_through(cluster: &Cluster, name: &str) -> Option<u64> {
    let mut consumer = cluster
        .stream
        .get_consumer::<pull::Config>(name)
        .await
        .ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.ack_floor.stream_sequence)
}

/// Read one partition into the local pipeline until `stop`: from where the previous
/// owner stopped (`after`, its last written sequence) when it handed the partition over,
/// else from where this node's own consumer stopped, or from all the stream retains.
/// Returns the sequence the consumer started after (`None`: it never opened).
async fn consume(
    cluster: Arc<Cluster>,
    pipeline: Arc<Pipeline>,
    name: String,
    partition: u32,
    after: Option<u64>,
    valid_until: Arc<Mutex<Instant>>,
    stop: CancellationToken,
) -> Option<u64> {
    let deliver_policy = match after {
        Some(sequence) => {
            // What this node's consumer read before is older than the handover point,
            // or was read and is held by the previous owner: start afresh after it.
            let _ = cluster.stream.delete_consumer(&name).await;
            DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            }
        }
        // This node's own consumer, if it had one (it is back with its data directory):
        // made again from past what it acked, so that what it had delivered and not
        // acked (written, not yet committed, when it stopped) comes again at once rather
        // than after `ack_wait`; the WAL's stream marks recognise what it holds.
        None => match written_through(&cluster, &name).await {
            Some(acked) => {
                let _ = cluster.stream.delete_consumer(&name).await;
                DeliverPolicy::ByStartSequence {
                    start_sequence: acked + 1,
                }
            }
            None => DeliverPolicy::All,
        },
    };
    let consumer = loop {
        let made = cluster
            .stream
            .get_or_create_consumer::<pull::Config>(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("tracelink.{partition}.>"),
                    deliver_policy,
                    // Acking a message acks every one before it.
                    ack_policy: AckPolicy::All,
                    // A message waits for its trace to leave the head and be committed.
                    ack_wait: pipeline.longest_hold() * 2 + Duration::from_secs(30),
                    max_ack_pending: MAX_ACK_PENDING,
                    // A consumer unused for the replay window could only resume at
                    // messages the stream no longer has.
                    inactive_threshold: cluster.config.replay_window,
                    ..Default::default()
                },
            )
            .await;
        match made {
            Ok(consumer) => break consumer,
            Err(error) => {
                tracing::warn!(partition, %error, "cluster: cannot open the partition's consumer; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let started_after = after.unwrap_or(0);
    // What the WAL held of the partition at start: delivered again, it is not rewritten.
    let replayed = pipeline.stream_mark(partition);
    let (to_ack, acks) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_when_committed(partition, acks, pipeline.durable()));
    while !stop.is_cancelled() {
        // Bounded: a pull whose NATS server dies gets no answer, and the client waits.
        let fetched = tokio::time::timeout(
            FETCH_WAIT,
            consumer
                .fetch()
                .max_messages(FETCH_MESSAGES)
                .expires(Duration::from_millis(500))
                .messages(),
        )
        .await;
        let batch = match fetched {
            Ok(Ok(batch)) => batch,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                tracing::warn!(partition, %error, "cluster: fetch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let mut messages: Vec<_> = batch
            .filter_map(|message| async { message.ok() })
            .take_until(tokio::time::sleep(FETCH_WAIT))
            .collect()
            .await;
        if messages.is_empty() {
            continue;
        }
        // The lease may be someone else's by now: hold the messages until it is
        // refreshed, or, if it is lost, leave them unacked (they come again, after
        // ack_wait, to this node's consumer only).
        let mut said = false;
        while Instant::now() > *lock(&valid_until) {
            if !said {
                tracing::warn!(
                    partition,
                    "cluster: lease too old to write; the partition waits for its refresh"
                );
                said = true;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    give_back(&messages).await;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let written = messages.iter().map(|message| {
            let pipeline = &pipeline;
            let stop = &stop;
            async move {
                let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
                let kind = match Kind::of_subject(message.subject.as_str()) {
                    Some(Kind::Spans) => RecordKind::Spans,
                    Some(Kind::Logs) => RecordKind::Logs,
                    None => return Some(0),
                };
                match replayed {
                    Some((through, position)) if sequence <= through => return Some(position),
                    _ => {}
                }
                let mark = StreamMark {
                    partition,
                    sequence,
                };
                write(pipeline, kind, &message.payload, mark, stop).await
            }
        });
        let written = futures_util::future::join_all(written).await;
        // Messages come in stream order: the last of those written from the first on is
        // acked (which acks them all) once a commit holds all of them; the rest go back.
        let through = written
            .iter()
            .take_while(|written| written.is_some())
            .count();
        let rest = messages.split_off(through);
        if let Some(mut last) = messages.pop() {
            let position = written.iter().flatten().max().copied().unwrap_or(0);
            // Only its reply subject is needed to ack it.
            last.message.payload = Bytes::new();
            last.message.headers = None;
            let _ = to_ack.send((last, position));
        }
        give_back(&rest).await;
    }
    // Stopping (the partition is handed over, or this node stops): what was written is
    // this node's to commit (its WAL replays it after a crash), so it is acked now, and
    // the next owner continues after it.
    drop(to_ack);
    let _ = acker.await;
    Some(started_after)
}

/// Ack each partition's written messages once a commit holds them: `written` brings the
/// last message of each fetch and the WAL position past its records, `durable` where
/// commits are. When `written` closes, everything written is acked.
async fn ack_when_committed(
    partition: u32,
    mut written: tokio::sync::mpsc::UnboundedReceiver<(async_nats::jetstream::Message, u64)>,
    mut durable: tokio::sync::watch::Receiver<u64>,
) {
    let mut waiting: std::collections::VecDeque<(async_nats::jetstream::Message, u64)> =
        std::collections::VecDeque::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        let committed = *durable.borrow_and_update();
        let mut due = None;
        while let Some((_, position)) = waiting.front() {
            if open && *position > committed {
                break;
            }
            due = waiting.pop_front().map(|(message, _)| message);
        }
        if let Some(message) = due {
            if let Err(error) = message.double_ack().await {
                tracing::debug!(partition, %error, "cluster: ack not confirmed; the messages may come again");
            }
        }
        if !open {
            break;
        }
        tokio::select! {
            received = written.recv() => match received {
                Some(entry) => waiting.push_back(entry),
                None => open = false,
            },
            changed = durable.changed() => {
                if changed.is_err() {
                    // The pipeline is gone: nothing more will be committed.
                    open = false;
                }
            }
        }
    }
}

/// Messages taken and not written (the consumer stops): back to the stream at once, so
/// that the partition's next reader through this consumer need not wait out `ack_wait`.
async fn give_back(messages: &[async_nats::jetstream::Message]) {
    let naks = messages
        .iter()
        .map(|message| message.ack_with(async_nats::jetstream::AckKind::Nak(None)));
    futures_util::future::join_all(naks).await;
}

/// Write one message's records through the local pipeline, waiting while it has no
/// room. Log records without an id get one from the message's stream sequence, the
/// same on whichever node writes them. The WAL position past them; `None`: stopped
/// first, the message stays unacked.
async fn write(
    pipeline: &Pipeline,
    kind: RecordKind,
    payload: &[u8],
    mark: StreamMark,
    stop: &CancellationToken,
) -> Option<u64> {
    loop {
        let (mut batch, _) = Batch::decode(kind, payload);
        if let Batch::Logs(records) = &mut batch {
            for (index, record) in records.iter_mut().enumerate() {
                if record.id.is_empty() {
                    record.id = crate::model::LogRecord::stream_id(mark.sequence, index);
                }
            }
        }
        match pipeline.write(batch, Some(mark)).await {
            Ok(position) => return Some(position),
            Err(SubmitError::BatchTooLarge { records, capacity }) => {
                tracing::error!(
                    records,
                    capacity,
                    "cluster: a message holds more records than the ingest queue; skipped"
                );
                return Some(0);
            }
            Err(_) => {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
