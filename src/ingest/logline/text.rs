//! Lines that are neither JSON nor logfmt: the whole line is the message, the level is
//! the one written at its start, and trace and span ids are found where people write
//! them (`trace_id=`, `TraceID:`, a `traceparent`, Spring Sleuth's `[app,trace,span]`).
//! Also a source's own regex, whose named groups say which part is which.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::{parse_log_trace_id, parse_time_text, parse_traceparent, LineFormat, ParsedLine};
use crate::model::{Level, SpanId, TraceId};

/// How many words at the start of a line may name its level: a date, a time, a thread or
/// a pid usually come first (`2024-05-01 10:00:00,123 - orders - ERROR - …`).
const LEVEL_WORDS: usize = 6;

struct Patterns {
    trace: Regex,
    span: Regex,
    traceparent: Regex,
    sleuth: Regex,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let compile = |pattern: &str| Regex::new(pattern).expect("static regex is valid");
        Patterns {
            trace: compile(
                r#"(?i)\btrace[_\-.]?id["']?\s*[:=]\s*["']?([0-9a-f]{32}|[0-9a-f]{16})\b"#,
            ),
            span: compile(r#"(?i)\bspan[_\-.]?id["']?\s*[:=]\s*["']?([0-9a-f]{16})\b"#),
            traceparent: compile(r"\b(0[0-9a-f]-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})\b"),
            // Spring Cloud Sleuth / Micrometer Tracing: `[app,traceId,spanId(,exportable)]`
            // or `[traceId,spanId]`.
            sleuth: compile(
                r"\[(?:[\w.\-]*,)?([0-9a-f]{32}|[0-9a-f]{16}),([0-9a-f]{16})(?:,[\w]*)?\]",
            ),
        }
    })
}

/// Ids written in free text: the trace id (and whether only its low 64 bits are known)
/// and the span id.
pub fn ids_in_text(text: &str) -> (Option<(TraceId, bool)>, Option<SpanId>) {
    let patterns = patterns();
    let capture = |pattern: &Regex| {
        pattern
            .captures(text)
            .and_then(|captures| captures.get(1))
            .map(|found| found.as_str())
    };
    let mut trace_id = capture(&patterns.trace).and_then(|id| parse_log_trace_id("text", id));
    let mut span_id = capture(&patterns.span).and_then(|id| SpanId::parse(id).ok());
    if trace_id.is_none() {
        if let Some((trace, span)) = capture(&patterns.traceparent).and_then(parse_traceparent) {
            trace_id = Some((trace, false));
            span_id = span_id.or(Some(span));
        }
    }
    if trace_id.is_none() {
        if let Some(captures) = patterns.sleuth.captures(text) {
            trace_id = captures
                .get(1)
                .and_then(|id| parse_log_trace_id("text", id.as_str()));
            if trace_id.is_some() {
                span_id = span_id.or_else(|| {
                    captures
                        .get(2)
                        .and_then(|id| SpanId::parse(id.as_str()).ok())
                });
            }
        }
    }
    (trace_id, span_id)
}

/// Plain text: the message is the line; ids and level are found where they are written.
pub fn parse_text(line: &str) -> ParsedLine {
    let (trace_id, span_id) = ids_in_text(line);
    ParsedLine {
        message: line.to_owned(),
        level: leading_level(line),
        trace_id: trace_id.map(|(id, _)| id),
        trace_id_low64_only: trace_id.is_some_and(|(_, low_only)| low_only),
        span_id,
        format: LineFormat::Text,
        ..ParsedLine::default()
    }
}

