//! `tracelink demo`: the seed's shop, simulated in the same process as the service and
//! talking to it as real services would. Checkouts go gateway → orders → inventory (and its
//! database), payments, pricing, and a queue to notifier; each is sent as OTLP/HTTP
//! protobuf to tracelink's own port, and the services write JSON log lines with trace and
//! span ids into `<data_dir>/demo/logs/<service>.log`, which tracelink's tailer follows.
//!
//! Incidents come and go on a cycle, one phase each: all well, payments declining cards,
//! a slow inventory query, a flaky notifier retried, an N+1 in pricing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// The phases of the incident cycle, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    CardsDeclined,
    SlowInventory,
    FlakyNotifier,
    PricingNPlusOne,
}

impl Phase {
    const CYCLE: [Phase; 5] = [
        Phase::Healthy,
        Phase::CardsDeclined,
        Phase::SlowInventory,
        Phase::FlakyNotifier,
        Phase::PricingNPlusOne,
    ];

    /// The phase `elapsed` into a cycle of `phase_length` phases.
    pub fn at(elapsed: Duration, phase_length: Duration) -> Phase {
        let index = (elapsed.as_millis() / phase_length.as_millis().max(1)) as usize;
        Phase::CYCLE[index % Phase::CYCLE.len()]
    }

    pub fn describe(self) -> &'static str {
        match self {
            Phase::Healthy => "all well",
            Phase::CardsDeclined => "payments declines a third of the cards",
            Phase::SlowInventory => "inventory's stock query takes ~300 ms",
            Phase::FlakyNotifier => "notifier's SMTP fails and is retried",
            Phase::PricingNPlusOne => "orders prices each line with its own call (N+1)",
        }
    }
}

/// The log directory the demo's services write to, under the data dir.
pub fn logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("demo").join("logs")
}

