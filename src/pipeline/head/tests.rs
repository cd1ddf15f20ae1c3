use super::*;
use crate::pipeline::sample::Reason;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

fn span(trace: u8, id: u8) -> Span {
    let otlp = OtlpSpan {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        ..Default::default()
    };
    Span::from_otlp(None, "", None, "", otlp).unwrap()
}

fn head(max_spans: usize) -> Head {
    Head::new(HeadLimits {
        trace_idle: Duration::from_secs(5),
        trace_idle_after_root: Duration::from_secs(5),
        trace_max_age: Duration::from_secs(30),
        max_spans_per_trace: max_spans,
        max_bytes_per_trace: usize::MAX,
        decision_cache_size: 100,
    })
}

const KEEP: Decision = Decision {
    keep: true,
    reason: Reason::Fraction,
};
const DROP: Decision = Decision {
    keep: false,
    reason: Reason::NotSampled,
};

#[test]
fn a_trace_leaves_when_idle_and_is_served_until_committed() {
    let head = head(100);
    let start = Instant::now();
    head.insert(0, 10, vec![span(1, 1), span(2, 2)], Vec::new(), start);
    head.insert(
        10,
        20,
        vec![span(1, 3)],
        Vec::new(),
        start + Duration::from_secs(3),
    );
    assert_eq!(head.replay_from(), 0);
    let due = head.take_leaving(start + Duration::from_secs(5), false);
    assert_eq!(due.len(), 1, "trace 1 had a span 3 s later");
    assert_eq!(due[0].trace_id, TraceId([2; 16]));
    assert_eq!(due[0].leave, Leave::Idle);
    assert_eq!(head.trace_payloads(&TraceId([2; 16])).len(), 1);
    let due = head.take_leaving(start + Duration::from_secs(8), false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].spans.len(), 2);
    assert_eq!(
        head.replay_from(),
        20,
        "nothing assembles: replay from the end"
    );
    assert_eq!(head.trace_payloads(&TraceId([1; 16])).len(), 2);
    assert_eq!(head.committed(), 3);
    assert!(head.is_empty());
    assert!(head.trace_payloads(&TraceId([1; 16])).is_empty());
}

#[test]
fn max_age_and_size_make_a_trace_leave_even_while_it_grows() {
    let head = head(3);
    let start = Instant::now();
    for second in 0..35u64 {
        head.insert(
            second * 10,
            second * 10 + 10,
            vec![span(1, (second % 2) as u8 + 1)],
            Vec::new(),
            start + Duration::from_secs(second),
        );
    }
    // Every third span fills the trace: it leaves at once, as a fragment.
    let due = head.take_leaving(start + Duration::from_secs(34), false);
    assert_eq!(due.len(), 11);
    assert!(due.iter().all(|trace| trace.leave == Leave::Full));
    assert_eq!(head.replay_from(), 330);
    let head = head_with_age(10);
    for second in 0..12u64 {
        head.insert(
            second,
            second + 1,
            vec![span(1, 1)],
            Vec::new(),
            start + Duration::from_secs(second),
        );
    }
    let due = head.take_leaving(start + Duration::from_secs(11), false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].leave, Leave::MaxAge, "a span came every second");
    assert_eq!(due[0].spans.len(), 12);
}

fn head_with_age(seconds: u64) -> Head {
    Head::new(HeadLimits {
        trace_idle: Duration::from_secs(5),
        trace_idle_after_root: Duration::from_secs(5),
        trace_max_age: Duration::from_secs(seconds),
        max_spans_per_trace: 1000,
        max_bytes_per_trace: usize::MAX,
        decision_cache_size: 100,
    })
}

#[test]
fn held_spans_come_back_byte_for_byte_with_their_resource_and_scope() {
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let resource = Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("orders".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "lib".into(),
        ..Default::default()
    };
    let make = |id: u8, scope: &InstrumentationScope| {
        let otlp = OtlpSpan {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: format!("op {id}"),
            start_time_unix_nano: 5,
            end_time_unix_nano: 9,
            ..Default::default()
        };
        Span::from_otlp(Some(&resource), "r", Some(scope), "s", otlp).unwrap()
    };
    let other_scope = InstrumentationScope {
        name: "other".into(),
        ..Default::default()
    };
    let spans = vec![make(1, &scope), make(2, &other_scope), make(3, &scope)];
    let head = head(100);
    let start = Instant::now();
    head.insert(0, 10, spans.clone(), Vec::new(), start);
    let expected: Vec<Bytes> = spans.iter().map(|span| span.payload.clone()).collect();
    assert_eq!(head.trace_payloads(&TraceId([1; 16])), expected);
    let due = head.take_leaving(start, true);
    let back: Vec<Span> = due[0].spans.iter().map(|held| held.span.clone()).collect();
    assert_eq!(back, spans);
}

#[test]
fn a_trace_with_its_root_leaves_after_the_shorter_idle_time() {
    let head = Head::new(HeadLimits {
        trace_idle: Duration::from_secs(5),
        trace_idle_after_root: Duration::from_secs(1),
        trace_max_age: Duration::from_secs(30),
        max_spans_per_trace: 100,
        max_bytes_per_trace: usize::MAX,
        decision_cache_size: 100,
    });
    let start = Instant::now();
    let mut child = span(2, 2);
    child.parent_span_id = Some(crate::model::SpanId([1; 8]));
    head.insert(0, 10, vec![span(1, 1), child], Vec::new(), start);
    let due = head.take_leaving(start + Duration::from_secs(2), false);
    assert_eq!(due.len(), 1, "trace 1 has its root: 1 s idle is enough");
    assert_eq!(due[0].trace_id, TraceId([1; 16]));
    assert!(head
        .take_leaving(start + Duration::from_secs(4), false)
        .is_empty());
    let due = head.take_leaving(start + Duration::from_secs(5), false);
    assert_eq!(due.len(), 1, "trace 2 has no root: it waits the full 5 s");
    // A rooted trace that keeps growing leaves 1 s after its last span.
    head.insert(
        10,
        20,
        vec![span(3, 3)],
        Vec::new(),
        start + Duration::from_secs(5),
    );
    let mut late_child = span(3, 4);
    late_child.parent_span_id = Some(crate::model::SpanId([3; 8]));
    head.insert(
        20,
        30,
        vec![late_child],
        Vec::new(),
        start + Duration::from_millis(5900),
    );
    assert!(head
        .take_leaving(start + Duration::from_millis(6500), false)
        .is_empty());
    let due = head.take_leaving(start + Duration::from_millis(6900), false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].spans.len(), 2);
}

#[test]
fn late_spans_follow_the_decision() {
    let head = head(100);
    let start = Instant::now();
    head.decide(TraceId([1; 16]), DROP);
    head.decide(TraceId([2; 16]), KEEP);
    let inserted = head.insert(
        0,
        10,
        vec![span(1, 1), span(2, 2), span(1, 3)],
        Vec::new(),
        start,
    );
    assert_eq!(inserted.late_dropped, 2);
    assert_eq!(inserted.late_kept, 1);
    assert!(head.trace_payloads(&TraceId([1; 16])).is_empty());
    let due = head.take_leaving(start, true);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].decided, Some(KEEP));
    assert_eq!(due[0].leave, Leave::Shutdown);
    assert_eq!(head.dropped(&TraceId([2; 16])), 1);
    assert!(head.is_empty());
}
