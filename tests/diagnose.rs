//! `/api/diagnose` end to end: a real tracelink on 127.0.0.1:0 receives a shop's checkouts
//! over OTLP/HTTP (gateway → payments → its database, gateway → inventory → its
//! database, notifier's logs): ten healthy minutes, then ten minutes with one incident.
//! The right service and operation comes first for an error in the middle that callers
//! propagate, an error in a leaf, a slow database call, and a fault seen only in logs;
//! a healthy window names no suspect worth a look.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Incident {
    None,
    /// payments fails on its own (its database is fine); gateway propagates.
    PaymentsFails,
    /// payments' database call fails; payments and gateway propagate.
    DatabaseFails,
    /// inventory's database query takes 400 ms instead of 5.
    SlowStockQuery,
    /// notifier logs errors; no span changes.
    NotifierLogs,
}

const MINUTE: u64 = 60_000_000_000;

/// Milliseconds, varied by ±20 % with `seed`.
fn jitter(ms: u64, seed: u64) -> u64 {
    let spread = common::mix(seed) % 41;
    (ms * 1_000_000) * (80 + spread) / 100
}

struct Builder {
    trace_id: Vec<u8>,
    next_id: u64,
    by_service: std::collections::BTreeMap<&'static str, Vec<Span>>,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        service: &'static str,
        parent: Option<&Span>,
        name: &str,
        kind: i32,
        start: u64,
        duration: u64,
        error: Option<&str>,
    ) -> Span {
        self.next_id += 1;
        let span = Span {
            trace_id: self.trace_id.clone(),
            span_id: self.next_id.to_be_bytes().to_vec(),
            parent_span_id: parent.map(|p| p.span_id.clone()).unwrap_or_default(),
            name: name.into(),
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            status: error.map(|message| Status {
                code: 2,
                message: message.into(),
            }),
            ..Default::default()
        };
        self.by_service
            .entry(service)
            .or_default()
            .push(span.clone());
        span
    }
}

