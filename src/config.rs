//! Configuration: the TOML file, `TRACELINK_<SECTION>_<KEY>` environment overrides and
//! built-in defaults, parsed into a raw serde struct and then validated into [`Config`].
//!
//! Precedence: defaults < file < environment < command line. The environment is passed in
//! as a map so that tests never touch the process environment. Every key is documented,
//! with its default, in `config/tracelink.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::logline::{FieldNames, Format};

/// A configuration problem, naming the key at fault. `main` prints it on one line and
/// exits with code 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config: {key}: {problem}")]
    Invalid { key: String, problem: String },
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub storage: RawStorage,
    pub retention: RawRetention,
    pub limits: RawLimits,
    pub logs: RawLogs,
    pub metrics: RawMetrics,
    pub sampling: RawSampling,
    pub auth: RawAuth,
    pub redaction: RawRedaction,
    pub cluster: RawCluster,
}

/// `[cluster]`: several tracelinks as one service on a NATS JetStream cluster. Without
/// `nats_urls`, a single node with its local write-ahead log.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    pub nats_urls: TokenEntries,
    pub partitions: u64,
    pub stream_replicas: u64,
    pub node_id: String,
    pub advertise_url: String,
    pub lease_ttl_ms: u64,
    pub replay_window: String,
    pub query_timeout_ms: u64,
}

impl Default for RawCluster {
    fn default() -> Self {
        RawCluster {
            nats_urls: TokenEntries::default(),
            partitions: 64,
            stream_replicas: 3,
            node_id: String::new(),
            advertise_url: String::new(),
            lease_ttl_ms: 10_000,
            replay_window: "1h".into(),
            query_timeout_ms: 2_000,
        }
    }
}

/// `[redaction]`: what is redacted before anything is written (see [`crate::redact`]).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedaction {
    /// The built-in rules (credentials in headers, SQL literals, URL userinfo and
    /// signatures, keys, tokens, card numbers).
    pub builtin: bool,
    /// Keys never redacted.
    pub allow_keys: Vec<String>,
    /// The key of `action = "hash"` (a token entry: text, `file:` or `env:`); without it,
    /// hashes are keyed by a random key made at each start.
    pub hash_key: TokenEntries,
    pub rules: Vec<RawRedactionRule>,
}

impl Default for RawRedaction {
    fn default() -> Self {
        RawRedaction {
            builtin: true,
            allow_keys: Vec::new(),
            hash_key: TokenEntries::default(),
            rules: Vec::new(),
        }
    }
}

/// `[[redaction.rules]]`
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRedactionRule {
    pub name: String,
    /// A regex on attribute keys: the whole value of a matching key goes.
    pub key: Option<String>,
    /// A regex on values: each match goes.
    pub value: Option<String>,
    /// `replace` (the default) or `hash`.
    #[serde(default)]
    pub action: Option<String>,
    /// What a match becomes with `replace` (default `REDACTED`).
    #[serde(default)]
    pub replacement: Option<String>,
}

/// `[auth]`: tokens for sending and for querying. Each entry is a token, `file:<path>`
/// (one token per line; blank lines and `#` comments skipped) or `env:<NAME>`, so that no
/// token need live in a committed file. A single string is one entry.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    pub ingest_tokens: TokenEntries,
    pub query_tokens: TokenEntries,
    /// Listen beyond loopback with a scope that needs no token.
    pub allow_unauthenticated: bool,
}

/// A list of entries, or one (`TRACELINK_AUTH_INGEST_TOKENS=env:OTLP_TOKEN`); also the
/// cluster's NATS addresses, where one string may hold several separated by commas.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenEntries {
    One(String),
    Many(Vec<String>),
}

impl Default for TokenEntries {
    fn default() -> Self {
        TokenEntries::Many(Vec::new())
    }
}

impl TokenEntries {
    fn entries(&self) -> &[String] {
        match self {
            TokenEntries::One(entry) => std::slice::from_ref(entry),
            TokenEntries::Many(entries) => entries,
        }
    }

    /// The tokens the entries name.
    fn resolve(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            key: key.into(),
            problem,
        };
        let mut tokens = Vec::new();
        for entry in self.entries() {
            if let Some(path) = entry.strip_prefix("file:") {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| invalid(format!("token file {path:?}: {error}")))?;
                tokens.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty() && !line.starts_with('#'))
                        .map(str::to_owned),
                );
            } else if let Some(name) = entry.strip_prefix("env:") {
                let value = std::env::var(name)
                    .map_err(|_| invalid(format!("environment variable {name} is not set")))?;
                tokens.push(value.trim().to_owned());
            } else {
                tokens.push(entry.trim().to_owned());
            }
        }
        if tokens.iter().any(String::is_empty) {
            return Err(invalid("a token is empty".into()));
        }
        Ok(tokens)
    }
}

