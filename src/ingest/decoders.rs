//! The threads ingest bodies are decompressed and decoded on: tokio blocking threads of
//! their own runtime, as many as there are cores, at a lower priority (nice
//! [`DECODE_NICE`]) than the threads that answer queries. Under full-rate ingest the two cores are busy with decoding; a query
//! by trace id then waits for a core behind it, which made its p99 several times its
//! median. At nice 2 a decoding thread weighs ~60% of a query's, so the scheduler runs a
//! query first while ingest keeps most of the CPU. A thread cannot take back a priority
//! it gave up without privileges, so the decoders are threads that only decode (the
//! indexer, at nice 5, stays below both).

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// The nice value of the decoding threads.
const DECODE_NICE: i32 = 2;

static DECODERS: OnceLock<Option<Runtime>> = OnceLock::new();

fn decoders() -> Option<&'static Runtime> {
    DECODERS
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                // As many as there are cores: more only take turns on them, and each
                // keeps its own allocator heap, which the spans it made are returned to
                // from the WAL thread.
                .max_blocking_threads(decoding_threads())
                .thread_name("tracelink-decode")
                .on_thread_start(|| crate::lower_thread_priority(DECODE_NICE, "decoding thread"))
                .build()
                .inspect_err(|error| {
                    tracing::warn!(%error, "no decoding threads; ingest decodes on the shared blocking threads")
                })
                .ok()
        })
        .as_ref()
}

fn decoding_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Run `work` (a body's decompression and decoding) on a decoding thread.
pub async fn decode<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match decoders() {
        Some(runtime) => runtime.spawn_blocking(work).await,
        None => tokio::task::spawn_blocking(work).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_decoded_on_threads_below_the_queries_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let on_decoder = decode(nice).await.unwrap().unwrap();
        let here = nice().unwrap();
        // Unless the tests themselves run below nice 2 (a thread cannot raise its own
        // priority without privileges), the decoder is at exactly 2.
        assert_eq!(on_decoder, DECODE_NICE.max(here));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_wait_for_one_of_as_many_decoding_threads_as_cores() {
        let jobs: Vec<_> = (0..24)
            .map(|_| {
                tokio::spawn(decode(|| {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    std::thread::current().id()
                }))
            })
            .collect();
        let mut threads = std::collections::HashSet::new();
        for job in jobs {
            threads.insert(job.await.unwrap().unwrap());
        }
        assert!(
            threads.len() <= decoding_threads(),
            "{} threads for {} cores",
            threads.len(),
            decoding_threads()
        );
    }
}
