//! Token authentication: separate tokens for sending data (OTLP, Zipkin) and for reading
//! it (every query route, `/metrics`), as `Authorization: Bearer <token>` or as Basic
//! auth's password (Grafana's data sources send either), and as gRPC `authorization`
//! metadata. Each presented token is compared in constant time with every configured one;
//! a refusal never repeats the token (the Collector's bearer-token extension echoed it).
//! A scope without tokens is open: the configuration then keeps the service on loopback
//! (see [`crate::config`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Query,
}

/// The configured tokens of both scopes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    ingest: Arc<Vec<Vec<u8>>>,
    query: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: a token never reaches a log line.
        f.debug_struct("Tokens")
            .field("ingest", &self.ingest.len())
            .field("query", &self.query.len())
            .finish()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is no configured token: 401.
    Unauthenticated,
    /// A token of the other scope: 403.
    WrongScope(Scope),
}

impl Denied {
    pub fn message(self) -> String {
        match self {
            Denied::Unauthenticated => {
                "a valid token is required (Authorization: Bearer <token>, or Basic auth with the token as password)".into()
            }
            Denied::WrongScope(scope) => {
                format!("this token is not allowed to {}", match scope {
                    Scope::Ingest => "send data",
                    Scope::Query => "query",
                })
            }
        }
    }
}

impl Tokens {
    pub fn new(ingest: Vec<String>, query: Vec<String>) -> Tokens {
        let bytes = |tokens: Vec<String>| {
            Arc::new(
                tokens
                    .into_iter()
                    .map(String::into_bytes)
                    .collect::<Vec<_>>(),
            )
        };
        Tokens {
            ingest: bytes(ingest),
            query: bytes(query),
        }
    }

    fn of(&self, scope: Scope) -> &[Vec<u8>] {
        match scope {
            Scope::Ingest => &self.ingest,
            Scope::Query => &self.query,
        }
    }

    /// Whether `scope` needs a token at all.
    /// The first token of a scope, which this node presents to its cluster peers.
    pub fn first(&self, scope: Scope) -> Option<String> {
        self.of(scope)
            .first()
            .map(|token| String::from_utf8_lossy(token).into_owned())
    }

    pub fn required(&self, scope: Scope) -> bool {
        !self.of(scope).is_empty()
    }

    /// Check the `Authorization` value a request carries for `scope`.
    pub fn check(&self, scope: Scope, authorization: Option<&[u8]>) -> Result<(), Denied> {
        if !self.required(scope) {
            return Ok(());
        }
        let Some(token) = authorization.and_then(presented) else {
            return Err(Denied::Unauthenticated);
        };
        if matches_any(self.of(scope), &token) {
            return Ok(());
        }
        let other = match scope {
            Scope::Ingest => Scope::Query,
            Scope::Query => Scope::Ingest,
        };
        if matches_any(self.of(other), &token) {
            return Err(Denied::WrongScope(scope));
        }
        Err(Denied::Unauthenticated)
    }
}

/// The token of `Bearer <token>`, or the password of `Basic base64(user:password)`.
fn presented(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|byte| *byte == b':')?;
        let password = decoded[colon + 1..].to_vec();
        return (!password.is_empty()).then_some(password);
    }
    None
}

/// Compared with every token, each in constant time (only lengths may differ in time).
fn matches_any(tokens: &[Vec<u8>], presented: &[u8]) -> bool {
    tokens.iter().fold(false, |found, token| {
        found | bool::from(token.as_slice().ct_eq(presented))
    })
}

/// Which scope an HTTP request needs: `None` for the health checks load balancers and
/// Grafana's "test" call make.
pub fn scope_of(method: &Method, path: &str) -> Option<Scope> {
    match path {
        "/ready" | "/api/echo" => None,
        "/v1/traces" | "/v1/logs" | "/api/v2/spans" | "/zipkin/api/v2/spans"
            if method == Method::POST =>
        {
            Some(Scope::Ingest)
        }
        _ => Some(Scope::Query),
    }
}

/// The HTTP guard: 401 with `WWW-Authenticate` (both schemes) or 403, before anything
/// of the request is read.
pub async fn http_guard(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    let Some(scope) = scope_of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match tokens.check(scope, authorization) {
        Ok(()) => next.run(request).await,
        Err(denied @ Denied::Unauthenticated) => {
            let mut response = (StatusCode::UNAUTHORIZED, denied.message()).into_response();
            let headers = response.headers_mut();
            for challenge in [
                "Bearer realm=\"tracelink\"",
                "Basic realm=\"tracelink\", charset=\"UTF-8\"",
            ] {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            response
        }
        Err(denied) => (StatusCode::FORBIDDEN, denied.message()).into_response(),
    }
}

/// The gRPC guard (ingest): `UNAUTHENTICATED` or `PERMISSION_DENIED` before the message
/// is decoded.
pub fn grpc_guard(
    tokens: Tokens,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        match tokens.check(Scope::Ingest, authorization) {
            Ok(()) => Ok(request),
            Err(denied @ Denied::Unauthenticated) => {
                Err(tonic::Status::unauthenticated(denied.message()))
            }
            Err(denied) => Err(tonic::Status::permission_denied(denied.message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .into_bytes()
    }

    #[test]
    fn bearer_and_basic_carry_the_token_to_its_scope() {
        let tokens = Tokens::new(vec!["in-1".into(), "in-2".into()], vec!["q".into()]);
        assert_eq!(tokens.check(Scope::Ingest, Some(b"Bearer in-2")), Ok(()));
        assert_eq!(tokens.check(Scope::Ingest, Some(b"bearer  in-1 ")), Ok(()));
        assert_eq!(
            tokens.check(Scope::Query, Some(&basic("grafana", "q"))),
            Ok(())
        );
        assert_eq!(
            tokens.check(Scope::Query, Some(b"Bearer in-1")),
            Err(Denied::WrongScope(Scope::Query))
        );
        for bad in [
            None,
            Some(&b"Bearer"[..]),
            Some(b"Bearer nope"),
            Some(b"Token q"),
            Some(b"Basic !!!"),
        ] {
            assert_eq!(
                tokens.check(Scope::Query, bad),
                Err(Denied::Unauthenticated),
                "{bad:?}"
            );
        }
        assert_eq!(
            tokens.check(Scope::Query, Some(&basic("q", ""))),
            Err(Denied::Unauthenticated)
        );
        // A scope without tokens is open.
        let open = Tokens::new(vec!["in".into()], Vec::new());
        assert_eq!(open.check(Scope::Query, None), Ok(()));
        assert!(!format!("{tokens:?}").contains("in-1"));
    }

    #[test]
    fn ingest_paths_need_ingest_tokens_and_health_checks_none() {
        assert_eq!(scope_of(&Method::POST, "/v1/traces"), Some(Scope::Ingest));
        assert_eq!(
            scope_of(&Method::POST, "/api/v2/spans"),
            Some(Scope::Ingest)
        );
        assert_eq!(scope_of(&Method::GET, "/api/v2/spans"), Some(Scope::Query));
        assert_eq!(scope_of(&Method::GET, "/metrics"), Some(Scope::Query));
        assert_eq!(scope_of(&Method::GET, "/ready"), None);
        assert_eq!(scope_of(&Method::GET, "/api/echo"), None);
    }
}
