//! Queries on any node: ask every other live node for what it holds, in parallel, each
//! within `query_timeout`, and say which did not answer.
//!
//! Peers answer on two internal routes of their query API (query scope):
//! `GET /internal/cluster/v1/traces/{id}` (the stored span payloads of a trace, each
//! prefixed by its length, from the head and every partition) and
//! `POST /internal/cluster/v1/logs` (a [`LogQuery`] as JSON, the records as JSON) and
//! `GET /internal/cluster/v1/logs/{id}` (the record as JSON, or `null`).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use crate::lock;
use crate::model::{LogRecord, TraceId};
use crate::store::logs::LogQuery;

pub const TRACE_ROUTE: &str = "/internal/cluster/v1/traces/{trace_id}";
pub const LOGS_ROUTE: &str = "/internal/cluster/v1/logs";
pub const LOG_ROUTE: &str = "/internal/cluster/v1/logs/{id}";

pub const DIAGNOSE_ROUTE: &str = "/internal/cluster/v1/diagnose/traces";
pub const PAGE_SEARCH_ROUTE: &str = "/internal/cluster/v1/page/search";
pub const METRICS_ROUTE: &str = "/internal/cluster/v1/metrics";

/// Set on a query a node passes on to its peers: answer from what you hold alone.
pub const SCOPE_HEADER: &str = "tracelink-scope";

/// The other nodes, and how to ask them.
pub struct Peers {
    me: String,
    /// (node id, query URL) of the live nodes but this one.
    others: Mutex<Vec<(String, String)>>,
    client: reqwest::Client,
    timeout: Duration,
    /// Presented to peers when queries need a token.
    token: Option<String>,
    runtime: tokio::runtime::Handle,
}

/// What the peers answered, and who did not.
pub struct Gathered<T> {
    pub answers: Vec<T>,
    /// Node ids that failed or did not answer in time.
    pub missing: Vec<String>,
}

impl Peers {
    pub fn new(
        me: String,
        timeout: Duration,
        token: Option<String>,
        runtime: tokio::runtime::Handle,
    ) -> Peers {
        Peers {
            me,
            others: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            timeout,
            token,
            runtime,
        }
    }

    pub fn set_nodes(&self, live: &[(String, String)]) {
        *lock(&self.others) = live
            .iter()
            .filter(|(id, _)| *id != self.me)
            .cloned()
            .collect();
    }

    /// The other live nodes (id, URL).
    pub fn others(&self) -> Vec<(String, String)> {
        lock(&self.others).clone()
    }

    /// Every other node's stored span payloads of a trace. Blocking.
    pub fn trace_payloads(&self, trace_id: &TraceId) -> Gathered<Bytes> {
        let path = format!("/internal/cluster/v1/traces/{}", trace_id.to_hex());
        let gathered = self.ask(
            move |client, base| client.get(format!("{base}{path}")),
            |body| Ok(crate::store::traces::split_payload(&body)),
        );
        Gathered {
            answers: gathered.answers.into_iter().flatten().collect(),
            missing: gathered.missing,
        }
    }

    /// Every other node's log records matching `query`. Blocking.
    pub fn logs(&self, query: &LogQuery) -> Gathered<LogRecord> {
        self.post_for_list(LOGS_ROUTE, query)
    }

    /// `POST` `asked` as JSON to `route` on every other node; each answers a JSON list.
    /// Blocking.
    fn post_for_list<T: serde::de::DeserializeOwned + Send>(
        &self,
        route: &str,
        asked: &impl serde::Serialize,
    ) -> Gathered<T> {
        let gathered = self.post::<Vec<T>>(route, asked);
        Gathered {
            answers: gathered.answers.into_iter().flatten().collect(),
            missing: gathered.missing,
        }
    }

