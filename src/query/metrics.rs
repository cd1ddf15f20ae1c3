//! TraceQL metrics: `{…} | rate() by(…)` and the other `…_over_time` functions, over
//! the spans a query matches in a time range (the head's and the index's, as search finds
//! them), one value per step and series. Values are exact: quantiles come from every
//! matching span's value, not from approximating buckets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{SpanId, TraceId};
use crate::store::{Storage, StoreError};

use super::search::{scan, SearchRequest};
use super::traceql::eval::{Lookup, Value};
use super::traceql::{Intrinsic, MetricsFunction, MetricsStage, Operand, Query, KINDS};

pub struct MetricsRequest {
    /// A query whose last stage is a metrics function.
    pub query: Query,
    /// Spans that started in `[start, end)` count, ns.
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The step; `None` for an instant query (one value over the whole range).
    pub step_nanos: Option<u64>,
    /// Exemplars per series, at most.
    pub exemplars: usize,
    /// Series beyond this many are left out (the answer says it is partial).
    pub max_series: usize,
}

/// A label's value, as TraceQL metrics label a series.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A `by()` operand the span does not have.
    Nil,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub at_unix_nano: u64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, LabelValue)>,
    /// (interval start, ns; value), oldest first; an interval without a value (no span
    /// for a quantile, say) is left out.
    pub samples: Vec<(u64, f64)>,
    pub exemplars: Vec<Exemplar>,
}

pub struct MetricsResult {
    pub series: Vec<Series>,
    /// Series were left out past `max_series`.
    pub truncated: bool,
    pub inspected_traces: u64,
    pub inspected_spans: u64,
}

/// The step Tempo uses when none is asked: about 240 points over the range, in whole
/// seconds.
pub fn default_step_nanos(start_unix_nano: u64, end_unix_nano: u64) -> u64 {
    let seconds = end_unix_nano
        .saturating_sub(start_unix_nano)
        .div_ceil(1_000_000_000);
    seconds.div_ceil(240).max(1) * 1_000_000_000
}

/// What one series accumulates per interval: enough for every function, and no more
/// (each value only for a quantile).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Interval {
    count: u64,
    /// Values read (the spans that have the function's operand).
    read: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    /// Every value read, for `quantile_over_time` only.
    values: Vec<f64>,
    /// The slowest span, the interval's exemplar candidate.
    exemplar: Option<Exemplar>,
}

impl Interval {
    fn add(&mut self, value: f64, keep: bool) {
        self.read += 1;
        self.sum += value;
        self.min = Some(self.min.map_or(value, |min| min.min(value)));
        self.max = Some(self.max.map_or(value, |max| max.max(value)));
        if keep {
            self.values.push(value);
        }
    }

    fn offer(&mut self, exemplar: Exemplar) {
        if self
            .exemplar
            .as_ref()
            .is_none_or(|best| exemplar.value > best.value)
        {
            self.exemplar = Some(exemplar);
        }
    }

    /// Add what another node accumulated over the same interval.
    fn merge(&mut self, other: Interval) {
        self.count += other.count;
        self.read += other.read;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.values.extend(other.values);
        if let Some(exemplar) = other.exemplar {
            self.offer(exemplar);
        }
    }
}

/// The label values of one group (`by()`), made hashable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum GroupKey {
    String(String),
    Int(i64),
    Float(u64),
    Bool(bool),
    Nil,
}

impl GroupKey {
    fn label(&self) -> LabelValue {
        match self {
            GroupKey::String(text) => LabelValue::String(text.clone()),
            GroupKey::Int(number) => LabelValue::Int(*number),
            GroupKey::Float(bits) => LabelValue::Float(f64::from_bits(*bits)),
            GroupKey::Bool(flag) => LabelValue::Bool(*flag),
            GroupKey::Nil => LabelValue::Nil,
        }
    }
}

/// A series' group: its `by()` values and, for `histogram_over_time`, its bucket.
type Group = (Vec<GroupKey>, Option<u64>);

