//! TLS on every listener: a certificate made for the test, curl (a real HTTPS client,
//! HTTP/1.1 and HTTP/2) on the query and OTLP/HTTP ports, the OpenTelemetry SDK's gRPC
//! exporter over TLS, plain TCP refused, and a bad key refused at start naming its key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestServer;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SpanExporter as _;

/// `curl` with the test's CA: (exit status success, body, HTTP version).
fn curl(ca: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--write-out", "\n%{http_version}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (output.status.success(), body.to_owned(), version.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls_to_real_clients() {
    let dir = common::temp_dir();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let (cert_path, key_path) = (cert.clone(), key.clone());
    let server = TestServer::start_unchecked(&common::data_path(&dir), move |raw| {
        raw.server.tls_cert = Some(cert_path);
        raw.server.tls_key = Some(key_path);
    })
    .await;
    let https = |port: u16, path: &str| format!("https://localhost:{port}{path}");
    let resolve = |port: u16| format!("localhost:{port}:127.0.0.1");
    let (http_port, otlp_port, grpc_port) = (
        server.http.port(),
        server.otlp_http.port(),
        server.otlp_grpc.port(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, body, _) = curl(
            &cert,
            &[
                "--resolve",
                &resolve(http_port),
                &https(http_port, "/ready"),
            ],
        );
        if ok && body.starts_with("ready") {
            break;
        }
        assert!(Instant::now() < deadline, "never ready over TLS: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // HTTP/2 and HTTP/1.1, chosen by ALPN.
    let (ok, _, version) = curl(
        &cert,
        &[
            "--http2",
            "--resolve",
            &resolve(http_port),
            &https(http_port, "/ready"),
        ],
    );
    assert!(ok);
    assert_eq!(version, "2");
    let (ok, _, version) = curl(
        &cert,
        &[
            "--http1.1",
            "--resolve",
            &resolve(http_port),
            &https(http_port, "/ready"),
        ],
    );
    assert!(ok);
    assert_eq!(version, "1.1");
    // Plain HTTP on a TLS port gets no answer; an unknown CA is refused by the client.
    let (ok, _, _) = curl(&cert, &[&format!("http://127.0.0.1:{http_port}/ready")]);
    assert!(!ok);
    let (ok, _, _) = curl(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        &[
            "--resolve",
            &resolve(http_port),
            &https(http_port, "/ready"),
        ],
    );
    assert!(!ok);

    // The SDK's gRPC exporter over TLS.
    let gateway = common::sdk::service("gateway");
    let payments = common::sdk::service("payments");
    let trace_id = common::sdk::checkout(&gateway, &payments, std::time::SystemTime::now(), 1);
    for service in [&gateway, &payments] {
        service.provider.force_flush().unwrap();
        let spans = service.memory.get_finished_spans().unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(&cert).unwrap(),
            ))
            .domain_name("localhost");
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("https://127.0.0.1:{grpc_port}"))
            .with_tls_config(tls)
            .build()
            .unwrap();
        exporter.set_resource(&service.resource);
        exporter.export(spans).await.unwrap();
    }
    let (ok, body, _) = curl(
        &cert,
        &[
            "--resolve",
            &resolve(http_port),
            &https(http_port, &format!("/api/v2/traces/{trace_id}")),
        ],
    );
    assert!(ok, "{body}");
    assert!(body.contains("card declined"), "{body}");

    // OTLP/HTTP over TLS: a JSON export from curl.
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"curl"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"over tls","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000"}]}]}]}"#;
    let (ok, answer, _) = curl(
        &cert,
        &[
            "--resolve",
            &resolve(otlp_port),
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &https(otlp_port, "/v1/traces"),
        ],
    );
    assert!(ok, "{answer}");
    let (ok, found, _) = curl(
        &cert,
        &[
            "--resolve",
            &resolve(http_port),
            &https(http_port, "/api/v2/traces/5b8efff798038103d269b633813fc60c"),
        ],
    );
    assert!(ok);
    assert!(found.contains("over tls"), "{found}");
    server.stop().await;

    // A key that is not a key is refused at start, naming the key's setting.
    std::fs::write(&key, "not a key").unwrap();
    let mut raw = tracelink::config::RawConfig::default();
    raw.storage.data_dir = common::data_path(&dir);
    raw.server.tls_cert = Some(cert);
    raw.server.tls_key = Some(key);
    let error = raw.validate().unwrap_err().to_string();
    assert!(error.contains("server.tls_key"), "{error}");
}
