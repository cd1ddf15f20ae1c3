//! The one record model every stage shares: typed ids and the stored [`Span`].
//!
//! OTLP is the canonical shape of a span inside tracelink, as it is in Tempo: a span keeps
//! its resource, its instrumentation scope and every attribute, event and link exactly as
//! OTLP defines them, so nothing is lost between ingest and query. Wire formats other than
//! OTLP (Zipkin) are translated into this shape at the edge. A [`Span`] is built once, at
//! ingest, and then moves through the WAL, the head buffer and the index unchanged.

pub mod level;
pub mod log;

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::common::v1::{any_value, InstrumentationScope};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span as OtlpSpan};
use prost::Message;

pub use level::Level;
pub use log::{LogRecord, LogSource, LABEL_ATTRIBUTES};

/// Service name the OpenTelemetry SDKs use when a resource carries none.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Why a textual or binary id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is all zeros")]
    AllZero,
    #[error("id must be {expected} bytes, got {actual}")]
    WrongLength { expected: usize, actual: usize },
    #[error("id {0:?} is neither hex nor base64 of the right length")]
    Malformed(String),
}

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

// === impl TraceId ===

impl TraceId {
    /// From the raw bytes of a protobuf `bytes` field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let array: [u8; 16] = fixed_bytes(bytes)?;
        Ok(TraceId(array))
    }

    /// Parse an id as users and protocols spell it: hex of any case, shorter hex
    /// (left-padded with zeros, as B3 and Jaeger 64-bit ids are), or base64 of 16 bytes
    /// (Tempo's JSON).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        parse_flexible::<16>(text).map(TraceId)
    }

    /// The low 64 bits, which is all a Datadog tracer propagates.
    pub fn low_u64(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", self.to_hex())
    }
}

// === impl SpanId ===

impl SpanId {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let array: [u8; 8] = fixed_bytes(bytes)?;
        Ok(SpanId(array))
    }

    pub fn parse(text: &str) -> Result<Self, IdError> {
        parse_flexible::<8>(text).map(SpanId)
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({})", self.to_hex())
    }
}

fn fixed_bytes<const N: usize>(bytes: &[u8]) -> Result<[u8; N], IdError> {
    if bytes.is_empty() {
        return Err(IdError::Empty);
    }
    let array: [u8; N] = bytes.try_into().map_err(|_| IdError::WrongLength {
        expected: N,
        actual: bytes.len(),
    })?;
    if array.iter().all(|byte| *byte == 0) {
        return Err(IdError::AllZero);
    }
    Ok(array)
}

fn parse_flexible<const N: usize>(text: &str) -> Result<[u8; N], IdError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() <= 2 * N && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        let mut padded = [b'0'; 64];
        let start = 2 * N - text.len();
        padded[start..2 * N].copy_from_slice(text.as_bytes());
        let mut out = [0u8; N];
        for (index, pair) in padded[..2 * N].chunks_exact(2).enumerate() {
            out[index] = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        return fixed_bytes(&out);
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        if let Ok(decoded) = engine.decode(text) {
            if decoded.len() == N {
                return fixed_bytes(&decoded);
            }
        }
    }
    Err(IdError::Malformed(text.chars().take(80).collect()))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Lowercase hex, never stripped of leading zeros.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

/// The `service.name` attribute of a resource, or the SDKs' `unknown_service`.
pub fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|attribute| attribute.key == "service.name")
        })
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value| match &value.value {
            Some(any_value::Value::StringValue(name)) if !name.is_empty() => Some(name.as_str()),
            _ => None,
        })
        .unwrap_or(UNKNOWN_SERVICE)
}

