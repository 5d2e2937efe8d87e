//! The HTTP adapter for the public API (docs/spec.md §4) and the operator endpoints:
//! parse the route, headers and (bounded) body, call the core, render JSON.
//! Every failure becomes a status in exactly one place, [`failure`]. The
//! core never sees a hyper type; this module never decides policy.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use serde::Serialize;

use crate::clock::now_ms;
use crate::config::Config;
use crate::licence;
use crate::limiter::{Error, Limiter};
use crate::metrics::{Format, Route};
use crate::upstream::{UpstreamError, Upstreams};
use crate::wire::{self, ErrorBody, ErrorExtra, ListBody, RenewedBody, SessionId, SignedOutBody, StartedBody};

pub type Reply = Response<Full<Bytes>>;

/// The service behind both listeners: the core plus the adapter's own
/// settings, which a reload swaps without locking requests out.
pub struct Api {
    pub limiter: Limiter,
    pub edge: ArcSwap<Edge>,
}

/// What the adapter enforces per connection and request (reloadable).
#[derive(Debug, Clone)]
pub struct Edge {
    pub cors: Cors,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Bounds receiving a request head, and reading a request body.
    pub header_timeout: Duration,
    /// The licence gate's upstreams and their pooled clients.
    pub licence: Arc<Upstreams>,
}

impl Edge {
    pub fn new(config: &Config) -> Edge {
        Edge {
            cors: Cors::new(&config.cors_origins),
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
            licence: Arc::new(Upstreams::new(&config.licence)),
        }
    }
}

/// Which browser origins may call the API.
#[derive(Debug, Clone)]
pub enum Cors {
    Any,
    Only(Vec<HeaderValue>),
}

impl Cors {
    pub fn new(origins: &[String]) -> Cors {
        if origins.iter().any(|o| o == "*") {
            return Cors::Any;
        }
        Cors::Only(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect())
    }

    /// Adds the CORS headers to an answer: `Access-Control-Allow-Origin` when
    /// the request's origin may read it, and then, to a request that names
    /// its `Origin`, `expose` (one `Access-Control-Expose-Headers` value) for
    /// the headers beyond the CORS-safelisted ones that a web player reads.
    /// A browser names its origin on every cross-origin request; answers to
    /// other players (TVs, apps: most heartbeats) stay without the header,
    /// which costs a heartbeat about 300 instructions (callgrind).
    pub(crate) fn allow(&self, req: &HeaderMap, res: &mut HeaderMap, expose: &'static str) {
        let origin = match self {
            Cors::Any if !req.contains_key(header::ORIGIN) => {
                res.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
                return;
            }
            Cors::Any => HeaderValue::from_static("*"),
            Cors::Only(allowed) => {
                res.insert(header::VARY, HeaderValue::from_static("Origin"));
                match req.get(header::ORIGIN).filter(|o| allowed.contains(o)) {
                    Some(origin) => origin.clone(),
                    None => return,
                }
            }
        };
        res.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        res.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(expose));
    }
}

/// Marks a request whose head repeated `Content-Length` (found below
/// hyper, which merges equal repeats): docs/spec.md §4 refuses it with `400`.
#[derive(Clone, Copy, Debug)]
pub struct RepeatedContentLength;

