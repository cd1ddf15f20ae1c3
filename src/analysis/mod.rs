//! Trace analysis, pure: from the spans of one trace to its tree, self times, critical
//! path, slowest span, root cause and findings (the questions of "Finding Problems in
//! Traces": latency, errors, dependencies, concurrency).
//!
//! Called by the join API on a blocking thread. Algorithms follow the established tools:
//! self time = duration minus the union of children clipped to the parent; the critical
//! path is Jaeger UI's walk (last-finishing child first); the root cause is where the
//! failure that climbed highest in the tree started (an error its caller survived was
//! handled, and causes nothing else); N+1 and sequential-call thresholds are Sentry's. Nothing here does I/O; what is normal for each operation is passed in by the
//! caller.

mod findings;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

pub use findings::{failure_message, Finding};

/// One span as analysis needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanInput {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    /// OTLP kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// OTLP status: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub events: Vec<serde_json::Value>,
}

impl SpanInput {
    fn duration(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    pub fn is_error(&self) -> bool {
        self.status_code == 2
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalyzedSpan {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub status_message: String,
    pub start_time_unix_nano: u64,
    pub duration_ms: f64,
    pub self_time_ms: f64,
    pub depth: usize,
    pub critical: bool,
    /// Error that started here (the root cause) or came up from a child.
    pub error_role: Option<&'static str>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub events: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlowestSpan {
    pub span_id: String,
    pub self_time_ms: f64,
    pub percent_of_trace: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RootCause {
    pub span_id: String,
    pub service: String,
    pub name: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Analysis {
    pub slowest_span: Option<SlowestSpan>,
    pub root_cause: Option<RootCause>,
    pub critical_path: Vec<String>,
    pub findings: Vec<Finding>,
    pub errors_per_service: BTreeMap<String, usize>,
    /// Time spent in each downstream service, as seen from its callers (ms).
    pub downstream_ms: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalyzedTrace {
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    pub start_time_unix_nano: u64,
    pub duration_ms: f64,
    pub span_count: usize,
    pub services: Vec<String>,
    pub error_count: usize,
    /// Depth-first, children by start time: the order the tree is drawn in.
    pub spans: Vec<AnalyzedSpan>,
    pub analysis: Analysis,
}

/// What is usual for a span's operation: its calls before this trace's minute, their
/// median and median absolute deviation (robust to the outliers an incident adds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normal {
    pub count: u64,
    pub median_ms: f64,
    pub mad_ms: f64,
}

/// Calls of history below which no verdict on a span's latency is given.
pub const MIN_HISTORY: u64 = 20;

impl Normal {
    /// Whether a call of `duration_ms` is slow for this operation: at least 5 ms and half
    /// again beyond the median, and (when calls vary) more than five robust standard
    /// deviations (1.4826 × MAD) above it. `None`: not enough history to say.
    pub fn is_slow(&self, duration_ms: f64) -> Option<bool> {
        if self.count < MIN_HISTORY {
            return None;
        }
        let excess = duration_ms - self.median_ms;
        let spread = 1.4826 * self.mad_ms;
        Some(
            excess >= 5.0
                && duration_ms >= 1.5 * self.median_ms
                && (spread == 0.0 || excess / spread > 5.0),
        )
    }
}

/// What the caller knows of each span's operation (looked up by span id).
pub type NormalOf<'a> = &'a dyn Fn(&SpanInput) -> Option<Normal>;

/// HTTP server spans named by their method alone (as current OpenTelemetry HTTP
/// instrumentation names them) with their route or path: `POST /checkout`.
pub fn display_name(span: &SpanInput) -> String {
    const METHODS: [&str; 10] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "HTTP",
    ];
    if METHODS.contains(&span.name.as_str()) {
        for key in ["http.route", "url.path", "http.target"] {
            if let Some(path) = span.attributes.get(key).and_then(|value| value.as_str()) {
                return format!("{} {path}", span.name);
            }
        }
    }
    span.name.clone()
}

/// The OTLP span kind's name, as the analysis, the diagnosis and the page show it.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// The OTLP span kind of a name [`kind_name`] gives.
pub fn kind_code(name: &str) -> i32 {
    match name {
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => 0,
    }
}

fn status_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

pub(crate) fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// The tree: children of each span (sorted by start), roots, and depth-first order.
pub(crate) struct Tree<'a> {
    pub spans: &'a [SpanInput],
    pub children: HashMap<usize, Vec<usize>>,
    pub parent: HashMap<usize, usize>,
    pub roots: Vec<usize>,
}

impl<'a> Tree<'a> {
    fn new(spans: &'a [SpanInput]) -> Tree<'a> {
        let by_id: HashMap<&str, usize> = spans
            .iter()
            .enumerate()
            .map(|(index, span)| (span.span_id.as_str(), index))
            .collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut parent = HashMap::new();
        let mut roots = Vec::new();
        for (index, span) in spans.iter().enumerate() {
            match span.parent_span_id.as_deref().and_then(|id| by_id.get(id)) {
                Some(&parent_index) if parent_index != index => {
                    children.entry(parent_index).or_default().push(index);
                    parent.insert(index, parent_index);
                }
                _ => roots.push(index),
            }
        }
        for list in children.values_mut() {
            list.sort_by_key(|index| {
                (spans[*index].start_unix_nano, spans[*index].span_id.clone())
            });
        }
        roots.sort_by_key(|index| {
            (
                spans[*index].start_unix_nano,
                std::cmp::Reverse(spans[*index].duration()),
            )
        });
        Tree {
            spans,
            children,
            parent,
            roots,
        }
    }

    pub fn children(&self, index: usize) -> &[usize] {
        self.children.get(&index).map_or(&[], Vec::as_slice)
    }

    /// Depth-first order with depths.
    fn walk(&self) -> Vec<(usize, usize)> {
        let mut order = Vec::with_capacity(self.spans.len());
        let mut stack: Vec<(usize, usize)> =
            self.roots.iter().rev().map(|root| (*root, 0)).collect();
        while let Some((index, depth)) = stack.pop() {
            order.push((index, depth));
            for child in self.children(index).iter().rev() {
                stack.push((*child, depth + 1));
            }
        }
        order
    }
}

/// Duration minus the union of the children's intervals, each clipped to the parent.
fn self_time(tree: &Tree, index: usize) -> u64 {
    let span = &tree.spans[index];
    let (start, end) = (
        span.start_unix_nano,
        span.end_unix_nano.max(span.start_unix_nano),
    );
    let mut intervals: Vec<(u64, u64)> = tree
        .children(index)
        .iter()
        .map(|child| {
            let child = &tree.spans[*child];
            (
                child.start_unix_nano.clamp(start, end),
                child.end_unix_nano.clamp(start, end),
            )
        })
        .filter(|(from, to)| to > from)
        .collect();
    intervals.sort_unstable();
    let mut covered = 0;
    let mut current: Option<(u64, u64)> = None;
    for (from, to) in intervals {
        match current {
            Some((current_from, current_to)) if from <= current_to => {
                current = Some((current_from, current_to.max(to)));
            }
            Some((current_from, current_to)) => {
                covered += current_to - current_from;
                current = Some((from, to));
            }
            None => current = Some((from, to)),
        }
    }
    if let Some((from, to)) = current {
        covered += to - from;
    }
    (end - start).saturating_sub(covered)
}

/// Jaeger UI's critical path from `root`: the spans that have a section on it, from the
/// start of the trace to its end. Children are clamped to their parent; children entirely
/// outside it, and consumers under a producer, do not block.
fn critical_path(tree: &Tree, root: usize) -> Vec<usize> {
    let spans = tree.spans;
    // Clamped [start, end] of each span inside its parent (roots as they are).
    let bounds = |index: usize| -> (u64, u64) {
        let span = &spans[index];
        match tree.parent.get(&index) {
            Some(parent) => {
                let parent = &spans[*parent];
                (
                    span.start_unix_nano.max(parent.start_unix_nano),
                    span.end_unix_nano.min(parent.end_unix_nano),
                )
            }
            None => (span.start_unix_nano, span.end_unix_nano),
        }
    };
    let blocking = |parent: usize, child: usize| {
        let (parent_span, child_span) = (&spans[parent], &spans[child]);
        !(parent_span.kind == 4 && child_span.kind == 5)
            && child_span.start_unix_nano < parent_span.end_unix_nano
            && child_span.end_unix_nano > parent_span.start_unix_nano
    };
    let mut sections = Vec::new();
    let mut current = root;
    let mut returning: Option<u64> = None;
    for _ in 0..spans.len() * 4 + 4 {
        let (start, end) = bounds(current);
        let section_end = returning.unwrap_or(end);
        let last_child = tree
            .children(current)
            .iter()
            .copied()
            .filter(|child| blocking(current, *child))
            // Jaeger compares strictly; a child that ends exactly when the one after it
            // starts (back-to-back calls) would then drop off the path, so `<=` here.
            .filter(|child| returning.is_none_or(|limit| bounds(*child).1 <= limit))
            .max_by_key(|child| (bounds(*child).1, bounds(*child).0));
        match last_child {
            Some(child) => {
                if bounds(child).1 < section_end {
                    sections.push(current);
                }
                if returning.is_some() && bounds(child).1 == section_end && start == section_end {
                    break;
                }
                current = child;
                returning = None;
            }
            None => {
                if start < section_end {
                    sections.push(current);
                }
                match tree.parent.get(&current) {
                    Some(parent) if current != root => {
                        returning = Some(start);
                        current = *parent;
                    }
                    _ => break,
                }
            }
        }
    }
    sections.reverse();
    let mut seen = std::collections::HashSet::new();
    sections.retain(|index| seen.insert(*index));
    sections
}

pub fn analyze(trace_id: &str, spans: &[SpanInput], normal_of: NormalOf) -> AnalyzedTrace {
    // What is usual is looked up under the names the spans came with; everything after
    // shows HTTP spans named by their method with their route.
    let normals: Vec<Option<Normal>> = spans.iter().map(normal_of).collect();
    let renamed: Vec<SpanInput> = spans
        .iter()
        .map(|span| SpanInput {
            name: display_name(span),
            ..span.clone()
        })
        .collect();
    let spans = renamed.as_slice();
    let tree = Tree::new(spans);
    let trace_start = spans
        .iter()
        .map(|span| span.start_unix_nano)
        .min()
        .unwrap_or(0);
    let trace_end = spans
        .iter()
        .map(|span| span.end_unix_nano)
        .max()
        .unwrap_or(0);
    let trace_duration = trace_end.saturating_sub(trace_start);
    let main_root = tree.roots.first().copied();
    let self_times: Vec<u64> = (0..spans.len())
        .map(|index| self_time(&tree, index))
        .collect();
    let critical: Vec<usize> = main_root
        .map(|root| critical_path(&tree, root))
        .unwrap_or_default();

    let (root_cause_index, propagated) = findings::error_origin(&tree);
    let slowest =
        (0..spans.len()).max_by_key(|index| (self_times[*index], std::cmp::Reverse(*index)));

    let mut errors_per_service: BTreeMap<String, usize> = BTreeMap::new();
    for span in spans.iter().filter(|span| span.is_error()) {
        *errors_per_service.entry(span.service.clone()).or_default() += 1;
    }
    let mut downstream_ms: BTreeMap<String, f64> = BTreeMap::new();
    for (index, span) in spans.iter().enumerate() {
        if let Some(parent) = tree.parent.get(&index) {
            if spans[*parent].service != span.service {
                *downstream_ms.entry(span.service.clone()).or_default() += ms(span.duration());
            }
        }
    }
    let findings = findings::detect(&tree, root_cause_index, &propagated, &normals);

    let analyzed: Vec<AnalyzedSpan> = tree
        .walk()
        .into_iter()
        .map(|(index, depth)| {
            let span = &spans[index];
            AnalyzedSpan {
                span_id: span.span_id.clone(),
                parent_span_id: span.parent_span_id.clone(),
                service: span.service.clone(),
                name: span.name.clone(),
                kind: kind_name(span.kind),
                status: status_name(span.status_code),
                status_message: span.status_message.clone(),
                start_time_unix_nano: span.start_unix_nano,
                duration_ms: ms(span.duration()),
                self_time_ms: ms(self_times[index]),
                depth,
                critical: critical.contains(&index),
                error_role: if Some(index) == root_cause_index {
                    Some("root_cause")
                } else if propagated.contains(&index) {
                    Some("propagated")
                } else if span.is_error() {
                    Some("error")
                } else {
                    None
                },
                attributes: span.attributes.clone(),
                events: span.events.clone(),
            }
        })
        .collect();
    let mut services: Vec<String> = spans.iter().map(|span| span.service.clone()).collect();
    services.sort();
    services.dedup();
    let (root_service, root_name) = match main_root {
        Some(root) if spans[root].parent_span_id.is_none() => {
            (spans[root].service.clone(), spans[root].name.clone())
        }
        _ => ("<root span not yet received>".to_owned(), String::new()),
    };
    AnalyzedTrace {
        trace_id: trace_id.to_owned(),
        root_service,
        root_name,
        start_time_unix_nano: trace_start,
        duration_ms: ms(trace_duration),
        span_count: spans.len(),
        services,
        error_count: spans.iter().filter(|span| span.is_error()).count(),
        spans: analyzed,
        analysis: Analysis {
            slowest_span: slowest.map(|index| SlowestSpan {
                span_id: spans[index].span_id.clone(),
                self_time_ms: ms(self_times[index]),
                percent_of_trace: if trace_duration == 0 {
                    0.0
                } else {
                    (1000.0 * self_times[index] as f64 / trace_duration as f64).round() / 10.0
                },
            }),
            root_cause: root_cause_index.map(|index| RootCause {
                span_id: spans[index].span_id.clone(),
                service: spans[index].service.clone(),
                name: spans[index].name.clone(),
                message: findings::error_message(&spans[index]),
            }),
            critical_path: critical
                .iter()
                .map(|index| spans[*index].span_id.clone())
                .collect(),
            findings,
            errors_per_service,
            downstream_ms,
        },
    }
}

#[cfg(test)]
mod tests;
