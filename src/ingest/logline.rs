//! One log line into a [`ParsedLine`]: pure functions, no I/O, property-tested.
//!
//! Takes a line (already without its newline) as the tailer read it and gives out time,
//! level, message, trace and span ids, service and the remaining fields. Understands JSON
//! lines (dotted keys and nested objects alike, with the field-name variants of
//! OpenTelemetry, ECS, Datadog, Python OTel logging, slog, zap, logrus, pino, bunyan,
//! structlog and tracing-subscriber), logfmt, and plain text (a trace id after `trace_id`,
//! `traceId`, `TraceID:` or inside a `traceparent` value). Docker json-file and CRI
//! wrappers are unwrapped first; their time and stream are kept and the inner line is
//! parsed again. A line that does not parse as its format is kept as text, flagged.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use crate::model::{SpanId, TraceId};

/// Normalised severity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Every spelling the ecosystems use: names, abbreviations, syslog words, single
    /// letters, pino/bunyan numbers (10–60) and OpenTelemetry severity numbers (1–24).
    pub fn parse(text: &str) -> Option<Level> {
        let text = text.trim();
        if let Ok(number) = text.parse::<i64>() {
            return Level::from_number(number);
        }
        let level = match text.to_ascii_lowercase().as_str() {
            "trace" | "trc" | "t" | "verbose" | "finest" | "finer" => Level::Trace,
            "debug" | "dbg" | "d" | "fine" | "config" => Level::Debug,
            "info" | "inf" | "i" | "information" | "informational" | "notice" => Level::Info,
            "warn" | "warning" | "wrn" | "w" => Level::Warn,
            "error" | "err" | "e" | "eror" | "severe" => Level::Error,
            "fatal" | "ftl" | "f" | "critical" | "crit" | "panic" | "dpanic" | "emerg"
            | "emergency" | "alert" => Level::Fatal,
            _ => return None,
        };
        Some(level)
    }

    /// pino/bunyan (10, 20 … 60) first, then OpenTelemetry severity numbers 1–24.
    pub fn from_number(number: i64) -> Option<Level> {
        match number {
            10 => Some(Level::Trace),
            20 => Some(Level::Debug),
            30 => Some(Level::Info),
            40 => Some(Level::Warn),
            50 => Some(Level::Error),
            60 => Some(Level::Fatal),
            _ => Level::from_otel_severity(number),
        }
    }

    pub fn from_otel_severity(number: i64) -> Option<Level> {
        match number {
            1..=4 => Some(Level::Trace),
            5..=8 => Some(Level::Debug),
            9..=12 => Some(Level::Info),
            13..=16 => Some(Level::Warn),
            17..=20 => Some(Level::Error),
            21..=24 => Some(Level::Fatal),
            _ => None,
        }
    }
}

/// How the lines of a source are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Logfmt,
    Text,
    #[default]
    Auto,
}

/// Configured field names, tried before the built-in variants.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldNames {
    pub time: Vec<String>,
    pub level: Vec<String>,
    pub message: Vec<String>,
    pub trace_id: Vec<String>,
    pub span_id: Vec<String>,
    pub service: Vec<String>,
}

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

/// What one line says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedLine {
    pub time_unix_nano: Option<u64>,
    pub level: Option<Level>,
    pub message: String,
    pub trace_id: Option<TraceId>,
    /// Set when only a 64-bit (Datadog decimal or 16-hex) id was seen.
    pub trace_id_low64_only: bool,
    pub span_id: Option<SpanId>,
    pub service: Option<String>,
    /// Remaining fields, nested objects flattened to dotted keys.
    pub attributes: BTreeMap<String, Value>,
    /// `stdout` / `stderr`, from a container runtime wrapper.
    pub stream: Option<String>,
    /// Why the line was kept as text although its format said otherwise.
    pub parse_error: Option<String>,
}

/// A CRI line: `<RFC 3339 time> <stream> <P|F> <content>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a str,
}

pub fn split_cri(line: &str) -> Option<CriLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("");
    if !matches!(stream, "stdout" | "stderr") || !matches!(tag, "F" | "P") {
        return None;
    }
    parse_time_text(time)?;
    Some(CriLine {
        time,
        stream,
        partial: tag == "P",
        content,
    })
}