/// `[sampling]`: tail sampling of whole traces as they leave the head.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawSampling {
    pub keep_errors: bool,
    pub keep_slower_than_ms: u64,
    pub keep_slower_than_p99: bool,
    pub fraction: f64,
    pub decision_cache_size: u64,
    pub rules: Vec<RawSamplingRule>,
}

impl Default for RawSampling {
    fn default() -> Self {
        RawSampling {
            keep_errors: true,
            keep_slower_than_ms: 1000,
            keep_slower_than_p99: false,
            fraction: 1.0,
            decision_cache_size: 200_000,
            rules: Vec::new(),
        }
    }
}

/// One `[[sampling.rules]]` table: an attribute match that keeps or drops a trace.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawSamplingRule {
    pub name: String,
    pub key: String,
    pub value: Option<String>,
    pub regex: Option<String>,
    pub action: RuleAction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    #[default]
    Keep,
    Drop,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetrics {
    pub span_metrics: bool,
    pub latency_buckets: Vec<f64>,
    pub max_series_per_metric: u64,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            span_metrics: true,
            latency_buckets: crate::metrics::default_buckets(),
            max_series_per_metric: 10_000,
        }
    }
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawLogs {
    pub on_damaged_checkpoints: ReadFrom,
    pub poll_interval_ms: u64,
    pub max_read_bytes_per_pass: u64,
    pub idle_close_ms: u64,
    pub sources: Vec<RawLogSource>,
}

/// One `[[logs.sources]]` table: files to tail and how their lines are written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawLogSource {
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub format: Format,
    /// With `format = "regex"` (or `"auto"`, which it then implies): named groups `time`,
    /// `level`, `message`, `trace_id`, `span_id`, `service`, and any others as attributes.
    pub regex: Option<String>,
    pub service: Option<String>,
    pub read_from: ReadFrom,
    pub max_line_bytes: u64,
    pub multiline: bool,
    pub multiline_timeout_ms: u64,
    pub fields: FieldNames,
}

/// Where to start in files that exist when tracelink first sees them at start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

impl Default for RawLogs {
    fn default() -> Self {
        RawLogs {
            on_damaged_checkpoints: ReadFrom::Beginning,
            poll_interval_ms: 1000,
            max_read_bytes_per_pass: 4 * 1024 * 1024,
            idle_close_ms: 60_000,
            sources: Vec::new(),
        }
    }
}

impl Default for RawLogSource {
    fn default() -> Self {
        RawLogSource {
            paths: Vec::new(),
            exclude: Vec::new(),
            format: Format::Auto,
            regex: None,
            service: None,
            read_from: ReadFrom::Beginning,
            max_line_bytes: 1024 * 1024,
            multiline: true,
            multiline_timeout_ms: 1000,
            fields: FieldNames::default(),
        }
    }
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub http_addr: String,
    pub otlp_http_addr: String,
    pub otlp_grpc_addr: String,
    pub shutdown_grace_ms: u64,
    /// PEM certificate chain and key: all three listeners speak TLS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where people's Grafana is (the page links each trace into its Explore); empty:
    /// no link.
    pub grafana_url: String,
    /// The uid of the Tempo data source pointing at this tracelink in that Grafana.
    pub grafana_tempo_uid: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawStorage {
    pub data_dir: PathBuf,
    pub commit_interval_ms: u64,
    pub commit_max_spans: u64,
    pub index_memory_mb: u64,
    pub wal_segment_bytes: u64,
    pub trace_idle_ms: u64,
    /// Unset: the same as `trace_idle_ms`.
    pub trace_idle_after_root_ms: Option<u64>,
    pub trace_max_age_ms: u64,
    /// Below this much free space on the data directory's filesystem, ingest is refused
    /// (503 / `UNAVAILABLE`) until there is room again; 0 turns the check off.
    pub min_free_bytes: u64,
    /// The traces and logs indexes are partitioned by windows this long (fractions allowed).
    pub partition_hours: f64,
}

/// `[retention]`: when partitions are dropped.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawRetention {
    /// A duration such as "168h", "7d", "90m".
    pub traces_max_age: String,
    pub logs_max_age: String,
    /// 0: no cap.
    pub max_disk_bytes: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            traces_max_age: "168h".into(),
            logs_max_age: "168h".into(),
            max_disk_bytes: 0,
        }
    }
}

