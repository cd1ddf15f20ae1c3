//! TraceQL, the subset Grafana's search builder emits and people type: spanset filters
//! `{ … }` with `&&`, `||` and parentheses over scoped attributes (`resource.`, `span.`,
//! unscoped `.`) and intrinsics (`name`, `status`, `statusMessage`, `kind`, `duration`,
//! `rootName`, `rootServiceName`, `traceDuration`), the operators `= != > >= < <= =~ !~`,
//! string, number, bool, duration, status, kind and `nil` literals; spanset operators
//! `&&`, `||` and the structural `>>`, `>`, `~`; pipelines `| count() > N`,
//! `| avg|min|max|sum(x) op v` and `| select(…)`.
//!
//! [`parse`] gives a [`Query`] or an error in Tempo's words (`parse error at line 1, col
//! N: …`); a query prints back ([`std::fmt::Display`]) as text that parses to the same
//! tree. [`eval`] evaluates it over one trace.

use std::fmt;

use super::scan::Scan;

pub mod eval;

#[cfg(test)]
mod tests;

/// A whole query: a spanset expression and the pipeline stages after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub spansets: SpansetExpr,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    /// `{ condition }`; `{}` is `Filter(None)`: every span.
    Filter(Option<FieldExpr>),
    Binary(Box<SpansetExpr>, SpansetOp, Box<SpansetExpr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpansetOp {
    And,
    Or,
    /// `>>`: spans of the right with an ancestor in the left.
    Descendant,
    /// `>`: spans of the right whose parent is in the left.
    Child,
    /// `~`: spans of the right with a sibling in the left.
    Sibling,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    And(Box<FieldExpr>, Box<FieldExpr>),
    Or(Box<FieldExpr>, Box<FieldExpr>),
    Compare(Operand, CompareOp, Literal),
    /// A bare `true` or `false`.
    Constant(bool),
}

// === impl FieldExpr ===

impl FieldExpr {
    /// The conditions joined with `&&`; `None` when there are none (`{}`).
    pub fn all(conditions: impl IntoIterator<Item = FieldExpr>) -> Option<FieldExpr> {
        conditions
            .into_iter()
            .reduce(|left, right| FieldExpr::And(Box::new(left), Box::new(right)))
    }

    /// `operand` equals `text` as the tag APIs of Jaeger, Zipkin and Tempo's legacy
    /// search mean it: as a string, or as the number or boolean it spells (their tags are
    /// text; OpenTelemetry attributes are typed).
    pub fn equals_text(operand: Operand, text: &str) -> FieldExpr {
        let mut alternatives = vec![FieldExpr::Compare(
            operand.clone(),
            CompareOp::Eq,
            Literal::String(text.to_owned()),
        )];
        if let Ok(number) = text.parse::<i64>() {
            alternatives.push(FieldExpr::Compare(
                operand.clone(),
                CompareOp::Eq,
                Literal::Int(number),
            ));
        } else if let Ok(number) = text.parse::<f64>() {
            alternatives.push(FieldExpr::Compare(
                operand.clone(),
                CompareOp::Eq,
                Literal::Float(number),
            ));
        }
        if let Ok(flag) = text.parse::<bool>() {
            alternatives.push(FieldExpr::Compare(
                operand,
                CompareOp::Eq,
                Literal::Bool(flag),
            ));
        }
        let mut alternatives = alternatives.into_iter();
        let first = alternatives
            .next()
            .expect("the string comparison is always there");
        alternatives.fold(first, |left, right| {
            FieldExpr::Or(Box::new(left), Box::new(right))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Attribute(Scope, String),
    Intrinsic(Intrinsic),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Resource,
    Span,
    /// `.key`: the span's attribute, else its resource's.
    Unscoped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intrinsic {
    Name,
    Status,
    StatusMessage,
    Kind,
    Duration,
    RootName,
    RootServiceName,
    TraceDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Regex,
    NotRegex,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(u64),
    /// `error`, `ok`, `unset`: OTLP status codes 2, 1, 0.
    Status(i32),
    /// `unspecified` … `consumer`: OTLP span kinds 0–5.
    Kind(i32),
    Nil,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// `count() op n`
    Count(CompareOp, f64),
    /// `avg|min|max|sum(operand) op value`
    Aggregate(Aggregate, Operand, CompareOp, Literal),
    Select(Vec<Operand>),
    /// A metrics function (`rate()`, `quantile_over_time(duration, 0.9)` …), always the
    /// last stage: the query is then answered by the metrics API, not search.
    Metrics(MetricsStage),
}

/// `<function> [by(operand, …)] [with(hint = value, …)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsStage {
    pub function: MetricsFunction,
    pub by: Vec<Operand>,
    /// `with(…)` hints (`sample`, `exemplars`): accepted, and answered exactly anyway.
    pub hints: Vec<(String, Literal)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    /// Matching spans per second.
    Rate,
    /// Matching spans per step.
    CountOverTime,
    MinOverTime(Operand),
    MaxOverTime(Operand),
    AvgOverTime(Operand),
    SumOverTime(Operand),
    /// Exact quantiles of the operand per step, one series per quantile (label `p`).
    QuantileOverTime(Operand, Vec<f64>),
    /// Counts per power-of-two bucket of the operand (label `__bucket`).
    HistogramOverTime(Operand),
}

impl MetricsFunction {
    pub fn name(&self) -> &'static str {
        match self {
            MetricsFunction::Rate => "rate",
            MetricsFunction::CountOverTime => "count_over_time",
            MetricsFunction::MinOverTime(_) => "min_over_time",
            MetricsFunction::MaxOverTime(_) => "max_over_time",
            MetricsFunction::AvgOverTime(_) => "avg_over_time",
            MetricsFunction::SumOverTime(_) => "sum_over_time",
            MetricsFunction::QuantileOverTime(..) => "quantile_over_time",
            MetricsFunction::HistogramOverTime(_) => "histogram_over_time",
        }
    }

    /// The operand the function reads, if any.
    pub fn operand(&self) -> Option<&Operand> {
        match self {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => None,
            MetricsFunction::MinOverTime(operand)
            | MetricsFunction::MaxOverTime(operand)
            | MetricsFunction::AvgOverTime(operand)
            | MetricsFunction::SumOverTime(operand)
            | MetricsFunction::QuantileOverTime(operand, _)
            | MetricsFunction::HistogramOverTime(operand) => Some(operand),
        }
    }
}

impl Query {
    /// The metrics stage, when the query is a metrics query.
    pub fn metrics(&self) -> Option<&MetricsStage> {
        match self.stages.last() {
            Some(Stage::Metrics(metrics)) => Some(metrics),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Sum,
}

/// A query that does not parse, with where (1-based column) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at line 1, col {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

const INTRINSICS: [(&str, Intrinsic); 8] = [
    ("name", Intrinsic::Name),
    ("status", Intrinsic::Status),
    ("statusMessage", Intrinsic::StatusMessage),
    ("kind", Intrinsic::Kind),
    ("duration", Intrinsic::Duration),
    ("rootName", Intrinsic::RootName),
    ("rootServiceName", Intrinsic::RootServiceName),
    ("traceDuration", Intrinsic::TraceDuration),
];

/// OTLP span kinds 0–5 as TraceQL (and Jaeger, and Tempo's tag values) name them.
pub const KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];

/// Parse a TraceQL query.
pub fn parse(text: &str) -> Result<Query, ParseError> {
    let mut parser = Parser { text, position: 0 };
    let spansets = parser.spanset_expr()?;
    let mut stages = Vec::new();
    loop {
        parser.skip_space();
        if parser.at_end() {
            break;
        }
        if !parser.eat("|") {
            return Err(parser.error("unexpected input after the query; expected `|` or the end"));
        }
        if matches!(stages.last(), Some(Stage::Metrics(_))) {
            return Err(parser.error(
                "nothing may follow a metrics function (second stages such as topk are not supported)",
            ));
        }
        stages.push(parser.stage()?);
    }
    Ok(Query { spansets, stages })
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
    fn at_end(&self) -> bool {
        self.rest().is_empty()
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            column: self.text[..self.position].chars().count() + 1,
            message: message.into(),
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), ParseError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{token}`")))
        }
    }

    /// `||` binds loosest, then `&&`, then the structural operators.
    fn spanset_expr(&mut self) -> Result<SpansetExpr, ParseError> {
        let mut left = self.spanset_and()?;
        while self.eat("||") {
            let right = self.spanset_and()?;
            left = SpansetExpr::Binary(Box::new(left), SpansetOp::Or, Box::new(right));
        }
        Ok(left)
    }

    fn spanset_and(&mut self) -> Result<SpansetExpr, ParseError> {
        let mut left = self.spanset_structural()?;
        while self.eat("&&") {
            let right = self.spanset_structural()?;
            left = SpansetExpr::Binary(Box::new(left), SpansetOp::And, Box::new(right));
        }
        Ok(left)
    }

    fn spanset_structural(&mut self) -> Result<SpansetExpr, ParseError> {
        let mut left = self.spanset_term()?;
        loop {
            self.skip_space();
            let op = if self.rest().starts_with("&>>")
                || self.rest().starts_with("!>>")
                || self.rest().starts_with("<<")
                || self.rest().starts_with("!~")
            {
                return Err(self.error("this structural operator is not supported; use >>, > or ~"));
            } else if self.eat(">>") {
                SpansetOp::Descendant
            } else if self.eat(">") {
                SpansetOp::Child
            } else if self.eat("~") {
                SpansetOp::Sibling
            } else {
                return Ok(left);
            };
            let right = self.spanset_term()?;
            left = SpansetExpr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn spanset_term(&mut self) -> Result<SpansetExpr, ParseError> {
        if self.eat("(") {
            let inner = self.spanset_expr()?;
            self.expect(")")?;
            return Ok(inner);
        }
        if !self.eat("{") {
            return Err(self.error("expected a spanset `{ … }`"));
        }
        if self.eat("}") {
            return Ok(SpansetExpr::Filter(None));
        }
        let condition = self.field_or()?;
        self.expect("}")?;
        Ok(SpansetExpr::Filter(Some(condition)))
    }

    fn field_or(&mut self) -> Result<FieldExpr, ParseError> {
        let mut left = self.field_and()?;
        while self.eat("||") {
            let right = self.field_and()?;
            left = FieldExpr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn field_and(&mut self) -> Result<FieldExpr, ParseError> {
        let mut left = self.field_term()?;
        while self.eat("&&") {
            let right = self.field_term()?;
            left = FieldExpr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn field_term(&mut self) -> Result<FieldExpr, ParseError> {
        if self.eat("(") {
            let inner = self.field_or()?;
            self.expect(")")?;
            return Ok(inner);
        }
        self.skip_space();
        for (word, value) in [("true", true), ("false", false)] {
            if self.rest().starts_with(word) && !self.word_continues(word.len()) {
                self.position += word.len();
                return Ok(FieldExpr::Constant(value));
            }
        }
        let operand = self.operand()?;
        let op = self.compare_op()?;
        let literal = self.literal()?;
        Ok(FieldExpr::Compare(operand, op, literal))
    }

    fn word_continues(&self, at: usize) -> bool {
        self.rest()[at..]
            .chars()
            .next()
            .is_some_and(|next| next.is_alphanumeric() || matches!(next, '_' | '.'))
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        self.skip_space();
        let scope = if self.eat("resource.") {
            Some(Scope::Resource)
        } else if self.eat("span.") {
            Some(Scope::Span)
        } else if self.rest().starts_with('.') {
            self.position += 1;
            Some(Scope::Unscoped)
        } else {
            None
        };
        for prefix in [
            "event.",
            "link.",
            "instrumentation.",
            "parent.",
            "trace:",
            "span:",
            "event:",
        ] {
            if scope.is_none() && self.rest().starts_with(prefix) {
                return Err(self.error(format!(
                    "the scope `{}` is not supported",
                    prefix.trim_end_matches(['.', ':'])
                )));
            }
        }
        let start = self.position;
        let name = self.attribute_name()?;
        match scope {
            Some(scope) => Ok(Operand::Attribute(scope, name)),
            None => INTRINSICS
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, intrinsic)| Operand::Intrinsic(*intrinsic))
                .ok_or_else(|| ParseError {
                    column: self.text[..start].chars().count() + 1,
                    message: format!(
                        "unknown intrinsic `{name}`; attributes need a scope (`span.{name}`, `resource.{name}` or `.{name}`)"
                    ),
                }),
        }
    }

    fn attribute_name(&mut self) -> Result<String, ParseError> {
        if self.rest().starts_with('"') {
            return self.string();
        }
        let length = self
            .rest()
            .find(|character: char| {
                !(character.is_alphanumeric() || matches!(character, '_' | '.' | '-' | '/' | ':'))
            })
            .unwrap_or(self.rest().len());
        if length == 0 {
            return Err(self.error("expected an attribute or intrinsic name"));
        }
        let name = self.rest()[..length].to_owned();
        self.position += length;
        Ok(name)
    }

    fn compare_op(&mut self) -> Result<CompareOp, ParseError> {
        self.skip_space();
        for (token, op) in [
            ("=~", CompareOp::Regex),
            ("!~", CompareOp::NotRegex),
            ("!=", CompareOp::Ne),
            (">=", CompareOp::Ge),
            ("<=", CompareOp::Le),
            ("=", CompareOp::Eq),
            (">", CompareOp::Gt),
            ("<", CompareOp::Lt),
        ] {
            if self.eat(token) {
                return Ok(op);
            }
        }
        Err(self.error("expected a comparison operator (= != > >= < <= =~ !~)"))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let quote = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '`');
        let Some(quote) = quote else {
            return Err(self.error("expected a string"));
        };
        let start = self.position;
        self.position += 1;
        let mut value = String::new();
        let mut characters = self.rest().char_indices();
        while let Some((offset, character)) = characters.next() {
            if character == quote {
                self.position += offset + 1;
                return Ok(value);
            }
            if character == '\\' && quote == '"' {
                match characters.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                }
            } else {
                value.push(character);
            }
        }
        self.position = start;
        Err(self.error("unterminated string"))
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        self.skip_space();
        if self.rest().starts_with('"') || self.rest().starts_with('`') {
            return self.string().map(Literal::String);
        }
        let length = self
            .rest()
            .find(|character: char| {
                !(character.is_alphanumeric() || matches!(character, '.' | '-' | '_' | '+'))
            })
            .unwrap_or(self.rest().len());
        let word = &self.rest()[..length];
        if word.is_empty() {
            return Err(self.error("expected a value"));
        }
        let literal = match word {
            "true" => Literal::Bool(true),
            "false" => Literal::Bool(false),
            "nil" => Literal::Nil,
            "error" => Literal::Status(2),
            "ok" => Literal::Status(1),
            "unset" => Literal::Status(0),
            _ => {
                if let Some(kind) = KINDS.iter().position(|kind| *kind == word) {
                    Literal::Kind(kind as i32)
                } else if let Ok(int) = word.parse::<i64>() {
                    Literal::Int(int)
                } else if let Ok(float) = word.parse::<f64>() {
                    Literal::Float(float)
                } else if let Some(nanos) = parse_duration(word) {
                    Literal::Duration(nanos)
                } else {
                    return Err(self.error(format!(
                        "`{word}` is not a value (strings are quoted; durations look like 100ms or 1.5s)"
                    )));
                }
            }
        };
        self.position += length;
        Ok(literal)
    }

    fn stage(&mut self) -> Result<Stage, ParseError> {
        self.skip_space();
        let length = self
            .rest()
            .find(|character: char| !character.is_alphanumeric() && character != '_')
            .unwrap_or(self.rest().len());
        let word = self.rest()[..length].to_owned();
        let aggregate = match word.as_str() {
            "count" => None,
            "avg" => Some(Aggregate::Avg),
            "min" => Some(Aggregate::Min),
            "max" => Some(Aggregate::Max),
            "sum" => Some(Aggregate::Sum),
            "select" => {
                self.position += length;
                self.expect("(")?;
                let mut operands = vec![self.operand()?];
                while self.eat(",") {
                    operands.push(self.operand()?);
                }
                self.expect(")")?;
                return Ok(Stage::Select(operands));
            }
            "rate" | "count_over_time" | "min_over_time" | "max_over_time" | "avg_over_time"
            | "sum_over_time" | "quantile_over_time" | "histogram_over_time" => {
                self.position += length;
                return self.metrics_stage(&word).map(Stage::Metrics);
            }
            "" => return Err(self.error("expected a pipeline stage after `|`")),
            other => {
                return Err(self.error(format!(
                    "the pipeline stage `{other}` is not supported (count, avg, min, max, sum, select, rate, count_over_time, min/max/avg/sum_over_time, quantile_over_time, histogram_over_time are)"
                )))
            }
        };
        self.position += length;
        self.expect("(")?;
        let Some(aggregate) = aggregate else {
            self.expect(")")?;
            let op = self.compare_op()?;
            let at = self.position;
            return match self.literal()? {
                Literal::Int(value) => Ok(Stage::Count(op, value as f64)),
                Literal::Float(value) => Ok(Stage::Count(op, value)),
                _ => {
                    self.position = at;
                    Err(self.error("count() compares with a number"))
                }
            };
        };
        let operand = self.operand()?;
        self.expect(")")?;
        let op = self.compare_op()?;
        let literal = self.literal()?;
        Ok(Stage::Aggregate(aggregate, operand, op, literal))
    }
}

impl Parser<'_> {
    /// After the function's name: its arguments, then `by(…)` and `with(…)`.
    fn metrics_stage(&mut self, name: &str) -> Result<MetricsStage, ParseError> {
        self.expect("(")?;
        let function = match name {
            "rate" => MetricsFunction::Rate,
            "count_over_time" => MetricsFunction::CountOverTime,
            "quantile_over_time" => {
                let operand = self.operand()?;
                let mut quantiles = Vec::new();
                while self.eat(",") {
                    self.skip_space();
                    let at = self.position;
                    let quantile = match self.literal()? {
                        Literal::Float(value) => value,
                        Literal::Int(value) => value as f64,
                        _ => f64::NAN,
                    };
                    if !(0.0..=1.0).contains(&quantile) {
                        self.position = at;
                        return Err(self.error("a quantile is a number from 0 to 1"));
                    }
                    quantiles.push(quantile);
                }
                if quantiles.is_empty() {
                    return Err(self.error("quantile_over_time needs at least one quantile"));
                }
                MetricsFunction::QuantileOverTime(operand, quantiles)
            }
            other => {
                let operand = self.operand()?;
                match other {
                    "min_over_time" => MetricsFunction::MinOverTime(operand),
                    "max_over_time" => MetricsFunction::MaxOverTime(operand),
                    "avg_over_time" => MetricsFunction::AvgOverTime(operand),
                    "sum_over_time" => MetricsFunction::SumOverTime(operand),
                    _ => MetricsFunction::HistogramOverTime(operand),
                }
            }
        };
        self.expect(")")?;
        let mut by = Vec::new();
        let mut hints = Vec::new();
        loop {
            self.skip_space();
            if self.eat("by") {
                self.expect("(")?;
                by.push(self.operand()?);
                while self.eat(",") {
                    by.push(self.operand()?);
                }
                self.expect(")")?;
            } else if self.eat("with") {
                self.expect("(")?;
                loop {
                    self.skip_space();
                    let length = self
                        .rest()
                        .find(|character: char| !character.is_alphanumeric() && character != '_')
                        .unwrap_or(self.rest().len());
                    if length == 0 {
                        return Err(self.error("expected a hint name in with(…)"));
                    }
                    let key = self.rest()[..length].to_owned();
                    self.position += length;
                    self.expect("=")?;
                    hints.push((key, self.literal()?));
                    if !self.eat(",") {
                        break;
                    }
                }
                self.expect(")")?;
            } else {
                break;
            }
        }
        Ok(MetricsStage {
            function,
            by,
            hints,
        })
    }
}

/// A Go-style duration: `100ms`, `1.5s`, `2m`, `1h30m`, `250us`, `10ns`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_length = rest
            .find(|character: char| !(character.is_ascii_digit() || character == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_length].parse().ok()?;
        rest = &rest[number_length..];
        let unit_length = rest
            .find(|character: char| character.is_ascii_digit() || character == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_length] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_length..];
        total += number * scale;
    }
    Some(total.round() as u64)
}

