//! The one response body type every listener answers with.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// Any error a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body: forwarded backend bytes, a JSON answer, or a stream
/// (the authority's feed). Boxed once so every listener shares a type.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
