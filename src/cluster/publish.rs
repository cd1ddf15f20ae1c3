//! Ingest on any node: a request's records, by partition, onto the stream.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{service_partition, subject, trace_partition, Cluster, ClusterError, Kind};
use crate::model::{LogRecord, Span};
use crate::pipeline::Batch;

/// Room left in a message for its headers and subject.
const HEADROOM: usize = 4096;

/// How long a request waits for JetStream's acks before it is refused (503).
const ACK_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Publish every record of `batch` to its partition's subject and wait until
    /// JetStream has acked all of them. An error means the client must retry: some of the
    /// records may be stored (a retry stores them again; queries fold the duplicate).
    pub async fn publish(&self, batch: &Batch) -> Result<(), ClusterError> {
        let limit = message_limit(&self.client);
        let messages = match batch {
            Batch::Spans(spans) => span_messages(spans, self.config.partitions, limit)?,
            Batch::Logs(records) => log_messages(records, self.config.partitions, limit)?,
        };
        if messages.is_empty() {
            return Ok(());
        }
        let (done, published) = oneshot::channel();
        crate::lock(&self.outbox.waiting).push((messages, done));
        self.outbox.wake.notify_one();
        match tokio::time::timeout(ACK_WAIT * 2, published).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(problem))) => Err(ClusterError::Nats(problem)),
            Ok(Err(_)) => Err(ClusterError::Nats("the publisher stopped".to_owned())),
            Err(_) => Err(ClusterError::Nats(
                "JetStream did not ack in time".to_owned(),
            )),
        }
    }
}

/// The largest payload a message to the connected server may carry.
pub(super) fn message_limit(client: &async_nats::Client) -> usize {
    client.server_info().max_payload.max(64 * 1024) - HEADROOM
}

/// Requests waiting to be published, with their partitions' messages: published together,
/// one message per partition for all of them where they fit (as the WAL's group commit
/// shares one fsync), so that concurrent requests cost the stream fewer messages.
#[derive(Default)]
pub(super) struct Outbox {
    waiting: std::sync::Mutex<Vec<Waiting>>,
    wake: tokio::sync::Notify,
}

type Waiting = (Vec<(String, Bytes)>, oneshot::Sender<Result<(), String>>);

