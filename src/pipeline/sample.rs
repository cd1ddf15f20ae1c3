//! Tail sampling: one decision per trace, taken when the trace leaves the head.
//!
//! Takes the spans of a whole trace (or of a later fragment, which follows the decision
//! the decision cache remembers) and gives out keep or drop with the reason. The order is
//! the OpenTelemetry Collector's `tail_sampling` processor's: a matching drop rule wins
//! over everything; then any keep policy keeps (errors, slow trace, span slower than its
//! operation's p99, keep rules, the consistent fraction); otherwise the trace is dropped.
//!
//! The fraction is the OpenTelemetry consistent-probability rule (W3C trace context
//! level 2): the randomness R is the `rv` of the span's `ot` tracestate entry when given,
//! otherwise the trace id's low 56 bits; the threshold is T = round((1 − fraction) × 2⁵⁶),
//! and a trace is kept when R ≥ T. Two tracelinks, or tracelink behind an SDK sampling at
//! the same fraction, keep the same traces. Runs on the indexer thread.

use std::collections::VecDeque;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::config::{RuleAction, RuleMatcher, SamplingConfig};
use crate::model::{Span, TraceId};
use crate::FastMap;

const TWO_POW_56: f64 = 72_057_594_037_927_936.0;
const RANDOMNESS_MASK: u64 = (1 << 56) - 1;

/// T = round((1 − fraction) × 2⁵⁶): 0 keeps everything, 2⁵⁶ nothing.
pub fn threshold_for(fraction: f64) -> u64 {
    ((1.0 - fraction.clamp(0.0, 1.0)) * TWO_POW_56).round() as u64
}

/// R: the trace id's least significant 56 bits (its last 7 bytes, big-endian).
pub fn randomness_of(trace_id: &TraceId) -> u64 {
    trace_id.low_u64() & RANDOMNESS_MASK
}

/// Why a trace was kept or dropped. `Copy`, so the decision cache stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A span with status error or an `exception` event.
    Error,
    /// Latest span end − earliest span start above `keep_slower_than_ms`.
    Slow,
    /// A span slower than its operation's p99.
    SlowerThanP99,
    /// The n-th configured rule matched.
    Rule(u16),
    /// Selected by the consistent fraction.
    Fraction,
    /// Outside the fraction, and nothing else kept it.
    NotSampled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    pub keep: bool,
    pub reason: Reason,
}

/// The policies, checked once at start.
pub struct Sampler {
    config: SamplingConfig,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Sampler {
        Sampler { config }
    }

    /// `false` when every trace is kept whatever it holds (the default), so callers can
    /// skip work that only matters for dropped traces.
    pub fn may_drop(&self) -> bool {
        self.config.fraction < 1.0
            || self
                .config
                .rules
                .iter()
                .any(|rule| rule.action == RuleAction::Drop)
    }

    /// The label value of a reason: `error`, `slow`, `slower_than_p99`, `rule:<name>`,
    /// `fraction`, `not_sampled`.
    pub fn reason_name(&self, reason: Reason) -> String {
        match reason {
            Reason::Error => "error".into(),
            Reason::Slow => "slow".into(),
            Reason::SlowerThanP99 => "slower_than_p99".into(),
            Reason::Rule(index) => format!(
                "rule:{}",
                self.config
                    .rules
                    .get(index as usize)
                    .map_or("?", |rule| rule.name.as_str())
            ),
            Reason::Fraction => "fraction".into(),
            Reason::NotSampled => "not_sampled".into(),
        }
    }

