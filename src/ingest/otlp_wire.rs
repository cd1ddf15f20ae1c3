//! OTLP trace requests read off the protobuf wire, without decoding each span into an
//! owned message and encoding it again.
//!
//! Decoding an `ExportTraceServiceRequest` with prost copies every span's name, every
//! attribute key and value into its own allocation, and storing a span then encodes it
//! all again; together that was most of the request handlers' CPU at full rate. Here a
//! span is checked in place, exactly as strictly as prost decodes it (wire types of
//! known fields, lengths, varints, UTF-8 of every string, nesting depth; unknown fields
//! skipped), the few fields the pipeline needs are read from it, and its bytes are
//! copied once, as they came, into its stored payload. The small resource and scope
//! messages are still decoded with prost (they are few per request).
//!
//! No crate does this: prost has no borrowed decoding, and a generic protobuf reflection
//! crate would read every field into values too. The checker is tested against prost on
//! mutated encodings (see the tests).

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message;

use super::DecodedSpans;
use crate::model::{tracestate_randomness, Envelope, PayloadArena, Span, SpanIds};
use crate::redact::Redactor;

/// Why a body is not a valid protobuf of the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

type Wire<T> = Result<T, WireError>;

fn error(message: &str) -> WireError {
    WireError(message.to_owned())
}

/// Nesting prost allows below the request (its recursion limit, 100, counts the request).
const DEPTH: u32 = 99;

/// Decode an OTLP `ExportTraceServiceRequest`: every valid span, and the ones refused one
/// by one (bad ids). A body that is not a valid protobuf of that message is an error as a
/// whole, as prost would make it.
pub fn decode_request(body: &[u8], redactor: &Redactor) -> Wire<DecodedSpans> {
    let mut decoded = DecodedSpans::default();
    let screen = Screen {
        redactor,
        body_clean: redactor.content_clean(body),
    };
    let mut fields = Fields::new(body, DEPTH);
    while let Some((tag, value)) = fields.next()? {
        if tag == 1 {
            resource_spans(
                value.message()?,
                DEPTH.saturating_sub(1),
                &screen,
                &mut decoded,
            )?;
        }
    }
    Ok(decoded)
}

/// The redactor, and whether the request's bytes passed its screen as a whole (then no
/// span in it needs its own pass).
struct Screen<'a> {
    redactor: &'a Redactor,
    body_clean: bool,
}

fn resource_spans(
    bytes: &[u8],
    depth: u32,
    screen: &Screen<'_>,
    decoded: &mut DecodedSpans,
) -> Wire<()> {
    let Level {
        head: mut resource,
        children: scopes,
        schema_url,
    } = Level::<Resource>::read(bytes, depth)?;
    if let Some(resource) = resource.as_mut() {
        screen.redactor.resource(resource);
    }
    for scope in scopes {
        scope_spans(
            scope,
            depth.saturating_sub(1),
            resource.as_ref(),
            schema_url,
            screen,
            decoded,
        )?;
    }
    Ok(())
}

fn scope_spans(
    bytes: &[u8],
    depth: u32,
    resource: Option<&Resource>,
    resource_schema_url: &str,
    screen: &Screen<'_>,
    decoded: &mut DecodedSpans,
) -> Wire<()> {
    let Level {
        head: scope,
        children: spans,
        schema_url,
    } = Level::<InstrumentationScope>::read(bytes, depth)?;
    let envelope = Arc::new(Envelope::new(
        resource,
        resource_schema_url,
        scope.as_ref(),
        schema_url,
    ));
    decoded.spans.reserve(spans.len());
    let mut arena = PayloadArena::for_bytes(
        spans
            .iter()
            .map(|encoded| envelope.wrapped_len(encoded.len()))
            .sum(),
    );
    for encoded in spans {
        let fields = SpanFields::read(encoded, depth.saturating_sub(1))?;
        match fields.into_span(&envelope, encoded, screen, &mut arena)? {
            Ok(span) => decoded.spans.push(span),
            Err(rejected) => decoded.rejected.push(rejected),
        }
    }
    Ok(())
}

