//! The spans index: one tantivy document per span, found by trace id.
//!
//! Written only by the pipeline's indexer thread (through the `IndexWriter` this module
//! opens); read by query handlers on blocking threads. The stored `payload` field is the
//! span's `ResourceSpans` protobuf; `trace_id` is the only term every read needs, the other
//! fields are fast fields for search and metrics rebuilds.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use tantivy::collector::DocSetCollector;
use tantivy::query::TermQuery;
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, TantivyDocument, Term};

use super::{open_index, CommitPayload, StoreError};
use crate::model::{Span, TraceId};

/// Field handles of the spans schema.
#[derive(Clone, Copy)]
struct SpanFields {
    trace_id: Field,
    kind: Field,
    service: Field,
    name: Field,
    start_time: Field,
    duration: Field,
    status_code: Field,
    payload: Field,
}

impl SpanFields {
    fn schema() -> (Schema, SpanFields) {
        let mut builder = Schema::builder();
        let fields = SpanFields {
            trace_id: builder.add_bytes_field("trace_id", INDEXED | FAST),
            kind: builder.add_u64_field("kind", FAST),
            service: builder.add_text_field("service", STRING | FAST),
            name: builder.add_text_field("name", STRING | FAST),
            start_time: builder.add_u64_field("start_time_unix_nano", INDEXED | FAST),
            duration: builder.add_u64_field("duration_nanos", FAST),
            status_code: builder.add_u64_field("status_code", FAST),
            payload: builder.add_bytes_field("payload", STORED),
        };
        (builder.build(), fields)
    }
}

/// What the fast fields hold of a span.
pub struct SpanSummary<'a> {
    pub trace_id: TraceId,
    pub service: &'a str,
    pub name: &'a str,
    pub kind: i32,
    pub status_code: i32,
    pub start_time_unix_nano: u64,
    pub duration_nanos: u64,
}

/// The committed spans, and the means to add more.
pub struct SpanIndex {
    index: Index,
    reader: IndexReader,
    fields: SpanFields,
}

impl SpanIndex {
    pub fn open(dir: &Path) -> Result<SpanIndex, StoreError> {
        let (schema, fields) = SpanFields::schema();
        let (index, reader) = open_index(dir, schema)?;
        Ok(SpanIndex {
            index,
            reader,
            fields,
        })
    }

    /// The WAL position covered by the last commit (0 for a new index).
    pub fn committed_wal_position(&self) -> Result<u64, StoreError> {
        let metas = self.index.load_metas()?;
        Ok(CommitPayload::parse(metas.payload.as_deref())?.wal_position)
    }

    pub fn writer(&self, memory_bytes: usize) -> Result<IndexWriter, StoreError> {
        Ok(self.index.writer_with_num_threads(1, memory_bytes)?)
    }

    pub fn document(&self, span: &Span) -> TantivyDocument {
        let fields = &self.fields;
        let mut document = TantivyDocument::new();
        document.add_bytes(fields.trace_id, span.trace_id.0.as_slice());
        document.add_text(fields.service, &span.service);
        document.add_text(fields.name, &span.name);
        document.add_u64(fields.kind, span.kind.max(0) as u64);
        document.add_u64(fields.start_time, span.start_time_unix_nano);
        document.add_u64(fields.duration, span.duration_nanos);
        document.add_u64(fields.status_code, span.status_code.max(0) as u64);
        document.add_bytes(fields.payload, span.payload.as_ref());
        document
    }

