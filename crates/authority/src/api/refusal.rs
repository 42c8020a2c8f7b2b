//! Every refusal the authority answers, in one enum (as the gateway's
//! `Reject`): its status, the RFC 6750 §3.1-style `error` code, the
//! description, and what is logged. Handlers return `Refusal::X.into()`.

use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use super::{json_resp, Resp};

/// Why a call to the authority is refused; each variant is one answer.
#[derive(Debug)]
pub enum Refusal {
    /// 401 `invalid_request` with `WWW-Authenticate: Bearer
    /// realm="gatehouse-authority"` (RFC 6750 §3): no bearer credential.
    NoCredentials,
    /// 403 `forbidden`: a credential this endpoint does not take.
    Forbidden,
    /// 401 `invalid_token`: a logout whose token does not verify.
    InvalidToken(&'static str),
    /// 400 `invalid_request`: a malformed call (bad JSON, missing field,
    /// a refused logout token).
    BadRequest(String),
    /// 404 `not_found`: no such endpoint or revocation.
    NotFound(&'static str),
    /// 405 `invalid_request`.
    MethodNotAllowed,
    /// 413 `invalid_request` (RFC 9110 §15.5.14): a body over the
    /// endpoint's limit, refused before it is read.
    TooLarge,
    /// 408 `request_timeout` (RFC 9110 §15.5.9), with `Connection:
    /// close`: the body stopped arriving for `limits.body_read_timeout`.
    RequestTimeout,
    /// 503 `temporarily_unavailable`: the store could not be written or
    /// read. Logged with the cause; nothing is acknowledged.
    Unavailable(anyhow::Error),
}

impl Refusal {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Refusal::NoCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "a bearer token is required".into(),
            ),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "token not accepted".into(),
            ),
            Refusal::InvalidToken(d) => (StatusCode::UNAUTHORIZED, "invalid_token", (*d).into()),
            Refusal::BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d.clone()),
            Refusal::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", (*d).into()),
            Refusal::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed".into(),
            ),
            Refusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "body too large or unreadable".into(),
            ),
            Refusal::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time".into(),
            ),
            Refusal::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store cannot be written or read".into(),
            ),
        }
    }
}

impl From<Refusal> for Resp {
    fn from(r: Refusal) -> Resp {
        if let Refusal::Unavailable(e) = &r {
            tracing::error!(error = %format!("{e:#}"), "authority store failure");
        }
        let (status, code, description) = r.parts();
        let mut resp = json_resp(
            status,
            &json!({"error": code, "error_description": description}),
        );
        if matches!(r, Refusal::NoCredentials) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gatehouse-authority\""),
            );
        }
        if matches!(r, Refusal::RequestTimeout) {
            // The rest of the body may still come: this connection cannot
            // carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
