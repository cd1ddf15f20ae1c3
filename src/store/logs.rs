//! The logs index: one tantivy document per log record, found by trace id (full or only
//! its low 64 bits, as Datadog writes it), span id, service, level, time and message text.
//!
//! Stream labels from record attributes (the Kubernetes ones) are indexed as
//! `label=value` terms of one field; an index made before that field existed is opened
//! with its own schema and answers those labels by filtering instead.
//!
//! Written only by the pipeline's indexer thread; read by query handlers on blocking
//! threads. The stored `payload` is the record's JSON, the shape `/api/logs` answers with.
//! Its commit payload carries the WAL position and the tailer's file checkpoints.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;

use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::{DocAddress, Index, IndexReader, Order, TantivyDocument, Term};

use super::partitions::{PartitionIndex, Partitions};
use super::{open_index, CommitPayload, StoreError};
use crate::model::Level;
use crate::model::{LogRecord, SpanId, TraceId, LABEL_ATTRIBUTES};

#[derive(Clone, Copy)]
struct LogFields {
    id: Field,
    time: Field,
    service: Field,
    level: Field,
    message: Field,
    trace_id: Field,
    trace_low64: Field,
    span_id: Field,
    payload: Field,
    /// `label=value` terms; absent in indexes made by earlier versions.
    labels: Option<Field>,
}

const TIME_FIELD: &str = "time_unix_nano";
const LABELS_FIELD: &str = "labels";

impl LogFields {
    fn schema() -> (Schema, LogFields) {
        let mut builder = Schema::builder();
        let fields = LogFields {
            id: builder.add_text_field("id", STRING),
            time: builder.add_u64_field(TIME_FIELD, INDEXED | FAST),
            service: builder.add_text_field("service", STRING | FAST),
            level: builder.add_text_field("level", STRING | FAST),
            message: builder.add_text_field("message", TEXT),
            trace_id: builder.add_bytes_field("trace_id", INDEXED),
            trace_low64: builder.add_u64_field("trace_low64", INDEXED),
            span_id: builder.add_bytes_field("span_id", INDEXED),
            payload: builder.add_bytes_field("payload", STORED),
            labels: Some(builder.add_text_field(LABELS_FIELD, STRING)),
        };
        (builder.build(), fields)
    }

    /// The fields of an existing index's schema, by name.
    fn of(schema: &Schema) -> Result<LogFields, StoreError> {
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| StoreError::Payload(format!("logs index without field {name}")))
        };
        Ok(LogFields {
            id: field("id")?,
            time: field(TIME_FIELD)?,
            service: field("service")?,
            level: field("level")?,
            message: field("message")?,
            trace_id: field("trace_id")?,
            trace_low64: field("trace_low64")?,
            span_id: field("span_id")?,
            payload: field("payload")?,
            labels: schema.get_field(LABELS_FIELD).ok(),
        })
    }
}

/// What `/api/logs` asks for; every part optional. Serialised for the cluster's peers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LogQuery {
    pub trace_id: Option<TraceId>,
    /// The trace id was given as only 64 bits (Datadog decimal): match on those.
    pub trace_low64_only: bool,
    pub span_id: Option<SpanId>,
    pub service: Option<String>,
    pub level: Option<Level>,
    /// Stream labels from attributes (`k8s_namespace_name`…) and the value each must have.
    pub labels: Vec<(String, String)>,
    pub text: Option<String>,
    pub start_unix_nano: Option<u64>,
    pub end_unix_nano: Option<u64>,
    pub limit: usize,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

pub struct LogIndex {
    index: Index,
    reader: IndexReader,
    fields: LogFields,
}

impl PartitionIndex for LogIndex {
    fn open(dir: &Path) -> Result<LogIndex, StoreError> {
        LogIndex::open(dir)
    }

    fn tantivy(&self) -> (&Index, &IndexReader) {
        (&self.index, &self.reader)
    }
}

impl LogIndex {
    pub fn open(dir: &Path) -> Result<LogIndex, StoreError> {
        let (mut schema, mut fields) = LogFields::schema();
        if dir.join("meta.json").exists() {
            let existing = Index::open_in_dir(dir)?.schema();
            if existing.get_field(LABELS_FIELD).is_err() {
                tracing::warn!(path = %dir.display(), "logs index made by an earlier version: stream labels from attributes are matched by filtering, not by the index");
                fields = LogFields::of(&existing)?;
                schema = existing;
            }
        }
        let (index, reader) = open_index(dir, schema)?;
        Ok(LogIndex {
            index,
            reader,
            fields,
        })
    }

