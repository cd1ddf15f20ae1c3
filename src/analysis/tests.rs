use super::*;

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000_000_000;

fn span(
    id: &str,
    parent: Option<&str>,
    service: &str,
    name: &str,
    start_ms: u64,
    duration_ms: u64,
) -> SpanInput {
    SpanInput {
        span_id: id.into(),
        parent_span_id: parent.map(str::to_owned),
        service: service.into(),
        name: name.into(),
        kind: 1,
        status_code: 0,
        status_message: String::new(),
        start_unix_nano: T0 + start_ms * MS,
        end_unix_nano: T0 + (start_ms + duration_ms) * MS,
        attributes: serde_json::Map::new(),
        events: Vec::new(),
    }
}

fn failed(mut span: SpanInput, message: &str) -> SpanInput {
    span.status_code = 2;
    span.status_message = message.into();
    span
}

/// The trace of "Trace Visualization" in the seed document: a checkout of 523 ms.
fn checkout() -> Vec<SpanInput> {
    vec![
        failed(
            span("root", None, "gateway", "POST /checkout", 0, 523),
            "internal error",
        ),
        span("gw", Some("root"), "gateway", "Gateway", 0, 25),
        span("auth", Some("gw"), "gateway", "Auth middleware", 5, 10),
        failed(
            span("orders", Some("root"), "orders", "Order Service", 25, 450),
            "save failed",
        ),
        span(
            "validate",
            Some("orders"),
            "orders",
            "Validate order",
            25,
            15,
        ),
        span(
            "inventory",
            Some("orders"),
            "orders",
            "Check inventory",
            40,
            120,
        ),
        span("dbq", Some("inventory"), "orders", "DB query", 42, 115),
        span(
            "pricing",
            Some("orders"),
            "orders",
            "Calculate pricing",
            160,
            45,
        ),
        failed(
            span("save", Some("orders"), "orders", "Save order", 205, 270),
            "db write failed",
        ),
        failed(
            span("dbw", Some("save"), "orders", "DB write", 207, 265),
            "lock wait timeout exceeded",
        ),
        span(
            "notify",
            Some("root"),
            "notification",
            "Notification Service",
            475,
            48,
        ),
        span(
            "email",
            Some("notify"),
            "notification",
            "Send email",
            476,
            45,
        ),
    ]
}

fn no_rank(_: &SpanInput) -> Option<Normal> {
    None
}

fn find<'a>(trace: &'a AnalyzedTrace, id: &str) -> &'a AnalyzedSpan {
    trace.spans.iter().find(|span| span.span_id == id).unwrap()
}

#[test]
fn seed_checkout_trace_slowest_span_root_cause_and_shares() {
    let spans = checkout();
    let rank = |span: &SpanInput| {
        (span.name == "DB query").then_some(Normal {
            count: 40,
            median_ms: 10.0,
            mad_ms: 1.0,
        })
    };
    let trace = analyze("abc123", &spans, &rank);
    assert_eq!(trace.duration_ms, 523.0);
    assert_eq!(trace.span_count, 12);
    assert_eq!(trace.root_service, "gateway");
    assert_eq!(trace.services, vec!["gateway", "notification", "orders"]);
    assert_eq!(trace.error_count, 4);

    // Self times: what each span did outside its children.
    for (id, expected) in [
        ("root", 0.0),
        ("gw", 15.0),
        ("auth", 10.0),
        ("orders", 0.0),
        ("validate", 15.0),
        ("inventory", 5.0),
        ("dbq", 115.0),
        ("pricing", 45.0),
        ("save", 5.0),
        ("dbw", 265.0),
        ("notify", 3.0),
        ("email", 45.0),
    ] {
        assert_eq!(find(&trace, id).self_time_ms, expected, "{id}");
    }
    let slowest = trace.analysis.slowest_span.as_ref().unwrap();
    assert_eq!(slowest.span_id, "dbw");
    assert_eq!(slowest.self_time_ms, 265.0);
    assert_eq!(slowest.percent_of_trace, 50.7);

    let root_cause = trace.analysis.root_cause.as_ref().unwrap();
    assert_eq!(root_cause.span_id, "dbw");
    assert_eq!(root_cause.message, "lock wait timeout exceeded");
    assert_eq!(find(&trace, "dbw").error_role, Some("root_cause"));
    for id in ["save", "orders", "root"] {
        assert_eq!(find(&trace, id).error_role, Some("propagated"), "{id}");
    }
    assert_eq!(trace.analysis.errors_per_service["orders"], 3);

    // Everything runs back to back, so every span with time of its own is on the critical
    // path, in order; the root and Order Service are wholly covered by their children
    // (zero-length sections are not part of the path).
    assert_eq!(
        trace.analysis.critical_path,
        vec![
            "gw",
            "auth",
            "validate",
            "inventory",
            "dbq",
            "pricing",
            "save",
            "dbw",
            "notify",
            "email"
        ]
    );
    assert!(find(&trace, "dbw").critical);

    let kinds: Vec<&str> = trace
        .analysis
        .findings
        .iter()
        .map(|finding| finding.kind)
        .collect();
    assert!(kinds.contains(&"error_origin"));
    assert!(kinds.contains(&"timeout"));
    let slow = trace
        .analysis
        .findings
        .iter()
        .find(|finding| finding.kind == "slow_operation")
        .unwrap();
    assert_eq!(slow.span_ids, vec!["dbq"]);
    assert!(!kinds.contains(&"clock_skew"));
    assert!(!kinds.contains(&"missing_parent"));

    // Depth-first drawing order with depths.
    let order: Vec<(&str, usize)> = trace
        .spans
        .iter()
        .map(|span| (span.span_id.as_str(), span.depth))
        .collect();
    assert_eq!(
        order[..4],
        [("root", 0), ("gw", 1), ("auth", 2), ("orders", 1)]
    );
    assert_eq!(trace.analysis.downstream_ms["orders"], 450.0);
}

