//! Service graph metrics, as Tempo's metrics-generator makes them, from whole traces: the
//! head assembles each trace, and when it leaves (kept by sampling or not) its calls are
//! counted ([`trace_edges`]). A request is a client (or producer) span in one service and
//! the server (or consumer) span that is its child in another; each such pair counts in
//! `traces_service_graph_request_total{client, server}` (and `_failed_total` when either
//! half failed) and observes both durations. Pairing a trace whole needs no halves kept
//! waiting for each other (the processor's map of Tempo's kind, which a stream of client
//! spans without a server child, calls to a database, keeps churning at its bound); a
//! pair split over two fragments of a trace (a late span) is not counted as a pair.
//!
//! Whole traces also give the calls no client/server pair shows: Jaeger's rule, a parent
//! span in service A with a child span in service B is a call A → B (manual
//! instrumentation without kinds, server-to-server parents), and a client or producer span
//! with no child calls the peer it names (`peer.service`, `db.name`, `db.system`,
//! `messaging.system`, `server.address`), a virtual node as Tempo draws it.

use crate::model::{Span, SpanId};

/// One call, borrowed from the spans it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge<'a> {
    pub client: &'a str,
    pub server: &'a str,
    pub failed: bool,
    pub client_seconds: f64,
    pub server_seconds: f64,
}

/// Attributes that name the peer of a client span whose callee sent no span, in order.
pub const PEER_KEYS: [&str; 5] = [
    "peer.service",
    "db.name",
    "db.system",
    "messaging.system",
    "server.address",
];

