//! OTLP traces, protobuf and JSON, into model spans.
//!
//! Protobuf is `ExportTraceServiceRequest` as prost decodes it. JSON follows OTLP's own
//! rules (hex ids, integer enums, 64-bit integers as strings or numbers, unknown fields
//! ignored); span, event and link ids are read as strings here, not by the generated serde
//! code, so that one span with a malformed id is refused on its own through partial success
//! instead of failing the whole request.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{Span as OtlpSpan, Status};
use serde::{Deserialize, Deserializer};

use super::{DecodedSpans, IngestError};
use crate::model::{Envelope, RejectedSpan, Span};
use crate::redact::Redactor;

/// An OTLP/HTTP protobuf body, read off the wire (see [`super::otlp_wire`]).
pub fn decode_protobuf(body: &[u8], redactor: &Redactor) -> Result<DecodedSpans, IngestError> {
    super::otlp_wire::decode_request(body, redactor).map_err(|error| {
        IngestError::BadRequest(format!(
            "body is not a valid OTLP ExportTraceServiceRequest protobuf: {error}"
        ))
    })
}

/// Validate and redact every span of a decoded request.
pub fn from_request(request: ExportTraceServiceRequest, redactor: &Redactor) -> DecodedSpans {
    let mut decoded = DecodedSpans::default();
    for mut resource_spans in request.resource_spans {
        if let Some(resource) = resource_spans.resource.as_mut() {
            redactor.resource(resource);
        }
        let resource = resource_spans.resource.as_ref();
        for scope_spans in resource_spans.scope_spans {
            let envelope = std::sync::Arc::new(Envelope::new(
                resource,
                &resource_spans.schema_url,
                scope_spans.scope.as_ref(),
                &scope_spans.schema_url,
            ));
            decoded.spans.reserve(scope_spans.spans.len());
            for mut span in scope_spans.spans {
                redactor.span(&mut span);
                match Span::from_otlp_in(&envelope, span) {
                    Ok(span) => decoded.spans.push(span),
                    Err(rejected) => decoded.rejected.push(rejected),
                }
            }
        }
    }
    decoded
}

