use std::sync::Arc;

use proptest::prelude::*;

use super::eval::{Evaluator, SpanView, TraceView, Value};
use super::*;

#[test]
fn grafana_builder_queries_parse() {
    let query = parse(
        r#"{resource.service.name="checkout" && name="GET /cart" && status=error && duration>100ms && duration<5s && span.http.status_code=500}"#,
    )
    .unwrap();
    assert!(query.stages.is_empty());
    let text = query.to_string();
    assert_eq!(parse(&text).unwrap(), query, "{text}");
    for text in [
        "{}",
        "{ .http.route = \"/api\" || (kind = server && traceDuration >= 1.5s) }",
        r#"{span.db.name="X" || span.db.system="X" || span.peer.service="X"}"#,
        "{ resource.service.name = \"a\" } >> { status = error }",
        "({ name = \"a\" } > { name = \"b\" }) ~ { kind = client }",
        "{ status = error } && { rootServiceName =~ \"gate.*\" } | count() > 2",
        "{} | avg(duration) > 20ms | select(span.http.method, resource.host.name)",
        "{ span.retry = true && span.size >= -3.5 && statusMessage != nil }",
        // Traces Drilldown's metrics queries.
        "{ resource.service.name = \"a\" } | rate() by(resource.service.name)",
        "{ status = error } | rate() by(span.http.route, kind)",
        "{} | quantile_over_time(duration, 0.5, 0.9, 0.99) by(resource.service.name)",
        "{} | histogram_over_time(duration) with(sample=true)",
        "{ kind = server } | count_over_time()",
        "{} | avg_over_time(span.size) by(name) with(exemplars=true, sample=false)",
        "{} | min_over_time(duration)",
    ] {
        let query = parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
        assert_eq!(parse(&query.to_string()).unwrap(), query, "{text}");
    }
}

#[test]
fn errors_say_where_and_what_in_tempos_words() {
    for (text, column, fragment) in [
        ("{ .a = }", 8, "expected a value"),
        ("{ foo = 1 }", 3, "unknown intrinsic `foo`"),
        // A quoted name (found by fuzzing: the column was taken from its unquoted length).
        ("{ \"Ö\" = 1 }", 3, "unknown intrinsic `Ö`"),
        ("{ .a = 1 ", 10, "expected `}`"),
        ("{ .a == 1 }", 7, "expected a value"),
        ("{ .a = \"x }", 8, "unterminated string"),
        (
            "{ .a = 1 } | compare({ .b = 2 })",
            14,
            "`compare` is not supported",
        ),
        (
            "{ .a = 1 } | rate() | topk(5)",
            22,
            "nothing may follow a metrics function",
        ),
        (
            "{} | quantile_over_time(duration, 1.5)",
            35,
            "a quantile is a number from 0 to 1",
        ),
        (
            "{} | quantile_over_time(duration)",
            33,
            "at least one quantile",
        ),
        ("{ .a = 1 } &>> { .b = 2 }", 12, "not supported"),
        (
            "{ event.name = \"x\" }",
            3,
            "scope `event` is not supported",
        ),
        ("{ .a = bar }", 8, "`bar` is not a value"),
        ("{ .a = 1 } }", 12, "unexpected input"),
        ("", 1, "expected a spanset"),
    ] {
        let error = parse(text).expect_err(text);
        assert_eq!(error.column, column, "{text}: {error}");
        assert!(error.message.contains(fragment), "{text}: {error}");
        assert!(error
            .to_string()
            .starts_with(&format!("parse error at line 1, col {column}: ")));
    }
}

#[test]
fn durations_read_as_go_writes_them() {
    assert_eq!(parse_duration("100ms"), Some(100_000_000));
    assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
    assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
    assert_eq!(parse_duration("250us"), Some(250_000));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("ms"), None);
}