/// Retention, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    pub traces_max_age: Duration,
    pub logs_max_age: Duration,
    /// `None`: no cap.
    pub max_disk_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_bytes: u64,
    pub ingest_queue_spans: u64,
    pub max_concurrent_requests: u64,
    pub max_spans_per_trace: u64,
    pub max_bytes_per_trace: u64,
    /// Attribute values longer than this are cut to it, flagged and counted.
    pub max_attribute_bytes: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            http_addr: "127.0.0.1:3200".into(),
            otlp_http_addr: "127.0.0.1:4318".into(),
            otlp_grpc_addr: "127.0.0.1:4317".into(),
            shutdown_grace_ms: 10_000,
            tls_cert: None,
            tls_key: None,
            grafana_url: String::new(),
            grafana_tempo_uid: "tempo".into(),
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            data_dir: PathBuf::from("data"),
            commit_interval_ms: 1000,
            commit_max_spans: 200_000,
            index_memory_mb: 128,
            wal_segment_bytes: 64 * 1024 * 1024,
            trace_idle_ms: 5000,
            trace_idle_after_root_ms: None,
            trace_max_age_ms: 30_000,
            min_free_bytes: 1 << 30,
            partition_hours: 1.0,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_request_bytes: 64 * 1024 * 1024,
            // 1.5 Mi: the head holds rate × (trace_idle_ms + a commit) spans, ~65 bytes
            // each with their traces' share. This bound lets ~240,000 spans/s through
            // with the default idle time (a 2-core machine's full rate is ~210,000) and
            // keeps full-rate ingest under 400 MB at its peak (at 2 Mi it reached 396 MiB,
            // at 1.75 Mi 387 MiB, at 1.5 Mi 348-364 MiB in `bench spans` at 10M).
            ingest_queue_spans: 1_572_864,
            max_concurrent_requests: 32,
            max_spans_per_trace: 10_000,
            max_bytes_per_trace: 5_000_000,
            max_attribute_bytes: 16_384,
        }
    }
}

/// The checked configuration every component is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub otlp_grpc_addr: SocketAddr,
    pub shutdown_grace: Duration,
    /// TLS on every listener.
    pub tls: Option<crate::tls::Tls>,
    /// Grafana's address and the uid of its Tempo data source for this tracelink.
    pub grafana: Option<(String, String)>,
    pub data_dir: PathBuf,
    pub commit_interval: Duration,
    pub commit_max_spans: usize,
    pub index_memory_bytes: usize,
    pub wal_segment_bytes: u64,
    pub max_request_bytes: usize,
    pub ingest_queue_spans: usize,
    pub max_concurrent_requests: usize,
    pub logs: LogsConfig,
    pub span_metrics: bool,
    pub latency_buckets: Vec<f64>,
    pub max_series_per_metric: usize,
    pub trace_idle: Duration,
    /// Idle time after which a trace whose root span has arrived leaves (at most
    /// `trace_idle`).
    pub trace_idle_after_root: Duration,
    pub trace_max_age: Duration,
    pub min_free_bytes: u64,
    /// The length of a partition's window.
    pub partition: Duration,
    pub retention: RetentionConfig,
    pub max_spans_per_trace: usize,
    pub max_bytes_per_trace: usize,
    pub sampling: SamplingConfig,
    pub tokens: crate::auth::Tokens,
    pub redactor: std::sync::Arc<crate::redact::Redactor>,
    /// `None`: one node, its local write-ahead log.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`, checked.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nats_urls: Vec<String>,
    pub partitions: u32,
    pub stream_replicas: usize,
    pub node_id: String,
    /// Empty: `http://` and the address `server.http_addr` bound.
    pub advertise_url: String,
    pub lease_ttl: Duration,
    pub replay_window: Duration,
    pub query_timeout: Duration,
}

impl Config {
    /// How the head assembles traces.
    pub fn head_limits(&self) -> crate::pipeline::head::HeadLimits {
        crate::pipeline::head::HeadLimits {
            trace_idle: self.trace_idle,
            trace_idle_after_root: self.trace_idle_after_root,
            trace_max_age: self.trace_max_age,
            max_spans_per_trace: self.max_spans_per_trace,
            max_bytes_per_trace: self.max_bytes_per_trace,
            decision_cache_size: self.sampling.decision_cache_size,
        }
    }
}

/// Tail sampling, checked: what a trace leaving the head must show to be kept.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    pub keep_errors: bool,
    /// `None`: no latency rule.
    pub keep_slower_than: Option<Duration>,
    pub keep_slower_than_p99: bool,
    pub fraction: f64,
    /// The OpenTelemetry rejection threshold T for `fraction`: keep when the trace id's
    /// low 56 bits are `>= T`.
    pub threshold: u64,
    pub decision_cache_size: usize,
    pub rules: Vec<SamplingRule>,
}

