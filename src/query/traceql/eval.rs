//! Evaluate a TraceQL [`Query`] over one whole trace: a spanset filter selects the spans
//! whose condition holds (each span checked on its own, so a condition is never met by
//! two spans together), spanset operators combine the selections, pipeline stages keep or
//! drop the result. A trace matches when the final spanset is not empty.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use regex::Regex;

use super::{
    Aggregate, CompareOp, FieldExpr, Intrinsic, Literal, Operand, Query, Scope, SpansetExpr,
    SpansetOp, Stage,
};

/// An attribute value, as TraceQL compares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One span with what conditions look at.
#[derive(Debug, Clone)]
pub struct SpanView {
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: i32,
    pub status_code: i32,
    pub status_message: String,
    pub start_time_unix_nano: u64,
    pub duration_nanos: u64,
    pub attributes: Vec<(String, Value)>,
    pub resource: Arc<Vec<(String, Value)>>,
    pub service: Arc<str>,
}

/// A whole trace, its spans each once.
#[derive(Debug, Clone, Default)]
pub struct TraceView {
    pub spans: Vec<SpanView>,
}

/// The spans a query selected in a trace, and what `select(…)` asked to show.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    /// Indexes into [`TraceView::spans`], by start time.
    pub spans: Vec<usize>,
    pub selected: Vec<Operand>,
}

pub fn value_of(any: &AnyValue) -> Option<Value> {
    match any.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(Value::String(text.clone())),
        any_value::Value::IntValue(value) => Some(Value::Int(*value)),
        any_value::Value::DoubleValue(value) => Some(Value::Float(*value)),
        any_value::Value::BoolValue(value) => Some(Value::Bool(*value)),
        _ => None,
    }
}

fn values_of(attributes: &[KeyValue]) -> Vec<(String, Value)> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = value_of(kv.value.as_ref()?)?;
            Some((kv.key.clone(), value))
        })
        .collect()
}

// === impl TraceView ===

impl TraceView {
    /// From the OTLP batches of a stored trace (each span once, as `find_trace` gives them).
    pub fn from_batches(batches: &[ResourceSpans]) -> TraceView {
        let mut spans = Vec::new();
        for batch in batches {
            let resource = Arc::new(
                batch
                    .resource
                    .as_ref()
                    .map(|resource| values_of(&resource.attributes))
                    .unwrap_or_default(),
            );
            let service: Arc<str> = Arc::from(
                resource
                    .iter()
                    .find(|(key, _)| key == "service.name")
                    .and_then(|(_, value)| match value {
                        Value::String(text) => Some(text.as_str()),
                        _ => None,
                    })
                    .unwrap_or(crate::model::UNKNOWN_SERVICE),
            );
            for scope in &batch.scope_spans {
                for span in &scope.spans {
                    let id = |bytes: &[u8]| <[u8; 8]>::try_from(bytes).ok();
                    let Some(span_id) = id(&span.span_id) else {
                        continue;
                    };
                    spans.push(SpanView {
                        span_id,
                        parent_span_id: id(&span.parent_span_id).filter(|parent| *parent != [0; 8]),
                        name: span.name.clone(),
                        kind: span.kind,
                        status_code: span.status.as_ref().map_or(0, |status| status.code),
                        status_message: span
                            .status
                            .as_ref()
                            .map(|status| status.message.clone())
                            .unwrap_or_default(),
                        start_time_unix_nano: span.start_time_unix_nano,
                        duration_nanos: span
                            .end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano),
                        attributes: values_of(&span.attributes),
                        resource: resource.clone(),
                        service: service.clone(),
                    });
                }
            }
        }
        spans.sort_by_key(|span| span.start_time_unix_nano);
        TraceView { spans }
    }

    /// The earliest span without a parent.
    pub fn root(&self) -> Option<&SpanView> {
        self.spans.iter().find(|span| span.parent_span_id.is_none())
    }

    pub fn start(&self) -> u64 {
        self.spans
            .iter()
            .map(|span| span.start_time_unix_nano)
            .min()
            .unwrap_or(0)
    }

    /// Latest end minus earliest start.
    pub fn duration_nanos(&self) -> u64 {
        let end = self
            .spans
            .iter()
            .map(|span| span.start_time_unix_nano + span.duration_nanos)
            .max()
            .unwrap_or(0);
        end.saturating_sub(self.start())
    }
}

