#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracelink::fuzz::traceql(data));
