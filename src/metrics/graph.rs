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
use crate::{FastMap, FastSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub client: String,
    pub server: String,
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
pub fn trace_edges(spans: &[&Span], peer_of: impl Fn(&Span) -> Option<String>) -> Vec<Edge> {
    let by_id: FastMap<SpanId, &Span> = spans.iter().map(|span| (span.span_id, *span)).collect();
    let parents: FastSet<SpanId> = spans
        .iter()
        .filter_map(|span| span.parent_span_id)
        .collect();
    let seconds = |span: &Span| span.duration_nanos as f64 / 1e9;
    let mut edges = Vec::new();
    for span in spans {
        if let Some(parent) = span.parent_span_id.and_then(|parent| by_id.get(&parent)) {
            let paired = matches!(parent.kind, 3 | 4) && matches!(span.kind, 2 | 5);
            if parent.service != span.service {
                edges.push(Edge {
                    client: parent.service.to_string(),
                    server: span.service.to_string(),
                    // A pair failed when either half did.
                    failed: span.status_code == 2 || (paired && parent.status_code == 2),
                    client_seconds: seconds(parent),
                    server_seconds: seconds(span),
                });
            }
        }
        if matches!(span.kind, 3 | 4) && !parents.contains(&span.span_id) {
            if let Some(peer) = peer_of(span).filter(|peer| **peer != *span.service) {
                edges.push(Edge {
                    client: span.service.to_string(),
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
            (span.span_id == SpanId([5; 8])).then(|| "postgresql".to_owned())
        });
        let found: Vec<(&str, &str, bool)> = edges
            .iter()
            .map(|edge| (edge.client.as_str(), edge.server.as_str(), edge.failed))
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
}
