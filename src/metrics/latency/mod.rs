//! Exact latency quantiles per operation (service, span name, span kind), cumulative since
//! start and over sliding windows, from hdrhistogram at 2 significant digits.
//!
//! Each operation keeps a cumulative histogram, the histogram of the current minute, and
//! the last 60 closed minutes compressed (hdrhistogram's V2 + DEFLATE, a few hundred bytes
//! each), so a window of 1, 5 or 60 minutes is a merge of at most 61 histograms while an
//! operation stays within tens of KiB. Minutes are those of the spans' end times, so a
//! rebuild from the index at start-up puts every span where it was. Time is passed in, so
//! window expiry is tested without waiting. Written by the pipeline's WAL thread, read by
//! query handlers; one mutex around the map.

use std::collections::{BTreeMap, VecDeque};

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

mod snapshot;
use hdrhistogram::Histogram;

use crate::model::TraceId;

/// 1 µs … 1 h, in µs; longer spans are clamped to the maximum and counted.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;
const MINUTES_KEPT: u64 = 60;
/// Trace samples kept per minute for "one exemplar per latency band".
const SAMPLES_PER_MINUTE: usize = 6;

#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct OperationKey {
    pub service: String,
    pub span_name: String,
    pub span_kind: i32,
}

/// A span as the latency histograms see it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub duration_us: u64,
    pub end_unix_nano: u64,
    pub error: bool,
    pub trace_id: TraceId,
}

impl Observation {
    /// A span as the histograms see it, from what the span record and the index's fast
    /// fields both hold.
    pub fn of(
        trace_id: TraceId,
        start_unix_nano: u64,
        duration_nanos: u64,
        status_code: i32,
    ) -> Observation {
        Observation {
            duration_us: duration_nanos / 1000,
            end_unix_nano: start_unix_nano.saturating_add(duration_nanos),
            error: status_code == 2,
            trace_id,
        }
    }
}

/// Minutes since the epoch, the unit of the windows.
pub fn current_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() / 60)
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceSample {
    pub trace_id: TraceId,
    pub duration_us: u64,
}

struct Minute {
    minute: u64,
    /// 32-bit counts: a minute never holds 4 billion spans of one operation, and half the
    /// memory keeps an operation with every window under 64 KiB.
    histogram: Histogram<u32>,
    errors: u64,
    samples: Vec<TraceSample>,
    slowest: Option<TraceSample>,
}

struct ClosedMinute {
    minute: u64,
    compressed: Vec<u8>,
    errors: u64,
    samples: Vec<TraceSample>,
    slowest: Option<TraceSample>,
}

pub struct Operation {
    cumulative: Histogram<u64>,
    cumulative_errors: u64,
    slowest_ever: Option<TraceSample>,
    clamped: u64,
    current: Option<Minute>,
    closed: VecDeque<ClosedMinute>,
}

fn new_histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("static histogram bounds are valid")
}

/// Add a minute's 32-bit histogram into a 64-bit one.
fn add_minute(into: &mut Histogram<u64>, minute: &Histogram<u32>) {
    for value in minute.iter_recorded() {
        let _ = into.record_n(value.value_iterated_to(), u64::from(value.count_at_value()));
    }
}

/// A service's calls from its operations' stats over one window: its SERVER and CONSUMER
/// operations merged (what it was asked to do; its own client calls are its callees'
/// business), or all its operations when it has none of those.
pub fn service_summary(
    operations: &[(OperationKey, WindowStats)],
    service: &str,
) -> Option<WindowStats> {
    let of_service: Vec<&(OperationKey, WindowStats)> = operations
        .iter()
        .filter(|(key, _)| key.service == service)
        .collect();
    let served = of_service
        .iter()
        .any(|(key, _)| matches!(key.span_kind, 2 | 5));
    let mut merged: Option<WindowStats> = None;
    for (key, stats) in of_service {
        if served && !matches!(key.span_kind, 2 | 5) {
            continue;
        }
        merged = Some(match merged {
            None => stats.clone(),
            Some(mut sum) => {
                let _ = sum.histogram.add(&stats.histogram);
                sum.errors += stats.errors;
                sum
            }
        });
    }
    merged.map(WindowStats::recomputed)
}

