//! The LogQL subset Grafana's Loki data source sends for logs, trace→logs links and log
//! volume: stream selectors (`=`, `!=`, `=~`, `!~`), line filters (`|=`, `!=`, `|~`,
//! `!~`), `| json`, `| logfmt`, `| drop …`, label filters (`| level="error"`,
//! `| trace_id="…"`), `count_over_time` / `rate` over a range with an optional
//! `sum|count|max|min|avg [by (…)]`, and `vector(n)` arithmetic (Grafana's health check).
//! Anything else is refused with an error naming the construct.
//!
//! Stream labels are `service_name` and `level`; label filters also see `trace_id`,
//! `span_id` and every attribute of a record (without needing `| json` first).

use std::time::Duration;

use regex::Regex;

use crate::query::scan::Scan;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LogqlError {
    #[error("unsupported LogQL: {0}")]
    Unsupported(String),
    #[error("LogQL parse error: {0}")]
    Parse(String),
}

#[derive(Debug, Clone)]
pub enum MatchOp {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

impl MatchOp {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            MatchOp::Equal(expected) => value == expected,
            MatchOp::NotEqual(expected) => value != expected,
            MatchOp::Regex(pattern) => pattern.is_match(value),
            MatchOp::NotRegex(pattern) => !pattern.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
}

#[derive(Debug, Clone)]
pub enum Stage {
    Contains(String),
    NotContains(String),
    LineRegex(Regex),
    NotLineRegex(Regex),
    /// `| json`, `| logfmt`, `| drop …`: fields are always available, so these pass.
    Passthrough,
    LabelFilter(Matcher),
}

#[derive(Debug, Clone)]
pub struct LogSelector {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFunction {
    CountOverTime,
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Count,
    Max,
    Min,
    Avg,
}

#[derive(Debug, Clone)]
pub struct MetricQuery {
    pub function: RangeFunction,
    pub selector: LogSelector,
    pub range: Duration,
    /// `None`: one series per stream. `Some((aggregation, by))`: grouped by `by` labels.
    pub aggregation: Option<(Aggregation, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub enum Expr {
    Logs(LogSelector),
    Metric(MetricQuery),
    /// A constant (the sum of `vector(n)` and numbers).
    Scalar(f64),
}

pub fn parse(text: &str) -> Result<Expr, LogqlError> {
    let mut parser = Parser { text, position: 0 };
    let expr = parser.expr()?;
    parser.skip_space();
    if parser.position < text.len() {
        return Err(LogqlError::Unsupported(format!(
            "{:?} after the query",
            &text[parser.position..]
        )));
    }
    Ok(expr)
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
}

impl Scan for Parser<'_> {
    fn text(&self) -> &str {
        self.text
    }

    fn position(&self) -> usize {
        self.position
    }

    fn set_position(&mut self, position: usize) {
        self.position = position;
    }
}

impl Parser<'_> {
    fn expect(&mut self, token: &str) -> Result<(), LogqlError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(LogqlError::Parse(format!(
                "expected {token:?} at {:?}",
                self.rest().chars().take(30).collect::<String>()
            )))
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_space();
        let length = self
            .rest()
            .find(|character: char| {
                !(character.is_ascii_alphanumeric() || character == '_' || character == '.')
            })
            .unwrap_or(self.rest().len());
        if length == 0 {
            return None;
        }
        let ident = self.rest()[..length].to_owned();
        self.position += length;
        Some(ident)
    }

    fn string(&mut self) -> Result<String, LogqlError> {
        self.skip_space();
        let rest = self.rest();
        if let Some(raw) = rest.strip_prefix('`') {
            let end = raw
                .find('`')
                .ok_or_else(|| LogqlError::Parse("unterminated `string`".into()))?;
            let value = raw[..end].to_owned();
            self.position += end + 2;
            return Ok(value);
        }
        if !rest.starts_with('"') {
            return Err(LogqlError::Parse(format!(
                "expected a string at {:?}",
                rest.chars().take(30).collect::<String>()
            )));
        }
        let mut value = String::new();
        let mut characters = rest[1..].char_indices();
        while let Some((index, character)) = characters.next() {
            match character {
                '\\' => match characters.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                '"' => {
                    self.position += index + 2;
                    return Ok(value);
                }
                other => value.push(other),
            }
        }
        Err(LogqlError::Parse("unterminated string".into()))
    }

    fn number(&mut self) -> Option<f64> {
        self.skip_space();
        let length = self
            .rest()
            .find(|character: char| {
                !(character.is_ascii_digit() || character == '.' || character == '-')
            })
            .unwrap_or(self.rest().len());
        let value = self.rest()[..length].parse().ok()?;
        self.position += length;
        Some(value)
    }