    /// Commit what the writer holds, recording the WAL position it covers, and make it
    /// visible to searches before returning.
    pub fn commit(&self, writer: &mut IndexWriter, wal_position: u64) -> Result<(), StoreError> {
        let mut prepared = writer.prepare_commit()?;
        let payload = CommitPayload {
            wal_position,
            ..CommitPayload::default()
        };
        prepared.set_payload(&payload.render());
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Payloads of spans of `service` that started in `[from, to]`, newest first, at most
    /// `limit`: the candidates for a log record that carries no trace id.
    pub fn service_spans_between(
        &self,
        service: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError> {
        let searcher = self.reader.searcher();
        let query = tantivy::query::BooleanQuery::new(vec![
            (
                tantivy::query::Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.fields.service, service),
                    IndexRecordOption::Basic,
                )) as Box<dyn tantivy::query::Query>,
            ),
            (
                tantivy::query::Occur::Must,
                Box::new(tantivy::query::RangeQuery::new(
                    std::ops::Bound::Included(Term::from_field_u64(self.fields.start_time, from)),
                    std::ops::Bound::Included(Term::from_field_u64(self.fields.start_time, to)),
                )),
            ),
        ]);
        let top = searcher.search(
            &query,
            &tantivy::collector::TopDocs::with_limit(limit.max(1))
                .order_by_u64_field("start_time_unix_nano", tantivy::Order::Desc),
        )?;
        let mut payloads = Vec::with_capacity(top.len());
        for (_, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            if let Some(bytes) = document
                .get_first(self.fields.payload)
                .and_then(|value| value.as_bytes())
            {
                payloads.push(Bytes::copy_from_slice(bytes));
            }
        }
        Ok(payloads)
    }

    /// Stored payloads of every committed span of a trace.
    pub fn trace_payloads(&self, trace_id: &TraceId) -> Result<Vec<Bytes>, StoreError> {
        let searcher = self.reader.searcher();
        let term = Term::from_field_bytes(self.fields.trace_id, &trace_id.0);
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let addresses: HashSet<DocAddress> = searcher.search(&query, &DocSetCollector)?;
        let mut addresses: Vec<DocAddress> = addresses.into_iter().collect();
        addresses.sort();
        let mut payloads = Vec::with_capacity(addresses.len());
        for address in addresses {
            let document: TantivyDocument = searcher.doc(address)?;
            if let Some(bytes) = document
                .get_first(self.fields.payload)
                .and_then(|value| value.as_bytes())
            {
                payloads.push(Bytes::copy_from_slice(bytes));
            }
        }
        Ok(payloads)
    }

    /// Every committed span's summary, from the fast fields (no stored document is read),
    /// segment by segment: what the latency histograms are rebuilt from at start.
    pub fn for_each_summary(
        &self,
        mut visit: impl FnMut(SpanSummary<'_>),
    ) -> Result<u64, StoreError> {
        let searcher = self.reader.searcher();
        let mut visited = 0;
        for segment in searcher.segment_readers() {
            let fast = segment.fast_fields();
            let (Some(services), Some(names), Some(trace_ids)) = (
                fast.str("service")?,
                fast.str("name")?,
                fast.bytes("trace_id")?,
            ) else {
                continue;
            };
            let kinds = fast.u64("kind")?;
            let starts = fast.u64("start_time_unix_nano")?;
            let durations = fast.u64("duration_nanos")?;
            let statuses = fast.u64("status_code")?;
            let mut service_names: HashMap<u64, String> = HashMap::new();
            let mut span_names: HashMap<u64, String> = HashMap::new();
            let mut trace_bytes = Vec::new();
            let alive = segment.alive_bitset();
            for doc in 0..segment.max_doc() {
                if alive.is_some_and(|bitset| !bitset.is_alive(doc)) {
                    continue;
                }
                let (Some(service_ord), Some(name_ord), Some(trace_ord)) = (
                    services.term_ords(doc).next(),
                    names.term_ords(doc).next(),
                    trace_ids.term_ords(doc).next(),
                ) else {
                    continue;
                };
                let service = service_names.entry(service_ord).or_insert_with(|| {
                    let mut text = String::new();
                    let _ = services.ord_to_str(service_ord, &mut text);
                    text
                });
                let name = span_names.entry(name_ord).or_insert_with(|| {
                    let mut text = String::new();
                    let _ = names.ord_to_str(name_ord, &mut text);
                    text
                });
                trace_bytes.clear();
                trace_ids.ord_to_bytes(trace_ord, &mut trace_bytes)?;
                let Ok(trace_id) = TraceId::from_bytes(&trace_bytes) else {
                    continue;
                };
                visit(SpanSummary {
                    trace_id,
                    service,
                    name,
                    kind: kinds.first(doc).unwrap_or(0) as i32,
                    status_code: statuses.first(doc).unwrap_or(0) as i32,
                    start_time_unix_nano: starts.first(doc).unwrap_or(0),
                    duration_nanos: durations.first(doc).unwrap_or(0),
                });
                visited += 1;
            }
        }
        Ok(visited)
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

    fn span(trace: u8, id: u8) -> Span {
        let otlp = OtlpSpan {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("op-{id}"),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        };
        Span::from_otlp(None, "", None, "", otlp).unwrap()
    }

    #[test]
    fn committed_spans_are_found_by_trace_id_and_position_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = SpanIndex::open(dir.path()).unwrap();
            assert_eq!(index.committed_wal_position().unwrap(), 0);
            let mut writer = index.writer(16 << 20).unwrap();
            for (trace, id) in [(1, 1), (1, 2), (2, 3)] {
                writer
                    .add_document(index.document(&span(trace, id)))
                    .unwrap();
            }
            index.commit(&mut writer, 4242).unwrap();
            let payloads = index.trace_payloads(&TraceId([1; 16])).unwrap();
            assert_eq!(payloads.len(), 2);
            assert_eq!(payloads[0], span(1, 1).payload);
        }
        let index = SpanIndex::open(dir.path()).unwrap();
        assert_eq!(index.committed_wal_position().unwrap(), 4242);
        assert_eq!(index.trace_payloads(&TraceId([2; 16])).unwrap().len(), 1);
        assert!(index.trace_payloads(&TraceId([3; 16])).unwrap().is_empty());
    }
}
