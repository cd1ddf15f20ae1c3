//! `tracelink demo` as a user runs it (the binary, its own ports, its own data dir), for a
//! bounded time with short incident phases: every API then holds the shop's data (traces
//! by search, the tailed JSON logs of its services, span metrics), and the diagnosis of
//! the phase where payments declined cards names payments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn get(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shop_fills_every_api_and_its_incident_is_diagnosed() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let mut process = common::spawn_subcommand(
        dir.path(),
        &data,
        &[("TRACELINK_STORAGE_TRACE_IDLE_MS", "300")],
        &[
            "demo",
            "--duration-seconds",
            "12",
            "--phase-seconds",
            "3",
            "--interval-ms",
            "50",
        ],
    );
    let base = format!("http://{}", process.http);
    // When each incident phase began, as the demo says it.
    let mut phases: Vec<(String, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while phases.len() < 3 {
        assert!(Instant::now() < deadline, "phases seen: {phases:?}");
        if let Ok(line) = process.log.recv_timeout(Duration::from_secs(1)) {
            if line.contains("demo: incident phase") {
                phases.push((line, now_seconds()));
            }
        }
    }
    assert!(phases[0].0.contains("all well"), "{phases:?}");
    assert!(phases[1].0.contains("declines"), "{phases:?}");
    let (healthy, declined, after) = (phases[0].1, phases[1].1, phases[2].1);

    // Traces, found by search.
    let found = get(&format!(
        "{base}/api/search?tags=service.name%3Dpayments&limit=5"
    ))
    .await;
    assert_eq!(found["traces"].as_array().unwrap().len(), 5, "{found}");
    // The services' JSON log lines, tailed from the demo's files, with their trace ids.
    let deadline = Instant::now() + Duration::from_secs(20);
    let declined_logs = loop {
        let logs = get(&format!(
            "{base}/api/logs?service=payments&level=error&limit=5"
        ))
        .await;
        if !logs["logs"].as_array().unwrap().is_empty() || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let line = &declined_logs["logs"][0];
    assert!(
        line["message"].as_str().unwrap().contains("card declined"),
        "{declined_logs}"
    );
    let trace_id = line["trace_id"].as_str().unwrap();
    let joined = get(&format!("{base}/api/join/trace/{trace_id}")).await;
    assert_eq!(
        joined["trace"]["analysis"]["root_cause"]["service"], "payments",
        "{joined}"
    );
    // Span metrics for every service of the shop.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for service in [
        "gateway",
        "orders",
        "inventory",
        "pricing",
        "payments",
        "notifier",
    ] {
        assert!(
            metrics.contains(&format!("service=\"{service}\"")),
            "{service}"
        );
    }
    // The page.
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Find traces"));

    // The declined-cards phase against the healthy one before it (each trimmed: a
    // checkout starts a few hundred milliseconds before it is sent).
    let margin = 0.6;
    let diagnosis = get(&format!(
        "{base}/api/diagnose?start={}&end={}&baseline_start={}&baseline_end={}",
        declined + margin,
        after - margin,
        healthy + margin,
        declined - margin
    ))
    .await;
    let top = &diagnosis["suspects"][0];
    assert_eq!(top["service"], "payments", "{diagnosis:#}");
    // Its failed calls or its error logs, whichever stand out more: a third of the cards
    // are declined at random, and a window with few checkouts (a loaded machine) may
    // hold few failed calls beside the "card declined" logs they all write.
    assert!(
        top["kind"] == "errors" || top["kind"] == "logs",
        "{diagnosis:#}"
    );
    assert!(
        top["evidence"]["error_logs_window"].as_u64() > Some(0),
        "{diagnosis:#}"
    );
    assert_eq!(top["origin"], true, "{diagnosis:#}");

    // It stops by itself when its time is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
}
