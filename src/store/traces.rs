//! The traces index: one tantivy document per trace fragment, found by trace id.
//!
//! Written only by the pipeline's indexer thread (through the `IndexWriter` this module
//! opens), one document for each trace, or later fragment of a trace, that tail sampling
//! kept; read by query handlers on blocking threads. The stored `payload` holds the
//! fragment's spans, each a one-span `ResourceSpans` protobuf prefixed by its length (u32
//! LE), in the zstd-compressed doc store, so that the resource and scope repeated per span
//! cost little on disk. The indexed fields are what trace by id, Datadog's 64-bit ids,
//! search and replay need: trace id and its low 64 bits, start and end, root service and
//! name, the distinct services, span names, statuses and kinds of its spans, and their
//! attributes as `scope\0key\0<type><value>` terms (for tag names and values).
//! An index made before the attribute field existed is opened with its own schema.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use bytes::Bytes;
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING};
use tantivy::{DocAddress, Index, IndexReader, Searcher, TantivyDocument, Term};

use super::partitions::{PartitionIndex, Partitions};
use super::tags::{split_operation, split_term, AttributeTerms, TagScope, TagType};
#[cfg(test)]
use super::CommitPayload;
use super::{open_index, StoreError};
use crate::model::{Span, SpanId, TraceId};

/// What a fragment must hold for its trace to be a search candidate (each an indexed
/// term of the fragment document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentHas {
    Service(String),
    SpanName(String),
    StatusCode(u64),
    Kind(u64),
}

/// How long a fragment may last and still be found by a search whose range starts after
/// the fragment did: a trace leaves the head after `trace_max_age_ms` (30 s by default),
/// so only spans that themselves last longer than this are missed.
pub const LONGEST_FRAGMENT_NANOS: u64 = 3_600_000_000_000;

/// Field handles of the traces schema.
#[derive(Clone, Copy)]
struct TraceFields {
    trace_id: Field,
    trace_low64: Field,
    start_time: Field,
    end_time: Field,
    root_service: Field,
    root_name: Field,
    service: Field,
    name: Field,
    status_code: Field,
    kind: Field,
    span_count: Field,
    wal_last: Field,
    payload: Field,
    /// `scope\0key\0<type><value>` terms; absent in indexes of earlier versions.
    attribute: Option<Field>,
}

const ATTRIBUTE_FIELD: &str = "attribute";

impl TraceFields {
    fn schema() -> (Schema, TraceFields) {
        let mut builder = Schema::builder();
        let fields = TraceFields {
            trace_id: builder.add_bytes_field("trace_id", INDEXED | FAST | STORED),
            trace_low64: builder.add_u64_field("trace_low64", INDEXED),
            start_time: builder.add_u64_field("start_time_unix_nano", INDEXED | FAST),
            end_time: builder.add_u64_field("end_time_unix_nano", FAST),
            root_service: builder.add_text_field("root_service", STRING),
            root_name: builder.add_text_field("root_name", STRING),
            service: builder.add_text_field("service", STRING),
            name: builder.add_text_field("name", STRING),
            status_code: builder.add_u64_field("status_code", INDEXED),
            kind: builder.add_u64_field("kind", INDEXED),
            span_count: builder.add_u64_field("span_count", FAST),
            wal_last: builder.add_u64_field("wal_last", INDEXED),
            payload: builder.add_bytes_field("payload", STORED),
            attribute: Some(builder.add_text_field(ATTRIBUTE_FIELD, STRING)),
        };
        (builder.build(), fields)
    }

    /// The fields of an existing index's schema, by name.
    fn of(schema: &Schema) -> Result<TraceFields, StoreError> {
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| StoreError::Payload(format!("traces index without field {name}")))
        };
        Ok(TraceFields {
            trace_id: field("trace_id")?,
            trace_low64: field("trace_low64")?,
            start_time: field("start_time_unix_nano")?,
            end_time: field("end_time_unix_nano")?,
            root_service: field("root_service")?,
            root_name: field("root_name")?,
            service: field("service")?,
            name: field("name")?,
            status_code: field("status_code")?,
            kind: field("kind")?,
            span_count: field("span_count")?,
            wal_last: field("wal_last")?,
            payload: field("payload")?,
            attribute: schema.get_field(ATTRIBUTE_FIELD).ok(),
        })
    }
}

