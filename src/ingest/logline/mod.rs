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

mod fields;
mod logfmt;
mod normalize;
mod text;

pub use logfmt::{logfmt_fields, strict_logfmt_fields};
pub use normalize::{parse_log_span_id, parse_log_trace_id, parse_time_text, parse_traceparent};
pub use text::{ids_in_text, leading_level, parse_text, parse_with_regex};

use fields::from_fields;

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

#[cfg(test)]
mod tests;