/// Parse one complete line. CRI partial (`P`) lines must already be joined by the caller.
pub fn parse_line(line: &str, format: Format, fields: &FieldNames) -> ParsedLine {
    if let Some(cri) = split_cri(line) {
        let mut parsed = parse_inner(cri.content, format, fields);
        parsed.stream = Some(cri.stream.to_owned());
        if parsed.time_unix_nano.is_none() {
            parsed.time_unix_nano = parse_time_text(cri.time);
        }
        return parsed;
    }
    if line.starts_with("{\"log\":") || line.contains("\"stream\":") {
        if let Ok(Value::Object(wrapper)) = serde_json::from_str::<Value>(line) {
            if let (Some(Value::String(inner)), Some(Value::String(stream))) =
                (wrapper.get("log"), wrapper.get("stream"))
            {
                let inner = inner.strip_suffix('\n').unwrap_or(inner);
                let inner = inner.strip_suffix('\r').unwrap_or(inner);
                let mut parsed = parse_inner(inner, format, fields);
                parsed.stream = Some(stream.clone());
                if parsed.time_unix_nano.is_none() {
                    parsed.time_unix_nano = wrapper
                        .get("time")
                        .and_then(Value::as_str)
                        .and_then(parse_time_text);
                }
                return parsed;
            }
        }
    }
    parse_inner(line, format, fields)
}

fn parse_inner(line: &str, format: Format, fields: &FieldNames) -> ParsedLine {
    let trimmed = line.trim_start();
    match format {
        Format::Json => match json_fields(line) {
            Ok(map) => from_fields(map, fields),
            Err(error) => with_error(parse_text(line), format!("not JSON: {error}")),
        },
        Format::Logfmt => match logfmt_fields(line) {
            Some(map) => from_fields(map, fields),
            None => with_error(parse_text(line), "not logfmt".into()),
        },
        Format::Text => parse_text(line),
        Format::Auto if trimmed.starts_with('{') => match json_fields(line) {
            Ok(map) => from_fields(map, fields),
            Err(error) => with_error(parse_text(line), format!("not JSON: {error}")),
        },
        Format::Auto => match logfmt_fields(line) {
            Some(map)
                if map.len() >= 2 && has_any(&map, &["msg", "message", "level", "ts", "time"]) =>
            {
                from_fields(map, fields)
            }
            _ => parse_text(line),
        },
    }
}

fn has_any(map: &BTreeMap<String, Value>, keys: &[&str]) -> bool {
    keys.iter().any(|key| map.contains_key(*key))
}

fn with_error(mut parsed: ParsedLine, error: String) -> ParsedLine {
    parsed.parse_error = Some(error);
    parsed
}

fn json_fields(line: &str) -> Result<BTreeMap<String, Value>, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => {
            let mut flat = BTreeMap::new();
            flatten_into(&mut flat, String::new(), Value::Object(object));
            Ok(flat)
        }
        Ok(_) => Err("a JSON line must be an object".into()),
        Err(error) => Err(error.to_string()),
    }
}

fn flatten_into(flat: &mut BTreeMap<String, Value>, prefix: String, value: Value) {
    match value {
        Value::Object(object) if !object.is_empty() => {
            for (key, inner) in object {
                let key = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_into(flat, key, inner);
            }
        }
        other => {
            flat.insert(prefix, other);
        }
    }
}