/// The level a text line names among its first words: `INFO`, `[ERROR]`, `<WARN>`,
/// `level=warn`, Python's `ERROR:root:…`, klog's `E0501` prefix. Upper-case words are
/// levels wherever they stand there; lower-case ones only when they are a common level
/// name (`error: …`), so that an ordinary first word is not taken for one.
pub fn leading_level(line: &str) -> Option<Level> {
    let words = line
        .split(|character: char| character.is_whitespace() || character == '|')
        .filter_map(|raw| {
            let word = raw.trim_matches(|character: char| {
                matches!(
                    character,
                    '[' | ']' | '(' | ')' | '<' | '>' | ':' | ',' | ';' | '-' | '"' | '\''
                )
            });
            // `[info]`, `<warn>`, `error:`: set apart as a level is, not a word of prose.
            let marked = raw.len() != word.len() || word.contains(':');
            (!word.is_empty()).then_some((word, marked))
        })
        .take(LEVEL_WORDS);
    for (index, (word, marked)) in words.enumerate() {
        if index == 0 {
            if let Some(level) = klog_level(word) {
                return Some(level);
            }
        }
        if let Some((key, value)) = word.split_once('=') {
            let key = key.to_ascii_lowercase();
            if matches!(
                key.as_str(),
                "level" | "lvl" | "severity" | "loglevel" | "log.level"
            ) {
                return Level::parse(value.trim_matches('"'));
            }
            continue;
        }
        let word = word.split(':').next().unwrap_or(word);
        if let Some(level) = level_word(word, index == 0 || marked) {
            return Some(level);
        }
    }
    None
}

/// An upper-case level name, or a common one in any case when it stands first or is set
/// apart (`[info]`, `error:`).
fn level_word(word: &str, first_or_marked: bool) -> Option<Level> {
    if word.len() < 3 {
        return None;
    }
    let upper = word.bytes().all(|byte| byte.is_ascii_uppercase());
    let common = first_or_marked
        && matches!(
            word.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "warning" | "error" | "fatal" | "critical"
        );
    if upper || common {
        Level::parse(word)
    } else {
        None
    }
}

/// klog / glog: `I0501`, `W0501`, `E0501`, `F0501` (level letter, month, day).
fn klog_level(word: &str) -> Option<Level> {
    let bytes = word.as_bytes();
    if bytes.len() != 5 || !bytes[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    match bytes[0] {
        b'I' => Some(Level::Info),
        b'W' => Some(Level::Warn),
        b'E' => Some(Level::Error),
        b'F' => Some(Level::Fatal),
        _ => None,
    }
}

/// A line read with a source's own regex: the named groups `time`, `level`, `message`
/// (or `msg`), `trace_id`, `span_id` and `service` say what they hold, any other named
/// group becomes an attribute. A line the regex does not match is kept as text, flagged.
pub fn parse_with_regex(line: &str, pattern: &Regex) -> ParsedLine {
    let Some(captures) = pattern.captures(line) else {
        let mut parsed = parse_text(line);
        parsed.parse_error = Some("the line does not match the source's regex".into());
        return parsed;
    };
    let mut parsed = ParsedLine {
        format: LineFormat::Regex,
        ..ParsedLine::default()
    };
    for name in pattern.capture_names().flatten() {
        let Some(value) = captures.name(name).map(|found| found.as_str()) else {
            continue;
        };
        match name {
            "time" | "timestamp" => parsed.time_unix_nano = parse_time_text(value),
            "level" => parsed.level = Level::parse(value),
            "message" | "msg" => parsed.message = value.to_owned(),
            "trace_id" => {
                if let Some((trace_id, low_only)) = parse_log_trace_id(name, value) {
                    parsed.trace_id = Some(trace_id);
                    parsed.trace_id_low64_only = low_only;
                }
            }
            "span_id" => parsed.span_id = super::parse_log_span_id(name, value),
            "service" => parsed.service = Some(value.to_owned()).filter(|text| !text.is_empty()),
            other => {
                parsed
                    .attributes
                    .insert(other.to_owned(), Value::String(value.to_owned()));
            }
        }
    }
    if parsed.message.is_empty() {
        parsed.message = line.to_owned();
    }
    if parsed.trace_id.is_none() {
        let (trace_id, span_id) = ids_in_text(line);
        if let Some((trace_id, low_only)) = trace_id {
            parsed.trace_id = Some(trace_id);
            parsed.trace_id_low64_only = low_only;
            parsed.span_id = parsed.span_id.or(span_id);
        }
    }
    parsed
}