/// Evaluates queries; keeps compiled regexes between traces.
#[derive(Default)]
pub struct Evaluator {
    regexes: HashMap<String, Option<Regex>>,
}

struct Context<'a> {
    trace: &'a TraceView,
    root: Option<&'a SpanView>,
    trace_duration: u64,
    parents: HashMap<[u8; 8], usize>,
}

/// What operands are for the spans of one trace (the trace-level intrinsics need the
/// whole trace).
pub struct Lookup<'a>(Context<'a>);

impl<'a> Lookup<'a> {
    pub fn new(trace: &'a TraceView) -> Lookup<'a> {
        Lookup(Context::new(trace))
    }

    /// The operand's value for the span at `index`; `None` when it has none.
    pub fn value(&self, index: usize, operand: &Operand) -> Option<Value> {
        self.0.value(&self.0.trace.spans[index], operand)
    }
}

impl<'a> Context<'a> {
    fn new(trace: &'a TraceView) -> Context<'a> {
        Context {
            trace,
            root: trace.root(),
            trace_duration: trace.duration_nanos(),
            parents: trace
                .spans
                .iter()
                .enumerate()
                .map(|(index, span)| (span.span_id, index))
                .collect(),
        }
    }
}

impl Evaluator {
    /// The spans `query` selects in `trace`, or `None` when the trace does not match.
    pub fn eval(&mut self, query: &Query, trace: &TraceView) -> Option<Matched> {
        let context = Context::new(trace);
        let mut spans = self.spanset(&query.spansets, &context);
        if spans.is_empty() {
            return None;
        }
        let mut selected = Vec::new();
        for stage in &query.stages {
            match stage {
                Stage::Count(op, value) => {
                    if !compare_numbers(spans.len() as f64, *op, *value) {
                        return None;
                    }
                }
                Stage::Aggregate(aggregate, operand, op, literal) => {
                    let values: Vec<f64> = spans
                        .iter()
                        .filter_map(|index| number_of(&context, &trace.spans[*index], operand))
                        .collect();
                    if values.is_empty() {
                        return None;
                    }
                    let result = match aggregate {
                        Aggregate::Avg => values.iter().sum::<f64>() / values.len() as f64,
                        Aggregate::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                        Aggregate::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        Aggregate::Sum => values.iter().sum(),
                    };
                    let target = literal_number(literal)?;
                    if !compare_numbers(result, *op, target) {
                        return None;
                    }
                }
                Stage::Select(operands) => selected.extend(operands.iter().cloned()),
                // Aggregates the matches over time; selects nothing by itself.
                Stage::Metrics(_) => {}
            }
        }
        spans.sort_by_key(|index| (trace.spans[*index].start_time_unix_nano, *index));
        Some(Matched { spans, selected })
    }

