use super::*;
use crate::pipeline::sample::Reason;
use crate::pipeline::Batch;
use crate::wal::{RecordKind, Wal};
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

/// A head over a real write-ahead log: inserted spans are appended to it first, as the WAL
/// thread does, so the head reads their bytes back from real segment files.
struct Fixture {
    head: Head,
    wal: Wal,
    files: Arc<WalFiles>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(limits: HeadLimits, segment_bytes: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(WalFiles::new(dir.path()));
        let wal = Wal::open(files.clone(), 0, segment_bytes, |_| {}).unwrap();
        Fixture {
            head: Head::new(limits, files.clone()),
            wal,
            files,
            _dir: dir,
        }
    }

    /// Log `spans` as one record, then insert them; returns the record's start and end.
    fn insert_at(&mut self, spans: Vec<Span>, now: Instant) -> (u64, u64, Inserted) {
        let batch = Batch::Spans(spans);
        let (mut payload, mut offsets) = (Vec::new(), Vec::new());
        batch.encode(&mut payload, &mut offsets);
        let start = self.wal.position();
        let end = self.wal.append(RecordKind::Spans, &payload).unwrap();
        self.wal.sync().unwrap();
        let payload_at: Vec<u64> = offsets
            .iter()
            .map(|offset| crate::wal::payload_position(start) + offset)
            .collect();
        let Batch::Spans(spans) = batch else {
            unreachable!("built as spans above")
        };
        let inserted = self
            .head
            .insert(start, end, spans, &payload_at, Vec::new(), now);
        (start, end, inserted)
    }

    fn insert(&mut self, spans: Vec<Span>, now: Instant) -> u64 {
        self.insert_at(spans, now).1
    }
}

impl std::ops::Deref for Fixture {
    type Target = Head;
    fn deref(&self) -> &Head {
        &self.head
    }
}

fn span(trace: u8, id: u8) -> Span {
    let otlp = OtlpSpan {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        ..Default::default()
    };
    Span::from_otlp(None, "", None, "", otlp).unwrap()
}

fn head(max_spans: usize) -> Fixture {
    Fixture::new(limits(max_spans), 1 << 20)
}

fn limits(max_spans: usize) -> HeadLimits {
    HeadLimits {
        trace_idle: Duration::from_secs(5),
        trace_idle_after_root: Duration::from_secs(5),
        trace_max_age: Duration::from_secs(30),
        max_spans_per_trace: max_spans,
        max_bytes_per_trace: usize::MAX,
        decision_cache_size: 100,
    }
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
    let mut head = head(100);
    let start = Instant::now();
    head.insert(vec![span(1, 1), span(2, 2)], start);
    let end = head.insert(vec![span(1, 3)], start + Duration::from_secs(3));
    assert_eq!(head.replay_from(), 0);
    let due = head.take_leaving(start + Duration::from_secs(5), false);
    assert_eq!(due.len(), 1, "trace 1 had a span 3 s later");
    assert_eq!(due[0].trace_id, TraceId([2; 16]));
    assert_eq!(due[0].leave, Leave::Idle);
    assert_eq!(head.trace_payloads(&TraceId([2; 16])).len(), 1);
    let due = head.take_leaving(start + Duration::from_secs(8), false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].len(), 2);
    assert_eq!(
        head.replay_from(),
        end,
        "nothing assembles: replay from the end"
    );
    assert_eq!(head.trace_payloads(&TraceId([1; 16])).len(), 2);
    assert_eq!(head.committed(), 3);
    assert!(head.is_empty());
    assert!(head.trace_payloads(&TraceId([1; 16])).is_empty());
}

