//! Wire decoding at the edge: request bodies (size limits, gzip) into model records.
//!
//! Called by the HTTP and gRPC handlers on their own tasks; pure functions of bytes to
//! `Vec<Span>`, never touching the WAL, the index or the metrics.

pub mod decoders;
pub mod logline;
pub mod otlp;
pub mod otlp_logs;
pub mod otlp_wire;
pub mod tail;
pub mod zipkin;

use std::io::Read;

use crate::model::{RejectedSpan, Span};

/// A request body that cannot be taken, with the protocol status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// Permanently bad data: 400 / `INVALID_ARGUMENT`.
    #[error("{0}")]
    BadRequest(String),
    /// Over the size limit, before or after decompression: 413 / `RESOURCE_EXHAUSTED`.
    #[error("request body is larger than the limit of {limit} bytes{}", if *.decompressed { " once decompressed" } else { "" })]
    TooLarge { limit: usize, decompressed: bool },
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// Spans decoded from one request: the valid ones, and the ones refused one by one.
#[derive(Debug, Default)]
pub struct DecodedSpans {
    pub spans: Vec<Span>,
    pub rejected: Vec<RejectedSpan>,
}

impl DecodedSpans {
    /// The OTLP partial-success message: the first few reasons and how many there were.
    pub fn rejection_message(&self) -> String {
        rejection_summary(
            self.rejected
                .iter()
                .map(|rejected| rejected.reason.as_str()),
        )
    }
}

/// The first three reasons, then how many more there were.
pub fn rejection_summary<'a>(reasons: impl ExactSizeIterator<Item = &'a str>) -> String {
    let count = reasons.len();
    let mut message = reasons.take(3).collect::<Vec<_>>().join("; ");
    if count > 3 {
        message.push_str(&format!("; and {} more", count - 3));
    }
    message
}

/// Undo `Content-Encoding`, enforcing `limit` on the decompressed size too, so that a
/// small gzip bomb cannot make the service allocate without bound.
pub fn decode_body(
    content_encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Vec<u8>, IngestError> {
    if body.len() > limit {
        return Err(IngestError::TooLarge {
            limit,
            decompressed: false,
        });
    }
    let encoding = content_encoding
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(body.to_vec()),
        "gzip" | "x-gzip" => read_limited(flate2::read::GzDecoder::new(body), limit, "gzip"),
        "deflate" => read_limited(flate2::read::ZlibDecoder::new(body), limit, "deflate"),
        other => Err(IngestError::UnsupportedMediaType(format!(
            "unsupported content-encoding {other:?}; use gzip, deflate or none"
        ))),
    }
}

fn read_limited(reader: impl Read, limit: usize, name: &str) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|error| IngestError::BadRequest(format!("body is not valid {name}: {error}")))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge {
            limit,
            decompressed: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_is_undone_within_the_limit() {
        let body = gzip(b"hello");
        assert_eq!(decode_body(Some("gzip"), &body, 100).unwrap(), b"hello");
        assert_eq!(decode_body(None, b"plain", 100).unwrap(), b"plain");
    }

    #[test]
    fn gzip_bomb_is_refused_once_decompressed() {
        let bomb = gzip(&vec![0u8; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            decode_body(Some("gzip"), &bomb, 1024 * 1024),
            Err(IngestError::TooLarge {
                limit: 1024 * 1024,
                decompressed: true
            })
        );
    }

    #[test]
    fn broken_gzip_and_unknown_encodings_are_refused() {
        assert!(matches!(
            decode_body(Some("gzip"), b"not gzip at all", 100),
            Err(IngestError::BadRequest(_))
        ));
        assert!(matches!(
            decode_body(Some("br"), b"x", 100),
            Err(IngestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            decode_body(None, &[0; 101], 100),
            Err(IngestError::TooLarge { .. })
        ));
    }
}
