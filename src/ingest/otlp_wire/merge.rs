//! A trace's stored spans merged into an encoded OTLP `TracesData` on the wire.
//!
//! Each stored payload is a one-span `ResourceSpans` (see [`super::stored_span`]). A
//! protobuf answer by trace id used to decode every payload with prost, group the spans
//! by resource and scope, and encode it all again: a profile of trace-by-id under ingest
//! put about 40% of its CPU there (UTF-8 checks, allocations, frees). Here the payloads
//! are read in place and their bytes are copied once into the answer, grouped, ordered
//! and with duplicates folded exactly as [`crate::store::merge_payloads`] does.
//!
//! One difference: resources and scopes are grouped by their encoded bytes, where the
//! decoding path compares decoded values. A client encodes a resource the same way every
//! time, so the groups are the same; two encodings of one value would make two groups
//! that say the same thing, which OTLP allows.

use std::collections::HashSet;

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

use super::{error, Fields, Wire, DEPTH};
use crate::model::TraceId;

/// A span: its start, its id, its encoded bytes.
type SpanBytes<'a> = (u64, &'a [u8], &'a [u8]);

struct ScopeGroup<'a> {
    scope: Option<&'a [u8]>,
    schema_url: &'a [u8],
    spans: Vec<SpanBytes<'a>>,
}

struct ResourceGroup<'a> {
    resource: Option<&'a [u8]>,
    schema_url: &'a [u8],
    scopes: Vec<ScopeGroup<'a>>,
}

/// The spans of `payloads` as an encoded `TracesData`: grouped by resource and scope in
/// the order they first appear, each span id once (its first payload wins), spans ordered
/// by start time then id. `None` when no payload holds a span. A payload that does not
/// read is logged and left out, as the decoding path does.
pub fn merge_stored(trace_id: &TraceId, payloads: &[Bytes]) -> Option<Vec<u8>> {
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut groups: Vec<ResourceGroup> = Vec::new();
    for payload in payloads {
        match read_payload(payload) {
            Ok(read) => add(&mut groups, read, &mut seen),
            Err(error) => {
                tracing::error!(trace_id = %trace_id, %error, "stored span does not decode")
            }
        }
    }
    if seen.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for group in &mut groups {
        for scope in &mut group.scopes {
            scope.spans.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        }
        let scopes: Vec<usize> = group.scopes.iter().map(scope_len).collect();
        let len = resource_len(group, &scopes);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        if let Some(resource) = group.resource {
            put_bytes(1, resource, &mut out);
        }
        for (scope, len) in group.scopes.iter().zip(scopes) {
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(len as u64, &mut out);
            if let Some(encoded) = scope.scope {
                put_bytes(1, encoded, &mut out);
            }
            for (_, _, span) in &scope.spans {
                put_bytes(2, span, &mut out);
            }
            if !scope.schema_url.is_empty() {
                put_bytes(3, scope.schema_url, &mut out);
            }
        }
        if !group.schema_url.is_empty() {
            put_bytes(3, group.schema_url, &mut out);
        }
    }
    Some(out)
}

/// Wrap an encoded `TracesData` as field 1 of a message whose other fields follow
/// (`tempopb.TraceByIDResponse`: status 3, message 4).
pub fn trace_by_id_response(traces_data: &[u8], status: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(traces_data.len() + 16 + message.len());
    put_bytes(1, traces_data, &mut out);
    if status != 0 {
        encode_key(3, WireType::Varint, &mut out);
        // An int32 is encoded as its sign-extended 64 bits, as prost does.
        encode_varint(i64::from(status) as u64, &mut out);
    }
    if !message.is_empty() {
        put_bytes(4, message.as_bytes(), &mut out);
    }
    out
}

/// One payload read: its resource, its scopes and their spans.
fn read_payload(payload: &[u8]) -> Wire<ResourceGroup<'_>> {
    let mut read = ResourceGroup {
        resource: None,
        schema_url: &[],
        scopes: Vec::new(),
    };
    let mut fields = Fields::new(payload, DEPTH);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => read.resource = Some(value.message()?),
            2 => read.scopes.push(read_scope(value.message()?)?),
            3 => read.schema_url = value.bytes()?,
            _ => {}
        }
    }
    Ok(read)
}

fn read_scope(bytes: &[u8]) -> Wire<ScopeGroup<'_>> {
    let mut scope = ScopeGroup {
        scope: None,
        schema_url: &[],
        spans: Vec::new(),
    };
    let mut fields = Fields::new(bytes, DEPTH - 1);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => scope.scope = Some(value.message()?),
            2 => {
                let span = value.message()?;
                let (start, id) = start_and_id(span)?;
                scope.spans.push((start, id, span));
            }
            3 => scope.schema_url = value.bytes()?,
            _ => {}
        }
    }
    Ok(scope)
}

/// A span's `start_time_unix_nano` (7) and `span_id` (2); the last of a repeated field
/// wins, as in prost.
fn start_and_id(span: &[u8]) -> Wire<(u64, &[u8])> {
    let mut start = 0;
    let mut id: &[u8] = &[];
    let mut fields = Fields::new(span, DEPTH - 2);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            2 => id = value.bytes()?,
            7 => start = value.fixed64()?,
            _ => {}
        }
    }
    if id.is_empty() {
        return Err(error("span without an id"));
    }
    Ok((start, id))
}