    /// The document of a record that already has its id.
    pub fn document(&self, record: &LogRecord) -> Result<TantivyDocument, StoreError> {
        let fields = &self.fields;
        let mut document = TantivyDocument::new();
        document.add_text(fields.id, &record.id);
        document.add_u64(fields.time, record.time_unix_nano);
        document.add_text(fields.service, &record.service);
        document.add_text(fields.level, record.level.map_or("", Level::as_str));
        document.add_text(fields.message, &record.message);
        if let Some(trace_id) = &record.trace_id {
            document.add_bytes(fields.trace_id, trace_id.0.as_slice());
            document.add_u64(fields.trace_low64, trace_id.low_u64());
        }
        if let Some(span_id) = &record.span_id {
            document.add_bytes(fields.span_id, span_id.0.as_slice());
        }
        if let Some(labels) = fields.labels {
            for (label, value) in record.labels() {
                document.add_text(labels, format!("{label}={value}"));
            }
        }
        let payload =
            serde_json::to_vec(record).map_err(|error| StoreError::Payload(error.to_string()))?;
        document.add_bytes(fields.payload, payload.as_slice());
        Ok(document)
    }

    pub fn get(&self, id: &str) -> Result<Option<LogRecord>, StoreError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(self.fields.id, id),
            IndexRecordOption::Basic,
        );
        let found: HashSet<DocAddress> = searcher.search(&query, &DocSetCollector)?;
        match found.into_iter().next() {
            Some(address) => Ok(Some(self.load(&searcher, address)?)),
            None => Ok(None),
        }
    }

    /// Matching records, newest first.
    fn search(&self, query: &LogQuery) -> Result<Vec<LogRecord>, StoreError> {
        let fields = &self.fields;
        let searcher = self.reader.searcher();
        if query.start_unix_nano.is_some() || query.end_unix_nano.is_some() {
            // Nothing of this partition in the range: not searched.
            let mut range: Option<(u64, u64)> = None;
            for segment in searcher.segment_readers() {
                if segment.num_docs() > 0 {
                    let time = segment.fast_fields().u64(TIME_FIELD)?;
                    let (low, high) = (time.min_value(), time.max_value());
                    range = Some(range.map_or((low, high), |(a, b)| (a.min(low), b.max(high))));
                }
            }
            let outside = match range {
                None => true,
                Some((earliest, latest)) => {
                    query.start_unix_nano.is_some_and(|start| latest < start)
                        || query.end_unix_nano.is_some_and(|end| earliest > end)
                }
            };
            if outside {
                return Ok(Vec::new());
            }
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let term = |field: Field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, text),
                IndexRecordOption::Basic,
            ))
        };
        if let Some(trace_id) = &query.trace_id {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(fields.trace_low64, trace_id.low_u64()),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if let Some(span_id) = &query.span_id {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_bytes(fields.span_id, &span_id.0),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if let Some(service) = &query.service {
            clauses.push((Occur::Must, term(fields.service, service)));
        }
        if let Some(level) = query.level {
            clauses.push((Occur::Must, term(fields.level, level.as_str())));
        }
        if let Some(labels) = fields.labels {
            for (label, value) in &query.labels {
                clauses.push((Occur::Must, term(labels, &format!("{label}={value}"))));
            }
        }
        if let Some(text) = query.text.as_deref().filter(|text| !text.trim().is_empty()) {
            let mut parser = QueryParser::for_index(&self.index, vec![fields.message]);
            parser.set_conjunction_by_default();
            let (parsed, _errors) = parser.parse_query_lenient(text);
            clauses.push((Occur::Must, parsed));
        }
        if query.start_unix_nano.is_some() || query.end_unix_nano.is_some() {
            let bound = |value: Option<u64>, inclusive: bool| match value {
                None => Bound::Unbounded,
                Some(value) if inclusive => {
                    Bound::Included(Term::from_field_u64(fields.time, value))
                }
                Some(value) => Bound::Excluded(Term::from_field_u64(fields.time, value)),
            };
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    bound(query.start_unix_nano, true),
                    bound(query.end_unix_nano, true),
                )),
            ));
        }
        let combined: Box<dyn Query> = if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let limit = query.limit.max(1);
        let mut records = Vec::new();
        if let Some(trace_id) = &query.trace_id {
            // All of a trace's records, then the full-id check the low-64 term cannot make.
            let found: HashSet<DocAddress> = searcher.search(&combined, &DocSetCollector)?;
            for address in found {
                let record = self.load(&searcher, address)?;
                let matches = match &record.trace_id {
                    Some(stored) => {
                        stored == trace_id || query.trace_low64_only || record.trace_id_low64_only
                    }
                    None => false,
                };
                if matches {
                    records.push(record);
                }
            }
            sort_newest_first(&mut records);
            records.truncate(limit);
            return Ok(records);
        }
        let top = searcher.search(
            &combined,
            &TopDocs::with_limit(limit).order_by_u64_field(TIME_FIELD, Order::Desc),
        )?;
        for (_, address) in top {
            records.push(self.load(&searcher, address)?);
        }
        Ok(records)
    }

    fn load(
        &self,
        searcher: &tantivy::Searcher,
        address: DocAddress,
    ) -> Result<LogRecord, StoreError> {
        let document: TantivyDocument = searcher.doc(address)?;
        let bytes = document
            .get_first(self.fields.payload)
            .and_then(|value| value.as_bytes())
            .ok_or_else(|| StoreError::Payload("log document without payload".into()))?;
        serde_json::from_slice(bytes).map_err(|error| StoreError::Payload(error.to_string()))
    }

    /// Add the distinct values of `service`, `level` or an attribute label such as
    /// `k8s_namespace_name` (for Loki's label values).
    fn values_into(
        &self,
        field_name: &str,
        values: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let (field, prefix) = match field_name {
            "service" => (self.fields.service, String::new()),
            "level" => (self.fields.level, String::new()),
            label if LABEL_ATTRIBUTES.iter().any(|(known, _)| *known == label) => {
                match self.fields.labels {
                    Some(labels) => (labels, format!("{label}=")),
                    None => return Ok(()),
                }
            }
            other => return Err(StoreError::Payload(format!("no such label field {other}"))),
        };
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut terms = inverted.terms().stream()?;
            while let Some((key, _)) = terms.next() {
                let Some(value) = key.strip_prefix(prefix.as_bytes()) else {
                    continue;
                };
                if !value.is_empty() {
                    values.insert(String::from_utf8_lossy(value).into_owned());
                }
            }
        }
        Ok(())
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// Newest first; records of one instant by id, so that every order of partitions and
/// segments gives the same answer.
pub(crate) fn sort_newest_first(records: &mut [LogRecord]) {
    records.sort_by(|a, b| {
        b.time_unix_nano
            .cmp(&a.time_unix_nano)
            .then(b.id.cmp(&a.id))
    });
}

