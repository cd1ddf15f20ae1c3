//! The page in a real browser: headless Chromium (Debian's, through chromedriver) against
//! a tracelink holding the seed's checkouts (gateway → payments, made by the OpenTelemetry
//! SDK; odd ones declined in payments) and log lines of them. Search finds them and a
//! click opens the waterfall, where the root cause, the slowest span, the normal bands and
//! the span's log lines are drawn; the log view links to the trace; services draw the
//! graph; the id box takes a Datadog id; the diagnosis names payments. Screenshots go to
//! target/screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::webdriver::Browser;
use common::TestServer;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;

fn screenshot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots")
        .join(format!("{name}.png"))
}

/// A log line of `service` inside span `span_id` of the trace.
async fn send_log(
    server: &TestServer,
    service: &str,
    trace_id: &[u8],
    span_id: &[u8],
    level: &str,
    message: &str,
    time: u64,
) {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(common::service_resource(service)),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: time,
                    severity_text: level.into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(message.into())),
                    }),
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    common::post_protobuf(server.otlp_http, "/v1/logs", request.encode_to_vec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_finds_a_trace_and_draws_its_story_in_a_real_browser() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.server.grafana_url = "http://grafana.example:3000/".into();
    })
    .await;
    let checkouts = common::sdk::six_checkouts(&server).await;
    // Trace 1 failed in payments: a log line in its failing span, one in its root.
    let failing = &checkouts.trace_ids[1];
    let batches = common::fetch_trace(server.http, failing).await.unwrap();
    let spans = common::flatten(&batches);
    let charge = spans
        .iter()
        .find(|(_, span)| span.name == "Charge")
        .unwrap();
    let root = spans
        .iter()
        .find(|(_, span)| span.name == "POST /checkout")
        .unwrap();
    let trace_bytes = charge.1.trace_id.clone();
    send_log(
        &server,
        "payments",
        &trace_bytes,
        &charge.1.span_id,
        "ERROR",
        "card declined for order 42",
        charge.1.start_time_unix_nano + 1_000_000,
    )
    .await;
    send_log(
        &server,
        "gateway",
        &trace_bytes,
        &root.1.span_id,
        "WARN",
        "checkout answered 502",
        root.1.end_time_unix_nano,
    )
    .await;
    // Logs are searchable after the next commit.
    common::wait_for_indexed_logs(&common::data_path(&dir), 2);

    let browser = Browser::start().await;
    let base = format!("http://{}", server.http);

    // Search: the form's fields become TraceQL; the failing checkouts are marked.
    browser
        .open(&format!(
            "{base}/search?service=payments&status=error&range=1h"
        ))
        .await;
    let text = browser.page_text().await;
    assert!(
        text.contains("resource.service.name = \"payments\" && status = error"),
        "{text}"
    );
    let links = browser.find_all("tr.failed a.trace-link").await;
    assert_eq!(links.len(), 3, "{text}");
    browser.screenshot(&screenshot("search")).await;
    let mut target = None;
    for link in &links {
        if browser
            .attribute(link, "href")
            .await
            .ends_with(failing.as_str())
        {
            target = Some(link);
        }
    }
    browser
        .click(target.expect("the failing checkout is listed"))
        .await;

    // The trace: root cause in payments, slowest span, bands, log lines under their spans.
    assert!(browser.url().await.ends_with(&format!("/trace/{failing}")));
    let cause = browser.find("details.span.error .mark-root-cause").await;
    assert_eq!(browser.text(&cause).await, "root cause");
    let cause_row = browser
        .find("details.span:has(.mark-root-cause) summary")
        .await;
    let cause_text = browser.text(&cause_row).await;
    assert!(
        cause_text.contains("payments") && cause_text.contains("Charge"),
        "{cause_text}"
    );
    assert_eq!(browser.find_all(".mark-slowest").await.len(), 1);
    assert_eq!(browser.find_all("details.span").await.len(), 3);
    assert!(
        !browser.find_all(".band").await.is_empty(),
        "six calls of each operation draw their normal band"
    );
    let log_lines = browser.find_all(".span-logs .log-line").await;
    assert_eq!(log_lines.len(), 2);
    let page = browser.page_text().await;
    assert!(page.contains("card declined for order 42"), "{page}");
    assert!(
        page.contains("Root cause: payments Charge — card declined"),
        "{page}"
    );
    browser.screenshot(&screenshot("trace")).await;
    // Open in Grafana: Explore on the Tempo data source, with this trace id.
    let grafana = browser.find("a.grafana").await;
    let href = browser.attribute(&grafana, "href").await;
    assert!(
        href.starts_with("http://grafana.example:3000/explore?schemaVersion=1&panes="),
        "{href}"
    );
    assert!(
        href.contains(failing.as_str()) && href.contains("%22tempo%22"),
        "{href}"
    );

    // Attributes open on click (a <details>, no script).
    let summary = browser
        .find("details.span:has(.mark-root-cause) summary")
        .await;
    browser.click(&summary).await;
    let detail = browser.find("details.span[open] .attributes").await;
    assert!(browser.text(&detail).await.contains("http.status_code"));

    // Logs: each line links to its trace.
    browser
        .open(&format!("{base}/logs?service=payments&level=error"))
        .await;
    let line = browser.find(".log-line").await;
    assert!(browser
        .text(&line)
        .await
        .contains("card declined for order 42"));
    browser.screenshot(&screenshot("logs")).await;
    browser
        .click(&browser.find(".log-line a.to-trace").await)
        .await;
    assert!(browser
        .url()
        .await
        .contains(&format!("/trace/{failing}#log-")));

    // The id box takes a log id (to the line, on its trace) ...
    let logs: serde_json::Value = reqwest::get(format!("{base}/api/logs?service=payments"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let log_id = logs["logs"][0]["id"].as_str().unwrap().to_owned();
    browser.open(&format!("{base}/go?id={log_id}")).await;
    assert!(
        browser
            .url()
            .await
            .ends_with(&format!("/trace/{failing}#log-{log_id}")),
        "{}",
        browser.url().await
    );
    // ... and a Datadog decimal id (the low 64 bits).
    let low64 = u64::from_str_radix(&failing[16..], 16).unwrap();
    browser.open(&format!("{base}/go?id={low64}")).await;
    assert!(browser.url().await.ends_with(&format!("/trace/{low64}")));
    assert!(browser.page_text().await.contains(failing.as_str()));

    // Services: the graph from the same edges as /api/dependencies, and each operation.
    browser.open(&format!("{base}/services?window=60m")).await;
    let graph = browser.find("svg.graph").await;
    let graph_text = browser.text(&graph).await;
    assert!(
        graph_text.contains("gateway") && graph_text.contains("payments"),
        "{graph_text}"
    );
    assert_eq!(browser.find_all("svg.graph .edge.failing").await.len(), 1);
    // Each service's own calls (payments: its six Charge calls, half failed).
    let rows = browser.find_all("table.services tbody tr").await;
    let mut payments_row = String::new();
    for row in &rows {
        let text = browser.text(row).await;
        if text.starts_with("payments") {
            payments_row = text;
        }
    }
    assert!(
        payments_row.starts_with("payments 6 ") && payments_row.contains("50.0%"),
        "{payments_row}"
    );
    let headers = browser.find_all("table.operations thead th").await.len();
    let cells = browser
        .find_all("table.operations tbody tr:first-child td")
        .await
        .len();
    assert_eq!(headers, cells, "a header for every column");
    browser.screenshot(&screenshot("services")).await;

    // Diagnose: the checkouts' ten minutes against the ten before (empty).
    let start = checkouts.base_seconds - 60;
    browser
        .open(&format!(
            "{base}/diagnose?start={start}&end={}",
            checkouts.base_seconds + 60
        ))
        .await;
    let first = browser.find("table.suspects tbody tr").await;
    let first_text = browser.text(&first).await;
    assert!(
        first_text.contains("payments") && first_text.contains("Charge"),
        "{first_text}"
    );
    browser.screenshot(&screenshot("diagnose")).await;

    browser.close().await;
    server.stop().await;
}