#[derive(Debug, Clone)]
pub struct SamplingRule {
    pub name: String,
    pub key: String,
    pub matcher: RuleMatcher,
    pub action: RuleAction,
}

#[derive(Debug, Clone)]
pub enum RuleMatcher {
    /// The attribute is present, whatever its value.
    Present,
    Equals(String),
    Regex(regex::Regex),
}

/// The tailer's settings, checked.
#[derive(Debug, Clone)]
pub struct LogsConfig {
    pub on_damaged_checkpoints: ReadFrom,
    pub poll_interval: Duration,
    pub max_read_bytes_per_pass: usize,
    pub idle_close: Duration,
    pub sources: Vec<LogSourceConfig>,
}

#[derive(Debug, Clone)]
pub struct LogSourceConfig {
    pub paths: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
    pub format: Format,
    pub regex: Option<regex::Regex>,
    pub service: Option<String>,
    pub read_from: ReadFrom,
    pub max_line_bytes: usize,
    pub multiline: bool,
    pub multiline_timeout: Duration,
    pub fields: FieldNames,
}

const SECTIONS: [&str; 10] = [
    "cluster",
    "server",
    "storage",
    "retention",
    "limits",
    "logs",
    "metrics",
    "sampling",
    "auth",
    "redaction",
];

fn validate_redaction(
    raw: &RawRedaction,
    max_value_bytes: usize,
) -> Result<crate::redact::Redactor, ConfigError> {
    use crate::redact::{Action, RedactionConfig, RuleConfig};
    let regex =
        |key: String, pattern: &Option<String>| -> Result<Option<regex::Regex>, ConfigError> {
            pattern
                .as_deref()
                .map(|pattern| {
                    regex::Regex::new(pattern).map_err(|error| ConfigError::Invalid {
                        key: key.clone(),
                        problem: error.to_string(),
                    })
                })
                .transpose()
        };
    let mut rules = Vec::new();
    for (index, rule) in raw.rules.iter().enumerate() {
        let at = |field: &str| format!("redaction.rules[{index}].{field}");
        let key = regex(at("key"), &rule.key)?;
        let value = regex(at("value"), &rule.value)?;
        if key.is_none() && value.is_none() {
            return Err(ConfigError::Invalid {
                key: at("key"),
                problem: "a rule needs a key or a value pattern".into(),
            });
        }
        let action = match rule.action.as_deref() {
            None | Some("replace") => Action::Replace(
                rule.replacement
                    .clone()
                    .unwrap_or_else(|| crate::redact::REDACTED.to_owned()),
            ),
            Some("hash") => Action::Hash,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: at("action"),
                    problem: format!("{other:?} is neither \"replace\" nor \"hash\""),
                })
            }
        };
        rules.push(RuleConfig {
            name: rule.name.clone(),
            key,
            value,
            action,
        });
    }
    let hash_key = match raw.hash_key.resolve("redaction.hash_key")?.first() {
        Some(text) => *blake3::hash(text.as_bytes()).as_bytes(),
        None => {
            // Unknowable outside this process: hashes still join within one run.
            let seed = format!("{:?}{:?}", std::time::SystemTime::now(), std::process::id());
            *blake3::hash(seed.as_bytes()).as_bytes()
        }
    };
    Ok(crate::redact::Redactor::new(RedactionConfig {
        builtin: raw.builtin,
        rules,
        allow_keys: raw.allow_keys.clone(),
        hash_key,
        max_value_bytes,
    }))
}