/// A stored span payload (a one-span `ResourceSpans`) read back into the pipeline's span,
/// under the envelope it was stored with. The head keeps only where an assembling span
/// lies in the log and its envelope; the rest is read here when its trace leaves. The
/// payload was checked and redacted on its way in, so nothing is refused or changed, and
/// it becomes the span's payload as it is.
pub fn stored_span(payload: Bytes, envelope: &Arc<Envelope>) -> Result<Span, String> {
    let read = || -> Wire<Option<Span>> {
        let Some(scope) = first_child(&payload, DEPTH)? else {
            return Ok(None);
        };
        let Some(encoded) = first_child(scope, DEPTH - 1)? else {
            return Ok(None);
        };
        let fields = SpanFields::read_stored(encoded, DEPTH - 2)?;
        let Ok(ids) = SpanIds::check(
            fields.name,
            fields.trace_id,
            fields.span_id,
            fields.parent_span_id,
        ) else {
            return Ok(None);
        };
        Ok(Some(Span {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            service: envelope.service().clone(),
            name: fields.name.to_owned(),
            kind: fields.kind,
            status_code: fields.status_code,
            start_time_unix_nano: fields.start_time_unix_nano,
            duration_nanos: fields
                .end_time_unix_nano
                .saturating_sub(fields.start_time_unix_nano),
            has_exception: fields.has_exception,
            randomness: tracestate_randomness(fields.trace_state),
            payload: payload.clone(),
            envelope: envelope.clone(),
        }))
    };
    match read() {
        Ok(Some(span)) => Ok(span),
        Ok(None) => Err("stored payload holds no valid span".to_owned()),
        Err(error) => Err(format!("stored payload does not decode: {error}")),
    }
}

/// The first repeated child (field 2) of a `ResourceSpans` or `ScopeSpans`.
fn first_child(bytes: &[u8], depth: u32) -> Wire<Option<&[u8]>> {
    let mut fields = Fields::new(bytes, depth);
    while let Some((tag, value)) = fields.next()? {
        if tag == 2 {
            return Ok(Some(value.message()?));
        }
    }
    Ok(None)
}

/// `ResourceSpans` and `ScopeSpans` have one shape: 1 a small message (the resource, the
/// scope), decoded; 2 the repeated children, left as bytes; 3 the schema URL.
struct Level<'a, M> {
    head: Option<M>,
    children: Vec<&'a [u8]>,
    schema_url: &'a str,
}

impl<'a, M: Message + Default> Level<'a, M> {
    fn read(bytes: &'a [u8], depth: u32) -> Wire<Level<'a, M>> {
        let mut level: Level<'a, M> = Level {
            head: None,
            children: Vec::new(),
            schema_url: "",
        };
        let mut fields = Fields::new(bytes, depth);
        while let Some((tag, value)) = fields.next()? {
            match tag {
                1 => level
                    .head
                    .get_or_insert_default()
                    .merge(value.message()?)
                    .map_err(|decode_error| WireError(decode_error.to_string()))?,
                2 => level.children.push(value.message()?),
                3 => level.schema_url = value.string()?,
                _ => {}
            }
        }
        Ok(level)
    }
}

/// What the pipeline reads of a span, borrowed from its encoding; the last occurrence of
/// a field wins, as in prost.
#[derive(Debug, Default, PartialEq)]
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    trace_state: &'a str,
    name: &'a str,
    kind: i32,
    start_time_unix_nano: u64,
    end_time_unix_nano: u64,
    status_code: i32,
    has_exception: bool,
}