/// `key=value key2="quoted \" value" flag`; `None` when the line is not logfmt.
pub fn logfmt_fields(line: &str) -> Option<BTreeMap<String, Value>> {
    let mut fields = BTreeMap::new();
    let bytes = line.as_bytes();
    let mut index = 0;
    let mut pairs = 0;
    while index < bytes.len() {
        while index < bytes.len() && bytes[index].is_ascii_whitespace() {
            index += 1;
        }
        if index >= bytes.len() {
            break;
        }
        let key_start = index;
        while index < bytes.len() && bytes[index] != b'=' && !bytes[index].is_ascii_whitespace() {
            if bytes[index] == b'"' {
                return None;
            }
            index += 1;
        }
        let key = &line[key_start..index];
        if index >= bytes.len() || bytes[index] != b'=' {
            fields.insert(key.to_owned(), Value::Bool(true));
            continue;
        }
        index += 1;
        let value = if index < bytes.len() && bytes[index] == b'"' {
            index += 1;
            let mut value = String::new();
            let mut closed = false;
            while index < bytes.len() {
                match bytes[index] {
                    b'\\' if index + 1 < bytes.len() => {
                        let escaped = line[index + 1..].chars().next()?;
                        value.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            other => other,
                        });
                        index += 1 + escaped.len_utf8();
                    }
                    b'"' => {
                        index += 1;
                        closed = true;
                        break;
                    }
                    _ => {
                        let rest = &line[index..];
                        let character = rest.chars().next()?;
                        value.push(character);
                        index += character.len_utf8();
                    }
                }
            }
            if !closed {
                return None;
            }
            value
        } else {
            let value_start = index;
            while index < bytes.len() && !bytes[index].is_ascii_whitespace() {
                index += 1;
            }
            line[value_start..index].to_owned()
        };
        if key.is_empty() {
            return None;
        }
        fields.insert(key.to_owned(), Value::String(value));
        pairs += 1;
    }
    (pairs > 0).then_some(fields)
}

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

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn from_fields(mut map: BTreeMap<String, Value>, fields: &FieldNames) -> ParsedLine {
    let mut parsed = ParsedLine::default();
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
        value.as_str().is_some_and(|text| !text.is_empty())
    }) {
        parsed.service = value_text(&value);
    }
    if parsed.message.is_empty() {
        parsed.message = serde_json::to_string(&map).unwrap_or_default();
    }
    parsed.attributes = map;
    parsed
}

fn level_of(name: &str, value: &Value) -> Option<Level> {
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

/// A trace id as logs write it. Decimal digits (Datadog) give the low 64 bits only; so do
/// 16 hex digits. Returns the id and whether only its low 64 bits are known.
pub fn parse_log_trace_id(field: &str, text: &str) -> Option<(TraceId, bool)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Some((trace_id, _)) = parse_traceparent(text) {
        return Some((trace_id, false));
    }
    let all_digits = text.bytes().all(|byte| byte.is_ascii_digit());
    let is_datadog = field.starts_with("dd.") || field.eq_ignore_ascii_case("dd_trace_id");
    if all_digits && (is_datadog || !matches!(text.len(), 16 | 32)) {
        let low = text.parse::<u64>().ok()?;
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        return TraceId::from_bytes(&bytes).ok().map(|id| (id, true));
    }
    let hex = text.replace('-', "");
    if !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) || !matches!(hex.len(), 16 | 32) {
        return None;
    }
    let trace_id = TraceId::parse(&hex).ok()?;
    Some((trace_id, hex.len() == 16))
}

pub fn parse_log_span_id(field: &str, text: &str) -> Option<SpanId> {
    let text = text.trim();
    let all_digits = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if all_digits && (field.starts_with("dd.") || text.len() != 16) {
        let value = text.parse::<u64>().ok()?;
        return SpanId::from_bytes(&value.to_be_bytes()).ok();
    }
    if text.len() != 16 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    SpanId::parse(text).ok()
}

/// W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase; version `ff` and all-zero
/// ids are invalid.
pub fn parse_traceparent(text: &str) -> Option<(TraceId, SpanId)> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let is_lower_hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !is_lower_hex(parts[0], 2) || parts[0] == "ff" || !is_lower_hex(parts[3], 2) {
        return None;
    }
    if parts[0] == "00" && parts.len() != 4 {
        return None;
    }
    if !is_lower_hex(parts[1], 32) || !is_lower_hex(parts[2], 16) {
        return None;
    }
    Some((
        TraceId::parse(parts[1]).ok()?,
        SpanId::parse(parts[2]).ok()?,
    ))
}

fn text_patterns() -> &'static (Regex, Regex, Regex, Regex) {
    static PATTERNS: OnceLock<(Regex, Regex, Regex, Regex)> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let compile = |pattern: &str| Regex::new(pattern).expect("static regex is valid");
        (
            compile(
                r#"(?i)\btrace[_\-.]?id["']?\s*[:=]\s*["']?([0-9a-fA-F]{32}|[0-9a-fA-F]{16})\b"#,
            ),
            compile(r#"(?i)\bspan[_\-.]?id["']?\s*[:=]\s*["']?([0-9a-fA-F]{16})\b"#),
            compile(r"\b(0[0-9a-f]-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})\b"),
            compile(r"\b(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|FATAL|CRITICAL|PANIC)\b"),
        )
    })
}