/// A validated span as every stage after decoding sees it.
///
/// `payload` is the protobuf of a `ResourceSpans` holding exactly this span with its
/// resource and scope: the unit the WAL, the head buffer and the tantivy doc store keep.
/// The other fields are the ones that are indexed, extracted once at ingest.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Shared by every span of one resource in a request.
    pub service: Arc<str>,
    pub name: String,
    pub kind: i32,
    pub status_code: i32,
    pub start_time_unix_nano: u64,
    pub duration_nanos: u64,
    /// An event named `exception` (OpenTelemetry's recorded exception).
    pub has_exception: bool,
    /// The explicit sampling randomness `rv` of the `ot` tracestate entry, if any.
    pub randomness: Option<u64>,
    pub payload: Bytes,
    /// The resource and scope the payload wraps the span in, shared by the spans of one
    /// scope of a request: the head keeps each distinct one once per trace.
    pub envelope: Arc<Envelope>,
}

/// The resource and scope of a group of spans, encoded once: a span's stored payload
/// (a one-span `ResourceSpans`) is these bytes around the span's own encoding, exactly as
/// prost would encode the whole, without cloning or re-encoding the resource per span.
#[derive(Debug, PartialEq)]
pub struct Envelope {
    service: Arc<str>,
    /// `ResourceSpans` field 1 (resource), before `scope_spans`.
    resource_head: Vec<u8>,
    /// `ResourceSpans` field 3 (schema_url), after `scope_spans`.
    resource_tail: Vec<u8>,
    /// `ScopeSpans` field 1 (scope), before `spans`.
    scope_head: Vec<u8>,
    /// `ScopeSpans` field 3 (schema_url), after `spans`.
    scope_tail: Vec<u8>,
}

impl Envelope {
    pub fn new(
        resource: Option<&Resource>,
        resource_schema_url: &str,
        scope: Option<&InstrumentationScope>,
        scope_schema_url: &str,
    ) -> Envelope {
        use prost::encoding::{message, string};
        let mut resource_head = Vec::new();
        if let Some(resource) = resource {
            message::encode(1, resource, &mut resource_head);
        }
        let mut resource_tail = Vec::new();
        if !resource_schema_url.is_empty() {
            string::encode(3, &resource_schema_url.to_owned(), &mut resource_tail);
        }
        let mut scope_head = Vec::new();
        if let Some(scope) = scope {
            message::encode(1, scope, &mut scope_head);
        }
        let mut scope_tail = Vec::new();
        if !scope_schema_url.is_empty() {
            string::encode(3, &scope_schema_url.to_owned(), &mut scope_tail);
        }
        Envelope {
            service: Arc::from(service_name(resource)),
            resource_head,
            resource_tail,
            scope_head,
            scope_tail,
        }
    }

    pub fn service(&self) -> &Arc<str> {
        &self.service
    }

    /// The one-span `ResourceSpans` protobuf of `span` in this envelope, exactly as prost
    /// encodes the whole.
    fn payload_of(&self, span: &OtlpSpan) -> Bytes {
        self.wrap(span.encoded_len(), |out| span.encode_raw(out))
    }

    /// The one-span `ResourceSpans` protobuf around a span's own encoding as it came off
    /// the wire (`Span` message bytes, without key or length): what the request held,
    /// not encoded again.
    ///
    /// Written into `arena`: the payloads of one request's spans share a few buffers.
    pub fn wrap_encoded(&self, span: &[u8], arena: &mut PayloadArena) -> Bytes {
        let total = self.wrapped_len(span.len());
        if arena.buffer.capacity() < total {
            arena.buffer =
                BytesMut::with_capacity(total.max(arena.expected.min(PayloadArena::CHUNK)));
        }
        arena.expected = arena.expected.saturating_sub(total);
        self.write_wrapped(span.len(), &mut arena.buffer, |out| {
            out.extend_from_slice(span)
        });
        arena.buffer.split().freeze()
    }

    /// The length of the one-span payload around a span encoding `span_len` bytes long.
    pub fn wrapped_len(&self, span_len: usize) -> usize {
        let scope_len = self.scope_len(span_len);
        self.resource_head.len()
            + 1
            + prost::encoding::encoded_len_varint(scope_len as u64)
            + scope_len
            + self.resource_tail.len()
    }