/// What one node accumulates for a metrics query, before series are made of it: in a
/// cluster every node accumulates the spans it holds, and the node asked merges them, so
/// that every function (quantiles and averages too) is exact over the whole cluster.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Accumulated {
    /// Each group's intervals (a list: JSON keys are strings); sent to another node
    /// with only the intervals that counted a span.
    #[serde(with = "sparse_intervals")]
    groups: Vec<(Group, Vec<Interval>)>,
    inspected_traces: u64,
    inspected_spans: u64,
}

impl Accumulated {
    /// Add another node's accumulation of the same request (a group whose intervals do
    /// not line up, from a request not the same, is left out).
    pub fn merge(&mut self, other: Accumulated) {
        self.inspected_traces += other.inspected_traces;
        self.inspected_spans += other.inspected_spans;
        let mut groups: BTreeMap<Group, Vec<Interval>> =
            std::mem::take(&mut self.groups).into_iter().collect();
        for (group, theirs) in other.groups {
            match groups.get_mut(&group) {
                Some(ours) if ours.len() == theirs.len() => {
                    for (ours, theirs) in ours.iter_mut().zip(theirs) {
                        ours.merge(theirs);
                    }
                }
                Some(_) => {}
                None => {
                    groups.insert(group, theirs);
                }
            }
        }
        self.groups = groups.into_iter().collect();
    }
}