impl RawConfig {
    /// Parse a TOML document, apply the environment's `TRACELINK_*` overrides, and check
    /// every key against the schema.
    pub fn from_toml_and_env(
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<RawConfig, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|error: toml::de::Error| ConfigError::Parse(error.to_string()))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TRACELINK_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS
                .iter()
                .find(|section| rest.starts_with(&format!("{section}_")))
            else {
                return Err(ConfigError::Invalid {
                    key: name.clone(),
                    problem: "unknown setting (no such section)".into(),
                });
            };
            let key = rest[section.len() + 1..].to_owned();
            // A value that reads as TOML (a number, a boolean) keeps its type; anything
            // else is a string, so addresses and paths need no quoting.
            let parsed = format!("value = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut wrapper| wrapper.remove("value"))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            let section_table = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section_table {
                toml::Value::Table(section_table) => {
                    section_table.insert(key, parsed);
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        key: section.to_string(),
                        problem: "must be a table".into(),
                    })
                }
            }
        }
        RawConfig::deserialize(toml::Value::Table(table))
            .map_err(|error| ConfigError::Parse(error.to_string().trim().replace('\n', " ")))
    }

    /// Load from `path` (or `config/tracelink.toml` when it exists, or the defaults).
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<RawConfig, ConfigError> {
        let default_path = Path::new("config/tracelink.toml");
        let chosen = match path {
            Some(path) => Some(path),
            None if default_path.exists() => Some(default_path),
            None => None,
        };
        let text = match chosen {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        RawConfig::from_toml_and_env(&text, env)
    }

    /// Turn raw values into typed ones; every problem names its key.
    pub fn validate(self) -> Result<Config, ConfigError> {
        fn addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
            value.parse().map_err(|_| ConfigError::Invalid {
                key: key.into(),
                problem: format!("{value:?} is not a socket address like 127.0.0.1:3200"),
            })
        }
        fn age(key: &str, value: &str) -> Result<Duration, ConfigError> {
            match humantime::parse_duration(value.trim()) {
                Ok(duration) if duration >= Duration::from_secs(1) => Ok(duration),
                Ok(_) => Err(ConfigError::Invalid {
                    key: key.into(),
                    problem: "must be at least a second".into(),
                }),
                Err(error) => Err(ConfigError::Invalid {
                    key: key.into(),
                    problem: format!(
                        "{value:?} is not a duration like \"168h\" or \"7d\": {error}"
                    ),
                }),
            }
        }
        fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    problem: "must be greater than zero".into(),
                });
            }
            Ok(value)
        }
        let mut config = Config {
            http_addr: addr("server.http_addr", &self.server.http_addr)?,
            otlp_http_addr: addr("server.otlp_http_addr", &self.server.otlp_http_addr)?,
            otlp_grpc_addr: addr("server.otlp_grpc_addr", &self.server.otlp_grpc_addr)?,
            shutdown_grace: Duration::from_millis(self.server.shutdown_grace_ms),
            grafana: (!self.server.grafana_url.trim().is_empty()).then(|| {
                (
                    self.server
                        .grafana_url
                        .trim()
                        .trim_end_matches('/')
                        .to_owned(),
                    self.server.grafana_tempo_uid.clone(),
                )
            }),
            tls: match (&self.server.tls_cert, &self.server.tls_key) {
                (None, None) => None,
                (Some(cert), Some(key)) => {
                    Some(crate::tls::Tls::load(cert, key).map_err(|error| {
                        let about_key = match &error {
                            crate::tls::TlsError::NoKey { .. } => true,
                            crate::tls::TlsError::Read { path, .. } => path == key,
                            _ => false,
                        };
                        ConfigError::Invalid {
                            key: if about_key {
                                "server.tls_key"
                            } else {
                                "server.tls_cert"
                            }
                            .into(),
                            problem: error.to_string(),
                        }
                    })?)
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        key: "server.tls_key".into(),
                        problem: "server.tls_cert and server.tls_key go together".into(),
                    })
                }
            },
            data_dir: self.storage.data_dir.clone(),
            commit_interval: Duration::from_millis(positive(
                "storage.commit_interval_ms",
                self.storage.commit_interval_ms,
            )?),
            commit_max_spans: positive("storage.commit_max_spans", self.storage.commit_max_spans)?
                as usize,
            index_memory_bytes: (positive("storage.index_memory_mb", self.storage.index_memory_mb)?
                as usize)
                .max(16)
                * 1024
                * 1024,
            wal_segment_bytes: positive(
                "storage.wal_segment_bytes",
                self.storage.wal_segment_bytes,
            )?,
            max_request_bytes: positive("limits.max_request_bytes", self.limits.max_request_bytes)?
                as usize,
            ingest_queue_spans: positive(
                "limits.ingest_queue_spans",
                self.limits.ingest_queue_spans,
            )? as usize,
            max_concurrent_requests: positive(
                "limits.max_concurrent_requests",
                self.limits.max_concurrent_requests,
            )? as usize,
            logs: validate_logs(&self.logs)?,
            span_metrics: self.metrics.span_metrics,
            latency_buckets: self.metrics.latency_buckets.clone(),
            max_series_per_metric: positive(
                "metrics.max_series_per_metric",
                self.metrics.max_series_per_metric,
            )? as usize,
            trace_idle: Duration::from_millis(positive(
                "storage.trace_idle_ms",
                self.storage.trace_idle_ms,
            )?),
            trace_idle_after_root: Duration::from_millis(
                match self.storage.trace_idle_after_root_ms {
                    Some(after_root) => positive("storage.trace_idle_after_root_ms", after_root)?,
                    None => self.storage.trace_idle_ms,
                }
                .min(self.storage.trace_idle_ms),
            ),
            min_free_bytes: self.storage.min_free_bytes,
            partition: {
                let hours = self.storage.partition_hours;
                if !(hours.is_finite() && hours * 3600.0 >= 1.0 && hours <= 24.0 * 366.0) {
                    return Err(ConfigError::Invalid {
                        key: "storage.partition_hours".into(),
                        problem: "must be between 1/3600 (a second) and a year".into(),
                    });
                }
                Duration::from_secs((hours * 3600.0).round() as u64)
            },
            retention: RetentionConfig {
                traces_max_age: age("retention.traces_max_age", &self.retention.traces_max_age)?,
                logs_max_age: age("retention.logs_max_age", &self.retention.logs_max_age)?,
                max_disk_bytes: Some(self.retention.max_disk_bytes).filter(|bytes| *bytes > 0),
            },
            trace_max_age: Duration::from_millis(positive(
                "storage.trace_max_age_ms",
                self.storage.trace_max_age_ms,
            )?),
            max_spans_per_trace: positive(
                "limits.max_spans_per_trace",
                self.limits.max_spans_per_trace,
            )? as usize,
            max_bytes_per_trace: positive(
                "limits.max_bytes_per_trace",
                self.limits.max_bytes_per_trace,
            )? as usize,
            sampling: validate_sampling(&self.sampling)?,
            redactor: std::sync::Arc::new(validate_redaction(
                &self.redaction,
                positive(
                    "limits.max_attribute_bytes",
                    self.limits.max_attribute_bytes,
                )? as usize,
            )?),
            tokens: crate::auth::Tokens::new(
                self.auth.ingest_tokens.resolve("auth.ingest_tokens")?,
                self.auth.query_tokens.resolve("auth.query_tokens")?,
            ),
            // Checked below, against the address it defaults to.
            cluster: None,
        };
        config.cluster = validate_cluster(&self.cluster, config.http_addr)?;
        if !self.auth.allow_unauthenticated {
            use crate::auth::Scope;
            // Protected by default: a listener beyond loopback needs the tokens of what
            // it serves (Redis's protected mode).
            let listeners = [
                (
                    "server.http_addr",
                    config.http_addr,
                    &[Scope::Ingest, Scope::Query][..],
                ),
                (
                    "server.otlp_http_addr",
                    config.otlp_http_addr,
                    &[Scope::Ingest][..],
                ),
                (
                    "server.otlp_grpc_addr",
                    config.otlp_grpc_addr,
                    &[Scope::Ingest][..],
                ),
            ];
            for (key, address, scopes) in listeners {
                if address.ip().is_loopback() {
                    continue;
                }
                if let Some(scope) = scopes.iter().find(|scope| !config.tokens.required(**scope)) {
                    let tokens = match scope {
                        Scope::Ingest => "auth.ingest_tokens",
                        Scope::Query => "auth.query_tokens",
                    };
                    return Err(ConfigError::Invalid {
                        key: key.into(),
                        problem: format!(
                            "{address} is reachable beyond this machine but {tokens} is empty; set tokens, listen on 127.0.0.1, or set auth.allow_unauthenticated = true"
                        ),
                    });
                }
            }
        }
        let buckets = &config.latency_buckets;
        if buckets.is_empty()
            || buckets.windows(2).any(|pair| pair[0] >= pair[1])
            || buckets
                .iter()
                .any(|bucket| !bucket.is_finite() || *bucket <= 0.0)
        {
            return Err(ConfigError::Invalid {
                key: "metrics.latency_buckets".into(),
                problem: "must be positive, finite and strictly increasing".into(),
            });
        }
        if config.ingest_queue_spans > u32::MAX as usize >> 3 {
            return Err(ConfigError::Invalid {
                key: "limits.ingest_queue_spans".into(),
                problem: "must be below 536870911".into(),
            });
        }
        check_writable(&config.data_dir)?;
        Ok(config)
    }
}