    fn scope_len(&self, span_len: usize) -> usize {
        self.scope_head.len()
            + 1
            + prost::encoding::encoded_len_varint(span_len as u64)
            + span_len
            + self.scope_tail.len()
    }

    fn wrap(&self, span_len: usize, write_span: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let total = self.wrapped_len(span_len);
        let mut out = Vec::with_capacity(total);
        self.write_wrapped(span_len, &mut out, write_span);
        debug_assert_eq!(out.len(), total);
        Bytes::from(out)
    }

    fn write_wrapped<B: bytes::BufMut>(
        &self,
        span_len: usize,
        out: &mut B,
        write_span: impl FnOnce(&mut B),
    ) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let scope_len = self.scope_len(span_len);
        out.put_slice(&self.resource_head);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(scope_len as u64, out);
        out.put_slice(&self.scope_head);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(span_len as u64, out);
        write_span(out);
        out.put_slice(&self.scope_tail);
        out.put_slice(&self.resource_tail);
    }
}

/// Buffers for the stored payloads of many spans (those of one request's scope), each
/// payload a slice of one: an allocation per 32 KiB of payloads, filled and freed
/// together, instead of one per span made on a decoding thread and freed on the WAL
/// thread. Told by the caller how much it will hold, so the last buffer is no larger than
/// needed; a payload larger than a buffer gets one of its own size. (One buffer for a
/// whole request raised the memory peak at full rate: 422-428 MiB against 381-384.)
#[derive(Default)]
pub struct PayloadArena {
    buffer: BytesMut,
    /// What is still to be written into it.
    expected: usize,
}

impl PayloadArena {
    /// The largest buffer it allocates for many payloads.
    const CHUNK: usize = 32 << 10;

    /// An arena for payloads of `expected` bytes in all.
    pub fn for_bytes(expected: usize) -> PayloadArena {
        PayloadArena {
            buffer: BytesMut::new(),
            expected,
        }
    }
}

/// A span's ids, checked: trace and span id present, of their length, not all zeros; the
/// parent id empty or of its length, where an all-zero parent (some SDKs send one for a
/// root) counts as none.
pub(crate) struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub parent_all_zero: bool,
}

impl SpanIds {
    pub(crate) fn check(
        name: &str,
        trace_id: &[u8],
        span_id: &[u8],
        parent_span_id: &[u8],
    ) -> Result<SpanIds, RejectedSpan> {
        let refuse = |field: &str, error: IdError| RejectedSpan {
            reason: format!("span {name:?}: {field}: {error}"),
        };
        let trace_id = TraceId::from_bytes(trace_id).map_err(|error| refuse("trace id", error))?;
        let span_id = SpanId::from_bytes(span_id).map_err(|error| refuse("span id", error))?;
        let (parent_span_id, parent_all_zero) = match SpanId::from_bytes(parent_span_id) {
            Ok(parent) => (Some(parent), false),
            Err(IdError::Empty) => (None, false),
            Err(IdError::AllZero) => (None, true),
            Err(error) => return Err(refuse("parent span id", error)),
        };
        Ok(SpanIds {
            trace_id,
            span_id,
            parent_span_id,
            parent_all_zero,
        })
    }
}

/// The `rv` value of the `ot` entry of a W3C tracestate (`ot=th:0;rv:0123456789abcd`):
/// 14 lowercase hex digits.
pub(crate) fn tracestate_randomness(trace_state: &str) -> Option<u64> {
    let entry = trace_state
        .split(',')
        .map(str::trim)
        .find_map(|member| member.strip_prefix("ot="))?;
    let value = entry
        .split(';')
        .find_map(|field| field.strip_prefix("rv:"))?;
    if value.len() != 14 || !value.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(value, 16).ok()
}

/// A span whose ids are unusable, with the reason it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedSpan {
    pub reason: String,
}

// === impl Span ===