// === impl Display ===

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.spansets)?;
        for stage in &self.stages {
            write!(f, " | {stage}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SpansetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpansetExpr::Filter(None) => f.write_str("{}"),
            SpansetExpr::Filter(Some(condition)) => write!(f, "{{ {condition} }}"),
            SpansetExpr::Binary(left, op, right) => {
                let op = match op {
                    SpansetOp::And => "&&",
                    SpansetOp::Or => "||",
                    SpansetOp::Descendant => ">>",
                    SpansetOp::Child => ">",
                    SpansetOp::Sibling => "~",
                };
                write!(f, "({left} {op} {right})")
            }
        }
    }
}

impl fmt::Display for FieldExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldExpr::And(left, right) => write!(f, "({left} && {right})"),
            FieldExpr::Or(left, right) => write!(f, "({left} || {right})"),
            FieldExpr::Compare(operand, op, literal) => write!(f, "{operand} {op} {literal}"),
            FieldExpr::Constant(value) => write!(f, "{value}"),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Attribute(scope, name) => {
                let prefix = match scope {
                    Scope::Resource => "resource.",
                    Scope::Span => "span.",
                    Scope::Unscoped => ".",
                };
                let plain = !name.is_empty()
                    && name.chars().all(|character| {
                        character.is_alphanumeric()
                            || matches!(character, '_' | '.' | '-' | '/' | ':')
                    });
                if plain {
                    write!(f, "{prefix}{name}")
                } else {
                    write!(f, "{prefix}{}", quote(name))
                }
            }
            Operand::Intrinsic(intrinsic) => {
                let name = INTRINSICS
                    .iter()
                    .find(|(_, known)| known == intrinsic)
                    .map_or("name", |(name, _)| name);
                f.write_str(name)
            }
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Regex => "=~",
            CompareOp::NotRegex => "!~",
        })
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(text) => f.write_str(&quote(text)),
            Literal::Int(value) => write!(f, "{value}"),
            Literal::Float(value) if value.fract() == 0.0 && value.is_finite() => {
                write!(f, "{value:.1}")
            }
            Literal::Float(value) => write!(f, "{value}"),
            Literal::Bool(value) => write!(f, "{value}"),
            Literal::Duration(nanos) => write!(f, "{nanos}ns"),
            Literal::Status(code) => f.write_str(match code {
                2 => "error",
                1 => "ok",
                _ => "unset",
            }),
            Literal::Kind(kind) => f.write_str(KINDS.get(*kind as usize).unwrap_or(&"unspecified")),
            Literal::Nil => f.write_str("nil"),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Count(op, value) => write!(f, "count() {op} {}", Literal::Float(*value)),
            Stage::Aggregate(aggregate, operand, op, literal) => {
                let name = match aggregate {
                    Aggregate::Avg => "avg",
                    Aggregate::Min => "min",
                    Aggregate::Max => "max",
                    Aggregate::Sum => "sum",
                };
                write!(f, "{name}({operand}) {op} {literal}")
            }
            Stage::Select(operands) => {
                let list: Vec<String> = operands.iter().map(ToString::to_string).collect();
                write!(f, "select({})", list.join(", "))
            }
            Stage::Metrics(metrics) => write!(f, "{metrics}"),
        }
    }
}

impl fmt::Display for MetricsStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.function.name())?;
        match &self.function {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => {}
            MetricsFunction::QuantileOverTime(operand, quantiles) => {
                write!(f, "{operand}")?;
                for quantile in quantiles {
                    write!(f, ", {}", Literal::Float(*quantile))?;
                }
            }
            other => {
                if let Some(operand) = other.operand() {
                    write!(f, "{operand}")?;
                }
            }
        }
        f.write_str(")")?;
        if !self.by.is_empty() {
            let list: Vec<String> = self.by.iter().map(ToString::to_string).collect();
            write!(f, " by({})", list.join(", "))?;
        }
        if !self.hints.is_empty() {
            let list: Vec<String> = self
                .hints
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            write!(f, " with({})", list.join(", "))?;
        }
        Ok(())
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}
