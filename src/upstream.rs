//! The licence gate's upstreams (docs/spec.md §10): each tenant's licence
//! server per DRM system, as configured, and the pooled client that
//! forwards a challenge to it within the configured timeouts and size
//! bounds. This module decides nothing about sessions (that is the
//! heartbeat's, in [`crate::limiter`]) and renders no answers (that is
//! [`crate::licence`]'s). The header values it injects are secrets: its
//! `Debug` output, its errors and its logs never show them, nor the
//! upstream URL, which may carry a credential in its query.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::wire::{self, DrmSystem};

/// How long an idle pooled connection to a licence server is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

// ---- the configuration file's shape -----------------------------------------------

/// `[tenants.licence]`: one optional table per DRM system.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenceFile {
    pub widevine: Option<UpstreamFile>,
    pub playready: Option<UpstreamFile>,
    pub fairplay: Option<UpstreamFile>,
    pub clearkey: Option<UpstreamFile>,
}

impl LicenceFile {
    fn tables(&self) -> [(DrmSystem, Option<&UpstreamFile>); 4] {
        [
            (DrmSystem::Widevine, self.widevine.as_ref()),
            (DrmSystem::PlayReady, self.playready.as_ref()),
            (DrmSystem::FairPlay, self.fairplay.as_ref()),
            (DrmSystem::ClearKey, self.clearkey.as_ref()),
        ]
    }
}

/// `[tenants.licence.<system>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub upstream: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub pass_headers: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for UpstreamFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamFile")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("pass_headers", &self.pass_headers)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

// ---- validated settings -------------------------------------------------------------

/// The licence settings in force: timeouts and every tenant's upstreams,
/// validated (URLs, header names and values, CA files read).
#[derive(Clone, Default)]
pub struct LicenceSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub upstreams: HashMap<Box<str>, [Option<UpstreamSpec>; 4], ahash::RandomState>,
}

impl fmt::Debug for LicenceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenceSettings")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("upstreams", &self.names())
            .finish()
    }
}

impl LicenceSettings {
    /// `tenant/system` for every configured upstream, sorted: what the
    /// configuration summary shows (no URL, no header).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .upstreams
            .iter()
            .flat_map(|(t, specs)| {
                DrmSystem::ALL
                    .iter()
                    .filter(|s| specs[**s as usize].is_some())
                    .map(move |s| format!("{t}/{}", s.as_str()))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Adds tenant `tenant`'s tables, validated. Errors name the tenant,
    /// the system and the setting, never a header value.
    pub fn add_tenant(&mut self, tenant: &str, file: &LicenceFile) -> Result<(), String> {
        let mut specs: [Option<UpstreamSpec>; 4] = Default::default();
        for (system, table) in file.tables() {
            if let Some(table) = table {
                let at = format!("tenant {tenant:?} licence.{}", system.as_str());
                specs[system as usize] = Some(UpstreamSpec::parse(table).map_err(|e| format!("{at}: {e}"))?);
            }
        }
        if specs.iter().any(Option::is_some) {
            self.upstreams.insert(tenant.into(), specs);
        }
        Ok(())
    }
}

/// One validated upstream.
#[derive(Clone)]
pub struct UpstreamSpec {
    url: Uri,
    headers: Vec<(HeaderName, Template)>,
    pass_headers: Vec<HeaderName>,
    ca: Option<Ca>,
}

impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("UpstreamSpec")
            .field("headers", &headers)
            .field("pass_headers", &self.pass_headers)
            .field("ca_file", &self.ca.as_ref().map(|c| &c.path))
            .finish_non_exhaustive()
    }
}

