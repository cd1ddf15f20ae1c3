//! Attribute terms of trace fragments: `scope\0key\0<type><value>`, one per distinct
//! attribute value of the fragment's spans and resources, for tag names and values.
//!
//! Built on the indexer thread for every kept span, so the span's stored protobuf is
//! walked in place (resource attributes, then each span's attributes) rather than
//! decoded: no allocation per attribute, the terms written into one buffer and
//! deduplicated by sorting.

use std::fmt::Write as _;
use std::ops::Range;

use prost::encoding::decode_varint;

/// Longer values are not kept as terms: they name no tag value anyone picks from a list.
const MAX_TERM_VALUE_BYTES: usize = 256;

/// The attribute scopes a term can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TagScope {
    Resource,
    Span,
}

impl TagScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TagScope::Resource => "resource",
            TagScope::Span => "span",
        }
    }
}

/// An attribute value's type, as Tempo's tag values name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TagType {
    String,
    Int,
    Float,
    Bool,
}

impl TagType {
    pub fn as_str(self) -> &'static str {
        match self {
            TagType::String => "string",
            TagType::Int => "int",
            TagType::Float => "float",
            TagType::Bool => "bool",
        }
    }

    fn marker(self) -> char {
        match self {
            TagType::String => 's',
            TagType::Int => 'i',
            TagType::Float => 'f',
            TagType::Bool => 'b',
        }
    }

    fn from_marker(marker: u8) -> Option<TagType> {
        match marker {
            b's' => Some(TagType::String),
            b'i' => Some(TagType::Int),
            b'f' => Some(TagType::Float),
            b'b' => Some(TagType::Bool),
            _ => None,
        }
    }
}

/// `op\0<service>\0<kind>\0<name>` back into its parts.
pub fn split_operation(term: &[u8]) -> Option<(&str, i32, &str)> {
    let text = std::str::from_utf8(term).ok()?.strip_prefix("op\0")?;
    let (service, rest) = text.split_once('\0')?;
    let (kind, name) = rest.split_once('\0')?;
    Some((service, kind.parse().ok()?, name))
}

/// `scope\0key\0<type><value>` back into its parts.
pub fn split_term(term: &[u8]) -> Option<(TagScope, &str, TagType, &str)> {
    let text = std::str::from_utf8(term).ok()?;
    let (scope, rest) = text.split_once('\0')?;
    let (key, typed) = rest.split_once('\0')?;
    let scope = match scope {
        "resource" => TagScope::Resource,
        "span" => TagScope::Span,
        _ => return None,
    };
    let kind = TagType::from_marker(*typed.as_bytes().first()?)?;
    Some((scope, key, kind, &typed[1..]))
}

/// The terms of one fragment, gathered span by span.
#[derive(Default)]
pub struct AttributeTerms<'a> {
    buffer: String,
    terms: Vec<Range<usize>>,
    /// The encoded attributes already made terms of, by scope: the spans of a trace
    /// repeat most of theirs (method, route, peer), and a repeat costs a hash lookup
    /// instead of a term formatted, sorted and dropped as a duplicate.
    seen: crate::FastSet<(TagScope, &'a [u8])>,
}

/// One field of a protobuf message, as the walk sees it.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// Call `each` for every field of the message in `bytes`; `None` when it is malformed.
fn walk<'a>(mut bytes: &'a [u8], mut each: impl FnMut(u64, Wire<'a>)) -> Option<()> {
    while !bytes.is_empty() {
        let key = decode_varint(&mut bytes).ok()?;
        let number = key >> 3;
        match key & 7 {
            0 => each(number, Wire::Varint(decode_varint(&mut bytes).ok()?)),
            1 => {
                let (value, rest) = bytes.split_first_chunk::<8>()?;
                bytes = rest;
                each(number, Wire::Fixed64(u64::from_le_bytes(*value)));
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut bytes).ok()?).ok()?;
                if bytes.len() < len {
                    return None;
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                each(number, Wire::Bytes(value));
            }
            5 => bytes = bytes.get(4..)?,
            _ => return None,
        }
    }
    Some(())
}

