//! The spans index: one tantivy document per span, found by trace id.
//!
//! Written only by the pipeline's indexer thread (through the `IndexWriter` this module
//! opens); read by query handlers on blocking threads. The stored `payload` field is the
//! span's `ResourceSpans` protobuf; `trace_id` is the only term every read needs, the other
//! fields are fast fields for search and metrics rebuilds.

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;
use tantivy::collector::DocSetCollector;
use tantivy::directory::MmapDirectory;
use tantivy::query::TermQuery;
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{
    DocAddress, Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument, Term,
};

use super::{CommitPayload, StoreError};
use crate::model::{Span, TraceId};

/// Field handles of the spans schema.
#[derive(Clone, Copy)]
struct SpanFields {
    trace_id: Field,
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
            trace_id: builder.add_bytes_field("trace_id", INDEXED),
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

/// The committed spans, and the means to add more.
pub struct SpanIndex {
    index: Index,
    reader: IndexReader,
    fields: SpanFields,
}

impl SpanIndex {
    pub fn open(dir: &Path) -> Result<SpanIndex, StoreError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = SpanFields::schema();
        let settings = IndexSettings {
            docstore_compression: Compressor::Zstd(ZstdCompressor {
                compression_level: Some(3),
            }),
            ..IndexSettings::default()
        };
        let index = Index::builder()
            .schema(schema)
            .settings(settings)
            .open_or_create(MmapDirectory::open(dir)?)?;
        // Reloads are explicit, right after each commit, so the head buffer is only
        // evicted once searches already see what it held.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
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
