use super::*;
use crate::redact::Redactor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
use proptest::collection::vec;
use proptest::prelude::*;

pub(super) fn string_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn sample_span(trace: u8, span: u8, parent: Vec<u8>) -> OtlpSpan {
    OtlpSpan {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        parent_span_id: parent,
        trace_state: "ot=th:0;rv:0123456789abcd".into(),
        name: format!("GET /orders/{span}"),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            string_value("http.method", "GET"),
            KeyValue {
                key: "nested".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::KvlistValue(KeyValueList {
                        values: vec![string_value("a", "b")],
                    })),
                }),
                ..Default::default()
            },
        ],
        events: vec![Event {
            time_unix_nano: 1,
            name: "exception".into(),
            attributes: vec![string_value("exception.message", "boom")],
            dropped_attributes_count: 0,
        }],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            ..Default::default()
        }],
        status: Some(Status {
            message: "failed".into(),
            code: 2,
        }),
        flags: 0x101,
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    let resource = |service: &str| Resource {
        attributes: vec![string_value("service.name", service)],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("orders")),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "lib".into(),
                            version: "1.2".into(),
                            ..Default::default()
                        }),
                        spans: vec![
                            sample_span(1, 1, vec![]),
                            sample_span(1, 2, vec![1; 8]),
                            // An all-zero parent is no parent.
                            sample_span(2, 3, vec![0; 8]),
                        ],
                        schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                    },
                    ScopeSpans {
                        scope: None,
                        spans: vec![
                            // Refused one by one.
                            sample_span(0, 4, vec![]),
                            sample_span(3, 5, vec![7; 3]),
                            OtlpSpan {
                                status: None,
                                events: vec![],
                                trace_state: String::new(),
                                ..sample_span(3, 6, vec![])
                            },
                        ],
                        schema_url: String::new(),
                    },
                ],
                schema_url: "https://example.com/resource".into(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    spans: vec![sample_span(4, 7, vec![])],
                    ..Default::default()
                }],
                schema_url: String::new(),
            },
        ],
    }
}

