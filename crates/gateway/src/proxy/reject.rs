//! Every way a request can be answered by the gateway itself instead of the
//! backend: one enum, which knows its status, its RFC 6750 challenge, its
//! log/metric label and its JSON body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::ProxyBody;
use gatehouse_core::auth::AuthError;

#[derive(Debug)]
pub enum Reject {
    NoRoute,
    /// `Host` names a site the connection's certificate (by SNI) does not
    /// serve: 421, so the client retries on a connection of its own.
    Misdirected,
    BadRequest(&'static str),
    /// No bearer token where one is required (RFC 6750 §3.1: no error code).
    MissingToken,
    InvalidToken(AuthError),
    /// Genuine token that was revoked; carries the description by kind.
    Revoked(&'static str),
    /// The revocation set cannot be trusted (never loaded, or stale under
    /// `fail_closed`): no authenticated request is let through.
    RevocationUnavailable,
    /// Valid token without the scopes or roles the route requires; carries
    /// the route's required scopes for the `scope` attribute.
    InsufficientScope(String),
    BodyTooLarge,
    /// The client's request body stalled (`limits.body_read_timeout`), or
    /// was still arriving when the route's `timeout` ran out: 408 and the
    /// connection is closed (RFC 9110 §15.5.9).
    RequestTimeout,
    /// An auth-server request from an address that is not a configured
    /// ingress (`trusted_proxies`): it may not describe requests.
    UntrustedIngress,
    BadGateway,
    GatewayTimeout,
    /// A browser login step (redirect to the provider, callback, logout):
    /// answered by [`crate::login::run`], not by [`Reject::into_response`].
    Login(Box<crate::login::StepRequest>),
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::MissingToken | Reject::Login(_) => StatusCode::UNAUTHORIZED,
            Reject::InvalidToken(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Reject::InvalidToken(_) | Reject::Revoked(_) => StatusCode::UNAUTHORIZED,
            Reject::RevocationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reject::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::UntrustedIngress => StatusCode::FORBIDDEN,
            Reject::BadGateway => StatusCode::BAD_GATEWAY,
            Reject::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Label for logs and metrics: one word per kind of outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::Misdirected => "misdirected",
            Reject::BadRequest(_) => "bad_request",
            Reject::MissingToken => "missing_token",
            Reject::InvalidToken(AuthError::Expired) => "expired",
            Reject::InvalidToken(
                AuthError::KeysUnavailable | AuthError::UnknownKeyWhileKeysDown,
            ) => "keys_unavailable",
            Reject::InvalidToken(_) => "invalid_token",
            Reject::Revoked(_) => "revoked",
            Reject::RevocationUnavailable => "revocation_unavailable",
            Reject::InsufficientScope(_) => "insufficient_scope",
            Reject::BodyTooLarge => "body_too_large",
            Reject::RequestTimeout => "request_timeout",
            Reject::UntrustedIngress => "untrusted_ingress",
            Reject::BadGateway => "bad_gateway",
            Reject::GatewayTimeout => "gateway_timeout",
            Reject::Login(_) => "login_redirect",
        }
    }

    fn error_and_description(&self) -> (&'static str, &'static str) {
        match self {
            Reject::NoRoute => ("not_found", "no route for this host and path"),
            Reject::Misdirected => (
                "misdirected_request",
                "this connection's certificate does not serve that host",
            ),
            Reject::BadRequest(d) => ("invalid_request", d),
            Reject::MissingToken | Reject::Login(_) => {
                ("invalid_request", "a bearer token is required")
            }
            Reject::InvalidToken(AuthError::KeysUnavailable) => (
                "temporarily_unavailable",
                AuthError::KeysUnavailable.description(),
            ),
            Reject::InvalidToken(e) => ("invalid_token", e.description()),
            Reject::Revoked(d) => ("invalid_token", d),
            Reject::RevocationUnavailable => (
                "temporarily_unavailable",
                "revocation state is not available",
            ),
            Reject::InsufficientScope(_) => (
                "insufficient_scope",
                "the token lacks a required scope or role",
            ),
            Reject::BodyTooLarge => ("request_too_large", "request body is too large"),
            Reject::RequestTimeout => {
                ("request_timeout", "the request body did not arrive in time")
            }
            Reject::UntrustedIngress => (
                "forbidden",
                "only a configured ingress may ask this auth server",
            ),
            Reject::BadGateway => ("bad_gateway", "the backend could not be reached"),
            Reject::GatewayTimeout => ("gateway_timeout", "the backend did not answer in time"),
        }
    }

    pub fn description(&self) -> &'static str {
        self.error_and_description().1
    }

    pub fn into_response(self, realm: &str) -> Response<ProxyBody> {
        let (error, description) = self.error_and_description();
        let challenge = match &self {
            // RFC 6750 §3.1: a request without credentials gets a bare
            // challenge, no error code.
            Reject::MissingToken | Reject::Login(_) => Some(format!("Bearer realm=\"{realm}\"")),
            Reject::InvalidToken(_) | Reject::Revoked(_) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
            )),
            Reject::InsufficientScope(scope) => {
                let mut c = format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\""
                );
                if !scope.is_empty() {
                    c.push_str(&format!(", scope=\"{scope}\""));
                }
                Some(c)
            }
            _ => None,
        };
        let body =
            serde_json::json!({ "error": error, "error_description": description }).to_string();
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if matches!(
            self,
            Reject::InvalidToken(AuthError::KeysUnavailable) | Reject::RevocationUnavailable
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if matches!(self, Reject::RequestTimeout) {
            // The rest of the body may still come: the connection cannot
            // carry another request (RFC 9110 §15.5.9). Dropped on HTTP/2,
            // where the stream alone ends.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