/// Append one span payload to a sequence of them, prefixed by its length (u32 LE): the
/// format of a fragment's stored payload and of a WAL span record alike.
pub fn append_payload(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Split a sequence of length-prefixed span payloads ([`append_payload`]).
pub fn split_payload(stored: &[u8]) -> Vec<Bytes> {
    split_payload_at(stored)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

/// [`split_payload`], with where each payload starts in `stored`.
pub fn split_payload_at(stored: &[u8]) -> Vec<(usize, Bytes)> {
    let shared = Bytes::copy_from_slice(stored);
    let mut spans = Vec::new();
    let mut offset = 0;
    while offset + 4 <= shared.len() {
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&shared[offset..offset + 4]);
        let len = u32::from_le_bytes(len_bytes) as usize;
        offset += 4;
        if offset + len > shared.len() {
            tracing::error!("stored span payloads are cut short");
            break;
        }
        spans.push((offset, shared.slice(offset..offset + len)));
        offset += len;
    }
    spans
}

/// The committed trace fragments, and the means to add more.
pub struct TraceIndex {
    index: Index,
    reader: IndexReader,
    fields: TraceFields,
}

impl PartitionIndex for TraceIndex {
    fn open(dir: &Path) -> Result<TraceIndex, StoreError> {
        TraceIndex::open(dir)
    }

    fn tantivy(&self) -> (&Index, &IndexReader) {
        (&self.index, &self.reader)
    }
}

impl TraceIndex {
    pub fn open(dir: &Path) -> Result<TraceIndex, StoreError> {
        let (mut schema, mut fields) = TraceFields::schema();
        if dir.join("meta.json").exists() {
            let existing = Index::open_in_dir(dir)?.schema();
            if existing.get_field(ATTRIBUTE_FIELD).is_err() {
                tracing::warn!(path = %dir.display(), "traces index made by an earlier version: its traces give no tag names or values");
                fields = TraceFields::of(&existing)?;
                schema = existing;
            }
        }
        let (index, reader) = open_index(dir, schema)?;
        Ok(TraceIndex {
            index,
            reader,
            fields,
        })
    }

    /// One document for the spans of a trace fragment (all of one trace, not empty) that
    /// came in WAL records up to the one starting at `wal_last`. `payload` is a scratch
    /// buffer reused across calls.
    pub fn document(
        &self,
        spans: &[Span],
        wal_last: u64,
        payload: &mut Vec<u8>,
    ) -> TantivyDocument {
        let fields = &self.fields;
        let Some(first) = spans.first() else {
            return TantivyDocument::new();
        };
        let trace_id = first.trace_id;
        let mut start = u64::MAX;
        let mut end = 0u64;
        let mut services = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut statuses = 0u8;
        let mut kinds = 0u8;
        let mut root = None;
        let mut terms = AttributeTerms::default();
        // Resource terms once per distinct envelope of the fragment.
        let mut envelopes_seen: Vec<*const crate::model::Envelope> = Vec::new();
        payload.clear();
        for span in spans {
            if fields.attribute.is_some() {
                let envelope = std::sync::Arc::as_ptr(&span.envelope);
                let with_resource = !envelopes_seen.contains(&envelope);
                if with_resource {
                    envelopes_seen.push(envelope);
                }
                terms.add_payload(&span.payload, with_resource);
                terms.add_operation(&span.service, span.kind, &span.name);
            }
            start = start.min(span.start_time_unix_nano);
            end = end.max(
                span.start_time_unix_nano
                    .saturating_add(span.duration_nanos),
            );
            services.insert(&*span.service);
            names.insert(span.name.as_str());
            statuses |= 1 << span.status_code.clamp(0, 7);
            kinds |= 1 << span.kind.clamp(0, 7);
            if span.parent_span_id.is_none()
                && root.is_none_or(|(earliest, _, _)| span.start_time_unix_nano < earliest)
            {
                root = Some((
                    span.start_time_unix_nano,
                    &*span.service,
                    span.name.as_str(),
                ));
            }
            append_payload(payload, &span.payload);
        }
        // Sized for what it will hold: grown by doubling, the document was copied over and
        // over again on its way to the payload's size (a fresh page each time, often).
        let texts: usize = services.iter().chain(&names).map(|text| text.len()).sum();
        let mut document = TantivyDocument::with_capacity(
            payload.len() + terms.bytes() + texts + 64 * (services.len() + names.len()) + 512,
        );
        document.add_bytes(fields.trace_id, trace_id.0.as_slice());
        document.add_u64(fields.trace_low64, trace_id.low_u64());
        document.add_u64(fields.start_time, start);
        document.add_u64(fields.end_time, end);
        if let Some((_, service, name)) = root {
            document.add_text(fields.root_service, service);
            document.add_text(fields.root_name, name);
        }
        for service in services {
            document.add_text(fields.service, service);
        }
        for name in names {
            document.add_text(fields.name, name);
        }
        for bit in 0..8u64 {
            if statuses & (1 << bit) != 0 {
                document.add_u64(fields.status_code, bit);
            }
            if kinds & (1 << bit) != 0 {
                document.add_u64(fields.kind, bit);
            }
        }
        if let Some(attribute) = fields.attribute {
            for term in terms.distinct() {
                document.add_text(attribute, term);
            }
        }
        document.add_u64(fields.span_count, spans.len() as u64);
        document.add_u64(fields.wal_last, wal_last);
        document.add_bytes(fields.payload, payload.as_slice());
        document
    }

    fn stored_spans(
        &self,
        searcher: &Searcher,
        address: DocAddress,
    ) -> Result<Vec<Bytes>, StoreError> {
        let document: TantivyDocument = searcher.doc(address)?;
        Ok(document
            .get_first(self.fields.payload)
            .and_then(|value| value.as_bytes())
            .map(split_payload)
            .unwrap_or_default())
    }

    /// Span payloads of every committed fragment of a trace, duplicates included.
    pub fn trace_payloads(&self, trace_id: &TraceId) -> Result<Vec<Bytes>, StoreError> {
        let searcher = self.reader.searcher();
        let term = Term::from_field_bytes(self.fields.trace_id, &trace_id.0);
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let addresses: HashSet<DocAddress> = searcher.search(&query, &DocSetCollector)?;
        let mut addresses: Vec<DocAddress> = addresses.into_iter().collect();
        addresses.sort();
        let mut payloads = Vec::new();
        for address in addresses {
            payloads.extend(self.stored_spans(&searcher, address)?);
        }
        Ok(payloads)
    }

    /// Fragments of a trace in the index.
    pub fn fragments(&self, trace_id: &TraceId) -> Result<usize, StoreError> {
        let searcher = self.reader.searcher();
        let term = Term::from_field_bytes(self.fields.trace_id, &trace_id.0);
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        Ok(searcher.search(&query, &tantivy::collector::Count)?)
    }

    /// The earliest start and latest end of the fragments held; `None` when empty.
    fn time_range(&self, searcher: &Searcher) -> Result<Option<(u64, u64)>, StoreError> {
        let mut range: Option<(u64, u64)> = None;
        for segment in searcher.segment_readers() {
            if segment.num_docs() == 0 {
                continue;
            }
            let fast = segment.fast_fields();
            let start = fast.u64("start_time_unix_nano")?.min_value();
            let end = fast.u64("end_time_unix_nano")?.max_value();
            range = Some(range.map_or((start, end), |(low, high)| (low.min(start), high.max(end))));
        }
        Ok(range)
    }

    /// The `limit` newest-starting fragments that started at or before `to` (all with
    /// `None`) and no more than [`LONGEST_FRAGMENT_NANOS`] before `from`: `(trace id,
    /// start, end)`, newest start first. Read from fast fields: no stored document is
    /// opened.
    fn newest_fragments(
        &self,
        from: Option<u64>,
        to: Option<u64>,
        required: &[FragmentHas],
        limit: usize,
    ) -> Result<Vec<(TraceId, u64, u64)>, StoreError> {
        let searcher = self.reader.searcher();
        match self.time_range(&searcher)? {
            None => return Ok(Vec::new()),
            Some((earliest, latest)) => {
                if from.is_some_and(|from| latest < from) || to.is_some_and(|to| earliest > to) {
                    return Ok(Vec::new());
                }
            }
        }
        let bound = |value: Option<u64>| match value {
            Some(value) => {
                std::ops::Bound::Included(Term::from_field_u64(self.fields.start_time, value))
            }
            None => std::ops::Bound::Unbounded,
        };
        let lower = from.map(|from| from.saturating_sub(LONGEST_FRAGMENT_NANOS));
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if lower.is_some() || to.is_some() {
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(bound(lower), bound(to))),
            ));
        }
        for has in required {
            let term = match has {
                FragmentHas::Service(service) => {
                    Term::from_field_text(self.fields.service, service)
                }
                FragmentHas::SpanName(name) => Term::from_field_text(self.fields.name, name),
                FragmentHas::StatusCode(code) => {
                    Term::from_field_u64(self.fields.status_code, *code)
                }
                FragmentHas::Kind(kind) => Term::from_field_u64(self.fields.kind, *kind),
            };
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            ));
        }
        let query: Box<dyn Query> = if clauses.is_empty() {
            Box::new(tantivy::query::AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let top = searcher.search(
            &query,
            &TopDocs::with_limit(limit.max(1))
                .order_by_u64_field("start_time_unix_nano", tantivy::Order::Desc),
        )?;
        let mut found = Vec::with_capacity(top.len());
        let mut bytes = Vec::new();
        for (start, address) in top {
            let segment = searcher.segment_reader(address.segment_ord);
            let fast = segment.fast_fields();
            let end = fast
                .u64("end_time_unix_nano")?
                .first(address.doc_id)
                .unwrap_or(u64::MAX);
            let Some(ids) = fast.bytes("trace_id")? else {
                continue;
            };
            let Some(ord) = ids.term_ords(address.doc_id).next() else {
                continue;
            };
            bytes.clear();
            if ids.ord_to_bytes(ord, &mut bytes)? {
                if let Ok(trace_id) = TraceId::from_bytes(&bytes) {
                    found.push((trace_id, start.unwrap_or(0), end));
                }
            }
        }
        Ok(found)
    }

    /// Add (service, span kind, span name) of every operation stored.
    fn operations_into(
        &self,
        operations: &mut BTreeSet<(String, i32, String)>,
    ) -> Result<(), StoreError> {
        let Some(field) = self.fields.attribute else {
            return Ok(());
        };
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut terms = inverted
                .terms()
                .range()
                .ge("op\0")
                .lt("op\u{1}")
                .into_stream()?;
            while let Some((term, _)) = terms.next() {
                if let Some((service, kind, name)) = split_operation(term) {
                    operations.insert((service.to_owned(), kind, name.to_owned()));
                }
            }
        }
        Ok(())
    }

    /// Add the attribute keys of the stored traces, by scope.
    fn tag_names_into(&self, names: &mut BTreeSet<(TagScope, String)>) -> Result<(), StoreError> {
        let Some(field) = self.fields.attribute else {
            return Ok(());
        };
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut terms = inverted.terms().stream()?;
            while let Some((term, _)) = terms.next() {
                if let Some((scope, key, _, _)) = split_term(term) {
                    names.insert((scope, key.to_owned()));
                }
            }
        }
        Ok(())
    }

    /// Add the distinct values of an attribute (of `scope`), with their types, up to
    /// `limit` values in all; true when more were left out.
    fn tag_values_into(
        &self,
        scope: TagScope,
        key: &str,
        limit: usize,
        values: &mut BTreeSet<(TagType, String)>,
    ) -> Result<bool, StoreError> {
        let Some(field) = self.fields.attribute else {
            return Ok(false);
        };
        let prefix = format!("{}\0{key}\0", scope.as_str());
        let mut after = prefix.clone().into_bytes();
        *after.last_mut().expect("the prefix ends with a separator") += 1;
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut terms = inverted
                .terms()
                .range()
                .ge(&prefix)
                .lt(&after)
                .into_stream()?;
            while let Some((term, _)) = terms.next() {
                if let Some((_, _, kind, value)) = split_term(term) {
                    if values.len() >= limit && !values.contains(&(kind, value.to_owned())) {
                        return Ok(true);
                    }
                    values.insert((kind, value.to_owned()));
                }
            }
        }
        Ok(false)
    }

    /// Add the distinct values of a text field of the fragments (`name`, `service`,
    /// `root_name`, `root_service`), up to `limit` in all; true when more were left out.
    fn field_values_into(
        &self,
        field_name: &str,
        limit: usize,
        values: &mut BTreeSet<String>,
    ) -> Result<bool, StoreError> {
        let field = match field_name {
            "name" => self.fields.name,
            "service" => self.fields.service,
            "root_name" => self.fields.root_name,
            "root_service" => self.fields.root_service,
            other => return Err(StoreError::Payload(format!("no such field {other}"))),
        };
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut terms = inverted.terms().stream()?;
            while let Some((term, _)) = terms.next() {
                let value = String::from_utf8_lossy(term).into_owned();
                if values.len() >= limit && !values.contains(&value) {
                    return Ok(true);
                }
                values.insert(value);
            }
        }
        Ok(false)
    }

    /// Add the full ids of the stored traces whose low 64 bits are `low` (a Datadog id).
    fn trace_ids_with_low64_into(
        &self,
        low: u64,
        ids: &mut BTreeSet<TraceId>,
    ) -> Result<(), StoreError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_u64(self.fields.trace_low64, low),
            IndexRecordOption::Basic,
        );
        let addresses: HashSet<DocAddress> = searcher.search(&query, &DocSetCollector)?;
        for address in addresses.into_iter().take(64) {
            let document: TantivyDocument = searcher.doc(address)?;
            if let Some(bytes) = document
                .get_first(self.fields.trace_id)
                .and_then(|value| value.as_bytes())
            {
                if let Ok(trace_id) = TraceId::from_bytes(bytes) {
                    ids.insert(trace_id);
                }
            }
        }
        Ok(())
    }

    /// Span payloads of fragments that hold a span of `service` and started in
    /// `[from, to]`, newest fragments first, at most `limit` fragments: the candidates for
    /// a log record that carries no trace id. Callers check each span.
    fn service_fragments_between(
        &self,
        service: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<Bytes>)>, StoreError> {
        let searcher = self.reader.searcher();
        let query = BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.fields.service, service),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>,
            ),
            (
                Occur::Must,
                Box::new(RangeQuery::new(
                    std::ops::Bound::Included(Term::from_field_u64(self.fields.start_time, from)),
                    std::ops::Bound::Included(Term::from_field_u64(self.fields.start_time, to)),
                )),
            ),
        ]);
        let top = searcher.search(
            &query,
            &TopDocs::with_limit(limit.max(1))
                .order_by_u64_field("start_time_unix_nano", tantivy::Order::Desc),
        )?;
        let mut fragments = Vec::new();
        for (start, address) in top {
            fragments.push((start.unwrap_or(0), self.stored_spans(&searcher, address)?));
        }
        Ok(fragments)
    }

    /// (trace id, span id) of every span in fragments holding a span whose WAL record
    /// starts at or after `wal_position`: what a replay from there must not index again.
    fn spans_from_wal_into(
        &self,
        wal_position: u64,
        seen: &mut HashSet<(TraceId, SpanId)>,
    ) -> Result<(), StoreError> {
        let searcher = self.reader.searcher();
        let query = RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_u64(self.fields.wal_last, wal_position)),
            std::ops::Bound::Unbounded,
        );
        let addresses: HashSet<DocAddress> = searcher.search(&query, &DocSetCollector)?;
        for address in addresses {
            for payload in self.stored_spans(&searcher, address)? {
                let Ok(decoded) = crate::model::Span::decode_payload(&payload) else {
                    continue;
                };
                for span in decoded.scope_spans.iter().flat_map(|scope| &scope.spans) {
                    if let (Ok(trace_id), Ok(span_id)) = (
                        TraceId::from_bytes(&span.trace_id),
                        SpanId::from_bytes(&span.span_id),
                    ) {
                        seen.insert((trace_id, span_id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Fragments stored.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// Reads across every partition of the traces index.
impl Partitions<TraceIndex> {
    /// The WAL position replay starts from, as of the last commit (0 before the first).
    pub fn committed_wal_position(&self) -> Result<u64, StoreError> {
        Ok(self.committed()?.map_or(0, |payload| payload.wal_position))
    }

    /// Span payloads of every committed fragment of a trace, duplicates included.
    pub fn trace_payloads(&self, trace_id: &TraceId) -> Result<Vec<Bytes>, StoreError> {
        let mut payloads = Vec::new();
        for partition in self.newest_first() {
            payloads.extend(partition.index.trace_payloads(trace_id)?);
        }
        Ok(payloads)
    }

    /// Fragments of a trace, in all partitions.
    pub fn fragments(&self, trace_id: &TraceId) -> Result<usize, StoreError> {
        let mut fragments = 0;
        for partition in self.newest_first() {
            fragments += partition.index.fragments(trace_id)?;
        }
        Ok(fragments)
    }

    /// Fragments that started at or before `to` (all with `None`) and ended at or after
    /// `from`, newest start first: `(trace id, fragment start)` of the `limit` fragments
    /// after skipping `offset`, and how many fragments that page held before the `from`
    /// check (a page shorter than `limit` is the last). Fragments that started more than
    /// [`LONGEST_FRAGMENT_NANOS`] before `from` are not looked at, nor partitions holding
    /// nothing in the range.
    pub fn fragments_newest_first(
        &self,
        from: Option<u64>,
        to: Option<u64>,
        required: &[FragmentHas],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<(TraceId, u64)>, usize), StoreError> {
        let wanted = offset.saturating_add(limit.max(1));
        let mut all = Vec::new();
        for partition in self.newest_first() {
            all.extend(
                partition
                    .index
                    .newest_fragments(from, to, required, wanted)?,
            );
        }
        // Stable: ties keep the partitions' newest-first order, so pages do not overlap.
        all.sort_by_key(|fragment| std::cmp::Reverse(fragment.1));
        let page: Vec<(TraceId, u64, u64)> =
            all.into_iter().skip(offset).take(limit.max(1)).collect();
        let scanned = page.len();
        let found = page
            .into_iter()
            .filter(|(_, _, end)| from.is_none_or(|from| *end >= from))
            .map(|(trace_id, start, _)| (trace_id, start))
            .collect();
        Ok((found, scanned))
    }

    /// (service, span kind, span name) of every operation stored.
    pub fn operations(&self) -> Result<BTreeSet<(String, i32, String)>, StoreError> {
        let mut operations = BTreeSet::new();
        for partition in self.newest_first() {
            partition.index.operations_into(&mut operations)?;
        }
        Ok(operations)
    }

    /// Attribute keys of the stored traces, by scope.
    pub fn tag_names(&self) -> Result<BTreeSet<(TagScope, String)>, StoreError> {
        let mut names = BTreeSet::new();
        for partition in self.newest_first() {
            partition.index.tag_names_into(&mut names)?;
        }
        Ok(names)
    }

    /// Distinct values of an attribute (of `scope`), with their types, at most `limit`;
    /// the flag says whether more were left out.
    pub fn tag_values(
        &self,
        scope: TagScope,
        key: &str,
        limit: usize,
    ) -> Result<(BTreeSet<(TagType, String)>, bool), StoreError> {
        let mut values = BTreeSet::new();
        for partition in self.newest_first() {
            if partition
                .index
                .tag_values_into(scope, key, limit, &mut values)?
            {
                return Ok((values, true));
            }
        }
        Ok((values, false))
    }

    /// Distinct values of a text field of the fragments (`name`, `service`, `root_name`,
    /// `root_service`), at most `limit`, and whether more were left out.
    pub fn field_values(
        &self,
        field_name: &str,
        limit: usize,
    ) -> Result<(BTreeSet<String>, bool), StoreError> {
        let mut values = BTreeSet::new();
        for partition in self.newest_first() {
            if partition
                .index
                .field_values_into(field_name, limit, &mut values)?
            {
                return Ok((values, true));
            }
        }
        Ok((values, false))
    }

    /// Full ids of the stored traces whose low 64 bits are `low` (a Datadog id).
    pub fn trace_ids_with_low64(&self, low: u64) -> Result<Vec<TraceId>, StoreError> {
        let mut ids = BTreeSet::new();
        for partition in self.newest_first() {
            partition.index.trace_ids_with_low64_into(low, &mut ids)?;
        }
        Ok(ids.into_iter().collect())
    }

    /// Span payloads of fragments that hold a span of `service` and started in
    /// `[from, to]`, newest fragments first, at most `limit` fragments: the candidates for
    /// a log record that carries no trace id. Callers check each span.
    pub fn service_fragments_between(
        &self,
        service: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError> {
        let mut fragments = Vec::new();
        for partition in self.newest_first() {
            fragments.extend(
                partition
                    .index
                    .service_fragments_between(service, from, to, limit)?,
            );
        }
        fragments.sort_by_key(|fragment| std::cmp::Reverse(fragment.0));
        Ok(fragments
            .into_iter()
            .take(limit.max(1))
            .flat_map(|(_, payloads)| payloads)
            .collect())
    }

    /// (trace id, span id) of every span in fragments holding a span whose WAL record
    /// starts at or after `wal_position`: what a replay from there must not index again.
    pub fn spans_from_wal(
        &self,
        wal_position: u64,
    ) -> Result<HashSet<(TraceId, SpanId)>, StoreError> {
        let mut seen = HashSet::new();
        for partition in self.newest_first() {
            partition
                .index
                .spans_from_wal_into(wal_position, &mut seen)?;
        }
        Ok(seen)
    }

    /// Fragments stored.
    pub fn num_docs(&self) -> u64 {
        self.newest_first()
            .iter()
            .map(|partition| partition.index.num_docs())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Span;
    use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

    fn at(wal_position: u64) -> CommitPayload {
        CommitPayload {
            wal_position,
            ..CommitPayload::default()
        }
    }

    fn span(trace: u8, id: u8) -> Span {
        let otlp = OtlpSpan {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("op-{id}"),
            start_time_unix_nano: u64::from(id),
            end_time_unix_nano: u64::from(id) + 10,
            ..Default::default()
        };
        Span::from_otlp(None, "", None, "", otlp).unwrap()
    }

    #[test]
    fn fragments_are_found_by_trace_id_low_bits_and_wal_position_across_partitions_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let window = std::time::Duration::from_secs(10);
        let mut scratch = Vec::new();
        {
            let partitions: Partitions<TraceIndex> = Partitions::open(dir.path(), window).unwrap();
            assert_eq!(partitions.committed_wal_position().unwrap(), 0);
            let older = partitions.current_or_open(100).unwrap();
            let index = &older.index;
            let mut writer = index.writer(16 << 20).unwrap();
            let first = [span(1, 1), span(1, 2)];
            writer
                .add_document(index.document(&first, 10, &mut scratch))
                .unwrap();
            writer
                .add_document(index.document(&[span(2, 3)], 20, &mut scratch))
                .unwrap();
            index.commit(&mut writer, &at(1000)).unwrap();
            // The next window: trace 1's late fragment lands in another partition.
            let newer = partitions.current_or_open(115).unwrap();
            let index = &newer.index;
            let mut writer = index.writer(16 << 20).unwrap();
            writer
                .add_document(index.document(&[span(1, 4)], 30, &mut scratch))
                .unwrap();
            index.commit(&mut writer, &at(4242)).unwrap();
            let payloads = partitions.trace_payloads(&TraceId([1; 16])).unwrap();
            assert_eq!(payloads.len(), 3);
            assert!(payloads.contains(&first[0].payload));
            assert_eq!(partitions.fragments(&TraceId([1; 16])).unwrap(), 2);
            let (page, scanned) = partitions
                .fragments_newest_first(None, None, &[], 0, 10)
                .unwrap();
            assert_eq!(scanned, 3);
            assert_eq!(page[0], (TraceId([1; 16]), 4), "newest start first");
            let (page, scanned) = partitions
                .fragments_newest_first(None, None, &[], 1, 1)
                .unwrap();
            assert_eq!((page, scanned), (vec![(TraceId([2; 16]), 3)], 1));
        }
        let partitions: Partitions<TraceIndex> = Partitions::open(dir.path(), window).unwrap();
        assert_eq!(partitions.newest_first().len(), 2);
        assert_eq!(partitions.committed_wal_position().unwrap(), 4242);
        assert_eq!(
            partitions.trace_payloads(&TraceId([2; 16])).unwrap().len(),
            1
        );
        assert!(partitions
            .trace_payloads(&TraceId([3; 16]))
            .unwrap()
            .is_empty());
        assert_eq!(
            partitions
                .trace_ids_with_low64(TraceId([2; 16]).low_u64())
                .unwrap(),
            vec![TraceId([2; 16])]
        );
        let replayed = partitions.spans_from_wal(20).unwrap();
        assert_eq!(
            replayed.len(),
            2,
            "trace 2's span and trace 1's second fragment"
        );
        assert!(replayed.contains(&(TraceId([1; 16]), SpanId([4; 8]))));
        assert!(!replayed.contains(&(TraceId([1; 16]), SpanId([1; 8]))));
        // A range after everything the older partition holds skips it.
        let (page, _) = partitions
            .fragments_newest_first(Some(14), None, &[], 0, 10)
            .unwrap();
        assert_eq!(page, vec![(TraceId([1; 16]), 4)]);
    }
}
