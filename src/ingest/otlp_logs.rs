//! OTLP logs, protobuf and JSON, into model log records.
//!
//! The body becomes the message (a structured body is rendered as JSON), severity number
//! or text becomes the level, `service.name` of the resource becomes the service, other
//! resource attributes are kept as `resource.<key>`. A record with a trace or span id of
//! the wrong length is refused on its own (partial success); an empty or all-zero id means
//! "no id".

use std::collections::BTreeMap;

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::otlp::{enum_lenient, hex_bytes, u32_lenient, u64_lenient};
use super::IngestError;
use crate::model::Level;
use crate::model::{service_name, IdError, LogRecord, SpanId, TraceId};

/// Records decoded from one request, and the reasons of those refused.
#[derive(Debug, Default)]
pub struct DecodedLogs {
    pub records: Vec<LogRecord>,
    pub rejected: Vec<String>,
}

impl DecodedLogs {
    pub fn rejection_message(&self) -> String {
        super::rejection_summary(self.rejected.iter().map(String::as_str))
    }
}

pub fn decode_protobuf(body: &[u8]) -> Result<DecodedLogs, IngestError> {
    let request = ExportLogsServiceRequest::decode(body).map_err(|error| {
        IngestError::BadRequest(format!(
            "body is not a valid OTLP ExportLogsServiceRequest protobuf: {error}"
        ))
    })?;
    Ok(from_request(request))
}