/// Plain text: the message is the line; ids and level are found where they are written.
pub fn parse_text(line: &str) -> ParsedLine {
    let (trace_pattern, span_pattern, traceparent_pattern, level_pattern) = text_patterns();
    let mut parsed = ParsedLine {
        message: line.to_owned(),
        ..ParsedLine::default()
    };
    if let Some(found) = trace_pattern
        .captures(line)
        .and_then(|captures| captures.get(1))
    {
        if let Some((trace_id, low_only)) = parse_log_trace_id("text", found.as_str()) {
            parsed.trace_id = Some(trace_id);
            parsed.trace_id_low64_only = low_only;
        }
    }
    if let Some(found) = span_pattern
        .captures(line)
        .and_then(|captures| captures.get(1))
    {
        parsed.span_id = SpanId::parse(found.as_str()).ok();
    }
    if parsed.trace_id.is_none() {
        if let Some((trace_id, span_id)) = traceparent_pattern
            .captures(line)
            .and_then(|captures| captures.get(1))
            .and_then(|found| parse_traceparent(found.as_str()))
        {
            parsed.trace_id = Some(trace_id);
            parsed.span_id = parsed.span_id.or(Some(span_id));
        }
    }
    parsed.level = level_pattern
        .captures(line)
        .and_then(|captures| captures.get(1))
        .and_then(|found| Level::parse(found.as_str()));
    parsed
}

fn parse_time_value(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => {
            if let Some(integer) = number.as_u64() {
                Some(epoch_by_magnitude(integer as f64))
            } else {
                number
                    .as_f64()
                    .filter(|float| *float > 0.0)
                    .map(epoch_by_magnitude)
            }
        }
        Value::String(text) => parse_time_text(text),
        _ => None,
    }
}

/// Epoch seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude.
fn epoch_by_magnitude(value: f64) -> u64 {
    let nanos = if value < 1e11 {
        value * 1e9
    } else if value < 1e14 {
        value * 1e6
    } else if value < 1e17 {
        value * 1e3
    } else {
        value
    };
    nanos as u64
}