fn span(
    id: u8,
    parent: Option<u8>,
    service: &str,
    name: &str,
    status: i32,
    kind: i32,
    duration_ms: u64,
) -> SpanView {
    SpanView {
        span_id: [id; 8],
        parent_span_id: parent.map(|parent| [parent; 8]),
        name: name.into(),
        kind,
        status_code: status,
        status_message: String::new(),
        start_time_unix_nano: u64::from(id) * 1_000_000,
        duration_nanos: duration_ms * 1_000_000,
        attributes: vec![(
            "http.status_code".into(),
            Value::Int(if status == 2 { 500 } else { 200 }),
        )],
        resource: Arc::new(vec![("service.name".into(), Value::String(service.into()))]),
        service: Arc::from(service),
    }
}

/// gateway → orders → (payments error, inventory)
fn checkout() -> TraceView {
    TraceView {
        spans: vec![
            span(1, None, "gateway", "POST /checkout", 2, 2, 900),
            span(2, Some(1), "orders", "place", 0, 2, 800),
            span(3, Some(2), "payments", "charge", 2, 3, 300),
            span(4, Some(2), "inventory", "reserve", 0, 3, 50),
        ],
    }
}

fn matched(text: &str, trace: &TraceView) -> Option<Vec<u8>> {
    let query = parse(text).unwrap();
    Evaluator::default().eval(&query, trace).map(|found| {
        found
            .spans
            .iter()
            .map(|index| trace.spans[*index].span_id[0])
            .collect()
    })
}

#[test]
fn conditions_hold_per_span_and_spansets_combine() {
    let trace = checkout();
    assert_eq!(matched("{ status = error }", &trace), Some(vec![1, 3]));
    assert_eq!(
        matched(
            "{ resource.service.name = \"payments\" && status = error }",
            &trace
        ),
        Some(vec![3])
    );
    // One span must meet both: no span is payments and 50 ms.
    assert_eq!(
        matched(
            "{ resource.service.name = \"payments\" && duration < 100ms }",
            &trace
        ),
        None
    );
    assert_eq!(
        matched(
            "{ .service.name = \"payments\" } && { .service.name = \"inventory\" }",
            &trace
        ),
        Some(vec![3, 4])
    );
    assert_eq!(
        matched("{ name = \"place\" } > { status = error }", &trace),
        Some(vec![3])
    );
    assert_eq!(
        matched(
            "{ resource.service.name = \"gateway\" } >> { kind = client }",
            &trace
        ),
        Some(vec![3, 4])
    );
    assert_eq!(
        matched("{ name = \"reserve\" } ~ { }", &trace),
        Some(vec![3])
    );
    assert_eq!(matched("{ rootServiceName = \"gateway\" && traceDuration > 800ms && span.http.status_code = 500 }", &trace), Some(vec![1, 3]));
    assert_eq!(matched("{ name =~ \"ch.*\" }", &trace), Some(vec![3]));
    assert_eq!(matched("{ name =~ \"ch\" }", &trace), None, "anchored");
    assert_eq!(matched("{ span.missing != nil }", &trace), None);
    assert_eq!(
        matched("{ span.missing = nil && kind = server }", &trace),
        Some(vec![1, 2])
    );
    assert_eq!(matched("{ } | count() > 3", &trace), Some(vec![1, 2, 3, 4]));
    assert_eq!(matched("{ } | count() > 4", &trace), None);
    assert_eq!(
        matched("{ kind = client } | avg(duration) > 150ms", &trace),
        Some(vec![3, 4])
    );
    assert_eq!(
        matched("{ kind = client } | max(duration) < 100ms", &trace),
        None
    );
}

/// A trace of up to 6 spans from bytes: parents point only backwards.
fn generated_trace(seeds: &[(u8, u8, u8, u8)]) -> TraceView {
    let services = ["a", "b", "c"];
    let names = ["x", "y"];
    TraceView {
        spans: seeds
            .iter()
            .enumerate()
            .map(|(index, (parent, service, status, duration))| {
                let id = index as u8 + 1;
                let parent = (index > 0 && parent % 4 != 0).then(|| parent % index as u8 + 1);
                span(
                    id,
                    parent,
                    services[*service as usize % 3],
                    names[*service as usize / 3 % 2],
                    i32::from(*status % 3),
                    i32::from(*status % 4) + 1,
                    u64::from(*duration),
                )
            })
            .collect(),
    }
}