/// A small deterministic generator (splitmix64): varied latencies without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Milliseconds around `ms` (±30 %), as nanoseconds.
    fn around(&mut self, ms: u64) -> u64 {
        let spread = self.next() % 61;
        ms * 1_000_000 * (70 + spread) / 100
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// One checkout being built: its spans by service, and its log lines.
struct Checkout {
    trace_id: [u8; 16],
    next_span: u64,
    spans: Vec<(&'static str, Span)>,
    logs: Vec<(&'static str, String)>,
}

impl Checkout {
    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        service: &'static str,
        parent: Option<&Span>,
        name: &str,
        kind: span::SpanKind,
        start: u64,
        duration: u64,
        attributes: Vec<KeyValue>,
        error: Option<&str>,
    ) -> Span {
        self.next_span += 1;
        let mut span_id = self.trace_id[8..].to_vec();
        span_id[7] = span_id[7].wrapping_add(self.next_span as u8);
        span_id[6] ^= (self.next_span >> 8) as u8;
        let span = Span {
            trace_id: self.trace_id.to_vec(),
            span_id,
            parent_span_id: parent
                .map(|parent| parent.span_id.clone())
                .unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            attributes,
            status: error.map(|message| Status {
                code: status::StatusCode::Error as i32,
                message: message.into(),
            }),
            ..Default::default()
        };
        self.spans.push((service, span.clone()));
        span
    }

    fn log(&mut self, service: &'static str, span: &Span, time: u64, level: &str, message: &str) {
        let line = serde_json::json!({
            "ts": crate::model::log::rfc3339(time),
            "level": level,
            "service": service,
            "msg": message,
            "trace_id": crate::model::to_hex(&self.trace_id),
            "span_id": crate::model::to_hex(&span.span_id),
        });
        self.logs.push((service, line.to_string()));
    }

    fn request(&self) -> ExportTraceServiceRequest {
        let mut by_service: Vec<(&str, Vec<Span>)> = Vec::new();
        for (service, span) in &self.spans {
            match by_service.iter_mut().find(|(name, _)| name == service) {
                Some((_, spans)) => spans.push(span.clone()),
                None => by_service.push((service, vec![span.clone()])),
            }
        }
        ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                        attributes: vec![
                            string("service.name", service),
                            string("deployment.environment.name", "demo"),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// One checkout of order `order` in `phase`, ending about now.
fn checkout(order: u64, phase: Phase, random: &mut Random) -> Checkout {
    use span::SpanKind::{Client, Consumer, Internal, Producer, Server};
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&random.next().to_be_bytes());
    trace_id[8..].copy_from_slice(&random.next().to_be_bytes());
    let mut c = Checkout {
        trace_id,
        next_span: 0,
        spans: Vec::new(),
        logs: Vec::new(),
    };
    // Durations first, then the spans laid out from the start.
    let stock_ms = if phase == Phase::SlowInventory {
        300
    } else {
        6
    };
    let stock = random.around(stock_ms);
    let reserve = stock + random.around(4);
    let lines = 2 + random.next() % 4;
    let price_calls = if phase == Phase::PricingNPlusOne {
        lines + 1
    } else {
        1
    };
    let price_each = random.around(8);
    let declined = phase == Phase::CardsDeclined && random.chance(33);
    let charge_query = random.around(5);
    let charge = charge_query + random.around(40);
    let pricing = price_calls * (price_each + 600_000);
    let orders = reserve + pricing + charge + random.around(6) + 4_000_000;
    let total = orders + random.around(5) + 2_000_000;
    let start = now_nanos().saturating_sub(total + 50_000_000);

    let failed = declined;
    let root = c.span(
        "gateway",
        None,
        "POST",
        Server,
        start,
        total,
        vec![
            string("http.request.method", "POST"),
            string("http.route", "/checkout"),
            int("http.response.status_code", if failed { 402 } else { 200 }),
        ],
        failed.then_some("checkout failed: payment declined"),
    );
    c.log(
        "gateway",
        &root,
        start + 200_000,
        "info",
        &format!("checkout started for order {order}"),
    );
    let call = c.span(
        "gateway",
        Some(&root),
        "POST /orders",
        Client,
        start + 1_000_000,
        orders,
        vec![
            string("http.request.method", "POST"),
            string("server.address", "orders"),
        ],
        failed.then_some("orders answered 402"),
    );
    let order_span = c.span(
        "orders",
        Some(&call),
        "POST /orders",
        Server,
        start + 1_500_000,
        orders - 1_000_000,
        vec![
            string("http.route", "/orders"),
            int("order.lines", lines as i64),
        ],
        failed.then_some("payment declined"),
    );
    let mut at = start + 2_000_000;
    // inventory: reserve the lines.
    let call = c.span(
        "orders",
        Some(&order_span),
        "POST /inventory/reserve",
        Client,
        at,
        reserve + 800_000,
        vec![string("server.address", "inventory")],
        None,
    );
    let server = c.span(
        "inventory",
        Some(&call),
        "POST /reserve",
        Server,
        at + 300_000,
        reserve,
        vec![string("http.route", "/reserve")],
        None,
    );
    let query = c.span(
        "inventory",
        Some(&server),
        "SELECT stock",
        Client,
        at + 500_000,
        stock,
        vec![
            string("db.system.name", "postgresql"),
            string(
                "db.query.text",
                &format!(
                    "SELECT qty FROM stock WHERE sku = 'SKU-{}' FOR UPDATE",
                    order % 97
                ),
            ),
        ],
        None,
    );
    if stock > 100_000_000 {
        c.log(
            "inventory",
            &query,
            at + stock,
            "warn",
            &format!("slow query: stock lookup took {} ms", stock / 1_000_000),
        );
    }
    at += reserve + 1_000_000;
    // pricing: one call for the order, or one per line (N+1).
    for call_number in 0..price_calls {
        let name = if price_calls == 1 {
            "GET /prices"
        } else {
            "GET /price"
        };
        let call = c.span(
            "orders",
            Some(&order_span),
            name,
            Client,
            at,
            price_each + 400_000,
            vec![string("server.address", "pricing")],
            None,
        );
        c.span(
            "pricing",
            Some(&call),
            name,
            Server,
            at + 200_000,
            price_each,
            vec![
                string("http.route", name.trim_start_matches("GET ")),
                int("pricing.call", call_number as i64),
            ],
            None,
        );
        at += price_each + 600_000;
    }
    // payments: charge the card.
    let call = c.span(
        "orders",
        Some(&order_span),
        "POST /payments/charge",
        Client,
        at,
        charge + 800_000,
        vec![string("server.address", "payments")],
        declined.then_some("payments answered 402"),
    );
    let payment = c.span(
        "payments",
        Some(&call),
        "POST /charge",
        Server,
        at + 300_000,
        charge,
        vec![
            string("http.route", "/charge"),
            string("payment.card.brand", "visa"),
        ],
        declined.then_some("card declined"),
    );
    c.span(
        "payments",
        Some(&payment),
        "INSERT charges",
        Client,
        at + 600_000,
        charge_query,
        vec![
            string("db.system.name", "postgresql"),
            string(
                "db.query.text",
                &format!("INSERT INTO charges (order_id, amount) VALUES ({order}, 4200)"),
            ),
        ],
        None,
    );
    if declined {
        c.log(
            "payments",
            &payment,
            at + charge,
            "error",
            &format!("card declined for order {order}: insufficient funds"),
        );
        c.log(
            "orders",
            &order_span,
            at + charge + 500_000,
            "warn",
            &format!("order {order} not placed: payment declined"),
        );
    } else {
        // notifier: an email through the queue, after the order is placed.
        let publish = c.span(
            "orders",
            Some(&order_span),
            "order.placed publish",
            Producer,
            at + charge + 1_000_000,
            700_000,
            vec![
                string("messaging.system", "kafka"),
                string("messaging.destination.name", "orders"),
            ],
            None,
        );
        let consume_at = at + charge + 5_000_000;
        let attempts = if phase == Phase::FlakyNotifier && random.chance(60) {
            3
        } else {
            1
        };
        let mut send_at = consume_at + 500_000;
        let mut sends = Vec::new();
        for attempt in 1..=attempts {
            let failed = attempt < attempts;
            let duration = if failed {
                random.around(200)
            } else {
                random.around(25)
            };
            sends.push((send_at, duration, failed, attempt));
            send_at += duration + 1_000_000;
        }
        let consume = c.span(
            "notifier",
            Some(&publish),
            "order.placed process",
            Consumer,
            consume_at,
            send_at - consume_at,
            vec![string("messaging.system", "kafka")],
            None,
        );
        for (send_start, duration, failed, attempt) in sends {
            let smtp = c.span(
                "notifier",
                Some(&consume),
                "SMTP send",
                Client,
                send_start,
                duration,
                vec![
                    string("server.address", "smtp.example.com"),
                    int("retry.attempt", attempt),
                ],
                failed.then_some("SMTP timeout"),
            );
            if failed {
                c.log("notifier", &smtp, send_start + duration, "error", &format!("SMTP timeout sending confirmation for order {order}, retrying (attempt {attempt})"));
            }
        }
        c.span(
            "orders",
            Some(&order_span),
            "render receipt",
            Internal,
            at + charge + 1_800_000,
            random.around(1),
            Vec::new(),
            None,
        );
        c.log(
            "orders",
            &order_span,
            at + charge + 2_000_000,
            "info",
            &format!("order {order} placed"),
        );
    }
    c
}

/// Run the shop against tracelink's OTLP/HTTP address until `stop`: a checkout every
/// `interval`, each phase of the incident cycle lasting `phase_length`.
pub async fn run(
    otlp_http: std::net::SocketAddr,
    data_dir: PathBuf,
    interval: Duration,
    phase_length: Duration,
    stop: CancellationToken,
) {
    let logs = logs_dir(&data_dir);
    if let Err(error) = std::fs::create_dir_all(&logs) {
        tracing::error!(path = %logs.display(), %error, "demo: cannot make the log directory");
        return;
    }
    let client = reqwest::Client::new();
    let url = format!("http://{otlp_http}/v1/traces");
    let mut random = Random(now_nanos());
    let started = std::time::Instant::now();
    let mut ticks = tokio::time::interval(interval);
    let mut phase = None;
    let mut order = 1000u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now_phase = Phase::at(started.elapsed(), phase_length);
        if phase != Some(now_phase) {
            tracing::info!(phase = now_phase.describe(), "demo: incident phase");
            phase = Some(now_phase);
        }
        order += 1;
        let checkout = checkout(order, now_phase, &mut random);
        match client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(checkout.request().encode_to_vec())
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(status = %response.status(), "demo: tracelink refused a checkout's spans")
            }
            Err(error) => tracing::warn!(%error, "demo: cannot send a checkout's spans"),
        }
        for (service, line) in &checkout.logs {
            let path = logs.join(format!("{service}.log"));
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut file| writeln!(file, "{line}"));
            if let Err(error) = written {
                tracing::warn!(path = %path.display(), %error, "demo: cannot write a log line");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_cycle_and_each_shows_its_incident() {
        let length = Duration::from_secs(10);
        assert_eq!(Phase::at(Duration::from_secs(3), length), Phase::Healthy);
        assert_eq!(
            Phase::at(Duration::from_secs(15), length),
            Phase::CardsDeclined
        );
        assert_eq!(Phase::at(Duration::from_secs(55), length), Phase::Healthy);
        let mut random = Random(7);
        let runs = |phase, random: &mut Random| {
            (0..60)
                .map(|order| checkout(order, phase, random))
                .collect::<Vec<_>>()
        };
        let healthy = runs(Phase::Healthy, &mut random);
        assert!(healthy
            .iter()
            .all(|c| c.spans.iter().all(|(_, span)| span.status.is_none())));
        let declined = runs(Phase::CardsDeclined, &mut random);
        assert!(declined.iter().any(|c| c
            .logs
            .iter()
            .any(|(_, line)| line.contains("card declined"))));
        let slow = runs(Phase::SlowInventory, &mut random);
        let stock = |c: &Checkout| {
            c.spans
                .iter()
                .find(|(_, span)| span.name == "SELECT stock")
                .map(|(_, span)| span.end_time_unix_nano - span.start_time_unix_nano)
                .unwrap()
        };
        assert!(
            slow.iter().all(|c| stock(c) > 100_000_000)
                && healthy.iter().all(|c| stock(c) < 10_000_000)
        );
        let flaky = runs(Phase::FlakyNotifier, &mut random);
        assert!(flaky.iter().any(|c| c
            .spans
            .iter()
            .filter(|(_, span)| span.name == "SMTP send")
            .count()
            == 3));
        let n_plus_one = runs(Phase::PricingNPlusOne, &mut random);
        assert!(n_plus_one.iter().all(|c| c
            .spans
            .iter()
            .filter(|(service, span)| *service == "orders" && span.name == "GET /price")
            .count()
            >= 3));
        // Every span of a checkout has a distinct id and its parent is in the checkout.
        for c in healthy.iter().chain(&n_plus_one) {
            let ids: std::collections::HashSet<_> = c
                .spans
                .iter()
                .map(|(_, span)| span.span_id.clone())
                .collect();
            assert_eq!(ids.len(), c.spans.len());
            assert!(c
                .spans
                .iter()
                .all(|(_, span)| span.parent_span_id.is_empty()
                    || ids.contains(&span.parent_span_id)));
        }
    }
}
