//! Field lookup in a structured line: which of the many names ecosystems give time,
//! level, message, trace and span ids and service (configured names first), and the
//! [`ParsedLine`] the found ones make.

use std::collections::BTreeMap;

use serde_json::Value;

use super::normalize::{
    parse_log_span_id, parse_log_trace_id, parse_time_value, parse_traceparent,
};
use super::{ids_in_text, FieldNames, LineFormat, ParsedLine};
use crate::model::Level;

const TIME_FIELDS: &[&str] = &[
    "timestamp",
    "@timestamp",
    "time",
    "ts",
    "date",
    "asctime",
    "timeUnixNano",
    "time_unix_nano",
    "observedTimeUnixNano",
];
const LEVEL_FIELDS: &[&str] = &[
    "level",
    "severity_text",
    "severityText",
    "log.level",
    "levelname",
    "severity",
    "lvl",
    "status",
    "severityNumber",
    "severity_number",
    // Heroku's router and many logfmt writers: `at=info`.
    "at",
];
const MESSAGE_FIELDS: &[&str] = &["message", "msg", "body", "event", "fields.message", "text"];
const TRACE_FIELDS: &[&str] = &[
    "trace_id",
    "traceId",
    "trace.id",
    "dd.trace_id",
    "otelTraceID",
    "traceID",
    "traceid",
    "trace-id",
    "x-trace-id",
    "logging.googleapis.com/trace",
];
const SPAN_FIELDS: &[&str] = &[
    "span_id",
    "spanId",
    "span.id",
    "dd.span_id",
    "otelSpanID",
    "spanID",
    "spanid",
];
const SERVICE_FIELDS: &[&str] = &[
    "service.name",
    "service",
    "dd.service",
    "otelServiceName",
    "service_name",
    "logger",
    "name",
    "target",
];
const TRACEPARENT_FIELDS: &[&str] = &["traceparent", "trace_parent", "http.traceparent"];

fn take_first(
    map: &mut BTreeMap<String, Value>,
    configured: &[String],
    builtin: &[&str],
    accept: impl Fn(&str, &Value) -> bool,
) -> Option<(String, Value)> {
    let names = configured
        .iter()
        .map(String::as_str)
        .chain(builtin.iter().copied());
    for name in names {
        if let Some(value) = map.get(name) {
            if accept(name, value) {
                let value = map.remove(name)?;
                return Some((name.to_owned(), value));
            }
        }
    }
    None
}

pub(super) fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

pub(super) fn from_fields(
    mut map: BTreeMap<String, Value>,
    fields: &FieldNames,
    format: LineFormat,
) -> ParsedLine {
    let mut parsed = ParsedLine {
        format,
        ..ParsedLine::default()
    };
    if let Some((_, value)) = take_first(&mut map, &fields.time, TIME_FIELDS, |_, value| {
        parse_time_value(value).is_some()
    }) {
        parsed.time_unix_nano = parse_time_value(&value);
    }
    if let Some((name, value)) = take_first(&mut map, &fields.level, LEVEL_FIELDS, |name, value| {
        level_of(name, value).is_some()
    }) {
        parsed.level = level_of(&name, &value);
    }
    if let Some((_, value)) = take_first(&mut map, &fields.message, MESSAGE_FIELDS, |_, value| {
        value.is_string()
    }) {
        parsed.message = value_text(&value).unwrap_or_default();
    }
    if let Some((name, value)) =
        take_first(&mut map, &fields.trace_id, TRACE_FIELDS, |name, value| {
            value_text(value)
                .and_then(|text| parse_log_trace_id(name, &text))
                .is_some()
        })
    {
        if let Some((trace_id, low_only)) =
            value_text(&value).and_then(|text| parse_log_trace_id(&name, &text))
        {
            parsed.trace_id = Some(trace_id);
            parsed.trace_id_low64_only = low_only;
        }
    }
    if let Some((name, value)) =
        take_first(&mut map, &fields.span_id, SPAN_FIELDS, |name, value| {
            value_text(value)
                .and_then(|text| parse_log_span_id(name, &text))
                .is_some()
        })
    {
        parsed.span_id = value_text(&value).and_then(|text| parse_log_span_id(&name, &text));
    }
    if parsed.trace_id.is_none() {
        let traceparent = TRACEPARENT_FIELDS.iter().find_map(|name| {
            map.get(*name)
                .and_then(Value::as_str)
                .and_then(parse_traceparent)
        });
        if let Some((trace_id, span_id)) = traceparent {
            parsed.trace_id = Some(trace_id);
            parsed.span_id = parsed.span_id.or(Some(span_id));
        }
    }
    if let Some((_, value)) = take_first(&mut map, &fields.service, SERVICE_FIELDS, |_, value| {
        value.as_str().is_some_and(is_service_name)
    }) {
        parsed.service = value_text(&value);
    }
    if parsed.trace_id.is_none() {
        // Named nowhere as a field: perhaps written in the message, or in another field.
        let texts =
            std::iter::once(parsed.message.as_str()).chain(map.values().filter_map(Value::as_str));
        for text in texts {
            let (trace_id, span_id) = ids_in_text(text);
            if let Some((trace_id, low_only)) = trace_id {
                parsed.trace_id = Some(trace_id);
                parsed.trace_id_low64_only = low_only;
                parsed.span_id = parsed.span_id.or(span_id);
                break;
            }
        }
    }
    if parsed.message.is_empty() {
        parsed.message = serde_json::to_string(&map).unwrap_or_default();
        parsed.message_derived = true;
    }
    parsed.attributes = map;
    parsed
}

/// A `service` field names a service unless it is a number or a duration (Heroku's router
/// writes the service time as `service=12ms`).
fn is_service_name(text: &str) -> bool {
    let digits = text
        .trim_end_matches(|character: char| character.is_ascii_alphabetic() || character == 'µ');
    let unit = &text[digits.len()..];
    let is_number = !digits.is_empty() && digits.parse::<f64>().is_ok();
    let is_duration = is_number && matches!(unit, "" | "ns" | "us" | "µs" | "ms" | "s" | "m" | "h");
    !text.is_empty() && !is_duration
}

pub(super) fn level_of(name: &str, value: &Value) -> Option<Level> {
    match value {
        Value::Number(number) => {
            let number = number.as_i64()?;
            if name.eq_ignore_ascii_case("severityNumber") || name == "severity_number" {
                Level::from_otel_severity(number)
            } else if name == "status" {
                None // an HTTP status, not a level
            } else {
                Level::from_number(number)
            }
        }
        Value::String(text) => Level::parse(text),
        _ => None,
    }
}