    /// Decide on a trace that leaves the head. `p99_us` gives an operation's p99 in µs
    /// (only asked when `keep_slower_than_p99` is on).
    pub fn decide(
        &self,
        spans: &[&Span],
        mut p99_us: impl FnMut(&Span) -> Option<u64>,
    ) -> Decision {
        let keep = |reason| Decision { keep: true, reason };
        let config = &self.config;
        let mut rule_keep = None;
        if !config.rules.is_empty() {
            // Each stored span decoded once for every rule.
            let decoded: Vec<ResourceSpans> = spans
                .iter()
                .filter_map(|span| Span::decode_payload(&span.payload).ok())
                .collect();
            for (index, rule) in config.rules.iter().enumerate() {
                if decoded
                    .iter()
                    .any(|span| span_matches(span, &rule.key, &rule.matcher))
                {
                    let reason = Reason::Rule(index as u16);
                    match rule.action {
                        RuleAction::Drop => {
                            return Decision {
                                keep: false,
                                reason,
                            }
                        }
                        RuleAction::Keep => {
                            rule_keep.get_or_insert(reason);
                        }
                    }
                }
            }
        }
        if config.keep_errors
            && spans
                .iter()
                .any(|span| span.status_code == 2 || span.has_exception)
        {
            return keep(Reason::Error);
        }
        if let Some(threshold) = config.keep_slower_than {
            let start = spans.iter().map(|span| span.start_time_unix_nano).min();
            let end = spans
                .iter()
                .map(|span| {
                    span.start_time_unix_nano
                        .saturating_add(span.duration_nanos)
                })
                .max();
            if let (Some(start), Some(end)) = (start, end) {
                if end.saturating_sub(start) > threshold.as_nanos() as u64 {
                    return keep(Reason::Slow);
                }
            }
        }
        if config.keep_slower_than_p99
            && spans.iter().any(|span| {
                p99_us(span).is_some_and(|p99| p99 > 0 && span.duration_nanos / 1000 > p99)
            })
        {
            return keep(Reason::SlowerThanP99);
        }
        if let Some(reason) = rule_keep {
            return keep(reason);
        }
        let randomness = spans
            .iter()
            .find_map(|span| span.randomness)
            .or_else(|| spans.first().map(|span| randomness_of(&span.trace_id)))
            .unwrap_or(0);
        if randomness >= config.threshold && config.fraction > 0.0 {
            keep(Reason::Fraction)
        } else {
            Decision {
                keep: false,
                reason: Reason::NotSampled,
            }
        }
    }
}

/// Whether a decoded stored span's own or its resource's attributes match.
fn span_matches(decoded: &ResourceSpans, key: &str, matcher: &RuleMatcher) -> bool {
    let resource_attributes = decoded
        .resource
        .iter()
        .flat_map(|resource| resource.attributes.iter());
    let span_attributes = decoded
        .scope_spans
        .iter()
        .flat_map(|scope| scope.spans.iter())
        .flat_map(|span| span.attributes.iter());
    let matches = |attribute: &KeyValue| {
        attribute.key == key
            && match matcher {
                RuleMatcher::Present => true,
                RuleMatcher::Equals(expected) => {
                    value_text(attribute.value.as_ref()).is_some_and(|text| text == *expected)
                }
                RuleMatcher::Regex(regex) => {
                    value_text(attribute.value.as_ref()).is_some_and(|text| regex.is_match(&text))
                }
            }
    };
    resource_attributes.chain(span_attributes).any(matches)
}

/// A scalar attribute value as text (ints, doubles and bools as their usual spelling).
fn value_text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::IntValue(number) => Some(number.to_string()),
        any_value::Value::DoubleValue(number) => Some(number.to_string()),
        any_value::Value::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Decisions by trace id, the oldest forgotten first: late spans follow their trace's
/// decision, and the join can say why a trace is not stored.
pub struct DecisionCache {
    capacity: usize,
    decisions: FastMap<TraceId, Decision>,
    order: VecDeque<TraceId>,
}

impl DecisionCache {
    pub fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            capacity: capacity.max(1),
            decisions: FastMap::default(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, trace_id: &TraceId) -> Option<Decision> {
        self.decisions.get(trace_id).copied()
    }

    pub fn insert(&mut self, trace_id: TraceId, decision: Decision) {
        if self.decisions.insert(trace_id, decision).is_some() {
            return;
        }
        self.order.push_back(trace_id);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.decisions.remove(&oldest);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.decisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, RawSamplingRule};
    use opentelemetry_proto::tonic::trace::v1::{span::Event, Span as OtlpSpan, Status};

    fn sampler(tweak: impl FnOnce(&mut RawConfig)) -> Sampler {
        let mut raw = RawConfig::default();
        raw.storage.data_dir = std::env::temp_dir().join("tracelink-sample-tests");
        tweak(&mut raw);
        Sampler::new(raw.validate().unwrap().sampling)
    }

