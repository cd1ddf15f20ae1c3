//! Which service is slow, which one failed: a time window compared with a baseline (by
//! default the same length just before it), ranked suspects with their evidence.
//!
//! Three kinds of evidence, each scored so that 1 is "worth a look" and a healthy window
//! stays below it:
//! - **errors**: the error rate of an operation, window against baseline, from the latency
//!   histograms (they see every span, before sampling): a two-proportion z statistic
//!   (pooled), divided by 3, counted only with at least 3 errors and a 2-point shift;
//! - **latency**: p50 and p99 (exact quantiles of the hdrhistograms), window against
//!   baseline: log2 of the larger ratio, with at least 5 calls on each side (20 for p99)
//!   and a shift of 5 ms or more;
//! - **logs**: error and fatal log records of a service, against what the baseline's rate
//!   predicts for the window: (seen − expected) / √(expected + 1) / 3, with at least 3.
//!
//! Propagation, from the traces of the window (`analysis`): an operation whose errors all
//! climbed up from a callee (none started in it) or whose latency grew while its own self
//! time did not is not the origin: its score is halved and `caused_by` names the callee
//! operation the errors started in, or whose latency grew most. Each suspect also carries
//! its share of the critical-path time of the window's traces and an example trace.
//!
//! [`diagnose`] is pure; [`gather`] reads the histograms, traces and logs it needs.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::analysis::{self, kind_code, kind_name, AnalyzedTrace};
use crate::cluster::latency::LatencyAsk;
use crate::metrics::latency::Minutes;
use crate::metrics::names::normalise_span_name;
use crate::model::{Level, LogRecord};
use crate::store::{LogQuery, Storage, StoreError};

/// Traces read from each of the window and the baseline.
const MAX_TRACES: usize = 2000;
/// Error log records read from each.
const MAX_LOGS: usize = 10_000;
/// Suspects returned at most.
const MAX_SUSPECTS: usize = 10;

/// An operation: service, span name (normalised as the span metrics do it) and kind.
pub type Op = (String, String, i32);

/// Calls, errors and quantiles of one operation over one side.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl OpStats {
    fn error_rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        }
    }
}

/// What [`diagnose`] looks at.
#[derive(Default)]
pub struct Inputs {
    pub window: Side,
    pub baseline: Side,
}

/// One side (window or baseline).
#[derive(Default)]
pub struct Side {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// From the latency histograms; an operation missing here is measured on `traces`.
    pub operations: HashMap<Op, OpStats>,
    pub traces: Vec<AnalyzedTrace>,
    /// Error and fatal records.
    pub error_logs: Vec<LogRecord>,
}