/// The first of `keys` (in their order) that the span of a stored payload has as a
/// non-empty string attribute, read in place.
pub fn span_string_attribute<'a>(payload: &'a [u8], keys: &[&str]) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    walk(payload, |number, field| {
        let (2, Wire::Bytes(scope_spans)) = (number, field) else {
            return;
        };
        walk(scope_spans, |number, field| {
            let (2, Wire::Bytes(span)) = (number, field) else {
                return;
            };
            walk(span, |number, field| {
                let (9, Wire::Bytes(key_value)) = (number, field) else {
                    return;
                };
                let mut key: &[u8] = &[];
                let mut value: &[u8] = &[];
                walk(key_value, |number, field| match (number, field) {
                    (1, Wire::Bytes(bytes)) => key = bytes,
                    (2, Wire::Bytes(bytes)) => value = bytes,
                    _ => {}
                });
                // The key first: most attributes are not wanted, and their values are
                // then never looked at.
                let Some(rank) = keys.iter().position(|wanted| wanted.as_bytes() == key) else {
                    return;
                };
                if best.is_some_and(|(best_rank, _)| best_rank <= rank) {
                    return;
                }
                let mut text = None;
                walk(value, |number, field| {
                    if let (1, Wire::Bytes(bytes)) = (number, field) {
                        text = std::str::from_utf8(bytes).ok();
                    }
                });
                if let Some(text) = text.filter(|text| !text.is_empty()) {
                    best = Some((rank, text));
                }
            });
        });
    });
    best.map(|(_, text)| text)
}

impl<'a> AttributeTerms<'a> {
    /// Add the attributes of a stored span payload (a one-span `ResourceSpans`); its
    /// resource's too when `with_resource`.
    pub fn add_payload(&mut self, payload: &'a [u8], with_resource: bool) {
        // ResourceSpans: 1 resource (Resource: 1 attributes), 2 scope_spans
        // (ScopeSpans: 2 spans (Span: 9 attributes)).
        walk(payload, |number, field| match (number, field) {
            (1, Wire::Bytes(resource)) if with_resource => {
                walk(resource, |number, field| {
                    if let (1, Wire::Bytes(key_value)) = (number, field) {
                        self.add_key_value(TagScope::Resource, key_value);
                    }
                });
            }
            (2, Wire::Bytes(scope_spans)) => {
                walk(scope_spans, |number, field| {
                    if let (2, Wire::Bytes(span)) = (number, field) {
                        walk(span, |number, field| {
                            if let (9, Wire::Bytes(key_value)) = (number, field) {
                                self.add_key_value(TagScope::Span, key_value);
                            }
                        });
                    }
                });
            }
            _ => {}
        });
    }