#[test]
fn max_age_and_size_make_a_trace_leave_even_while_it_grows() {
    // Small segments: the trace's spans lie in many files.
    let mut head = Fixture::new(limits(3), 256);
    let start = Instant::now();
    let mut starts = Vec::new();
    for second in 0..35u64 {
        let (record_start, _, _) = head.insert_at(
            vec![span(1, (second % 2) as u8 + 1)],
            start + Duration::from_secs(second),
        );
        starts.push(record_start);
    }
    // Every third span fills the trace: it leaves at once, as a fragment.
    let due = head.take_leaving(start + Duration::from_secs(34), false);
    assert_eq!(due.len(), 11);
    assert!(due.iter().all(|trace| trace.leave == Leave::Full));
    assert!(due.iter().all(|trace| trace.len() == 3));
    // Each fragment names the latest record its spans came in: the index's `wal_last`.
    let wal_lasts: Vec<u64> = due.iter().map(LeavingTrace::wal_last).collect();
    let expected: Vec<u64> = (0..11).map(|fragment| starts[fragment * 3 + 2]).collect();
    assert_eq!(wal_lasts, expected);
    assert_eq!(head.replay_from(), starts[33]);
    let mut head = Fixture::new(
        HeadLimits {
            trace_max_age: Duration::from_secs(10),
            ..limits(1000)
        },
        1 << 20,
    );
    for second in 0..12u64 {
        head.insert(vec![span(1, 1)], start + Duration::from_secs(second));
    }
    let due = head.take_leaving(start + Duration::from_secs(11), false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].leave, Leave::MaxAge, "a span came every second");
    assert_eq!(due[0].len(), 12);
}

#[test]
fn held_spans_come_back_byte_for_byte_with_their_resource_and_scope() {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    let resource = crate::model::orders_resource();
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
    let mut head = head(100);
    let start = Instant::now();
    head.insert(spans.clone(), start);
    let expected: Vec<Bytes> = spans.iter().map(|span| span.payload.clone()).collect();
    assert_eq!(head.trace_payloads(&TraceId([1; 16])), expected);
    let mut due = head.take_leaving(start, true);
    assert_eq!(due[0].read_spans(), spans);
}

#[test]
fn a_trace_with_its_root_leaves_after_the_shorter_idle_time() {
    let mut head = Fixture::new(
        HeadLimits {
            trace_idle_after_root: Duration::from_secs(1),
            ..limits(100)
        },
        1 << 20,
    );
    let start = Instant::now();
    let mut child = span(2, 2);
    child.parent_span_id = Some(crate::model::SpanId([1; 8]));
    head.insert(vec![span(1, 1), child], start);
    let due = head.take_leaving(start + Duration::from_secs(2), false);
    assert_eq!(due.len(), 1, "trace 1 has its root: 1 s idle is enough");
    assert_eq!(due[0].trace_id, TraceId([1; 16]));
    assert!(head
        .take_leaving(start + Duration::from_secs(4), false)
        .is_empty());
    let due = head.take_leaving(start + Duration::from_secs(5), false);
    assert_eq!(due.len(), 1, "trace 2 has no root: it waits the full 5 s");
    // A rooted trace that keeps growing leaves 1 s after its last span.
    head.insert(vec![span(3, 3)], start + Duration::from_secs(5));
    let mut late_child = span(3, 4);
    late_child.parent_span_id = Some(crate::model::SpanId([3; 8]));
    head.insert(vec![late_child], start + Duration::from_millis(5900));
    assert!(head
        .take_leaving(start + Duration::from_millis(6500), false)
        .is_empty());
    let due = head.take_leaving(start + Duration::from_millis(6900), false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].len(), 2);
}