impl Side {
    fn seconds(&self) -> f64 {
        (self.end_unix_nano.saturating_sub(self.start_unix_nano) as f64 / 1e9).max(1.0)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
    pub traces: usize,
    pub error_logs: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diagnosis {
    pub window: Range,
    pub baseline: Range,
    pub suspects: Vec<Suspect>,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Suspect {
    pub service: String,
    /// Empty for a service known only by its logs.
    pub operation: String,
    pub span_kind: &'static str,
    /// What scored highest: `errors`, `latency` or `logs`.
    pub kind: &'static str,
    pub score: f64,
    /// Whether the problem starts here (else it came from `caused_by`).
    pub origin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<CausedBy>,
    pub evidence: Evidence,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example_trace_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CausedBy {
    pub service: String,
    pub operation: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Evidence {
    pub window: OpStats,
    pub baseline: OpStats,
    pub error_rate_window: f64,
    pub error_rate_baseline: f64,
    /// The most common error messages where the errors started.
    pub error_messages: Vec<Counted>,
    /// Median self time in the traces read, window and baseline (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_p50_ms_window: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_p50_ms_baseline: Option<f64>,
    pub error_logs_window: usize,
    pub error_logs_baseline: usize,
    /// Error log messages of the service in the window, numbers and ids as `<*>`.
    pub log_templates: Vec<Counted>,
    /// Share of the critical-path time of the window's traces spent in this operation.
    pub critical_path_share: f64,
    pub scores: Scores,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Scores {
    pub errors: f64,
    pub latency: f64,
    pub logs: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Counted {
    pub text: String,
    pub count: usize,
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

/// A log message with its numbers, hex ids and quoted values as `<*>` (the variable
/// parts), so that one kind of error counts as one.
pub fn template(message: &str) -> String {
    let mut out = String::new();
    for (index, word) in message.split_whitespace().enumerate() {
        if index > 0 {
            out.push(' ');
        }
        let variable = word.chars().any(|c| c.is_ascii_digit())
            || (word.len() >= 16 && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            || (word.starts_with(['"', '\'']) && word.len() > 2);
        out.push_str(if variable { "<*>" } else { word });
        if out.len() > 200 {
            break;
        }
    }
    out
}

fn top(counts: HashMap<String, usize>, n: usize) -> Vec<Counted> {
    let mut counted: Vec<Counted> = counts
        .into_iter()
        .map(|(text, count)| Counted { text, count })
        .collect();
    counted.sort_by(|a, b| b.count.cmp(&a.count).then(a.text.cmp(&b.text)));
    counted.truncate(n);
    counted
}

/// What the traces of one side say of each operation.
#[derive(Default)]
struct TraceFacts {
    durations: Vec<f64>,
    self_times: Vec<f64>,
    errors: u64,
    /// Errors that started here, and those that came from elsewhere (by where).
    origin_errors: u64,
    propagated_from: HashMap<Op, u64>,
    messages: HashMap<String, usize>,
    critical_ms: f64,
    /// Operations called directly.
    callees: HashMap<Op, u64>,
    /// (trace id, duration) of its slowest call; a trace whose error started here.
    slowest: Option<(String, f64)>,
    failing_trace: Option<String>,
}

fn op_of(span: &analysis::AnalyzedSpan) -> Op {
    (
        span.service.clone(),
        normalise_span_name(&span.name),
        kind_code(span.kind),
    )
}

fn facts(traces: &[AnalyzedTrace]) -> (HashMap<Op, TraceFacts>, f64) {
    let mut facts: HashMap<Op, TraceFacts> = HashMap::new();
    let mut critical_total = 0.0;
    for trace in traces {
        let by_id: HashMap<&str, &analysis::AnalyzedSpan> = trace
            .spans
            .iter()
            .map(|span| (span.span_id.as_str(), span))
            .collect();
        let root_cause = trace
            .spans
            .iter()
            .find(|span| span.error_role == Some("root_cause"));
        for span in &trace.spans {
            let op = op_of(span);
            if let Some(parent) = span.parent_span_id.as_deref().and_then(|id| by_id.get(id)) {
                *facts
                    .entry(op_of(parent))
                    .or_default()
                    .callees
                    .entry(op.clone())
                    .or_default() += 1;
            }
            let entry = facts.entry(op).or_default();
            entry.durations.push(span.duration_ms);
            entry.self_times.push(span.self_time_ms);
            if span.critical {
                entry.critical_ms += span.self_time_ms;
                critical_total += span.self_time_ms;
            }
            if entry
                .slowest
                .as_ref()
                .is_none_or(|(_, duration)| span.duration_ms > *duration)
            {
                entry.slowest = Some((trace.trace_id.clone(), span.duration_ms));
            }
            if span.status == "error" {
                entry.errors += 1;
                match (span.error_role, root_cause) {
                    (Some("propagated"), Some(cause)) => {
                        *entry.propagated_from.entry(op_of(cause)).or_default() += 1;
                    }
                    _ => {
                        entry.origin_errors += 1;
                        entry
                            .failing_trace
                            .get_or_insert_with(|| trace.trace_id.clone());
                        let message = analysis::failure_message(&span.status_message, &span.events);
                        if !message.is_empty() {
                            *entry.messages.entry(template(&message)).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    (facts, critical_total)
}

/// A service's error logs: in the window, in the baseline, the window's templates, and a
/// trace id one of them names.
type ServiceLogs = (usize, usize, HashMap<String, usize>, Option<String>);

fn stats_from_traces(facts: &TraceFacts) -> OpStats {
    let mut durations = facts.durations.clone();
    OpStats {
        count: durations.len() as u64,
        errors: facts.errors,
        p50_ms: quantile(&mut durations, 0.5),
        p99_ms: quantile(&mut durations, 0.99),
    }
}

fn error_score(window: &OpStats, baseline: &OpStats) -> f64 {
    let (rate_w, rate_b) = (window.error_rate(), baseline.error_rate());
    if window.errors < 3 || rate_w - rate_b < 0.02 {
        return 0.0;
    }
    if baseline.count == 0 {
        // Nothing to compare with: as strong as the errors are many.
        return (window.errors as f64).sqrt() / 3.0 * rate_w.min(1.0) * 2.0;
    }
    let (n_w, n_b) = (window.count as f64, baseline.count as f64);
    let pooled = (window.errors + baseline.errors) as f64 / (n_w + n_b);
    let spread = (pooled * (1.0 - pooled) * (1.0 / n_w + 1.0 / n_b)).sqrt();
    if spread <= 0.0 {
        return 0.0;
    }
    ((rate_w - rate_b) / spread / 3.0).max(0.0)
}

fn latency_score(window: &OpStats, baseline: &OpStats) -> f64 {
    if window.count < 5 || baseline.count < 5 {
        return 0.0;
    }
    let ratio = |now: f64, before: f64| {
        if now - before >= 5.0 && before > 0.0 {
            now / before
        } else {
            1.0
        }
    };
    let mut worst = ratio(window.p50_ms, baseline.p50_ms);
    if window.count >= 20 && baseline.count >= 20 {
        worst = worst.max(ratio(window.p99_ms, baseline.p99_ms));
    }
    worst.log2().max(0.0)
}

fn logs_score(window: usize, baseline: usize, window_secs: f64, baseline_secs: f64) -> f64 {
    if window < 3 {
        return 0.0;
    }
    let expected = baseline as f64 * window_secs / baseline_secs;
    ((window as f64 - expected) / (expected + 1.0).sqrt() / 3.0).max(0.0)
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Rank the operations and services of the window against the baseline.
pub fn diagnose(inputs: &Inputs) -> Diagnosis {
    let (window_facts, critical_total) = facts(&inputs.window.traces);
    let (baseline_facts, _) = facts(&inputs.baseline.traces);
    let mut ops: Vec<Op> = inputs
        .window
        .operations
        .keys()
        .chain(window_facts.keys())
        .cloned()
        .collect();
    ops.sort();
    ops.dedup();
    let side_stats = |side: &Side, facts: &HashMap<Op, TraceFacts>, op: &Op| {
        side.operations
            .get(op)
            .cloned()
            .filter(|stats| stats.count > 0)
            .or_else(|| facts.get(op).map(stats_from_traces))
            .unwrap_or_default()
    };
    let mut logs_by_service: BTreeMap<&str, ServiceLogs> = BTreeMap::new();
    for record in &inputs.window.error_logs {
        let entry = logs_by_service.entry(&record.service).or_default();
        entry.0 += 1;
        *entry.2.entry(template(&record.message)).or_default() += 1;
        if entry.3.is_none() {
            entry.3 = record.trace_id.map(|id| id.to_hex());
        }
    }
    for record in &inputs.baseline.error_logs {
        logs_by_service.entry(&record.service).or_default().1 += 1;
    }
    let (window_secs, baseline_secs) = (inputs.window.seconds(), inputs.baseline.seconds());

    let mut scored: Vec<(Op, Scores, OpStats, OpStats)> = ops
        .iter()
        .map(|op| {
            let window = side_stats(&inputs.window, &window_facts, op);
            let baseline = side_stats(&inputs.baseline, &baseline_facts, op);
            let scores = Scores {
                errors: error_score(&window, &baseline),
                latency: latency_score(&window, &baseline),
                logs: 0.0,
            };
            (op.clone(), scores, window, baseline)
        })
        .collect();
    let latency_of: HashMap<Op, f64> = scored
        .iter()
        .map(|(op, scores, _, _)| (op.clone(), scores.latency))
        .collect();

    let mut suspects = Vec::new();
    let mut services_with_suspects = std::collections::BTreeSet::new();
    for (op, mut scores, window, baseline) in scored.drain(..) {
        let facts = window_facts.get(&op);
        let before = baseline_facts.get(&op);
        let (kind, mut score) = if scores.errors >= scores.latency {
            ("errors", scores.errors)
        } else {
            ("latency", scores.latency)
        };
        if score <= 0.0 {
            continue;
        }
        let mut origin = true;
        let mut caused_by = None;
        let self_window = facts.and_then(|facts| median(&mut facts.self_times.clone()));
        let self_baseline = before.and_then(|facts| median(&mut facts.self_times.clone()));
        if let Some(facts) = facts {
            if kind == "errors" && facts.origin_errors == 0 {
                if let Some((cause, _)) = facts
                    .propagated_from
                    .iter()
                    .max_by_key(|(op, count)| (**count, std::cmp::Reverse((*op).clone())))
                {
                    origin = false;
                    caused_by = Some(cause.clone());
                }
            }
            if kind == "latency" {
                let grew_itself = match (self_window, self_baseline) {
                    (Some(now), Some(before)) => now - before >= 5.0 && now >= before * 1.25,
                    _ => true,
                };
                if !grew_itself {
                    if let Some((callee, _)) = facts
                        .callees
                        .keys()
                        .map(|callee| (callee, latency_of.get(callee).copied().unwrap_or(0.0)))
                        .filter(|(_, score)| *score > 0.0)
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                    {
                        origin = false;
                        caused_by = Some(callee.clone());
                    }
                }
            }
        }
        let (logs_window, logs_baseline, templates, _) = logs_by_service
            .get(op.0.as_str())
            .cloned()
            .unwrap_or_default();
        scores.logs = logs_score(logs_window, logs_baseline, window_secs, baseline_secs);
        if !origin {
            score /= 2.0;
        }
        let example = facts.and_then(|facts| {
            if kind == "errors" {
                facts.failing_trace.clone()
            } else {
                facts.slowest.as_ref().map(|(id, _)| id.clone())
            }
        });
        services_with_suspects.insert(op.0.clone());
        suspects.push(Suspect {
            service: op.0.clone(),
            operation: op.1.clone(),
            span_kind: kind_name(op.2),
            kind,
            score: round(score),
            origin,
            caused_by: caused_by.map(|(service, operation, _)| CausedBy { service, operation }),
            evidence: Evidence {
                error_rate_window: round(window.error_rate()),
                error_rate_baseline: round(baseline.error_rate()),
                error_messages: facts
                    .map(|facts| top(facts.messages.clone(), 3))
                    .unwrap_or_default(),
                self_p50_ms_window: self_window.map(round),
                self_p50_ms_baseline: self_baseline.map(round),
                error_logs_window: logs_window,
                error_logs_baseline: logs_baseline,
                log_templates: top(templates, 3),
                critical_path_share: facts
                    .filter(|_| critical_total > 0.0)
                    .map_or(0.0, |facts| round(facts.critical_ms / critical_total)),
                scores: Scores {
                    errors: round(scores.errors),
                    latency: round(scores.latency),
                    logs: round(scores.logs),
                },
                window,
                baseline,
            },
            example_trace_id: example,
        });
    }
    // A service known by its error logs alone (a fault that changes no span).
    for (service, (window_count, baseline_count, templates, example)) in &logs_by_service {
        let score = logs_score(*window_count, *baseline_count, window_secs, baseline_secs);
        if score <= 0.0 {
            continue;
        }
        if services_with_suspects.contains(*service) {
            // Its operations carry the logs' score beside theirs. Logs name what is wrong
            // only where the spans say too little (their own score under 1).
            for suspect in suspects
                .iter_mut()
                .filter(|suspect| suspect.service == *service)
            {
                if score > suspect.score && suspect.origin && suspect.score < 1.0 {
                    suspect.score = round(score);
                    suspect.kind = "logs";
                }
            }
            continue;
        }
        suspects.push(Suspect {
            service: (*service).to_owned(),
            operation: String::new(),
            span_kind: "unspecified",
            kind: "logs",
            score: round(score),
            origin: true,
            caused_by: None,
            evidence: Evidence {
                error_logs_window: *window_count,
                error_logs_baseline: *baseline_count,
                log_templates: top(templates.clone(), 3),
                scores: Scores {
                    logs: round(score),
                    ..Scores::default()
                },
                ..Evidence::default()
            },
            example_trace_id: example.clone(),
        });
    }
    suspects.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.origin.cmp(&a.origin))
            .then(a.service.cmp(&b.service))
            .then(a.operation.cmp(&b.operation))
    });
    suspects.truncate(MAX_SUSPECTS);
    let summary = summarize(suspects.first());
    Diagnosis {
        window: Range {
            start: inputs.window.start_unix_nano,
            end: inputs.window.end_unix_nano,
            traces: inputs.window.traces.len(),
            error_logs: inputs.window.error_logs.len(),
        },
        baseline: Range {
            start: inputs.baseline.start_unix_nano,
            end: inputs.baseline.end_unix_nano,
            traces: inputs.baseline.traces.len(),
            error_logs: inputs.baseline.error_logs.len(),
        },
        suspects,
        summary,
    }
}

fn summarize(top: Option<&Suspect>) -> String {
    let Some(suspect) = top.filter(|suspect| suspect.score >= 1.0) else {
        return "nothing stands out against the baseline".into();
    };
    let what = if suspect.operation.is_empty() {
        suspect.service.clone()
    } else {
        format!("{} {:?}", suspect.service, suspect.operation)
    };
    let evidence = &suspect.evidence;
    let detail = match suspect.kind {
        "errors" => format!(
            "error rate {:.1}% -> {:.1}% ({} of {} calls){}",
            evidence.error_rate_baseline * 100.0,
            evidence.error_rate_window * 100.0,
            evidence.window.errors,
            evidence.window.count,
            evidence
                .error_messages
                .first()
                .map(|message| format!(", {:?}", message.text))
                .unwrap_or_default()
        ),
        "latency" => format!(
            "p50 {:.1} -> {:.1} ms, p99 {:.1} -> {:.1} ms",
            evidence.baseline.p50_ms,
            evidence.window.p50_ms,
            evidence.baseline.p99_ms,
            evidence.window.p99_ms
        ),
        _ => format!(
            "{} error logs (baseline {}){}",
            evidence.error_logs_window,
            evidence.error_logs_baseline,
            evidence
                .log_templates
                .first()
                .map(|template| format!(", {:?}", template.text))
                .unwrap_or_default()
        ),
    };
    let origin = match &suspect.caused_by {
        Some(cause) => format!("; it comes from {} {:?}", cause.service, cause.operation),
        None => "; it starts here".into(),
    };
    format!("{what}: {detail}{origin}")
}

/// What to compare: the window, the baseline, and optionally one service's traces.
pub struct Request {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub baseline_start_unix_nano: u64,
    pub baseline_end_unix_nano: u64,
    pub service: Option<String>,
}

/// Read what [`diagnose`] needs: the histograms' stats of every operation over each side
/// (whole minutes, when both sides last five minutes or more and share no minute; else
/// the traces measure them), up to [`MAX_TRACES`] traces of each side (analysed), and the
/// error logs of each side. Blocking.
pub fn gather(
    storage: &Storage,
    metrics: &crate::metrics::Metrics,
    request: &Request,
) -> Result<Inputs, StoreError> {
    let minute = |nanos: u64| nanos / 60_000_000_000;
    // The histograms hold whole minutes: they measure a side only when both sides are
    // long enough for minutes to matter and share none.
    let whole_minutes = |start: u64, end: u64| end.saturating_sub(start) >= 5 * 60_000_000_000;
    let (window, baseline) = (
        (request.start_unix_nano, request.end_unix_nano),
        (
            request.baseline_start_unix_nano,
            request.baseline_end_unix_nano,
        ),
    );
    let use_histograms = whole_minutes(window.0, window.1)
        && whole_minutes(baseline.0, baseline.1)
        && (minute(baseline.1.saturating_sub(1)) < minute(window.0)
            || minute(window.1.saturating_sub(1)) < minute(baseline.0));
    // Each operation's calls on each side, of every node (in a cluster each node's
    // histograms hold only the partitions it owns): index 0 the window, 1 the baseline.
    let mut measured: Vec<HashMap<Op, OpStats>> = vec![HashMap::new(), HashMap::new()];
    if use_histograms {
        let ask = LatencyAsk {
            service: request.service.clone(),
            minutes: [window, baseline]
                .iter()
                .map(|(start, end)| Minutes::Between(minute(*start), minute(end.saturating_sub(1))))
                .collect(),
            ..LatencyAsk::default()
        };
        let merged = crate::cluster::latency::gather(storage, metrics, ask);
        for (key, windows) in merged.operations {
            for (side, window) in measured.iter_mut().zip(windows) {
                let stats = window.stats();
                if stats.count > 0 {
                    side.insert(
                        (key.service.clone(), key.span_name.clone(), key.span_kind),
                        OpStats {
                            count: stats.count,
                            errors: stats.errors,
                            p50_ms: stats.p50_ms,
                            p99_ms: stats.p99_ms,
                        },
                    );
                }
            }
        }
    }
    let mut measured = measured.into_iter();
    let mut side = |start: u64, end: u64| -> Result<Side, StoreError> {
        let operations = measured.next().unwrap_or_default();
        let mut found = traces_between(storage, request.service.as_deref(), start, end)?;
        if let Some(peers) = storage.peers.get() {
            found.extend(peers.traces_between(request.service.as_deref(), start, end));
            // Newest first, each trace once (a trace is whole on one node, but a
            // partition read again after its owner died is on two).
            found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1 .0.cmp(&b.1 .0)));
            found.dedup_by(|a, b| a.1 .0 == b.1 .0);
            found.truncate(MAX_TRACES);
        }
        let mut traces = Vec::with_capacity(found.len());
        for (_, (trace_id, payloads)) in found {
            if let Some(batches) = crate::store::merge_payloads(&trace_id, payloads) {
                let spans = crate::api::join::spans_of(&batches);
                traces.push(analysis::analyze(&trace_id.to_hex(), &spans, &|_| None));
            }
        }
        let mut error_logs = Vec::new();
        for level in [Level::Error, Level::Fatal] {
            error_logs.extend(storage.search_logs(&LogQuery {
                level: Some(level),
                service: None,
                start_unix_nano: Some(start),
                end_unix_nano: Some(end.saturating_sub(1)),
                limit: MAX_LOGS,
                ..LogQuery::default()
            })?);
        }
        Ok(Side {
            start_unix_nano: start,
            end_unix_nano: end,
            operations,
            traces,
            error_logs,
        })
    };
    Ok(Inputs {
        window: side(request.start_unix_nano, request.end_unix_nano)?,
        baseline: side(
            request.baseline_start_unix_nano,
            request.baseline_end_unix_nano,
        )?,
    })
}

/// A trace found by [`traces_between`]: its start, its id and its stored span payloads.
pub type FoundPayloads = (u64, (crate::model::TraceId, Vec<bytes::Bytes>));

/// Up to [`MAX_TRACES`] traces this node holds that start in `[start, end)`, of
/// `service` when given, newest first, with their stored payloads (what a node answers
/// for the others in a cluster, and its own share). Blocking.
pub fn traces_between(
    storage: &Storage,
    service: Option<&str>,
    start: u64,
    end: u64,
) -> Result<Vec<FoundPayloads>, StoreError> {
    let query = match service {
        Some(service) => format!(
            "{{ resource.service.name = \"{}\" }}",
            service.replace('"', "\\\"")
        ),
        None => "{}".to_owned(),
    };
    let query = crate::query::traceql::parse(&query)
        .map_err(|error| StoreError::Payload(error.to_string()))?;
    let search = crate::query::search::SearchRequest {
        query,
        limit: MAX_TRACES,
        start_unix_nano: Some(start),
        end_unix_nano: Some(end),
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let mut found = Vec::new();
    crate::query::search::scan(storage, &search, |trace| {
        let start_of = trace.trace.start();
        if start_of >= start && start_of < end {
            found.push((start_of, trace.trace_id));
        }
        found.len() < MAX_TRACES
    })?;
    found
        .into_iter()
        .map(|(start_of, trace_id)| {
            Ok((
                start_of,
                (trace_id, storage.local_trace_payloads(&trace_id)?),
            ))
        })
        .collect()
}