    /// Indexes of the selected spans (sorted, distinct).
    fn spanset(&mut self, expr: &SpansetExpr, context: &Context<'_>) -> Vec<usize> {
        match expr {
            SpansetExpr::Filter(None) => (0..context.trace.spans.len()).collect(),
            SpansetExpr::Filter(Some(condition)) => (0..context.trace.spans.len())
                .filter(|index| self.condition(condition, context, &context.trace.spans[*index]))
                .collect(),
            SpansetExpr::Binary(left, op, right) => {
                let left = self.spanset(left, context);
                let right = self.spanset(right, context);
                let spans = &context.trace.spans;
                let parent_of = |index: usize| {
                    spans[index]
                        .parent_span_id
                        .and_then(|parent| context.parents.get(&parent).copied())
                };
                let mut out: Vec<usize> = match op {
                    SpansetOp::And if left.is_empty() || right.is_empty() => Vec::new(),
                    SpansetOp::And | SpansetOp::Or => left.iter().chain(&right).copied().collect(),
                    SpansetOp::Child => right
                        .iter()
                        .copied()
                        .filter(|index| {
                            parent_of(*index).is_some_and(|parent| left.contains(&parent))
                        })
                        .collect(),
                    SpansetOp::Descendant => right
                        .iter()
                        .copied()
                        .filter(|index| {
                            let mut current = parent_of(*index);
                            let mut steps = 0;
                            while let Some(ancestor) = current {
                                if left.contains(&ancestor) {
                                    return true;
                                }
                                steps += 1;
                                if steps > spans.len() {
                                    break; // a cycle of bad parent ids
                                }
                                current = parent_of(ancestor);
                            }
                            false
                        })
                        .collect(),
                    SpansetOp::Sibling => right
                        .iter()
                        .copied()
                        .filter(|index| {
                            let parent = spans[*index].parent_span_id;
                            parent.is_some()
                                && left.iter().any(|other| {
                                    *other != *index && spans[*other].parent_span_id == parent
                                })
                        })
                        .collect(),
                };
                out.sort_unstable();
                out.dedup();
                out
            }
        }
    }

    fn condition(&mut self, expr: &FieldExpr, context: &Context<'_>, span: &SpanView) -> bool {
        match expr {
            FieldExpr::And(left, right) => {
                self.condition(left, context, span) && self.condition(right, context, span)
            }
            FieldExpr::Or(left, right) => {
                self.condition(left, context, span) || self.condition(right, context, span)
            }
            FieldExpr::Constant(value) => *value,
            FieldExpr::Compare(operand, op, literal) => {
                self.compare(context, span, operand, *op, literal)
            }
        }
    }

    fn compare(
        &mut self,
        context: &Context<'_>,
        span: &SpanView,
        operand: &Operand,
        op: CompareOp,
        literal: &Literal,
    ) -> bool {
        let value = context.value(span, operand);
        match (value, literal) {
            (None, Literal::Nil) => op == CompareOp::Eq,
            (Some(_), Literal::Nil) => op == CompareOp::Ne,
            (None, _) => false,
            (Some(Value::String(text)), Literal::String(expected)) => match op {
                CompareOp::Regex | CompareOp::NotRegex => {
                    let matched = self
                        .regex(expected)
                        .is_some_and(|regex| regex.is_match(&text));
                    matched == (op == CompareOp::Regex)
                }
                _ => ordering_holds(text.as_str().cmp(expected.as_str()), op),
            },
            (Some(Value::Bool(value)), Literal::Bool(expected)) => match op {
                CompareOp::Eq => value == *expected,
                CompareOp::Ne => value != *expected,
                _ => false,
            },
            (Some(Value::Int(code)), Literal::Status(expected))
                if *operand == Operand::Intrinsic(Intrinsic::Status) =>
            {
                equality_holds(code == i64::from(*expected), op)
            }
            (Some(Value::Int(kind)), Literal::Kind(expected))
                if *operand == Operand::Intrinsic(Intrinsic::Kind) =>
            {
                equality_holds(kind == i64::from(*expected), op)
            }
            (Some(value), literal) => match (number(&value), literal_number(literal)) {
                (Some(left), Some(right))
                    if !matches!(literal, Literal::Status(_) | Literal::Kind(_)) =>
                {
                    compare_numbers(left, op, right)
                }
                _ => false,
            },
        }
    }