    fn matcher(&mut self, label: String) -> Result<Matcher, LogqlError> {
        self.skip_space();
        let regex = |pattern: String| {
            Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|error| LogqlError::Parse(format!("bad regex {pattern:?}: {error}")))
        };
        let op = if self.eat("=~") {
            MatchOp::Regex(regex(self.string()?)?)
        } else if self.eat("!~") {
            MatchOp::NotRegex(regex(self.string()?)?)
        } else if self.eat("!=") {
            MatchOp::NotEqual(self.string()?)
        } else if self.eat("==") || self.eat("=") {
            MatchOp::Equal(self.value_text()?)
        } else {
            let found: String = self.rest().chars().take(10).collect();
            return Err(LogqlError::Unsupported(format!(
                "label operator at {found:?}"
            )));
        };
        Ok(Matcher { label, op })
    }

    /// A label filter's value: a string, or a bare number.
    fn value_text(&mut self) -> Result<String, LogqlError> {
        self.skip_space();
        if self.rest().starts_with('"') || self.rest().starts_with('`') {
            return self.string();
        }
        self.number()
            .map(|number| number.to_string())
            .ok_or_else(|| LogqlError::Parse("expected a value".into()))
    }

    fn selector(&mut self) -> Result<LogSelector, LogqlError> {
        self.expect("{")?;
        let mut matchers = Vec::new();
        loop {
            if self.eat("}") {
                break;
            }
            let label = self
                .ident()
                .ok_or_else(|| LogqlError::Parse("expected a label name".into()))?;
            matchers.push(self.matcher(label)?);
            if !self.eat(",") {
                self.expect("}")?;
                break;
            }
        }
        let mut stages = Vec::new();
        loop {
            self.skip_space();
            let line_regex = |pattern: String| {
                Regex::new(&pattern)
                    .map_err(|error| LogqlError::Parse(format!("bad regex {pattern:?}: {error}")))
            };
            if self.eat("|=") {
                stages.push(Stage::Contains(self.string()?));
            } else if self.eat("!=") {
                stages.push(Stage::NotContains(self.string()?));
            } else if self.eat("|~") {
                stages.push(Stage::LineRegex(line_regex(self.string()?)?));
            } else if self.eat("!~") {
                stages.push(Stage::NotLineRegex(line_regex(self.string()?)?));
            } else if self.eat("|") {
                let name = self.ident().ok_or_else(|| {
                    LogqlError::Unsupported(format!("pipeline stage at {:?}", self.rest()))
                })?;
                match name.as_str() {
                    "json" | "logfmt" => stages.push(Stage::Passthrough),
                    "drop" => {
                        while self.ident().is_some() {
                            if !self.eat(",") {
                                break;
                            }
                        }
                        stages.push(Stage::Passthrough);
                    }
                    "line_format" | "label_format" | "unwrap" | "pattern" | "regexp" | "unpack"
                    | "decolorize" | "keep" | "distinct" => {
                        return Err(LogqlError::Unsupported(format!("| {name}")))
                    }
                    label => stages.push(Stage::LabelFilter(self.matcher(label.to_owned())?)),
                }
            } else {
                break;
            }
        }
        Ok(LogSelector { matchers, stages })
    }

    fn duration(&mut self) -> Result<Duration, LogqlError> {
        self.skip_space();
        let length = self
            .rest()
            .find(']')
            .ok_or_else(|| LogqlError::Parse("expected ] after a range".into()))?;
        let text = self.rest()[..length].trim().to_owned();
        self.position += length;
        parse_duration(&text).ok_or_else(|| LogqlError::Parse(format!("bad duration {text:?}")))
    }

    fn range_function(&mut self, function: RangeFunction) -> Result<MetricQuery, LogqlError> {
        self.expect("(")?;
        let selector = self.selector()?;
        self.expect("[")?;
        let range = self.duration()?;
        self.expect("]")?;
        self.expect(")")?;
        Ok(MetricQuery {
            function,
            selector,
            range,
            aggregation: None,
        })
    }

    fn by_labels(&mut self) -> Result<Vec<String>, LogqlError> {
        self.expect("(")?;
        let mut labels = Vec::new();
        while let Some(label) = self.ident() {
            labels.push(label);
            if !self.eat(",") {
                break;
            }
        }
        self.expect(")")?;
        Ok(labels)
    }

