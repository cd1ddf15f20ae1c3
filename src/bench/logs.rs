//! `tracelink bench logs`: tailing throughput, idle cost and log queries by trace id.
//!
//! Writes `lines` JSON lines (~300 bytes, a trace id on each, 10 lines per trace) into
//! `files` files after `idle_files` one-line files. First, with only the idle files there
//! and read, the process's CPU use over `idle_seconds`; then lines tailed, parsed and
//! indexed per second (wall) and per CPU-second of the process; then
//! `GET /api/logs?trace_id=` latency for random traces.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{bench_trace_id, cpu_seconds, latency_summary, resident_mib, scratch_dir, BenchServer};
use crate::config::RawLogSource;

pub struct LogsBenchOptions {
    pub lines: u64,
    pub files: usize,
    pub idle_files: usize,
    pub idle_seconds: u64,
    pub query_seconds: u64,
    pub data_dir: Option<PathBuf>,
    /// Text lines ([`bench_text_line`]) instead of JSON.
    pub text: bool,
}

const LINES_PER_TRACE: u64 = 10;

/// One ~300-byte JSON line of the `number`-th record.
pub fn bench_line(run_tag: u64, number: u64) -> String {
    let trace = crate::model::to_hex(&bench_trace_id(run_tag, number / LINES_PER_TRACE));
    let level = if number.is_multiple_of(50) {
        "error"
    } else {
        "info"
    };
    format!(
        concat!(
            "{{\"timestamp\":\"2026-11-27T10:{:02}:{:02}.{:06}Z\",\"level\":\"{}\",\"service\":\"checkout\",",
            "\"msg\":\"order placed; items reserved and payment authorised\",\"trace_id\":\"{}\",",
            "\"span_id\":\"{:016x}\",\"http.method\":\"POST\",\"http.route\":\"/api/orders\",",
            "\"http.status_code\":201,\"duration_ms\":{}.5,\"user_id\":\"u-{:06}\"}}\n"
        ),
        (number / 60_000_000) % 60,
        (number / 1_000_000) % 60,
        number % 1_000_000,
        level,
        trace,
        number + 1,
        number % 97,
        number % 1_000_000,
    )
}

/// One ~300-byte Spring-style text line of the `number`-th record: `key=value` fragments
/// in the message, the trace id after `TraceID:`.
pub fn bench_text_line(run_tag: u64, number: u64) -> String {
    let trace = crate::model::to_hex(&bench_trace_id(run_tag, number / LINES_PER_TRACE));
    let level = if number.is_multiple_of(50) {
        "ERROR"
    } else {
        "INFO "
    };
    format!(
        concat!(
            "2026-11-27 10:{:02}:{:02}.{:03} {} [http-nio-8080-exec-{}] c.e.checkout.OrderService#469 ",
            "TraceID: {} SpanID: {:016x} [placeOrder][order placed][Response(status=1, ",
            "msg=items reserved, data={})] duration_ms={} user_id=u-{:06} route=/api/orders\n"
        ),
        (number / 60_000) % 60,
        (number / 1_000) % 60,
        number % 1_000,
        level,
        number % 16,
        trace,
        number + 1,
        number % 1_000_000,
        number % 97,
        number % 1_000_000,
    )
}

