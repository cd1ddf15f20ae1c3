//! The HTML of each page, from the same data the JSON APIs answer with. Every value put
//! in the page goes through [`escape`].

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::metrics::dependencies::Link;
use crate::metrics::latency::{OperationKey, WindowStats};
use crate::query::search::FoundTrace;

const STYLE: &str = include_str!("style.css");

/// Text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A query-string value.
fn url_value(text: &str) -> String {
    crate::cli::query_escape(text)
}

pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · tracelink</title><style>{STYLE}</style></head><body>\
         <header><a class=\"brand\" href=\"/\">tracelink</a><nav>\
         <a href=\"/\">Search</a><a href=\"/services\">Services</a><a href=\"/logs\">Logs</a>\
         <a href=\"/diagnose\">Diagnose</a></nav>\
         <form class=\"go\" action=\"/go\"><input name=\"id\" placeholder=\"trace id, Datadog id or log id\" aria-label=\"id\">\
         <button>Open</button></form></header><main>{body}</main></body></html>",
        title = escape(title),
    )
}

fn ms(nanos: u64) -> String {
    let ms = nanos as f64 / 1e6;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn clock(nanos: u64) -> String {
    let text = crate::model::log::rfc3339(nanos);
    text.get(..23).unwrap_or(&text).replace('T', " ")
}

/// A stable colour per service.
fn hue(service: &str) -> u32 {
    service.bytes().fold(2166136261u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(16777619)
    }) % 360
}

/// One search result (also what a cluster's peers answer the page's search with).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TraceRow {
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    pub start: u64,
    pub duration: u64,
    pub spans: usize,
    pub errors: usize,
}

impl TraceRow {
    pub fn of(found: &FoundTrace) -> TraceRow {
        let trace = &found.trace;
        let root = trace.root().or(trace.spans.first());
        TraceRow {
            trace_id: found.trace_id.to_hex(),
            root_service: root
                .map(|span| span.service.to_string())
                .unwrap_or_default(),
            root_name: root.map(|span| span.name.clone()).unwrap_or_default(),
            start: trace.start(),
            duration: trace.duration_nanos(),
            spans: trace.spans.len(),
            errors: trace
                .spans
                .iter()
                .filter(|span| span.status_code == 2)
                .count(),
        }
    }
}

fn field(params: &HashMap<String, String>, key: &str) -> String {
    escape(params.get(key).map(String::as_str).unwrap_or_default())
}