/// Why a request failed: the core's reasons plus the adapter's own.
#[derive(Debug)]
pub enum Failure {
    Core(Error),
    NotFound,
    MethodNotAllowed(&'static str),
    BadRequest(&'static str),
    /// The body is over the route's limit (bytes).
    TooLarge(usize),
    Upstream(UpstreamError),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Core(e)
    }
}

/// The one place where failures become statuses and error bodies.
pub fn failure(f: &Failure) -> Reply {
    let plain = |status, error, message: &str| json(status, &ErrorBody { error, message, extra: None });
    match f {
        Failure::Core(Error::InvalidGrant(m)) => plain(StatusCode::UNAUTHORIZED, "invalid_grant", m),
        Failure::Core(Error::InvalidToken(m)) => plain(StatusCode::UNAUTHORIZED, "invalid_token", m),
        Failure::Core(Error::Forbidden(m)) => plain(StatusCode::FORBIDDEN, "forbidden", m),
        Failure::Core(Error::LimitReached { group, limit, active, sessions }) => {
            let (error, message) = if *group {
                ("group_limit_reached", "too many streams of this group: stop one of these")
            } else {
                ("limit_reached", "too many streams: stop one of these")
            };
            let extra = Some(ErrorExtra::Limit { limit: *limit, active: *active, sessions });
            json(StatusCode::CONFLICT, &ErrorBody { error, message, extra })
        }
        Failure::Core(Error::SessionStopped { reason, by }) => {
            let extra = Some(ErrorExtra::SessionStopped { reason: *reason, by: by.as_deref() });
            let body =
                ErrorBody { error: "session_stopped", message: "this session has stopped: stop playback", extra };
            json(StatusCode::GONE, &body)
        }
        Failure::Core(Error::OverCapacity) => {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "over_capacity", "the server is full: retry later");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Failure::Core(Error::NoLicenceUpstream) => {
            plain(StatusCode::NOT_FOUND, "not_found", "no licence server is configured for this DRM system")
        }
        Failure::NotFound => plain(StatusCode::NOT_FOUND, "not_found", "no such route"),
        Failure::MethodNotAllowed(allow) => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        Failure::BadRequest(m) => close(plain(StatusCode::BAD_REQUEST, "bad_request", m)),
        Failure::TooLarge(limit) => {
            let message = format!("request body is over {} KiB", limit / 1024);
            close(plain(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message))
        }
        Failure::Upstream(UpstreamError::Unavailable(m)) => plain(StatusCode::BAD_GATEWAY, "upstream_unavailable", m),
        Failure::Upstream(UpstreamError::Timeout) => {
            plain(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "the licence server did not answer in time")
        }
    }
}

/// Asks hyper to close the connection after this response: after a framing
/// error the rest of the stream cannot be trusted.
fn close(mut r: Reply) -> Reply {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    json_bytes(status, serde_json::to_vec(body).expect("our bodies are plain structs of strings and numbers"))
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The OpenAPI document of the public API, compiled in from the same file
/// the repository keeps beside the contract.
const OPENAPI_YAML: &str = include_str!("../docs/openapi.yaml");

/// How long a client may reuse the document without asking again; it only
/// changes with the binary, and a revalidation with its `ETag` costs a `304`.
const OPENAPI_CACHE_CONTROL: &str = "public, max-age=300";

/// The document's entity tag: 128 bits of its BLAKE3 hash, computed once.
static OPENAPI_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hash = blake3::hash(OPENAPI_YAML.as_bytes()).to_hex();
    HeaderValue::from_str(&format!("\"{}\"", &hash[..32])).expect("quoted hex digits are a valid header value")
});

/// A parsed API path.
#[derive(Debug, PartialEq, Eq)]
enum Path<'a> {
    OpenApi,
    Sessions(&'a str),
    Session(&'a str, &'a str),
    Heartbeat(&'a str, &'a str),
    /// `(user, session, system)`.
    Licence(&'a str, &'a str, &'a str),
}

fn parse_path(path: &str) -> Option<Path<'_>> {
    if path == "/v1/openapi.yaml" {
        return Some(Path::OpenApi);
    }
    let rest = path.strip_prefix("/v1/users/")?;
    let (user, rest) = cut(rest);
    let (sessions, rest) = cut(rest?);
    if sessions != "sessions" {
        return None;
    }
    let Some(rest) = rest else { return Some(Path::Sessions(user)) };
    match cut(rest) {
        (id, None) => Some(Path::Session(user, id)),
        (id, Some("heartbeat")) => Some(Path::Heartbeat(user, id)),
        (id, Some(rest)) => match cut(rest) {
            ("licence", Some(system)) => match cut(system) {
                (system, None) => Some(Path::Licence(user, id, system)),
                _ => None,
            },
            _ => None,
        },
    }
}

