//! Ingest on any node: a request's records, by partition, onto the stream.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

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
        let limit = (self.client.server_info().max_payload.max(64 * 1024)) - HEADROOM;
        let messages = match batch {
            Batch::Spans(spans) => span_messages(spans, self.config.partitions, limit)?,
            Batch::Logs(records) => log_messages(records, self.config.partitions, limit)?,
        };
        let mut acks = Vec::with_capacity(messages.len());
        for (subject, payload) in messages {
            let ack = self
                .jetstream
                .publish(subject, payload)
                .await
                .map_err(ClusterError::nats)?;
            acks.push(std::future::IntoFuture::into_future(ack));
        }
        let all = futures_util::future::try_join_all(acks);
        match tokio::time::timeout(ACK_WAIT, all).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(ClusterError::nats(error)),
            Err(_) => Err(ClusterError::Nats(
                "JetStream did not ack in time".to_owned(),
            )),
        }
    }
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