/// A CA file's certificates, read when the configuration loads.
#[derive(Clone)]
struct Ca {
    path: PathBuf,
    certs: Arc<[CertificateDer<'static>]>,
}

/// Request headers a tenant may not pass through or inject: they frame the
/// message, route it, or carry the player's own credential.
fn reserved(name: &HeaderName) -> bool {
    hop_by_hop(name)
        || [
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::COOKIE,
            header::EXPECT,
        ]
        .contains(name)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
pub fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

impl UpstreamSpec {
    fn parse(f: &UpstreamFile) -> Result<UpstreamSpec, String> {
        // The URL may hold a credential (a query-string key): errors do not quote it.
        let url: Uri = f.upstream.parse().map_err(|_| "upstream is not a URL".to_owned())?;
        match url.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err("upstream must be an http:// or https:// URL".into()),
        }
        if url.host().is_none_or(str::is_empty) {
            return Err("upstream has no host".into());
        }
        let name = |n: &str, what: &str| {
            let name =
                HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{what} {n:?} is not a header name"))?;
            if reserved(&name) || name.as_str().starts_with("streamcap-") {
                return Err(format!("{what} {n:?} is reserved"));
            }
            Ok(name)
        };
        let mut headers = Vec::with_capacity(f.headers.len());
        for (n, v) in &f.headers {
            let name = name(n, "header")?;
            let value = Template::parse(v).map_err(|e| format!("header {n:?}: {e}"))?;
            headers.push((name, value));
        }
        let pass_headers = f.pass_headers.iter().map(|n| name(n, "pass_headers entry")).collect::<Result<_, _>>()?;
        let ca = match &f.ca_file {
            None => None,
            Some(path) => Some(Ca { path: path.clone(), certs: read_ca(path)?.into() }),
        };
        Ok(UpstreamSpec { url, headers, pass_headers, ca })
    }

    pub fn pass_headers(&self) -> &[HeaderName] {
        &self.pass_headers
    }
}

fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("ca_file {}: no certificate in it", path.display()));
    }
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err(format!("ca_file {}: {bad} certificate(s) could not be used", path.display()));
    }
    Ok(certs)
}

// ---- header templates -------------------------------------------------------------------

/// An injected header's value with its placeholders found: `{tenant}`,
/// `{user}`, `{session_id}`, `{device}`, `{content}`.
#[derive(Clone)]
struct Template(Vec<Part>);

#[derive(Clone)]
enum Part {
    Text(Box<str>),
    Var(Var),
}

#[derive(Clone, Copy)]
enum Var {
    Tenant,
    User,
    SessionId,
    Device,
    Content,
}

impl Template {
    /// Errors never quote the value: it is a secret.
    fn parse(s: &str) -> Result<Template, String> {
        if HeaderValue::from_str(s).is_err() {
            return Err("the value must be printable ASCII".into());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            let var = match &rest[open + 1..open + close] {
                "tenant" => Var::Tenant,
                "user" => Var::User,
                "session_id" => Var::SessionId,
                "device" => Var::Device,
                "content" => Var::Content,
                _ => {
                    return Err(
                        "unknown placeholder (expected {tenant}, {user}, {session_id}, {device}, {content})".into()
                    );
                }
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].into()));
            }
            parts.push(Part::Var(var));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.into()));
        }
        Ok(Template(parts))
    }

    fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        let mut out = Vec::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(v) => {
                    let id;
                    let value = match v {
                        Var::Tenant => vars.tenant,
                        Var::User => vars.user,
                        Var::SessionId => {
                            id = vars.session_id.to_hex();
                            std::str::from_utf8(&id).unwrap_or_default()
                        }
                        Var::Device => vars.device.unwrap_or(""),
                        Var::Content => vars.content.unwrap_or(""),
                    };
                    escape_into(value, &mut out);
                }
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

/// Bytes outside printable ASCII, and `%`, as `%XX`: a content id may hold
/// anything, a header value may not.
fn escape_into(value: &str, out: &mut Vec<u8>) {
    for b in value.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

/// What the placeholders stand for: from the verified lease token.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    pub tenant: &'a str,
    pub user: &'a str,
    pub session_id: wire::SessionId,
    pub device: Option<&'a str>,
    pub content: Option<&'a str>,
}

// ---- the runtime side: clients and forwarding ------------------------------------------------

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Every tenant's upstreams with their clients. Built from
/// [`LicenceSettings`] at start and on reload.
pub struct Upstreams {
    by_tenant: HashMap<Box<str>, [Option<Upstream>; 4], ahash::RandomState>,
    timeout: Duration,
    /// Per system: `Authorization, Content-Type` plus every tenant's `pass_headers`.
    preflight_headers: [HeaderValue; 4],
}

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstreams").field("tenants", &self.by_tenant.len()).finish_non_exhaustive()
    }
}

/// One tenant's licence server for one DRM system.
pub struct Upstream {
    spec: UpstreamSpec,
    client: HttpsClient,
}

/// A licence server's answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// End-to-end headers only: no hop-by-hop, `Set-Cookie`, CORS or `Content-Length`.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why no answer came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection, a broken or oversized answer, or a redirect.
    Unavailable(&'static str),
    /// No whole answer within the configured timeout.
    Timeout,
}