/// The calls of one trace (or fragment): a client/producer span and its server/consumer
/// child in another service, a parent and its child in different services otherwise,
/// and client/producer spans without a child, to the peer `peer_of` names.
///
/// Runs for every trace that leaves the head, so the spans are looked up in sorted
/// vectors (two allocations a trace) rather than hash tables.
pub fn trace_edges<'a>(
    spans: &[&'a Span],
    peer_of: impl Fn(&'a Span) -> Option<&'a str>,
) -> Vec<Edge<'a>> {
    let mut by_id: Vec<(SpanId, &'a Span)> =
        spans.iter().map(|span| (span.span_id, *span)).collect();
    by_id.sort_unstable_by_key(|(id, _)| *id);
    let mut parents: Vec<SpanId> = spans
        .iter()
        .filter_map(|span| span.parent_span_id)
        .collect();
    parents.sort_unstable();
    let find = |id: &SpanId| {
        by_id
            .binary_search_by_key(id, |(id, _)| *id)
            .ok()
            .map(|at| by_id[at].1)
    };
    let seconds = |span: &Span| span.duration_nanos as f64 / 1e9;
    let mut edges = Vec::new();
    for &span in spans {
        if let Some(parent) = span.parent_span_id.as_ref().and_then(find) {
            let paired = matches!(parent.kind, 3 | 4) && matches!(span.kind, 2 | 5);
            if parent.service != span.service {
                edges.push(Edge {
                    client: &parent.service,
                    server: &span.service,
                    // A pair failed when either half did.
                    failed: span.status_code == 2 || (paired && parent.status_code == 2),
                    client_seconds: seconds(parent),
                    server_seconds: seconds(span),
                });
            }
        }
        if matches!(span.kind, 3 | 4) && parents.binary_search(&span.span_id).is_err() {
            if let Some(peer) = peer_of(span).filter(|peer| *peer != &*span.service) {
                edges.push(Edge {
                    client: &span.service,
                    server: peer,
                    failed: span.status_code == 2,
                    client_seconds: seconds(span),
                    server_seconds: seconds(span),
                });
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TraceId;
    use std::sync::Arc;

    fn span(service: &str, id: u8, parent: Option<u8>, kind: i32, status: i32) -> Span {
        Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|parent| SpanId([parent; 8])),
            service: service.into(),
            name: "op".into(),
            kind,
            status_code: status,
            start_time_unix_nano: 0,
            duration_nanos: 2_000_000,
            has_exception: false,
            randomness: None,
            payload: bytes::Bytes::new(),
            envelope: Arc::new(crate::model::Envelope::new(None, "", None, "")),
        }
    }

    #[test]
    fn whole_traces_add_the_calls_pairs_miss() {
        // The seed's hand-made tracer: no kinds at all.
        let gateway = span("gateway", 1, None, 0, 0);
        let orders = span("orders", 2, Some(1), 0, 0);
        let payments = span("payments", 3, Some(2), 0, 2);
        let internal = span("payments", 4, Some(3), 1, 0);
        // A client span whose callee sent nothing: a database.
        let query = span("orders", 5, Some(2), 3, 0);
        // A client/server pair, the client failed.
        let call = span("gateway", 6, Some(1), 3, 2);
        let served = span("inventory", 7, Some(6), 2, 0);
        // A pair within one service is no call between services.
        let inner = span("inventory", 8, Some(7), 3, 0);
        let inner_served = span("inventory", 10, Some(8), 2, 0);
        let spans = [
            &gateway,
            &orders,
            &payments,
            &internal,
            &query,
            &call,
            &served,
            &inner,
            &inner_served,
        ];
        let edges = trace_edges(&spans, |span| {
            (span.span_id == SpanId([5; 8])).then_some("postgresql")
        });
        let found: Vec<(&str, &str, bool)> = edges
            .iter()
            .map(|edge| (edge.client, edge.server, edge.failed))
            .collect();
        assert_eq!(
            found,
            vec![
                ("gateway", "orders", false),
                ("orders", "payments", true),
                ("orders", "postgresql", false),
                ("gateway", "inventory", true),
            ]
        );
        let pair = &edges[3];
        assert_eq!((pair.client_seconds, pair.server_seconds), (0.002, 0.002));
    }

    #[test]
    fn calls_tallied_over_many_traces_count_each_call() {
        let metrics = crate::metrics::Metrics::new(vec![0.001, 0.01, 0.1], 100, true);
        let mut tally = crate::metrics::EdgeTally::default();
        // Three traces of the same call, the second failed on the server, and one call to
        // a database the client names.
        for status in [0, 2, 0] {
            let client = span("gateway", 1, None, 3, 0);
            let server = span("orders", 2, Some(1), 2, status);
            metrics.tally_trace_edges(&mut tally, &[&client, &server]);
        }
        let mut query = span("orders", 3, None, 3, 0);
        query.payload = {
            use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
            use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
            use prost::Message;
            let attribute = KeyValue {
                key: "db.system".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("postgresql".into())),
                }),
                ..Default::default()
            };
            let resource_spans = ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                        attributes: vec![attribute],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            resource_spans.encode_to_vec().into()
        };
        metrics.tally_trace_edges(&mut tally, &[&query]);
        metrics.record_edges(tally);

        let text = metrics.render_prometheus_text();
        for line in [
            r#"traces_service_graph_request_total{client="gateway",server="orders"} 3"#,
            r#"traces_service_graph_request_failed_total{client="gateway",server="orders"} 1"#,
            r#"traces_service_graph_request_server_seconds_count{client="gateway",server="orders"} 3"#,
            r#"traces_service_graph_request_client_seconds_count{client="gateway",server="orders"} 3"#,
            r#"traces_service_graph_request_total{client="orders",server="postgresql"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"traces_service_graph_request_failed_total{client="orders""#));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let links: Vec<(String, String, u64, u64)> = crate::lock(&metrics.dependencies)
            .links(now_ms, 120_000)
            .into_iter()
            .map(|link| (link.parent, link.child, link.calls, link.errors))
            .collect();
        assert_eq!(
            links,
            vec![
                ("gateway".into(), "orders".into(), 3, 1),
                ("orders".into(), "postgresql".into(), 1, 0),
            ]
        );
    }
}
