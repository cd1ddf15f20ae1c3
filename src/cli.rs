//! `tracelink trace <id>` and `tracelink join <log_id>`: fetch the join API of a running
//! tracelink and draw the span tree the way the seed document draws it: indented with box
//! lines, durations, `← slowest`, `← root cause`, error marks, and each span's log lines
//! under it. Colour only when stdout is a terminal.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach tracelink at {url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("{url}: {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
}

/// GET a join URL and return its JSON.
pub async fn fetch(url: &str) -> Result<Value, CliError> {
    let response = reqwest::get(url)
        .await
        .map_err(|source| CliError::Request {
            url: url.to_owned(),
            source,
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(CliError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            message: body["error"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned(),
        });
    }
    Ok(body)
}

struct Style {
    colour: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_owned()
        }
    }
}

fn duration(ms: f64) -> String {
    if (ms - ms.round()).abs() < 1e-9 {
        format!("{}ms", ms.round() as i64)
    } else if ms < 10.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

fn clock(time_unix_nano: u64) -> String {
    crate::model::log::rfc3339(time_unix_nano)
        .get(11..23)
        .unwrap_or_default()
        .to_owned()
}

/// A query-string value, percent-encoded where it must be.
pub fn query_escape(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~:".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The diagnosis as a table (rank, score, service, operation, what, origin, evidence),
/// its summary, and the top suspect's example trace as a tree when there is one.
pub fn render_diagnosis(diagnosis: &Value, example: Option<&Value>, colour: bool) -> String {
    let style = Style { colour };
    let mut out = String::new();
    let when = |range: &Value| {
        let at = |key: &str| {
            crate::model::log::rfc3339(range[key].as_u64().unwrap_or_default())
                .get(..19)
                .unwrap_or_default()
                .replace('T', " ")
        };
        format!("{} – {}", at("start"), at("end"))
    };
    let _ = writeln!(
        out,
        "window   {} ({} traces, {} error logs)",
        when(&diagnosis["window"]),
        diagnosis["window"]["traces"],
        diagnosis["window"]["error_logs"]
    );
    let _ = writeln!(
        out,
        "baseline {} ({} traces, {} error logs)\n",
        when(&diagnosis["baseline"]),
        diagnosis["baseline"]["traces"],
        diagnosis["baseline"]["error_logs"]
    );
    let empty = Vec::new();
    let suspects = diagnosis["suspects"].as_array().unwrap_or(&empty);
    if suspects.is_empty() {
        let _ = writeln!(out, "no suspects");
    } else {
        let _ = writeln!(
            out,
            "{:>2}  {:>6}  {:<14} {:<24} {:<8} {:<7} evidence",
            "#", "score", "service", "operation", "what", "origin"
        );
    }
    for (rank, suspect) in suspects.iter().enumerate() {
        let evidence = &suspect["evidence"];
        let number = |value: &Value| value.as_f64().unwrap_or_default();
        let detail = match suspect["kind"].as_str().unwrap_or_default() {
            "errors" => format!(
                "errors {:.1}% -> {:.1}%",
                number(&evidence["error_rate_baseline"]) * 100.0,
                number(&evidence["error_rate_window"]) * 100.0
            ),
            "latency" => format!(
                "p50 {:.1} -> {:.1} ms, p99 {:.1} -> {:.1} ms",
                number(&evidence["baseline"]["p50_ms"]),
                number(&evidence["window"]["p50_ms"]),
                number(&evidence["baseline"]["p99_ms"]),
                number(&evidence["window"]["p99_ms"])
            ),
            _ => format!(
                "{} error logs (baseline {})",
                evidence["error_logs_window"], evidence["error_logs_baseline"]
            ),
        };
        let origin = match suspect["caused_by"]["service"].as_str() {
            Some(service) => format!("<- {service}"),
            None => "here".to_owned(),
        };
        let score = number(&suspect["score"]);
        let line = format!(
            "{:>2}  {:>6.2}  {:<14} {:<24} {:<8} {:<7} {detail}",
            rank + 1,
            score,
            suspect["service"].as_str().unwrap_or_default(),
            suspect["operation"].as_str().unwrap_or_default(),
            suspect["kind"].as_str().unwrap_or_default(),
            origin,
        );
        let _ = writeln!(
            out,
            "{}",
            if score >= 1.0 {
                style.paint("1", &line)
            } else {
                line
            }
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        diagnosis["summary"].as_str().unwrap_or_default()
    );
    if let Some(example) = example {
        let _ = writeln!(out, "\nexample trace of the top suspect:");
        out.push_str(&render_trace(example, colour));
    }
    out
}

/// Draw the joined answer: header, tree with marks and logs.
pub fn render_trace(joined: &Value, colour: bool) -> String {
    let style = Style { colour };
    let trace = &joined["trace"];
    let mut out = String::new();
    if trace.is_null() {
        out.push_str("no trace to show\n");
        return out;
    }
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let analysis = &trace["analysis"];
    let slowest = analysis["slowest_span"]["span_id"]
        .as_str()
        .unwrap_or_default();
    let root_cause = analysis["root_cause"]["span_id"]
        .as_str()
        .unwrap_or_default();
    let slow_operations: Vec<&str> = analysis["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|finding| finding["kind"] == "slow_operation")
        .flat_map(|finding| finding["span_ids"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let mut logs_by_span: HashMap<String, Vec<&Value>> = HashMap::new();
    let mut unattached = Vec::new();
    for log in joined["logs"].as_array().into_iter().flatten() {
        match log["span_id"].as_str() {
            Some(span_id) if spans.iter().any(|span| span["span_id"] == span_id) => logs_by_span
                .entry(span_id.to_owned())
                .or_default()
                .push(log),
            _ => unattached.push(log),
        }
    }
    let _ = writeln!(
        out,
        "Trace: {} ({} / {})",
        trace["trace_id"].as_str().unwrap_or_default(),
        trace["root_service"].as_str().unwrap_or_default(),
        trace["root_name"].as_str().unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "Duration: {}   Spans: {}   Services: {}   Errors: {}",
        duration(trace["duration_ms"].as_f64().unwrap_or_default()),
        trace["span_count"],
        trace["services"]
            .as_array()
            .map(|services| services.len())
            .unwrap_or_default(),
        trace["error_count"]
    );
    out.push('\n');

    // Which spans are the last among their siblings (for └── and the blank column).
    let mut last_child: HashMap<String, bool> = HashMap::new();
    let mut seen_parents: HashMap<String, String> = HashMap::new();
    for span in &spans {
        let parent = span["parent_span_id"].as_str().unwrap_or("").to_owned();
        let id = span["span_id"].as_str().unwrap_or_default().to_owned();
        if let Some(previous) = seen_parents.insert(parent, id.clone()) {
            last_child.insert(previous, false);
        }
        last_child.insert(id, true);
    }
    let mut open_columns: Vec<bool> = Vec::new();
    for span in &spans {
        let depth = span["depth"].as_u64().unwrap_or(0) as usize;
        let id = span["span_id"].as_str().unwrap_or_default();
        let is_last = last_child.get(id).copied().unwrap_or(true);
        open_columns.truncate(depth);
        let mut prefix = String::new();
        for open in &open_columns {
            prefix.push_str(if *open { "│   " } else { "    " });
        }
        let connector = if is_last { "└── " } else { "├── " };
        let mut line = format!(
            "{prefix}{connector}{} [{}] ({})",
            span["name"].as_str().unwrap_or_default(),
            span["service"].as_str().unwrap_or_default(),
            duration(span["duration_ms"].as_f64().unwrap_or_default())
        );
        let error = span["status"] == "error";
        if error {
            line = style.paint("31", &format!("{line} ✗"));
        }
        let mut marks = Vec::new();
        if id == slowest {
            marks.push(style.paint("33", "← slowest"));
        }
        if id == root_cause {
            let message = analysis["root_cause"]["message"]
                .as_str()
                .unwrap_or_default();
            marks.push(style.paint("1;31", &format!("← root cause: {message}")));
        } else if span["error_role"] == "propagated" {
            marks.push(style.paint("31", "← error propagated"));
        }
        if slow_operations.contains(&id) {
            marks.push(style.paint("33", "← slow operation (far above its usual)"));
        }
        let _ = writeln!(out, "{line}  {}", marks.join("  ").trim_end());
        open_columns.push(!is_last);
        let child_prefix: String = open_columns
            .iter()
            .map(|open| if *open { "│   " } else { "    " })
            .collect();
        for log in logs_by_span.get(id).into_iter().flatten() {
            let text = format!(
                "{child_prefix}· {} {} {}",
                clock(log["time_unix_nano"].as_u64().unwrap_or_default()),
                log["level"].as_str().unwrap_or("-").to_uppercase(),
                log["message"].as_str().unwrap_or_default()
            );
            let _ = writeln!(out, "{}", style.paint("2", &text));
        }
    }
    if !unattached.is_empty() {
        let _ = writeln!(out, "\nLogs of the trace without a span:");
        for log in unattached {
            let _ = writeln!(
                out,
                "  · {} {} {}",
                clock(log["time_unix_nano"].as_u64().unwrap_or_default()),
                log["level"].as_str().unwrap_or("-").to_uppercase(),
                log["message"].as_str().unwrap_or_default()
            );
        }
    }
    let findings = analysis["findings"].as_array().cloned().unwrap_or_default();
    if !findings.is_empty() {
        let _ = writeln!(out, "\nFindings:");
        for finding in findings {
            let _ = writeln!(
                out,
                "  - {}: {}",
                finding["kind"].as_str().unwrap_or_default(),
                finding["message"].as_str().unwrap_or_default()
            );
        }
    }
    out
}

/// `tracelink join`: the log line, the tree, and how this request's operations compare
/// with their normal latency.
pub fn render_join(joined: &Value, colour: bool) -> String {
    let mut out = String::new();
    let log = &joined["log"];
    let _ = writeln!(
        out,
        "Log {}: {} {} [{}] {}",
        log["id"].as_str().unwrap_or_default(),
        log["time"].as_str().unwrap_or_default(),
        log["level"].as_str().unwrap_or("-").to_uppercase(),
        log["service"].as_str().unwrap_or_default(),
        log["message"].as_str().unwrap_or_default()
    );
    if joined["join"] == "inferred" {
        let _ = writeln!(
            out,
            "No trace id in the record; joined by inference: {}",
            joined["rule"].as_str().unwrap_or_default()
        );
    }
    out.push('\n');
    out.push_str(&render_trace(joined, colour));
    let metrics = joined["metrics"].as_array().cloned().unwrap_or_default();
    if !metrics.is_empty() {
        let _ = writeln!(
            out,
            "\nIs it normal? (last {} per operation)",
            metrics[0]["window"].as_str().unwrap_or("1h")
        );
        for entry in metrics {
            let percentile = entry["percentile_rank"].as_f64();
            let _ = writeln!(
                out,
                "  {} / {}: this {} — usual p50 {} p99 {} over {} calls{}",
                entry["service"].as_str().unwrap_or_default(),
                entry["span_name"].as_str().unwrap_or_default(),
                duration(entry["this_duration_ms"].as_f64().unwrap_or_default()),
                entry["p50_ms"]
                    .as_f64()
                    .map(duration)
                    .unwrap_or_else(|| "-".into()),
                entry["p99_ms"]
                    .as_f64()
                    .map(duration)
                    .unwrap_or_else(|| "-".into()),
                entry["count"],
                percentile
                    .map(|rank| format!(", slower than {rank:.1}% of them"))
                    .unwrap_or_default()
            );
        }
    }
    out
}
