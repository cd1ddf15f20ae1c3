//! The stored log record, in the JSON shape `/api/logs` answers with.
//!
//! Built by the tailer (from a parsed line) or from an OTLP log record; its `id` is given
//! once its place is known: the file identity and byte offset for a tailed line, the WAL
//! position for an OTLP record. The same line read twice gets the same id.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{SpanId, TraceId};
use crate::model::Level;

/// Where a tailed line was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSource {
    pub path: String,
    pub offset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    #[serde(default)]
    pub id: String,
    /// RFC 3339, derived from `time_unix_nano` when the id is given.
    #[serde(default)]
    pub time: String,
    pub time_unix_nano: u64,
    pub service: String,
    pub level: Option<Level>,
    pub message: String,
    pub trace_id: Option<TraceId>,
    /// Only the low 64 bits of the trace id are known (Datadog decimal, 16-hex ids).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_id_low64_only: bool,
    pub span_id: Option<SpanId>,
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<LogSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
}

impl LogRecord {
    /// Give the record its stable id (and its RFC 3339 time).
    pub fn assign_id(&mut self, id: String) {
        self.id = id;
        self.time = rfc3339(self.time_unix_nano);
    }

    /// Id of the `index`-th record of the WAL record ending at `wal_position`.
    pub fn wal_id(wal_position: u64, index: usize) -> String {
        format!("w{wal_position:x}-{index:x}")
    }

    /// Id of the `index`-th record of the cluster stream's message `sequence`.
    pub fn stream_id(sequence: u64, index: usize) -> String {
        format!("s{sequence:x}-{index:x}")
    }

    /// Id of a tailed line: a hash of the file's identity and the line's byte offset.
    pub fn file_id(file_identity: u64, offset: u64) -> String {
        format!("f{file_identity:016x}-{offset:x}")
    }

    /// The record's stream labels beyond service and level: its Kubernetes attributes,
    /// under the names Loki gives them (dots become underscores).
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        LABEL_ATTRIBUTES.iter().filter_map(|(label, attribute)| {
            self.attributes
                .get(*attribute)
                .and_then(serde_json::Value::as_str)
                .map(|value| (*label, value))
        })
    }
}

/// Stream labels taken from record attributes: (label, attribute).
pub const LABEL_ATTRIBUTES: [(&str, &str); 3] = [
    ("k8s_namespace_name", "k8s.namespace.name"),
    ("k8s_pod_name", "k8s.pod.name"),
    ("k8s_container_name", "k8s.container.name"),
];

pub fn rfc3339(time_unix_nano: u64) -> String {
    let seconds = (time_unix_nano / 1_000_000_000) as i64;
    let nanos = (time_unix_nano % 1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(seconds, nanos)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_default()
}

// === impl Serialize for ids ===

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TraceId::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for SpanId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SpanId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SpanId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_serialise_in_the_api_shape_and_back() {
        let mut record = LogRecord {
            id: String::new(),
            time: String::new(),
            time_unix_nano: 1_714_557_600_123_456_789,
            service: "orders".into(),
            level: Some(Level::Error),
            message: "boom".into(),
            trace_id: Some(TraceId([1; 16])),
            trace_id_low64_only: false,
            span_id: Some(SpanId([2; 8])),
            attributes: BTreeMap::from([("k".to_string(), serde_json::json!(1))]),
            stream: None,
            source: Some(LogSource {
                path: "/var/log/app.log".into(),
                offset: 42,
            }),
            parse_error: None,
        };
        record.assign_id(LogRecord::file_id(7, 42));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["id"], "f0000000000000007-2a");
        assert_eq!(json["time"], "2024-05-01T10:00:00.123456789Z");
        assert_eq!(json["level"], "error");
        assert_eq!(json["trace_id"], "01010101010101010101010101010101");
        assert_eq!(json["span_id"], "0202020202020202");
        assert_eq!(json["source"]["offset"], 42);
        let back: LogRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
