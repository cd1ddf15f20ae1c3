//! Spans made by the OpenTelemetry SDK and sent by its own OTLP exporter (HTTP/protobuf,
//! HTTP/protobuf with gzip, and gRPC with gzip) come back from both Tempo trace-by-id
//! routes, protobuf and JSON, span by span unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span as OtlpSpan, TracesData};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::Message;
use tracelink::api::tempo::TraceByIdResponse;

use common::sdk::Service;
use common::{flatten, TestServer};

/// Every service of the test runs in the same environment on the same host.
fn service(name: &str) -> Service {
    common::sdk::service_with(
        name,
        [
            KeyValue::new("deployment.environment", "test"),
            KeyValue::new("host.cores", 2i64),
        ],
    )
}

fn make_checkout_trace(services: &[Service; 3]) {
    let gateway = services[0].provider.tracer("gateway-http");
    let orders = services[1].provider.tracer("orders-core");
    let inventory = services[2].provider.tracer("inventory-db");
    let start = SystemTime::now();
    let at = |ms: u64| start + Duration::from_millis(ms);

    let root = gateway
        .span_builder("GET /checkout")
        .with_kind(SpanKind::Server)
        .with_start_time(at(0))
        .with_attributes([
            KeyValue::new("http.method", "GET"),
            KeyValue::new("http.status_code", 500i64),
            KeyValue::new("sampled.ratio", 0.25f64),
            KeyValue::new("cache.hit", false),
            KeyValue::new(
                "tags",
                Value::Array(Array::String(vec!["a".into(), "b".into()])),
            ),
            KeyValue::new("retry.delays", Value::Array(Array::I64(vec![10, 20]))),
            KeyValue::new("weights", Value::Array(Array::F64(vec![0.5, 1.5]))),
            KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
        ])
        .start(&gateway);
    let root_cx = Context::current_with_span(root);
    let mut call_orders = gateway
        .span_builder("POST orders")
        .with_kind(SpanKind::Client)
        .with_start_time(at(2))
        .start_with_context(&gateway, &root_cx);
    call_orders.add_event_with_timestamp(
        "request sent",
        at(3),
        vec![KeyValue::new("bytes", 512i64)],
    );
    let call_orders_cx = root_cx.with_span(call_orders);

    let orders_server = orders
        .span_builder("POST /orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(4))
        .start_with_context(&orders, &call_orders_cx);
    let orders_cx = call_orders_cx.with_span(orders_server);
    let mut validate = orders
        .span_builder("validate order")
        .with_start_time(at(5))
        .start_with_context(&orders, &orders_cx);
    validate.end_with_timestamp(at(9));
    let unrelated = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        opentelemetry::trace::SpanId::from_hex("b7ad6b7169203331").unwrap(),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    let reserve_client = orders
        .span_builder("reserve stock")
        .with_kind(SpanKind::Client)
        .with_start_time(at(10))
        .with_links(vec![Link::new(
            unrelated,
            vec![KeyValue::new("link.reason", "batch")],
            0,
        )])
        .start_with_context(&orders, &orders_cx);
    let reserve_cx = orders_cx.with_span(reserve_client);

    let mut db = inventory
        .span_builder("UPDATE stock")
        .with_kind(SpanKind::Server)
        .with_start_time(at(11))
        .with_attributes([KeyValue::new(
            "db.statement",
            "UPDATE stock SET n = n - ? WHERE sku = ?",
        )])
        .start_with_context(&inventory, &reserve_cx);
    let failure = std::io::Error::new(std::io::ErrorKind::TimedOut, "lock wait timeout");
    db.record_error(&failure);
    db.set_status(Status::error("lock wait timeout"));
    db.end_with_timestamp(at(40));

    reserve_cx
        .span()
        .set_status(Status::error("inventory failed"));
    reserve_cx.span().end_with_timestamp(at(41));
    orders_cx.span().set_status(Status::Ok);
    orders_cx.span().end_with_timestamp(at(45));
    call_orders_cx.span().end_with_timestamp(at(46));
    root_cx.span().end_with_timestamp(at(50));
}

fn finished(services: &[Service; 3]) -> Vec<(Resource, Vec<SpanData>)> {
    services
        .iter()
        .map(|service| {
            service.provider.force_flush().unwrap();
            let spans = service.memory.get_finished_spans().unwrap();
            service.memory.reset();
            (service.resource.clone(), spans)
        })
        .collect()
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn expected_value(value: &Value) -> AnyValue {
    let value = match value {
        Value::Bool(value) => any_value::Value::BoolValue(*value),
        Value::I64(value) => any_value::Value::IntValue(*value),
        Value::F64(value) => any_value::Value::DoubleValue(*value),
        Value::String(value) => any_value::Value::StringValue(value.as_str().to_owned()),
        Value::Array(array) => {
            let values: Vec<any_value::Value> = match array {
                Array::Bool(items) => items
                    .iter()
                    .map(|item| any_value::Value::BoolValue(*item))
                    .collect(),
                Array::I64(items) => items
                    .iter()
                    .map(|item| any_value::Value::IntValue(*item))
                    .collect(),
                Array::F64(items) => items
                    .iter()
                    .map(|item| any_value::Value::DoubleValue(*item))
                    .collect(),
                Array::String(items) => items
                    .iter()
                    .map(|item| any_value::Value::StringValue(item.as_str().to_owned()))
                    .collect(),
                other => panic!("array type not covered: {other:?}"),
            };
            any_value::Value::ArrayValue(ArrayValue {
                values: values
                    .into_iter()
                    .map(|value| AnyValue { value: Some(value) })
                    .collect(),
            })
        }
        other => panic!("value type not covered: {other:?}"),
    };
    AnyValue { value: Some(value) }
}

fn assert_attributes(
    actual: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    expected: &[KeyValue],
) {
    assert_eq!(actual.len(), expected.len(), "attribute count");
    for expected in expected {
        let found = actual
            .iter()
            .find(|attribute| attribute.key == expected.key.as_str())
            .unwrap_or_else(|| panic!("attribute {} missing", expected.key));
        assert_eq!(
            found.value.as_ref(),
            Some(&expected_value(&expected.value)),
            "{}",
            expected.key
        );
    }
}

/// Compare every span the SDK produced with what tracelink returned.
fn assert_same_spans(sent: &[(Resource, Vec<SpanData>)], returned: &[ResourceSpans]) {
    let returned_spans: HashMap<Vec<u8>, (String, OtlpSpan)> = flatten(returned)
        .into_iter()
        .map(|(service, span)| (span.span_id.clone(), (service, span)))
        .collect();
    let sent_count: usize = sent.iter().map(|(_, spans)| spans.len()).sum();
    assert_eq!(returned_spans.len(), sent_count, "each span exactly once");
    assert_eq!(flatten(returned).len(), sent_count, "no duplicates");
    for (resource, spans) in sent {
        let service = resource
            .get(&opentelemetry::Key::new("service.name"))
            .unwrap()
            .to_string();
        for data in spans {
            let span_id = data.span_context.span_id().to_bytes().to_vec();
            let (returned_service, span) = &returned_spans[&span_id];
            assert_eq!(returned_service, &service);
            assert_eq!(
                span.trace_id,
                data.span_context.trace_id().to_bytes().to_vec()
            );
            let parent = data.parent_span_id.to_bytes();
            if parent == [0; 8] {
                assert!(span.parent_span_id.is_empty());
            } else {
                assert_eq!(span.parent_span_id, parent.to_vec(), "{}", data.name);
            }
            assert_eq!(span.name, data.name);
            assert_eq!(span.start_time_unix_nano, nanos(data.start_time));
            assert_eq!(span.end_time_unix_nano, nanos(data.end_time));
            let kind = match data.span_kind {
                SpanKind::Internal => 1,
                SpanKind::Server => 2,
                SpanKind::Client => 3,
                SpanKind::Producer => 4,
                SpanKind::Consumer => 5,
            };
            assert_eq!(span.kind, kind, "{}", data.name);
            assert_attributes(&span.attributes, &data.attributes);
            assert_eq!(span.events.len(), data.events.events.len());
            for (event, expected) in span.events.iter().zip(&data.events.events) {
                assert_eq!(event.name, expected.name);
                assert_eq!(event.time_unix_nano, nanos(expected.timestamp));
                assert_attributes(&event.attributes, &expected.attributes);
            }
            assert_eq!(span.links.len(), data.links.links.len());
            for (link, expected) in span.links.iter().zip(&data.links.links) {
                assert_eq!(
                    link.trace_id,
                    expected.span_context.trace_id().to_bytes().to_vec()
                );
                assert_eq!(
                    link.span_id,
                    expected.span_context.span_id().to_bytes().to_vec()
                );
                assert_attributes(&link.attributes, &expected.attributes);
            }
            let (code, message) = match &data.status {
                Status::Unset => (0, String::new()),
                Status::Ok => (1, String::new()),
                Status::Error { description } => (2, description.to_string()),
            };
            let status = span.status.clone().unwrap_or_default();
            assert_eq!(
                (status.code, status.message),
                (code, message),
                "{}",
                data.name
            );
        }
    }
    let scopes: Vec<&str> = returned
        .iter()
        .flat_map(|batch| batch.scope_spans.iter())
        .map(|scope| scope.scope.as_ref().unwrap().name.as_str())
        .collect();
    for scope in ["gateway-http", "orders-core", "inventory-db"] {
        assert!(scopes.contains(&scope), "scope {scope} kept");
    }
    for batch in returned {
        let attributes = &batch.resource.as_ref().unwrap().attributes;
        assert!(attributes
            .iter()
            .any(|kv| kv.key == "deployment.environment"));
        assert!(attributes
            .iter()
            .any(|kv| kv.key == "telemetry.sdk.language"));
    }
}

async fn fetch_all_routes(server: &TestServer, trace_id: &str) -> Vec<ResourceSpans> {
    let client = reqwest::Client::new();
    let v1 = common::fetch_trace(server.http, trace_id)
        .await
        .expect("v1 finds the trace");

    let response = client
        .get(server.url(&format!("/api/v2/traces/{trace_id}")))
        .header("accept", "application/protobuf")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/protobuf");
    let v2 = TraceByIdResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(v2.status, 0);
    let v2 = v2.trace.unwrap().resource_spans;
    assert_eq!(v1, v2, "both routes return the same trace");

    // JSON forms carry the same spans, with ids as 32/16 lowercase hex.
    let v1_json: serde_json::Value = client
        .get(server.url(&format!("/api/traces/{}", trace_id.to_uppercase())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v2_json: serde_json::Value = client
        .get(server.url(&format!("/api/v2/traces/{trace_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v2_json["status"], "COMPLETE");
    assert_eq!(v1_json["batches"], v2_json["trace"]["resourceSpans"]);
    let json_spans: Vec<&serde_json::Value> = v1_json["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|batch| batch["scopeSpans"].as_array().unwrap())
        .flat_map(|scope| scope["spans"].as_array().unwrap())
        .collect();
    assert_eq!(json_spans.len(), flatten(&v1).len());
    for span in json_spans {
        assert_eq!(span["traceId"], trace_id);
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
    }
    v1
}

fn trace_id_of(sent: &[(Resource, Vec<SpanData>)]) -> String {
    sent[0].1[0].span_context.trace_id().to_string()
}

async fn export_http(server: &TestServer, sent: &[(Resource, Vec<SpanData>)], gzip: bool) {
    for (resource, spans) in sent {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/traces", server.otlp_http));
        if gzip {
            builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
        }
        let mut exporter = builder.build().unwrap();
        exporter.set_resource(resource);
        exporter.export(spans.clone()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_round_trip_over_http_and_grpc() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let services = [service("gateway"), service("orders"), service("inventory")];

    // HTTP/protobuf, as the SDKs send by default.
    make_checkout_trace(&services);
    let over_http = finished(&services);
    assert_eq!(over_http.iter().map(|(_, s)| s.len()).sum::<usize>(), 6);
    export_http(&server, &over_http, false).await;
    let trace_id = trace_id_of(&over_http);
    assert_same_spans(&over_http, &fetch_all_routes(&server, &trace_id).await);

    // The same batch again (a client retry) is not duplicated in the trace.
    export_http(&server, &over_http, false).await;
    assert_same_spans(&over_http, &fetch_all_routes(&server, &trace_id).await);

    // HTTP/protobuf with gzip.
    make_checkout_trace(&services);
    let gzipped = finished(&services);
    export_http(&server, &gzipped, true).await;
    assert_same_spans(
        &gzipped,
        &fetch_all_routes(&server, &trace_id_of(&gzipped)).await,
    );

    // gRPC with gzip.
    make_checkout_trace(&services);
    let over_grpc = finished(&services);
    for (resource, spans) in &over_grpc {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", server.otlp_grpc))
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .build()
            .unwrap();
        exporter.set_resource(resource);
        exporter.export(spans.clone()).await.unwrap();
    }
    let grpc_trace_id = trace_id_of(&over_grpc);
    assert_same_spans(&over_grpc, &fetch_all_routes(&server, &grpc_trace_id).await);

    // After commits and a restart, the same answers come from tantivy alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await;
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    assert_same_spans(&over_http, &fetch_all_routes(&server, &trace_id).await);
    assert_same_spans(&over_grpc, &fetch_all_routes(&server, &grpc_trace_id).await);
    let batches = common::fetch_trace(server.http, &grpc_trace_id)
        .await
        .unwrap();
    let data = TracesData {
        resource_spans: batches,
    };
    assert_eq!(data.resource_spans.len(), 3, "one batch per service");
    server.stop().await;
}