pub async fn run(options: LogsBenchOptions) -> anyhow::Result<()> {
    let scratch = scratch_dir(options.data_dir.clone())?;
    let input = scratch.join("input");
    std::fs::create_dir_all(&input)?;
    let run_tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(1);
    for index in 0..options.idle_files {
        std::fs::write(
            input.join(format!("idle-{index}.log")),
            "{\"level\":\"info\",\"msg\":\"idle file\",\"service\":\"idle\"}\n",
        )?;
    }
    let glob = input.join("*.log").display().to_string();
    let server = BenchServer::start(&scratch.join("data"), |raw| {
        raw.logs.poll_interval_ms = 1000;
        raw.logs.sources = vec![RawLogSource {
            paths: vec![glob],
            ..RawLogSource::default()
        }];
    })
    .await?;
    // Idle first: every file read, nothing growing, no merges left from a big ingest.
    while server.stats.logs_indexed.load(Ordering::Relaxed) < options.idle_files as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(options.idle_seconds)).await;
    let idle_cpu = cpu_seconds() - idle_before;
    println!(
        "idle: {:.2}% of one core over {} s with {} files watched and none growing (poll every 1 s)",
        100.0 * idle_cpu / options.idle_seconds.max(1) as f64,
        options.idle_seconds,
        options.idle_files
    );

    let files = options.files.max(1);
    let per_file = options.lines.div_ceil(files as u64);
    let mut bytes = 0u64;
    for file_index in 0..files as u64 {
        let mut writer = BufWriter::new(std::fs::File::create(
            input.join(format!("busy-{file_index}.log")),
        )?);
        let first = file_index * per_file;
        for number in first..(first + per_file).min(options.lines) {
            let line = if options.text {
                bench_text_line(run_tag, number)
            } else {
                bench_line(run_tag, number)
            };
            bytes += line.len() as u64;
            writer.write_all(line.as_bytes())?;
        }
        writer.flush()?;
    }
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let total = options.lines + options.idle_files as u64;
    println!(
        "logs: {} lines ({:.0} bytes each) in {} files, plus {} idle one-line files",
        options.lines,
        bytes as f64 / options.lines.max(1) as f64,
        files,
        options.idle_files
    );

    while server.stats.logs_indexed.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "tail: {:.0} lines/s tailed, parsed and indexed (wall, including up to one 1 s poll before the files are found), {:.0} lines per CPU-second",
        options.lines as f64 / elapsed,
        options.lines as f64 / cpu
    );
    // Wait for the commit that makes them searchable.
    let client = reqwest::Client::new();
    let http = server.http;
    let probe = crate::model::to_hex(&bench_trace_id(
        run_tag,
        (options.lines - 1) / LINES_PER_TRACE,
    ));
    loop {
        let found: serde_json::Value = client
            .get(format!("http://{http}/api/logs?trace_id={probe}"))
            .send()
            .await?
            .json()
            .await?;
        if found["logs"]
            .as_array()
            .is_some_and(|logs| !logs.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let traces = options.lines / LINES_PER_TRACE;
    let mut latencies = Vec::new();
    let mut state = run_tag | 1;
    let deadline = Instant::now() + Duration::from_secs(options.query_seconds);
    while Instant::now() < deadline && traces > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let trace = crate::model::to_hex(&bench_trace_id(run_tag, state % traces));
        let asked = Instant::now();
        let found: serde_json::Value = client
            .get(format!("http://{http}/api/logs?trace_id={trace}"))
            .send()
            .await?
            .json()
            .await?;
        latencies.push(asked.elapsed());
        let count = found["logs"].as_array().map_or(0, Vec::len);
        if count as u64 != LINES_PER_TRACE {
            anyhow::bail!("trace {trace} came back with {count} records");
        }
    }
    println!(
        "query: {} /api/logs?trace_id= requests with {} records stored: {}",
        latencies.len(),
        total,
        latency_summary(&mut latencies)
    );

    println!("memory: {:.0} MiB resident", resident_mib());
    server.stop().await?;
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::logline::{parse_line, FieldNames, Format};

    #[test]
    fn bench_lines_are_about_300_bytes_and_parse_with_their_trace_id() {
        let line = bench_line(7, 123);
        assert!((280..=330).contains(&line.len()), "{} bytes", line.len());
        let parsed = parse_line(line.trim_end(), Format::Auto, &FieldNames::default());
        assert_eq!(parsed.trace_id.unwrap().0, bench_trace_id(7, 12));
        assert_eq!(parsed.service.as_deref(), Some("checkout"));
        let line = bench_text_line(7, 123);
        assert!((250..=330).contains(&line.len()), "{} bytes", line.len());
        let parsed = parse_line(line.trim_end(), Format::Auto, &FieldNames::default());
        assert_eq!(parsed.trace_id.unwrap().0, bench_trace_id(7, 12));
        assert_eq!(parsed.level, Some(crate::model::Level::Info));
    }
}
