//! One log line into a [`ParsedLine`]: pure functions, no I/O, property-tested.
//!
//! Takes a line (already without its newline) as the tailer read it and gives out time,
//! level, message, trace and span ids, service and the remaining fields. Understands JSON
//! lines (dotted keys and nested objects alike, with the field-name variants of
//! OpenTelemetry, ECS, Datadog, Python OTel logging, slog, zap, logrus, pino, bunyan,
//! structlog and tracing-subscriber), logfmt, and plain text (a trace id after `trace_id`,
//! `traceId`, `TraceID:`, inside a `traceparent` value or Sleuth's `[app,trace,span]`; the
//! level among the first words). Docker json-file and CRI wrappers are unwrapped first;
//! their time and stream are kept and the inner line is parsed again.
//!
//! With `format = "auto"` a line is JSON only when it is a JSON object, logfmt only when
//! it is logfmt as a whole (it starts with a `key=value` pair and such pairs cover it, as
//! logfmt libraries write it), and text otherwise: a Java line with `status=1` in its
//! message is text, its `TraceID:` found. A structured line that names no trace id has
//! its message searched for one. A line that does not parse as a format the source
//! forces is kept as text, flagged.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

mod text;

pub use text::{ids_in_text, leading_level, parse_text, parse_with_regex};

use crate::model::Level;
use crate::model::{SpanId, TraceId};

/// How the lines of a source are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Logfmt,
    Text,
    /// The source's `regex`, whose named groups say which part is which.
    Regex,
    #[default]
    Auto,
}

/// What a line was read as, for `tracelink_tailer_lines_total{format}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineFormat {
    Json,
    Logfmt,
    #[default]
    Text,
    Regex,
}

/// The container runtime's wrapper around a line, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wrapper {
    #[default]
    None,
    /// Docker's json-file driver: `{"log":"…","stream":"stdout","time":"…"}`.
    Docker,
    /// CRI (containerd, CRI-O): `<time> <stream> <P|F> <content>`.
    Cri,
}

impl LineFormat {
    pub const ALL: [LineFormat; 4] = [
        LineFormat::Json,
        LineFormat::Logfmt,
        LineFormat::Text,
        LineFormat::Regex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LineFormat::Json => "json",
            LineFormat::Logfmt => "logfmt",
            LineFormat::Text => "text",
            LineFormat::Regex => "regex",
        }
    }
}

impl Wrapper {
    pub const ALL: [Wrapper; 3] = [Wrapper::None, Wrapper::Docker, Wrapper::Cri];

    pub fn as_str(self) -> &'static str {
        match self {
            Wrapper::None => "none",
            Wrapper::Docker => "docker",
            Wrapper::Cri => "cri",
        }
    }
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
    pub format: LineFormat,
    pub wrapper: Wrapper,
    /// No field held the message: it is the remaining fields, rendered.
    pub message_derived: bool,
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
    parse_line_as(line, format, None, fields)
}

/// [`parse_line`] with the source's regex, which `Format::Regex` reads lines with.
pub fn parse_line_as(
    line: &str,
    format: Format,
    regex: Option<&Regex>,
    fields: &FieldNames,
) -> ParsedLine {
    let parse_inner = |inner: &str, format: Format, fields: &FieldNames| match (format, regex) {
        (Format::Regex, Some(pattern)) => parse_with_regex(inner, pattern),
        _ => parse_inner(inner, format, fields),
    };
    if let Some(cri) = split_cri(line) {
        let mut parsed = parse_inner(cri.content, format, fields);
        parsed.wrapper = Wrapper::Cri;
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
                parsed.wrapper = Wrapper::Docker;
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
            Ok(map) => from_fields(map, fields, LineFormat::Json),
            Err(error) => with_error(parse_text(line), format!("not JSON: {error}")),
        },
        Format::Logfmt => match logfmt_fields(line) {
            Some(map) => with_line_as_message(from_fields(map, fields, LineFormat::Logfmt), line),
            None => with_error(parse_text(line), "not logfmt".into()),
        },
        // Without its regex (a config the validation refuses) a regex source reads text.
        Format::Text | Format::Regex => parse_text(line),
        // A line that looks like JSON and is not (cut short, say) is text, flagged.
        Format::Auto if trimmed.starts_with('{') => match json_fields(line) {
            Ok(map) => from_fields(map, fields, LineFormat::Json),
            Err(error) => with_error(parse_text(line), format!("not JSON: {error}")),
        },
        Format::Auto => match strict_logfmt_fields(line) {
            Some(map) => with_line_as_message(from_fields(map, fields, LineFormat::Logfmt), line),
            None => parse_text(line),
        },
    }
}

/// Logfmt as a whole: every word is a `key=value` pair (the value may be quoted or
/// empty) whose key is a plain name, as logfmt libraries write them. `None` otherwise.
pub fn strict_logfmt_fields(line: &str) -> Option<BTreeMap<String, Value>> {
    // Most text lines fail on their first word: no map built for them.
    let first_word = line.split_whitespace().next()?;
    let (first_key, _) = first_word.split_once('=')?;
    let plain_key = |key: &str| {
        let mut bytes = key.bytes();
        bytes
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_' || first == b'@')
            && bytes.all(|byte| {
                byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-' | b'/' | b'@')
            })
    };
    if !plain_key(first_key) {
        return None;
    }
    let fields = logfmt_fields(line)?;
    let all_pairs = fields
        .iter()
        .all(|(key, value)| plain_key(key) && !matches!(value, Value::Bool(_)));
    // A repeated key collapses in the map: count the words to be sure every one was a pair.
    let words = count_logfmt_words(line)?;
    (all_pairs && words == fields.len()).then_some(fields)
}

/// The number of words of a logfmt line (quoted values count as part of their word).
fn count_logfmt_words(line: &str) -> Option<usize> {
    let mut words = 0;
    let mut in_word = false;
    let mut quoted = false;
    let mut escaped = false;
    for character in line.chars() {
        if quoted {
            match character {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        if character.is_whitespace() {
            in_word = false;
            continue;
        }
        if !in_word {
            words += 1;
            in_word = true;
        }
        if character == '"' {
            quoted = true;
        }
    }
    (!quoted).then_some(words)
}

/// A logfmt line that names no message reads best as itself (Heroku's router lines).
fn with_line_as_message(mut parsed: ParsedLine, line: &str) -> ParsedLine {
    if parsed.message_derived {
        parsed.message = line.to_owned();
        parsed.message_derived = false;
    }
    parsed
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

fn from_fields(
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
mod tests;
