//! The policy: everything the gateway decides about a request, from its
//! head and the connection alone — no socket, no body. Read
//! [`Proxy::decide`] first: it is the whole policy, top to bottom, one
//! step per line. Forwarding ([`super::Proxy`]'s `forward`) only applies
//! the [`Decision`]; any other way in (an auth-server mode, a login flow)
//! is another caller of the same `decide`.
//!
//! ```text
//! canonical  = path and host, one reading           400 if ambiguous
//! route      = routes.find(host, path)               404
//! framing    = body size, transfer coding            413 / 400
//! credential = Authorization (bearer)                401
//! identity   = verify(credential)                    401 invalid_token / 503
//! revoked?   = revocation set                        401 / 503
//! authorize  = route.require                         403
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, Version};

use super::canonical::{self, CanonicalHost, CanonicalPath};
use super::headers;
use super::reject::Reject;
use super::routes::Route;
use super::{ConnInfo, Proxy};
use crate::login::{self, Login};
use crate::revocation::feed::Refusal;
use gatehouse_core::auth::{self, AuthError, Bearer, ClaimHeader, Identity};
use gatehouse_core::config::AuthMode;
use gatehouse_core::metrics::{metrics, IdentityHeaderLabels};

/// What the policy decided to let through, and how: everything forwarding
/// (or an auth-server answer) needs, nothing it would have to re-read from
/// the request.
pub struct Decision<'p> {
    pub route: &'p Route,
    /// The verified, unrevoked, authorized token's identity; `None` for an
    /// anonymous request the route allows (auth off, public path, no
    /// `Authorization` on an `optional` route).
    pub identity: Option<Arc<Identity>>,
    /// The path that was judged and that the backend receives.
    pub path: CanonicalPath<'static>,
    /// The host that was judged and that the backend receives.
    pub host: CanonicalHost<'static>,
    /// The client is a trusted proxy: its forwarding headers are kept and
    /// extended, not removed.
    pub trusted_peer: bool,
    /// An HTTP/1.1 `Upgrade` to a protocol the route allows.
    pub upgrade: bool,
    /// `Set-Cookie` lines for the response: a browser session whose idle
    /// clock restarts.
    pub set_cookies: Vec<HeaderValue>,
}

impl Decision<'_> {
    /// The identity headers to set, name and value, in route order; a
    /// claim without an unambiguous header form is left out and counted
    /// (`gatehouse_identity_headers_withheld_total`).
    pub fn identity_headers(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> + '_ {
        let route = self.route;
        // A route without identity headers leaves the identity's memo to
        // one that has some.
        let id = self
            .identity
            .as_deref()
            .filter(|_| !route.identity_headers.is_empty());
        let held = id.and_then(|id| {
            id.headers
                .for_list(route.identity_headers_list, || claim_headers(route, id))
        });
        // An identity holding another route's values (or none) has this
        // route's made on the spot.
        let values: Cow<'_, [ClaimHeader]> = match (id, held) {
            (_, Some(held)) => Cow::Borrowed(held),
            (Some(id), None) => Cow::Owned(claim_headers(route, id).into_vec()),
            (None, None) => Cow::Borrowed(&[]),
        };
        route
            .identity_headers
            .iter()
            .enumerate()
            .filter_map(move |(i, ih)| match values.get(i)? {
                ClaimHeader::Value(v) => Some((&ih.header.0, v.clone())),
                ClaimHeader::Absent => None,
                ClaimHeader::Withheld => {
                    tracing::debug!(claim = %ih.claim, "claim has no unambiguous header form; not sent");
                    metrics()
                        .identity_headers_withheld
                        .get_or_create(&IdentityHeaderLabels {
                            route: route.name.to_string(),
                            header: ih.header.0.as_str().to_owned(),
                        })
                        .inc();
                    None
                }
            })
    }
}

/// The route's identity headers as `id`'s claims make them, in list order.
fn claim_headers(route: &Route, id: &Identity) -> Box<[ClaimHeader]> {
    route
        .identity_headers
        .iter()
        .map(|ih| match id.claim(&ih.claim).filter(|v| !v.is_null()) {
            None => ClaimHeader::Absent,
            Some(claim) => {
                headers::identity_value(claim).map_or(ClaimHeader::Withheld, ClaimHeader::Value)
            }
        })
        .collect()
}

