//! The bodies of the fuzz targets under `fuzz/` (cargo-fuzz, libFuzzer), kept in the
//! library so that `cargo test` replays every input a fuzzer ever found
//! (`fuzz/regressions/<target>/`, see `tests/fuzz_regressions.rs`). Each takes arbitrary
//! bytes and must not panic; the OTLP one also checks that the protobuf reader accepts
//! exactly what prost accepts and finds the same spans.

use std::sync::OnceLock;

use prost::Message as _;

use crate::ingest::logline::{self, FieldNames, Format};
use crate::model::{SpanId, TraceId};
use crate::redact::{RedactionConfig, Redactor};

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by the name `fuzz/run` and the regression directories use.
pub const TARGETS: [(&str, Target); 8] = [
    ("otlp_protobuf", otlp_protobuf),
    ("otlp_json", otlp_json),
    ("zipkin_json", zipkin_json),
    ("log_line", log_line),
    ("logql", logql),
    ("traceql", traceql),
    ("ids", ids),
    ("wal", wal),
];

/// The built-in redactor, as a default service runs it (its screen and rewrite are on
/// every ingest path).
fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(|| {
        Redactor::new(RedactionConfig {
            builtin: true,
            max_value_bytes: 16 * 1024,
            ..RedactionConfig::default()
        })
    })
}

/// OTLP/protobuf traces (the wire reader, against prost) and logs.
pub fn otlp_protobuf(data: &[u8]) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let by_wire = crate::ingest::otlp_wire::decode_request(data, redactor());
    let by_prost = ExportTraceServiceRequest::decode(data);
    assert_eq!(
        by_wire.is_ok(),
        by_prost.is_ok(),
        "wire {:?}, prost {:?}",
        by_wire.as_ref().err(),
        by_prost.as_ref().err()
    );
    if let (Ok(by_wire), Ok(request)) = (by_wire, by_prost) {
        let by_prost = crate::ingest::otlp::from_request(request, redactor());
        assert_eq!(by_wire.spans.len(), by_prost.spans.len());
        assert_eq!(by_wire.rejected.len(), by_prost.rejected.len());
    }
    let _ = crate::ingest::otlp_logs::decode_protobuf(data);
}

/// OTLP/JSON traces and logs.
pub fn otlp_json(data: &[u8]) {
    let _ = crate::ingest::otlp::decode_json(data, redactor());
    let _ = crate::ingest::otlp_logs::decode_json(data);
}

/// Zipkin v2 JSON.
pub fn zipkin_json(data: &[u8]) {
    let _ = crate::ingest::zipkin::decode_json(data, redactor());
}

/// A tailed line, as every format reads it, and its container wrapper.
pub fn log_line(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let fields = FieldNames::default();
    for format in [Format::Auto, Format::Json, Format::Logfmt, Format::Text] {
        let _ = logline::parse_line(line, format, &fields);
    }
    let _ = logline::split_cri(line);
}

/// A LogQL query (Grafana's Loki data source).
pub fn logql(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::api::loki::logql::parse(text);
        let _ = crate::api::loki::logql::parse_duration(text);
    }
}

/// A TraceQL query (Grafana's Tempo data source).
pub fn traceql(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::query::traceql::parse(text);
        let _ = crate::query::traceql::parse_duration(text);
    }
}

/// Ids and times as routes and log lines give them.
pub fn ids(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = TraceId::parse(text);
    let _ = SpanId::parse(text);
    let _ = logline::parse_log_trace_id("trace_id", text);
    let _ = logline::parse_log_trace_id("dd.trace_id", text);
    let _ = logline::parse_log_span_id("span_id", text);
    let _ = logline::parse_traceparent(text);
    let _ = logline::parse_time_text(text);
}

/// A WAL segment of arbitrary bytes, replayed as a start does, every record decoded.
pub fn wal(data: &[u8]) {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tracelink-fuzz-wal-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let wal_dir = dir.join("wal");
    if std::fs::create_dir_all(&wal_dir).is_err() {
        return;
    }
    if std::fs::write(wal_dir.join(format!("{:020}.wal", 0)), data).is_ok() {
        let files = std::sync::Arc::new(crate::wal::WalFiles::new(&wal_dir));
        let _ = crate::wal::Wal::open(files, 0, 1 << 20, |record| {
            let _ = crate::pipeline::Batch::decode(record.kind, &record.payload);
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