/// OTLP/JSON logs. Ids are read as strings here (not by the generated serde code), so a
/// record with a malformed id is refused on its own through partial success.
pub fn decode_json(body: &[u8]) -> Result<DecodedLogs, IngestError> {
    let request: JsonLogsRequest = serde_json::from_slice(body).map_err(|error| {
        IngestError::BadRequest(format!("body is not valid OTLP/JSON logs: {error}"))
    })?;
    let mut refused = Vec::new();
    let resource_logs = request
        .resource_logs
        .into_iter()
        .map(|resource_logs| ResourceLogs {
            resource: resource_logs.resource,
            schema_url: resource_logs.schema_url,
            scope_logs: resource_logs
                .scope_logs
                .into_iter()
                .map(|scope_logs| ScopeLogs {
                    scope: scope_logs.scope,
                    schema_url: scope_logs.schema_url,
                    log_records: scope_logs
                        .log_records
                        .into_iter()
                        .filter_map(|record| match record.into_otlp() {
                            Ok(record) => Some(record),
                            Err(reason) => {
                                refused.push(reason);
                                None
                            }
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let mut decoded = from_request(ExportLogsServiceRequest { resource_logs });
    decoded.rejected.extend(refused);
    Ok(decoded)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonLogsRequest {
    #[serde(default)]
    resource_logs: Vec<JsonResourceLogs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonResourceLogs {
    #[serde(default)]
    resource: Option<Resource>,
    #[serde(default)]
    scope_logs: Vec<JsonScopeLogs>,
    #[serde(default)]
    schema_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonScopeLogs {
    #[serde(default)]
    scope: Option<InstrumentationScope>,
    #[serde(default)]
    log_records: Vec<JsonLogRecord>,
    #[serde(default)]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonLogRecord {
    #[serde(deserialize_with = "u64_lenient")]
    time_unix_nano: u64,
    #[serde(deserialize_with = "u64_lenient")]
    observed_time_unix_nano: u64,
    #[serde(deserialize_with = "enum_lenient")]
    severity_number: i32,
    severity_text: String,
    body: Option<AnyValue>,
    attributes: Vec<KeyValue>,
    #[serde(deserialize_with = "u32_lenient")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "u32_lenient")]
    flags: u32,
    trace_id: String,
    span_id: String,
    event_name: String,
}

impl JsonLogRecord {
    fn into_otlp(self) -> Result<OtlpLogRecord, String> {
        let id = |field: &str, text: &str| {
            hex_bytes(text).ok_or_else(|| format!("log record: {field} {text:?} is not hex"))
        };
        Ok(OtlpLogRecord {
            trace_id: id("trace id", &self.trace_id)?,
            span_id: id("span id", &self.span_id)?,
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.observed_time_unix_nano,
            severity_number: self.severity_number,
            severity_text: self.severity_text,
            body: self.body,
            attributes: self.attributes,
            dropped_attributes_count: self.dropped_attributes_count,
            flags: self.flags,
            event_name: self.event_name,
        })
    }
}

pub fn from_request(request: ExportLogsServiceRequest) -> DecodedLogs {
    let mut decoded = DecodedLogs::default();
    for resource_logs in request.resource_logs {
        let service = service_name(resource_logs.resource.as_ref()).to_owned();
        let resource_attributes: Vec<(String, Value)> = resource_logs
            .resource
            .iter()
            .flat_map(|resource| resource.attributes.iter())
            .filter(|attribute| attribute.key != "service.name")
            .map(|attribute| {
                (
                    format!("resource.{}", attribute.key),
                    key_value_json(attribute),
                )
            })
            .collect();
        for scope_logs in resource_logs.scope_logs {
            let scope_name = scope_logs.scope.as_ref().map(|scope| scope.name.clone());
            for record in scope_logs.log_records {
                let optional_id = |bytes: &[u8], what: &str| -> Result<Option<Vec<u8>>, String> {
                    match what {
                        "trace" => match TraceId::from_bytes(bytes) {
                            Ok(_) => Ok(Some(bytes.to_vec())),
                            Err(IdError::Empty | IdError::AllZero) => Ok(None),
                            Err(error) => Err(format!("log record: trace id: {error}")),
                        },
                        _ => match SpanId::from_bytes(bytes) {
                            Ok(_) => Ok(Some(bytes.to_vec())),
                            Err(IdError::Empty | IdError::AllZero) => Ok(None),
                            Err(error) => Err(format!("log record: span id: {error}")),
                        },
                    }
                };
                let trace_id = match optional_id(&record.trace_id, "trace") {
                    Ok(id) => id.and_then(|bytes| TraceId::from_bytes(&bytes).ok()),
                    Err(reason) => {
                        decoded.rejected.push(reason);
                        continue;
                    }
                };
                let span_id = match optional_id(&record.span_id, "span") {
                    Ok(id) => id.and_then(|bytes| SpanId::from_bytes(&bytes).ok()),
                    Err(reason) => {
                        decoded.rejected.push(reason);
                        continue;
                    }
                };
                let level = Level::from_otel_severity(i64::from(record.severity_number))
                    .or_else(|| Level::parse(&record.severity_text));
                let message = match record.body.as_ref().and_then(|body| body.value.as_ref()) {
                    Some(any_value::Value::StringValue(text)) => text.clone(),
                    Some(_) => record
                        .body
                        .as_ref()
                        .map(any_value_json)
                        .map(|value| value.to_string())
                        .unwrap_or_default(),
                    None => String::new(),
                };
                let mut attributes: BTreeMap<String, Value> = record
                    .attributes
                    .iter()
                    .map(|attribute| (attribute.key.clone(), key_value_json(attribute)))
                    .collect();
                attributes.extend(resource_attributes.iter().cloned());
                if let Some(scope) = scope_name.as_ref().filter(|name| !name.is_empty()) {
                    attributes.insert("scope.name".into(), Value::String(scope.clone()));
                }
                if !record.event_name.is_empty() {
                    attributes.insert(
                        "event.name".into(),
                        Value::String(record.event_name.clone()),
                    );
                }
                let time = if record.time_unix_nano != 0 {
                    record.time_unix_nano
                } else {
                    record.observed_time_unix_nano
                };
                decoded.records.push(LogRecord {
                    id: String::new(),
                    time: String::new(),
                    time_unix_nano: time,
                    service: service.clone(),
                    level,
                    message,
                    trace_id,
                    trace_id_low64_only: false,
                    span_id,
                    attributes,
                    stream: None,
                    source: None,
                    parse_error: None,
                });
            }
        }
    }
    decoded
}

fn key_value_json(attribute: &KeyValue) -> Value {
    attribute
        .value
        .as_ref()
        .map(any_value_json)
        .unwrap_or(Value::Null)
}

/// An OTLP value as plain JSON (bytes as base64).
pub fn any_value_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(text)) => Value::String(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => Value::Bool(*flag),
        Some(any_value::Value::IntValue(number)) => Value::from(*number),
        Some(any_value::Value::DoubleValue(number)) => Value::from(*number),
        Some(any_value::Value::BytesValue(bytes)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(any_value_json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => Value::Object(
            list.values
                .iter()
                .map(|entry| (entry.key.clone(), key_value_json(entry)))
                .collect(),
        ),
        Some(any_value::Value::StringValueStrindex(index)) => Value::from(*index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_json_logs_decode_with_levels_bodies_and_ids() {
        let body = r#"{"resourceLogs":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}},
            {"key":"host.name","value":{"stringValue":"node-1"}}]},
          "scopeLogs":[{"scope":{"name":"app"},"logRecords":[
            {"timeUnixNano":"1714557600000000000","severityNumber":17,"severityText":"ERROR",
             "body":{"stringValue":"payment failed"},"traceId":"4bf92f3577b34da6a3ce929d0e0e4736",
             "spanId":"00f067aa0ba902b7","attributes":[{"key":"order.id","value":{"intValue":"42"}}]},
            {"observedTimeUnixNano":1714557601000000000,"severityText":"warning",
             "body":{"kvlistValue":{"values":[{"key":"k","value":{"boolValue":true}}]}}},
            {"traceId":"4bf92f35","body":{"stringValue":"bad id"}},
            {"traceId":"not-hex-at-all","body":{"stringValue":"not hex"}},
            {"severityNumber":"SEVERITY_NUMBER_WARN","body":{"stringValue":"named severity"}}]}]}]}"#;
        let decoded = decode_json(body.as_bytes()).unwrap();
        assert_eq!(decoded.records.len(), 3);
        assert_eq!(decoded.rejected.len(), 2, "{:?}", decoded.rejected);
        assert_eq!(decoded.records[2].level, Some(Level::Warn));
        let first = &decoded.records[0];
        assert_eq!(first.service, "checkout");
        assert_eq!(first.level, Some(Level::Error));
        assert_eq!(first.message, "payment failed");
        assert_eq!(
            first.trace_id.unwrap().to_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(first.attributes["order.id"], Value::from(42));
        assert_eq!(
            first.attributes["resource.host.name"],
            Value::from("node-1")
        );
        let second = &decoded.records[1];
        assert_eq!(second.level, Some(Level::Warn));
        assert_eq!(second.time_unix_nano, 1714557601000000000);
        assert_eq!(second.message, r#"{"k":true}"#);
        assert!(decode_json(b"[").is_err());
    }
}