fn validate_logs(raw: &RawLogs) -> Result<LogsConfig, ConfigError> {
    let mut sources = Vec::new();
    for (index, source) in raw.sources.iter().enumerate() {
        let key = |name: &str| format!("logs.sources[{index}].{name}");
        let patterns = |name: &str, globs: &[String]| -> Result<Vec<glob::Pattern>, ConfigError> {
            globs
                .iter()
                .map(|text| {
                    glob::Pattern::new(text).map_err(|error| ConfigError::Invalid {
                        key: key(name),
                        problem: format!("{text:?} is not a glob: {error}"),
                    })
                })
                .collect()
        };
        if source.paths.is_empty() {
            return Err(ConfigError::Invalid {
                key: key("paths"),
                problem: "at least one glob is needed".into(),
            });
        }
        if source.max_line_bytes < 16 {
            return Err(ConfigError::Invalid {
                key: key("max_line_bytes"),
                problem: "must be at least 16".into(),
            });
        }
        let regex = match &source.regex {
            Some(text) => Some(
                regex::Regex::new(text).map_err(|error| ConfigError::Invalid {
                    key: key("regex"),
                    problem: format!("not a regex: {error}"),
                })?,
            ),
            None => None,
        };
        let format = match (source.format, &regex) {
            (Format::Auto | Format::Regex, Some(_)) => Format::Regex,
            (Format::Regex, None) => {
                return Err(ConfigError::Invalid {
                    key: key("regex"),
                    problem: "format = \"regex\" needs a regex".into(),
                })
            }
            (_, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: key("regex"),
                    problem: "a regex goes with format = \"regex\"".into(),
                })
            }
            (format, None) => format,
        };
        sources.push(LogSourceConfig {
            paths: patterns("paths", &source.paths)?,
            exclude: patterns("exclude", &source.exclude)?,
            format,
            regex,
            service: source.service.clone(),
            read_from: source.read_from,
            max_line_bytes: source.max_line_bytes as usize,
            multiline: source.multiline,
            multiline_timeout: Duration::from_millis(source.multiline_timeout_ms),
            fields: source.fields.clone(),
        });
    }
    if raw.poll_interval_ms == 0 {
        return Err(ConfigError::Invalid {
            key: "logs.poll_interval_ms".into(),
            problem: "must be greater than zero".into(),
        });
    }
    Ok(LogsConfig {
        on_damaged_checkpoints: raw.on_damaged_checkpoints,
        poll_interval: Duration::from_millis(raw.poll_interval_ms),
        max_read_bytes_per_pass: raw.max_read_bytes_per_pass.max(64 * 1024) as usize,
        idle_close: Duration::from_millis(raw.idle_close_ms),
        sources,
    })
}