pub fn decode_json(body: &[u8], redactor: &Redactor) -> Result<DecodedSpans, IngestError> {
    let request: JsonRequest = serde_json::from_slice(body).map_err(|error| {
        IngestError::BadRequest(format!("body is not valid OTLP/JSON traces: {error}"))
    })?;
    let mut decoded = DecodedSpans::default();
    for mut resource_spans in request.resource_spans {
        if let Some(resource) = resource_spans.resource.as_mut() {
            redactor.resource(resource);
        }
        let resource = resource_spans.resource.as_ref();
        for scope_spans in resource_spans.scope_spans {
            for json_span in scope_spans.spans {
                let result = json_span.into_otlp().and_then(|mut span| {
                    redactor.span(&mut span);
                    Span::from_otlp(
                        resource,
                        &resource_spans.schema_url,
                        scope_spans.scope.as_ref(),
                        &scope_spans.schema_url,
                        span,
                    )
                });
                match result {
                    Ok(span) => decoded.spans.push(span),
                    Err(rejected) => decoded.rejected.push(rejected),
                }
            }
        }
    }
    Ok(decoded)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonRequest {
    #[serde(default)]
    resource_spans: Vec<JsonResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonResourceSpans {
    #[serde(default)]
    resource: Option<Resource>,
    #[serde(default)]
    scope_spans: Vec<JsonScopeSpans>,
    #[serde(default)]
    schema_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonScopeSpans {
    #[serde(default)]
    scope: Option<InstrumentationScope>,
    #[serde(default)]
    spans: Vec<JsonSpan>,
    #[serde(default)]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonSpan {
    trace_id: String,
    span_id: String,
    trace_state: String,
    parent_span_id: String,
    #[serde(deserialize_with = "u32_lenient")]
    flags: u32,
    name: String,
    #[serde(deserialize_with = "enum_lenient")]
    kind: i32,
    #[serde(deserialize_with = "u64_lenient")]
    start_time_unix_nano: u64,
    #[serde(deserialize_with = "u64_lenient")]
    end_time_unix_nano: u64,
    attributes: Vec<KeyValue>,
    #[serde(deserialize_with = "u32_lenient")]
    dropped_attributes_count: u32,
    events: Vec<JsonEvent>,
    #[serde(deserialize_with = "u32_lenient")]
    dropped_events_count: u32,
    links: Vec<JsonLink>,
    #[serde(deserialize_with = "u32_lenient")]
    dropped_links_count: u32,
    status: Option<JsonStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonEvent {
    #[serde(deserialize_with = "u64_lenient")]
    time_unix_nano: u64,
    name: String,
    attributes: Vec<KeyValue>,
    #[serde(deserialize_with = "u32_lenient")]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonLink {
    trace_id: String,
    span_id: String,
    trace_state: String,
    attributes: Vec<KeyValue>,
    #[serde(deserialize_with = "u32_lenient")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "u32_lenient")]
    flags: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonStatus {
    message: String,
    #[serde(deserialize_with = "enum_lenient")]
    code: i32,
}

impl JsonSpan {
    fn into_otlp(self) -> Result<OtlpSpan, RejectedSpan> {
        let name = self.name;
        let id = |field: &str, text: &str| {
            hex_bytes(text).ok_or_else(|| RejectedSpan {
                reason: format!("span {name:?}: {field} {text:?} is not hex"),
            })
        };
        let links = self
            .links
            .into_iter()
            .map(|link| {
                Ok(Link {
                    trace_id: id("link trace id", &link.trace_id)?,
                    span_id: id("link span id", &link.span_id)?,
                    trace_state: link.trace_state,
                    attributes: link.attributes,
                    dropped_attributes_count: link.dropped_attributes_count,
                    flags: link.flags,
                })
            })
            .collect::<Result<Vec<_>, RejectedSpan>>()?;
        Ok(OtlpSpan {
            trace_id: id("trace id", &self.trace_id)?,
            span_id: id("span id", &self.span_id)?,
            trace_state: self.trace_state,
            parent_span_id: id("parent span id", &self.parent_span_id)?,
            flags: self.flags,
            kind: self.kind,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            attributes: self.attributes,
            dropped_attributes_count: self.dropped_attributes_count,
            events: self
                .events
                .into_iter()
                .map(|event| Event {
                    time_unix_nano: event.time_unix_nano,
                    name: event.name,
                    attributes: event.attributes,
                    dropped_attributes_count: event.dropped_attributes_count,
                })
                .collect(),
            dropped_events_count: self.dropped_events_count,
            links,
            dropped_links_count: self.dropped_links_count,
            status: self.status.map(|status| Status {
                message: status.message,
                code: status.code,
            }),
            name,
        })
    }
}

/// Hex of any case; an empty string is an empty id.
pub(crate) fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

pub(crate) fn u64_lenient<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match Option::<NumberOrString>::deserialize(deserializer)? {
        None => Ok(0),
        Some(NumberOrString::Unsigned(value)) => Ok(value),
        Some(NumberOrString::Signed(value)) => u64::try_from(value)
            .map_err(|_| serde::de::Error::custom(format!("{value} is negative"))),
        Some(NumberOrString::Float(value)) if value >= 0.0 && value.fract() == 0.0 => {
            Ok(value as u64)
        }
        Some(NumberOrString::Float(value)) => Err(serde::de::Error::custom(format!(
            "{value} is not an unsigned integer"
        ))),
        Some(NumberOrString::Text(text)) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an unsigned integer"))),
    }
}

pub(crate) fn u32_lenient<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u64_lenient(deserializer)?;
    u32::try_from(value).map_err(|_| serde::de::Error::custom(format!("{value} is out of range")))
}

/// OTLP/JSON enums are integers; proto3 JSON also allows the value's name.
pub(crate) fn enum_lenient<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    match Option::<NumberOrString>::deserialize(deserializer)? {
        None => Ok(0),
        Some(NumberOrString::Unsigned(value)) => {
            i32::try_from(value).map_err(|_| serde::de::Error::custom("enum value out of range"))
        }
        Some(NumberOrString::Signed(value)) => {
            i32::try_from(value).map_err(|_| serde::de::Error::custom("enum value out of range"))
        }
        Some(NumberOrString::Float(value)) => Err(serde::de::Error::custom(format!(
            "enum value {value} is not an integer"
        ))),
        Some(NumberOrString::Text(name)) => enum_value_by_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown enum value {name:?}"))),
    }
}

fn enum_value_by_name(name: &str) -> Option<i32> {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    if let Ok(number) = name.parse::<i32>() {
        return Some(number);
    }
    use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
    SpanKind::from_str_name(name)
        .map(|kind| kind as i32)
        .or_else(|| StatusCode::from_str_name(name).map(|code| code as i32))
        .or_else(|| SeverityNumber::from_str_name(name).map(|number| number as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    const SPEC_EXAMPLE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"orders"}}]},
 "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C",
 "spanId":"EEE19B7EC3C1B174","parentSpanId":"EEE19B7EC3C1B173","name":"GET /orders/:id",
 "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,"kind":2,
 "status":{"code":2,"message":"db timeout"}, "someFutureField": {"x": 1},
 "attributes":[{"key":"http.method","value":{"stringValue":"GET"}},
   {"key":"retries","value":{"intValue":"3"}},{"key":"n","value":{"intValue":4}}]}]}]}]}"#;

    #[test]
    fn the_spec_example_decodes() {
        let decoded = decode_json(SPEC_EXAMPLE.as_bytes(), &Redactor::off()).unwrap();
        assert!(decoded.rejected.is_empty());
        let span = &decoded.spans[0];
        assert_eq!(span.trace_id.to_hex(), "5b8efff798038103d269b633813fc60c");
        assert_eq!(&*span.service, "orders");
        assert_eq!(span.kind, 2);
        assert_eq!(span.status_code, 2);
        assert_eq!(span.duration_nanos, 1_000_000_000);
        let otlp = Span::decode_payload(&span.payload).unwrap();
        let attributes = &otlp.scope_spans[0].spans[0].attributes;
        assert_eq!(
            attributes[1].value.as_ref().unwrap().value,
            Some(Value::IntValue(3))
        );
        assert_eq!(
            attributes[2].value.as_ref().unwrap().value,
            Some(Value::IntValue(4))
        );
    }

    #[test]
    fn bad_ids_are_refused_one_by_one() {
        let body = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"good"},
            {"traceId":"00000000000000000000000000000000","spanId":"eee19b7ec3c1b174","name":"zero"},
            {"traceId":"zz8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"nothex"},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b","name":"short"}]}]}]}"#;
        let decoded = decode_json(body.as_bytes(), &Redactor::off()).unwrap();
        assert_eq!(decoded.spans.len(), 1);
        assert_eq!(decoded.rejected.len(), 3);
        assert!(decoded.rejection_message().contains("\"zero\""));
    }

    #[test]
    fn broken_json_and_protobuf_say_what_is_wrong() {
        let error = decode_json(b"{\"resourceSpans\": [", &Redactor::off()).unwrap_err();
        assert!(error.to_string().contains("OTLP/JSON"), "{error}");
        let error = decode_protobuf(&[0xff, 0xff, 0xff], &Redactor::off()).unwrap_err();
        assert!(error.to_string().contains("protobuf"), "{error}");
    }
}