impl Upstreams {
    pub fn new(s: &LicenceSettings) -> Upstreams {
        // One client per trust anchor set: the system's roots, shared by
        // every upstream without a `ca_file`, and one per CA file.
        let mut clients: HashMap<Option<PathBuf>, HttpsClient> = HashMap::new();
        let mut client_for = |ca: &Option<Ca>| {
            let key = ca.as_ref().map(|c| c.path.clone());
            clients.entry(key).or_insert_with(|| client(ca.as_ref(), s.connect_timeout)).clone()
        };
        let mut by_tenant = HashMap::default();
        let mut extra: [Vec<HeaderName>; 4] = Default::default();
        for (tenant, specs) in &s.upstreams {
            let ups: [Option<Upstream>; 4] = std::array::from_fn(|i| {
                let spec = specs[i].clone()?;
                extra[i].extend(spec.pass_headers.iter().cloned());
                Some(Upstream { client: client_for(&spec.ca), spec })
            });
            by_tenant.insert(tenant.clone(), ups);
        }
        let preflight_headers = extra.map(|mut names| {
            names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            names.dedup();
            let mut v = String::from("Authorization, Content-Type");
            for n in names {
                v.push_str(", ");
                v.push_str(n.as_str());
            }
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Authorization, Content-Type"))
        });
        Upstreams { by_tenant, timeout: s.timeout, preflight_headers }
    }

    pub fn get(&self, tenant: &str, system: DrmSystem) -> Option<&Upstream> {
        self.by_tenant.get(tenant)?[system as usize].as_ref()
    }

    /// `Access-Control-Allow-Headers` for a preflight of `system`'s route.
    pub fn preflight_headers(&self, system: DrmSystem) -> &HeaderValue {
        &self.preflight_headers[system as usize]
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A client with its own pool, for one set of trust anchors.
fn client(ca: Option<&Ca>, connect_timeout: Duration) -> HttpsClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let tls = match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(ca.certs.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => match builder.clone().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            Err(e) => {
                tracing::warn!(error = %e, "no usable system root certificates: HTTPS licence upstreams without ca_file will fail");
                builder.with_root_certificates(RootCertStore::empty()).with_no_client_auth()
            }
        },
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE).build(https)
}

impl Upstream {
    /// The request to forward: the body as is, `Content-Type` as sent, the
    /// `pass_headers` the player sent, the injected headers rendered.
    pub fn request(
        &self,
        body: Bytes,
        sent: &HeaderMap,
        vars: &Vars<'_>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.spec.url.clone();
        let h = req.headers_mut();
        if let Some(ct) = sent.get(header::CONTENT_TYPE) {
            h.insert(header::CONTENT_TYPE, ct.clone());
        }
        for name in &self.spec.pass_headers {
            for v in sent.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        for (name, template) in &self.spec.headers {
            let value =
                template.render(vars).ok_or(UpstreamError::Unavailable("an injected header could not be rendered"))?;
            h.insert(name.clone(), value);
        }
        Ok(req)
    }

    /// Sends `req` and reads the answer, all within `timeout`. Runs in the
    /// caller's task; the connection itself runs on the client's own task,
    /// so nothing here blocks another request. Returns the time it took.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> (Result<Answer, UpstreamError>, Duration) {
        let began = Instant::now();
        let client = self.client.clone();
        let exchange = async move {
            let res = client
                .request(req)
                .await
                .map_err(|_| UpstreamError::Unavailable("the licence server could not be reached"))?;
            if res.status().is_redirection() || res.status().is_informational() {
                return Err(UpstreamError::Unavailable("the licence server answered with a redirect"));
            }
            let (parts, body) = res.into_parts();
            if parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > wire::MAX_LICENCE_ANSWER_BYTES as u64)
            {
                return Err(UpstreamError::Unavailable("the licence server's answer is too large"));
            }
            let body = Limited::new(body, wire::MAX_LICENCE_ANSWER_BYTES).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::Unavailable("the licence server's answer is too large")
                } else {
                    UpstreamError::Unavailable("the licence server's answer was cut short")
                }
            })?;
            Ok(Answer { status: parts.status, headers: end_to_end(parts.headers), body: body.to_bytes() })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        };
        (result, began.elapsed())
    }
}

