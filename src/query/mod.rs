//! Finding traces: TraceQL parsed to a tree and evaluated over whole traces.

pub mod traceql;