/// Splits at the first `/`: `("a", Some("b/c"))` for `"a/b/c"`, `("a", None)` for `"a"`.
fn cut(s: &str) -> (&str, Option<&str>) {
    // A byte loop: path segments are short, too short to pay for memchr.
    match s.bytes().position(|b| b == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn route_of(path: &Option<Path<'_>>, method: &Method) -> Route {
    match (path, method) {
        (_, &Method::OPTIONS) => Route::Preflight,
        (Some(Path::Sessions(_)), &Method::POST) => Route::Start,
        (Some(Path::Sessions(_)), &Method::GET) => Route::List,
        (Some(Path::Sessions(_)), &Method::DELETE) => Route::SignOut,
        (Some(Path::Session(..)), &Method::DELETE) => Route::Stop,
        (Some(Path::OpenApi), &Method::GET) => Route::OpenApi,
        (Some(Path::Heartbeat(..)), &Method::POST) => Route::Heartbeat,
        (Some(Path::Licence(..)), _) => Route::Licence,
        _ => Route::Other,
    }
}

/// Serves one public API request.
pub async fn serve_api(api: Arc<Api>, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parse_path(parts.uri.path());
    if let Some(Path::Licence(user, id, system)) = path {
        let repeated = parts.extensions.get::<RepeatedContentLength>().is_some();
        if !repeated {
            return licence::serve(&api, &parts, body, user, id, system).await;
        }
    }
    let route = route_of(&path, &parts.method);
    // A licence path lands here only with a repeated Content-Length (400);
    // it still exposes what every answer of its route does.
    let expose =
        if matches!(path, Some(Path::Licence(..))) { wire::EXPOSED_LICENCE_HEADERS } else { wire::EXPOSED_HEADERS };
    let edge = api.edge.load();
    let repeated = parts.extensions.get::<RepeatedContentLength>().is_some();
    let read = if repeated { Err(Failure::BadRequest("duplicated Content-Length")) } else { Ok(()) };
    let mut reply = match read.and(read_body(edge.header_timeout, wire::MAX_BODY_BYTES, &parts.headers, body).await) {
        Err(f) => failure(&f),
        Ok(_) => match answer(&api, &parts, path) {
            Ok(reply) => reply,
            Err(f) => failure(&f),
        },
    };
    edge.cors.allow(&parts.headers, reply.headers_mut(), expose);
    api.limiter.metrics().request(route, reply.status().as_u16());
    reply
}

/// Reads a request body of at most `limit` bytes (docs/spec.md §4: 16 KiB; the
/// licence route: 64 KiB). The JSON routes' requests carry none and discard
/// what comes, but the connection must stay in step.
pub(crate) async fn read_body(
    timeout: Duration,
    limit: usize,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Failure> {
    let too_large = Failure::TooLarge(limit);
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(len), more) = (lengths.next(), lengths.next()) {
        if more.is_some() {
            return Err(Failure::BadRequest("duplicated Content-Length"));
        }
        let len: u64 =
            len.to_str().ok().and_then(|s| s.parse().ok()).ok_or(Failure::BadRequest("bad Content-Length"))?;
        if len > limit as u64 {
            return Err(too_large);
        }
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let limited = Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Ok(Err(_)) => Err(Failure::BadRequest("request body could not be read")),
        Err(_) => Err(Failure::BadRequest("request body took too long")),
    }
}

fn answer(api: &Api, parts: &http::request::Parts, path: Option<Path<'_>>) -> Result<Reply, Failure> {
    let path = path.ok_or(Failure::NotFound)?;
    let allow = match path {
        Path::OpenApi => "GET, OPTIONS",
        Path::Sessions(_) => "GET, POST, DELETE, OPTIONS",
        Path::Session(..) => "DELETE, OPTIONS",
        Path::Heartbeat(..) | Path::Licence(..) => "POST, OPTIONS",
    };
    if parts.method == Method::OPTIONS {
        return Ok(preflight());
    }
    let limiter = &api.limiter;
    let now = now_ms();
    match (&parts.method, path) {
        (&Method::GET, Path::OpenApi) => Ok(openapi(&parts.headers)),
        (&Method::POST, Path::Sessions(user)) => {
            let replace = replace_param(parts.uri.query())?;
            let s = limiter.start(checked_user(user)?, bearer(&parts.headers), replace, now)?;
            let body = StartedBody {
                session_id: s.lease.session_id,
                token: &s.lease.token,
                poll_after: s.lease.poll_after,
                expires_at: wire::unix_secs(s.lease.expires_ms),
                active: s.admitted.active,
                limit: s.limit,
                evicted: &s.admitted.evicted,
            };
            Ok(json(StatusCode::CREATED, &body))
        }
        (&Method::GET, Path::Sessions(user)) => {
            let l = limiter.list(checked_user(user)?, bearer(&parts.headers), now)?;
            Ok(json(StatusCode::OK, &ListBody { limit: l.limit, active: l.active, sessions: &l.sessions }))
        }
        (&Method::DELETE, Path::Sessions(user)) => {
            let out = limiter.sign_out(checked_user(user)?, bearer(&parts.headers), now)?;
            Ok(json(StatusCode::OK, &SignedOutBody { stopped: out.stopped }))
        }
        (&Method::POST, Path::Heartbeat(user, id)) => {
            let r = limiter.heartbeat(checked_user(user)?, session_id(id)?, bearer(&parts.headers), now)?;
            let body = RenewedBody {
                session_id: r.session_id,
                token: &r.token,
                poll_after: r.poll_after,
                expires_at: wire::unix_secs(r.expires_ms),
            };
            Ok(json_bytes(StatusCode::OK, body.to_json()))
        }
        (&Method::DELETE, Path::Session(user, id)) => {
            limiter.stop(checked_user(user)?, session_id(id)?, bearer(&parts.headers), now)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(Failure::MethodNotAllowed(allow)),
    }
}

/// docs/spec.md §4: the OpenAPI document, cacheable; `304` when the
/// client's copy is current (`If-None-Match`).
fn openapi(headers: &HeaderMap) -> Reply {
    let etag = &*OPENAPI_ETAG;
    let current = headers.get_all(header::IF_NONE_MATCH).iter().any(|v| etag_matches(v, etag));
    let mut r = if current {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI_YAML.as_bytes())));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        r
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(OPENAPI_CACHE_CONTROL));
    r
}