/// One checkout at `start`, shaped by the incident.
fn checkout(number: u64, start: u64, incident: Incident) -> ExportTraceServiceRequest {
    let mut trace_id = common::mix(number).to_be_bytes().to_vec();
    trace_id.extend(common::mix(number + 7).to_be_bytes());
    let mut b = Builder {
        trace_id,
        next_id: number << 8,
        by_service: Default::default(),
    };
    let seed = number * 16;
    let fails = |every: u64| number.is_multiple_of(every);
    let payments_fails = incident == Incident::PaymentsFails && fails(2);
    let database_fails = incident == Incident::DatabaseFails && fails(2);
    let stock_ms = if incident == Incident::SlowStockQuery {
        400
    } else {
        5
    };

    let stock_query = jitter(stock_ms, seed + 1);
    let reserve = stock_query + jitter(3, seed + 2);
    let charge_query = jitter(4, seed + 3);
    let charge = charge_query + jitter(20, seed + 4);
    let total = reserve + charge + jitter(10, seed + 5);
    let failed = payments_fails || database_fails;
    let root = b.span(
        "gateway",
        None,
        "POST /checkout",
        2,
        start,
        total,
        failed.then_some("payment failed"),
    );
    let t = start + 1_000_000;
    let call = b.span(
        "gateway",
        Some(&root),
        "reserve",
        3,
        t,
        reserve + 500_000,
        None,
    );
    let server = b.span(
        "inventory",
        Some(&call),
        "Reserve",
        2,
        t + 200_000,
        reserve,
        None,
    );
    b.span(
        "inventory",
        Some(&server),
        "SELECT stock",
        3,
        t + 300_000,
        stock_query,
        None,
    );
    let t = t + reserve + 1_000_000;
    let call = b.span(
        "gateway",
        Some(&root),
        "charge",
        3,
        t,
        charge + 500_000,
        failed.then_some("payments answered 502"),
    );
    let server = b.span(
        "payments",
        Some(&call),
        "Charge",
        2,
        t + 200_000,
        charge,
        if payments_fails {
            Some("card declined")
        } else if database_fails {
            Some("could not charge")
        } else {
            None
        },
    );
    b.span(
        "payments",
        Some(&server),
        "INSERT charges",
        3,
        t + 300_000,
        charge_query,
        database_fails.then_some("deadlock detected"),
    );
    ExportTraceServiceRequest {
        resource_spans: b
            .by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(common::service_resource(service)),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn error_log(service: &str, time: u64, message: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(common::service_resource(service)),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: time,
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(message.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(server: &TestServer, path: &str, body: Vec<u8>) {
    common::post_protobuf(server.otlp_http, path, body).await;
}

/// Ten healthy minutes then ten with `incident`, a checkout every 10 s; the diagnosis of
/// the second ten against the first.
async fn diagnose_incident(incident: Incident) -> Value {
    diagnose_with_cli(incident).await.0
}

/// The diagnosis, and what `tracelink diagnose` prints for the same window.
async fn diagnose_with_cli(incident: Incident) -> (Value, String) {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let now_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        / MINUTE;
    let baseline_start = (now_minute - 21) * MINUTE;
    let window_start = baseline_start + 10 * MINUTE;
    let window_end = window_start + 10 * MINUTE;
    for number in 0..120u64 {
        let start = baseline_start + number * 10_000_000_000;
        let shape = if start >= window_start {
            incident
        } else {
            Incident::None
        };
        post(
            &server,
            "/v1/traces",
            checkout(number + 1, start, shape).encode_to_vec(),
        )
        .await;
        if shape == Incident::NotifierLogs && number.is_multiple_of(3) {
            let message = format!("SMTP connection to 10.0.0.{} refused", number % 7);
            post(
                &server,
                "/v1/logs",
                error_log("notifier", start, &message).encode_to_vec(),
            )
            .await;
        }
        if number == 5 {
            // One unrelated error in the baseline, so that it is not empty.
            post(
                &server,
                "/v1/logs",
                error_log("gateway", start, "client closed the connection").encode_to_vec(),
            )
            .await;
        }
    }
    let url = server.url(&format!(
        "/api/diagnose?start={}&end={}&baseline_start={}&baseline_end={}",
        window_start / 1_000_000_000,
        window_end / 1_000_000_000,
        baseline_start / 1_000_000_000,
        window_start / 1_000_000_000,
    ));
    // Logs are searchable after their commit.
    let mut diagnosis = Value::Null;
    for _ in 0..50 {
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 200);
        diagnosis = response.json().await.unwrap();
        let window_logs = if incident == Incident::NotifierLogs {
            20
        } else {
            0
        };
        if diagnosis["window"]["traces"] == 60
            && diagnosis["baseline"]["error_logs"] == 1
            && diagnosis["window"]["error_logs"] == window_logs
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let seconds = |nanos: u64| (nanos / 1_000_000_000).to_string();
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_tracelink"))
        .args(["diagnose", "--server", &format!("http://{}", server.http)])
        .args([
            "--start",
            &seconds(window_start),
            "--end",
            &seconds(window_end),
        ])
        .args(["--baseline-start", &seconds(baseline_start)])
        .args(["--baseline-end", &seconds(window_start)])
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    server.stop().await;
    assert_eq!(diagnosis["window"]["traces"], 60, "{diagnosis:#}");
    assert_eq!(diagnosis["baseline"]["traces"], 60, "{diagnosis:#}");
    (diagnosis, String::from_utf8(cli.stdout).unwrap())
}

fn first(diagnosis: &Value) -> (&str, &str, &str, bool, f64) {
    let top = &diagnosis["suspects"][0];
    (
        top["service"].as_str().unwrap_or_default(),
        top["operation"].as_str().unwrap_or_default(),
        top["kind"].as_str().unwrap_or_default(),
        top["origin"].as_bool().unwrap_or_default(),
        top["score"].as_f64().unwrap_or_default(),
    )
}

fn suspect<'a>(diagnosis: &'a Value, service: &str, operation: &str) -> &'a Value {
    diagnosis["suspects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|suspect| suspect["service"] == service && suspect["operation"] == operation)
        .unwrap_or_else(|| panic!("no suspect {service} {operation}: {diagnosis:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_the_middle_is_named_where_it_starts_not_where_it_surfaces() {
    let (diagnosis, printed) = diagnose_with_cli(Incident::PaymentsFails).await;
    // The CLI's table ranks the same way and draws the example trace.
    let first_row = printed
        .lines()
        .find(|line| line.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        first_row.contains("payments") && first_row.contains("Charge"),
        "{printed}"
    );
    assert!(first_row.contains("errors 0.0% -> 50.0%"), "{printed}");
    assert!(
        printed.contains("example trace of the top suspect"),
        "{printed}"
    );
    assert!(printed.contains("card declined"), "{printed}");
    let (service, operation, kind, origin, score) = first(&diagnosis);
    assert_eq!(
        (service, operation, kind, origin),
        ("payments", "Charge", "errors", true),
        "{diagnosis:#}"
    );
    assert!(score >= 1.0, "{diagnosis:#}");
    let top = &diagnosis["suspects"][0];
    assert_eq!(
        top["evidence"]["error_messages"][0]["text"],
        "card declined"
    );
    assert_eq!(top["evidence"]["error_rate_baseline"], 0.0);
    assert_eq!(top["evidence"]["error_rate_window"], 0.5);
    assert!(top["example_trace_id"].is_string());
    let surfaced = suspect(&diagnosis, "gateway", "POST /checkout");
    assert_eq!(surfaced["origin"], false);
    assert_eq!(surfaced["caused_by"]["service"], "payments");
    assert!(
        diagnosis["summary"]
            .as_str()
            .unwrap()
            .starts_with("payments \"Charge\": error rate 0.0% -> 50.0%"),
        "{diagnosis:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_leaf_comes_first() {
    let diagnosis = diagnose_incident(Incident::DatabaseFails).await;
    let (service, operation, kind, origin, _) = first(&diagnosis);
    assert_eq!(
        (service, operation, kind, origin),
        ("payments", "INSERT charges", "errors", true),
        "{diagnosis:#}"
    );
    assert_eq!(
        suspect(&diagnosis, "payments", "Charge")["caused_by"]["operation"],
        "INSERT charges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_call_comes_before_the_callers_it_slows() {
    let diagnosis = diagnose_incident(Incident::SlowStockQuery).await;
    let (service, operation, kind, origin, score) = first(&diagnosis);
    assert_eq!(
        (service, operation, kind, origin),
        ("inventory", "SELECT stock", "latency", true),
        "{diagnosis:#}"
    );
    assert!(score >= 1.0);
    let top = &diagnosis["suspects"][0]["evidence"];
    assert!(top["window"]["p50_ms"].as_f64().unwrap() > 300.0, "{top:#}");
    assert!(
        top["baseline"]["p50_ms"].as_f64().unwrap() < 10.0,
        "{top:#}"
    );
    let reserve = suspect(&diagnosis, "inventory", "Reserve");
    assert_eq!(reserve["origin"], false);
    assert_eq!(reserve["caused_by"]["operation"], "SELECT stock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_seen_only_in_logs_is_found() {
    let diagnosis = diagnose_incident(Incident::NotifierLogs).await;
    let (service, operation, kind, _, score) = first(&diagnosis);
    assert_eq!(
        (service, operation, kind),
        ("notifier", "", "logs"),
        "{diagnosis:#}"
    );
    assert!(score >= 1.0);
    let templates = &diagnosis["suspects"][0]["evidence"]["log_templates"];
    assert_eq!(
        templates[0]["text"], "SMTP connection to <*> refused",
        "{templates}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_window_names_no_suspect_worth_a_look() {
    let diagnosis = diagnose_incident(Incident::None).await;
    for suspect in diagnosis["suspects"].as_array().unwrap() {
        assert!(suspect["score"].as_f64().unwrap() < 1.0, "{diagnosis:#}");
    }
    assert_eq!(
        diagnosis["summary"],
        "nothing stands out against the baseline"
    );
}
