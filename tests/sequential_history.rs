//! "Sequential calls" judged against what is normal for the parent operation: a real
//! tracelink on 127.0.0.1:0 holds recent traces of `orders / POST /orders`; where its calls
//! to inventory and payments usually overlap, a trace running them one after the other
//! gets the finding (with the time it cost and the history that says so); where they
//! always run in sequence (dependent calls), it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

const MS: u64 = 1_000_000;

/// An order at `t0`: orders calls inventory and payments, in parallel or one after the
/// other. Returns the request and the trace id (hex).
fn order(number: u64, t0: u64, parallel: bool) -> (ExportTraceServiceRequest, String) {
    let mut trace_id = common::mix(number).to_be_bytes().to_vec();
    trace_id.extend(common::mix(number + 99).to_be_bytes());
    let span =
        |id: u64, parent: Option<u64>, name: &str, kind: i32, start: u64, duration: u64| Span {
            trace_id: trace_id.clone(),
            span_id: (number * 100 + id).to_be_bytes().to_vec(),
            parent_span_id: parent
                .map(|p| (number * 100 + p).to_be_bytes().to_vec())
                .unwrap_or_default(),
            name: name.into(),
            kind,
            start_time_unix_nano: t0 + start * MS,
            end_time_unix_nano: t0 + (start + duration) * MS,
            ..Default::default()
        };
    let payments_at = if parallel { 2 } else { 45 };
    let orders = vec![
        span(1, None, "POST /orders", 2, 0, 100),
        span(2, Some(1), "reserve", 3, 2, 40),
        span(3, Some(1), "charge", 3, payments_at, 40),
    ];
    let inventory = vec![span(4, Some(2), "Reserve", 2, 3, 38)];
    let payments = vec![span(5, Some(3), "Charge", 2, payments_at + 1, 38)];
    let resource = |service: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(common::service_resource(service)),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    };
    (
        ExportTraceServiceRequest {
            resource_spans: vec![
                resource("orders", orders),
                resource("inventory", inventory),
                resource("payments", payments),
            ],
        },
        tracelink::model::to_hex(&trace_id),
    )
}

async fn sequential_finding(history_parallel: bool) -> Option<Value> {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut last = String::new();
    for number in 0..7u64 {
        // Six earlier orders, then the one to judge, in sequence.
        let parallel = number < 6 && history_parallel;
        let (request, trace_id) = order(number + 1, now - (20 - number) * 60_000 * MS, parallel);
        common::post_protobuf(server.otlp_http, "/v1/traces", request.encode_to_vec()).await;
        last = trace_id;
    }
    let joined: Value = reqwest::get(server.url(&format!("/api/join/trace/{last}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    server.stop().await;
    joined["trace"]["analysis"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|finding| finding["kind"] == "sequential_calls")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_usually_overlap_but_ran_in_sequence_are_a_finding() {
    let finding = sequential_finding(true)
        .await
        .expect("a sequential_calls finding");
    let message = finding["message"].as_str().unwrap();
    assert!(message.contains("could save up to 40.0 ms"), "{message}");
    assert!(
        message.ends_with("they overlapped in 6 of the 6 recent traces of orders / POST /orders"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_always_run_in_sequence_are_not() {
    assert_eq!(sequential_finding(false).await, None);
}