/// Reads across every partition of the logs index.
impl Partitions<LogIndex> {
    /// The WAL position and file checkpoints of the last commit (nothing before the first).
    pub fn committed_payload(&self) -> Result<CommitPayload, StoreError> {
        Ok(self.committed()?.unwrap_or_default())
    }

    pub fn get(&self, id: &str) -> Result<Option<LogRecord>, StoreError> {
        for partition in self.newest_first() {
            if let Some(record) = partition.index.get(id)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Matching records of every partition, newest first, at most `query.limit`.
    pub fn search(&self, query: &LogQuery) -> Result<Vec<LogRecord>, StoreError> {
        let mut records = Vec::new();
        for partition in self.newest_first() {
            records.extend(partition.index.search(query)?);
        }
        sort_newest_first(&mut records);
        records.truncate(query.limit.max(1));
        Ok(records)
    }

    /// Distinct values of `service`, `level` or an attribute label such as
    /// `k8s_namespace_name` (for Loki's label values).
    pub fn values_of(&self, field_name: &str) -> Result<Vec<String>, StoreError> {
        let mut values = std::collections::BTreeSet::new();
        for partition in self.newest_first() {
            partition.index.values_into(field_name, &mut values)?;
        }
        Ok(values.into_iter().collect())
    }

    pub fn num_docs(&self) -> u64 {
        self.newest_first()
            .iter()
            .map(|partition| partition.index.num_docs())
            .sum()
    }
}