/// Summary of one window of one operation; durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The slowest sampled trace, then one sample per band (≤p50, p50–p90, p90–p99, >p99).
    pub slowest: Option<TraceSample>,
    pub band_samples: Vec<TraceSample>,
    histogram: Histogram<u64>,
}

impl WindowStats {
    /// Errors per call (0 without calls).
    pub fn error_rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        }
    }

    /// Count and quantiles again from the histogram (after merging others into it).
    fn recomputed(mut self) -> WindowStats {
        let histogram = &self.histogram;
        let quantile_ms = |quantile: f64| {
            if histogram.is_empty() {
                0.0
            } else {
                histogram.value_at_quantile(quantile) as f64 / 1000.0
            }
        };
        self.count = histogram.len();
        self.p50_ms = quantile_ms(0.5);
        self.p90_ms = quantile_ms(0.9);
        self.p95_ms = quantile_ms(0.95);
        self.p99_ms = quantile_ms(0.99);
        self.p999_ms = quantile_ms(0.999);
        self.max_ms = if histogram.is_empty() {
            0.0
        } else {
            histogram.max() as f64 / 1000.0
        };
        self
    }

    /// Share of the window's spans at or below `duration_us` (0–100).
    /// The percentile rank (0–100) of a duration among the window's calls, counting calls
    /// of the same duration as half below it (the mid-rank): a call as long as all the
    /// others ranks 50, not 100.
    pub fn percentile_rank(&self, duration_us: u64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let value = duration_us.max(LOWEST_US);
        let at_or_below = self.histogram.count_between(0, value);
        let equal = self.histogram.count_at(value);
        100.0 * (at_or_below.saturating_sub(equal) as f64 + equal as f64 / 2.0) / self.count as f64
    }

    /// The median and the median absolute deviation of the window's calls, in ms: what
    /// is usual, robust to the few outliers an incident adds.
    pub fn median_and_mad_ms(&self) -> (f64, f64) {
        if self.histogram.is_empty() {
            return (0.0, 0.0);
        }
        let median = self.histogram.value_at_quantile(0.5) as f64;
        let mut deviations: Vec<(f64, u64)> = self
            .histogram
            .iter_recorded()
            .map(|value| {
                (
                    (value.value_iterated_to() as f64 - median).abs(),
                    value.count_at_value(),
                )
            })
            .collect();
        deviations.sort_by(|a, b| a.0.total_cmp(&b.0));
        let half = self.histogram.len().div_ceil(2);
        let mut seen = 0;
        for (deviation, count) in deviations {
            seen += count;
            if seen >= half {
                return (median / 1000.0, deviation / 1000.0);
            }
        }
        (median / 1000.0, 0.0)
    }
}

/// Which minutes a [`Window`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Minutes {
    /// `from..=to`, in minutes since the epoch (those of the last hour are kept; older
    /// ones count as empty).
    Between(u64, u64),
    /// Since start.
    All,
}

impl Minutes {
    /// The last `minutes` up to `now_minute` (`None`: since start), as
    /// [`LatencyHistograms::stats`] takes them.
    pub fn last(minutes: Option<u64>, now_minute: u64) -> Minutes {
        match minutes {
            Some(minutes) => Minutes::Between((now_minute + 1).saturating_sub(minutes), now_minute),
            None => Minutes::All,
        }
    }
}

/// One operation's calls over some minutes, as one node holds them: windows of several
/// nodes merge into the cluster's before quantiles are read off.
#[derive(Debug, Clone)]
pub struct Window {
    histogram: Histogram<u64>,
    errors: u64,
    /// Sampled traces of the minutes (for one exemplar per latency band).
    samples: Vec<TraceSample>,
    slowest: Option<TraceSample>,
}

impl Window {
    fn empty() -> Window {
        Window {
            histogram: new_histogram(),
            errors: 0,
            samples: Vec::new(),
            slowest: None,
        }
    }

    /// Add another node's calls of the same operation and minutes.
    pub fn merge(&mut self, other: Window) {
        let _ = self.histogram.add(&other.histogram);
        self.errors += other.errors;
        self.samples.extend(other.samples);
        self.slowest = slower(self.slowest, other.slowest);
    }

