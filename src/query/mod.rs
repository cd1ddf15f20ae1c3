//! Finding traces: TraceQL parsed to a tree and evaluated over whole traces, and the
//! search that feeds it candidates from the head and the traces index, newest first.

pub mod metrics;
pub mod scan;
pub mod search;
pub mod traceql;