impl Span {
    /// Validate one OTLP span and build the stored record. All-zero, empty or wrongly
    /// sized trace and span ids are refused; an all-zero parent id means "no parent".
    pub fn from_otlp(
        resource: Option<&Resource>,
        resource_schema_url: &str,
        scope: Option<&InstrumentationScope>,
        scope_schema_url: &str,
        span: OtlpSpan,
    ) -> Result<Span, RejectedSpan> {
        let envelope = Arc::new(Envelope::new(
            resource,
            resource_schema_url,
            scope,
            scope_schema_url,
        ));
        Span::from_otlp_in(&envelope, span)
    }

    /// [`Span::from_otlp`] for a span of a scope whose [`Envelope`] is encoded already:
    /// only the span itself is encoded, the resource and scope bytes are copied.
    pub fn from_otlp_in(
        envelope: &Arc<Envelope>,
        mut span: OtlpSpan,
    ) -> Result<Span, RejectedSpan> {
        let ids = SpanIds::check(
            &span.name,
            &span.trace_id,
            &span.span_id,
            &span.parent_span_id,
        )?;
        if ids.parent_all_zero {
            span.parent_span_id.clear();
        }
        let payload = envelope.payload_of(&span);
        Ok(Span {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            service: envelope.service.clone(),
            kind: span.kind,
            status_code: span.status.as_ref().map_or(0, |status| status.code),
            start_time_unix_nano: span.start_time_unix_nano,
            duration_nanos: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano),
            has_exception: span.events.iter().any(|event| event.name == "exception"),
            randomness: tracestate_randomness(&span.trace_state),
            name: span.name,
            payload,
            envelope: envelope.clone(),
        })
    }

    /// Rebuild the record from its stored payload (WAL replay). The record keeps the
    /// payload's own bytes: the span in it may be encoded as its client encoded it, and
    /// the head finds payloads in the log by their length.
    pub fn from_payload(payload: Bytes) -> Result<Span, String> {
        let decoded = ResourceSpans::decode(&payload[..])
            .map_err(|error| format!("stored span does not decode: {error}"))?;
        let scope_spans = decoded
            .scope_spans
            .into_iter()
            .next()
            .ok_or("stored span has no scope")?;
        let span = scope_spans
            .spans
            .into_iter()
            .next()
            .ok_or("stored span is empty")?;
        Span::from_otlp(
            decoded.resource.as_ref(),
            &decoded.schema_url,
            scope_spans.scope.as_ref(),
            &scope_spans.schema_url,
            span,
        )
        .map(|span| Span { payload, ..span })
        .map_err(|rejected| rejected.reason)
    }

    /// Decode the stored payload back into OTLP.
    pub fn decode_payload(payload: &[u8]) -> Result<ResourceSpans, prost::DecodeError> {
        ResourceSpans::decode(payload)
    }
}

