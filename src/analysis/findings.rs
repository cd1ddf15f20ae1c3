//! Findings: what is wrong or unusual in a trace, each with the spans it concerns.
//! Kinds: `root_not_received`, `missing_parent`, `clock_skew`, `slow_operation`,
//! `error_origin`, `handled_error`, `background_failure`, `client_wait`, `timeout`,
//! `retry`, `n_plus_one`, `sequential_calls`.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::{ms, Normal, SpanInput, Tree};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub kind: &'static str,
    pub span_ids: Vec<String>,
    pub message: String,
}

/// A client's time beyond its server child worth a finding: at least this, and a quarter
/// of the call.
const CLIENT_WAIT_MIN_NANOS: u64 = 20_000_000;

/// Sentry's N+1 threshold: at least this many similar sequential siblings …
const N_PLUS_ONE_MIN_SPANS: usize = 5;
/// … together taking more than this.
const N_PLUS_ONE_MIN_NANOS: u64 = 50_000_000;

/// The error message of a span: its status message, else its exception event's.
pub fn error_message(span: &SpanInput) -> String {
    failure_message(&span.status_message, &span.events)
}

/// A status message, else the `exception.message` of an `exception` event.
pub fn failure_message(status_message: &str, events: &[serde_json::Value]) -> String {
    if !status_message.is_empty() {
        return status_message.to_owned();
    }
    events
        .iter()
        .find(|event| event["name"] == "exception")
        .and_then(|event| event["attributes"]["exception.message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Whether a span runs after its parent answered: a consumer, or a child linked to its
/// parent only as the work it started (under a producer).
fn is_async(tree: &Tree, index: usize) -> bool {
    let spans = tree.spans;
    spans[index].kind == 5
        || tree
            .parent
            .get(&index)
            .is_some_and(|parent| spans[*parent].kind == 4)
}

/// The root cause and the error spans its failure climbed through (propagated).
///
/// A failure starts in an error span none of whose (synchronous) descendants failed, and
/// climbs through each failing ancestor until one that did not fail: an error its caller
/// survived was handled. The root cause is the start of the failure that climbed highest
/// (nearest the root), the earliest of equals: a handled cache miss that came first is
/// not the cause of a declined card that failed the request. Asynchronous work (a
/// consumer) fails on its own: its failure does not climb into its producer.
pub fn error_origin(tree: &Tree) -> (Option<usize>, HashSet<usize>) {
    let spans = tree.spans;
    let mut has_failed_descendant = vec![false; spans.len()];
    let mut depth = vec![0usize; spans.len()];
    for (index, at) in tree.walk() {
        depth[index] = at;
    }
    // Children before parents: reverse depth-first order.
    for (index, _) in tree.walk().into_iter().rev() {
        let failed_below = tree.children(index).iter().any(|child| {
            !is_async(tree, *child) && (spans[*child].is_error() || has_failed_descendant[*child])
        });
        has_failed_descendant[index] = failed_below;
    }
    // Each start, with how far its failure climbed and the spans it climbed through.
    let climb = |start: usize| {
        let mut chain = Vec::new();
        let mut top = start;
        let mut current = start;
        while let Some(parent) = tree.parent.get(&current) {
            if is_async(tree, current) || !spans[*parent].is_error() {
                break;
            }
            chain.push(*parent);
            top = *parent;
            current = *parent;
        }
        (depth[top], chain)
    };
    let origin = (0..spans.len())
        .filter(|index| spans[*index].is_error() && !has_failed_descendant[*index])
        .min_by_key(|index| {
            (
                climb(*index).0,
                spans[*index].start_unix_nano,
                spans[*index].span_id.clone(),
            )
        });
    let propagated = origin
        .map(|origin| climb(origin).1.into_iter().collect())
        .unwrap_or_default();
    (origin, propagated)
}

/// Deadlines people configure: a failed call that lasted one of these (to within 2%) most
/// likely hit it.
const ROUND_DEADLINES_MS: [u64; 9] = [500, 1000, 2000, 3000, 5000, 10_000, 15_000, 30_000, 60_000];

fn on_round_deadline(span: &SpanInput) -> bool {
    let duration = span.end_unix_nano.saturating_sub(span.start_unix_nano);
    ROUND_DEADLINES_MS.iter().any(|deadline_ms| {
        let deadline = deadline_ms * 1_000_000;
        duration >= deadline && duration <= deadline + deadline / 50
    })
}

fn is_timeout(span: &SpanInput) -> bool {
    let message = error_message(span).to_ascii_lowercase();
    span.is_error()
        && (on_round_deadline(span)
            || message.contains("timeout")
            || message.contains("timed out")
            || message.contains("deadline")
            || span
                .attributes
                .get("rpc.grpc.status_code")
                .and_then(|code| code.as_i64())
                == Some(4))
}

/// What makes two sibling calls "the same operation": service and name, plus the
/// statement or URL template when there is one.
fn similarity_key(span: &SpanInput) -> String {
    let detail = [
        "db.statement",
        "db.query.text",
        "http.route",
        "url.template",
        "rpc.method",
    ]
    .iter()
    .find_map(|key| span.attributes.get(*key).and_then(|value| value.as_str()))
    .unwrap_or_default();
    format!("{}\u{0}{}\u{0}{}", span.service, span.name, detail)
}

/// The service a client span calls: its server child's, else `peer.service` /
/// `server.address`.
fn callee(tree: &Tree, index: usize) -> Option<String> {
    let spans = tree.spans;
    tree.children(index)
        .iter()
        .find(|child| spans[**child].service != spans[index].service)
        .map(|child| spans[*child].service.clone())
        .or_else(|| {
            [
                "peer.service",
                "server.address",
                "net.peer.name",
                "db.system",
            ]
            .iter()
            .find_map(|key| {
                spans[index]
                    .attributes
                    .get(*key)
                    .and_then(|value| value.as_str())
            })
            .map(str::to_owned)
        })
}

pub fn detect(
    tree: &Tree,
    root_cause: Option<usize>,
    propagated: &HashSet<usize>,
    normals: &[Option<Normal>],
) -> Vec<Finding> {
    let spans = tree.spans;
    let id = |index: usize| spans[index].span_id.clone();
    let mut findings = Vec::new();

    if !spans.is_empty() && spans.iter().all(|span| span.parent_span_id.is_some()) {
        findings.push(Finding {
            kind: "root_not_received",
            span_ids: tree.roots.iter().map(|root| id(*root)).collect(),
            message: "the trace's root span has not arrived (every span has a parent)".into(),
        });
    }
    let orphans: Vec<String> = tree
        .roots
        .iter()
        .filter(|root| spans[**root].parent_span_id.is_some())
        .map(|root| id(*root))
        .collect();
    if !orphans.is_empty() {
        findings.push(Finding {
            kind: "missing_parent",
            message: format!("{} span(s) whose parent is not in the trace", orphans.len()),
            span_ids: orphans,
        });
    }
    for (child, parent) in &tree.parent {
        let (child_span, parent_span) = (&spans[*child], &spans[*parent]);
        if child_span.start_unix_nano < parent_span.start_unix_nano {
            findings.push(Finding {
                kind: "clock_skew",
                span_ids: vec![id(*child), id(*parent)],
                message: format!(
                    "{} / {} starts {:.3} ms before its parent {} / {}{}",
                    child_span.service,
                    child_span.name,
                    ms(parent_span.start_unix_nano - child_span.start_unix_nano),
                    parent_span.service,
                    parent_span.name,
                    if child_span.service != parent_span.service {
                        " (clocks of the two hosts disagree)"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    for (index, span) in spans.iter().enumerate() {
        let Some(normal) = normals.get(index).copied().flatten() else {
            continue;
        };
        let duration = ms(span.end_unix_nano.saturating_sub(span.start_unix_nano));
        if normal.is_slow(duration) == Some(true) {
            findings.push(Finding {
                kind: "slow_operation",
                span_ids: vec![id(index)],
                message: format!(
                    "{} / {} took {:.1} ms, {:.1}× its usual {:.1} ms (median of {} calls before this trace){}",
                    span.service,
                    span.name,
                    duration,
                    duration / normal.median_ms.max(0.001),
                    normal.median_ms,
                    normal.count,
                    if is_async(tree, index) {
                        "; background work, not on the request's path"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    if let Some(origin) = root_cause {
        let mut chain: Vec<usize> = propagated.iter().copied().collect();
        chain.sort_by_key(|index| spans[*index].start_unix_nano);
        let mut span_ids = vec![id(origin)];
        span_ids.extend(chain.iter().map(|index| id(*index)));
        findings.push(Finding {
            kind: "error_origin",
            message: format!(
                "the error started in {} / {}: {}{}",
                spans[origin].service,
                spans[origin].name,
                error_message(&spans[origin]),
                if chain.is_empty() {
                    String::new()
                } else {
                    format!("; {} span(s) above it failed because of it", chain.len())
                }
            ),
            span_ids,
        });
    }
    // Errors whose caller did not fail: handled where they were called; asynchronous
    // work's failures are its own.
    for (index, span) in spans.iter().enumerate() {
        if !span.is_error() || propagated.contains(&index) {
            continue;
        }
        let Some(parent) = tree.parent.get(&index).map(|parent| &spans[*parent]) else {
            continue;
        };
        if is_async(tree, index) {
            findings.push(Finding {
                kind: "background_failure",
                span_ids: vec![id(index)],
                message: format!(
                    "{} / {} failed after {} / {} had answered (asynchronous work): {}",
                    span.service,
                    span.name,
                    parent.service,
                    parent.name,
                    error_message(span)
                ),
            });
        } else if !parent.is_error() {
            findings.push(Finding {
                kind: "handled_error",
                span_ids: vec![id(index)],
                message: format!(
                    "handled: {} / {} failed ({}), tolerated by {} / {}",
                    span.service,
                    span.name,
                    error_message(span),
                    parent.service,
                    parent.name
                ),
            });
        }
    }
    // A client waiting well beyond its server's answer: network, queueing, a pool.
    for (index, span) in spans.iter().enumerate() {
        if span.kind != 3 {
            continue;
        }
        let Some(server) = tree
            .children(index)
            .iter()
            .find(|child| spans[**child].kind == 2 && spans[**child].service != span.service)
        else {
            continue;
        };
        let client = span.end_unix_nano.saturating_sub(span.start_unix_nano);
        let served = spans[*server]
            .end_unix_nano
            .saturating_sub(spans[*server].start_unix_nano);
        let waited = client.saturating_sub(served);
        if waited >= CLIENT_WAIT_MIN_NANOS && waited * 4 >= client {
            findings.push(Finding {
                kind: "client_wait",
                span_ids: vec![id(index), id(*server)],
                message: format!(
                    "{} / {} waited {:.1} ms beyond {} / {}'s {:.1} ms (network, queueing or a connection pool)",
                    span.service,
                    span.name,
                    ms(waited),
                    spans[*server].service,
                    spans[*server].name,
                    ms(served)
                ),
            });
        }
    }
    for (index, span) in spans.iter().enumerate() {
        if is_timeout(span) {
            findings.push(Finding {
                kind: "timeout",
                span_ids: vec![id(index)],
                message: format!(
                    "{} / {} timed out after {:.1} ms: {}",
                    span.service,
                    span.name,
                    ms(span.end_unix_nano.saturating_sub(span.start_unix_nano)),
                    error_message(span)
                ),
            });
        }
    }
    for parent in 0..spans.len() {
        sibling_patterns(tree, parent, &mut findings);
    }
    findings
}

/// Retries, N+1 and sequential calls among the children of one span.
fn sibling_patterns(tree: &Tree, parent: usize, findings: &mut Vec<Finding>) {
    let spans = tree.spans;
    let children = tree.children(parent);
    if children.len() < 2 {
        return;
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for child in children {
        groups
            .entry(similarity_key(&spans[*child]))
            .or_default()
            .push(*child);
    }
    for members in groups.values() {
        if members.len() < 2 {
            continue;
        }
        let sequential = members
            .windows(2)
            .all(|pair| spans[pair[1]].start_unix_nano >= spans[pair[0]].end_unix_nano);
        let failed_before_last = members[..members.len() - 1]
            .iter()
            .any(|member| spans[*member].is_error());
        let first = &spans[members[0]];
        if sequential && failed_before_last {
            findings.push(Finding {
                kind: "retry",
                span_ids: members
                    .iter()
                    .map(|member| spans[*member].span_id.clone())
                    .collect(),
                message: format!(
                    "{} / {} was called {} times in a row after failing{}",
                    first.service,
                    first.name,
                    members.len(),
                    if spans[*members.last().unwrap_or(&members[0])].is_error() {
                        "; the last attempt failed too"
                    } else {
                        "; the last attempt succeeded"
                    }
                ),
            });
            continue;
        }
        let total: u64 = members
            .iter()
            .map(|member| {
                spans[*member]
                    .end_unix_nano
                    .saturating_sub(spans[*member].start_unix_nano)
            })
            .sum();
        if sequential && members.len() >= N_PLUS_ONE_MIN_SPANS && total > N_PLUS_ONE_MIN_NANOS {
            findings.push(Finding {
                kind: "n_plus_one",
                span_ids: members
                    .iter()
                    .map(|member| spans[*member].span_id.clone())
                    .collect(),
                message: format!(
                    "{} identical calls to {} / {} one after another ({:.1} ms in all): batch them",
                    members.len(),
                    first.service,
                    first.name,
                    ms(total)
                ),
            });
        }
    }
    // Calls to different downstream services, one after another with no overlap.
    let calls: Vec<(usize, String)> = children
        .iter()
        .filter(|child| matches!(spans[**child].kind, 3 | 4))
        .filter_map(|child| callee(tree, *child).map(|service| (*child, service)))
        .collect();
    if calls.len() >= 2 {
        let distinct: HashSet<&String> = calls.iter().map(|(_, service)| service).collect();
        let sequential = calls
            .windows(2)
            .all(|pair| spans[pair[1].0].start_unix_nano >= spans[pair[0].0].end_unix_nano);
        if sequential && distinct.len() == calls.len() {
            let total: u64 = calls
                .iter()
                .map(|(call, _)| {
                    spans[*call]
                        .end_unix_nano
                        .saturating_sub(spans[*call].start_unix_nano)
                })
                .sum();
            let longest = calls
                .iter()
                .map(|(call, _)| {
                    spans[*call]
                        .end_unix_nano
                        .saturating_sub(spans[*call].start_unix_nano)
                })
                .max()
                .unwrap_or(0);
            findings.push(Finding {
                kind: "sequential_calls",
                span_ids: calls.iter().map(|(call, _)| spans[*call].span_id.clone()).collect(),
                message: format!(
                    "{} / {} calls {} one after another; if they do not depend on each other, running them in parallel could save up to {:.1} ms",
                    spans[parent].service,
                    spans[parent].name,
                    calls.iter().map(|(_, service)| service.as_str()).collect::<Vec<_>>().join(", "),
                    ms(total - longest)
                ),
            });
        }
    }
}