fn validate_cluster(
    raw: &RawCluster,
    http_addr: SocketAddr,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let invalid = |key: &str, problem: &str| ConfigError::Invalid {
        key: format!("cluster.{key}"),
        problem: problem.into(),
    };
    let nats_urls: Vec<String> = raw
        .nats_urls
        .entries()
        .iter()
        .flat_map(|entry| entry.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if nats_urls.is_empty() {
        return Ok(None);
    }
    if !(1..=4096).contains(&raw.partitions) {
        return Err(invalid("partitions", "must be between 1 and 4096"));
    }
    if !(1..=5).contains(&raw.stream_replicas) {
        return Err(invalid(
            "stream_replicas",
            "must be between 1 and 5 (JetStream's limit)",
        ));
    }
    let node_id = raw.node_id.trim();
    if node_id.is_empty()
        || node_id.len() > 64
        || !node_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(invalid(
            "node_id",
            "must be set, at most 64 letters, digits, '-' or '_', and unique in the cluster",
        ));
    }
    if raw.lease_ttl_ms < 1000 {
        return Err(invalid("lease_ttl_ms", "must be at least 1000"));
    }
    let replay_window = match humantime::parse_duration(raw.replay_window.trim()) {
        Ok(window) if window >= Duration::from_secs(60) => window,
        _ => {
            return Err(invalid(
                "replay_window",
                "must be a duration of at least a minute, like \"1h\" or \"90m\"",
            ))
        }
    };
    let advertise_url = match raw.advertise_url.trim() {
        "" if http_addr.ip().is_unspecified() => {
            return Err(invalid(
                "advertise_url",
                "must be set when server.http_addr listens on every address",
            ))
        }
        // Filled in with the address bound (server.http_addr may have port 0).
        "" => String::new(),
        url if url.starts_with("http://") || url.starts_with("https://") => {
            url.trim_end_matches('/').to_owned()
        }
        _ => {
            return Err(invalid(
                "advertise_url",
                "must start with http:// or https://",
            ))
        }
    };
    Ok(Some(ClusterConfig {
        nats_urls,
        partitions: raw.partitions as u32,
        stream_replicas: raw.stream_replicas as usize,
        node_id: node_id.to_owned(),
        advertise_url,
        lease_ttl: Duration::from_millis(raw.lease_ttl_ms),
        replay_window,
        query_timeout: Duration::from_millis(raw.query_timeout_ms.max(100)),
    }))
}