/// A resource naming the service `orders`, for tests.
#[cfg(test)]
pub(crate) fn orders_resource() -> Resource {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("orders".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;

    /// Payloads written into a shared buffer are exactly what prost encodes for the span
    /// in its envelope, whether the buffer was sized for them or is too small.
    #[test]
    fn payloads_in_an_arena_are_the_prost_encoding() {
        let resource = orders_resource();
        let scope = InstrumentationScope {
            name: "lib".into(),
            ..Default::default()
        };
        let envelope = Envelope::new(Some(&resource), "https://r", Some(&scope), "https://s");
        let spans: Vec<OtlpSpan> = (0..40u8)
            .map(|index| OtlpSpan {
                trace_id: vec![1; 16],
                span_id: vec![index + 1; 8],
                name: "x".repeat(usize::from(index) * 7),
                ..Default::default()
            })
            .collect();
        let sized = spans
            .iter()
            .map(|span| envelope.wrapped_len(span.encoded_len()))
            .sum();
        for capacity in [sized, 100, 0] {
            let mut arena = PayloadArena::for_bytes(capacity);
            for span in &spans {
                let payload = envelope.wrap_encoded(&span.encode_to_vec(), &mut arena);
                assert_eq!(payload, envelope.payload_of(span));
                let decoded = ResourceSpans::decode(payload).unwrap();
                assert_eq!(decoded.scope_spans[0].spans[0], *span);
                assert_eq!(decoded.resource, Some(resource.clone()));
            }
        }
    }

    #[test]
    fn trace_ids_parse_in_every_accepted_spelling() {
        let expected = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(
            TraceId::parse("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap(),
            expected
        );
        assert_eq!(
            TraceId::parse("S/kvNXezTaajzpKdDg5HNg==").unwrap(),
            expected
        );
        let short = TraceId::parse("a3ce929d0e0e4736").unwrap();
        assert_eq!(short.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(short.low_u64(), 11803532876627986230);
        assert_eq!(expected.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn bad_trace_ids_are_refused() {
        assert_eq!(TraceId::parse(""), Err(IdError::Empty));
        assert_eq!(
            TraceId::parse("00000000000000000000000000000000"),
            Err(IdError::AllZero)
        );
        assert!(matches!(
            TraceId::parse("xyz-not-an-id"),
            Err(IdError::Malformed(_))
        ));
        assert!(TraceId::parse("4bf92f3577b34da6a3ce929d0e0e47360").is_err());
        assert_eq!(
            TraceId::from_bytes(&[1, 2, 3]),
            Err(IdError::WrongLength {
                expected: 16,
                actual: 3
            })
        );
    }

    #[test]
    fn leading_zeros_are_kept_when_rendering() {
        let id =
            TraceId::from_bytes(&[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]).unwrap();
        assert_eq!(
            id.to_hex(),
            "000000010203040506070809 0a0b0c0d".replace(' ', "")
        );
    }

    #[test]
    fn the_envelope_encodes_exactly_as_prost_encodes_the_whole() {
        let resource = orders_resource();
        let scope = InstrumentationScope {
            name: "lib".into(),
            version: "1.2".into(),
            ..Default::default()
        };
        let span = OtlpSpan {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: "GET /orders".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 35,
            ..Default::default()
        };
        for (resource, resource_schema, scope, scope_schema) in [
            (
                Some(&resource),
                "https://opentelemetry.io/schemas/1.24.0",
                Some(&scope),
                "s",
            ),
            (None, "", None, ""),
            (Some(&resource), "", None, "x"),
        ] {
            let expected = ResourceSpans {
                resource: resource.cloned(),
                scope_spans: vec![ScopeSpans {
                    scope: scope.cloned(),
                    spans: vec![span.clone()],
                    schema_url: scope_schema.into(),
                }],
                schema_url: resource_schema.into(),
            }
            .encode_to_vec();
            let record =
                Span::from_otlp(resource, resource_schema, scope, scope_schema, span.clone())
                    .unwrap();
            assert_eq!(record.payload.as_ref(), expected.as_slice());
        }
    }

    #[test]
    fn tracestate_randomness_is_read_from_the_ot_entry() {
        assert_eq!(
            tracestate_randomness("vendor=x,ot=th:0;rv:0123456789abcd"),
            Some(0x0123456789abcd)
        );
        assert_eq!(tracestate_randomness("ot=th:8"), None);
        assert_eq!(tracestate_randomness("ot=rv:12"), None);
        assert_eq!(tracestate_randomness(""), None);
    }

    #[test]
    fn span_round_trips_through_its_payload() {
        let span = OtlpSpan {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            parent_span_id: vec![0; 8],
            name: "GET /orders".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 35,
            ..Default::default()
        };
        let record = Span::from_otlp(None, "", None, "", span).unwrap();
        assert_eq!(&*record.service, UNKNOWN_SERVICE);
        assert_eq!(record.duration_nanos, 25);
        let again = Span::from_payload(record.payload.clone()).unwrap();
        assert_eq!(again, record);
        let decoded = Span::decode_payload(&record.payload).unwrap();
        assert!(decoded.scope_spans[0].spans[0].parent_span_id.is_empty());
    }
}
