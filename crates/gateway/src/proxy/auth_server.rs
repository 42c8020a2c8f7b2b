//! gatehouse as the auth server of an existing ingress (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`, Envoy
//! `ext_authz` HTTP service): the ingress describes the original request in
//! headers, the same [`Proxy::decide`] judges it, and the answer is the
//! decision — 200 with the identity headers for the ingress to copy
//! upstream, or the proxy's own refusal (401/403 with the same
//! `WWW-Authenticate` and body; 400/404/503 where the proxy answers those).
//! Nothing is forwarded and no body is read.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Empty};

use super::reject::Reject;
use super::{ConnInfo, Outcome, Proxy, ProxyBody};
use gatehouse_core::config::{AuthServerConfig, Ingress};

const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Proxy {
    /// Answers an ingress's "may this request pass?". The original request
    /// is read from the headers of `cfg.ingress`, believed only from a
    /// trusted proxy (the ingress); from anyone else the request is refused
    /// (403), since whoever may describe a request may describe any.
    pub(super) async fn answer_auth_request<'p>(
        &'p self,
        parts: http::request::Parts,
        conn: &ConnInfo,
        cfg: &'p AuthServerConfig,
        out: &mut Outcome<'p>,
    ) -> Result<Response<ProxyBody>, Reject> {
        if !self.is_trusted_proxy(conn) {
            return Err(Reject::UntrustedIngress);
        }
        // The proxy removes every spelling of an identity header that some
        // backend would read as that header (`X_Auth_Subject`,
        // `X.Auth.Subject` for CGI); here the ingress forwards the client's
        // headers itself, and the documented snippets replace only the
        // header's own name. So another spelling is refused: the request
        // never reaches the app with it.
        let rules = &self.routes.strip_rules;
        let ids = &self.routes.all_identity_headers;
        if parts
            .headers
            .keys()
            .any(|n| rules.strips(n.as_str(), false) && !ids.contains(n))
        {
            return Err(Reject::BadRequest(
                "a client header spells an identity header another way",
            ));
        }
        // Likewise a forwarding header (`X_Original_URL`,
        // `X_Forwarded_Prefix`): CGI, WSGI and FastCGI apps read it as
        // `X-Original-URL`, and the snippets can remove only the spellings
        // they name (Caddy passes underscores on; nginx drops them).
        // (Names are lower-case here; the cheap scan goes first, since a
        // name with such a character is rare.)
        if parts.headers.keys().any(|n| {
            let n = n.as_str();
            n.bytes().any(|b| !b.is_ascii_alphanumeric() && b != b'-')
                && gatehouse_core::header_names::is_forwarding_header(n)
        }) {
            return Err(Reject::BadRequest(
                "a client header spells a forwarding header another way",
            ));
        }
        let original = original_request(&parts, cfg)?;
        if out.logging {
            out.described = Some((original.method.clone(), original.uri.path().to_owned()));
        }
        // The ingress terminated the client's TLS; this connection's SNI
        // says nothing about the original host.
        let ingress_conn = ConnInfo {
            cert_names: None,
            ..conn.clone()
        };
        let d = match self.decide(&original, &ingress_conn, out).await {
            Ok(d) => d,
            // An ingress passes on only its auth server's 2xx, 401 and
            // 403: a browser login (a redirect, a callback, a cookie) cannot
            // be run from here. Without a token or a session it is a
            // missing token, and logged as one, not as a redirect.
            Err(Reject::Login(_)) => return Err(Reject::MissingToken),
            Err(e) => return Err(e),
        };
        let mut resp = Response::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let h = resp.headers_mut();
        // An ingress must not cache an allow past a revocation.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in d.identity_headers() {
            h.insert(name.clone(), value);
        }
        if cfg.ingress == Ingress::Caddy {
            // Caddy 2.6's `copy_headers` copies a header the answer lacks
            // as its literal placeholder text (`{http.reverse_proxy.header.
            // X-Auth-Subject}`), which an app could take for a name. One
            // Caddyfile copies the headers of every route (docs/caddy.md),
            // so every identity header of every route is sent, empty where
            // this route or its claims give none.
            for name in &self.routes.all_identity_headers {
                if !h.contains_key(name) {
                    h.insert(name.clone(), HeaderValue::from_static(""));
                }
            }
        }
        Ok(resp)
    }
}

