//! Service graph metrics, as Tempo's metrics-generator makes them: a request is a client
//! (or producer) span in one service and the server (or consumer) span that is its child in
//! another. Whichever half arrives first waits, bounded in number and time, for the other.
//! Each pair counts in `traces_service_graph_request_total{client, server}` (and
//! `_failed_total` when either half failed) and observes both durations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{Span, SpanId, TraceId};

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
    clients: HashMap<(TraceId, SpanId), Half>,
    servers: HashMap<(TraceId, SpanId), Half>,
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
