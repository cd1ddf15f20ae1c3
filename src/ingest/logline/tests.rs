use super::*;
use crate::model::Level;
use proptest::prelude::*;

fn parse(line: &str) -> ParsedLine {
    parse_line(line, Format::Auto, &FieldNames::default())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn json_variants_of_every_ecosystem() {
    let cases = [
        // OpenTelemetry non-OTLP JSON
        format!(r#"{{"timestamp":"2024-05-01T10:00:00Z","severity_text":"WARN","body":"slow","trace_id":"{TRACE}","span_id":"00f067aa0ba902b7","service.name":"orders"}}"#),
        // ECS, nested
        format!(r#"{{"@timestamp":"2024-05-01T10:00:00.000Z","log":{{"level":"warning"}},"message":"slow","trace":{{"id":"{TRACE}"}},"span":{{"id":"00f067aa0ba902b7"}},"service":{{"name":"orders"}}}}"#),
        // Datadog, decimal ids
        r#"{"date":"2024-05-01T10:00:00Z","status":"warn","message":"slow","dd":{"trace_id":"11803532876627986230","span_id":"67667974448284343","service":"orders"}}"#.to_string(),
        // Python OTel logging
        format!(r#"{{"asctime":"2024-05-01 10:00:00,000","levelname":"WARNING","message":"slow","otelTraceID":"{TRACE}","otelSpanID":"00f067aa0ba902b7","otelServiceName":"orders"}}"#),
        // pino
        format!(r#"{{"time":1714557600000,"level":40,"msg":"slow","name":"orders","trace_id":"{TRACE}"}}"#),
        // zap
        format!(r#"{{"ts":1714557600.0,"level":"warn","msg":"slow","logger":"orders","traceId":"{TRACE}"}}"#),
        // tracing-subscriber
        format!(r#"{{"timestamp":"2024-05-01T10:00:00Z","level":"WARN","fields":{{"message":"slow"}},"target":"orders","trace_id":"{TRACE}"}}"#),
        // structlog
        format!(r#"{{"timestamp":"2024-05-01T10:00:00Z","level":"warning","event":"slow","service":"orders","trace_id":"{TRACE}"}}"#),
    ];
    for line in cases {
        let parsed = parse(&line);
        assert_eq!(parsed.level, Some(Level::Warn), "{line}");
        assert_eq!(parsed.message, "slow", "{line}");
        assert_eq!(parsed.service.as_deref(), Some("orders"), "{line}");
        assert_eq!(
            parsed.time_unix_nano,
            Some(1_714_557_600_000_000_000),
            "{line}"
        );
        let trace_id = parsed.trace_id.expect("trace id");
        assert_eq!(trace_id.low_u64(), 0xa3ce929d0e0e4736, "{line}");
        assert!(parsed.parse_error.is_none());
    }
}

#[test]
fn datadog_decimal_ids_map_to_the_low_64_bits() {
    let (id, low_only) = parse_log_trace_id("dd.trace_id", "11803532876627986230").unwrap();
    assert!(low_only);
    assert_eq!(id.to_hex(), "0000000000000000a3ce929d0e0e4736");
    let (id, _) = parse_log_trace_id("dd.trace_id", "1234567890123456789").unwrap();
    assert_eq!(&id.to_hex()[16..], "112210f47de98115");
    let (id, low_only) = parse_log_trace_id("trace_id", TRACE).unwrap();
    assert!(!low_only);
    assert_eq!(id.to_hex(), TRACE);
}

#[test]
fn traceparent_in_a_field_or_in_text() {
    let header = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let parsed = parse(&format!(r#"{{"msg":"x","traceparent":"{header}"}}"#));
    assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
    assert_eq!(parsed.span_id.unwrap().to_hex(), "00f067aa0ba902b7");
    let parsed = parse(&format!("request done traceparent={header} in 3ms"));
    assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
    assert!(parse_traceparent(&format!("ff-{TRACE}-00f067aa0ba902b7-01")).is_none());
    assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    assert!(
        parse_traceparent(&format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase())).is_none()
    );
}

#[test]
fn logfmt_lines() {
    let parsed = parse(&format!(
        r#"ts=2024-05-01T10:00:00Z level=error msg="payment failed: \"card declined\"" trace_id={TRACE} span_id=00f067aa0ba902b7 service=billing amount=12.5"#
    ));
    assert_eq!(parsed.level, Some(Level::Error));
    assert_eq!(parsed.message, "payment failed: \"card declined\"");
    assert_eq!(parsed.service.as_deref(), Some("billing"));
    assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
    assert_eq!(parsed.attributes["amount"], Value::String("12.5".into()));
}

#[test]
fn plain_text_with_ids_and_docker_and_cri_wrappers() {
    let inner = "16:51:24.967 INFO  UserController TraceID: 2f18e2a8b1c94c6e9f1b4b2a7c5de7cd SpanID: 547f1c2d3e4a1a25 [getUser]";
    let docker = serde_json::json!({"log": format!("{inner}\n"), "stream": "stdout", "time": "2023-01-29T08:51:24.968139185Z"}).to_string();
    let parsed = parse(&docker);
    assert_eq!(parsed.stream.as_deref(), Some("stdout"));
    assert_eq!(parsed.message, inner);
    assert_eq!(parsed.level, Some(Level::Info));
    assert_eq!(
        parsed.trace_id.unwrap().to_hex(),
        "2f18e2a8b1c94c6e9f1b4b2a7c5de7cd"
    );
    assert_eq!(parsed.span_id.unwrap().to_hex(), "547f1c2d3e4a1a25");
    assert_eq!(parsed.time_unix_nano, Some(1_674_982_284_968_139_185));

    let cri = format!("2023-01-29T08:51:24.968139185Z stderr F {{\"level\":\"error\",\"msg\":\"boom\",\"trace_id\":\"{TRACE}\"}}");
    let parsed = parse(&cri);
    assert_eq!(parsed.stream.as_deref(), Some("stderr"));
    assert_eq!(parsed.level, Some(Level::Error));
    assert_eq!(parsed.message, "boom");
    assert_eq!(parsed.time_unix_nano, Some(1_674_982_284_968_139_185));
    let partial = split_cri("2023-01-29T08:51:24.968139185Z stdout P first half").unwrap();
    assert!(partial.partial);
    assert_eq!(partial.content, "first half");
}

#[test]
fn broken_lines_are_kept_as_flagged_text() {
    let parsed = parse_line(
        "{\"msg\": \"cut in ha",
        Format::Auto,
        &FieldNames::default(),
    );
    assert_eq!(parsed.message, "{\"msg\": \"cut in ha");
    assert!(parsed.parse_error.is_some());
    let parsed = parse_line("just words", Format::Json, &FieldNames::default());
    assert!(parsed.parse_error.is_some());
    assert_eq!(parsed.message, "just words");
}

#[test]
fn levels_from_every_spelling() {
    for (text, level) in [
        ("WARNING", Level::Warn),
        ("err", Level::Error),
        ("critical", Level::Fatal),
        ("30", Level::Info),
        ("50", Level::Error),
        ("60", Level::Fatal),
        ("10", Level::Trace),
        ("Information", Level::Info),
        ("dbg", Level::Debug),
        ("9", Level::Info),
        ("17", Level::Error),
        ("21", Level::Fatal),
        ("emerg", Level::Fatal),
    ] {
        assert_eq!(Level::parse(text), Some(level), "{text}");
    }
    assert_eq!(Level::parse("chatty"), None);
    let parsed = parse(r#"{"severityNumber":10,"body":"x"}"#);
    assert_eq!(parsed.level, Some(Level::Info), "OTel severity 10 is INFO2");
    let parsed = parse(r#"{"status":200,"level":"info","msg":"x"}"#);
    assert_eq!(parsed.level, Some(Level::Info));
    assert_eq!(parsed.attributes["status"], Value::from(200));
}

#[test]
fn configured_field_names_come_first() {
    let fields = FieldNames {
        message: vec!["text_payload".into()],
        trace_id: vec!["rid".into()],
        ..FieldNames::default()
    };
    let parsed = parse_line(
        &format!(r#"{{"text_payload":"hi","msg":"other","rid":"{TRACE}"}}"#),
        Format::Json,
        &fields,
    );
    assert_eq!(parsed.message, "hi");
    assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
    assert_eq!(parsed.attributes["msg"], Value::from("other"));
}

proptest! {
    #[test]
    fn any_line_parses_without_panicking_and_keeps_its_text(line in "\\PC{0,200}") {
        for format in [Format::Auto, Format::Json, Format::Logfmt, Format::Text] {
            let parsed = parse_line(&line, format, &FieldNames::default());
            if format == Format::Text {
                prop_assert_eq!(&parsed.message, &line);
            }
        }
    }

    #[test]
    fn logfmt_round_trips_quoted_values(key in "[a-z]{1,8}", value in "[ -~]{0,40}") {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        let line = format!("{key}=\"{escaped}\" level=info");
        let fields = logfmt_fields(&line).expect("valid logfmt");
        prop_assert_eq!(&fields[&key], &Value::String(value.clone()));
    }

    #[test]
    fn hex_trace_ids_in_any_case_normalise(bytes in proptest::array::uniform16(any::<u8>())) {
        prop_assume!(bytes.iter().any(|byte| *byte != 0));
        let hex = crate::model::to_hex(&bytes);
        let json = format!(r#"{{"msg":"m","traceId":"{}"}}"#, hex.to_uppercase());
        let parsed = parse_line(&json, Format::Json, &FieldNames::default());
        prop_assert_eq!(parsed.trace_id.map(|id| id.to_hex()), Some(hex));
    }
}

/// One real-world line shape and what a person reading it would say it holds.
struct Shape {
    line: &'static str,
    format: LineFormat,
    message: &'static str,
    level: Option<Level>,
    trace_id: Option<&'static str>,
    span_id: Option<&'static str>,
    service: Option<&'static str>,
}

const SPAN: &str = "00f067aa0ba902b7";

fn corpus() -> Vec<Shape> {
    use LineFormat::*;
    let shape = |line, format, message, level, trace_id, span_id, service| Shape {
        line,
        format,
        message,
        level,
        trace_id,
        span_id,
        service,
    };
    vec![
        // Spring Boot (train-ticket): key=value fragments inside the message.
        shape(
            "16:48:22.860 INFO  t.s.TravelServiceImpl#469 TraceID: 69b89441c8d2a7f3e5b1d4c6a8e0ba19 SpanID: c5f856fd5edc297a [getRestTicketNumber][Get Rest tickets num][num is: Response(status=1, msg=Get Left Ticket of Internal Success, data=1073741823)]",
            Text,
            "",
            Some(Level::Info),
            Some("69b89441c8d2a7f3e5b1d4c6a8e0ba19"),
            Some("c5f856fd5edc297a"),
            None,
        ),
        // Logback with an MDC appended as key=value.
        shape(
            "2024-05-01 10:00:00.123 ERROR [http-nio-8080-exec-1] c.e.OrderController - payment failed trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 amount=12.50",
            Text,
            "",
            Some(Level::Error),
            Some(TRACE),
            Some(SPAN),
            None,
        ),
        // Spring Cloud Sleuth / Micrometer Tracing: [app,traceId,spanId,exportable].
        shape(
            "2024-05-01 10:00:00.123  WARN [orders,4bf92f3577b34da6a3ce929d0e0e4736,00f067aa0ba902b7,true] 12345 --- [nio-8080-exec-1] c.e.OrderService : retrying inventory call",
            Text,
            "",
            Some(Level::Warn),
            Some(TRACE),
            Some(SPAN),
            None,
        ),
        // Sleuth with 64-bit ids: only the low half of the trace id is known.
        shape(
            "2024-05-01 10:00:00.123  INFO [orders,a3ce929d0e0e4736,00f067aa0ba902b7] 1 --- [main] c.e.App : started",
            Text,
            "",
            Some(Level::Info),
            Some("0000000000000000a3ce929d0e0e4736"),
            Some(SPAN),
            None,
        ),
        // Go zap console encoder: tab-separated, context as trailing JSON.
        shape(
            "2024-05-01T10:00:00.000Z\tINFO\tcheckout/main.go:42\tcharged card\t{\"trace_id\": \"4bf92f3577b34da6a3ce929d0e0e4736\", \"amount\": 12.5}",
            Text,
            "",
            Some(Level::Info),
            Some(TRACE),
            None,
            None,
        ),
        // Python logging, default-ish format.
        shape(
            "2024-05-01 10:00:00,123 - orders - ERROR - payment failed for order 42",
            Text,
            "",
            Some(Level::Error),
            None,
            None,
            None,
        ),
        // Python with opentelemetry-instrumentation-logging's format.
        shape(
            "2024-05-01 10:00:00,123 WARNING [app] [main.py:12] [trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 resource.service.name=orders trace_sampled=True] - slow query",
            Text,
            "",
            Some(Level::Warn),
            Some(TRACE),
            Some(SPAN),
            None,
        ),
        // nginx access log: no level.
        shape(
            "10.0.0.1 - - [01/May/2024:10:00:00 +0000] \"GET /api/orders HTTP/1.1\" 200 612 \"-\" \"curl/8.5.0\"",
            Text,
            "",
            None,
            None,
            None,
            None,
        ),
        // klog (Kubernetes components).
        shape(
            "E0501 10:00:00.123456       1 controller.go:42] \"Reconcile failed\" err=\"timeout\" pod=\"shop/orders-1\"",
            Text,
            "",
            Some(Level::Error),
            None,
            None,
            None,
        ),
        // Heroku router: logfmt as a whole; `service` is a duration there, not a name.
        shape(
            "at=error code=H12 desc=\"Request timeout\" method=GET path=\"/api/orders\" host=shop.herokuapp.com fwd=\"10.0.0.1\" dyno=web.1 connect=1ms service=30000ms status=503 bytes=0 protocol=https",
            Logfmt,
            "",
            Some(Level::Error),
            None,
            None,
            None,
        ),
        // Go kit logfmt.
        shape(
            "level=error ts=2024-05-01T10:00:00.000Z caller=payment.go:88 msg=\"charge failed\" err=\"card declined\" trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
            Logfmt,
            "charge failed",
            Some(Level::Error),
            Some(TRACE),
            None,
            None,
        ),
        // pino.
        shape(
            r#"{"level":50,"time":1714557600000,"pid":1,"hostname":"orders-1","msg":"charge failed","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","trace_flags":"01"}"#,
            Json,
            "charge failed",
            Some(Level::Error),
            Some(TRACE),
            Some(SPAN),
            None,
        ),
        // zap JSON.
        shape(
            r#"{"level":"error","ts":1714557600.123,"caller":"payment/charge.go:88","msg":"charge failed","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","error":"card declined"}"#,
            Json,
            "charge failed",
            Some(Level::Error),
            Some(TRACE),
            None,
            None,
        ),
        // structlog.
        shape(
            r#"{"event": "charge failed", "level": "error", "timestamp": "2024-05-01T10:00:00Z", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}"#,
            Json,
            "charge failed",
            Some(Level::Error),
            Some(TRACE),
            None,
            None,
        ),
        // ECS.
        shape(
            r#"{"@timestamp":"2024-05-01T10:00:00.000Z","log.level":"error","message":"charge failed","trace.id":"4bf92f3577b34da6a3ce929d0e0e4736","span.id":"00f067aa0ba902b7","service.name":"payments","ecs.version":"1.6.0"}"#,
            Json,
            "charge failed",
            Some(Level::Error),
            Some(TRACE),
            Some(SPAN),
            Some("payments"),
        ),
        // JSON naming no trace id field: the message is searched.
        shape(
            r#"{"level":"info","msg":"forwarded TraceID: 4bf92f3577b34da6a3ce929d0e0e4736 to inventory"}"#,
            Json,
            "forwarded TraceID: 4bf92f3577b34da6a3ce929d0e0e4736 to inventory",
            Some(Level::Info),
            Some(TRACE),
            None,
            None,
        ),
        // Starts with a pair, but bare words follow: text.
        shape(
            "status=500 upstream failed for trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
            Text,
            "",
            None,
            Some(TRACE),
            None,
            None,
        ),
    ]
}

#[test]
fn real_world_line_shapes_in_every_wrapper() {
    let time = "2026-01-01T12:00:00.123456789Z";
    for shape in corpus() {
        let docker = serde_json::json!({"log": format!("{}\n", shape.line), "stream": "stdout", "time": time}).to_string();
        let cri = format!("{time} stderr F {}", shape.line);
        for (wrapped, wrapper) in [
            (shape.line.to_owned(), Wrapper::None),
            (docker, Wrapper::Docker),
            (cri, Wrapper::Cri),
        ] {
            let parsed = parse(&wrapped);
            let what = format!("{wrapper:?}: {}", shape.line);
            assert_eq!(parsed.format, shape.format, "{what}");
            assert_eq!(parsed.wrapper, wrapper, "{what}");
            let message = if shape.message.is_empty() {
                shape.line
            } else {
                shape.message
            };
            assert_eq!(parsed.message, message, "{what}");
            assert_eq!(parsed.level, shape.level, "{what}");
            assert_eq!(
                parsed.trace_id.map(|id| id.to_hex()).as_deref(),
                shape.trace_id,
                "{what}"
            );
            assert_eq!(
                parsed.span_id.map(|id| id.to_hex()).as_deref(),
                shape.span_id,
                "{what}"
            );
            assert_eq!(parsed.service.as_deref(), shape.service, "{what}");
            assert!(parsed.parse_error.is_none(), "{what}");
        }
    }
}

#[test]
fn a_source_regex_names_the_parts_of_a_line() {
    let pattern = regex::Regex::new(
        r"^(?P<time>\S+) \[(?P<thread>[^\]]+)\] (?P<level>\w+) (?P<service>\S+) (?P<message>.*)$",
    )
    .unwrap();
    let line =
        format!("2024-05-01T10:00:00Z [worker-3] WARN billing retry 2 of 3 trace_id={TRACE}");
    let parsed = parse_line_as(&line, Format::Regex, Some(&pattern), &FieldNames::default());
    assert_eq!(parsed.format, LineFormat::Regex);
    assert_eq!(parsed.level, Some(Level::Warn));
    assert_eq!(parsed.service.as_deref(), Some("billing"));
    assert_eq!(parsed.message, format!("retry 2 of 3 trace_id={TRACE}"));
    assert_eq!(parsed.trace_id.unwrap().to_hex(), TRACE);
    assert_eq!(parsed.time_unix_nano, Some(1_714_557_600_000_000_000));
    assert_eq!(parsed.attributes["thread"], Value::from("worker-3"));
    let parsed = parse_line_as(
        "no match",
        Format::Regex,
        Some(&pattern),
        &FieldNames::default(),
    );
    assert_eq!(parsed.format, LineFormat::Text);
    assert!(parsed.parse_error.is_some());
}

#[test]
fn levels_at_the_start_of_text_lines() {
    for (line, level) in [
        ("[ERROR] disk full", Some(Level::Error)),
        ("<WARN> slow", Some(Level::Warn)),
        ("ERROR:root:payment failed", Some(Level::Error)),
        ("level=warn something happened to x", Some(Level::Warn)),
        ("error: connection refused", Some(Level::Error)),
        (
            "W0501 10:00:00.000000 1 reflector.go:1] watch closed",
            Some(Level::Warn),
        ),
        ("Information about the error follows", None),
        ("the request to the upstream failed with status ERROR", None),
        ("payment [error] card declined", Some(Level::Error)),
    ] {
        assert_eq!(parse(line).level, level, "{line}");
    }
}

proptest! {
    #[test]
    fn a_trace_id_after_traceid_survives_whatever_else_the_line_holds(
        prefix in "\\PC{0,80}",
        suffix in "\\PC{0,80}",
        bytes in proptest::array::uniform16(any::<u8>()),
        wrapper in 0..3u8,
    ) {
        prop_assume!(bytes.iter().any(|byte| *byte != 0));
        let hex = crate::model::to_hex(&bytes);
        let line = format!("{prefix} TraceID: {hex} {suffix}");
        let wrapped = match wrapper {
            0 => line.clone(),
            1 => serde_json::json!({"log": line, "stream": "stdout"}).to_string(),
            _ => format!("2026-01-01T00:00:00Z stdout F {line}"),
        };
        let parsed = parse(&wrapped);
        prop_assert_eq!(parsed.trace_id.map(|id| id.to_hex()), Some(hex));
    }
}