/// A group's intervals as nodes send them: how many, and those that counted a span, each
/// with its index (a query of many steps over sparse data would be mostly empty ones).
mod sparse_intervals {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Group, Interval, MAX_INTERVALS};

    type Sparse<G, I> = Vec<(G, usize, Vec<(usize, I)>)>;

    pub fn serialize<S: Serializer>(
        groups: &[(Group, Vec<Interval>)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let sparse: Sparse<&Group, &Interval> = groups
            .iter()
            .map(|(group, intervals)| {
                let counted = intervals
                    .iter()
                    .enumerate()
                    .filter(|(_, interval)| interval.count > 0)
                    .collect();
                (group, intervals.len(), counted)
            })
            .collect();
        sparse.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(Group, Vec<Interval>)>, D::Error> {
        let sparse: Sparse<Group, Interval> = Deserialize::deserialize(deserializer)?;
        sparse
            .into_iter()
            .map(|(group, len, counted)| {
                if len > MAX_INTERVALS {
                    return Err(serde::de::Error::custom("too many intervals"));
                }
                let mut intervals = vec![Interval::default(); len];
                for (index, interval) in counted {
                    *intervals
                        .get_mut(index)
                        .ok_or_else(|| serde::de::Error::custom("interval out of range"))? =
                        interval;
                }
                Ok((group, intervals))
            })
            .collect()
    }
}

/// The most intervals a query is cut into.
const MAX_INTERVALS: usize = 100_000;

/// Run a metrics query. Blocking (tantivy reads).
pub fn query(storage: &Storage, request: &MetricsRequest) -> Result<MetricsResult, StoreError> {
    Ok(finish(request, accumulate(storage, request)?))
}

/// Accumulate the spans this node holds that the query matches. Blocking.
pub fn accumulate(storage: &Storage, request: &MetricsRequest) -> Result<Accumulated, StoreError> {
    let Some(stage) = request.query.metrics() else {
        return Ok(Accumulated::default());
    };
    let keep_values = matches!(stage.function, MetricsFunction::QuantileOverTime(..));
    let (origin, step, intervals) = intervals(request);
    let search = SearchRequest {
        query: request.query.clone(),
        limit: usize::MAX,
        start_unix_nano: Some(request.start_unix_nano),
        end_unix_nano: Some(request.end_unix_nano.saturating_sub(1)),
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let mut groups: BTreeMap<Group, Vec<Interval>> = BTreeMap::new();
    let (inspected_traces, inspected_spans) = scan(storage, &search, |found| {
        let lookup = Lookup::new(&found.trace);
        for &index in &found.matched.spans {
            let span = &found.trace.spans[index];
            let start = span.start_time_unix_nano;
            if start < request.start_unix_nano || start >= request.end_unix_nano {
                continue;
            }
            let value = match stage.function.operand() {
                None => None,
                // A span without the value the function reads counts nowhere; nor does
                // a value that is not a finite number.
                Some(operand) => match number(lookup.value(index, operand), operand) {
                    Some(value) if value.is_finite() => Some(value),
                    _ => continue,
                },
            };
            let bucket = match (&stage.function, value) {
                (MetricsFunction::HistogramOverTime(_), Some(value)) => {
                    Some(power_of_two_bucket(value).to_bits())
                }
                _ => None,
            };
            let key: Vec<GroupKey> = stage
                .by
                .iter()
                .map(|operand| group_key(lookup.value(index, operand), operand))
                .collect();
            let slot = ((start.saturating_sub(origin)) / step).min(intervals as u64 - 1) as usize;
            let series = groups
                .entry((key, bucket))
                .or_insert_with(|| vec![Interval::default(); intervals]);
            let interval = &mut series[slot];
            interval.count += 1;
            if let Some(value) = value {
                interval.add(value, keep_values);
            }
            let duration = span.duration_nanos as f64 / 1e9;
            interval.offer(Exemplar {
                trace_id: found.trace_id,
                span_id: SpanId(span.span_id),
                at_unix_nano: start,
                value: value.unwrap_or(duration),
            });
        }
        true
    })?;
    Ok(Accumulated {
        groups: groups.into_iter().collect(),
        inspected_traces,
        inspected_spans,
    })
}

/// Make the series of what was accumulated.
pub fn finish(request: &MetricsRequest, accumulated: Accumulated) -> MetricsResult {
    let mut result = MetricsResult {
        series: Vec::new(),
        truncated: false,
        inspected_traces: accumulated.inspected_traces,
        inspected_spans: accumulated.inspected_spans,
    };
    let Some(stage) = request.query.metrics() else {
        return result;
    };
    let (origin, step, _) = intervals(request);
    for ((key, bucket), mut accumulated) in accumulated.groups {
        let mut labels: Vec<(String, LabelValue)> = if stage.by.is_empty() {
            vec![(
                "__name__".to_owned(),
                LabelValue::String(stage.function.name().to_owned()),
            )]
        } else {
            stage
                .by
                .iter()
                .zip(&key)
                .map(|(operand, key)| (operand.to_string(), key.label()))
                .collect()
        };
        if let Some(bucket) = bucket {
            labels.push((
                "__bucket".to_owned(),
                LabelValue::Float(f64::from_bits(bucket)),
            ));
        }
        let made = series_of(
            stage,
            &labels,
            &mut accumulated,
            origin,
            step,
            request.exemplars,
        );
        for series in made {
            if result.series.len() >= request.max_series {
                result.truncated = true;
                break;
            }
            result.series.push(series);
        }
    }
    result
}

/// The first interval's start, the step, and how many intervals cover the range.
fn intervals(request: &MetricsRequest) -> (u64, u64, usize) {
    let range = request
        .end_unix_nano
        .saturating_sub(request.start_unix_nano)
        .max(1);
    match request.step_nanos {
        None => (request.start_unix_nano, range, 1),
        Some(step) => {
            let step = step.max(1);
            // Intervals are aligned to the step, as Tempo's (and Prometheus's) are.
            let origin = request.start_unix_nano - request.start_unix_nano % step;
            let count = (request.end_unix_nano - origin).div_ceil(step).max(1);
            (origin, step, count.min(MAX_INTERVALS as u64) as usize)
        }
    }
}

type Labels = Vec<(String, LabelValue)>;

/// The series one group makes: one, or one per quantile.
fn series_of(
    stage: &MetricsStage,
    labels: &[(String, LabelValue)],
    intervals: &mut [Interval],
    origin: u64,
    step: u64,
    exemplar_cap: usize,
) -> Vec<Series> {
    let step_seconds = step as f64 / 1e9;
    let at = |slot: usize| origin + slot as u64 * step;
    let per_interval = |value: &dyn Fn(&mut Interval) -> Option<f64>,
                        intervals: &mut [Interval]| {
        intervals
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, interval)| value(interval).map(|value| (at(slot), value)))
            .collect::<Vec<_>>()
    };
    let samples_and_labels: Vec<(Labels, Vec<(u64, f64)>)> = match &stage.function {
        MetricsFunction::Rate => vec![(
            labels.to_vec(),
            per_interval(
                &|interval| Some(interval.count as f64 / step_seconds),
                intervals,
            ),
        )],
        MetricsFunction::CountOverTime | MetricsFunction::HistogramOverTime(_) => vec![(
            labels.to_vec(),
            per_interval(&|interval| Some(interval.count as f64), intervals),
        )],
        MetricsFunction::MinOverTime(_) => vec![(
            labels.to_vec(),
            per_interval(&|interval| interval.min, intervals),
        )],
        MetricsFunction::MaxOverTime(_) => vec![(
            labels.to_vec(),
            per_interval(&|interval| interval.max, intervals),
        )],
        MetricsFunction::SumOverTime(_) => vec![(
            labels.to_vec(),
            per_interval(
                &|interval| (interval.read > 0).then_some(interval.sum),
                intervals,
            ),
        )],
        MetricsFunction::AvgOverTime(_) => vec![(
            labels.to_vec(),
            per_interval(
                &|interval| (interval.read > 0).then(|| interval.sum / interval.read as f64),
                intervals,
            ),
        )],
        MetricsFunction::QuantileOverTime(_, quantiles) => {
            for interval in intervals.iter_mut() {
                interval.values.sort_by(f64::total_cmp);
            }
            quantiles
                .iter()
                .map(|quantile| {
                    let mut labels = labels.to_vec();
                    labels.push(("p".to_owned(), LabelValue::Float(*quantile)));
                    let samples = per_interval(
                        &|interval| quantile_of(&interval.values, *quantile),
                        intervals,
                    );
                    (labels, samples)
                })
                .collect()
        }
    };
    // The slowest span of each interval, the slowest first, as many as asked; a rate's
    // or count's exemplar sits on its interval's value, so it is drawn on the line.
    let mut exemplars: Vec<(usize, Exemplar)> = intervals
        .iter_mut()
        .enumerate()
        .filter_map(|(slot, interval)| interval.exemplar.take().map(|exemplar| (slot, exemplar)))
        .collect();
    exemplars.sort_by(|a, b| b.1.value.total_cmp(&a.1.value));
    exemplars.truncate(exemplar_cap);
    exemplars.sort_by_key(|(slot, exemplar)| (*slot, exemplar.at_unix_nano));
    samples_and_labels
        .into_iter()
        .map(|(labels, samples)| {
            let exemplars = exemplars
                .iter()
                .map(|(slot, exemplar)| {
                    let mut exemplar = exemplar.clone();
                    if matches!(
                        stage.function,
                        MetricsFunction::Rate | MetricsFunction::CountOverTime
                    ) {
                        let value = samples
                            .iter()
                            .find(|(at_slot, _)| *at_slot == at(*slot))
                            .map_or(0.0, |(_, value)| *value);
                        exemplar.value = value;
                    }
                    exemplar
                })
                .collect();
            Series {
                labels,
                samples,
                exemplars,
            }
        })
        .collect()
}