    /// Compiled once per pattern; fully anchored, as TraceQL's regexes are.
    fn regex(&mut self, pattern: &str) -> Option<&Regex> {
        self.regexes
            .entry(pattern.to_owned())
            .or_insert_with(|| Regex::new(&format!("^(?:{pattern})$")).ok())
            .as_ref()
    }
}

/// Check the regexes of a query before running it: an invalid one is a bad request.
pub fn check_regexes(query: &Query) -> Result<(), String> {
    fn walk_field(expr: &FieldExpr) -> Result<(), String> {
        match expr {
            FieldExpr::And(left, right) | FieldExpr::Or(left, right) => {
                walk_field(left)?;
                walk_field(right)
            }
            FieldExpr::Compare(_, CompareOp::Regex | CompareOp::NotRegex, Literal::String(p)) => {
                Regex::new(p)
                    .map(|_| ())
                    .map_err(|error| format!("invalid regex {p:?}: {error}"))
            }
            FieldExpr::Compare(_, CompareOp::Regex | CompareOp::NotRegex, other) => {
                Err(format!("=~ and !~ take a string, not {other}"))
            }
            _ => Ok(()),
        }
    }
    fn walk(expr: &SpansetExpr) -> Result<(), String> {
        match expr {
            SpansetExpr::Filter(Some(condition)) => walk_field(condition),
            SpansetExpr::Filter(None) => Ok(()),
            SpansetExpr::Binary(left, _, right) => {
                walk(left)?;
                walk(right)
            }
        }
    }
    walk(&query.spansets)
}

impl Context<'_> {
    /// What an operand is for one span; `None` when the span has no such attribute.
    fn value(&self, span: &SpanView, operand: &Operand) -> Option<Value> {
        let find = |attributes: &[(String, Value)], key: &str| {
            attributes
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.clone())
        };
        match operand {
            Operand::Attribute(Scope::Span, key) => find(&span.attributes, key),
            Operand::Attribute(Scope::Resource, key) => find(&span.resource, key),
            Operand::Attribute(Scope::Unscoped, key) => {
                find(&span.attributes, key).or_else(|| find(&span.resource, key))
            }
            Operand::Intrinsic(intrinsic) => Some(match intrinsic {
                Intrinsic::Name => Value::String(span.name.clone()),
                Intrinsic::Status => Value::Int(i64::from(span.status_code)),
                Intrinsic::StatusMessage => Value::String(span.status_message.clone()),
                Intrinsic::Kind => Value::Int(i64::from(span.kind)),
                Intrinsic::Duration => Value::Int(span.duration_nanos as i64),
                Intrinsic::RootName => Value::String(self.root?.name.clone()),
                Intrinsic::RootServiceName => Value::String(self.root?.service.to_string()),
                Intrinsic::TraceDuration => Value::Int(self.trace_duration as i64),
            }),
        }
    }
}

fn number_of(context: &Context<'_>, span: &SpanView, operand: &Operand) -> Option<f64> {
    number(&context.value(span, operand)?)
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(value) => Some(*value as f64),
        Value::Float(value) => Some(*value),
        _ => None,
    }
}

fn literal_number(literal: &Literal) -> Option<f64> {
    match literal {
        Literal::Int(value) => Some(*value as f64),
        Literal::Float(value) => Some(*value),
        Literal::Duration(nanos) => Some(*nanos as f64),
        _ => None,
    }
}

fn compare_numbers(left: f64, op: CompareOp, right: f64) -> bool {
    match left.partial_cmp(&right) {
        Some(ordering) => ordering_holds(ordering, op),
        None => op == CompareOp::Ne,
    }
}

fn ordering_holds(ordering: std::cmp::Ordering, op: CompareOp) -> bool {
    use std::cmp::Ordering::*;
    match op {
        CompareOp::Eq => ordering == Equal,
        CompareOp::Ne => ordering != Equal,
        CompareOp::Gt => ordering == Greater,
        CompareOp::Ge => ordering != Less,
        CompareOp::Lt => ordering == Less,
        CompareOp::Le => ordering != Greater,
        CompareOp::Regex | CompareOp::NotRegex => false,
    }
}

fn equality_holds(equal: bool, op: CompareOp) -> bool {
    match op {
        CompareOp::Eq => equal,
        CompareOp::Ne => !equal,
        _ => false,
    }
}