    /// Count, exact quantiles, and the slowest trace and one per latency band (≤p50,
    /// p50–p90, p90–p99, >p99) among the samples.
    pub fn stats(self) -> WindowStats {
        let histogram = &self.histogram;
        let (p50, p90, p99) = (
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.9),
            histogram.value_at_quantile(0.99),
        );
        let bands: [(u64, u64); 4] = [
            (0, p50),
            (p50 + 1, p90),
            (p90 + 1, p99),
            (p99 + 1, u64::MAX),
        ];
        let band_samples = bands
            .iter()
            .filter_map(|(low, high)| {
                self.samples
                    .iter()
                    .find(|sample| sample.duration_us >= *low && sample.duration_us <= *high)
                    .copied()
            })
            .collect();
        WindowStats {
            count: 0,
            errors: self.errors,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            slowest: self.slowest,
            band_samples,
            histogram: self.histogram,
        }
        .recomputed()
    }

    /// Forget the sampled traces that are not stored (dropped by tail sampling), so that
    /// every trace named opens.
    pub fn forget_samples(&mut self, not_stored: impl Fn(&TraceId) -> bool) {
        self.slowest = self.slowest.filter(|sample| !not_stored(&sample.trace_id));
        self.samples.retain(|sample| !not_stored(&sample.trace_id));
    }

    /// For another node: the histogram V2+DEFLATE-serialised.
    pub fn to_wire(&self) -> WireWindow {
        WireWindow {
            histogram: compress(&self.histogram),
            errors: self.errors,
            samples: self.samples.clone(),
            slowest: self.slowest,
        }
    }

    /// What [`Window::to_wire`] made; `None` if the histogram does not decode.
    pub fn from_wire(wire: WireWindow) -> Option<Window> {
        let histogram = snapshot::decompress_strict(&wire.histogram).ok()?;
        Some(Window {
            histogram,
            errors: wire.errors,
            samples: wire.samples,
            slowest: wire.slowest,
        })
    }
}

/// A [`Window`] as nodes send it to each other.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WireWindow {
    #[serde(with = "base64_bytes")]
    histogram: Vec<u8>,
    errors: u64,
    samples: Vec<TraceSample>,
    slowest: Option<TraceSample>,
}

/// Bytes as base64 text, as the snapshot writes histograms.
mod base64_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::snapshot::b64(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        super::snapshot::unb64(&text).map_err(serde::de::Error::custom)
    }
}

// === impl Operation ===

impl Operation {
    fn new() -> Operation {
        Operation {
            cumulative: new_histogram(),
            cumulative_errors: 0,
            slowest_ever: None,
            clamped: 0,
            current: None,
            closed: VecDeque::new(),
        }
    }

    fn record(&mut self, observation: &Observation, now_minute: u64) {
        let value = observation.duration_us.clamp(LOWEST_US, HIGHEST_US);
        if observation.duration_us > HIGHEST_US {
            self.clamped += 1;
        }
        let _ = self.cumulative.record(value);
        if observation.error {
            self.cumulative_errors += 1;
        }
        self.slowest_ever = slower(
            self.slowest_ever,
            Some(TraceSample {
                trace_id: observation.trace_id,
                duration_us: observation.duration_us,
            }),
        );
        let minute = observation.end_unix_nano / 60_000_000_000;
        if minute + MINUTES_KEPT <= now_minute || minute > now_minute + 1 {
            return; // too old (or too far ahead) for any window: cumulative only
        }
        self.advance(minute.max(self.current.as_ref().map_or(0, |current| current.minute)));
        let sample = TraceSample {
            trace_id: observation.trace_id,
            duration_us: observation.duration_us,
        };
        let slot = match self.current.as_mut() {
            Some(current) if current.minute == minute => current,
            _ => match self
                .closed
                .iter_mut()
                .find(|closed| closed.minute == minute)
            {
                Some(closed) => {
                    // A late span for a closed minute: decompress, add, recompress.
                    let mut histogram = decompress(&closed.compressed);
                    let _ = histogram.record(value);
                    closed.compressed = compress(&histogram);
                    closed.errors += u64::from(observation.error);
                    keep_sample(&mut closed.samples, &mut closed.slowest, sample);
                    return;
                }
                None => return,
            },
        };
        let _ = slot.histogram.record(value);
        slot.errors += u64::from(observation.error);
        keep_sample(&mut slot.samples, &mut slot.slowest, sample);
    }