fn validate_sampling(raw: &RawSampling) -> Result<SamplingConfig, ConfigError> {
    let fraction = raw.fraction;
    if !(fraction.is_finite() && (0.0..=1.0).contains(&fraction)) {
        return Err(ConfigError::Invalid {
            key: "sampling.fraction".into(),
            problem: format!("{fraction} is not between 0 and 1"),
        });
    }
    let mut rules = Vec::new();
    for (index, rule) in raw.rules.iter().enumerate() {
        let key = |name: &str| format!("sampling.rules[{index}].{name}");
        if rule.key.is_empty() {
            return Err(ConfigError::Invalid {
                key: key("key"),
                problem: "names the attribute to match and cannot be empty".into(),
            });
        }
        let matcher = match (&rule.value, &rule.regex) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: key("regex"),
                    problem: "give either value or regex, not both".into(),
                })
            }
            (Some(value), None) => RuleMatcher::Equals(value.clone()),
            (None, Some(pattern)) => {
                RuleMatcher::Regex(regex::Regex::new(pattern).map_err(|error| {
                    ConfigError::Invalid {
                        key: key("regex"),
                        problem: format!("{pattern:?} is not a regex: {error}"),
                    }
                })?)
            }
            (None, None) => RuleMatcher::Present,
        };
        let name = if rule.name.is_empty() {
            rule.key.clone()
        } else {
            rule.name.clone()
        };
        rules.push(SamplingRule {
            name,
            key: rule.key.clone(),
            matcher,
            action: rule.action,
        });
    }
    Ok(SamplingConfig {
        keep_errors: raw.keep_errors,
        keep_slower_than: (raw.keep_slower_than_ms > 0)
            .then(|| Duration::from_millis(raw.keep_slower_than_ms)),
        keep_slower_than_p99: raw.keep_slower_than_p99,
        fraction,
        threshold: crate::pipeline::sample::threshold_for(fraction),
        decision_cache_size: raw.decision_cache_size.max(1) as usize,
        rules,
    })
}

fn check_writable(data_dir: &Path) -> Result<(), ConfigError> {
    let problem = |error: std::io::Error| ConfigError::Invalid {
        key: "storage.data_dir".into(),
        problem: format!("{} cannot be written: {error}", data_dir.display()),
    };
    std::fs::create_dir_all(data_dir).map_err(problem)?;
    let probe = data_dir.join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(problem)?;
    std::fs::remove_file(&probe).map_err(problem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn shipped_config_file_equals_the_defaults() {
        let text = include_str!("../config/tracelink.toml");
        let parsed = RawConfig::from_toml_and_env(text, &no_env()).unwrap();
        assert_eq!(parsed, RawConfig::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = BTreeMap::from([
            (
                "TRACELINK_STORAGE_DATA_DIR".to_string(),
                "/tmp/x".to_string(),
            ),
            (
                "TRACELINK_STORAGE_COMMIT_INTERVAL_MS".to_string(),
                "250".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        let raw =
            RawConfig::from_toml_and_env("[storage]\ncommit_interval_ms = 5\n", &env).unwrap();
        assert_eq!(raw.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(raw.storage.commit_interval_ms, 250);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let error = RawConfig::from_toml_and_env("[server]\nhttp_adr = \"x\"\n", &no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("http_adr"), "{error}");
        let env = BTreeMap::from([("TRACELINK_NOPE_X".to_string(), "1".to_string())]);
        let error = RawConfig::from_toml_and_env("", &env)
            .unwrap_err()
            .to_string();
        assert!(error.contains("TRACELINK_NOPE_X"), "{error}");
        let raw =
            RawConfig::from_toml_and_env("[server]\nhttp_addr = \"nowhere\"\n", &no_env()).unwrap();
        let error = raw.validate().unwrap_err().to_string();
        assert!(error.starts_with("config: server.http_addr:"), "{error}");
    }

    #[test]
    fn the_idle_time_after_the_root_follows_trace_idle_unless_set_and_never_exceeds_it() {
        let dir = tempfile::tempdir().unwrap();
        let validated = |after_root: Option<u64>, idle: u64| {
            let mut raw = RawConfig::default();
            raw.storage.data_dir = dir.path().join("data");
            raw.storage.trace_idle_ms = idle;
            raw.storage.trace_idle_after_root_ms = after_root;
            raw.validate().unwrap().trace_idle_after_root
        };
        assert_eq!(validated(None, 600_000), Duration::from_secs(600));
        assert_eq!(validated(Some(1000), 5000), Duration::from_secs(1));
        assert_eq!(validated(Some(9000), 5000), Duration::from_secs(5));
    }

    #[test]
    fn unwritable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let mut raw = RawConfig::default();
        raw.storage.data_dir = file.join("data");
        let error = raw.validate().unwrap_err().to_string();
        assert!(error.starts_with("config: storage.data_dir:"), "{error}");
    }
}
