//! The latency histograms of the whole cluster: each node observes only the spans of the
//! partitions it owns, so the services view, `/api/metrics/latency`, the join's "is this
//! latency normal?" and `/api/diagnose` merge every node's windows (hdrhistograms add up
//! exactly) before quantiles are read off. One request per peer, on
//! `POST /internal/cluster/v1/latency`; without a cluster, this node's windows alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::metrics::dependencies::Link;
use crate::metrics::latency::{Minutes, OperationKey, Window, WireWindow};
use crate::metrics::Metrics;
use crate::store::Storage;

pub const LATENCY_ROUTE: &str = "/internal/cluster/v1/latency";

/// Which operations and minutes a question on latency is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyAsk {
    pub service: Option<String>,
    pub span_name: Option<String>,
    /// Only these operations (empty: every one of `service` and `span_name`).
    pub operations: BTreeSet<OperationKey>,
    /// One window of each operation per entry.
    pub minutes: Vec<Minutes>,
    /// Also the dependency links ending at this Unix time (ms) over a lookback (ms).
    pub links: Option<(u64, u64)>,
}

impl LatencyAsk {
    fn selects(&self, key: &OperationKey) -> bool {
        self.service
            .as_ref()
            .is_none_or(|service| *service == key.service)
            && self
                .span_name
                .as_ref()
                .is_none_or(|name| *name == key.span_name)
            && (self.operations.is_empty() || self.operations.contains(key))
    }
}

/// One node's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LatencyAnswer {
    pub operations: Vec<(OperationKey, Vec<WireWindow>)>,
    pub links: Vec<Link>,
}

/// Every node's windows merged.
#[derive(Debug, Default)]
pub struct Merged {
    /// Each operation's windows, in the order of [`LatencyAsk::minutes`].
    pub operations: BTreeMap<OperationKey, Vec<Window>>,
    /// Links summed over the nodes (when asked).
    pub links: Vec<Link>,
    /// Nodes that did not answer in time.
    pub missing: Vec<String>,
}

/// This node's windows, each sampled trace in them stored (or held) here.
fn local(
    storage: &Storage,
    metrics: &Metrics,
    ask: &LatencyAsk,
) -> (Vec<(OperationKey, Vec<Window>)>, Vec<Link>) {
    let mut operations =
        crate::lock(&metrics.latency).windows(|key| ask.selects(key), &ask.minutes);
    for (_, windows) in &mut operations {
        for window in windows {
            window.forget_samples(|trace_id| storage.head.is_dropped(trace_id));
        }
    }
    let links = ask
        .links
        .map(|(end_ms, lookback_ms)| crate::lock(&metrics.dependencies).links(end_ms, lookback_ms))
        .unwrap_or_default();
    (operations, links)
}

/// What this node answers a peer.
pub fn answer(storage: &Storage, metrics: &Metrics, ask: &LatencyAsk) -> LatencyAnswer {
    let (operations, links) = local(storage, metrics, ask);
    LatencyAnswer {
        operations: operations
            .into_iter()
            .map(|(key, windows)| (key, windows.iter().map(Window::to_wire).collect()))
            .collect(),
        links,
    }
}

/// This node's windows and, in a cluster, every other node's, merged. Blocking.
pub fn gather(storage: &Storage, metrics: &Metrics, ask: LatencyAsk) -> Merged {
    let ask = &ask;
    let (operations, links) = local(storage, metrics, ask);
    let mut merged = Merged {
        operations: operations.into_iter().collect(),
        links,
        missing: Vec::new(),
    };
    let Some(peers) = storage.peers.get() else {
        return merged;
    };
    let gathered = peers.post::<LatencyAnswer>(LATENCY_ROUTE, ask);
    merged.missing = gathered.missing;
    for answer in gathered.answers {
        merge(&mut merged, answer, ask.minutes.len());
    }
    merged
        .links
        .sort_by(|a, b| (&a.parent, &a.child).cmp(&(&b.parent, &b.child)));
    merged
}

/// [`gather`] on a blocking thread, for a request handler.
pub async fn gather_blocking(
    storage: Arc<Storage>,
    metrics: Arc<Metrics>,
    ask: LatencyAsk,
) -> Result<Merged, String> {
    tokio::task::spawn_blocking(move || gather(&storage, &metrics, ask))
        .await
        .map_err(|error| error.to_string())
}