#[test]
fn late_spans_follow_the_decision() {
    let mut head = head(100);
    let start = Instant::now();
    head.decide(TraceId([1; 16]), DROP);
    head.decide(TraceId([2; 16]), KEEP);
    let (_, _, inserted) = head.insert_at(vec![span(1, 1), span(2, 2), span(1, 3)], start);
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

#[test]
fn spans_come_back_from_every_segment_they_were_logged_in() {
    // 64-byte segments: every record rolls over to a new file.
    let mut head = Fixture::new(limits(100), 64);
    let start = Instant::now();
    let first = vec![span(1, 1), span(1, 2)];
    let second = vec![span(1, 3)];
    let expected: Vec<Bytes> = first
        .iter()
        .chain(&second)
        .map(|span| span.payload.clone())
        .collect();
    head.insert(first, start);
    let end = head.insert(second, start);
    assert_eq!(head.trace_payloads(&TraceId([1; 16])), expected);
    let mut due = head.take_leaving(start, true);
    assert_eq!(head.trace_payloads(&TraceId([1; 16])), expected);
    let read: Vec<Bytes> = due[0]
        .read_spans()
        .into_iter()
        .map(|span| span.payload)
        .collect();
    assert_eq!(read, expected);
    // Once a commit holds the trace the head lets go, and the segments may go.
    assert_eq!(head.committed(), 3);
    assert!(head.files.remove_segments_below(end).unwrap() > 0);
    assert!(head.files.slices([(0, 1)].into_iter())[0].is_none());
    assert!(head.trace_payloads(&TraceId([1; 16])).is_empty());
}

#[test]
fn a_held_span_is_16_bytes() {
    // The head holds one per acked span not yet committed (up to
    // `limits.ingest_queue_spans`): a field more is ~8 bytes a span of the peak memory.
    assert_eq!(std::mem::size_of::<held::HeldSpan>(), 16);
    assert_eq!(std::mem::size_of::<Place>(), 12);
}

#[test]
fn a_pass_stops_at_its_size_bound_and_the_next_takes_the_rest() {
    let mut head = head(100);
    let start = Instant::now();
    head.insert(
        vec![
            span(1, 1),
            span(1, 2),
            span(2, 3),
            span(2, 4),
            span(3, 5),
            span(3, 6),
        ],
        start,
    );
    let later = start + Duration::from_secs(6);
    let first = head.take_leaving_at_most(later, false, 3);
    assert_eq!(
        first.len(),
        2,
        "the second trace crosses the bound of 3 spans"
    );
    let second = head.take_leaving_at_most(later, false, 3);
    assert_eq!(second.len(), 1);
    assert!(head.take_leaving_at_most(later, false, 3).is_empty());
    let mut left: Vec<TraceId> = first.iter().chain(&second).map(|t| t.trace_id).collect();
    left.sort_by_key(|id| id.0);
    assert_eq!(
        left,
        vec![TraceId([1; 16]), TraceId([2; 16]), TraceId([3; 16])]
    );
}

#[test]
fn replay_starts_at_the_first_record_of_the_oldest_trace_still_open() {
    let mut head = head(100);
    let start = Instant::now();
    let (_, first_end, _) = head.insert_at(vec![span(1, 1)], start);
    let (second, _, _) = head.insert_at(vec![span(2, 2)], start + Duration::from_secs(3));
    // Trace 1 opened first and is still open: its first record.
    assert_eq!(head.replay_from(), 0);
    let due = head.take_leaving(start + Duration::from_millis(5500), false);
    assert_eq!(due.len(), 1, "trace 1 was idle 5 s, trace 2 not yet");
    assert!(first_end <= second);
    assert_eq!(head.replay_from(), second);
}

#[test]
fn a_pass_longer_than_one_lock_hold_takes_every_due_trace_and_serves_them_all() {
    let mut head = head(100);
    let start = Instant::now();
    let traces = TRACES_PER_HOLD * 2 + 17;
    let spans: Vec<Span> = (0..traces)
        .map(|n| {
            let otlp = OtlpSpan {
                trace_id: (n as u128 + 1).to_be_bytes().to_vec(),
                span_id: vec![1; 8],
                ..Default::default()
            };
            Span::from_otlp(None, "", None, "", otlp).unwrap()
        })
        .collect();
    head.insert(spans, start);
    let due = head.take_leaving(start + Duration::from_secs(6), false);
    assert_eq!(due.len(), traces);
    for n in [0, TRACES_PER_HOLD, traces - 1] {
        let id = TraceId((n as u128 + 1).to_be_bytes());
        assert_eq!(
            head.trace_payloads(&id).len(),
            1,
            "trace {n} is served while it leaves"
        );
    }
    assert_eq!(head.committed(), traces);
}