/// What the access log line and the request metrics say about a request,
/// filled in as the policy goes (so a refusal still names its route and
/// subject).
///
/// It borrows the route's name from the policy rather than holding a
/// reference count on it: every worker would write that count's cache
/// line on every request of the route.
pub struct Outcome<'p> {
    pub route: Option<&'p Arc<str>>,
    /// For the access log's subject.
    pub identity: Option<Arc<Identity>>,
    pub reason: Option<&'static str>,
    /// `allowed`, `public`, or the refusal's label.
    pub label: &'static str,
    /// On an auth-server listener, the request the ingress described
    /// (method, path): what the access log shows instead of the ingress's
    /// own exchange. Set only while the access log is on.
    pub described: Option<(http::Method, String)>,
    /// The access log is on: only then is the identity kept for its line
    /// (a reference count written twice per request otherwise, on a
    /// line other cores write too when the token is not in this
    /// thread's memo).
    pub logging: bool,
}

impl Default for Outcome<'_> {
    fn default() -> Self {
        Outcome {
            route: None,
            identity: None,
            reason: None,
            label: "allowed",
            described: None,
            logging: false,
        }
    }
}

impl Proxy {
    /// The policy. `head` is the request as the client sent it; `conn`
    /// what the listener knows of the connection. Returns what to forward,
    /// or the refusal (a [`Reject`], whose status and RFC 6750 challenge
    /// are the answer). Reads nothing but its arguments, the route table,
    /// the verifier (whose only I/O is a rate-limited JWKS refresh for an
    /// unknown `kid`) and the revocation set.
    pub async fn decide<'p>(
        &'p self,
        head: &http::request::Parts,
        conn: &ConnInfo,
        out: &mut Outcome<'p>,
    ) -> Result<Decision<'p>, Reject> {
        let path = canonical::canonicalize_path(head.uri.path())
            .map_err(Reject::BadRequest)?
            .into_owned();
        let host = canonical_host(head)?;
        if self.routes.case_insensitive_for(host.name()) {
            if let Some(why) = canonical::case_fold_hazard(path.matched()) {
                return Err(Reject::BadRequest(why));
            }
        }
        // A request for a host the connection's certificate does not serve
        // (SNI says one site, Host another) is not judged by either.
        if let Some(names) = &conn.cert_names {
            if !gatehouse_core::tls::host_served(names, host.name()) {
                return Err(Reject::Misdirected);
            }
        }
        let route = self
            .routes
            .find(host.name(), path.matched())
            .ok_or(Reject::NoRoute)?;
        out.route = Some(&route.name);
        check_framing(head, route)?;
        if let Some(login) = &route.login {
            let step = if path.matched() == login.callback_path {
                Some(login::Step::Callback)
            } else if path.matched() == login.logout_path {
                Some(login::Step::Logout)
            } else {
                None
            };
            if let Some(step) = step {
                return Err(login_step(login, step, &host, conn));
            }
        }

        let (identity, via) = self.authenticate(route, &path, head).await?;
        let mut set_cookies = Vec::new();
        if let Some(id) = &identity {
            if out.logging {
                out.identity = Some(id.clone());
            }
            if let Err(refused) = self.check_revoked(id) {
                // A revoked browser session on a page navigation logs in
                // again (and drops the dead cookie); anything else is
                // refused as for a token.
                if let (Via::Session(_), Some(login)) = (&via, &route.login) {
                    if Login::is_navigation(head) && matches!(refused, Reject::Revoked(_)) {
                        return Err(login_step(
                            login,
                            login::Step::Start {
                                back: return_path(head),
                                clear: true,
                            },
                            &host,
                            conn,
                        ));
                    }
                }
                return Err(refused);
            }
            authorize(route, id)?;
            if let Via::Session(refresh) = via {
                set_cookies = refresh;
            }
        } else if let Via::NeedsLogin = via {
            if let Some(login) = &route.login {
                return Err(login_step(
                    login,
                    login::Step::Start {
                        back: return_path(head),
                        clear: false,
                    },
                    &host,
                    conn,
                ));
            }
        } else if let Via::Preflight = via {
            out.label = "preflight";
        } else if route.auth != AuthMode::Off {
            out.label = "public";
        }
        Ok(Decision {
            route,
            identity,
            upgrade: is_upgrade_request(head, route),
            trusted_peer: self.is_trusted_proxy(conn),
            path,
            host,
            set_cookies,
        })
    }

    /// `Ok(None)`: forward anonymously (auth off, public path, or no
    /// `Authorization` header at all on an `optional` route without
    /// `require`). Any `Authorization` header that is there is judged: a
    /// broken bearer credential or another scheme is never taken for "no
    /// credentials" and forwarded.
    ///
    /// A path is public only if it is in both of its readings: without its
    /// `;parameters` (as servlet containers serve it) and with them (as
    /// Python, Node and Go do, for whom `/health;x` is another path that a
    /// catch-all handler like Flask's `/<path:p>` serves). Routes are
    /// chosen by the first reading alone: there it can only pick the more
    /// protected route, never a less protected one.
    async fn authenticate(
        &self,
        route: &Route,
        path: &canonical::CanonicalPath<'_>,
        head: &http::request::Parts,
    ) -> Result<(Option<Arc<Identity>>, Via), Reject> {
        let public = || {
            route.is_public(path.matched())
                && (path.matched() == &*path.forward || route.is_public(&path.forward))
        };
        if route.auth == AuthMode::Off || public() {
            return Ok((None, Via::Nothing));
        }
        if route.cors_preflight && is_cors_preflight(head) {
            return Ok((None, Via::Preflight));
        }
        // The token's characters are checked by `verify`, after its memo
        // of verified tokens (which holds only tokens that passed).
        let bearer = auth::bearer_unchecked(&head.headers);
        // A browser session counts only where no `Authorization` is sent:
        // a request with a bearer token is judged by its token alone.
        if let (Some(login), Bearer::Missing) = (&route.login, &bearer) {
            if let Some((id, refresh)) = login.session(&head.headers) {
                if !route.issuers.is_empty() && !route.issuers.contains(&id.issuer) {
                    return Err(Reject::InvalidToken(AuthError::UnknownIssuer));
                }
                return Ok((Some(id), Via::Session(refresh)));
            }
            if Login::is_navigation(head) {
                return Ok((None, Via::NeedsLogin));
            }
        }
        let token = match bearer {
            Bearer::Missing if route.auth == AuthMode::Optional && route.require.is_none() => {
                return Ok((None, Via::Nothing))
            }
            Bearer::Missing | Bearer::OtherScheme => return Err(Reject::MissingToken),
            Bearer::Malformed => {
                return Err(Reject::InvalidToken(AuthError::Malformed(
                    "malformed authorization header",
                )))
            }
            Bearer::Token(t) => t,
        };
        let identity = self
            .verifier
            .verify(token)
            .await
            .map_err(Reject::InvalidToken)?;
        if !route.issuers.is_empty() && !route.issuers.contains(&identity.issuer) {
            return Err(Reject::InvalidToken(AuthError::UnknownIssuer));
        }
        Ok((Some(identity), Via::Bearer))
    }

    /// A genuine token is not enough: it must not have been revoked.
    fn check_revoked(&self, id: &Identity) -> Result<(), Reject> {
        let Some(r) = &self.revocations else {
            return Ok(());
        };
        r.check(id).map_err(|refusal| match refusal {
            Refusal::Revoked(hit) => Reject::Revoked(hit.description()),
            Refusal::Unavailable => Reject::RevocationUnavailable,
        })
    }
}