/// Add a peer's answer into what is merged so far; a window that does not decode, or an
/// operation with the wrong number of windows, is left out.
fn merge(merged: &mut Merged, answer: LatencyAnswer, windows_asked: usize) {
    for (key, wire) in answer.operations {
        if wire.len() != windows_asked {
            continue;
        }
        let Some(windows) = wire
            .into_iter()
            .map(Window::from_wire)
            .collect::<Option<Vec<Window>>>()
        else {
            tracing::warn!(?key, "cluster: a peer's latency window does not decode");
            continue;
        };
        match merged.operations.get_mut(&key) {
            Some(ours) => {
                for (ours, theirs) in ours.iter_mut().zip(windows) {
                    ours.merge(theirs);
                }
            }
            None => {
                merged.operations.insert(key, windows);
            }
        }
    }
    for link in answer.links {
        match merged
            .links
            .iter_mut()
            .find(|ours| ours.parent == link.parent && ours.child == link.child)
        {
            Some(ours) => {
                ours.calls += link.calls;
                ours.errors += link.errors;
            }
            None => merged.links.push(link),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency::{LatencyHistograms, Observation};
    use crate::model::TraceId;

    fn key(service: &str) -> OperationKey {
        OperationKey {
            service: service.into(),
            span_name: "GET /".into(),
            span_kind: 2,
        }
    }

    fn node(durations_us: impl Iterator<Item = u64>, now: u64) -> LatencyHistograms {
        let mut histograms = LatencyHistograms::default();
        for (index, duration_us) in durations_us.enumerate() {
            let observation = Observation {
                duration_us,
                end_unix_nano: now * 60_000_000_000,
                error: duration_us % 7 == 0,
                trace_id: TraceId([(index % 200) as u8 + 1; 16]),
            };
            histograms.record(&key("shop"), &observation, now);
        }
        histograms
    }

    #[test]
    fn windows_of_several_nodes_merge_into_the_quantiles_of_all_their_calls() {
        let now = 29_000_000;
        // The calls split over two nodes, as partitions split them, and all on one.
        let durations = (1..=10_000u64).map(|n| n * 37 % 900_000 + 1);
        let evens = node(durations.clone().step_by(2), now);
        let odds = node(durations.clone().skip(1).step_by(2), now);
        let whole = node(durations, now);
        let minutes = [Minutes::last(Some(5), now), Minutes::All];
        let ask = LatencyAsk {
            minutes: minutes.to_vec(),
            ..LatencyAsk::default()
        };
        let mut merged = Merged {
            operations: evens
                .windows(|key| ask.selects(key), &minutes)
                .into_iter()
                .collect(),
            ..Merged::default()
        };
        // The odd node's windows travel as a peer sends them.
        let wire = serde_json::to_vec(&LatencyAnswer {
            operations: odds
                .windows(|_| true, &minutes)
                .into_iter()
                .map(|(key, windows)| (key, windows.iter().map(Window::to_wire).collect()))
                .collect(),
            links: vec![Link {
                parent: "a".into(),
                child: "b".into(),
                calls: 2,
                errors: 1,
            }],
        })
        .unwrap();
        merge(
            &mut merged,
            serde_json::from_slice(&wire).unwrap(),
            minutes.len(),
        );
        let merged_windows = merged.operations.remove(&key("shop")).unwrap();
        for (index, window) in merged_windows.into_iter().enumerate() {
            let expected = whole.windows(|_| true, &minutes)[0].1[index]
                .clone()
                .stats();
            let got = window.stats();
            assert_eq!(got.count, 10_000);
            assert_eq!(
                (got.count, got.errors, got.p50_ms, got.p99_ms, got.max_ms),
                (
                    expected.count,
                    expected.errors,
                    expected.p50_ms,
                    expected.p99_ms,
                    expected.max_ms
                )
            );
            assert_eq!(
                got.slowest.map(|s| s.duration_us),
                expected.slowest.map(|s| s.duration_us)
            );
        }
        assert_eq!(merged.links.len(), 1);
        // A peer answering the wrong number of windows is left out.
        let mut again = Merged::default();
        merge(
            &mut again,
            LatencyAnswer {
                operations: vec![(key("shop"), Vec::new())],
                links: Vec::new(),
            },
            2,
        );
        assert!(again.operations.is_empty());
    }
}
