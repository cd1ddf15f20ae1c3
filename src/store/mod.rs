//! Storage: the tantivy spans index plus the head buffer, and trace reads across both.
//!
//! Query handlers call [`Storage::find_trace`] from a blocking thread. The head is read
//! before the index: a commit makes spans searchable before the head lets go of them, so
//! reading in this order never misses an acked span (it may see one twice; duplicates are
//! folded by span id, which also folds client retries).

pub mod head;
pub mod spans;

use std::collections::HashSet;
use std::path::Path;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

pub use head::Head;
pub use spans::{SpanIndex, StoreError};

use crate::model::{Span, TraceId};

pub struct Storage {
    pub spans: SpanIndex,
    pub head: Head,
}

impl Storage {
    pub fn open(data_dir: &Path) -> Result<Storage, StoreError> {
        Ok(Storage {
            spans: SpanIndex::open(&data_dir.join("spans"))?,
            head: Head::default(),
        })
    }

    /// Every stored span of a trace, grouped by resource and scope as OTLP groups them,
    /// each span once, spans ordered by start time. `None` when nothing is stored.
    pub fn find_trace(&self, trace_id: &TraceId) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        let mut payloads = self.head.trace_payloads(trace_id);
        payloads.extend(self.spans.trace_payloads(trace_id)?);
        if payloads.is_empty() {
            return Ok(None);
        }
        let mut seen_span_ids = HashSet::new();
        let mut batches: Vec<ResourceSpans> = Vec::new();
        for payload in payloads {
            let single = match Span::decode_payload(&payload) {
                Ok(single) => single,
                Err(error) => {
                    tracing::error!(trace_id = %trace_id, %error, "stored span does not decode");
                    continue;
                }
            };
            merge_single(&mut batches, single, &mut seen_span_ids);
        }
        for batch in &mut batches {
            for scope in &mut batch.scope_spans {
                scope
                    .spans
                    .sort_by_key(|span| (span.start_time_unix_nano, span.span_id.clone()));
            }
        }
        Ok(Some(batches))
    }
}

/// Add a one-span `ResourceSpans` to the groups, unless its span id was seen already.
fn merge_single(
    batches: &mut Vec<ResourceSpans>,
    single: ResourceSpans,
    seen_span_ids: &mut HashSet<Vec<u8>>,
) {
    let ResourceSpans {
        resource,
        scope_spans,
        schema_url,
    } = single;
    for scope_spans in scope_spans {
        let mut spans = scope_spans.spans;
        spans.retain(|span| seen_span_ids.insert(span.span_id.clone()));
        if spans.is_empty() {
            continue;
        }
        let batch_index = match batches
            .iter()
            .position(|batch| batch.resource == resource && batch.schema_url == schema_url)
        {
            Some(index) => index,
            None => {
                batches.push(ResourceSpans {
                    resource: resource.clone(),
                    scope_spans: Vec::new(),
                    schema_url: schema_url.clone(),
                });
                batches.len() - 1
            }
        };
        let batch = &mut batches[batch_index];
        match batch.scope_spans.iter_mut().find(|existing| {
            existing.scope == scope_spans.scope && existing.schema_url == scope_spans.schema_url
        }) {
            Some(existing) => existing.spans.extend(spans),
            None => batch
                .scope_spans
                .push(opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    scope: scope_spans.scope,
                    spans,
                    schema_url: scope_spans.schema_url,
                }),
        }
    }
}
