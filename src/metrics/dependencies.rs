//! Dependency links for Jaeger's and Zipkin's dependency views: the service-graph edges
//! counted per minute (calls and failed calls per caller → callee), kept for a week in
//! memory, summed over the window a query asks for. Fed by the same edges as the
//! `traces_service_graph_*` metrics. Written out with the latency snapshot (and read back
//! at start-up), so a restart keeps the week.

use std::collections::{BTreeMap, HashMap};

/// Minutes kept: Zipkin Lens looks back 7 days at most by default.
const KEPT_MINUTES: u64 = 7 * 24 * 60;
/// Distinct links kept per minute; past it a minute's new links are not counted.
const MAX_LINKS_PER_MINUTE: usize = 10_000;

/// One caller → callee link over a window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub parent: String,
    pub child: String,
    pub calls: u64,
    pub errors: u64,
}

/// (parent, child) → (calls, errors) of one minute.
type MinuteLinks = HashMap<(String, String), (u64, u64)>;

#[derive(Default)]
pub struct Dependencies {
    /// Minute since the epoch → its links.
    minutes: BTreeMap<u64, MinuteLinks>,
}

/// One minute's link as the snapshot file holds it: minute, parent, child, calls, errors.
type SavedLink = (u64, String, String, u64, u64);

impl Dependencies {
    /// Every kept minute's links, as JSON.
    pub fn snapshot(&self) -> Vec<u8> {
        let links: Vec<SavedLink> = self
            .minutes
            .iter()
            .flat_map(|(minute, links)| {
                links.iter().map(|((parent, child), (calls, errors))| {
                    (*minute, parent.clone(), child.clone(), *calls, *errors)
                })
            })
            .collect();
        serde_json::to_vec(&links).unwrap_or_default()
    }

    /// The links of a [`Dependencies::snapshot`].
    pub fn restore(bytes: &[u8]) -> Result<Dependencies, String> {
        let links: Vec<SavedLink> =
            serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        let mut dependencies = Dependencies::default();
        for (minute, parent, child, calls, errors) in links {
            dependencies
                .minutes
                .entry(minute)
                .or_default()
                .insert((parent, child), (calls, errors));
        }
        Ok(dependencies)
    }

    /// Count `calls` from `parent` to `child` in `minute`, `errors` of them failed.
    pub fn record(&mut self, minute: u64, parent: &str, child: &str, calls: u64, errors: u64) {
        let links = self.minutes.entry(minute).or_default();
        let key = (parent.to_owned(), child.to_owned());
        if links.len() >= MAX_LINKS_PER_MINUTE && !links.contains_key(&key) {
            return;
        }
        let counts = links.entry(key).or_default();
        counts.0 += calls;
        counts.1 += errors;
        let oldest_kept = minute.saturating_sub(KEPT_MINUTES);
        while let Some((&oldest, _)) = self.minutes.first_key_value() {
            if oldest >= oldest_kept {
                break;
            }
            self.minutes.pop_first();
        }
    }

    /// Links of the minutes in `[end_ms - lookback_ms, end_ms]`, by parent then child.
    pub fn links(&self, end_ms: u64, lookback_ms: u64) -> Vec<Link> {
        let first = end_ms.saturating_sub(lookback_ms) / 60_000;
        let last = end_ms / 60_000;
        let mut summed: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
        for links in self.minutes.range(first..=last).map(|(_, links)| links) {
            for ((parent, child), (calls, errors)) in links {
                let entry = summed.entry((parent, child)).or_default();
                entry.0 += calls;
                entry.1 += errors;
            }
        }
        summed
            .into_iter()
            .map(|((parent, child), (calls, errors))| Link {
                parent: parent.to_owned(),
                child: child.to_owned(),
                calls,
                errors,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_restores_every_minute() {
        let mut dependencies = Dependencies::default();
        dependencies.record(100, "gateway", "orders", 1, 0);
        dependencies.record(100, "gateway", "orders", 1, 1);
        dependencies.record(103, "orders", "db:postgres", 1, 0);
        let restored = Dependencies::restore(&dependencies.snapshot()).unwrap();
        assert_eq!(
            restored.links(103 * 60_000, 10 * 60_000),
            dependencies.links(103 * 60_000, 10 * 60_000)
        );
        assert_eq!(restored.links(103 * 60_000, 10 * 60_000).len(), 2);
        assert!(Dependencies::restore(b"{").is_err());
    }

    #[test]
    fn links_sum_over_the_window_asked_and_old_minutes_go() {
        let mut dependencies = Dependencies::default();
        dependencies.record(100, "gateway", "orders", 1, 0);
        dependencies.record(101, "gateway", "orders", 1, 1);
        dependencies.record(105, "orders", "payments", 1, 0);
        let all = dependencies.links(105 * 60_000, 10 * 60_000);
        assert_eq!(
            all,
            vec![
                Link {
                    parent: "gateway".into(),
                    child: "orders".into(),
                    calls: 2,
                    errors: 1
                },
                Link {
                    parent: "orders".into(),
                    child: "payments".into(),
                    calls: 1,
                    errors: 0
                },
            ]
        );
        assert_eq!(dependencies.links(105 * 60_000, 60_000).len(), 1);
        dependencies.record(100 + KEPT_MINUTES + 2, "a", "b", 1, 0);
        assert_eq!(dependencies.links(101 * 60_000, 60_000 * 5), vec![]);
    }
}