impl<'a> SpanFields<'a> {
    /// Check a `Span` message as prost would decode it, reading the fields on the way.
    fn read(bytes: &'a [u8], depth: u32) -> Wire<SpanFields<'a>> {
        SpanFields::read_with(bytes, depth, |span, tag, value| {
            match tag {
                9 => key_value(value.message()?, depth.saturating_sub(1))?,
                10 | 12 | 14 => {
                    value.varint()?;
                }
                11 => span.has_exception |= event(value.message()?, depth.saturating_sub(1))?,
                13 => link(value.message()?, depth.saturating_sub(1))?,
                15 => span.read_status(value, depth)?,
                16 => {
                    value.fixed32()?;
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// The fields of a span stored by this process (checked when it came in): attributes,
    /// links and events are not looked into again, only events' names.
    fn read_stored(bytes: &'a [u8], depth: u32) -> Wire<SpanFields<'a>> {
        SpanFields::read_with(bytes, depth, |span, tag, value| {
            match tag {
                11 => span.has_exception |= event_named_exception(value.message()?, depth)?,
                15 => span.read_status(value, depth)?,
                _ => {}
            }
            Ok(())
        })
    }

    /// Walk a span's fields: 1 to 8 (ids, tracestate, name, kind, times) are read here,
    /// alike for both readers; every other field goes to `rest`.
    fn read_with(
        bytes: &'a [u8],
        depth: u32,
        mut rest: impl FnMut(&mut SpanFields<'a>, u32, Value<'a>) -> Wire<()>,
    ) -> Wire<SpanFields<'a>> {
        let mut span = SpanFields::default();
        let mut fields = Fields::new(bytes, depth);
        while let Some((tag, value)) = fields.next()? {
            match tag {
                1 => span.trace_id = value.bytes()?,
                2 => span.span_id = value.bytes()?,
                3 => span.trace_state = value.string()?,
                4 => span.parent_span_id = value.bytes()?,
                5 => span.name = value.string()?,
                6 => span.kind = value.varint()? as i32,
                7 => span.start_time_unix_nano = value.fixed64()?,
                8 => span.end_time_unix_nano = value.fixed64()?,
                _ => rest(&mut span, tag, value)?,
            }
        }
        Ok(span)
    }

    /// Field 15, `Status`: its code, when this occurrence sets one.
    fn read_status(&mut self, value: Value<'a>, depth: u32) -> Wire<()> {
        let code = status(value.message()?, depth.saturating_sub(1))?;
        self.status_code = code.unwrap_or(self.status_code);
        Ok(())
    }

    /// The pipeline's span, or its refusal (bad ids). A span with an all-zero parent id,
    /// or one the redactor's screen flags, is decoded and encoded again (without the id,
    /// with its secrets redacted), so that no stored span carries either.
    fn into_span(
        self,
        envelope: &Arc<Envelope>,
        encoded: &[u8],
        screen: &Screen<'_>,
        arena: &mut PayloadArena,
    ) -> Wire<Result<Span, crate::model::RejectedSpan>> {
        let ids = match SpanIds::check(self.name, self.trace_id, self.span_id, self.parent_span_id)
        {
            Ok(ids) => ids,
            Err(rejected) => return Ok(Err(rejected)),
        };
        if ids.parent_all_zero || screen.redactor.screen_within(encoded, screen.body_clean) {
            let mut span = OtlpSpan::decode(encoded)
                .map_err(|decode_error| WireError(decode_error.to_string()))?;
            screen.redactor.span(&mut span);
            return Ok(Span::from_otlp_in(envelope, span));
        }
        Ok(Ok(Span {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            service: envelope.service().clone(),
            name: self.name.to_owned(),
            kind: self.kind,
            status_code: self.status_code,
            start_time_unix_nano: self.start_time_unix_nano,
            duration_nanos: self
                .end_time_unix_nano
                .saturating_sub(self.start_time_unix_nano),
            has_exception: self.has_exception,
            randomness: tracestate_randomness(self.trace_state),
            payload: envelope.wrap_encoded(encoded, arena),
            envelope: envelope.clone(),
        }))
    }
}

/// `Span.Event`; says whether its name is `exception`.
fn event(bytes: &[u8], depth: u32) -> Wire<bool> {
    let mut name = "";
    let mut fields = Fields::new(bytes, depth);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => {
                value.fixed64()?;
            }
            2 => name = value.string()?,
            3 => key_value(value.message()?, depth.saturating_sub(1))?,
            4 => {
                value.varint()?;
            }
            _ => {}
        }
    }
    Ok(name == "exception")
}

/// Whether a stored `Span.Event` is named `exception` (its other fields are not read).
fn event_named_exception(bytes: &[u8], depth: u32) -> Wire<bool> {
    let mut fields = Fields::new(bytes, depth);
    let mut name = "";
    while let Some((tag, value)) = fields.next()? {
        if tag == 2 {
            name = value.string()?;
        }
    }
    Ok(name == "exception")
}

/// `Span.Link`.
fn link(bytes: &[u8], depth: u32) -> Wire<()> {
    let mut fields = Fields::new(bytes, depth);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 | 2 => {
                value.bytes()?;
            }
            3 => {
                value.string()?;
            }
            4 => key_value(value.message()?, depth.saturating_sub(1))?,
            5 => {
                value.varint()?;
            }
            6 => {
                value.fixed32()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `Status`; its code if this occurrence sets one.
fn status(bytes: &[u8], depth: u32) -> Wire<Option<i32>> {
    let mut code = None;
    let mut fields = Fields::new(bytes, depth);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            2 => {
                value.string()?;
            }
            3 => code = Some(value.varint()? as i32),
            _ => {}
        }
    }
    Ok(code)
}

/// `KeyValue`.
fn key_value(bytes: &[u8], depth: u32) -> Wire<()> {
    let mut fields = Fields::new(bytes, depth);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => {
                value.string()?;
            }
            2 => any_value(value.message()?, depth.saturating_sub(1))?,
            3 => {
                value.varint()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `AnyValue`, and the arrays and key-value lists it nests.
fn any_value(bytes: &[u8], depth: u32) -> Wire<()> {
    let mut fields = Fields::new(bytes, depth);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => {
                value.string()?;
            }
            2 | 3 | 8 => {
                value.varint()?;
            }
            4 => {
                value.fixed64()?;
            }
            5 => {
                let mut items = Fields::new(value.message()?, depth.saturating_sub(1));
                while let Some((tag, item)) = items.next()? {
                    if tag == 1 {
                        any_value(item.message()?, depth.saturating_sub(2))?;
                    }
                }
            }
            6 => {
                let mut items = Fields::new(value.message()?, depth.saturating_sub(1));
                while let Some((tag, item)) = items.next()? {
                    if tag == 1 {
                        key_value(item.message()?, depth.saturating_sub(2))?;
                    }
                }
            }
            7 => {
                value.bytes()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// One field's value as it lies on the wire.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
    /// A skipped group (proto2; valid only for unknown fields here).
    Group,
    /// A message field whose nesting is past prost's limit.
    TooDeep,
}

impl<'a> Value<'a> {
    fn varint(self) -> Wire<u64> {
        match self {
            Value::Varint(value) => Ok(value),
            _ => Err(error("invalid wire type: expected varint")),
        }
    }

    fn fixed64(self) -> Wire<u64> {
        match self {
            Value::Fixed64(value) => Ok(value),
            _ => Err(error("invalid wire type: expected 64-bit")),
        }
    }

    fn fixed32(self) -> Wire<u32> {
        match self {
            Value::Fixed32(value) => Ok(value),
            _ => Err(error("invalid wire type: expected 32-bit")),
        }
    }

    fn bytes(self) -> Wire<&'a [u8]> {
        match self {
            Value::Len(bytes) => Ok(bytes),
            _ => Err(error("invalid wire type: expected length-delimited")),
        }
    }

    fn string(self) -> Wire<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| error("invalid string value: data is not UTF-8 encoded"))
    }

    /// A nested message's bytes.
    fn message(self) -> Wire<&'a [u8]> {
        match self {
            Value::TooDeep => Err(error("recursion limit reached")),
            other => other.bytes(),
        }
    }
}

/// The fields of one message, in order, with unknown groups skipped.
struct Fields<'a> {
    rest: &'a [u8],
    /// How many more levels of messages may nest below this one.
    depth: u32,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], depth: u32) -> Fields<'a> {
        Fields { rest: bytes, depth }
    }

    #[inline]
    fn next(&mut self) -> Wire<Option<(u32, Value<'a>)>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tag, wire_type) = self.key()?;
        let value = match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take_array()?)),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= self.rest.len())
                    .ok_or_else(|| error("buffer underflow"))?;
                let (bytes, rest) = self.rest.split_at(len);
                self.rest = rest;
                if self.depth == 0 {
                    Value::TooDeep
                } else {
                    Value::Len(bytes)
                }
            }
            3 => {
                self.skip_group(tag, self.depth)?;
                Value::Group
            }
            4 => return Err(error("unexpected end group tag")),
            5 => Value::Fixed32(u32::from_le_bytes(self.take_array()?)),
            _ => return Err(error("invalid wire type value")),
        };
        Ok(Some((tag, value)))
    }

    #[inline]
    fn key(&mut self) -> Wire<(u32, u8)> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| error("invalid key value"))?;
        let tag = key >> 3;
        if tag == 0 {
            return Err(error("invalid tag value: 0"));
        }
        Ok((tag, (key & 7) as u8))
    }

    #[inline]
    fn varint(&mut self) -> Wire<u64> {
        // Keys, lengths and small numbers are one byte as a rule.
        if let Some((&byte, rest)) = self.rest.split_first() {
            if byte < 0x80 {
                self.rest = rest;
                return Ok(u64::from(byte));
            }
        }
        self.long_varint()
    }

    fn long_varint(&mut self) -> Wire<u64> {
        let mut value = 0u64;
        for (index, &byte) in self.rest.iter().enumerate().take(10) {
            if index == 9 && byte > 1 {
                return Err(error("invalid varint"));
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err(error("invalid varint"))
    }

    fn take_array<const N: usize>(&mut self) -> Wire<[u8; N]> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| error("buffer underflow"))?;
        self.rest = rest;
        Ok(*head)
    }

    /// Skip a group's fields up to its end, as prost's `skip_field` does (each level of
    /// group counts against the nesting limit).
    fn skip_group(&mut self, tag: u32, depth: u32) -> Wire<()> {
        if depth == 0 {
            return Err(error("recursion limit reached"));
        }
        loop {
            if self.rest.is_empty() {
                return Err(error("buffer underflow"));
            }
            let (inner_tag, wire_type) = self.key()?;
            match wire_type {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take_array::<8>()?;
                }
                2 => {
                    let len = self.varint()?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|len| *len <= self.rest.len())
                        .ok_or_else(|| error("buffer underflow"))?;
                    self.rest = &self.rest[len..];
                }
                3 => self.skip_group(inner_tag, depth.saturating_sub(1))?,
                4 if inner_tag == tag => return Ok(()),
                4 => return Err(error("unexpected end group tag")),
                5 => {
                    self.take_array::<4>()?;
                }
                _ => return Err(error("invalid wire type value")),
            }
        }
    }
}

mod merge;
pub use merge::{merge_stored, trace_by_id_response};

#[cfg(test)]
mod tests;