/// RFC 3339 (any fraction), `2006-01-02 15:04:05[,.]fff` (Python's asctime, read as UTC),
/// or an epoch number in a string.
pub fn parse_time_text(text: &str) -> Option<u64> {
    let text = text.trim();
    if !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'.')
    {
        return text
            .parse::<f64>()
            .ok()
            .filter(|value| *value > 0.0)
            .map(epoch_by_magnitude);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return u64::try_from(time.timestamp_nanos_opt()?).ok();
    }
    for format in [
        "%Y-%m-%d %H:%M:%S,%f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return u64::try_from(time.and_utc().timestamp_nanos_opt()?).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> ParsedLine {
        parse_line(line, Format::Auto, &FieldNames::default())
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn json_variants_of_every_ecosystem() {
        let cases = [
            // OpenTelemetry non-OTLP JSON
            format!(r#"{{"timestamp":"2024-05-01T10:00:00Z","severity_text":"WARN","body":"slow","trace_id":"{TRACE}","span_id":"00f067aa0ba902b7","service.name":"orders"}}"#),
            // ECS, nested
            format!(r#"{{"@timestamp":"2024-05-01T10:00:00.000Z","log":{{"level":"warning"}},"message":"slow","trace":{{"id":"{TRACE}"}},"span":{{"id":"00f067aa0ba902b7"}},"service":{{"name":"orders"}}}}"#),
            // Datadog, decimal ids
            r#"{"date":"2024-05-01T10:00:00Z","status":"warn","message":"slow","dd":{"trace_id":"11803532876627986230","span_id":"67667974448284343","service":"orders"}}"#.to_string(),
            // Python OTel logging
            format!(r#"{{"asctime":"2024-05-01 10:00:00,000","levelname":"WARNING","message":"slow","otelTraceID":"{TRACE}","otelSpanID":"00f067aa0ba902b7","otelServiceName":"orders"}}"#),
            // pino
            format!(r#"{{"time":1714557600000,"level":40,"msg":"slow","name":"orders","trace_id":"{TRACE}"}}"#),
            // zap
            format!(r#"{{"ts":1714557600.0,"level":"warn","msg":"slow","logger":"orders","traceId":"{TRACE}"}}"#),
            // tracing-subscriber
            format!(r#"{{"timestamp":"2024-05-01T10:00:00Z","level":"WARN","fields":{{"message":"slow"}},"target":"orders","trace_id":"{TRACE}"}}"#),
            // structlog
            format!(r#"{{"timestamp":"2024-05-01T10:00:00Z","level":"warning","event":"slow","service":"orders","trace_id":"{TRACE}"}}"#),
        ];
        for line in cases {
            let parsed = parse(&line);
            assert_eq!(parsed.level, Some(Level::Warn), "{line}");
            assert_eq!(parsed.message, "slow", "{line}");
            assert_eq!(parsed.service.as_deref(), Some("orders"), "{line}");
            assert_eq!(
                parsed.time_unix_nano,
                Some(1_714_557_600_000_000_000),
                "{line}"
            );
            let trace_id = parsed.trace_id.expect("trace id");
            assert_eq!(trace_id.low_u64(), 0xa3ce929d0e0e4736, "{line}");
            assert!(parsed.parse_error.is_none());
        }
    }

    #[test]
    fn datadog_decimal_ids_map_to_the_low_64_bits() {
        let (id, low_only) = parse_log_trace_id("dd.trace_id", "11803532876627986230").unwrap();
        assert!(low_only);
        assert_eq!(id.to_hex(), "0000000000000000a3ce929d0e0e4736");
        let (id, _) = parse_log_trace_id("dd.trace_id", "1234567890123456789").unwrap();
        assert_eq!(&id.to_hex()[16..], "112210f47de98115");
        let (id, low_only) = parse_log_trace_id("trace_id", TRACE).unwrap();
        assert!(!low_only);
        assert_eq!(id.to_hex(), TRACE);
    }

    #[test]
    fn traceparent_in_a_field_or_in_text() {
        let header = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let parsed = parse(&format!(r#"{{"msg":"x","traceparent":"{header}"}}"#));
        assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
        assert_eq!(parsed.span_id.unwrap().to_hex(), "00f067aa0ba902b7");
        let parsed = parse(&format!("request done traceparent={header} in 3ms"));
        assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
        assert!(parse_traceparent(&format!("ff-{TRACE}-00f067aa0ba902b7-01")).is_none());
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent(&format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()))
                .is_none()
        );
    }

    #[test]
    fn logfmt_lines() {
        let parsed = parse(&format!(
            r#"ts=2024-05-01T10:00:00Z level=error msg="payment failed: \"card declined\"" trace_id={TRACE} span_id=00f067aa0ba902b7 service=billing amount=12.5"#
        ));
        assert_eq!(parsed.level, Some(Level::Error));
        assert_eq!(parsed.message, "payment failed: \"card declined\"");
        assert_eq!(parsed.service.as_deref(), Some("billing"));
        assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
        assert_eq!(parsed.attributes["amount"], Value::String("12.5".into()));
    }

    #[test]
    fn plain_text_with_ids_and_docker_and_cri_wrappers() {
        let inner = "16:51:24.967 INFO  UserController TraceID: 2f18e2a8b1c94c6e9f1b4b2a7c5de7cd SpanID: 547f1c2d3e4a1a25 [getUser]";
        let docker = serde_json::json!({"log": format!("{inner}\n"), "stream": "stdout", "time": "2023-01-29T08:51:24.968139185Z"}).to_string();
        let parsed = parse(&docker);
        assert_eq!(parsed.stream.as_deref(), Some("stdout"));
        assert_eq!(parsed.message, inner);
        assert_eq!(parsed.level, Some(Level::Info));
        assert_eq!(
            parsed.trace_id.unwrap().to_hex(),
            "2f18e2a8b1c94c6e9f1b4b2a7c5de7cd"
        );
        assert_eq!(parsed.span_id.unwrap().to_hex(), "547f1c2d3e4a1a25");
        assert_eq!(parsed.time_unix_nano, Some(1_674_982_284_968_139_185));

        let cri = format!("2023-01-29T08:51:24.968139185Z stderr F {{\"level\":\"error\",\"msg\":\"boom\",\"trace_id\":\"{TRACE}\"}}");
        let parsed = parse(&cri);
        assert_eq!(parsed.stream.as_deref(), Some("stderr"));
        assert_eq!(parsed.level, Some(Level::Error));
        assert_eq!(parsed.message, "boom");
        assert_eq!(parsed.time_unix_nano, Some(1_674_982_284_968_139_185));
        let partial = split_cri("2023-01-29T08:51:24.968139185Z stdout P first half").unwrap();
        assert!(partial.partial);
        assert_eq!(partial.content, "first half");
    }

    #[test]
    fn broken_lines_are_kept_as_flagged_text() {
        let parsed = parse_line(
            "{\"msg\": \"cut in ha",
            Format::Auto,
            &FieldNames::default(),
        );
        assert_eq!(parsed.message, "{\"msg\": \"cut in ha");
        assert!(parsed.parse_error.is_some());
        let parsed = parse_line("just words", Format::Json, &FieldNames::default());
        assert!(parsed.parse_error.is_some());
        assert_eq!(parsed.message, "just words");
    }

    #[test]
    fn levels_from_every_spelling() {
        for (text, level) in [
            ("WARNING", Level::Warn),
            ("err", Level::Error),
            ("critical", Level::Fatal),
            ("30", Level::Info),
            ("50", Level::Error),
            ("60", Level::Fatal),
            ("10", Level::Trace),
            ("Information", Level::Info),
            ("dbg", Level::Debug),
            ("9", Level::Info),
            ("17", Level::Error),
            ("21", Level::Fatal),
            ("emerg", Level::Fatal),
        ] {
            assert_eq!(Level::parse(text), Some(level), "{text}");
        }
        assert_eq!(Level::parse("chatty"), None);
        let parsed = parse(r#"{"severityNumber":10,"body":"x"}"#);
        assert_eq!(parsed.level, Some(Level::Info), "OTel severity 10 is INFO2");
        let parsed = parse(r#"{"status":200,"level":"info","msg":"x"}"#);
        assert_eq!(parsed.level, Some(Level::Info));
        assert_eq!(parsed.attributes["status"], Value::from(200));
    }

    #[test]
    fn configured_field_names_come_first() {
        let fields = FieldNames {
            message: vec!["text_payload".into()],
            trace_id: vec!["rid".into()],
            ..FieldNames::default()
        };
        let parsed = parse_line(
            &format!(r#"{{"text_payload":"hi","msg":"other","rid":"{TRACE}"}}"#),
            Format::Json,
            &fields,
        );
        assert_eq!(parsed.message, "hi");
        assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
        assert_eq!(parsed.attributes["msg"], Value::from("other"));
    }

    proptest! {
        #[test]
        fn any_line_parses_without_panicking_and_keeps_its_text(line in "\\PC{0,200}") {
            for format in [Format::Auto, Format::Json, Format::Logfmt, Format::Text] {
                let parsed = parse_line(&line, format, &FieldNames::default());
                if format == Format::Text {
                    prop_assert_eq!(&parsed.message, &line);
                }
            }
        }

        #[test]
        fn logfmt_round_trips_quoted_values(key in "[a-z]{1,8}", value in "[ -~]{0,40}") {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
            let line = format!("{key}=\"{escaped}\" level=info");
            let fields = logfmt_fields(&line).expect("valid logfmt");
            prop_assert_eq!(&fields[&key], &Value::String(value.clone()));
        }

        #[test]
        fn hex_trace_ids_in_any_case_normalise(bytes in proptest::array::uniform16(any::<u8>())) {
            prop_assume!(bytes.iter().any(|byte| *byte != 0));
            let hex = crate::model::to_hex(&bytes);
            let json = format!(r#"{{"msg":"m","traceId":"{}"}}"#, hex.to_uppercase());
            let parsed = parse_line(&json, Format::Json, &FieldNames::default());
            prop_assert_eq!(parsed.trace_id.map(|id| id.to_hex()), Some(hex));
        }
    }
}