/// How a request's identity (or its absence) was established.
enum Via {
    /// No credential needed or given (auth off, public path, `optional`).
    Nothing,
    Bearer,
    /// A browser session, with the `Set-Cookie` lines that refresh it.
    Session(Vec<HeaderValue>),
    /// A page navigation without credentials on a login route.
    NeedsLogin,
    /// A CORS preflight on a route that lets them through.
    Preflight,
}

/// A CORS-preflight request (Fetch standard §3.2.2, §4.8): `OPTIONS` with
/// `Origin` and `Access-Control-Request-Method`. Browsers send it without
/// credentials, so a route that needs them would refuse every
/// cross-origin call before it is made.
fn is_cors_preflight(head: &http::request::Parts) -> bool {
    let h = &head.headers;
    // A preflight carries no body (Fetch §4.8 step 1: a request with a
    // null body) and names one method token (RFC 9110 §9.1); anything
    // else is not what a browser sends, and a backend might act on it.
    let method_named = h
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .is_some_and(|m| !m.is_empty() && http::Method::from_bytes(m.as_bytes()).is_ok());
    let no_body = !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes().iter().all(|b| *b == b'0'));
    // Method-override headers turn a request into another for some
    // frameworks: never on a request let through without credentials.
    let overrides = headers::overrides_method(h);
    head.method == http::Method::OPTIONS
        && h.contains_key(header::ORIGIN)
        && method_named
        && no_body
        && !overrides
}

