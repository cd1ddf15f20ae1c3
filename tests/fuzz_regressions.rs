//! Every input under `fuzz/corpus/<target>/` (the seeds) and `fuzz/regressions/<target>/`
//! (what a fuzzer once crashed or hung on, kept for good) through its fuzz target's body:
//! no panic, and the OTLP reader still agrees with prost. `fuzz/run` is what finds them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn replay(kind: &str) -> usize {
    let mut replayed = 0;
    for (target, body) in tracelink::fuzz::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(kind)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_seed_passes_its_target() {
    // Each target has seeds: a fuzzer starts from them and this test runs them all.
    for (target, _) in tracelink::fuzz::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let seeds = std::fs::read_dir(&dir).map_or(0, Iterator::count);
        assert!(seeds > 0, "no seed for {target} in {}", dir.display());
    }
    assert!(replay("corpus") >= tracelink::fuzz::TARGETS.len());
}

#[test]
fn every_input_a_fuzzer_found_stays_fixed() {
    replay("regressions");
}