#[test]
fn overlapping_children_count_once_in_self_time_and_only_the_last_finisher_is_critical() {
    let spans = vec![
        span("p", None, "api", "handler", 0, 100),
        span("a", Some("p"), "api", "a", 10, 50),
        span("b", Some("p"), "api", "b", 30, 40),
        span("c", Some("p"), "api", "c", 80, 40), // outlives its parent: clipped
    ];
    let trace = analyze("t", &spans, &no_rank);
    assert_eq!(find(&trace, "p").self_time_ms, 20.0); // 100 - [10,70] - [80,100]
                                                      // c finishes last; before it started, b finished last; a overlaps b and is off the path.
    assert_eq!(trace.analysis.critical_path, vec!["p", "b", "c"]);
    assert!(!find(&trace, "a").critical);
}

#[test]
fn missing_root_orphans_and_clock_skew_are_findings() {
    let mut child = span("c", Some("s"), "db", "query", 0, 10);
    child.start_unix_nano -= 5 * MS;
    let spans = vec![span("s", Some("gone"), "api", "server", 0, 50), child];
    let trace = analyze("t", &spans, &no_rank);
    assert_eq!(trace.root_service, "<root span not yet received>");
    let kinds: Vec<&str> = trace
        .analysis
        .findings
        .iter()
        .map(|finding| finding.kind)
        .collect();
    assert!(kinds.contains(&"root_not_received"));
    assert!(kinds.contains(&"missing_parent"));
    assert!(kinds.contains(&"clock_skew"));
}