fn add<'a>(
    groups: &mut Vec<ResourceGroup<'a>>,
    payload: ResourceGroup<'a>,
    seen: &mut HashSet<&'a [u8]>,
) {
    for mut scope in payload.scopes {
        scope.spans.retain(|(_, id, _)| seen.insert(id));
        if scope.spans.is_empty() {
            continue;
        }
        let group = match groups.iter().position(|group| {
            group.resource == payload.resource && group.schema_url == payload.schema_url
        }) {
            Some(index) => &mut groups[index],
            None => {
                groups.push(ResourceGroup {
                    resource: payload.resource,
                    schema_url: payload.schema_url,
                    scopes: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        match group.scopes.iter_mut().find(|existing| {
            existing.scope == scope.scope && existing.schema_url == scope.schema_url
        }) {
            Some(existing) => existing.spans.extend(scope.spans),
            None => group.scopes.push(scope),
        }
    }
}

/// The encoded length of a length-delimited field of `len` bytes with a tag below 16.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn scope_len(scope: &ScopeGroup) -> usize {
    scope.scope.map_or(0, |encoded| field_len(encoded.len()))
        + scope
            .spans
            .iter()
            .map(|(_, _, span)| field_len(span.len()))
            .sum::<usize>()
        + if scope.schema_url.is_empty() {
            0
        } else {
            field_len(scope.schema_url.len())
        }
}

fn resource_len(group: &ResourceGroup, scopes: &[usize]) -> usize {
    group.resource.map_or(0, |encoded| field_len(encoded.len()))
        + scopes.iter().map(|len| field_len(*len)).sum::<usize>()
        + if group.schema_url.is_empty() {
            0
        } else {
            field_len(group.schema_url.len())
        }
}

fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
    use prost::Message;

    use super::*;
    use crate::api::tempo::TraceByIdResponse;

    fn resource(service: &str) -> Resource {
        Resource {
            attributes: vec![super::super::tests::string_value("service.name", service)],
            ..Default::default()
        }
    }

    fn payload(service: &str, scope: &str, span_id: u8, start: u64, name: &str) -> Bytes {
        let single = ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    ..Default::default()
                }),
                spans: vec![Span {
                    trace_id: vec![7; 16],
                    span_id: vec![span_id; 8],
                    name: name.into(),
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + 10,
                    ..Default::default()
                }],
                schema_url: if scope == "db" {
                    "https://opentelemetry.io/schemas/1.21.0".into()
                } else {
                    String::new()
                },
            }],
            schema_url: String::new(),
        };
        Bytes::from(single.encode_to_vec())
    }

    #[test]
    fn the_wire_merge_is_the_decoded_merge_encoded() {
        let trace_id = TraceId([7; 16]);
        let payloads = vec![
            payload("gateway", "http", 1, 500, "GET /"),
            payload("payments", "grpc", 2, 700, "Charge"),
            payload("gateway", "http", 3, 100, "auth"),
            payload("payments", "db", 4, 800, "SELECT"),
            // The same span again, from another fragment: the first one stays.
            payload("payments", "grpc", 2, 700, "Charge (again)"),
            // Two spans starting together are ordered by id.
            payload("gateway", "http", 6, 100, "cache"),
            Bytes::from_static(b"\x0a\xff"),
            payload("gateway", "other", 5, 50, "dns"),
        ];
        let wire = merge_stored(&trace_id, &payloads).expect("spans");
        let decoded = crate::store::merge_payloads(&trace_id, payloads).expect("spans");
        assert_eq!(
            TracesData::decode(wire.as_slice()).unwrap().resource_spans,
            decoded
        );
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].scope_spans.len(), 2);
        assert_eq!(decoded[1].scope_spans.len(), 2);
        let names: Vec<&str> = decoded[0].scope_spans[0]
            .spans
            .iter()
            .map(|span| span.name.as_str())
            .collect();
        assert_eq!(names, ["auth", "cache", "GET /"]);
        assert_eq!(decoded[1].scope_spans[0].spans[0].name, "Charge");
    }

    #[test]
    fn nothing_to_merge_is_none_and_the_response_wraps_the_trace() {
        let trace_id = TraceId([7; 16]);
        assert!(merge_stored(&trace_id, &[]).is_none());
        assert!(merge_stored(&trace_id, &[Bytes::from_static(b"\x0a\xff")]).is_none());
        let wire = merge_stored(&trace_id, &[payload("a", "s", 1, 1, "x")]).unwrap();
        for (status, message) in [(0, ""), (1, "nodes n2 did not answer")] {
            let response =
                TraceByIdResponse::decode(trace_by_id_response(&wire, status, message).as_slice())
                    .unwrap();
            assert_eq!(response.status, status);
            assert_eq!(response.message, message);
            assert_eq!(
                response.trace.unwrap(),
                TracesData::decode(wire.as_slice()).unwrap()
            );
        }
    }
}