    fn span(trace_low: u64, duration_ms: u64, status: i32) -> Span {
        let mut trace_id = [0u8; 16];
        trace_id[0] = 1;
        trace_id[8..].copy_from_slice(&trace_low.to_be_bytes());
        let otlp = OtlpSpan {
            trace_id: trace_id.to_vec(),
            span_id: vec![2; 8],
            name: "GET /".into(),
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + duration_ms * 1_000_000,
            status: Some(Status {
                code: status,
                message: String::new(),
            }),
            attributes: vec![KeyValue {
                key: "http.route".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("/healthz".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        Span::from_otlp(None, "", None, "", otlp).unwrap()
    }

    #[test]
    fn threshold_matches_the_specification_table() {
        assert_eq!(threshold_for(1.0), 0);
        assert_eq!(threshold_for(0.0), 1 << 56);
        // 10 %: T = 0.9 × 2^56, which the spec encodes (at 4 digits) as th:e666.
        assert_eq!(threshold_for(0.1) >> 40, 0xe666);
        assert_eq!(threshold_for(0.5), 1 << 55);
    }

    #[test]
    fn fraction_keeps_exactly_the_traces_whose_randomness_reaches_the_threshold() {
        let sampler = sampler(|raw| raw.sampling.fraction = 0.5);
        let below = span((1 << 55) - 1, 1, 0);
        let at = span(1 << 55, 1, 0);
        assert_eq!(
            sampler.decide(&[&below], |_| None),
            Decision {
                keep: false,
                reason: Reason::NotSampled
            }
        );
        assert_eq!(sampler.decide(&[&at], |_| None).reason, Reason::Fraction);
        // The high byte of the low half is not part of R.
        let high_bits = span(0xff00_0000_0000_0001, 1, 0);
        assert!(!sampler.decide(&[&high_bits], |_| None).keep);
    }

    #[test]
    fn errors_slow_traces_and_p99_keep_whatever_the_fraction() {
        let sampler = sampler(|raw| {
            raw.sampling.fraction = 0.0;
            raw.sampling.keep_slower_than_p99 = true;
        });
        assert_eq!(
            sampler.decide(&[&span(1, 5, 2)], |_| None).reason,
            Reason::Error
        );
        assert_eq!(
            sampler.decide(&[&span(1, 1500, 0)], |_| None).reason,
            Reason::Slow
        );
        assert_eq!(
            sampler.decide(&[&span(1, 50, 0)], |_| Some(10_000)).reason,
            Reason::SlowerThanP99
        );
        assert!(!sampler.decide(&[&span(1, 5, 0)], |_| Some(10_000)).keep);
        let mut with_exception = span(1, 5, 0);
        let mut otlp = Span::decode_payload(&with_exception.payload).unwrap();
        otlp.scope_spans[0].spans[0].events.push(Event {
            name: "exception".into(),
            ..Default::default()
        });
        with_exception =
            Span::from_otlp(None, "", None, "", otlp.scope_spans[0].spans[0].clone()).unwrap();
        assert!(with_exception.has_exception);
        assert_eq!(
            sampler.decide(&[&with_exception], |_| None).reason,
            Reason::Error
        );
    }

    #[test]
    fn a_drop_rule_wins_and_a_keep_rule_keeps() {
        let dropping = sampler(|raw| {
            raw.sampling.rules = vec![RawSamplingRule {
                name: "health".into(),
                key: "http.route".into(),
                regex: Some("^/health".into()),
                action: RuleAction::Drop,
                ..Default::default()
            }]
        });
        let decision = dropping.decide(&[&span(u64::MAX, 5, 2)], |_| None);
        assert!(!decision.keep);
        assert_eq!(dropping.reason_name(decision.reason), "rule:health");
        let keeping = sampler(|raw| {
            raw.sampling.fraction = 0.0;
            raw.sampling.rules = vec![RawSamplingRule {
                key: "http.route".into(),
                value: Some("/healthz".into()),
                ..Default::default()
            }]
        });
        let decision = keeping.decide(&[&span(1, 5, 0)], |_| None);
        assert!(decision.keep);
        assert_eq!(keeping.reason_name(decision.reason), "rule:http.route");
    }

    #[test]
    fn the_cache_forgets_the_oldest_decision_first() {
        let mut cache = DecisionCache::new(2);
        let decision = Decision {
            keep: true,
            reason: Reason::Fraction,
        };
        for byte in 1..=3u8 {
            cache.insert(TraceId([byte; 16]), decision);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&TraceId([1; 16])).is_none());
        assert_eq!(cache.get(&TraceId([3; 16])), Some(decision));
    }
}