/// Whether an `If-None-Match` value names `etag`: `*`, or a list of entity
/// tags compared weakly (a `W/` prefix is ignored), as RFC 9110 §13.1.2 asks.
fn etag_matches(value: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes())
}

fn preflight() -> Reply {
    let mut r = empty(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}

pub(crate) fn checked_user(user: &str) -> Result<&str, Failure> {
    if wire::is_name(user, wire::MAX_USER_LEN) {
        Ok(user)
    } else {
        Err(Failure::BadRequest("the user in the path must be 1-128 characters of [A-Za-z0-9._~-]"))
    }
}

pub(crate) fn session_id(id: &str) -> Result<SessionId, Failure> {
    id.parse().map_err(|()| Failure::BadRequest("session id must be 16 lowercase hex characters"))
}

fn replace_param(query: Option<&str>) -> Result<Option<SessionId>, Failure> {
    let Some(query) = query else { return Ok(None) };
    match query.split('&').find_map(|kv| kv.strip_prefix("replace=")) {
        None => Ok(None),
        Some(id) => session_id(id).map(Some),
    }
}

/// The credential from `Authorization: Bearer …`; empty when absent, which
/// the core refuses like any other bad credential.
pub(crate) fn bearer(headers: &HeaderMap) -> &str {
    // `from_utf8` checks ASCII a word at a time; `HeaderValue::to_str` a byte at a time.
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| std::str::from_utf8(v.as_bytes()).ok()) else {
        return "";
    };
    match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer ") => token.trim(),
        _ => "",
    }
}

/// Serves one operator request: `/healthz`, and `/metrics` in the format `Accept` asks for.
pub async fn serve_admin(api: Arc<Api>, req: Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/metrics") => {
            api.limiter.publish_records();
            let accept = req.headers().get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let text = api.limiter.metrics().render(format);
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
            r
        }
        (_, "/healthz" | "/metrics") => failure(&Failure::MethodNotAllowed("GET")),
        _ => failure(&Failure::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/v1/openapi.yaml"), Some(Path::OpenApi));
        assert_eq!(parse_path("/v1/users/bob/sessions"), Some(Path::Sessions("bob")));
        assert_eq!(parse_path("/v1/users/bob/sessions/abc"), Some(Path::Session("bob", "abc")));
        assert_eq!(parse_path("/v1/users/bob/sessions/abc/heartbeat"), Some(Path::Heartbeat("bob", "abc")));
        assert_eq!(
            parse_path("/v1/users/bob/sessions/abc/licence/widevine"),
            Some(Path::Licence("bob", "abc", "widevine"))
        );
        for bad in [
            "/",
            "/v1/users/bob",
            "/v1/users/bob/session",
            "/v1/users/bob/sessions/a/b",
            "/v1/users/bob/sessions/a/heartbeat/x",
            "/v1/openapi.yaml/",
            "/v1/openapi.json",
            "/openapi.yaml",
            "/v1/users/bob/sessions/a/licence",
            "/v1/users/bob/sessions/a/licence/widevine/x",
            "/v1/users/bob/sessions/a/other/widevine",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_and_replace() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), "");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  g1.x.y "));
        assert_eq!(bearer(&h), "g1.x.y");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), "");
        assert_eq!(replace_param(Some("a=1&replace=00000000000000ff")).unwrap(), Some(SessionId(255)));
        assert!(replace_param(Some("replace=zz")).is_err());
        assert_eq!(replace_param(Some("other=1")).unwrap(), None);
    }

    #[test]
    fn the_openapi_document_is_served_whole_and_revalidated_by_its_etag() {
        let r = openapi(&HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/yaml");
        assert_eq!(r.headers()[header::CACHE_CONTROL], OPENAPI_CACHE_CONTROL);
        let etag = r.headers()[header::ETAG].clone();
        assert_eq!(etag.len(), 34, "a quoted 128-bit hash: {etag:?}");
        assert!(OPENAPI_YAML.starts_with("openapi: 3."), "the compiled-in file is the OpenAPI document");
        let body = body_of(r);
        assert_eq!(body, OPENAPI_YAML.as_bytes());

        let asking = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            openapi(&h)
        };
        let tag = etag.to_str().unwrap();
        for current in [tag.to_string(), format!("W/{tag}"), format!("\"x\", {tag}"), "*".into()] {
            let r = asking(&current);
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{current}");
            assert_eq!(r.headers()[header::ETAG], etag);
            assert!(body_of(r).is_empty());
        }
        for stale in ["\"x\"", "", "W/\"0\""] {
            assert_eq!(asking(stale).status(), StatusCode::OK, "{stale}");
        }
    }

    /// A reply's whole body (a `Full` is ready at once).
    fn body_of(r: Reply) -> Vec<u8> {
        let mut body = r.into_body();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(Ok(frame))) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }
}
