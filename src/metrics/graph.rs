//! Service graph metrics, as Tempo's metrics-generator makes them: a request is a client
//! (or producer) span in one service and the server (or consumer) span that is its child in
//! another. Whichever half arrives first waits, bounded in number and time, for the other.
//! Each pair counts in `traces_service_graph_request_total{client, server}` (and
//! `_failed_total` when either half failed) and observes both durations.
//!
//! Whole traces add the calls no client/server pair shows ([`trace_edges`], when a trace
//! leaves the head): Jaeger's rule, a parent span in service A with a child span in
//! service B is a call A → B (manual instrumentation without kinds, server-to-server
//! parents), and a client or producer span with no child calls the peer it names
//! (`peer.service`, `db.name`, `db.system`, `messaging.system`, `server.address`), a
//! virtual node as Tempo draws it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{Span, SpanId, TraceId};
use crate::{FastMap, FastSet};

/// Halves kept waiting at most (the oldest go first), and for at most this long: Tempo's
/// service-graph processor keeps 10,000 for 10 s by default.
const MAX_WAITING: usize = 50_000;
const MAX_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub client: String,
    pub server: String,
    pub failed: bool,
    pub client_seconds: f64,
    pub server_seconds: f64,
}

#[derive(Clone)]
struct Half {
    /// Shared with the span (no allocation per waiting half).
    service: Arc<str>,
    failed: bool,
    seconds: f64,
}

/// Halves waiting for their other half, keyed by (trace, client span id).
#[derive(Default)]
pub struct ServiceGraph {
    clients: FastMap<(TraceId, SpanId), Half>,
    servers: FastMap<(TraceId, SpanId), Half>,
    order: VecDeque<(Instant, bool, (TraceId, SpanId))>,
    pub expired: u64,
}

impl ServiceGraph {
    /// Feed one span; returns the edge it completes, if any.
    pub fn observe(&mut self, span: &Span, now: Instant) -> Option<Edge> {
        if !matches!(span.kind, 2..=5) {
            self.expire(now);
            return None;
        }
        let half = Half {
            service: span.service.clone(),
            failed: span.status_code == 2,
            seconds: span.duration_nanos as f64 / 1e9,
        };
        let edge = match span.kind {
            3 | 4 => {
                let key = (span.trace_id, span.span_id);
                match self.servers.remove(&key) {
                    Some(server) => Some(edge(half, server)),
                    None => {
                        self.clients.insert(key, half);
                        self.order.push_back((now, true, key));
                        None
                    }
                }
            }
            2 | 5 => {
                let parent = span.parent_span_id?;
                let key = (span.trace_id, parent);
                match self.clients.remove(&key) {
                    Some(client) => Some(edge(client, half)),
                    None => {
                        self.servers.insert(key, half);
                        self.order.push_back((now, false, key));
                        None
                    }
                }
            }
            _ => None,
        };
        self.expire(now);
        edge.filter(|edge| edge.client != edge.server)
    }

    fn expire(&mut self, now: Instant) {
        // `order` also holds halves already paired; bounding it bounds everything.
        while let Some((since, is_client, key)) = self.order.front().copied() {
            if now.duration_since(since) < MAX_WAIT && self.order.len() <= MAX_WAITING {
                break;
            }
            self.order.pop_front();
            let removed = if is_client {
                self.clients.remove(&key)
            } else {
                self.servers.remove(&key)
            };
            self.expired += u64::from(removed.is_some());
        }
    }
}

/// Attributes that name the peer of a client span whose callee sent no span, in order.
pub const PEER_KEYS: [&str; 5] = [
    "peer.service",
    "db.name",
    "db.system",
    "messaging.system",
    "server.address",
];

/// The calls of one trace (or fragment) that client/server pairing does not count:
/// parent and child in different services unless they are a client/producer span and its
/// server/consumer child, and client/producer spans without a child, to the peer
/// `peer_of` names.
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
            if parent.service != span.service && !paired {
                edges.push(Edge {
                    client: parent.service.to_string(),
                    server: span.service.to_string(),
                    failed: span.status_code == 2,
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

fn edge(client: Half, server: Half) -> Edge {
    Edge {
        failed: client.failed || server.failed,
        client: client.service.to_string(),
        server: server.service.to_string(),
        client_seconds: client.seconds,
        server_seconds: server.seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A client/server pair: counted at ack, not again here.
        let call = span("gateway", 6, Some(1), 3, 0);
        let served = span("inventory", 7, Some(6), 2, 0);
        let spans = [
            &gateway, &orders, &payments, &internal, &query, &call, &served,
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
            ]
        );
    }

    #[test]
    fn client_and_server_halves_pair_in_either_order() {
        let mut graph = ServiceGraph::default();
        let now = Instant::now();
        assert!(graph
            .observe(&span("gateway", 1, None, 3, 0), now)
            .is_none());
        let edge = graph
            .observe(&span("orders", 2, Some(1), 2, 2), now)
            .unwrap();
        assert_eq!(
            (edge.client.as_str(), edge.server.as_str(), edge.failed),
            ("gateway", "orders", true)
        );
        assert!(graph
            .observe(&span("pricing", 4, Some(3), 2, 0), now)
            .is_none());
        let edge = graph
            .observe(&span("orders", 3, Some(2), 3, 0), now)
            .unwrap();
        assert_eq!(
            (edge.client.as_str(), edge.server.as_str()),
            ("orders", "pricing")
        );
        // A half that never finds its other half expires.
        graph.observe(&span("lonely", 9, None, 3, 0), now);
        graph.observe(
            &span("gateway", 10, None, 1, 0),
            now + MAX_WAIT + Duration::from_secs(1),
        );
        assert_eq!(graph.expired, 1);
    }
}
