//! Normalised log severity, shared by ingest, storage, metrics and the query APIs.

/// Normalised severity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Every spelling the ecosystems use: names, abbreviations, syslog words, single
    /// letters, pino/bunyan numbers (10–60) and OpenTelemetry severity numbers (1–24).
    pub fn parse(text: &str) -> Option<Level> {
        let text = text.trim();
        if let Ok(number) = text.parse::<i64>() {
            return Level::from_number(number);
        }
        let level = match text.to_ascii_lowercase().as_str() {
            "trace" | "trc" | "t" | "verbose" | "finest" | "finer" => Level::Trace,
            "debug" | "dbg" | "d" | "fine" | "config" => Level::Debug,
            "info" | "inf" | "i" | "information" | "informational" | "notice" => Level::Info,
            "warn" | "warning" | "wrn" | "w" => Level::Warn,
            "error" | "err" | "e" | "eror" | "severe" => Level::Error,
            "fatal" | "ftl" | "f" | "critical" | "crit" | "panic" | "dpanic" | "emerg"
            | "emergency" | "alert" => Level::Fatal,
            _ => return None,
        };
        Some(level)
    }

    /// pino/bunyan (10, 20 … 60) first, then OpenTelemetry severity numbers 1–24.
    pub fn from_number(number: i64) -> Option<Level> {
        match number {
            10 => Some(Level::Trace),
            20 => Some(Level::Debug),
            30 => Some(Level::Info),
            40 => Some(Level::Warn),
            50 => Some(Level::Error),
            60 => Some(Level::Fatal),
            _ => Level::from_otel_severity(number),
        }
    }

    pub fn from_otel_severity(number: i64) -> Option<Level> {
        match number {
            1..=4 => Some(Level::Trace),
            5..=8 => Some(Level::Debug),
            9..=12 => Some(Level::Info),
            13..=16 => Some(Level::Warn),
            17..=20 => Some(Level::Error),
            21..=24 => Some(Level::Fatal),
            _ => None,
        }
    }
}