    fn term(&mut self) -> Result<Expr, LogqlError> {
        self.skip_space();
        if self.rest().starts_with('{') {
            return Ok(Expr::Logs(self.selector()?));
        }
        if self
            .rest()
            .starts_with(|character: char| character.is_ascii_digit())
        {
            let number = self
                .number()
                .ok_or_else(|| LogqlError::Parse("bad number".into()))?;
            return Ok(Expr::Scalar(number));
        }
        let name = self
            .ident()
            .ok_or_else(|| LogqlError::Parse(format!("unexpected {:?}", self.rest())))?;
        let aggregation = match name.as_str() {
            "sum" => Some(Aggregation::Sum),
            "count" => Some(Aggregation::Count),
            "max" => Some(Aggregation::Max),
            "min" => Some(Aggregation::Min),
            "avg" => Some(Aggregation::Avg),
            _ => None,
        };
        match (name.as_str(), aggregation) {
            ("vector", _) => {
                self.expect("(")?;
                let number = self
                    .number()
                    .ok_or_else(|| LogqlError::Parse("vector() takes a number".into()))?;
                self.expect(")")?;
                Ok(Expr::Scalar(number))
            }
            ("count_over_time", _) => Ok(Expr::Metric(
                self.range_function(RangeFunction::CountOverTime)?,
            )),
            ("rate", _) => Ok(Expr::Metric(self.range_function(RangeFunction::Rate)?)),
            (_, Some(aggregation)) => {
                let mut by = if self.eat("by") {
                    Some(self.by_labels()?)
                } else {
                    None
                };
                if self.eat("without") {
                    return Err(LogqlError::Unsupported("without (…)".into()));
                }
                self.expect("(")?;
                let inner = self.term()?;
                self.expect(")")?;
                if by.is_none() && self.eat("by") {
                    by = Some(self.by_labels()?);
                }
                match inner {
                    Expr::Metric(mut metric) if metric.aggregation.is_none() => {
                        metric.aggregation = Some((aggregation, by.unwrap_or_default()));
                        Ok(Expr::Metric(metric))
                    }
                    _ => Err(LogqlError::Unsupported(format!(
                        "{name}(…) of this expression"
                    ))),
                }
            }
            (other, None) => Err(LogqlError::Unsupported(format!("function {other}"))),
        }
    }

    fn expr(&mut self) -> Result<Expr, LogqlError> {
        let mut expr = self.term()?;
        loop {
            if self.eat("+") {
                let right = self.term()?;
                expr = match (expr, right) {
                    (Expr::Scalar(left), Expr::Scalar(right)) => Expr::Scalar(left + right),
                    _ => {
                        return Err(LogqlError::Unsupported(
                            "+ between these expressions".into(),
                        ))
                    }
                };
            } else if self.rest().trim_start().starts_with(['-', '*', '/']) {
                return Err(LogqlError::Unsupported("arithmetic other than +".into()));
            } else {
                return Ok(expr);
            }
        }
    }
}

/// Go/Prometheus durations: `5m`, `1h30m`, `250ms`, `1.5s`, or bare seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_length =
            rest.find(|character: char| !(character.is_ascii_digit() || character == '.'))?;
        let value: f64 = rest[..number_length].parse().ok()?;
        rest = &rest[number_length..];
        let unit_length = rest
            .find(|character: char| character.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_length] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 604800.0,
            "y" => 31_536_000.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_length..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_queries_parse() {
        assert!(
            matches!(parse("vector(1)+vector(1)").unwrap(), Expr::Scalar(value) if value == 2.0)
        );
        let Expr::Logs(selector) =
            parse(r#"{service_name="orders"} | trace_id="4bf92f3577b34da6a3ce929d0e0e4736""#)
                .unwrap()
        else {
            panic!("log query")
        };
        assert_eq!(selector.matchers.len(), 1);
        assert!(
            matches!(&selector.stages[0], Stage::LabelFilter(matcher) if matcher.label == "trace_id")
        );
        let Expr::Logs(selector) = parse(r#"{service_name=~"ord.*", level!="debug"} |= "timeout" != "retry" | json | level="error" | drop __error__, __error_details__"#).unwrap() else {
            panic!("log query")
        };
        assert_eq!(selector.matchers.len(), 2);
        assert_eq!(selector.stages.len(), 5);
        let Expr::Metric(metric) =
            parse(r#"sum by (level) (count_over_time({service_name="orders"} |= "x" [1m]))"#)
                .unwrap()
        else {
            panic!("metric query")
        };
        assert_eq!(metric.range, Duration::from_secs(60));
        assert_eq!(
            metric.aggregation,
            Some((Aggregation::Sum, vec!["level".to_string()]))
        );
        assert!(matches!(
            parse(r#"rate({level="error"}[5m])"#).unwrap(),
            Expr::Metric(_)
        ));
    }

    #[test]
    fn unsupported_constructs_are_named() {
        for (query, construct) in [
            (r#"{a="b"} | line_format "{{.msg}}""#, "line_format"),
            (r#"topk(5, count_over_time({a="b"}[1m]))"#, "topk"),
            (r#"{a="b"} | unwrap latency"#, "unwrap"),
            (r#"vector(1) * vector(2)"#, "arithmetic"),
        ] {
            let error = parse(query).unwrap_err().to_string();
            assert!(error.contains(construct), "{query}: {error}");
        }
        assert!(matches!(parse(r#"{a="b""#), Err(LogqlError::Parse(_))));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("abc"), None);
    }
}