    /// `POST` `asked` as JSON to `route` on every other node; each answers JSON.
    /// Blocking.
    pub fn post<T: serde::de::DeserializeOwned + Send>(
        &self,
        route: &str,
        asked: &impl serde::Serialize,
    ) -> Gathered<T> {
        let Ok(body) = serde_json::to_vec(asked) else {
            return Gathered {
                answers: Vec::new(),
                missing: Vec::new(),
            };
        };
        let body = Bytes::from(body);
        self.ask(
            move |client, base| {
                client
                    .post(format!("{base}{route}"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            |body| serde_json::from_slice::<T>(&body).map_err(|e| e.to_string()),
        )
    }

    /// The log record with this id, from whichever other node holds it. Blocking.
    pub fn log(&self, id: &str) -> Option<LogRecord> {
        let mut path = String::from("/internal/cluster/v1/logs/");
        path.extend(url_escape(id));
        let gathered = self.ask(
            move |client, base| client.get(format!("{base}{path}")),
            |body| serde_json::from_slice::<Option<LogRecord>>(&body).map_err(|e| e.to_string()),
        );
        gathered.answers.into_iter().flatten().next()
    }

    /// Every other node's traces starting in `[start, end)` (of `service`), each with
    /// its start and stored payloads, for `/api/diagnose`. Blocking.
    pub fn traces_between(
        &self,
        service: Option<&str>,
        start: u64,
        end: u64,
    ) -> Vec<crate::diagnose::FoundPayloads> {
        let body = serde_json::json!({"service": service, "start": start, "end": end}).to_string();
        let gathered = self.ask(
            move |client, base| {
                client
                    .post(format!("{base}{DIAGNOSE_ROUTE}"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            |body| decode_traces(&body).ok_or_else(|| "undecodable traces".to_owned()),
        );
        gathered.answers.into_iter().flatten().collect()
    }

    /// Every other node's rows for the page's search. Blocking.
    pub fn page_rows(&self, asked: &crate::page::PageSearch) -> Vec<crate::page::TraceRow> {
        self.post_for_list(PAGE_SEARCH_ROUTE, asked).answers
    }

    /// Send a request to every other node at once and parse each answer. Runs on a
    /// thread of its own, so it may be called from anywhere (a blocking thread, or an
    /// async one).
    fn ask<T: Send>(
        &self,
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Send + Sync,
        parse: impl Fn(Bytes) -> Result<T, String> + Send + Sync,
    ) -> Gathered<T> {
        if lock(&self.others).is_empty() {
            return Gathered {
                answers: Vec::new(),
                missing: Vec::new(),
            };
        }
        let gathered = self.gather(request, parse);
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.runtime.block_on(gathered))
                .join()
                .unwrap_or_else(|_| Gathered {
                    answers: Vec::new(),
                    missing: Vec::new(),
                })
        })
    }

    /// A `GET` of `path_and_query` on every other node, each answer as JSON.
    pub async fn get_json(&self, path_and_query: &str) -> Gathered<serde_json::Value> {
        self.gather(
            |client, base| {
                client
                    .get(format!("{base}{path_and_query}"))
                    .header(SCOPE_HEADER, "local")
            },
            |body| serde_json::from_slice(&body).map_err(|e| e.to_string()),
        )
        .await
    }

    async fn gather<T>(
        &self,
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
        parse: impl Fn(Bytes) -> Result<T, String>,
    ) -> Gathered<T> {
        let others = self.others();
        let asked = others.iter().map(|(node, base)| {
            let mut builder = request(&self.client, base);
            if let Some(token) = &self.token {
                builder = builder.bearer_auth(token);
            }
            let parse = &parse;
            async move {
                let answer = async {
                    let response = builder.send().await.map_err(|e| e.to_string())?;
                    if !response.status().is_success() {
                        return Err(format!("status {}", response.status()));
                    }
                    let body = response.bytes().await.map_err(|e| e.to_string())?;
                    parse(body)
                };
                match tokio::time::timeout(self.timeout, answer).await {
                    Ok(Ok(parsed)) => Ok(parsed),
                    Ok(Err(problem)) => Err((node.clone(), problem)),
                    Err(_) => Err((node.clone(), "no answer in time".to_owned())),
                }
            }
        });
        let results = futures_util::future::join_all(asked).await;
        let mut gathered = Gathered {
            answers: Vec::new(),
            missing: Vec::new(),
        };
        for result in results {
            match result {
                Ok(answer) => gathered.answers.push(answer),
                Err((node, problem)) => {
                    tracing::warn!(node, problem, "cluster: a peer did not answer a query");
                    gathered.missing.push(node);
                }
            }
        }
        gathered
    }
}

/// A path segment, percent-encoded but for unreserved characters.
fn url_escape(segment: &str) -> impl Iterator<Item = String> + '_ {
    segment.bytes().map(|byte| {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            char::from(byte).to_string()
        } else {
            format!("%{byte:02X}")
        }
    })
}

/// Traces for a peer: each its start (u64 LE), id (16 bytes), the length of its payloads
/// (u32 LE) and the payloads, each prefixed by its length.
pub fn encode_traces(traces: &[crate::diagnose::FoundPayloads]) -> Vec<u8> {
    let mut out = Vec::new();
    for (start, (trace_id, payloads)) in traces {
        let mut block = Vec::new();
        for payload in payloads {
            crate::store::traces::append_payload(&mut block, payload);
        }
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&trace_id.0);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// What [`encode_traces`] made, or `None` when it is cut short.
pub fn decode_traces(mut bytes: &[u8]) -> Option<Vec<crate::diagnose::FoundPayloads>> {
    let mut traces = Vec::new();
    while !bytes.is_empty() {
        let start = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let trace_id = TraceId(bytes.get(8..24)?.try_into().ok()?);
        let length = u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?) as usize;
        let block = bytes.get(28..28 + length)?;
        traces.push((
            start,
            (trace_id, crate::store::traces::split_payload(block)),
        ));
        bytes = &bytes[28 + length..];
    }
    Some(traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_for_a_peer_decode_as_they_were() {
        let traces = vec![
            (
                7u64,
                (
                    TraceId([1; 16]),
                    vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")],
                ),
            ),
            (3u64, (TraceId([2; 16]), Vec::new())),
        ];
        let encoded = encode_traces(&traces);
        assert_eq!(decode_traces(&encoded), Some(traces));
        assert_eq!(decode_traces(&encoded[..encoded.len() - 1]), None);
        assert_eq!(url_escape("w1-0/x").collect::<String>(), "w1-0%2Fx");
    }
}