    /// `KeyValue`: 1 key, 2 value (`AnyValue`: 1 string, 2 bool, 3 int, 4 double).
    fn add_key_value(&mut self, scope: TagScope, key_value: &'a [u8]) {
        if !self.seen.insert((scope, key_value)) {
            return;
        }
        let mut key: Option<&str> = None;
        let mut value: Option<&[u8]> = None;
        walk(key_value, |number, field| match (number, field) {
            (1, Wire::Bytes(bytes)) => key = std::str::from_utf8(bytes).ok(),
            (2, Wire::Bytes(bytes)) => value = Some(bytes),
            _ => {}
        });
        let (Some(key), Some(value)) = (key, value) else {
            return;
        };
        if key.contains('\0') {
            return;
        }
        let start = self.buffer.len();
        let mut written = false;
        walk(value, |number, field| {
            if written {
                return;
            }
            let typed = match (number, field) {
                (1, Wire::Bytes(text)) => match std::str::from_utf8(text) {
                    Ok(text) if text.len() <= MAX_TERM_VALUE_BYTES => {
                        Some((TagType::String, Value::Text(text)))
                    }
                    _ => None,
                },
                (2, Wire::Varint(flag)) => Some((TagType::Bool, Value::Bool(flag != 0))),
                (3, Wire::Varint(number)) => Some((TagType::Int, Value::Int(number as i64))),
                (4, Wire::Fixed64(bits)) => {
                    Some((TagType::Float, Value::Float(f64::from_bits(bits))))
                }
                _ => None,
            };
            let Some((kind, typed)) = typed else {
                return;
            };
            self.buffer.push_str(scope.as_str());
            self.buffer.push('\0');
            self.buffer.push_str(key);
            self.buffer.push('\0');
            self.buffer.push(kind.marker());
            let _ = match typed {
                Value::Text(text) => self.buffer.write_str(text),
                Value::Bool(flag) => write!(self.buffer, "{flag}"),
                Value::Int(number) => write!(self.buffer, "{number}"),
                Value::Float(number) => write!(self.buffer, "{number}"),
            };
            written = true;
        });
        if written {
            self.terms.push(start..self.buffer.len());
        }
    }

    /// An operation of the fragment: `op\0<service>\0<kind>\0<span name>` (Jaeger's
    /// services and operations lists).
    pub fn add_operation(&mut self, service: &str, kind: i32, name: &str) {
        if service.contains('\0') || name.len() > MAX_TERM_VALUE_BYTES {
            return;
        }
        let start = self.buffer.len();
        let _ = write!(self.buffer, "op\0{service}\0{kind}\0{name}");
        self.terms.push(start..self.buffer.len());
    }

    /// The bytes of every term added (duplicates included).
    pub fn bytes(&self) -> usize {
        self.buffer.len() + 16 * self.terms.len()
    }

    /// Every distinct term, sorted.
    pub fn distinct(&mut self) -> impl Iterator<Item = &str> + '_ {
        let buffer = &self.buffer;
        self.terms
            .sort_unstable_by(|a, b| buffer[a.clone()].cmp(&buffer[b.clone()]));
        self.terms
            .dedup_by(|a, b| buffer[a.clone()] == buffer[b.clone()]);
        self.terms.iter().map(|range| &buffer[range.clone()])
    }
}

enum Value<'a> {
    Text(&'a str),
    Bool(bool),
    Int(i64),
    Float(f64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn terms_come_from_the_stored_protobuf_without_decoding_it() {
        let resource = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: vec![attribute(
                "service.name",
                any_value::Value::StringValue("orders".into()),
            )],
            ..Default::default()
        };
        let span = OtlpSpan {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![
                attribute("http.route", any_value::Value::StringValue("/a".into())),
                attribute("http.status_code", any_value::Value::IntValue(-500)),
                attribute("ratio", any_value::Value::DoubleValue(0.25)),
                attribute("cache.hit", any_value::Value::BoolValue(true)),
                attribute("long", any_value::Value::StringValue("x".repeat(300))),
                attribute("http.route", any_value::Value::StringValue("/a".into())),
            ],
            ..Default::default()
        };
        let record = crate::model::Span::from_otlp(Some(&resource), "", None, "", span).unwrap();
        let mut terms = AttributeTerms::default();
        terms.add_payload(&record.payload, true);
        terms.add_payload(&record.payload, false);
        let found: Vec<String> = terms.distinct().map(str::to_owned).collect();
        assert_eq!(
            found,
            vec![
                "resource\0service.name\0sorders",
                "span\0cache.hit\0btrue",
                "span\0http.route\0s/a",
                "span\0http.status_code\0i-500",
                "span\0ratio\0f0.25",
            ]
        );
        assert_eq!(
            split_term(found[3].as_bytes()),
            Some((TagScope::Span, "http.status_code", TagType::Int, "-500"))
        );
    }
}
