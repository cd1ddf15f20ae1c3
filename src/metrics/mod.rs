//! Metrics computed from every span and log record as it is acked, and the service's own.
//!
//! Takes acked batches from the pipeline (the WAL thread for spans, the indexer for log
//! records) and gives out the `/metrics` text, OpenMetrics with exemplars or the classic
//! 0.0.4 format, and exact latency quantiles per operation ([`latency`]). Span metrics use
//! the names Grafana's Tempo views query: `traces_spanmetrics_latency` (seconds, Tempo's
//! buckets) and `traces_spanmetrics_calls_total`, labelled `service`, `span_name`,
//! `span_kind`, `status_code`, with `{trace_id, span_id}` exemplars on `_bucket` and
//! `_total` lines. Exemplars are only taken from acked spans, which `/api/v2/traces/{id}`
//! returns from then on. Span names that embed ids are normalised, and each metric keeps at
//! most `max_series` label sets; the rest go to one `__overflow__` series and are counted.

pub mod dependencies;
pub mod graph;
pub mod latency;
pub mod names;
pub mod own;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lock;
use crate::model::{LogRecord, Span, SpanId, TraceId};
use latency::{LatencyHistograms, Observation, OperationKey};

/// Tempo's default span-metrics buckets: 0.002 · 2ⁿ s, n = 0…13.
pub fn default_buckets() -> Vec<f64> {
    (0..14).map(|n| 0.002 * f64::powi(2.0, n)).collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    pub service: String,
    pub span_name: String,
    pub span_kind: SpanKindLabel,
    pub status_code: StatusLabel,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum SpanKindLabel {
    SPAN_KIND_UNSPECIFIED,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    SPAN_KIND_CLIENT,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_CONSUMER,
}

impl SpanKindLabel {
    pub fn from_otlp(kind: i32) -> SpanKindLabel {
        match kind {
            1 => SpanKindLabel::SPAN_KIND_INTERNAL,
            2 => SpanKindLabel::SPAN_KIND_SERVER,
            3 => SpanKindLabel::SPAN_KIND_CLIENT,
            4 => SpanKindLabel::SPAN_KIND_PRODUCER,
            5 => SpanKindLabel::SPAN_KIND_CONSUMER,
            _ => SpanKindLabel::SPAN_KIND_UNSPECIFIED,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum StatusLabel {
    STATUS_CODE_UNSET,
    STATUS_CODE_OK,
    STATUS_CODE_ERROR,
}

impl StatusLabel {
    pub fn from_otlp(code: i32) -> StatusLabel {
        match code {
            1 => StatusLabel::STATUS_CODE_OK,
            2 => StatusLabel::STATUS_CODE_ERROR,
            _ => StatusLabel::STATUS_CODE_UNSET,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub server: String,
}

/// Calls between services gathered over the traces of one indexer pass, by client then
/// server.
#[derive(Default)]
pub struct EdgeTally {
    pairs: crate::FastMap<String, crate::FastMap<String, EdgeSums>>,
}

#[derive(Default)]
struct EdgeSums {
    calls: u64,
    failed: u64,
    client_seconds: Vec<f64>,
    server_seconds: Vec<f64>,
}

impl EdgeTally {
    fn add(&mut self, edge: &graph::Edge<'_>) {
        // Keys are made only for a pair's first call.
        if !self.pairs.contains_key(edge.client) {
            self.pairs
                .insert(edge.client.to_owned(), Default::default());
        }
        let Some(servers) = self.pairs.get_mut(edge.client) else {
            return;
        };
        if !servers.contains_key(edge.server) {
            servers.insert(edge.server.to_owned(), EdgeSums::default());
        }
        let Some(sums) = servers.get_mut(edge.server) else {
            return;
        };
        sums.calls += 1;
        sums.failed += u64::from(edge.failed);
        sums.client_seconds.push(edge.client_seconds);
        sums.server_seconds.push(edge.server_seconds);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    pub service: String,
    pub level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SamplingLabels {
    pub decision: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogExemplar {
    pub trace_id: String,
}

/// A span-metric observation held back until its trace's sampling decision.
pub struct PendingExemplar {
    labels: SpanLabels,
    seconds: f64,
    trace_id: TraceId,
    span_id: SpanId,
    at: SystemTime,
}

impl PendingExemplar {
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }
}

/// Builds each latency histogram with the configured buckets.
#[derive(Clone, Debug)]
pub struct Buckets(Arc<Vec<f64>>);

impl MetricConstructor<HistogramWithExemplars<TraceExemplar>> for Buckets {
    fn new_metric(&self) -> HistogramWithExemplars<TraceExemplar> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// Builds each service-graph histogram with the configured buckets.
#[derive(Clone, Debug)]
pub struct Buckets2(Arc<Vec<f64>>);

impl MetricConstructor<Histogram> for Buckets2 {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type LatencyFamily = Family<SpanLabels, HistogramWithExemplars<TraceExemplar>, Buckets>;

pub struct Metrics {
    registry: Mutex<Registry>,
    latency_family: LatencyFamily,
    calls: Family<SpanLabels, CounterWithExemplar<TraceExemplar>>,
    log_records: Family<LogLabels, CounterWithExemplar<LogExemplar>>,
    /// The same edges per minute, for Jaeger's and Zipkin's dependency views.
    pub dependencies: Mutex<dependencies::Dependencies>,
    graph_requests: Family<EdgeLabels, Counter>,
    graph_failed: Family<EdgeLabels, Counter>,
    graph_server_seconds: Family<EdgeLabels, Histogram, Buckets2>,
    graph_client_seconds: Family<EdgeLabels, Histogram, Buckets2>,
    span_series: Mutex<HashSet<SpanLabels>>,
    log_series: Mutex<HashSet<LogLabels>>,
    overflow: Counter,
    max_series: usize,
    /// Upper bounds of the latency buckets, to tell which bucket a span lands in.
    buckets: Arc<Vec<f64>>,
    /// Span metrics on (`metrics.span_metrics`); off only to measure their cost.
    span_metrics: bool,
    /// Exact quantiles per operation.
    pub latency: Mutex<LatencyHistograms>,
    pub fsync_seconds: Histogram,
    pub commit_seconds: Histogram,
    sampling_traces: Family<SamplingLabels, Counter>,
    sampling_late_spans: Family<DecisionLabels, Counter>,
}

const OVERFLOW: &str = "__overflow__";

impl Metrics {
    pub fn new(buckets: Vec<f64>, max_series: usize, span_metrics: bool) -> Arc<Metrics> {
        let buckets = Arc::new(buckets);
        let latency_family = Family::new_with_constructor(Buckets(buckets.clone()));
        let graph_requests: Family<EdgeLabels, Counter> = Family::default();
        let graph_failed: Family<EdgeLabels, Counter> = Family::default();
        let graph_server_seconds = Family::new_with_constructor(Buckets2(buckets.clone()));
        let graph_client_seconds = Family::new_with_constructor(Buckets2(buckets.clone()));
        let calls = Family::default();
        let log_records = Family::default();
        let overflow = Counter::default();
        let fsync_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        let commit_seconds =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]);
        let sampling_traces: Family<SamplingLabels, Counter> = Family::default();
        let sampling_late_spans: Family<DecisionLabels, Counter> = Family::default();
        let mut registry = Registry::default();
        registry.register(
            "tracelink_sampling_traces",
            "Traces (and later fragments) that left the head, by sampling decision and reason",
            sampling_traces.clone(),
        );
        registry.register(
            "tracelink_sampling_late_spans",
            "Spans that arrived after their trace left the head, by the decision they followed",
            sampling_late_spans.clone(),
        );
        // No `# UNIT`: strict OpenMetrics parsers want the unit in the name, and Grafana's
        // views want Tempo's name. The unit is in the help text.
        registry.register(
            "traces_spanmetrics_latency",
            "Span duration in seconds, per service, span name, kind and status",
            latency_family.clone(),
        );
        registry.register(
            "traces_spanmetrics_calls",
            "Spans received, per service, span name, kind and status",
            calls.clone(),
        );
        registry.register(
            "traces_service_graph_request",
            "Requests between two services (a client span and its server child)",
            graph_requests.clone(),
        );
        registry.register(
            "traces_service_graph_request_failed",
            "Requests between two services where either side failed",
            graph_failed.clone(),
        );
        registry.register(
            "traces_service_graph_request_server_seconds",
            "Duration of the server side of requests between two services, in seconds",
            graph_server_seconds.clone(),
        );
        registry.register(
            "traces_service_graph_request_client_seconds",
            "Duration of the client side of requests between two services, in seconds",
            graph_client_seconds.clone(),
        );
        registry.register(
            "tracelink_log_records",
            "Log records indexed, per service and level",
            log_records.clone(),
        );
        registry.register(
            "tracelink_metrics_series_overflow",
            "Observations folded into the __overflow__ series by the cardinality cap",
            overflow.clone(),
        );
        registry.register(
            "tracelink_wal_fsync_seconds",
            "Duration of write-ahead log fsyncs (one per group commit), in seconds",
            fsync_seconds.clone(),
        );
        registry.register(
            "tracelink_commit_seconds",
            "Duration of tantivy commits (spans and logs together), in seconds",
            commit_seconds.clone(),
        );
        Arc::new(Metrics {
            registry: Mutex::new(registry),
            latency_family,
            calls,
            log_records,
            dependencies: Mutex::new(dependencies::Dependencies::default()),
            graph_requests,
            graph_failed,
            graph_server_seconds,
            graph_client_seconds,
            span_series: Mutex::new(HashSet::new()),
            log_series: Mutex::new(HashSet::new()),
            overflow,
            max_series: max_series.max(1),
            buckets,
            span_metrics,
            latency: Mutex::new(LatencyHistograms::default()),
            fsync_seconds,
            commit_seconds,
            sampling_traces,
            sampling_late_spans,
        })
    }

    /// Register a collector of the service's own gauges and counters.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        lock(&self.registry).register_collector(collector);
    }

    /// Observe every span of an acked batch, whose WAL record ends at `wal_end`. The
    /// latency histograms and the calls counters see every span now (the service graph
    /// sees it when its trace leaves the head).
    /// The span of each bucket and label set that will carry the exemplar is returned as a
    /// [`PendingExemplar`], settled by [`Metrics::settle`] once its trace's sampling
    /// decision is known, so that every exemplar names a kept trace: its counter exemplar
    /// is attached then, and its histogram observation (a histogram exemplar cannot be set
    /// without observing) is held back until then, at most `trace_idle` plus a commit
    /// interval.
    pub fn record_spans(&self, spans: &[Span], wal_end: u64) -> Vec<PendingExemplar> {
        let mut pending = Vec::new();
        if spans.is_empty() || !self.span_metrics {
            lock(&self.latency).observed_through(wal_end);
            return pending;
        }
        let now = SystemTime::now();
        let now_minute = latency::current_minute();
        let mut latency = lock(&self.latency);
        // Per batch: each distinct (service, name, kind, status) is normalised, admitted
        // and turned into labels once; each of its buckets gets one exemplar (the first
        // span to land there), which keeps exemplar strings off the per-span path.
        struct Group {
            labels: SpanLabels,
            key: OperationKey,
            buckets_with_exemplar: u64,
            /// The series' metrics, looked up once per batch (clones share the series).
            histogram: HistogramWithExemplars<TraceExemplar>,
            calls: CounterWithExemplar<TraceExemplar>,
            spans: u64,
            observations: Vec<Observation>,
        }
        let mut groups: crate::FastMap<(&str, &str, i32, i32), Group> = crate::FastMap::default();
        for span in spans {
            let group = groups
                .entry((
                    &*span.service,
                    span.name.as_str(),
                    span.kind,
                    span.status_code,
                ))
                .or_insert_with(|| {
                    let mut labels = SpanLabels {
                        service: span.service.to_string(),
                        span_name: names::normalise_span_name(&span.name),
                        span_kind: SpanKindLabel::from_otlp(span.kind),
                        status_code: StatusLabel::from_otlp(span.status_code),
                    };
                    if !self.admit(&self.span_series, &labels) {
                        labels.service = OVERFLOW.into();
                        labels.span_name = OVERFLOW.into();
                        self.overflow.inc();
                    }
                    let key = OperationKey {
                        service: labels.service.clone(),
                        span_name: labels.span_name.clone(),
                        span_kind: span.kind,
                    };
                    let histogram = self.latency_family.get_or_create(&labels).clone();
                    let calls = self.calls.get_or_create(&labels).clone();
                    Group {
                        labels,
                        key,
                        buckets_with_exemplar: 0,
                        histogram,
                        calls,
                        spans: 0,
                        observations: Vec::new(),
                    }
                });
            let seconds = span.duration_nanos as f64 / 1e9;
            let bucket = self
                .buckets
                .partition_point(|bound| *bound < seconds)
                .min(63);
            group.spans += 1;
            if group.buckets_with_exemplar & (1 << bucket) == 0 {
                group.buckets_with_exemplar |= 1 << bucket;
                pending.push(PendingExemplar {
                    labels: group.labels.clone(),
                    seconds,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    at: now,
                });
            } else {
                group.histogram.observe(seconds, None, None);
            }
            group.observations.push(Observation::of(
                span.trace_id,
                span.start_time_unix_nano,
                span.duration_nanos,
                span.status_code,
            ));
        }
        for group in groups.into_values() {
            group.calls.inc_by(group.spans, None, None);
            latency.record_all(&group.key, &group.observations, now_minute);
        }
        latency.observed_through(wal_end);
        pending
    }

    /// Count the calls of one trace (or fragment) into `tally` (see
    /// [`graph::trace_edges`]); every leaving trace, kept or not, comes here once, and
    /// [`Metrics::record_edges`] adds a pass's tally to the metrics.
    pub fn tally_trace_edges(&self, tally: &mut EdgeTally, spans: &[&Span]) {
        if !self.span_metrics {
            return;
        }
        fn peer_of(span: &Span) -> Option<&str> {
            crate::store::tags::span_string_attribute(&span.payload, &graph::PEER_KEYS)
        }
        for edge in graph::trace_edges(spans, peer_of) {
            tally.add(&edge);
        }
    }

    /// Add the calls of a tally to the service graph and the dependency links: each
    /// pair's series are looked up once, however many calls it made.
    pub fn record_edges(&self, tally: EdgeTally) {
        if tally.pairs.is_empty() {
            return;
        }
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs() / 60)
            .unwrap_or(0);
        let mut dependencies = lock(&self.dependencies);
        for (client, servers) in tally.pairs {
            for (server, sums) in servers {
                dependencies.record(minute, &client, &server, sums.calls, sums.failed);
                let labels = EdgeLabels {
                    client: client.clone(),
                    server,
                };
                self.graph_requests
                    .get_or_create(&labels)
                    .inc_by(sums.calls);
                if sums.failed > 0 {
                    self.graph_failed.get_or_create(&labels).inc_by(sums.failed);
                }
                let server_seconds = self.graph_server_seconds.get_or_create(&labels);
                for seconds in sums.server_seconds {
                    server_seconds.observe(seconds);
                }
                let client_seconds = self.graph_client_seconds.get_or_create(&labels);
                for seconds in sums.client_seconds {
                    client_seconds.observe(seconds);
                }
            }
        }
    }

    /// Count late spans (their trace had left the head) by the decision they followed.
    pub fn record_late_spans(&self, kept: u64, dropped: u64) {
        for (decision, count) in [("keep", kept), ("drop", dropped)] {
            if count > 0 {
                self.sampling_late_spans
                    .get_or_create(&DecisionLabels {
                        decision: decision.into(),
                    })
                    .inc_by(count);
            }
        }
    }

    /// Count one sampling decision.
    pub fn record_decision(&self, keep: bool, reason: String) {
        self.sampling_traces
            .get_or_create(&SamplingLabels {
                decision: if keep { "keep" } else { "drop" }.into(),
                reason,
            })
            .inc();
    }

    /// Settle held-back observations now that their trace's decision is known: the
    /// histogram observation is recorded either way, the exemplars set only when the trace
    /// was kept.
    pub fn settle(&self, pending: Vec<PendingExemplar>, kept: bool) {
        for observation in pending {
            let exemplar = kept.then(|| TraceExemplar {
                trace_id: observation.trace_id.to_hex(),
                span_id: observation.span_id.to_hex(),
            });
            let timestamp = exemplar.as_ref().map(|_| observation.at);
            self.latency_family
                .get_or_create(&observation.labels)
                .observe(observation.seconds, exemplar.clone(), timestamp);
            if exemplar.is_some() {
                // Adding 0 sets the counter's exemplar without counting the span again.
                self.calls
                    .get_or_create(&observation.labels)
                    .inc_by(0, exemplar, timestamp);
            }
        }
    }

    /// Observe replayed spans (WAL records after the latency snapshot) in the latency
    /// histograms, the only metrics that outlive a restart.
    pub fn replay_latency(&self, spans: &[Span], wal_end: u64) {
        if !self.span_metrics {
            lock(&self.latency).observed_through(wal_end);
            return;
        }
        let now_minute = latency::current_minute();
        let mut latency = lock(&self.latency);
        for span in spans {
            let key = OperationKey {
                service: span.service.to_string(),
                span_name: names::normalise_span_name(&span.name),
                span_kind: span.kind,
            };
            let observation = Observation::of(
                span.trace_id,
                span.start_time_unix_nano,
                span.duration_nanos,
                span.status_code,
            );
            latency.record(&key, &observation, now_minute);
        }
        latency.observed_through(wal_end);
    }

    /// Count indexed log records; a record with a trace id becomes the exemplar when
    /// `stored_trace` says that trace is (or will be) stored.
    pub fn record_logs(&self, records: &[LogRecord], stored_trace: &dyn Fn(&TraceId) -> bool) {
        let now = SystemTime::now();
        for record in records {
            let mut labels = LogLabels {
                service: record.service.clone(),
                level: record
                    .level
                    .map_or("unknown", |level| level.as_str())
                    .to_owned(),
            };
            if !self.admit(&self.log_series, &labels) {
                labels.service = OVERFLOW.into();
                self.overflow.inc();
            }
            let exemplar = record
                .trace_id
                .filter(|trace_id| !record.trace_id_low64_only && stored_trace(trace_id))
                .map(|trace_id| LogExemplar {
                    trace_id: trace_id.to_hex(),
                });
            let timestamp = exemplar.as_ref().map(|_| now);
            self.log_records
                .get_or_create(&labels)
                .inc_by(1, exemplar, timestamp);
        }
    }

    fn admit<L: Clone + Eq + std::hash::Hash>(&self, seen: &Mutex<HashSet<L>>, labels: &L) -> bool {
        let mut seen = lock(seen);
        if seen.contains(labels) {
            return true;
        }
        if seen.len() >= self.max_series {
            return false;
        }
        seen.insert(labels.clone());
        true
    }

    /// OpenMetrics 1.0 text (with exemplars and `# EOF`).
    pub fn render_openmetrics(&self) -> String {
        self.render(
            prometheus_client::encoding::text::encode::<String>,
            "OpenMetrics",
        )
    }

    /// The classic Prometheus 0.0.4 text format (no exemplars).
    pub fn render_prometheus_text(&self) -> String {
        self.render(
            prometheus_client::encoding::prometheus_text::encode::<String>,
            "the Prometheus text format",
        )
    }

    fn render(
        &self,
        encode: fn(&mut String, &Registry) -> Result<(), std::fmt::Error>,
        format: &str,
    ) -> String {
        let mut out = String::new();
        if let Err(error) = encode(&mut out, &lock(&self.registry)) {
            tracing::error!(%error, format, "encoding metrics failed");
        }
        out
    }
}