fn select(name: &str, options: &[(&str, &str)], chosen: &str) -> String {
    let mut out = format!("<select name=\"{name}\" aria-label=\"{name}\">");
    for (value, label) in options {
        let selected = if *value == chosen { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    out.push_str("</select>");
    out
}

pub fn search_page(
    params: &HashMap<String, String>,
    query: &str,
    rows: Option<&[TraceRow]>,
    problem: Option<&str>,
) -> String {
    let chosen = |key: &str| params.get(key).map(String::as_str).unwrap_or_default();
    let mut out = String::from("<h1>Find traces</h1><form class=\"search\" action=\"/search\">");
    let _ = write!(
        out,
        "<label>Service <input name=\"service\" value=\"{}\"></label>\
         <label>Operation <input name=\"operation\" value=\"{}\"></label>\
         <label>Status {}</label>\
         <label>Min duration <input name=\"min\" size=\"6\" placeholder=\"100ms\" value=\"{}\"></label>\
         <label>Max duration <input name=\"max\" size=\"6\" value=\"{}\"></label>\
         <label>Range {}</label>\
         <label class=\"wide\">TraceQL <input name=\"q\" placeholder=\"{{ span.http.status_code >= 500 }}\" value=\"{}\"></label>\
         <button>Search</button></form>",
        field(params, "service"),
        field(params, "operation"),
        select("status", &[("", "any"), ("error", "error"), ("ok", "not error")], chosen("status")),
        field(params, "min"),
        field(params, "max"),
        select(
            "range",
            &[("5m", "last 5 minutes"), ("15m", "last 15 minutes"), ("1h", "last hour"), ("6h", "last 6 hours"), ("24h", "last day"), ("7d", "last week")],
            if chosen("range").is_empty() { "1h" } else { chosen("range") },
        ),
        field(params, "q"),
    );
    let _ = write!(
        out,
        "<p class=\"query\">TraceQL: <code>{}</code></p>",
        escape(query)
    );
    if let Some(problem) = problem {
        let _ = write!(out, "<p class=\"problem\">{}</p>", escape(problem));
    }
    if let Some(rows) = rows {
        if rows.is_empty() {
            out.push_str("<p>No trace matches.</p>");
        } else {
            out.push_str(
                "<table class=\"results\"><thead><tr><th>Trace</th><th>Root</th><th>Start</th>\
                 <th>Duration</th><th>Spans</th><th>Errors</th></tr></thead><tbody>",
            );
            for row in rows {
                let _ = write!(
                    out,
                    "<tr{}><td><a class=\"trace-link\" href=\"/trace/{id}\">{short}</a></td>\
                     <td><span class=\"service\" style=\"--hue:{hue}\">{service}</span> {name}</td>\
                     <td>{start}</td><td>{duration}</td><td>{spans}</td><td>{errors}</td></tr>",
                    if row.errors > 0 {
                        " class=\"failed\""
                    } else {
                        ""
                    },
                    id = escape(&row.trace_id),
                    short = escape(row.trace_id.get(..16).unwrap_or(&row.trace_id)),
                    hue = hue(&row.root_service),
                    service = escape(&row.root_service),
                    name = escape(&row.root_name),
                    start = clock(row.start),
                    duration = ms(row.duration),
                    spans = row.spans,
                    errors = row.errors,
                );
            }
            out.push_str("</tbody></table>");
        }
    }
    out
}

/// Log lines, each linking to its trace.
pub fn log_lines(records: &[Value]) -> String {
    let mut out = String::from("<ul class=\"logs\">");
    for record in records {
        let id = record["id"].as_str().unwrap_or_default();
        let level = record["level"].as_str().unwrap_or("none");
        let trace = record["trace_id"]
            .as_str()
            .map(|trace| {
                format!(
                    " <a class=\"to-trace\" href=\"/trace/{0}#log-{1}\">trace {2}</a>",
                    escape(trace),
                    escape(id),
                    escape(trace.get(..8).unwrap_or(trace))
                )
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "<li class=\"log-line level-{level}\" id=\"log-{id}\"><time>{time}</time> \
             <span class=\"level\">{level}</span> <span class=\"service\" style=\"--hue:{hue}\">{service}</span> \
             <span class=\"message\">{message}</span>{trace}</li>",
            level = escape(level),
            id = escape(id),
            time = clock(record["time_unix_nano"].as_u64().unwrap_or_default()),
            hue = hue(record["service"].as_str().unwrap_or_default()),
            service = escape(record["service"].as_str().unwrap_or_default()),
            message = escape(record["message"].as_str().unwrap_or_default()),
        );
    }
    out.push_str("</ul>");
    out
}

/// The waterfall: a row per span (bar on the trace's time axis, service colour, error red,
/// critical path outlined, slowest and root cause marked, the operation's p50–p99 band
/// beside it, attributes and events on click), the span's log lines under it, and the
/// findings.
/// Grafana Explore on a trace, through the Tempo data source `uid` (Grafana 10+ panes).
pub fn grafana_explore(grafana_url: &str, uid: &str, trace_id: &str) -> String {
    let panes = serde_json::json!({"t": {
        "datasource": uid,
        "queries": [{"refId": "A", "datasource": {"type": "tempo", "uid": uid}, "queryType": "traceql", "query": trace_id}],
        "range": {"from": "now-1h", "to": "now"}
    }});
    format!(
        "{grafana_url}/explore?schemaVersion=1&panes={}",
        url_value(&panes.to_string())
    )
}

pub fn trace_page(joined: &Value, grafana: Option<&(String, String)>) -> String {
    let trace = &joined["trace"];
    let analysis = &trace["analysis"];
    let empty = Vec::new();
    let spans = trace["spans"].as_array().unwrap_or(&empty);
    let logs = joined["logs"].as_array().unwrap_or(&empty);
    let trace_id = trace["trace_id"].as_str().unwrap_or_default();
    let start = trace["start_time_unix_nano"].as_u64().unwrap_or_default();
    let duration_ms = trace["duration_ms"].as_f64().unwrap_or_default().max(1e-6);
    let slowest = analysis["slowest_span"]["span_id"]
        .as_str()
        .unwrap_or_default();
    let root_cause = analysis["root_cause"]["span_id"]
        .as_str()
        .unwrap_or_default();
    let bands: HashMap<(String, String), (f64, f64, f64)> = joined["metrics"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|metric| {
            Some((
                (
                    metric["service"].as_str()?.to_owned(),
                    metric["span_name"].as_str()?.to_owned(),
                ),
                (
                    metric["p50_ms"].as_f64()?,
                    metric["p99_ms"].as_f64()?,
                    metric["count"].as_f64()?,
                ),
            ))
        })
        .collect();
    let mut logs_by_span: HashMap<&str, Vec<Value>> = HashMap::new();
    let mut unattached = Vec::new();
    for record in logs {
        match record["span_id"].as_str() {
            Some(span_id) if spans.iter().any(|span| span["span_id"] == span_id) => logs_by_span
                .entry(span_id)
                .or_default()
                .push(record.clone()),
            _ => unattached.push(record.clone()),
        }
    }
    let root_service = trace["root_service"].as_str().unwrap_or_default();
    let mut out = String::new();
    let _ = write!(
        out,
        "<h1>Trace <code class=\"trace-id\">{id}</code></h1>\
         <p class=\"summary\"><span class=\"service\" style=\"--hue:{hue}\">{service}</span> {name} · \
         {start_time} · {duration} · {count} spans · <span class=\"{error_class}\">{errors} errors</span></p>",
        id = escape(trace_id),
        hue = hue(root_service),
        service = escape(root_service),
        name = escape(trace["root_name"].as_str().unwrap_or_default()),
        start_time = clock(start),
        duration = ms((duration_ms * 1e6) as u64),
        count = trace["span_count"],
        errors = trace["error_count"],
        error_class = if trace["error_count"].as_u64().unwrap_or(0) > 0 { "failed" } else { "ok" },
    );
    let _ = write!(
        out,
        "<p class=\"links\">{grafana}<a href=\"/api/v2/traces/{id}\">Tempo API</a> · \
         <a href=\"/logs?trace_id={id}\">logs</a> · \
         <a href=\"/loki/api/v1/query_range?query={loki}\">Loki query</a> · \
         <a href=\"/api/join/trace/{id}\">join JSON</a> · <a href=\"/metrics\">metrics</a></p>",
        id = escape(trace_id),
        grafana = grafana
            .map(|(url, uid)| format!(
                "<a class=\"grafana\" href=\"{}\">open in Grafana</a> · ",
                escape(&grafana_explore(url, uid, trace_id))
            ))
            .unwrap_or_default(),
        loki = url_value(&format!("{{service_name=~\".+\"}} |= \"{trace_id}\"")),
    );
    let findings = analysis["findings"].as_array().unwrap_or(&empty);
    if !findings.is_empty() || analysis["root_cause"].is_object() {
        out.push_str("<section class=\"findings\"><h2>Findings</h2><ul>");
        if let Some(cause) = analysis["root_cause"].as_object() {
            let _ = write!(
                out,
                "<li class=\"finding root\">Root cause: <b>{}</b> {} — {}</li>",
                escape(
                    cause
                        .get("service")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                escape(
                    cause
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                escape(
                    cause
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
            );
        }
        for finding in findings {
            let _ = write!(
                out,
                "<li class=\"finding\"><b>{}</b> {}</li>",
                escape(finding["kind"].as_str().unwrap_or_default()),
                escape(finding["message"].as_str().unwrap_or_default()),
            );
        }
        out.push_str("</ul></section>");
    }
    out.push_str("<section class=\"waterfall\"><h2>Spans</h2><div class=\"axis\"><span>0</span>");
    let _ = write!(
        out,
        "<span>{}</span><span>{}</span></div>",
        ms((duration_ms * 5e5) as u64),
        ms((duration_ms * 1e6) as u64)
    );
    for span in spans {
        let span_id = span["span_id"].as_str().unwrap_or_default();
        let service = span["service"].as_str().unwrap_or_default();
        let name = span["name"].as_str().unwrap_or_default();
        let offset = (span["start_time_unix_nano"]
            .as_u64()
            .unwrap_or(start)
            .saturating_sub(start)) as f64
            / 1e6;
        let length = span["duration_ms"].as_f64().unwrap_or_default();
        let left = offset / duration_ms * 100.0;
        let width = (length / duration_ms * 100.0).max(0.3);
        let error = span["status"] == "error";
        let mut classes = vec!["span"];
        if error {
            classes.push("error");
        }
        if span["critical"] == true {
            classes.push("critical");
        }
        let mut marks = String::new();
        if span_id == slowest {
            marks.push_str("<span class=\"mark mark-slowest\">slowest</span>");
        }
        if span_id == root_cause {
            marks.push_str("<span class=\"mark mark-root-cause\">root cause</span>");
        }
        if span["error_role"] == "propagated" {
            marks.push_str("<span class=\"mark mark-propagated\">propagated</span>");
        }
        let band = bands
            .get(&(service.to_owned(), crate::metrics::names::normalise_span_name(name)))
            .filter(|(_, _, count)| *count >= 5.0)
            .map(|(p50, p99, _)| {
                // Cut to the trace's time axis; an open end says the band goes on.
                let band_left = (left + p50 / duration_ms * 100.0).min(100.0);
                let band_right = (left + p99 / duration_ms * 100.0).min(100.0);
                let width = (band_right - band_left).max(0.3);
                let open = if left + p99 / duration_ms * 100.0 > 100.0 { " open-end" } else { "" };
                format!(
                    "<div class=\"band{open}\" style=\"left:{:.3}%;width:{width:.3}%\" title=\"normal for this operation: p50 {p50:.1} ms – p99 {p99:.1} ms\"></div>",
                    band_left.min(99.7)
                )
            })
            .unwrap_or_default();
        let attributes = span["attributes"]
            .as_object()
            .map(|attributes| {
                attributes
                    .iter()
                    .map(|(key, value)| {
                        format!(
                            "<tr><th>{}</th><td>{}</td></tr>",
                            escape(key),
                            escape(
                                &value
                                    .as_str()
                                    .map_or_else(|| value.to_string(), str::to_owned)
                            )
                        )
                    })
                    .collect::<String>()
            })
            .unwrap_or_default();
        let events = span["events"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|event| format!("<li>{}</li>", escape(&event.to_string())))
            .collect::<String>();
        let _ = write!(
            out,
            "<details class=\"{classes}\" id=\"span-{id}\" style=\"--depth:{depth};--hue:{hue}\">\
             <summary><span class=\"label\"><span class=\"service\">{service}</span> {name}{marks}</span>\
             <span class=\"track\">{band}<span class=\"bar\" style=\"left:{left:.3}%;width:{width:.3}%\"></span></span>\
             <span class=\"time\">{duration}</span></summary>\
             <div class=\"detail\"><p>{kind} · {status}{message} · self {self_time} · span {id}</p>\
             <table class=\"attributes\">{attributes}</table>{events}</div></details>",
            classes = classes.join(" "),
            id = escape(span_id),
            depth = span["depth"].as_u64().unwrap_or_default(),
            hue = hue(service),
            service = escape(service),
            name = escape(name),
            duration = ms((length * 1e6) as u64),
            kind = escape(span["kind"].as_str().unwrap_or_default()),
            status = escape(span["status"].as_str().unwrap_or_default()),
            message = span["status_message"]
                .as_str()
                .filter(|message| !message.is_empty())
                .map(|message| format!(": {}", escape(message)))
                .unwrap_or_default(),
            self_time = ms((span["self_time_ms"].as_f64().unwrap_or_default() * 1e6) as u64),
            events = if events.is_empty() { String::new() } else { format!("<ul class=\"events\">{events}</ul>") },
        );
        if let Some(records) = logs_by_span.get(span_id) {
            let _ = write!(
                out,
                "<div class=\"span-logs\" style=\"--depth:{}\">{}</div>",
                span["depth"].as_u64().unwrap_or_default(),
                log_lines(records)
            );
        }
    }
    out.push_str("</section>");
    if !unattached.is_empty() {
        let _ = write!(
            out,
            "<section><h2>Other log lines of the trace</h2>{}</section>",
            log_lines(&unattached)
        );
    }
    out
}

pub fn logs_page(params: &HashMap<String, String>, records: &[Value]) -> String {
    let chosen = params.get("level").map(String::as_str).unwrap_or_default();
    let mut out = String::from("<h1>Logs</h1><form class=\"search\" action=\"/logs\">");
    let _ = write!(
        out,
        "<label>Service <input name=\"service\" value=\"{}\"></label><label>Level {}</label>\
         <label>Text <input name=\"text\" value=\"{}\"></label><label>Trace id <input name=\"trace_id\" value=\"{}\"></label>\
         <button>Search</button></form>",
        field(params, "service"),
        select("level", &[("", "any"), ("fatal", "fatal"), ("error", "error"), ("warn", "warn"), ("info", "info"), ("debug", "debug")], chosen),
        field(params, "text"),
        field(params, "trace_id"),
    );
    if records.is_empty() {
        out.push_str("<p>No log line matches.</p>");
    } else {
        out.push_str(&log_lines(records));
    }
    out
}

/// Services: each operation's rate, error rate and p50/p99 over the window, and the
/// service graph (an SVG circle of the services, an arrow per caller → callee).
pub fn services_page(
    minutes: u64,
    per_service: &[(String, WindowStats)],
    rows: &[(OperationKey, WindowStats)],
    links: &[Link],
) -> String {
    let mut out = format!("<h1>Services</h1><p>Over the last {minutes} minutes: ");
    for window in ["5m", "15m", "60m"] {
        let _ = write!(out, "<a href=\"/services?window={window}\">{window}</a> ");
    }
    out.push_str("</p>");
    let mut services: Vec<&str> = links
        .iter()
        .flat_map(|link| [link.parent.as_str(), link.child.as_str()])
        .chain(rows.iter().map(|(key, _)| key.service.as_str()))
        .collect();
    services.sort_unstable();
    services.dedup();
    if !services.is_empty() {
        let (size, radius) = (520.0f64, 190.0f64);
        let position = |index: usize| {
            let angle = index as f64 / services.len() as f64 * std::f64::consts::TAU
                - std::f64::consts::FRAC_PI_2;
            (
                size / 2.0 + radius * angle.cos(),
                size / 2.0 + radius * angle.sin(),
            )
        };
        let index_of = |name: &str| {
            services
                .iter()
                .position(|service| *service == name)
                .unwrap_or(0)
        };
        let _ = write!(out, "<svg class=\"graph\" viewBox=\"0 0 {size} {size}\" role=\"img\" aria-label=\"service graph\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"28\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>");
        for link in links {
            let (x1, y1) = position(index_of(&link.parent));
            let (x2, y2) = position(index_of(&link.child));
            let class = if link.errors > 0 {
                "edge failing"
            } else {
                "edge"
            };
            let _ = write!(
                out,
                "<g class=\"{class}\"><line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" marker-end=\"url(#arrow)\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{} calls{}</text></g>",
                (x1 + x2) / 2.0,
                (y1 + y2) / 2.0 - 4.0,
                link.calls,
                if link.errors > 0 { format!(", {} errors", link.errors) } else { String::new() },
            );
        }
        for (index, service) in services.iter().enumerate() {
            let (x, y) = position(index);
            let _ = write!(
                out,
                "<g class=\"node\" style=\"--hue:{}\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"22\"/><text x=\"{x:.1}\" y=\"{:.1}\">{}</text></g>",
                hue(service),
                y + 38.0,
                escape(service),
            );
        }
        out.push_str("</svg>");
    }
    out.push_str(
        "<table class=\"results services\"><thead><tr><th>Service</th><th>Calls</th><th>Calls/s</th><th>Errors</th>\
         <th>p50</th><th>p99</th></tr></thead><tbody>",
    );
    for (service, stats) in per_service {
        let error_rate = stats.error_rate();
        let _ = write!(
            out,
            "<tr{}><td><a href=\"/search?service={}\"><span class=\"service\" style=\"--hue:{}\">{}</span></a></td>\
             <td>{}</td><td>{:.3}</td><td>{:.1}%</td><td>{:.1} ms</td><td>{:.1} ms</td></tr>",
            if error_rate > 0.0 { " class=\"failed\"" } else { "" },
            url_value(service),
            hue(service),
            escape(service),
            stats.count,
            stats.count as f64 / (minutes * 60) as f64,
            error_rate * 100.0,
            stats.p50_ms,
            stats.p99_ms,
        );
    }
    out.push_str("</tbody></table><h2>Operations</h2>");
    out.push_str(
        "<table class=\"results operations\"><thead><tr><th>Service</th><th>Operation</th><th>Kind</th><th>Calls</th>\
         <th>Calls/s</th><th>Errors</th><th>p50</th><th>p99</th></tr></thead><tbody>",
    );
    for (key, stats) in rows {
        let error_rate = stats.error_rate();
        let _ = write!(
            out,
            "<tr{}><td><a href=\"/search?service={}\"><span class=\"service\" style=\"--hue:{}\">{}</span></a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.3}</td><td>{:.1}%</td><td>{:.1} ms</td><td>{:.1} ms</td></tr>",
            if error_rate > 0.0 { " class=\"failed\"" } else { "" },
            url_value(&key.service),
            hue(&key.service),
            escape(&key.service),
            escape(&key.span_name),
            crate::analysis::kind_name(key.span_kind),
            stats.count,
            stats.count as f64 / (minutes * 60) as f64,
            error_rate * 100.0,
            stats.p50_ms,
            stats.p99_ms,
        );
    }
    out.push_str("</tbody></table>");
    out
}

pub fn diagnose_page(params: &HashMap<String, String>, diagnosis: &Value) -> String {
    let mut out =
        String::from("<h1>Diagnose a window</h1><form class=\"search\" action=\"/diagnose\">");
    let _ = write!(
        out,
        "<label>Start <input name=\"start\" placeholder=\"15 minutes ago\" value=\"{}\"></label>\
         <label>End <input name=\"end\" placeholder=\"now\" value=\"{}\"></label>\
         <label>Service <input name=\"service\" value=\"{}\"></label><button>Diagnose</button></form>",
        field(params, "start"),
        field(params, "end"),
        field(params, "service"),
    );
    let _ = write!(
        out,
        "<p class=\"summary diagnosis\">{}</p><p>Window {} – {} ({} traces) against {} – {} ({} traces).</p>",
        escape(diagnosis["summary"].as_str().unwrap_or_default()),
        clock(diagnosis["window"]["start"].as_u64().unwrap_or_default()),
        clock(diagnosis["window"]["end"].as_u64().unwrap_or_default()),
        diagnosis["window"]["traces"],
        clock(diagnosis["baseline"]["start"].as_u64().unwrap_or_default()),
        clock(diagnosis["baseline"]["end"].as_u64().unwrap_or_default()),
        diagnosis["baseline"]["traces"],
    );
    let empty = Vec::new();
    let suspects = diagnosis["suspects"].as_array().unwrap_or(&empty);
    if suspects.is_empty() {
        return out;
    }
    out.push_str(
        "<table class=\"results suspects\"><thead><tr><th>#</th><th>Score</th><th>Service</th><th>Operation</th>\
         <th>What</th><th>Origin</th><th>Evidence</th><th>Example</th></tr></thead><tbody>",
    );
    for (rank, suspect) in suspects.iter().enumerate() {
        let evidence = &suspect["evidence"];
        let number = |value: &Value| value.as_f64().unwrap_or_default();
        let score = number(&suspect["score"]);
        let detail = match suspect["kind"].as_str().unwrap_or_default() {
            "errors" => format!(
                "errors {:.1}% → {:.1}%{}",
                number(&evidence["error_rate_baseline"]) * 100.0,
                number(&evidence["error_rate_window"]) * 100.0,
                evidence["error_messages"][0]["text"]
                    .as_str()
                    .map(|text| format!(" · {text}"))
                    .unwrap_or_default(),
            ),
            "latency" => format!(
                "p50 {:.1} → {:.1} ms · p99 {:.1} → {:.1} ms",
                number(&evidence["baseline"]["p50_ms"]),
                number(&evidence["window"]["p50_ms"]),
                number(&evidence["baseline"]["p99_ms"]),
                number(&evidence["window"]["p99_ms"]),
            ),
            _ => format!(
                "{} error logs (baseline {}){}",
                evidence["error_logs_window"],
                evidence["error_logs_baseline"],
                evidence["log_templates"][0]["text"]
                    .as_str()
                    .map(|text| format!(" · {text}"))
                    .unwrap_or_default(),
            ),
        };
        let origin = match suspect["caused_by"]["service"].as_str() {
            Some(service) => format!(
                "from {} {}",
                service,
                suspect["caused_by"]["operation"]
                    .as_str()
                    .unwrap_or_default()
            ),
            None => "starts here".into(),
        };
        let example = suspect["example_trace_id"]
            .as_str()
            .map(|id| {
                format!(
                    "<a href=\"/trace/{0}\">{1}</a>",
                    escape(id),
                    escape(id.get(..8).unwrap_or(id))
                )
            })
            .unwrap_or_default();
        let width = (score.min(5.0) / 5.0 * 100.0).max(2.0);
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{}</td><td><span class=\"score\" style=\"--score:{width:.0}%\">{score:.2}</span></td>\
             <td><span class=\"service\" style=\"--hue:{}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{example}</td></tr>",
            if score >= 1.0 { "suspect strong" } else { "suspect" },
            rank + 1,
            hue(suspect["service"].as_str().unwrap_or_default()),
            escape(suspect["service"].as_str().unwrap_or_default()),
            escape(suspect["operation"].as_str().unwrap_or_default()),
            escape(suspect["kind"].as_str().unwrap_or_default()),
            escape(&origin),
            escape(&detail),
        );
    }
    out.push_str("</tbody></table>");
    out
}