    /// Make `minute` the current one, closing (compressing) the previous.
    fn advance(&mut self, minute: u64) {
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.minute >= minute)
        {
            return;
        }
        if let Some(done) = self.current.take() {
            self.closed.push_back(ClosedMinute {
                minute: done.minute,
                compressed: compress(&done.histogram),
                errors: done.errors,
                samples: done.samples,
                slowest: done.slowest,
            });
        }
        while self
            .closed
            .front()
            .is_some_and(|oldest| oldest.minute + MINUTES_KEPT <= minute)
        {
            self.closed.pop_front();
        }
        self.current = Some(Minute {
            minute,
            histogram: new_histogram(),
            errors: 0,
            samples: Vec::new(),
            slowest: None,
        });
    }

    /// Stats over the last `minutes` minutes up to `now_minute` (`None`: since start).
    fn stats(&self, minutes: Option<u64>, now_minute: u64) -> WindowStats {
        self.window(Minutes::last(minutes, now_minute)).stats()
    }

    /// The calls of `minutes`, before quantiles are read off.
    fn window(&self, minutes: Minutes) -> Window {
        match minutes {
            Minutes::Between(from, to) => {
                self.window_where(|minute| minute >= from && minute <= to, false)
            }
            Minutes::All => self.window_where(|_| true, true),
        }
    }

    /// The minutes `in_window` says merged (or everything since start, with
    /// `everything`), before quantiles are read off.
    fn window_where(&self, in_window: impl Fn(u64) -> bool, everything: bool) -> Window {
        let mut window = Window::empty();
        for closed in &self.closed {
            if in_window(closed.minute) {
                let _ = window.histogram.add(decompress(&closed.compressed));
                window.errors += closed.errors;
                window.samples.extend(closed.samples.iter().copied());
                window.slowest = slower(window.slowest, closed.slowest);
            }
        }
        if let Some(current) = &self.current {
            if in_window(current.minute) {
                add_minute(&mut window.histogram, &current.histogram);
                window.errors += current.errors;
                window.samples.extend(current.samples.iter().copied());
                window.slowest = slower(window.slowest, current.slowest);
            }
        }
        if everything {
            window.histogram = new_histogram();
            let _ = window.histogram.add(&self.cumulative);
            window.errors = self.cumulative_errors;
            window.slowest = slower(window.slowest, self.slowest_ever);
        }
        window
    }

    /// Approximate heap bytes held (for the memory figure of the benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.cumulative.distinct_values() * std::mem::size_of::<u64>()
            + self.current.as_ref().map_or(0, |current| {
                current.histogram.distinct_values() * std::mem::size_of::<u32>()
            })
            + self
                .closed
                .iter()
                .map(|closed| closed.compressed.len() + closed.samples.len() * 24 + 64)
                .sum::<usize>()
    }
}