#[test]
fn the_wire_reader_gives_what_prost_decoding_gives() {
    let request = request();
    let body = request.encode_to_vec();
    let by_wire = decode_request(&body, &Redactor::off()).unwrap();
    let by_prost = crate::ingest::otlp::from_request(request, &Redactor::off());
    assert_eq!(by_wire.spans.len(), 5);
    assert_eq!(by_wire.spans, by_prost.spans);
    let reasons = |decoded: &DecodedSpans| {
        decoded
            .rejected
            .iter()
            .map(|rejected| rejected.reason.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(&by_wire), reasons(&by_prost));
    assert_eq!(by_wire.rejected.len(), 2);
    let zero_parent = &by_wire.spans[2];
    assert_eq!(zero_parent.parent_span_id, None);
    let stored = Span::decode_payload(&zero_parent.payload).unwrap();
    assert!(stored.scope_spans[0].spans[0].parent_span_id.is_empty());
    assert_eq!(&*by_wire.spans[4].service, crate::model::UNKNOWN_SERVICE);
}

#[test]
fn a_span_keeps_its_own_encoding_and_unknown_fields() {
    let mut encoded = sample_span(5, 5, vec![]).encode_to_vec();
    // Field 99, a varint from a newer OTLP: skipped, and kept in the stored bytes.
    encoded.extend_from_slice(&[0x98, 0x06, 0x2a]);
    let field = |bytes: &[u8]| {
        let mut out = Vec::new();
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    };
    let resource = field(&field(&encoded));
    let mut body = vec![0x0a];
    prost::encoding::encode_varint(resource.len() as u64, &mut body);
    body.extend_from_slice(&resource);
    let decoded = decode_request(&body, &Redactor::off()).unwrap();
    let span = &decoded.spans[0];
    assert!(span
        .payload
        .windows(encoded.len())
        .any(|window| window == encoded));
    let stored = Span::decode_payload(&span.payload).unwrap();
    assert_eq!(stored.scope_spans[0].spans[0], sample_span(5, 5, vec![]));
}

#[test]
fn values_over_the_limit_are_cut_on_the_wire_path_too() {
    let mut span = sample_span(6, 6, vec![]);
    span.attributes.push(string_value("sql", &"é".repeat(100)));
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let redactor = Redactor::new(crate::redact::RedactionConfig {
        max_value_bytes: 101,
        ..Default::default()
    });
    let decoded = decode_request(&request.encode_to_vec(), &redactor).unwrap();
    let stored = Span::decode_payload(&decoded.spans[0].payload).unwrap();
    let attributes = &stored.scope_spans[0].spans[0].attributes;
    let value = |key: &str| {
        attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.clone())
            .and_then(|value| value.value)
    };
    // Cut on a character boundary: 50 two-byte characters fit in 101 bytes.
    assert_eq!(
        value("sql"),
        Some(any_value::Value::StringValue("é".repeat(50)))
    );
    assert_eq!(
        value(crate::redact::TRUNCATED_ATTRIBUTE),
        Some(any_value::Value::IntValue(1))
    );
    assert_eq!(
        redactor
            .truncated
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The request is screened in one pass; a span with a secret among clean ones is still
/// found and redacted, and the clean ones keep their own bytes.
#[test]
fn one_secret_among_many_clean_spans_is_redacted() {
    let clean: Vec<OtlpSpan> = (1..=20).map(|span| sample_span(8, span, vec![])).collect();
    let mut leaky = sample_span(8, 21, vec![]);
    leaky.attributes.push(string_value(
        "http.request.header.authorization",
        "Bearer s3cr3t-t0ken",
    ));
    let mut spans = clean.clone();
    spans.insert(10, leaky);
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let redactor = Redactor::new(crate::redact::RedactionConfig {
        builtin: true,
        ..Default::default()
    });
    let body = request.encode_to_vec();
    assert!(!redactor.content_clean(&body));
    let decoded = decode_request(&body, &redactor).unwrap();
    assert_eq!(decoded.spans.len(), 21);
    for (index, span) in decoded.spans.iter().enumerate() {
        let stored = Span::decode_payload(&span.payload).unwrap();
        let stored = &stored.scope_spans[0].spans[0];
        if index == 10 {
            assert!(!format!("{stored:?}").contains("s3cr3t"), "{stored:?}");
        } else {
            let own = clean[if index < 10 { index } else { index - 1 }].encode_to_vec();
            assert!(span.payload.windows(own.len()).any(|window| window == own));
        }
    }
    // Without the secret, the request passes in its one pass.
    let mut request = request;
    request.resource_spans[0].scope_spans[0].spans.remove(10);
    assert!(redactor.content_clean(&request.encode_to_vec()));
}

#[test]
fn broken_bodies_are_errors_as_a_whole() {
    let body = request().encode_to_vec();
    for cut in [1, 7, body.len() / 2, body.len() - 1] {
        assert!(
            decode_request(&body[..cut], &Redactor::off()).is_err(),
            "cut at {cut}"
        );
    }
    // A span name that is not UTF-8.
    let mut span = sample_span(1, 1, vec![]).encode_to_vec();
    let at = span.windows(4).position(|w| w == b"GET ").unwrap();
    span[at] = 0xff;
    assert!(SpanFields::read(&span, DEPTH).is_err());
    assert!(OtlpSpan::decode(&span[..]).is_err());
}

fn any_value_strategy() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        "\\PC{0,6}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        any::<f64>().prop_map(any_value::Value::DoubleValue),
        vec(any::<u8>(), 0..6).prop_map(any_value::Value::BytesValue),
    ]
    .prop_map(|value| AnyValue { value: Some(value) });
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(|values| AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            vec(("[a-z]{0,4}", inner), 0..3).prop_map(|pairs| AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: pairs
                        .into_iter()
                        .map(|(key, value)| KeyValue {
                            key,
                            value: Some(value),
                            ..Default::default()
                        })
                        .collect(),
                })),
            }),
        ]
    })
}

fn attributes_strategy() -> impl Strategy<Value = Vec<KeyValue>> {
    vec(("[a-z.]{0,6}", any_value_strategy()), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(key, value)| KeyValue {
                key,
                value: Some(value),
                ..Default::default()
            })
            .collect()
    })
}

fn id_strategy(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        vec(any::<u8>(), len),
        vec(any::<u8>(), 0..20)
    ]
}

prop_compose! {
    fn span_strategy()(
        trace_id in id_strategy(16),
        span_id in id_strategy(8),
        parent_span_id in id_strategy(8),
        trace_state in prop_oneof![Just(String::new()), Just("ot=rv:00112233445566".to_owned()), "\\PC{0,8}"],
        name in "\\PC{0,10}",
        kind in any::<i32>(),
        start in any::<u64>(),
        end in any::<u64>(),
        attributes in attributes_strategy(),
        events in vec((any::<u64>(), prop_oneof![Just("exception".to_owned()), "[a-z]{0,5}"], attributes_strategy()), 0..3),
        links in vec((id_strategy(16), id_strategy(8), "[a-z]{0,4}", attributes_strategy(), any::<u32>()), 0..2),
        status in proptest::option::of(("\\PC{0,5}", any::<i32>())),
        counts in any::<(u32, u32, u32, u32)>(),
    ) -> OtlpSpan {
        OtlpSpan {
            trace_id, span_id, parent_span_id, trace_state, name, kind,
            start_time_unix_nano: start, end_time_unix_nano: end, attributes,
            dropped_attributes_count: counts.0,
            events: events.into_iter().map(|(time_unix_nano, name, attributes)| Event {
                time_unix_nano, name, attributes, dropped_attributes_count: 0,
            }).collect(),
            dropped_events_count: counts.1,
            links: links.into_iter().map(|(trace_id, span_id, trace_state, attributes, flags)| Link {
                trace_id, span_id, trace_state, attributes, dropped_attributes_count: 0, flags,
            }).collect(),
            dropped_links_count: counts.2,
            status: status.map(|(message, code)| Status { message, code }),
            flags: counts.3,
        }
    }
}