#[test]
fn retries_n_plus_one_and_sequential_calls() {
    let mut spans = vec![span("p", None, "orders", "GET /orders", 0, 1000)];
    // Three attempts at the same call, the first two failing.
    for (index, start) in [10u64, 60, 110].iter().enumerate() {
        let attempt = span(
            &format!("r{index}"),
            Some("p"),
            "orders",
            "charge card",
            *start,
            40,
        );
        spans.push(if index < 2 {
            failed(attempt, "503")
        } else {
            attempt
        });
    }
    // Six identical queries one after another.
    for index in 0..6u64 {
        let mut query = span(
            &format!("q{index}"),
            Some("p"),
            "orders",
            "SELECT item",
            200 + index * 20,
            15,
        );
        query.attributes.insert(
            "db.statement".into(),
            "SELECT * FROM items WHERE id = ?".into(),
        );
        spans.push(query);
    }
    // Client calls to two different services, back to back.
    let mut pricing = span("c1", Some("p"), "orders", "call pricing", 400, 100);
    pricing.kind = 3;
    pricing
        .attributes
        .insert("peer.service".into(), "pricing".into());
    let mut stock = span("c2", Some("p"), "orders", "call stock", 510, 80);
    stock.kind = 3;
    stock
        .attributes
        .insert("peer.service".into(), "stock".into());
    spans.extend([pricing, stock]);
    let trace = analyze("t", &spans, &no_rank);
    let by_kind = |kind: &str| {
        trace
            .analysis
            .findings
            .iter()
            .find(|finding| finding.kind == kind)
            .cloned()
    };
    assert_eq!(by_kind("retry").unwrap().span_ids, vec!["r0", "r1", "r2"]);
    assert_eq!(by_kind("n_plus_one").unwrap().span_ids.len(), 6);
    let sequential = by_kind("sequential_calls").unwrap();
    assert_eq!(sequential.span_ids, vec!["c1", "c2"]);
    assert!(
        sequential.message.contains("80.0 ms"),
        "{}",
        sequential.message
    );
    // The retried call recovered: handled errors, not the trace's failure.
    assert!(by_kind("handled_error").is_some());
}

#[test]
fn a_failed_call_that_lasted_a_round_deadline_is_a_timeout() {
    let spans = vec![
        span("p", None, "api", "handler", 0, 3100),
        failed(
            span("c", Some("p"), "api", "call payments", 10, 3000),
            "upstream error",
        ),
        failed(
            span("d", Some("p"), "api", "call stock", 3020, 70),
            "upstream error",
        ),
    ];
    let trace = analyze("t", &spans, &no_rank);
    let timeouts: Vec<&Finding> = trace
        .analysis
        .findings
        .iter()
        .filter(|finding| finding.kind == "timeout")
        .collect();
    assert_eq!(timeouts.len(), 1);
    assert_eq!(timeouts[0].span_ids, vec!["c"]);
}

fn kind(mut span: SpanInput, kind: i32) -> SpanInput {
    span.kind = kind;
    span
}

fn kinds_of(trace: &AnalyzedTrace) -> Vec<&'static str> {
    trace
        .analysis
        .findings
        .iter()
        .map(|finding| finding.kind)
        .collect()
}

#[test]
fn slow_means_far_from_the_usual_with_enough_history() {
    let usual = Normal {
        count: 500,
        median_ms: 10.0,
        mad_ms: 1.0,
    };
    // An incident's 400 ms query against a median the incident did not move.
    assert_eq!(usual.is_slow(400.0), Some(true));
    assert_eq!(usual.is_slow(12.0), Some(false));
    // Always 40 ms: 40 ms is normal, and so is a hair above it.
    let constant = Normal {
        count: 500,
        median_ms: 40.0,
        mad_ms: 0.0,
    };
    assert_eq!(constant.is_slow(40.0), Some(false));
    assert_eq!(constant.is_slow(41.0), Some(false));
    assert_eq!(constant.is_slow(90.0), Some(true));
    // Short history: no verdict, and no finding.
    let short = Normal {
        count: 19,
        median_ms: 10.0,
        mad_ms: 1.0,
    };
    assert_eq!(short.is_slow(400.0), None);
    let spans = vec![span("q", None, "orders", "DB query", 0, 400)];
    let trace = analyze("t", &spans, &|_: &SpanInput| Some(short));
    assert!(!kinds_of(&trace).contains(&"slow_operation"));
    let trace = analyze("t", &spans, &|_: &SpanInput| Some(usual));
    assert!(kinds_of(&trace).contains(&"slow_operation"));
}

#[test]
fn a_handled_error_that_came_first_is_not_the_root_cause_of_the_real_one() {
    let spans = vec![
        failed(
            span("root", None, "gateway", "POST /checkout", 0, 300),
            "payment failed",
        ),
        span("catalog", Some("root"), "catalog", "GET /items", 5, 50),
        failed(
            span("cache", Some("catalog"), "catalog", "cache GET", 6, 2),
            "cache miss",
        ),
        failed(
            span("pay", Some("root"), "payments", "Charge", 100, 150),
            "card declined",
        ),
    ];
    let trace = analyze("t", &spans, &no_rank);
    let cause = trace.analysis.root_cause.as_ref().unwrap();
    assert_eq!(
        (cause.service.as_str(), cause.message.as_str()),
        ("payments", "card declined")
    );
    let handled = trace
        .analysis
        .findings
        .iter()
        .find(|finding| finding.kind == "handled_error")
        .unwrap();
    assert_eq!(handled.span_ids, vec!["cache"]);
    assert_eq!(
        handled.message,
        "handled: catalog / cache GET failed (cache miss), tolerated by catalog / GET /items"
    );
    assert_eq!(find(&trace, "root").error_role, Some("propagated"));
    assert_eq!(find(&trace, "cache").error_role, Some("error"));
}

