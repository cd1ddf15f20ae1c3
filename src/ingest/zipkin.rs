//! Zipkin v2 JSON spans into model spans, mapped as the OpenTelemetry Collector's Zipkin
//! receiver maps them: `localEndpoint.serviceName` becomes the resource's `service.name`,
//! tags become string attributes, the `error` tag becomes an error status, annotations
//! become events, and the remote endpoint becomes `peer.service` / `net.peer.*`.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{Span as OtlpSpan, Status};
use serde::Deserialize;

use super::{DecodedSpans, IngestError};
use crate::model::{RejectedSpan, Span, SpanId, TraceId};
use crate::redact::Redactor;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: String,
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    duration: Option<u64>,
    #[serde(default)]
    local_endpoint: Option<Endpoint>,
    #[serde(default)]
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    debug: Option<bool>,
    #[serde(default)]
    shared: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Endpoint {
    service_name: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct Annotation {
    timestamp: u64,
    value: String,
}

/// Decode a Zipkin v2 JSON list. A span with a bad id makes the whole request a 400, as
/// Zipkin's own server answers; nothing of it is stored.
pub fn decode_json(body: &[u8], redactor: &Redactor) -> Result<DecodedSpans, IngestError> {
    let spans: Vec<ZipkinSpan> = serde_json::from_slice(body).map_err(|error| {
        IngestError::BadRequest(format!(
            "body is not a Zipkin v2 JSON list of spans: {error}"
        ))
    })?;
    let mut decoded = DecodedSpans::default();
    for zipkin in spans {
        match convert(zipkin, redactor) {
            Ok(span) => decoded.spans.push(span),
            Err(rejected) => return Err(IngestError::BadRequest(rejected.reason)),
        }
    }
    Ok(decoded)
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

fn convert(zipkin: ZipkinSpan, redactor: &Redactor) -> Result<Span, RejectedSpan> {
    let name = zipkin.name.unwrap_or_default();
    let reject = |field: &str, value: &str, error: crate::model::IdError| RejectedSpan {
        reason: format!("zipkin span {name:?}: {field} {value:?}: {error}"),
    };
    let is_hex = |text: &str| text.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !is_hex(&zipkin.trace_id) || !matches!(zipkin.trace_id.len(), 16 | 32) {
        return Err(reject(
            "traceId",
            &zipkin.trace_id,
            crate::model::IdError::Malformed("must be 16 or 32 hex characters".into()),
        ));
    }
    let trace_id = TraceId::parse(&zipkin.trace_id)
        .map_err(|error| reject("traceId", &zipkin.trace_id, error))?;
    if !is_hex(&zipkin.id) || zipkin.id.len() != 16 {
        return Err(reject(
            "id",
            &zipkin.id,
            crate::model::IdError::Malformed("must be 16 hex characters".into()),
        ));
    }
    let span_id = SpanId::parse(&zipkin.id).map_err(|error| reject("id", &zipkin.id, error))?;
    let parent_span_id = match zipkin.parent_id.as_deref() {
        None | Some("") => Vec::new(),
        Some(parent) => SpanId::parse(parent)
            .map_err(|error| reject("parentId", parent, error))?
            .0
            .to_vec(),
    };
    let kind = match zipkin.kind.as_deref() {
        Some("SERVER") => 2,
        Some("CLIENT") => 3,
        Some("PRODUCER") => 4,
        Some("CONSUMER") => 5,
        _ => 1,
    };
    let mut attributes = Vec::with_capacity(zipkin.tags.len() + 4);
    let mut status = None;
    for (key, value) in zipkin.tags {
        if key == "error" {
            let message = if value.is_empty() || value == "true" {
                String::new()
            } else {
                value
            };
            status = Some(Status { message, code: 2 });
            continue;
        }
        attributes.push(string_attribute(&key, value));
    }
    if let Some(remote) = zipkin.remote_endpoint {
        if let Some(service) = remote.service_name.filter(|name| !name.is_empty()) {
            attributes.push(string_attribute("peer.service", service));
        }
        if let Some(ip) = remote.ipv4.or(remote.ipv6) {
            attributes.push(string_attribute("net.peer.ip", ip));
        }
        if let Some(port) = remote.port {
            attributes.push(attribute(
                "net.peer.port",
                any_value::Value::IntValue(i64::from(port)),
            ));
        }
    }
    if zipkin.shared == Some(true) {
        attributes.push(attribute(
            "zipkin.shared",
            any_value::Value::BoolValue(true),
        ));
    }
    if zipkin.debug == Some(true) {
        attributes.push(attribute("zipkin.debug", any_value::Value::BoolValue(true)));
    }
    let start = zipkin.timestamp.unwrap_or(0).saturating_mul(1000);
    let end = start.saturating_add(zipkin.duration.unwrap_or(0).saturating_mul(1000));
    let local = zipkin.local_endpoint.unwrap_or_default();
    let mut resource_attributes = Vec::new();
    if let Some(service) = local.service_name.filter(|name| !name.is_empty()) {
        resource_attributes.push(string_attribute("service.name", service));
    }
    if let Some(ip) = local.ipv4.or(local.ipv6) {
        resource_attributes.push(string_attribute("host.ip", ip));
    }
    let resource = Resource {
        attributes: resource_attributes,
        ..Default::default()
    };
    let otlp = OtlpSpan {
        trace_id: trace_id.0.to_vec(),
        span_id: span_id.0.to_vec(),
        parent_span_id,
        name,
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        events: zipkin
            .annotations
            .into_iter()
            .map(|annotation| Event {
                time_unix_nano: annotation.timestamp.saturating_mul(1000),
                name: annotation.value,
                ..Default::default()
            })
            .collect(),
        status,
        ..Default::default()
    };
    let (mut resource, mut otlp) = (resource, otlp);
    redactor.resource(&mut resource);
    redactor.span(&mut otlp);
    Span::from_otlp(Some(&resource), "", None, "", otlp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipkin_spans_map_to_otlp() {
        let body = r#"[{"traceId":"a3ce929d0e0e4736","id":"00f067aa0ba902b7","parentId":"00f067aa0ba902b6",
            "name":"get /api","kind":"CLIENT","timestamp":1544712660000000,"duration":1500,
            "localEndpoint":{"serviceName":"frontend","ipv4":"10.0.0.1"},
            "remoteEndpoint":{"serviceName":"backend","port":8080},
            "tags":{"http.method":"GET","error":"boom"},
            "annotations":[{"timestamp":1544712660000100,"value":"ws"}]}]"#;
        let decoded = decode_json(body.as_bytes(), &Redactor::off()).unwrap();
        let span = &decoded.spans[0];
        assert_eq!(span.trace_id.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(&*span.service, "frontend");
        assert_eq!(span.kind, 3);
        assert_eq!(span.status_code, 2);
        assert_eq!(span.duration_nanos, 1_500_000);
        let otlp = Span::decode_payload(&span.payload).unwrap();
        let stored = &otlp.scope_spans[0].spans[0];
        assert_eq!(stored.status.as_ref().unwrap().message, "boom");
        assert_eq!(stored.events[0].name, "ws");
        assert_eq!(stored.events[0].time_unix_nano, 1544712660000100000);
        assert!(stored.attributes.iter().any(|kv| kv.key == "peer.service"));
    }

    #[test]
    fn bad_zipkin_ids_fail_the_request() {
        let body = r#"[{"traceId":"xyz","id":"00f067aa0ba902b7"}]"#;
        assert!(matches!(
            decode_json(body.as_bytes(), &Redactor::off()),
            Err(IngestError::BadRequest(message)) if message.contains("traceId")
        ));
        assert!(decode_json(b"{\"not\":\"a list\"}", &Redactor::off()).is_err());
    }
}