/// The `q` quantile of sorted values, interpolated between neighbours (as Prometheus's
/// `quantile_over_time`); `None` for no values.
fn quantile_of(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = q.clamp(0.0, 1.0) * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let weight = rank - below as f64;
    Some(sorted[below] * (1.0 - weight) + sorted[above] * weight)
}

/// The smallest power of two (seconds for durations) at or above `value`, Tempo's
/// `histogram_over_time` bucket.
fn power_of_two_bucket(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 0.0;
    }
    2f64.powi(value.log2().ceil() as i32)
}

/// A numeric operand value; durations in seconds, as Tempo's metrics give them.
fn number(value: Option<Value>, operand: &Operand) -> Option<f64> {
    let is_duration = matches!(
        operand,
        Operand::Intrinsic(Intrinsic::Duration | Intrinsic::TraceDuration)
    );
    match value? {
        Value::Int(nanos) if is_duration => Some(nanos as f64 / 1e9),
        Value::Int(number) => Some(number as f64),
        Value::Float(number) => Some(number),
        _ => None,
    }
}

/// A `by()` value; statuses and kinds by name, durations in seconds.
fn group_key(value: Option<Value>, operand: &Operand) -> GroupKey {
    let Some(value) = value else {
        return GroupKey::Nil;
    };
    match (operand, value) {
        (Operand::Intrinsic(Intrinsic::Status), Value::Int(code)) => GroupKey::String(
            match code {
                2 => "error",
                1 => "ok",
                _ => "unset",
            }
            .to_owned(),
        ),
        (Operand::Intrinsic(Intrinsic::Kind), Value::Int(kind)) => GroupKey::String(
            KINDS
                .get(kind as usize)
                .copied()
                .unwrap_or("unspecified")
                .to_owned(),
        ),
        (Operand::Intrinsic(Intrinsic::Duration | Intrinsic::TraceDuration), Value::Int(nanos)) => {
            GroupKey::Float((nanos as f64 / 1e9).to_bits())
        }
        (_, Value::String(text)) => GroupKey::String(text),
        (_, Value::Int(number)) => GroupKey::Int(number),
        (_, Value::Float(number)) => GroupKey::Float(number.to_bits()),
        (_, Value::Bool(flag)) => GroupKey::Bool(flag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulations_travel_with_only_their_counted_intervals_and_merge() {
        let interval = |count: u64, value: f64| {
            let mut interval = Interval {
                count,
                ..Interval::default()
            };
            interval.add(value, true);
            interval
        };
        let mut intervals = vec![Interval::default(); 240];
        intervals[3] = interval(2, 0.5);
        intervals[200] = interval(1, 4.0);
        let theirs = Accumulated {
            groups: vec![(
                (vec![GroupKey::String("a".into())], None),
                intervals.clone(),
            )],
            inspected_traces: 3,
            inspected_spans: 3,
        };
        let wire = serde_json::to_string(&theirs).unwrap();
        assert!(wire.len() < 1_000, "{wire}");
        let back: Accumulated = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.groups, theirs.groups);
        let mut ours = Accumulated {
            groups: vec![((vec![GroupKey::String("a".into())], None), {
                let mut mine = vec![Interval::default(); 240];
                mine[3] = interval(1, 0.25);
                mine
            })],
            inspected_traces: 1,
            inspected_spans: 1,
        };
        ours.merge(back);
        let merged = &ours.groups[0].1;
        assert_eq!(merged[3].count, 3);
        assert_eq!((merged[3].min, merged[3].max), (Some(0.25), Some(0.5)));
        assert_eq!(merged[200].values, vec![4.0]);
        assert_eq!(ours.inspected_spans, 4);
        // An index past the intervals it says it has is refused.
        assert!(serde_json::from_str::<Accumulated>(
            r#"{"groups": [[[[], null], 2, [[5, {"count": 1, "read": 0, "sum": 0.0, "min": null, "max": null, "values": [], "exemplar": null}]]]], "inspected_traces": 0, "inspected_spans": 0}"#
        )
        .is_err());
    }

    #[test]
    fn quantiles_interpolate_between_neighbours() {
        assert_eq!(quantile_of(&[], 0.5), None);
        assert_eq!(quantile_of(&[3.0], 0.99), Some(3.0));
        assert_eq!(quantile_of(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        assert_eq!(quantile_of(&[1.0, 2.0, 3.0, 4.0], 1.0), Some(4.0));
        assert_eq!(quantile_of(&[1.0, 2.0, 3.0, 4.0], 0.0), Some(1.0));
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        assert_eq!(power_of_two_bucket(0.3), 0.5);
        assert_eq!(power_of_two_bucket(0.5), 0.5);
        assert_eq!(power_of_two_bucket(3.0), 4.0);
        assert_eq!(power_of_two_bucket(0.001), 2f64.powi(-9));
    }

    #[test]
    fn steps_are_aligned_and_default_to_about_240_points() {
        assert_eq!(default_step_nanos(0, 3_600_000_000_000), 15_000_000_000);
        assert_eq!(default_step_nanos(0, 60_000_000_000), 1_000_000_000);
        let request = MetricsRequest {
            query: super::super::traceql::parse("{} | rate()").unwrap(),
            start_unix_nano: 1_700_000_007_000_000_000,
            end_unix_nano: 1_700_000_067_000_000_000,
            step_nanos: Some(15_000_000_000),
            exemplars: 0,
            max_series: 10,
        };
        let (origin, step, count) = intervals(&request);
        assert_eq!(origin, 1_699_999_995_000_000_000);
        assert_eq!(origin % step, 0);
        assert_eq!(count, 5);
    }
}