/// A condition of the brute-force check: its TraceQL and its meaning.
#[derive(Debug, Clone)]
enum Condition {
    Service(usize),
    Status(i32),
    SlowerThanMs(u64),
}

impl Condition {
    fn text(&self) -> String {
        match self {
            Condition::Service(index) => {
                format!("resource.service.name = \"{}\"", ["a", "b", "c"][*index])
            }
            Condition::Status(code) => {
                format!("status = {}", ["unset", "ok", "error"][*code as usize])
            }
            Condition::SlowerThanMs(ms) => format!("duration > {ms}ms"),
        }
    }

    fn holds(&self, span: &SpanView) -> bool {
        match self {
            Condition::Service(index) => &*span.service == ["a", "b", "c"][*index],
            Condition::Status(code) => span.status_code == *code,
            Condition::SlowerThanMs(ms) => span.duration_nanos > ms * 1_000_000,
        }
    }
}

fn condition_strategy() -> impl Strategy<Value = Condition> {
    prop_oneof![
        (0..3usize).prop_map(Condition::Service),
        (0..3i32).prop_map(Condition::Status),
        (0..256u64).prop_map(Condition::SlowerThanMs),
    ]
}

proptest! {
    #[test]
    fn a_printed_query_reparses_to_the_same_tree(
        names in proptest::collection::vec("[a-z][a-z0-9_.]{0,8}", 1..4),
        values in proptest::collection::vec(any::<i32>(), 1..4),
        text in "\\PC{0,12}",
        structural in 0..5usize,
    ) {
        let conditions: Vec<String> = names
            .iter()
            .zip(&values)
            .map(|(name, value)| format!("span.{name} >= {value}"))
            .collect();
        let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
        let op = ["&&", "||", ">>", ">", "~"][structural];
        let query = format!(
            "{{ {} || .t =~ \"{escaped}\" }} {op} {{ resource.\"{escaped}\" != \"{escaped}\" }} | count() >= 1",
            conditions.join(" && ")
        );
        let parsed = parse(&query).unwrap();
        prop_assert_eq!(parse(&parsed.to_string()).unwrap(), parsed);
    }

    #[test]
    fn the_evaluator_agrees_with_brute_force(
        seeds in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 1..7),
        left_condition in condition_strategy(),
        right_condition in condition_strategy(),
        combine in 0..4usize,
    ) {
        let trace = generated_trace(&seeds);
        let spans = &trace.spans;
        let (left_text, right_text) = (left_condition.text(), right_condition.text());
        let left = |span: &SpanView| left_condition.holds(span);
        let right = |span: &SpanView| right_condition.holds(span);
        let parent_index = |index: usize| {
            spans[index].parent_span_id.and_then(|parent| spans.iter().position(|span| span.span_id == parent))
        };
        let (text, expected): (String, Vec<usize>) = match combine {
            0 => (
                format!("{{ {left_text} && {right_text} }}"),
                (0..spans.len()).filter(|i| left(&spans[*i]) && right(&spans[*i])).collect(),
            ),
            1 => (
                format!("{{ {left_text} || {right_text} }}"),
                (0..spans.len()).filter(|i| left(&spans[*i]) || right(&spans[*i])).collect(),
            ),
            2 => (
                format!("{{ {left_text} }} > {{ {right_text} }}"),
                (0..spans.len())
                    .filter(|i| right(&spans[*i]) && parent_index(*i).is_some_and(|p| left(&spans[p])))
                    .collect(),
            ),
            _ => (
                format!("{{ {left_text} }} >> {{ {right_text} }}"),
                (0..spans.len())
                    .filter(|i| {
                        if !right(&spans[*i]) {
                            return false;
                        }
                        let mut current = parent_index(*i);
                        while let Some(ancestor) = current {
                            if left(&spans[ancestor]) {
                                return true;
                            }
                            current = parent_index(ancestor);
                        }
                        false
                    })
                    .collect(),
            ),
        };
        let query = parse(&text).unwrap();
        let found = Evaluator::default().eval(&query, &trace).map(|found| found.spans);
        let expected = (!expected.is_empty()).then_some(expected);
        prop_assert_eq!(found, expected, "{}", text);
    }
}
