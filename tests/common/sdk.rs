//! Services made with the OpenTelemetry SDK (its in-memory exporter collects, its OTLP
//! exporter sends): the seed's checkout trace as Grafana's searches and TraceQL metrics
//! tests use it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;

use super::TestServer;

pub struct Service {
    pub resource: Resource,
    pub provider: SdkTracerProvider,
    pub memory: InMemorySpanExporter,
}

pub fn service(name: &str) -> Service {
    service_with(name, [])
}

/// A service whose resource also carries `attributes`.
pub fn service_with(name: &str, attributes: impl IntoIterator<Item = KeyValue>) -> Service {
    let resource = Resource::builder()
        .with_service_name(name.to_owned())
        .with_attributes(attributes)
        .build();
    let memory = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_simple_exporter(memory.clone())
        .build();
    Service {
        resource,
        provider,
        memory,
    }
}

/// Trace `index`: gateway `POST /checkout` (server) → gateway `charge` (client) →
/// payments `Charge` (server), starting `index` seconds after `base`; odd traces fail in
/// payments. Returns its trace id.
pub fn checkout(gateway: &Service, payments: &Service, base: SystemTime, index: u64) -> String {
    let gateway_tracer = gateway.provider.tracer("gateway");
    let payments_tracer = payments.provider.tracer("payments");
    let at = |ms: u64| base + Duration::from_secs(index) + Duration::from_millis(ms);
    let failed = index % 2 == 1;
    let root = gateway_tracer
        .span_builder("POST /checkout")
        .with_kind(SpanKind::Server)
        .with_start_time(at(0))
        .with_attributes([
            KeyValue::new("http.route", "/checkout"),
            KeyValue::new("app/version", "1.2"),
        ])
        .start(&gateway_tracer);
    let trace_id = root.span_context().trace_id().to_string();
    let root_cx = Context::current_with_span(root);
    let client = gateway_tracer
        .span_builder("charge")
        .with_kind(SpanKind::Client)
        .with_start_time(at(5))
        .start_with_context(&gateway_tracer, &root_cx);
    let client_cx = root_cx.with_span(client);
    let mut server = payments_tracer
        .span_builder("Charge")
        .with_kind(SpanKind::Server)
        .with_start_time(at(10))
        .with_attributes([KeyValue::new(
            "http.status_code",
            if failed { 500i64 } else { 200 },
        )])
        .start_with_context(&payments_tracer, &client_cx);
    if failed {
        server.set_status(Status::error("card declined"));
    }
    server.end_with_timestamp(at(10 + 100 * (index + 1)));
    client_cx
        .span()
        .end_with_timestamp(at(15 + 100 * (index + 1)));
    root_cx
        .span()
        .end_with_timestamp(at(20 + 100 * (index + 1)));
    trace_id
}

pub async fn export(server: &TestServer, services: &[&Service]) {
    for service in services {
        service.provider.force_flush().unwrap();
        let spans = service.memory.get_finished_spans().unwrap();
        service.memory.reset();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/traces", server.otlp_http))
            .build()
            .unwrap();
        exporter.set_resource(&service.resource);
        exporter.export(spans).await.unwrap();
    }
}

/// Six checkouts (see [`checkout`]) a second apart, the first ten minutes ago on a whole
/// second, made by gateway's and payments' SDKs and sent by their exporter.
pub struct Checkouts {
    pub gateway: Service,
    pub payments: Service,
    pub trace_ids: Vec<String>,
    pub base: SystemTime,
    pub base_seconds: u64,
}

pub async fn six_checkouts(server: &TestServer) -> Checkouts {
    let gateway = service("gateway");
    let payments = service("payments");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base_seconds = now - 600;
    let base = UNIX_EPOCH + Duration::from_secs(base_seconds);
    let trace_ids = (0..6)
        .map(|index| checkout(&gateway, &payments, base, index))
        .collect();
    export(server, &[&gateway, &payments]).await;
    Checkouts {
        gateway,
        payments,
        trace_ids,
        base,
        base_seconds,
    }
}
