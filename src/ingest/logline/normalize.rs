//! Time and id normalisation: trace and span ids in every spelling logs use (hex of 32 or
//! 16 digits, Datadog's decimal 64 bits, W3C `traceparent`), and times as RFC 3339 text,
//! epoch seconds, milliseconds, microseconds or nanoseconds told apart by magnitude.

use serde_json::Value;

use crate::model::{SpanId, TraceId};

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

pub(super) fn parse_time_value(value: &Value) -> Option<u64> {
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