/// The one copy of `name` the ingress sent, as text.
fn header_value<'a>(
    h: &'a HeaderMap,
    name: &HeaderName,
) -> Result<(&'a HeaderValue, &'a str), Reject> {
    let mut all = h.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => v
            .to_str()
            .map(|t| (v, t))
            .map_err(|_| Reject::BadRequest("ingress header is not text")),
        (None, _) => Err(Reject::BadRequest(
            "the ingress did not describe the original request",
        )),
        (Some(_), Some(_)) => Err(Reject::BadRequest("ingress header sent twice")),
    }
}

fn header_text<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, Reject> {
    header_value(h, name).map(|(_, t)| t)
}

/// The original request's head as the ingress describes it: method,
/// target, `Host`, and the client's credentials (`Authorization`). The
/// rest of the client's headers play no part in the decision. Built field
/// by field: the header values are the ingress's own, shared, not copied
/// or validated a second time (this runs on every request an ingress
/// sees).
fn original_request(
    parts: &http::request::Parts,
    cfg: &AuthServerConfig,
) -> Result<http::request::Parts, Reject> {
    let h = &parts.headers;
    let (method, target, host) = match cfg.ingress {
        Ingress::Nginx => (
            parse_method(header_text(h, &X_ORIGINAL_METHOD)?)?,
            header_text(h, &X_ORIGINAL_URI)?,
            header_value(h, &header::HOST)?.0,
        ),
        Ingress::Caddy | Ingress::Traefik => (
            parse_method(header_text(h, &X_FORWARDED_METHOD)?)?,
            header_text(h, &X_FORWARDED_URI)?,
            header_value(h, &X_FORWARDED_HOST)?.0,
        ),
        Ingress::Envoy => {
            // Envoy asks in origin form (RFC 9112 §3.2.1); any other form
            // ("health", "h:443", "http://h/x") has no path of the client's
            // to judge.
            let pq = match (parts.uri.authority(), parts.uri.path_and_query()) {
                (None, Some(pq)) if pq.as_str().starts_with('/') => pq.as_str(),
                _ => {
                    return Err(Reject::BadRequest(
                        "the ext_authz request target is not a path",
                    ))
                }
            };
            let rest = pq
                .strip_prefix(cfg.path_prefix.trim_end_matches('/'))
                .filter(|r| r.starts_with('/'))
                .ok_or(Reject::BadRequest("path outside the ext_authz prefix"))?;
            (
                parts.method.clone(),
                rest,
                header_value(h, &header::HOST)?.0,
            )
        }
    };
    if !target.starts_with('/') {
        return Err(Reject::BadRequest(
            "original target must be an absolute path",
        ));
    }
    // A request target has no fragment (RFC 9112 §3.2, RFC 3986 §3.5). In
    // proxy mode the parser drops one and the backend gets what was judged;
    // here the ingress forwards the raw target, so "/health#/../admin"
    // would be judged as /health and could reach a backend that reads past
    // the `#` as /admin: refused.
    if target.contains('#') {
        return Err(Reject::BadRequest("original target has a fragment"));
    }
    // Dot and empty segments would be resolved here and judged so, while
    // the ingress forwards them as they are to an app that may read them
    // another way (`gatehouse_core::canonical::unresolved_segment`).
    if let Some(why) = gatehouse_core::canonical::unresolved_segment(target) {
        return Err(Reject::BadRequest(why));
    }
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.uri = http::Uri::try_from(target)
        .map_err(|_| Reject::BadRequest("original request cannot be read"))?;
    head.version = Version::HTTP_11;
    head.headers.insert(header::HOST, host.clone());
    for v in h.get_all(header::AUTHORIZATION) {
        head.headers.append(header::AUTHORIZATION, v.clone());
    }
    Ok(head)
}

fn parse_method(m: &str) -> Result<Method, Reject> {
    Method::from_bytes(m.as_bytes())
        .map_err(|_| Reject::BadRequest("original method is not a method"))
}