/// Byte edits: overwrite, cut, insert.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
        1 => any::<usize>().prop_map(Edit::Cut),
        2 => (any::<usize>(), vec(any::<u8>(), 1..4)).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Set(at, byte) => {
                if !bytes.is_empty() {
                    bytes[at % len] = *byte;
                }
            }
            Edit::Cut(at) => bytes.truncate(at % len),
            Edit::Insert(at, inserted) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
        }
    }
    bytes
}

/// A request of one resource (`service`) and one scope holding `spans`.
fn one_service_request(
    spans: Vec<OtlpSpan>,
    service: &str,
    schema_url: &str,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_value("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: schema_url.into(),
        }],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The checker accepts exactly what prost decodes, and reads the same fields.
    #[test]
    fn the_span_checker_agrees_with_prost(
        span in span_strategy(),
        edits in vec(edit_strategy(), 0..3),
    ) {
        let bytes = apply(span.encode_to_vec(), &edits);
        let by_prost = OtlpSpan::decode(&bytes[..]);
        let by_wire = SpanFields::read(&bytes, DEPTH);
        prop_assert_eq!(by_wire.is_ok(), by_prost.is_ok(), "wire: {:?}, prost: {:?}", by_wire, by_prost);
        if let (Ok(fields), Ok(span)) = (by_wire, by_prost) {
            prop_assert_eq!(fields.trace_id, &span.trace_id[..]);
            prop_assert_eq!(fields.span_id, &span.span_id[..]);
            prop_assert_eq!(fields.parent_span_id, &span.parent_span_id[..]);
            prop_assert_eq!(fields.trace_state, span.trace_state.as_str());
            prop_assert_eq!(fields.name, span.name.as_str());
            prop_assert_eq!(fields.kind, span.kind);
            prop_assert_eq!(fields.start_time_unix_nano, span.start_time_unix_nano);
            prop_assert_eq!(fields.end_time_unix_nano, span.end_time_unix_nano);
            prop_assert_eq!(fields.status_code, span.status.as_ref().map_or(0, |status| status.code));
            prop_assert_eq!(
                fields.has_exception,
                span.events.iter().any(|event| event.name == "exception")
            );
        }
    }

    /// Whole requests: valid exactly when prost says so, and then the same spans.
    #[test]
    fn the_request_reader_agrees_with_prost(
        spans in vec(span_strategy(), 1..4),
        service in "[a-z]{1,5}",
        edits in vec(edit_strategy(), 0..2),
    ) {
        let request = one_service_request(spans, &service, "");
        let bytes = apply(request.encode_to_vec(), &edits);
        let by_prost = ExportTraceServiceRequest::decode(&bytes[..]);
        let by_wire = decode_request(&bytes, &Redactor::off());
        prop_assert_eq!(by_wire.is_ok(), by_prost.is_ok(), "wire: {:?}", by_wire.as_ref().err());
        if let (Ok(by_wire), Ok(request)) = (by_wire, by_prost) {
            let by_prost = crate::ingest::otlp::from_request(request, &Redactor::off());
            prop_assert_eq!(by_wire.rejected.len(), by_prost.rejected.len());
            prop_assert_eq!(by_wire.spans.len(), by_prost.spans.len());
            for (wire, prost) in by_wire.spans.iter().zip(&by_prost.spans) {
                prop_assert_eq!(
                    Span::decode_payload(&wire.payload).unwrap(),
                    Span::decode_payload(&prost.payload).unwrap()
                );
                prop_assert_eq!(
                    Span { payload: prost.payload.clone(), ..wire.clone() },
                    prost.clone()
                );
            }
        }
    }

    /// What the head reads back when a trace leaves: every span the request reader took
    /// comes back from its stored payload as it went in (the head keeps only where it
    /// lies and its envelope).
    #[test]
    fn a_stored_payload_reads_back_to_its_span(
        spans in vec(span_strategy(), 1..4),
        service in "[a-z]{1,5}",
    ) {
        let request = one_service_request(spans, &service, "https://example.com/schema");
        let decoded = decode_request(&request.encode_to_vec(), &Redactor::off()).unwrap();
        for span in decoded.spans {
            let back = stored_span(span.payload.clone(), &span.envelope).unwrap();
            prop_assert_eq!(back, span);
        }
    }
}

#[test]
fn a_stored_payload_without_a_span_is_an_error() {
    let envelope = Arc::new(Envelope::new(None, "", None, ""));
    let empty = ResourceSpans::default().encode_to_vec();
    assert!(stored_span(Bytes::from(empty), &envelope).is_err());
    assert!(stored_span(Bytes::from_static(&[0x12, 0x05, 1]), &envelope).is_err());
}
