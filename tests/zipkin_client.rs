//! Spans from a real Zipkin client (Debian's `python3-aiozipkin`, which `cargo xtask test`
//! installs) sent to tracelink's Zipkin endpoint, then found through Zipkin's own read
//! API as Zipkin Lens asks it: services, span names, remote services, the search with an
//! annotation query, and the trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::TestServer;

/// Debian's interpreter, where Debian's `python3-aiozipkin` lives (another `python3` may
/// come first on the PATH).
const PYTHON: &str = "/usr/bin/python3";

const CLIENT: &str = r#"
import asyncio, sys
import aiozipkin as az

async def main(url):
    endpoint = az.create_endpoint("Checkout", ipv4="127.0.0.1", port=8080)
    tracer = await az.create(url, endpoint, sample_rate=1.0)
    with tracer.new_trace(sampled=True) as span:
        span.name("place order")
        span.kind(az.SERVER)
        span.tag("http.route", "/orders")
        with tracer.new_child(span.context) as child:
            child.name("charge card")
            child.kind(az.CLIENT)
            child.remote_endpoint("payments")
            child.tag("error", "card declined")
            child.annotate("retrying")
        trace_id = span.context.trace_id
    await tracer.close()
    print(trace_id)

asyncio.run(main(sys.argv[1]))
"#;

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiozipkin_spans_are_found_by_zipkins_own_search() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let server = TestServer::start(&data, |_| {}).await;
    let script = dir.path().join("send.py");
    std::fs::write(&script, CLIENT).unwrap();
    let url = server.url("/api/v2/spans");
    let output = tokio::process::Command::new(PYTHON)
        .arg(&script)
        .arg(&url)
        .output()
        .await
        .expect("python3-aiozipkin is installed by `cargo xtask test`");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trace_id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");

    // The trace, then the names once its fragment is committed.
    let mut services = Value::Null;
    for _ in 0..100 {
        services = get(&server, "/api/v2/services").await.1;
        if services == json!(["checkout"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        services,
        json!(["checkout"]),
        "names are lower-case, as Zipkin's"
    );
    let (_, spans) = get(&server, &format!("/api/v2/trace/{trace_id}")).await;
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 2);
    let root = spans.iter().find(|span| span["kind"] == "SERVER").unwrap();
    let child = spans.iter().find(|span| span["kind"] == "CLIENT").unwrap();
    assert_eq!(root["name"], "place order");
    assert_eq!(root["localEndpoint"]["serviceName"], "checkout");
    assert_eq!(root["tags"]["http.route"], "/orders");
    assert_eq!(child["parentId"], root["id"]);
    assert_eq!(child["remoteEndpoint"]["serviceName"], "payments");
    assert_eq!(child["tags"]["error"], "card declined");
    assert_eq!(child["annotations"][0]["value"], "retrying");
    assert!(child["timestamp"].as_u64().unwrap() >= root["timestamp"].as_u64().unwrap());

    let (_, names) = get(&server, "/zipkin/api/v2/spans?serviceName=checkout").await;
    assert_eq!(names, json!(["charge card", "place order"]));
    let (_, remote) = get(&server, "/api/v2/remoteServices?serviceName=checkout").await;
    assert_eq!(remote, json!(["payments"]));
    let (status, found) = get(
        &server,
        "/zipkin/api/v2/traces?serviceName=checkout&annotationQuery=error&limit=10",
    )
    .await;
    assert_eq!(status, 200);
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0][0]["traceId"], trace_id.as_str());
    let (_, none) = get(
        &server,
        "/api/v2/traces?serviceName=checkout&annotationQuery=http.route%3D%2Fcart",
    )
    .await;
    assert_eq!(none, json!([]));
    server.stop().await;
}