/// The answer's headers a player may see: not hop-by-hop ones (nor those
/// `Connection` names), not `Set-Cookie` (the upstream's cookies are not the
/// player's business: they would be set on streamcap's origin), not CORS
/// (streamcap's own policy governs), not `Content-Length` (the server sets
/// it) and not `Streamcap-*`.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            hop_by_hop(n)
                || *n == header::SET_COOKIE
                || n.as_str() == "set-cookie2"
                || *n == header::CONTENT_LENGTH
                || n.as_str().starts_with("access-control-")
                || n.as_str().starts_with("streamcap-")
        })
        .cloned()
        .collect();
    for n in drop {
        headers.remove(n);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<UpstreamSpec, String> {
        let f: UpstreamFile = toml::from_str(text).map_err(|e| e.to_string())?;
        UpstreamSpec::parse(&f)
    }

    const VARS: Vars<'static> = Vars {
        tenant: "acme",
        user: "alice",
        session_id: wire::SessionId(0xab),
        device: Some("tv 1"),
        content: Some("film/é%"),
    };

    #[test]
    fn templates_fill_placeholders_and_escape_what_a_header_cannot_hold() {
        let t = Template::parse("k={tenant}:{user}:{session_id}:{device}:{content}:{x").unwrap();
        assert_eq!(t.render(&VARS).unwrap(), "k=acme:alice:00000000000000ab:tv 1:film/%C3%A9%25:{x");
        let none = Vars { device: None, content: None, ..VARS };
        assert_eq!(Template::parse("{device}-{content}").unwrap().render(&none).unwrap(), "-");
        assert_eq!(Template::parse("plain").unwrap().render(&VARS).unwrap(), "plain");
        assert!(Template::parse("{password}").is_err());
        assert!(Template::parse("a\nb").is_err());
    }

    #[test]
    fn bad_tables_are_refused_without_quoting_secrets() {
        assert!(spec("upstream = \"http://127.0.0.1:1/x\"").is_ok());
        assert!(spec("upstream = \"https://drm.example/x?key=1\"").is_ok());
        for (bad, expect) in [
            ("upstream = \"ftp://h/x\"", "http"),
            ("upstream = \"/relative\"", "http"),
            ("upstream = \"http://h/x\"\nheaders = { \"bad name\" = \"v\" }", "header name"),
            ("upstream = \"http://h/x\"\nheaders = { Host = \"v\" }", "reserved"),
            ("upstream = \"http://h/x\"\npass_headers = [\"Authorization\"]", "reserved"),
            ("upstream = \"http://h/x\"\npass_headers = [\"Connection\"]", "reserved"),
            ("upstream = \"http://h/x\"\nheaders = { X-K = \"s3cret{nope}\" }", "placeholder"),
            ("upstream = \"http://h/x\"\nca_file = \"/nonexistent/ca.pem\"", "ca_file"),
            ("upstream = \"http://h/x\"\nurl = \"x\"", "unknown field"),
        ] {
            let err = spec(bad).err().unwrap_or_else(|| panic!("accepted: {bad}"));
            assert!(err.contains(expect), "{bad}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = spec("upstream = \"not a url at all with key=s3cret\"").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn requests_carry_the_body_content_type_passed_and_injected_headers() {
        let s = spec(
            "upstream = \"http://127.0.0.1:1/lic\"\npass_headers = [\"SOAPAction\"]\n\
             headers = { X-Auth = \"t-{tenant}-{user}\" }",
        )
        .unwrap();
        let settings = LicenceSettings {
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            upstreams: [("acme".into(), [None, Some(s), None, None])].into_iter().collect(),
        };
        let ups = Upstreams::new(&settings);
        assert!(ups.get("acme", DrmSystem::Widevine).is_none());
        assert!(ups.get("other", DrmSystem::PlayReady).is_none());
        assert_eq!(ups.preflight_headers(DrmSystem::PlayReady), "Authorization, Content-Type, soapaction");
        assert_eq!(ups.preflight_headers(DrmSystem::Widevine), "Authorization, Content-Type");
        let up = ups.get("acme", DrmSystem::PlayReady).unwrap();
        let mut sent = HeaderMap::new();
        sent.insert("soapaction", HeaderValue::from_static("\"urn:acquire\""));
        sent.insert("x-other", HeaderValue::from_static("no"));
        sent.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer lease"));
        let req = up.request(Bytes::from_static(b"\x00\xff"), &sent, &VARS).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:1/lic");
        let h = req.headers();
        assert_eq!(h.get("soapaction").unwrap(), "\"urn:acquire\"");
        assert_eq!(h.get("x-auth").unwrap(), "t-acme-alice");
        assert!(h.get(header::CONTENT_TYPE).is_none(), "absent stays absent");
        assert!(h.get("x-other").is_none() && h.get(header::AUTHORIZATION).is_none());
        let names = settings.names();
        assert_eq!(names, vec!["acme/playready".to_owned()]);
        assert!(!format!("{settings:?}").contains("t-{tenant}"));
    }

    #[test]
    fn answers_lose_hop_by_hop_cookies_and_cors() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("set-cookie", "a=1"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("access-control-allow-origin", "*"),
            ("content-length", "3"),
            ("streamcap-token", "forged"),
            ("content-type", "application/octet-stream"),
            ("x-dt-resp-code", "0"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let kept = end_to_end(h);
        let mut names: Vec<&str> = kept.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-dt-resp-code"]);
    }
}