fn slower(a: Option<TraceSample>, b: Option<TraceSample>) -> Option<TraceSample> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.duration_us > a.duration_us { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Keep the slowest, and a spread of samples: the first few, then ones that widen the
/// range seen, so every latency band tends to have one.
fn keep_sample(
    samples: &mut Vec<TraceSample>,
    slowest: &mut Option<TraceSample>,
    sample: TraceSample,
) {
    *slowest = slower(*slowest, Some(sample));
    if samples.len() < SAMPLES_PER_MINUTE {
        samples.push(sample);
        return;
    }
    let (min_index, min) = samples
        .iter()
        .enumerate()
        .min_by_key(|(_, kept)| kept.duration_us)
        .map(|(index, kept)| (index, kept.duration_us))
        .unwrap_or((0, 0));
    if sample.duration_us < min {
        samples[min_index] = sample;
        return;
    }
    let max = samples
        .iter()
        .map(|kept| kept.duration_us)
        .max()
        .unwrap_or(0);
    if sample.duration_us > max {
        // Replace the sample closest to its neighbour, keeping the spread.
        samples.sort_by_key(|kept| kept.duration_us);
        let crowded = (1..samples.len() - 1)
            .min_by_key(|index| samples[index + 1].duration_us - samples[index - 1].duration_us)
            .unwrap_or(0);
        samples[crowded] = sample;
    }
}

/// A histogram's bytes in `serializer`'s format; empty if it cannot serialise.
fn serialize_with<T: hdrhistogram::Counter, S: Serializer>(
    mut serializer: S,
    histogram: &Histogram<T>,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    if serializer.serialize(histogram, &mut bytes).is_err() {
        bytes.clear();
    }
    bytes
}

fn compress<T: hdrhistogram::Counter>(histogram: &Histogram<T>) -> Vec<u8> {
    serialize_with(V2DeflateSerializer::new(), histogram)
}

fn decompress(bytes: &[u8]) -> Histogram<u64> {
    let mut reader = bytes;
    Deserializer::new()
        .deserialize::<u64, _>(&mut reader)
        .unwrap_or_else(|_| {
            Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("static histogram bounds are valid")
        })
}

/// Every operation's histograms.
#[derive(Default)]
pub struct LatencyHistograms {
    operations: BTreeMap<OperationKey, Operation>,
    /// The end of the last WAL record whose spans are observed here: a snapshot covers
    /// exactly the spans of the WAL up to it.
    observed_through: u64,
}

impl LatencyHistograms {
    /// Spans of WAL records up to this position are observed.
    pub fn observed_through(&mut self, wal_end: u64) {
        self.observed_through = self.observed_through.max(wal_end);
    }

    pub fn observed_position(&self) -> u64 {
        self.observed_through
    }

    pub fn record(&mut self, key: &OperationKey, observation: &Observation, now_minute: u64) {
        if let Some(operation) = self.operations.get_mut(key) {
            operation.record(observation, now_minute);
            return;
        }
        let mut operation = Operation::new();
        operation.record(observation, now_minute);
        self.operations.insert(key.clone(), operation);
    }

    /// [`LatencyHistograms::record`] for many spans of one operation: one lookup.
    pub fn record_all(
        &mut self,
        key: &OperationKey,
        observations: &[Observation],
        now_minute: u64,
    ) {
        let operation = match self.operations.get_mut(key) {
            Some(operation) => operation,
            None => self
                .operations
                .entry(key.clone())
                .or_insert_with(Operation::new),
        };
        for observation in observations {
            operation.record(observation, now_minute);
        }
    }

    pub fn stats(
        &self,
        key: &OperationKey,
        minutes: Option<u64>,
        now_minute: u64,
    ) -> Option<WindowStats> {
        self.operations
            .get(key)
            .map(|operation| operation.stats(minutes, now_minute))
    }

    /// The windows of every operation `selected`, one per entry of `minutes`.
    pub fn windows(
        &self,
        selected: impl Fn(&OperationKey) -> bool,
        minutes: &[Minutes],
    ) -> Vec<(OperationKey, Vec<Window>)> {
        self.operations
            .iter()
            .filter(|(key, _)| selected(key))
            .map(|(key, operation)| {
                let windows = minutes
                    .iter()
                    .map(|minutes| operation.window(*minutes))
                    .collect();
                (key.clone(), windows)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.operations.values().map(Operation::heap_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> OperationKey {
        OperationKey {
            service: "orders".into(),
            span_name: "GET /orders".into(),
            span_kind: 2,
        }
    }

    fn observation(duration_us: u64, minute: u64) -> Observation {
        Observation {
            duration_us,
            end_unix_nano: minute * 60_000_000_000 + 1,
            error: duration_us > 900_000,
            trace_id: TraceId([(duration_us % 251) as u8 + 1; 16]),
        }
    }

    #[test]
    fn a_snapshot_restores_every_window_and_the_observed_position() {
        let mut histograms = LatencyHistograms::default();
        let now = 1_000;
        for (index, duration_us) in (1..=3_000u64).map(|n| n * 97 % 1_200_000).enumerate() {
            let minute = now - (index as u64 % 70);
            histograms.record(&key(), &observation(duration_us.max(1), minute), now);
        }
        histograms.observed_through(4242);
        let restored = LatencyHistograms::restore(&histograms.snapshot()).unwrap();
        assert_eq!(restored.observed_position(), 4242);
        for window in [Some(1), Some(5), Some(60), None] {
            assert_eq!(
                restored.stats(&key(), window, now),
                histograms.stats(&key(), window, now),
                "window {window:?}"
            );
        }
        assert!(LatencyHistograms::restore(b"{not json").is_err());
    }

    #[test]
    fn windows_expire_as_minutes_pass() {
        let mut histograms = LatencyHistograms::default();
        let now = 1_000_000;
        for minute in (now - 90)..=now {
            histograms.record(
                &key(),
                &observation(1000 + minute - (now - 90), minute),
                minute,
            );
        }
        let one = histograms.stats(&key(), Some(1), now).unwrap();
        assert_eq!(one.count, 1);
        let five = histograms.stats(&key(), Some(5), now).unwrap();
        assert_eq!(five.count, 5);
        let hour = histograms.stats(&key(), Some(60), now).unwrap();
        assert_eq!(hour.count, 60);
        let all = histograms.stats(&key(), None, now).unwrap();
        assert_eq!(all.count, 91);
        // Ten minutes later with nothing new, the 5-minute window is empty.
        let later = histograms.stats(&key(), Some(5), now + 10).unwrap();
        assert_eq!(later.count, 0);
        assert_eq!(
            histograms.stats(&key(), Some(60), now + 10).unwrap().count,
            50
        );
    }

    #[test]
    fn slowest_and_band_samples_name_real_traces() {
        let mut histograms = LatencyHistograms::default();
        let now = 5000;
        for duration in [1_000, 2_000, 3_000, 50_000, 1_000_000] {
            histograms.record(&key(), &observation(duration, now), now);
        }
        let stats = histograms.stats(&key(), Some(5), now).unwrap();
        assert_eq!(stats.slowest.unwrap().duration_us, 1_000_000);
        assert!(stats.band_samples.len() >= 2);
        assert_eq!(stats.errors, 1);
        assert!((stats.percentile_rank(3_000) - 50.0).abs() < 0.01);
        let (median, mad) = stats.median_and_mad_ms();
        assert!(
            (median - 3.0).abs() < 0.01 && (mad - 2.0).abs() < 0.01,
            "{median} {mad}"
        );
    }

    #[test]
    fn a_call_as_long_as_all_the_others_is_at_the_middle_not_the_top() {
        let mut histograms = LatencyHistograms::default();
        let now = 5000;
        for _ in 0..20 {
            histograms.record(&key(), &observation(40_000, now), now);
        }
        let stats = histograms.stats(&key(), Some(5), now).unwrap();
        assert!((stats.percentile_rank(40_000) - 50.0).abs() < 0.01);
        assert_eq!(stats.median_and_mad_ms().1, 0.0);
    }

    proptest! {
        #[test]
        fn quantiles_match_a_sorted_array_to_two_significant_digits(
            values in proptest::collection::vec(1u64..10_000_000, 1..400),
            quantile in 0.0f64..1.0,
        ) {
            let mut histograms = LatencyHistograms::default();
            for value in &values {
                histograms.record(&key(), &observation(*value, 100), 100);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let stats = histograms.stats(&key(), Some(5), 100).unwrap();
            prop_assert_eq!(stats.count, values.len() as u64);
            let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1] as f64;
            let merged = &stats.histogram;
            let measured = merged.value_at_quantile(quantile) as f64;
            // hdrhistogram at 2 significant digits: within 1% of the exact sample.
            prop_assert!((measured - exact).abs() <= exact * 0.01 + 1.0, "q {} exact {} measured {}", quantile, exact, measured);
            prop_assert!((stats.max_ms * 1000.0 - *sorted.last().unwrap() as f64).abs() <= *sorted.last().unwrap() as f64 * 0.01 + 1.0);
        }
    }
}