#[test]
fn a_tolerated_failure_is_named_in_a_successful_trace() {
    let spans = vec![
        span("search", None, "search", "GET /search", 0, 80),
        span("s1", Some("search"), "search", "shard 1", 2, 40),
        failed(
            span("s2", Some("search"), "search", "shard 2", 2, 30),
            "shard 2 unavailable",
        ),
    ];
    let trace = analyze("t", &spans, &no_rank);
    let messages: Vec<&str> = trace
        .analysis
        .findings
        .iter()
        .map(|finding| finding.message.as_str())
        .collect();
    assert!(
        messages.contains(&"handled: search / shard 2 failed (shard 2 unavailable), tolerated by search / GET /search"),
        "{messages:?}"
    );
}

#[test]
fn consumers_fail_on_their_own_and_run_off_the_critical_path() {
    let spans = vec![
        span("orders", None, "orders", "POST /orders", 0, 40),
        kind(
            span(
                "publish",
                Some("orders"),
                "orders",
                "order.placed publish",
                30,
                2,
            ),
            4,
        ),
        failed(
            kind(
                span(
                    "consume",
                    Some("publish"),
                    "notifier",
                    "order.placed process",
                    200,
                    500,
                ),
                5,
            ),
            "SMTP timeout",
        ),
    ];
    let usual = Normal {
        count: 100,
        median_ms: 20.0,
        mad_ms: 2.0,
    };
    let trace = analyze("t", &spans, &|span: &SpanInput| {
        (span.kind == 5).then_some(usual)
    });
    let background = trace
        .analysis
        .findings
        .iter()
        .find(|finding| finding.kind == "background_failure")
        .expect("the consumer's failure is its own");
    assert!(background
        .message
        .contains("after orders / order.placed publish had answered"));
    assert!(!kinds_of(&trace).contains(&"handled_error"));
    assert!(!kinds_of(&trace).contains(&"clock_skew"));
    let slow = trace
        .analysis
        .findings
        .iter()
        .find(|finding| finding.kind == "slow_operation")
        .unwrap();
    assert!(
        slow.message
            .ends_with("background work, not on the request's path"),
        "{}",
        slow.message
    );
    assert!(!trace.analysis.critical_path.contains(&"consume".to_owned()));
    assert_eq!(trace.spans[0].error_role, None, "the request did not fail");
}

#[test]
fn a_client_waiting_beyond_its_server_is_a_finding_with_its_cost() {
    let spans = vec![
        kind(span("root", None, "gateway", "POST", 0, 420), 2),
        kind(
            span("call", Some("root"), "gateway", "POST /charge", 5, 400),
            3,
        ),
        kind(
            span("server", Some("call"), "payments", "Charge", 300, 100),
            2,
        ),
        kind(
            span("fast", Some("root"), "gateway", "GET /stock", 406, 10),
            3,
        ),
        kind(span("stock", Some("fast"), "inventory", "Stock", 407, 8), 2),
    ];
    let mut spans = spans;
    spans[0]
        .attributes
        .insert("http.route".into(), serde_json::json!("/checkout"));
    let trace = analyze("t", &spans, &no_rank);
    let waits: Vec<&Finding> = trace
        .analysis
        .findings
        .iter()
        .filter(|finding| finding.kind == "client_wait")
        .collect();
    assert_eq!(waits.len(), 1, "a 2 ms gap is no finding");
    assert_eq!(
        waits[0].message,
        "gateway / POST /charge waited 300.0 ms beyond payments / Charge's 100.0 ms (network, queueing or a connection pool)"
    );
    // An HTTP server span named by its method is shown with its route.
    assert_eq!(find(&trace, "root").name, "POST /checkout");
    assert_eq!(trace.root_name, "POST /checkout");
}
