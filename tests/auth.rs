//! Tokens: every ingest path (OTLP/HTTP on both ports, Zipkin, OTLP/gRPC) and every query
//! route asked with no token, a wrong one, the other scope's and the right one (as Bearer
//! and as Basic auth's password, as Grafana sends them); the OpenTelemetry SDK's exporter
//! with a bearer header; the health checks open; a refusal never repeats the token; and
//! the binary refusing to listen beyond loopback without tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::Command;

use base64::Engine as _;
use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use opentelemetry_sdk::trace::SpanExporter as _;
use prost::Message;
use tracelink::config::TokenEntries;

use common::TestServer;

const INGEST: &str = "ingest-Secret-1";
const QUERY: &str = "query-Secret-2";
const WRONG: &str = "not-a-Token-3";

fn request(trace_byte: u8) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![OtlpSpan {
                    trace_id: vec![trace_byte; 16],
                    span_id: vec![1; 8],
                    name: "op".into(),
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("grafana:{token}"));
    format!("Basic {encoded}")
}

/// The status of `request` with `authorization` (none when `None`), checking what every
/// refusal must say and must not say.
async fn status_with(builder: reqwest::RequestBuilder, authorization: Option<String>) -> u16 {
    let builder = match &authorization {
        Some(value) => builder.header("authorization", value),
        None => builder,
    };
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let challenges: Vec<String> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    let body = response.text().await.unwrap();
    if status == 401 {
        assert!(challenges.iter().any(|value| value.starts_with("Bearer ")));
        assert!(challenges.iter().any(|value| value.starts_with("Basic ")));
    }
    if status == 401 || status == 403 {
        for token in [INGEST, QUERY, WRONG] {
            assert!(!body.contains(token), "a refusal repeats the token: {body}");
        }
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_wants_its_scopes_token() {
    let dir = common::temp_dir();
    let tokens_file = dir.path().join("query-tokens");
    std::fs::write(&tokens_file, format!("# rotated monthly\n\n{QUERY}\n")).unwrap();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.auth.ingest_tokens = TokenEntries::Many(vec!["old-ingest-token".into(), INGEST.into()]);
        raw.auth.query_tokens = TokenEntries::One(format!("file:{}", tokens_file.display()));
    })
    .await;
    let client = reqwest::Client::new();

    // Ingest: OTLP/HTTP on both ports, Zipkin.
    let body = request(7).encode_to_vec();
    let ingest_routes = [
        (
            format!("http://{}/v1/traces", server.otlp_http),
            "application/x-protobuf",
            body.clone(),
        ),
        (
            format!("http://{}/v1/traces", server.http),
            "application/x-protobuf",
            body.clone(),
        ),
        (
            server.url("/api/v2/spans"),
            "application/json",
            b"[]".to_vec(),
        ),
    ];
    for (url, content_type, body) in &ingest_routes {
        let post = || {
            client
                .post(url)
                .header("content-type", *content_type)
                .body(body.clone())
        };
        assert_eq!(status_with(post(), None).await, 401, "{url}");
        assert_eq!(status_with(post(), Some(bearer(WRONG))).await, 401, "{url}");
        assert_eq!(status_with(post(), Some(bearer(QUERY))).await, 403, "{url}");
        let ok = status_with(post(), Some(bearer(INGEST))).await;
        assert!(ok == 200 || ok == 202, "{url}: {ok}");
        let ok = status_with(post(), Some(basic(INGEST))).await;
        assert!(ok == 200 || ok == 202, "{url}: {ok}");
    }

    // Every query route: Tempo, TraceQL metrics, tags, Jaeger, Zipkin, Loki, logs, the
    // join, Prometheus's scrape.
    let trace = "07070707070707070707070707070707";
    let query_routes = [
        format!("/api/traces/{trace}"),
        format!("/api/v2/traces/{trace}"),
        "/api/search?q=%7B%7D".to_owned(),
        "/api/metrics/query_range?q=%7B%7D%20%7C%20rate()".to_owned(),
        "/api/metrics/query?q=%7B%7D%20%7C%20rate()".to_owned(),
        "/api/search/tags".to_owned(),
        "/api/v2/search/tags".to_owned(),
        "/api/v2/search/tag/name/values".to_owned(),
        "/jaeger/api/services".to_owned(),
        format!("/jaeger/api/traces/{trace}"),
        "/jaeger/api/v3/services".to_owned(),
        "/jaeger/api/dependencies".to_owned(),
        "/api/v2/services".to_owned(),
        "/api/v2/spans?serviceName=x".to_owned(),
        "/zipkin/config.json".to_owned(),
        "/loki/api/v1/labels".to_owned(),
        "/api/logs".to_owned(),
        format!("/api/join/trace/{trace}"),
        "/api/status/buildinfo".to_owned(),
        "/api/metrics/latency".to_owned(),
        "/metrics".to_owned(),
        "/no/such/route".to_owned(),
    ];
    for path in &query_routes {
        let get = || client.get(server.url(path));
        assert_eq!(status_with(get(), None).await, 401, "{path}");
        assert_eq!(status_with(get(), Some(bearer(WRONG))).await, 401, "{path}");
        assert_eq!(
            status_with(get(), Some(bearer(INGEST))).await,
            403,
            "{path}"
        );
        for authorization in [bearer(QUERY), basic(QUERY)] {
            let status = status_with(get(), Some(authorization)).await;
            assert!(status != 401 && status != 403, "{path}: {status}");
        }
    }
    // The span sent above is there for the query token.
    let status = status_with(
        client.get(server.url(&format!("/api/v2/traces/{trace}"))),
        Some(bearer(QUERY)),
    )
    .await;
    assert_eq!(status, 200);
    // Health checks stay open.
    for path in ["/ready", "/api/echo"] {
        assert_eq!(status_with(client.get(server.url(path)), None).await, 200);
    }

    // OTLP/gRPC: metadata `authorization`.
    let endpoint = format!("http://{}", server.otlp_grpc);
    let mut grpc = TraceServiceClient::connect(endpoint.clone()).await.unwrap();
    let refused = grpc.export(request(8)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(!refused.message().contains(INGEST));
    for (token, code) in [
        (WRONG, Some(tonic::Code::Unauthenticated)),
        (QUERY, Some(tonic::Code::PermissionDenied)),
        (INGEST, None),
    ] {
        let mut export = tonic::Request::new(request(8));
        export
            .metadata_mut()
            .insert("authorization", bearer(token).parse().unwrap());
        let answer = grpc.export(export).await;
        match code {
            Some(code) => {
                let status = answer.unwrap_err();
                assert_eq!(status.code(), code);
                assert!(!status.message().contains(token));
            }
            None => {
                answer.unwrap();
            }
        }
    }

    // The OpenTelemetry SDK's own exporter, with the header its users configure.
    let checkout = common::sdk::service("checkout");
    let tracer = checkout.provider.tracer("auth-test");
    let mut span = tracer.start("GET /cart");
    let trace_id = span.span_context().trace_id().to_string();
    span.end();
    checkout.provider.force_flush().unwrap();
    let finished = checkout.memory.get_finished_spans().unwrap();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/traces", server.otlp_http))
        .with_headers(HashMap::from([(
            "authorization".to_owned(),
            bearer(INGEST),
        )]))
        .build()
        .unwrap();
    exporter.set_resource(&checkout.resource);
    exporter.export(finished).await.unwrap();
    let status = status_with(
        client.get(server.url(&format!("/api/v2/traces/{trace_id}"))),
        Some(basic(QUERY)),
    )
    .await;
    assert_eq!(status, 200, "the SDK's span is stored");
    server.stop().await;
}

#[test]
fn the_binary_will_not_listen_beyond_loopback_without_tokens() {
    let dir = common::temp_dir();
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tracelink"));
        command
            .arg("serve")
            .current_dir(dir.path())
            .env("TRACELINK_STORAGE_DATA_DIR", dir.path().join("data"))
            .env("TRACELINK_SERVER_HTTP_ADDR", "0.0.0.0:0")
            .env("TRACELINK_SERVER_OTLP_HTTP_ADDR", "127.0.0.1:0")
            .env("TRACELINK_SERVER_OTLP_GRPC_ADDR", "127.0.0.1:0");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.http_addr"), "{stderr}");
    assert!(stderr.contains("auth.ingest_tokens"), "{stderr}");
    // Tokens for one scope are not enough for a port serving both.
    let refused = run(&[
        ("TRACELINK_AUTH_INGEST_TOKENS", "env:OTLP_INGEST_TOKEN"),
        ("OTLP_INGEST_TOKEN", INGEST),
    ]);
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("auth.query_tokens"));
    // A token file that is not there is named.
    let missing = run(&[("TRACELINK_AUTH_QUERY_TOKENS", "file:/nonexistent/tokens")]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tokens"));

    // Said on purpose, it starts (and tokens make a non-loopback start fine too).
    let data = dir.path().join("open");
    for env in [
        vec![
            ("TRACELINK_SERVER_HTTP_ADDR", "0.0.0.0:0"),
            ("TRACELINK_AUTH_ALLOW_UNAUTHENTICATED", "true"),
        ],
        vec![
            ("TRACELINK_SERVER_HTTP_ADDR", "0.0.0.0:0"),
            ("TRACELINK_AUTH_INGEST_TOKENS", INGEST),
            ("TRACELINK_AUTH_QUERY_TOKENS", QUERY),
        ],
    ] {
        let process = common::spawn_binary(dir.path(), &data, &env);
        assert!(process.terminate().success());
    }
}