/// The login step, with the origin the browser reached us at (scheme by
/// the connection, host and port as judged).
fn login_step(
    login: &Arc<Login>,
    step: login::Step,
    host: &CanonicalHost<'_>,
    conn: &ConnInfo,
) -> Reject {
    let scheme = if conn.tls { "https" } else { "http" };
    Reject::Login(Box::new(login::StepRequest {
        login: login.clone(),
        step,
        origin: format!("{scheme}://{}", host.value),
    }))
}

/// The path and query a login returns to: as the client sent them (the
/// backend sees the same path); [`login`] refuses anything that is not a
/// plain path.
fn return_path(head: &http::request::Parts) -> String {
    head.uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
}

/// A body the route will not take (declared over `max_body_bytes`: 413)
/// or a transfer coding the gateway does not decode (400: it would reach
/// the backend under a framing it cannot see, RFC 9112 §6.1).
fn check_framing(head: &http::request::Parts, route: &Route) -> Result<(), Reject> {
    let declared_len = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > route.max_body_bytes) {
        return Err(Reject::BodyTooLarge);
    }
    if let Some(te) = head.headers.get(header::TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Reject::BadRequest("unsupported transfer coding"));
        }
    }
    Ok(())
}

/// Per-route scope and role requirements, after the token is known good.
fn authorize(route: &Route, id: &Identity) -> Result<(), Reject> {
    let Some(req) = &route.require else {
        return Ok(());
    };
    let scopes_ok = req.scopes.iter().all(|s| id.has_scope(s));
    let roles_ok = req.roles.is_empty() || id.has_any_role(&req.roles_claim, &req.roles);
    if scopes_ok && roles_ok {
        Ok(())
    } else {
        Err(Reject::InsufficientScope(req.scopes.join(" ")))
    }
}

/// The host the client asked for, in canonical form: the URI authority
/// (HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target) wins over
/// `Host`, as RFC 9112 §3.2.2 says. 400 for a malformed host, several
/// `Host` lines, an HTTP/1.1 request without one (RFC 9112 §3.2), or an
/// HTTP/2 request whose `Host` names another host than its `:authority`
/// (RFC 9113 §8.3.1).
fn canonical_host(head: &http::request::Parts) -> Result<CanonicalHost<'static>, Reject> {
    const BAD: Reject = Reject::BadRequest("malformed Host");
    let mut lines = head.headers.get_all(header::HOST).iter();
    let first = lines.next();
    if lines.next().is_some() {
        return Err(Reject::BadRequest("more than one Host"));
    }
    let from_header = match first {
        Some(v) => {
            let text = v.to_str().map_err(|_| BAD)?;
            Some(canonical::canonicalize_host(text).map_err(Reject::BadRequest)?)
        }
        None => None,
    };
    if let Some(a) = head.uri.authority() {
        let from_uri = canonical::canonicalize_host(a.as_str()).map_err(Reject::BadRequest)?;
        if head.version == Version::HTTP_2 {
            if let Some(h) = &from_header {
                if h.value != from_uri.value {
                    return Err(Reject::BadRequest("Host differs from :authority"));
                }
            }
        }
        return Ok(from_uri.into_owned());
    }
    match from_header {
        Some(h) => Ok(h.into_owned()),
        None if head.version == Version::HTTP_11 => {
            Err(Reject::BadRequest("an HTTP/1.1 request needs a Host"))
        }
        None => Ok(CanonicalHost::EMPTY),
    }
}

/// An HTTP/1.1 `Upgrade` (RFC 9110 §7.8) to protocols the route allows:
/// WebSocket by default, never `h2c`.
fn is_upgrade_request(head: &http::request::Parts, route: &Route) -> bool {
    let h = &head.headers;
    head.version == Version::HTTP_11
        && h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && h.get_all(header::UPGRADE)
            .iter()
            .all(|v| v.to_str().is_ok_and(|v| route.allows_upgrade(v)))
}