/// Publish what waits, one round at a time, until the outbox is dropped by every holder
/// but this task.
pub(super) async fn run_outbox(
    outbox: std::sync::Arc<Outbox>,
    jetstream: async_nats::jetstream::Context,
    limit: usize,
) {
    loop {
        if std::sync::Arc::strong_count(&outbox) == 1 {
            return;
        }
        tokio::select! {
            _ = outbox.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
        }
        let waiting = std::mem::take(&mut *crate::lock(&outbox.waiting));
        if waiting.is_empty() {
            continue;
        }
        let (messages, waiters): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
        let merged = coalesce(messages.into_iter().flatten(), limit);
        let result = publish_all(&jetstream, merged).await;
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

async fn publish_all(
    jetstream: &async_nats::jetstream::Context,
    messages: Vec<(String, Bytes)>,
) -> Result<(), String> {
    let mut acks = Vec::with_capacity(messages.len());
    for (subject, payload) in messages {
        let ack = jetstream
            .publish(subject, payload)
            .await
            .map_err(|error| error.to_string())?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    match tokio::time::timeout(ACK_WAIT, futures_util::future::try_join_all(acks)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("JetStream did not ack in time".to_owned()),
    }
}

/// Messages of the same subject joined while they fit in `limit`: span payloads one
/// after another, log records' JSON arrays into one array.
fn coalesce(messages: impl Iterator<Item = (String, Bytes)>, limit: usize) -> Vec<(String, Bytes)> {
    let mut by_subject: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (subject, payload) in messages {
        let logs = Kind::of_subject(&subject) == Some(Kind::Logs);
        let parts = by_subject.entry(subject).or_default();
        match parts.last_mut() {
            Some(last) if last.len() + payload.len() <= limit => {
                if logs {
                    // "[a,b]" + "[c]" = "[a,b,c]"
                    last.pop();
                    last.push(b',');
                    last.extend_from_slice(&payload[1..]);
                } else {
                    last.extend_from_slice(&payload);
                }
            }
            _ => parts.push(payload.to_vec()),
        }
    }
    by_subject
        .into_iter()
        .flat_map(|(subject, parts)| {
            parts
                .into_iter()
                .map(move |part| (subject.clone(), Bytes::from(part)))
        })
        .collect()
}

/// Spans grouped by partition, each group cut into messages of at most `limit` bytes in
/// the write-ahead log's span format (payloads each prefixed by their length).
fn span_messages(
    spans: &[Span],
    partitions: u32,
    limit: usize,
) -> Result<Vec<(String, Bytes)>, ClusterError> {
    let mut groups: BTreeMap<u32, Vec<&Span>> = BTreeMap::new();
    for span in spans {
        groups
            .entry(trace_partition(&span.trace_id, partitions))
            .or_default()
            .push(span);
    }
    let mut messages = Vec::new();
    for (partition, spans) in groups {
        let mut out = Vec::new();
        for span in spans {
            let size = span.payload.len() + 4;
            if size > limit {
                return Err(ClusterError::TooLarge { bytes: size, limit });
            }
            if out.len() + size > limit {
                messages.push((subject(partition, Kind::Spans), Bytes::from(out)));
                out = Vec::new();
            }
            crate::store::traces::append_payload(&mut out, &span.payload);
        }
        if !out.is_empty() {
            messages.push((subject(partition, Kind::Spans), Bytes::from(out)));
        }
    }
    Ok(messages)
}

/// Log records grouped by partition (by trace id, else by service), each group cut into
/// JSON arrays of at most `limit` bytes.
fn log_messages(
    records: &[LogRecord],
    partitions: u32,
    limit: usize,
) -> Result<Vec<(String, Bytes)>, ClusterError> {
    let mut groups: BTreeMap<u32, Vec<&LogRecord>> = BTreeMap::new();
    for record in records {
        let partition = match &record.trace_id {
            Some(trace_id) if !record.trace_id_low64_only => trace_partition(trace_id, partitions),
            _ => service_partition(&record.service, partitions),
        };
        groups.entry(partition).or_default().push(record);
    }
    let mut messages = Vec::new();
    for (partition, records) in groups {
        let mut out = vec![b'['];
        for record in records {
            let encoded = serde_json::to_vec(record)
                .map_err(|error| ClusterError::Nats(format!("log record: {error}")))?;
            if encoded.len() + 2 > limit {
                return Err(ClusterError::TooLarge {
                    bytes: encoded.len(),
                    limit,
                });
            }
            if out.len() + encoded.len() + 2 > limit {
                out.push(b']');
                messages.push((subject(partition, Kind::Logs), Bytes::from(out)));
                out = vec![b'['];
            }
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(&encoded);
        }
        if out.len() > 1 {
            out.push(b']');
            messages.push((subject(partition, Kind::Logs), Bytes::from(out)));
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::RecordKind;

    #[test]
    fn coalesced_messages_hold_every_record_once() {
        let records: Vec<LogRecord> = (0..30)
            .map(|n| LogRecord {
                service: "svc".into(),
                message: format!("line {n}"),
                ..LogRecord::default()
            })
            .collect();
        let first = log_messages(&records[..10], 4, 2000).unwrap();
        let second = log_messages(&records[10..], 4, 2000).unwrap();
        let merged = coalesce(first.into_iter().chain(second), 2000);
        assert!(
            merged.len() < 4,
            "one message for the service's partition, cut by size"
        );
        let mut back = Vec::new();
        for (_, payload) in &merged {
            let (Batch::Logs(decoded), _) = Batch::decode(RecordKind::Logs, payload) else {
                panic!("not logs");
            };
            back.extend(decoded.into_iter().map(|record| record.message));
        }
        let expected: Vec<String> = records
            .iter()
            .map(|record| record.message.clone())
            .collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn messages_decode_back_to_the_records_they_hold() {
        let records: Vec<LogRecord> = (0..50)
            .map(|n| LogRecord {
                service: format!("svc{}", n % 3),
                message: "x".repeat(100 + n),
                time_unix_nano: n as u64,
                ..LogRecord::default()
            })
            .collect();
        let messages = log_messages(&records, 4, 2000).unwrap();
        assert!(
            messages.len() > 3,
            "small limit cuts groups into several messages"
        );
        let mut back = Vec::new();
        for (subject, payload) in &messages {
            assert!(payload.len() <= 2000);
            assert_eq!(Kind::of_subject(subject), Some(Kind::Logs));
            let (Batch::Logs(decoded), _) = Batch::decode(RecordKind::Logs, payload) else {
                panic!("not logs");
            };
            back.extend(decoded);
        }
        back.sort_by_key(|record| record.time_unix_nano);
        assert_eq!(back.len(), 50);
        assert!(back
            .iter()
            .zip(&records)
            .all(|(a, b)| a.message == b.message));
        let huge = LogRecord {
            message: "y".repeat(5000),
            ..LogRecord::default()
        };
        assert!(matches!(
            log_messages(&[huge], 4, 2000),
            Err(ClusterError::TooLarge { .. })
        ));
    }
}
