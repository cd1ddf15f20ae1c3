//! Tempo search as Grafana's Tempo data source calls it, over traces the OpenTelemetry
//! SDK made and its OTLP exporter sent: the builder's TraceQL, legacy tags, limit, spss
//! and the time range, answers decoded with the types Grafana's backend decodes them
//! into (64-bit numbers as strings), searchable at ack and after the commit, newest
//! first; bad queries get Tempo's plain-text 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Span as _, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::Context;
use serde::Deserialize;

use common::sdk::{export, service, six_checkouts, Checkouts};
use common::TestServer;

/// Grafana's `pkg/tsdb/tempo` search structs: strings where Tempo's jsonpb writes 64-bit
/// integers, numbers for `durationMs` and `matched`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchResponse {
    traces: Vec<TraceSearchMetadata>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceSearchMetadata {
    #[serde(rename = "traceID")]
    trace_id: String,
    root_service_name: String,
    root_trace_name: Option<String>,
    start_time_unix_nano: String,
    duration_ms: Option<u32>,
    span_set: Option<SpanSet>,
    span_sets: Vec<SpanSet>,
    service_stats: HashMap<String, ServiceStats>,
}

#[derive(Debug, Deserialize)]
struct SpanSet {
    spans: Vec<SearchSpan>,
    matched: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchSpan {
    #[serde(rename = "spanID")]
    span_id: String,
    name: String,
    start_time_unix_nano: String,
    duration_nanos: String,
    #[serde(default)]
    attributes: Vec<Attribute>,
}

#[derive(Debug, Deserialize)]
struct Attribute {
    key: String,
    value: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStats {
    span_count: u32,
    #[serde(default)]
    error_count: u32,
}

async fn search(server: &TestServer, params: &[(&str, &str)]) -> (reqwest::StatusCode, String) {
    let response = reqwest::Client::new()
        .get(server.url("/api/search"))
        .header("Accept", "application/json")
        .query(params)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn found(server: &TestServer, params: &[(&str, &str)]) -> SearchResponse {
    let (status, body) = search(server, params).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

fn ids(response: &SearchResponse) -> Vec<String> {
    response
        .traces
        .iter()
        .map(|trace| trace.trace_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_finds_sdk_traces_newest_first_at_ack_and_after_commit() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let server = TestServer::start(&data, |raw| {
        // Traces stay in the head until asked to leave: the first searches see only it.
        raw.storage.trace_idle_ms = 60_000;
    })
    .await;
    // On a whole second, so that the range in seconds below cuts between traces.
    let Checkouts {
        gateway,
        payments,
        trace_ids,
        base,
        ..
    } = six_checkouts(&server).await;
    let failed_newest_first = vec![
        trace_ids[5].clone(),
        trace_ids[3].clone(),
        trace_ids[1].clone(),
    ];

    // Grafana's builder: service, status, duration.
    let builder = r#"{resource.service.name="payments" && status=error && duration>100ms}"#;
    let response = found(&server, &[("q", builder), ("limit", "20"), ("spss", "3")]).await;
    assert_eq!(
        ids(&response),
        failed_newest_first,
        "searchable at ack, newest first"
    );
    let newest = &response.traces[0];
    assert_eq!(newest.root_service_name, "gateway");
    assert_eq!(newest.root_trace_name.as_deref(), Some("POST /checkout"));
    assert_eq!(newest.duration_ms, Some(620));
    let started = base + Duration::from_secs(5);
    assert_eq!(
        newest.start_time_unix_nano,
        started
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            .to_string()
    );
    let span_set = newest.span_set.as_ref().unwrap();
    assert_eq!(span_set.matched, 1);
    assert_eq!(span_set.spans[0].name, "Charge");
    assert_eq!(span_set.spans[0].span_id.len(), 16);
    assert_eq!(span_set.spans[0].duration_nanos, "600000000");
    assert!(span_set.spans[0]
        .start_time_unix_nano
        .parse::<u64>()
        .is_ok());
    let attributes: HashMap<&str, &HashMap<String, serde_json::Value>> = span_set.spans[0]
        .attributes
        .iter()
        .map(|attribute| (attribute.key.as_str(), &attribute.value))
        .collect();
    assert_eq!(attributes["service.name"]["stringValue"], "payments");
    assert_eq!(attributes["status"]["stringValue"], "error");
    assert_eq!(newest.span_sets.len(), 1);
    assert_eq!(newest.service_stats["payments"].error_count, 1);
    assert_eq!(newest.service_stats["gateway"].span_count, 2);

    // Stop (every trace leaves the head and is committed) and start again: the same
    // answers now come from the index.
    server.stop().await;
    let server = TestServer::start(&data, |_| {}).await;
    let response = found(&server, &[("q", builder)]).await;
    assert_eq!(ids(&response), failed_newest_first, "from the index");

    // limit, spss, structural operators, legacy tags, the time range.
    let response = found(&server, &[("q", builder), ("limit", "2")]).await;
    assert_eq!(ids(&response), failed_newest_first[..2].to_vec());
    let response = found(&server, &[("q", "{}"), ("spss", "2")]).await;
    assert_eq!(response.traces.len(), 6);
    assert!(response.traces.iter().all(|trace| {
        let set = trace.span_set.as_ref().unwrap();
        set.matched == 3 && set.spans.len() == 2
    }));
    let response = found(
        &server,
        &[(
            "q",
            r#"{resource.service.name="gateway" && kind=client} > {status=error}"#,
        )],
    )
    .await;
    assert_eq!(ids(&response), failed_newest_first);
    let response = found(
        &server,
        &[("tags", "service.name=payments http.status_code=500")],
    )
    .await;
    assert_eq!(ids(&response), failed_newest_first);
    let response = found(
        &server,
        &[("q", "{ } | count() > 2"), ("minDuration", "400ms")],
    )
    .await;
    assert_eq!(
        ids(&response).len(),
        3,
        "traces 3, 4 and 5 last 420 ms or more"
    );
    let seconds = |offset: u64| {
        (base + Duration::from_secs(offset))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string()
    };
    let (from, to) = (seconds(2), seconds(3));
    let response = found(&server, &[("q", "{}"), ("start", &from), ("end", &to)]).await;
    assert_eq!(
        ids(&response),
        vec![trace_ids[3].clone(), trace_ids[2].clone()],
        "the traces running between the 2nd and the 4th second"
    );

    // Tag names and values, as the builder's autocompletion asks for them.
    let get = |path: String| {
        let url = server.url(&path);
        async move {
            let response = reqwest::get(url).await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let tags = get("/api/v2/search/tags".into()).await;
    let scope = |name: &str| -> Vec<String> {
        tags["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|scope| scope["name"] == name)
            .map(|scope| serde_json::from_value(scope["tags"].clone()).unwrap())
            .unwrap_or_default()
    };
    assert!(scope("resource").contains(&"service.name".to_owned()));
    assert_eq!(
        scope("span"),
        vec!["app/version", "http.route", "http.status_code"]
    );
    assert!(scope("intrinsic").contains(&"status".to_owned()));
    let v1 = get("/api/search/tags".into()).await;
    assert!(v1["tagNames"]
        .as_array()
        .unwrap()
        .contains(&"http.route".into()));
    let services = get("/api/v2/search/tag/resource.service.name/values".into()).await;
    assert_eq!(
        services["tagValues"],
        serde_json::json!([{"type": "string", "value": "gateway"}, {"type": "string", "value": "payments"}])
    );
    let codes = get("/api/v2/search/tag/span.http.status_code/values".into()).await;
    assert_eq!(
        codes["tagValues"],
        serde_json::json!([{"type": "int", "value": "200"}, {"type": "int", "value": "500"}])
    );
    let narrowed = reqwest::Client::new()
        .get(server.url("/api/v2/search/tag/span.http.status_code/values"))
        .query(&[("q", r#"{resource.service.name="payments" && status=error}"#)])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        narrowed["tagValues"],
        serde_json::json!([{"type": "int", "value": "500"}])
    );
    // The data-source proxy decodes Grafana's double encoding once: `/` arrives as %2F.
    let version = get("/api/v2/search/tag/span.app%2Fversion/values".into()).await;
    assert_eq!(
        version["tagValues"],
        serde_json::json!([{"type": "string", "value": "1.2"}])
    );
    let statuses = get("/api/v2/search/tag/status/values".into()).await;
    assert!(statuses["tagValues"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"type": "keyword", "value": "error"})));
    let v1_values = get("/api/search/tag/service.name/values".into()).await;
    assert_eq!(
        v1_values["tagValues"],
        serde_json::json!(["gateway", "payments"])
    );
    let capped = get("/api/v2/search/tag/resource.service.name/values?limit=1".into()).await;
    assert_eq!(capped["tagValues"].as_array().unwrap().len(), 1);
    assert_eq!(capped["truncated"], true);

    // Jaeger, as Grafana's Jaeger data source and Jaeger UI ask.
    let services = get("/jaeger/api/services".into()).await;
    assert_eq!(services["data"], serde_json::json!(["gateway", "payments"]));
    assert_eq!(services["total"], 2);
    assert_eq!(services["errors"], serde_json::Value::Null);
    let operations = get("/jaeger/api/services/gateway/operations".into()).await;
    assert_eq!(
        operations["data"],
        serde_json::json!(["POST /checkout", "charge"])
    );
    let client_ops = get("/jaeger/api/operations?service=gateway&spanKind=client".into()).await;
    assert_eq!(
        client_ops["data"],
        serde_json::json!([{"name": "charge", "spanKind": "client"}])
    );
    let v3_services = get("/jaeger/api/v3/services".into()).await;
    assert_eq!(
        v3_services["services"],
        serde_json::json!(["gateway", "payments"])
    );
    let jaeger = reqwest::Client::new()
        .get(server.url("/jaeger/api/traces"))
        .query(&[
            ("service", "payments"),
            ("tags", r#"{"http.status_code":"500"}"#),
            ("limit", "20"),
        ])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let traces = jaeger["data"].as_array().unwrap();
    let found: Vec<&str> = traces
        .iter()
        .map(|t| t["traceID"].as_str().unwrap())
        .collect();
    assert_eq!(
        found,
        failed_newest_first
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let newest = &traces[0];
    assert_eq!(newest["processes"].as_object().unwrap().len(), 2);
    let spans = newest["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 3);
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|span| span["operationName"] == name)
            .unwrap()
    };
    let (charge, client) = (by_name("Charge"), by_name("charge"));
    assert_eq!(charge["references"][0]["refType"], "CHILD_OF");
    assert_eq!(charge["references"][0]["spanID"], client["spanID"]);
    assert_eq!(charge["duration"], 600_000, "µs");
    assert!(charge["startTime"].as_u64().unwrap() > 1_000_000_000_000_000);
    let charge_tags = charge["tags"].as_array().unwrap();
    assert!(
        charge_tags.contains(&serde_json::json!({"key": "error", "type": "bool", "value": true}))
    );
    assert!(charge_tags
        .contains(&serde_json::json!({"key": "http.status_code", "type": "int64", "value": 500})));
    assert!(charge_tags
        .contains(&serde_json::json!({"key": "span.kind", "type": "string", "value": "server"})));
    let process = &newest["processes"][charge["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "payments");
    let by_id = get(format!("/jaeger/api/traces/{}", trace_ids[2])).await;
    assert_eq!(by_id["data"][0]["traceID"], trace_ids[2].as_str());
    let missing = reqwest::get(server.url("/jaeger/api/traces?limit=3"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let missing: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(missing["errors"][0]["code"], 400);
    let rfc3339 = |offset: u64| {
        chrono::DateTime::<chrono::Utc>::from(base + Duration::from_secs(offset))
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    };
    let v3 = reqwest::Client::new()
        .get(server.url("/jaeger/api/v3/traces"))
        .query(&[
            ("query.service_name", "payments".to_owned()),
            ("query.start_time_min", rfc3339(0)),
            ("query.start_time_max", rfc3339(60)),
            (
                "query.attributes",
                r#"{"http.status_code":"500"}"#.to_owned(),
            ),
        ])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let batches = v3["result"]["resourceSpans"].as_array().unwrap();
    assert_eq!(batches.len(), 6, "three traces, two resources each");
    let summaries = reqwest::Client::new()
        .get(server.url("/jaeger/api/v3/trace-summaries"))
        .query(&[
            ("query.serviceName", "payments".to_owned()),
            ("query.startTimeMin", rfc3339(0)),
            ("query.startTimeMax", rfc3339(60)),
            (
                "query.attributes",
                r#"{"http.status_code":"500"}"#.to_owned(),
            ),
            ("query.searchDepth", "2".to_owned()),
        ])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let summaries = summaries["summaries"].as_array().unwrap();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0]["traceId"], failed_newest_first[0].as_str());
    assert_eq!(summaries[0]["rootServiceName"], "gateway");
    assert_eq!(summaries[0]["rootOperationName"], "POST /checkout");
    assert_eq!(summaries[0]["spanCount"], 3);
    assert_eq!(summaries[0]["errorSpanCount"], 1);
    assert_eq!(summaries[0]["orphanSpanCount"], 0);
    let (min, max) = (
        summaries[0]["minStartTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        summaries[0]["maxEndTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
    );
    assert_eq!(max - min, 620_000_000);
    assert_eq!(
        summaries[0]["services"],
        serde_json::json!([
            {"name": "gateway", "spanCount": 2, "errorSpanCount": 0},
            {"name": "payments", "spanCount": 1, "errorSpanCount": 1}
        ])
    );
    let none = reqwest::Client::new()
        .get(server.url("/jaeger/api/v3/traces"))
        .query(&[
            ("query.service_name", "nobody".to_owned()),
            ("query.start_time_min", rfc3339(0)),
            ("query.start_time_max", rfc3339(60)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    let none: serde_json::Value = none.json().await.unwrap();
    assert_eq!(
        none,
        serde_json::json!({"error": {"httpCode": 404, "message": "No traces found"}})
    );

    // Zipkin's read API, as Lens asks (lower-case names, µs, ms windows).
    let zipkin_services = get("/api/v2/services".into()).await;
    assert_eq!(zipkin_services, serde_json::json!(["gateway", "payments"]));
    let zipkin_spans = get("/zipkin/api/v2/spans?serviceName=Gateway".into()).await;
    assert_eq!(
        zipkin_spans,
        serde_json::json!(["charge", "post /checkout"])
    );
    let end_ms = (base + Duration::from_secs(60))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let zipkin = reqwest::Client::new()
        .get(server.url("/zipkin/api/v2/traces"))
        .query(&[
            ("serviceName", "payments"),
            ("annotationQuery", "error and http.status_code=500"),
            ("endTs", end_ms.as_str()),
            ("lookback", "120000"),
            ("limit", "10"),
        ])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let zipkin_traces = zipkin.as_array().unwrap();
    assert_eq!(zipkin_traces.len(), 3);
    let first = zipkin_traces[0].as_array().unwrap();
    assert_eq!(first[0]["traceId"], failed_newest_first[0].as_str());
    assert_eq!(first[0]["name"], "post /checkout");
    assert_eq!(first[0]["kind"], "SERVER");
    let charge = first.iter().find(|span| span["name"] == "charge").unwrap();
    let server_span = first
        .iter()
        .find(|span| span["kind"] == "SERVER" && span["localEndpoint"]["serviceName"] == "payments")
        .unwrap();
    assert_eq!(server_span["parentId"], charge["id"]);
    assert_eq!(server_span["duration"], 600_000);
    assert_eq!(server_span["tags"]["error"], "card declined");
    assert_eq!(server_span["tags"]["http.status_code"], "500");
    let older = reqwest::Client::new()
        .get(server.url("/api/v2/traces"))
        .query(&[
            ("serviceName", "payments"),
            ("endTs", end_ms.as_str()),
            ("lookback", "1000"),
        ])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        older,
        serde_json::json!([]),
        "none in the last second before endTs"
    );
    let one = get(format!("/api/v2/trace/{}", trace_ids[0])).await;
    assert_eq!(one.as_array().unwrap().len(), 3);
    let many = get(format!(
        "/api/v2/traceMany?traceIds={},{}",
        trace_ids[0], trace_ids[1]
    ))
    .await;
    assert_eq!(many.as_array().unwrap().len(), 2);
    let lens = get("/zipkin/config.json".into()).await;
    assert_eq!(lens["queryLimit"], 10);
    assert_eq!(lens["searchEnabled"], true);

    // A trace made without span kinds (the seed's own tracer) still draws its calls in
    // the service graph once it leaves the head: gateway → orders → payments.
    let orders = service("orders");
    {
        let at = |ms: u64| SystemTime::now() + Duration::from_millis(ms);
        let gateway_tracer = gateway.provider.tracer("manual");
        let orders_tracer = orders.provider.tracer("manual");
        let payments_tracer = payments.provider.tracer("manual");
        let root = gateway_tracer
            .span_builder("checkout")
            .with_start_time(at(0))
            .start(&gateway_tracer);
        let root_cx = Context::current_with_span(root);
        let place = orders_tracer
            .span_builder("place order")
            .with_start_time(at(1))
            .start_with_context(&orders_tracer, &root_cx);
        let place_cx = root_cx.with_span(place);
        let mut charge = payments_tracer
            .span_builder("charge card")
            .with_start_time(at(2))
            .start_with_context(&payments_tracer, &place_cx);
        charge.end_with_timestamp(at(30));
        place_cx.span().end_with_timestamp(at(40));
        root_cx.span().end_with_timestamp(at(50));
    }
    export(&server, &[&gateway, &orders, &payments]).await;
    let edge = r#"traces_service_graph_request_total{client="orders",server="payments"} 1"#;
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(server.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(edge) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(edge), "{metrics}");
    assert!(metrics
        .contains(r#"traces_service_graph_request_total{client="gateway",server="orders"} 1"#));
    // The same edges in Jaeger's and Zipkin's dependency views.
    let jaeger_links = get("/jaeger/api/dependencies".into()).await;
    let links = jaeger_links["data"].as_array().unwrap();
    assert!(links
        .contains(&serde_json::json!({"parent": "orders", "child": "payments", "callCount": 1})));
    assert!(links
        .contains(&serde_json::json!({"parent": "gateway", "child": "orders", "callCount": 1})));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let zipkin_links = get(format!(
        "/api/v2/dependencies?endTs={now_ms}&lookback=3600000"
    ))
    .await;
    assert!(zipkin_links.as_array().unwrap().contains(
        &serde_json::json!({"parent": "orders", "child": "payments", "callCount": 1, "errorCount": 0})
    ));

    // Tempo's errors: plain text, 400.
    for (params, expected) in [
        (
            vec![("q", r#"{ .a = }"#)],
            "invalid TraceQL query: parse error at line 1, col 8: ",
        ),
        (
            vec![("q", "{}"), ("tags", "a=b")],
            "invalid request: can't specify tags and q in the same query",
        ),
        (
            vec![("q", "{}"), ("limit", "0")],
            "invalid limit: must be a positive number",
        ),
        (
            vec![("q", "{}"), ("spss", "101")],
            "spans per span set exceeds 100. received 101",
        ),
        (
            vec![("q", "{}"), ("start", "20"), ("end", "10")],
            "http parameter start must be before end. received start=20 end=10",
        ),
        (
            vec![("q", r#"{ name =~ "(" }"#)],
            "invalid TraceQL query: invalid regex",
        ),
    ] {
        let (status, body) = search(&server, &params).await;
        assert_eq!(status, 400, "{params:?}: {body}");
        assert!(body.starts_with(expected), "{params:?}: {body}");
    }
    server.stop().await;

    // The dependency links outlive a restart (written with the latency snapshot).
    let server = TestServer::start(&data, |_| {}).await;
    let jaeger_links = reqwest::get(server.url("/jaeger/api/dependencies"))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(
        jaeger_links["data"].as_array().unwrap().contains(
            &serde_json::json!({"parent": "orders", "child": "payments", "callCount": 1})
        ),
        "{jaeger_links}"
    );
    server.stop().await;
}
