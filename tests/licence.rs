//! The licence gate (docs/spec.md §10) against a local licence server that
//! records every request it receives and can be told to misbehave: what is
//! forwarded and how, what is refused before it reaches the upstream, and
//! what a dead, lying, slow or redirecting upstream gets the player.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

// ---- a licence server that records what reached it ----------------------------------

/// What the upstream does with each request.
#[derive(Clone, Debug)]
enum Mode {
    /// `200`, `Content-Type: application/octet-stream`, [`LICENCE`], plus a
    /// cookie, hop-by-hop headers and a header of its own.
    Licence,
    /// This status, `Content-Type: application/json` and this body.
    Status(u16, &'static str),
    /// `302` to this URL.
    Redirect(String),
    /// A `200` whose body is 2 MiB: with `Content-Length` (true) or until the connection closes.
    Oversized(bool),
    /// `Content-Length: 1000`, 10 bytes, then the connection closes.
    Truncated,
    /// Bytes that are not HTTP, then the connection closes.
    Garbage,
    /// Reads the request and never answers.
    Hang,
}

/// The licence the upstream answers with: binary, every byte value.
const LICENCE: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = (255 - i) as u8;
        i += 1;
    }
    b
};

#[derive(Clone, Debug)]
struct Received {
    path: String,
    /// Names lowercased, in the order received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A small HTTP/1.1 server over a plain socket (it must also be able to
/// lie), on 127.0.0.1:0, in its own runtime.
struct Upstream {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    fn start(mode: Mode) -> Upstream {
        Upstream::start_with(mode, None)
    }

    /// An HTTPS upstream with the certificate in tests/data/licence-tls.
    fn start_tls(mode: Mode) -> Upstream {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/licence-tls");
        let certs =
            CertificateDer::pem_file_iter(format!("{dir}/server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Upstream::start_with(mode, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    fn start_with(mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (m, r, c) = (mode.clone(), received.clone(), connections.clone());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                let (m, r) = (m.clone(), r.clone());
                match tls.clone() {
                    None => drop(tokio::spawn(serve(stream, m, r))),
                    Some(tls) => drop(tokio::spawn(async move {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve(stream, m, r).await;
                        }
                    })),
                }
            }
        });
        Upstream { addr, mode, received, connections, _runtime: runtime }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Vec<Received>>>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 16 * 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let path = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize =
            headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 16 * 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        received.lock().unwrap().push(Received { path, headers, body });
        let mode = mode.lock().unwrap().clone();
        let head = |status: &str, extra: &str, len: usize| {
            format!("HTTP/1.1 {status}\r\n{extra}content-length: {len}\r\n\r\n").into_bytes()
        };
        let close = match mode {
            Mode::Licence => {
                let mut out = head(
                    "200 OK",
                    "content-type: application/octet-stream\r\nset-cookie: upstream=1; Path=/\r\n\
                     keep-alive: timeout=5\r\nx-licence-server: ok\r\n",
                    LICENCE.len(),
                );
                out.extend_from_slice(&LICENCE);
                s.write_all(&out).await.is_err()
            }
            Mode::Status(code, text) => {
                let mut out = head(&format!("{code} X"), "content-type: application/json\r\n", text.len());
                out.extend_from_slice(text.as_bytes());
                s.write_all(&out).await.is_err()
            }
            Mode::Redirect(to) => s.write_all(&head("302 Found", &format!("location: {to}\r\n"), 0)).await.is_err(),
            Mode::Oversized(with_length) => {
                let big = vec![b'x'; 2 * 1024 * 1024];
                let head = if with_length {
                    head("200 OK", "content-type: application/octet-stream\r\n", big.len())
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n".to_vec()
                };
                let _ = s.write_all(&head).await;
                let _ = s.write_all(&big).await;
                true
            }
            Mode::Truncated => {
                let _ = s.write_all(&head("200 OK", "content-type: application/octet-stream\r\n", 1000)).await;
                let _ = s.write_all(&[7u8; 10]).await;
                true
            }
            Mode::Garbage => {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\nthis is not http at all\r\n\r\n").await;
                true
            }
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                true
            }
        };
        if close {
            let _ = s.shutdown().await;
            return;
        }
    }
}

// ---- the server in front of it ----------------------------------------------------------

/// The injected credential; it must never reach a player, an error or a log.
const VENDOR_SECRET: &str = "vendor-s3cret-7f3a";

/// A config with tenant `acme` whose licence tables are `tables` (TOML,
/// without the `[tenants.licence.*]` headers' tenant part), plus `extra` top-level lines.
fn config_text(extra: &str, tables: &str) -> String {
    format!(
        "{extra}\n[[server_keys]]\nkid = \"s1\"\nsecret = \"{KEY_S1}\"\n\n\
         [[tenants]]\nid = \"acme\"\ndefault_policy = \"reject_new\"\nkeys = [{{ kid = \"k1\", secret = \"{KEY_K1}\" }}]\n\
         {tables}\n"
    )
}

/// The usual tables: ClearKey to `/clearkey` with an injected credential,
/// PlayReady to `/playready` passing `SOAPAction`; no Widevine.
fn tables(up: &Upstream) -> String {
    format!(
        "[tenants.licence.clearkey]\nupstream = \"{}\"\n\
         headers = {{ \"X-Vendor-Auth\" = \"{VENDOR_SECRET}\", \"X-Vendor-Custom\" = \"t={{tenant}};u={{user}};s={{session_id}};d={{device}};c={{content}}\" }}\n\
         [tenants.licence.playready]\nupstream = \"{}\"\npass_headers = [\"SOAPAction\"]\n\
         headers = {{ \"X-Vendor-Auth\" = \"{VENDOR_SECRET}\" }}\n",
        up.url("/clearkey"),
        up.url("/playready")
    )
}

struct Gate {
    server: TestServer,
    _dir: TempDir,
}

fn gate_with(extra: &str, tables: &str) -> Gate {
    let dir = TempDir::new("licence");
    let path = dir.path("streamcap.toml");
    std::fs::write(&path, config_text(extra, tables)).unwrap();
    Gate { server: TestServer::start(file_config(&path)), _dir: dir }
}

fn gate(up: &Upstream) -> Gate {
    gate_with("licence_timeout_ms = 1000\nlicence_connect_timeout_ms = 500", &tables(up))
}

fn acme_grant(user: &str, limit: i64) -> String {
    acme_claims(user, limit).mint(&secret(KEY_K1))
}

fn start(api: &Client, user: &str) -> Session {
    let claims =
        streamcap::grant::GrantClaims { device: some("tv-1"), content: some("film/42 é"), ..acme_claims(user, 1) };
    api.start_ok(user, &claims.mint(&secret(KEY_K1)))
}

fn licence_path(s: &Session, system: &str) -> String {
    format!("/v1/users/{}/sessions/{}/licence/{system}", s.user, s.id)
}

/// A licence request with the session's token, from a web player's page
/// (its `Origin` named, as a browser does; it is never forwarded).
fn licence(api: &Client, s: &Session, system: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut with_origin = vec![("Origin", "https://player.example")];
    with_origin.extend_from_slice(headers);
    api.raw(&request_bytes("POST", &licence_path(s, system), Some(&s.token), &with_origin, body))
        .expect("licence request")
}

/// Asserts the renewed-lease headers and that the token works; keeps it.
#[track_caller]
fn assert_renewed(api: &Client, s: &mut Session, r: &Response) {
    let token = r.header("streamcap-token").unwrap_or_else(|| panic!("no Streamcap-Token on {}", r.status));
    let expires: u64 = r.header("streamcap-expires-at").expect("Streamcap-Expires-At").parse().unwrap();
    assert!(expires >= now_secs() as u64, "expires in the future");
    assert_eq!(r.header("streamcap-poll-after"), Some("30"));
    let exposed = r.header("access-control-expose-headers").unwrap_or_default();
    for h in ["Retry-After", "Streamcap-Token", "Streamcap-Expires-At", "Streamcap-Poll-After"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed:?}");
    }
    s.token = token.to_owned();
    api.beat_ok(s);
}

/// Asserts an error answer and that it names no secret.
#[track_caller]
fn assert_error(r: &Response, status: u16, code: &str) {
    r.expect_error(status, code);
    assert!(!r.text().contains(VENDOR_SECRET) && !r.text().contains("127.0.0.1"), "{}", r.text());
    assert!(r.headers.iter().all(|(_, v)| !v.contains(VENDOR_SECRET)));
}

// ---- forwarding -----------------------------------------------------------------------------

#[test]
fn a_licence_request_is_forwarded_byte_for_byte_and_the_licence_comes_back_untouched() {
    let up = Upstream::start(Mode::Licence);
    let g = gate(&up);
    let api = g.server.api;
    let mut s = start(&api, &unique("viewer"));
    let challenge: Vec<u8> = (0..=255u8).chain(b"\r\n\r\n\0".iter().copied()).collect();

    // No Content-Type sent: none forwarded.
    let r = licence(&api, &s, "clearkey", &[("X-Not-Passed", "1")], &challenge);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, LICENCE, "the licence comes back byte for byte");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-licence-server"), Some("ok"), "end-to-end headers come back");
    assert_eq!(r.header("set-cookie"), None, "the upstream's cookies are dropped");
    assert_eq!(r.header("keep-alive"), None, "hop-by-hop headers are dropped");
    assert!(r.headers.iter().all(|(_, v)| !v.contains(VENDOR_SECRET)));
    let old_token = s.token.clone();
    assert_renewed(&api, &mut s, &r);
    assert_ne!(s.token, old_token);

    let got = up.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.path, "/clearkey");
    assert_eq!(req.body, challenge, "the challenge arrives byte for byte");
    assert_eq!(req.header("content-type"), None, "absent Content-Type stays absent");
    assert_eq!(req.header("x-vendor-auth"), Some(VENDOR_SECRET));
    let custom = format!("t=acme;u={};s={};d=tv-1;c=film/42 %C3%A9", s.user, s.id);
    assert_eq!(req.header("x-vendor-custom"), Some(custom.as_str()), "placeholders filled");
    assert_eq!(req.header("authorization"), None, "the lease token stays with streamcap");
    assert_eq!(req.header("x-not-passed"), None);

    // Content-Type as sent, exactly.
    let r = licence(&api, &s, "clearkey", &[("Content-Type", "application/JSON; charset=x")], b"{\"kids\":[]}");
    assert_eq!(r.status, 200);
    let got = up.received();
    assert_eq!(got[1].header("content-type"), Some("application/JSON; charset=x"));
    assert_eq!(got[1].body, b"{\"kids\":[]}");
    assert_eq!(up.connections.load(Ordering::Relaxed), 1, "the connection to the upstream is kept alive and reused");
}

#[test]
fn pass_headers_reach_the_upstream_and_its_status_comes_back() {
    let up = Upstream::start(Mode::Status(403, r#"{"vendor":"denied"}"#));
    let g = gate(&up);
    let api = g.server.api;
    let mut s = start(&api, &unique("pr"));
    let soap = b"<?xml version=\"1.0\"?><soap:Envelope>challenge</soap:Envelope>";
    let r = licence(
        &api,
        &s,
        "playready",
        &[
            ("Content-Type", "text/xml; charset=utf-8"),
            ("SOAPAction", "\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\""),
            ("X-Other", "no"),
        ],
        soap,
    );
    assert_eq!(r.status, 403, "the upstream's status comes back untouched");
    assert_eq!(r.body, br#"{"vendor":"denied"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_renewed(&api, &mut s, &r);
    let req = &up.received()[0];
    assert_eq!(req.path, "/playready");
    assert_eq!(req.header("soapaction"), Some("\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\""));
    assert_eq!(req.header("content-type"), Some("text/xml; charset=utf-8"));
    assert_eq!(req.header("x-other"), None, "only pass_headers are passed");
    assert_eq!(req.body, soap);
    let text = g.server.metrics();
    assert_eq!(
        metric(&text, r#"streamcap_licence_requests_total{system="playready",outcome="forwarded_4xx"}"#),
        Some(1.0)
    );
    assert_eq!(metric(&text, r#"streamcap_licence_upstream_seconds_count{system="playready"}"#), Some(1.0));
    // Both formats of /metrics parse with the licence families in them.
    let scrape = |accept: &str| {
        let headers = [("Accept", accept)];
        Client { addr: g.server.admin }.raw(&request_bytes("GET", "/metrics", None, &headers, b"")).unwrap().text()
    };
    let om = scrape("application/openmetrics-text");
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&om).unwrap_or_else(|e| panic!("{e:?}\n{om}"));
    assert_eq!(
        parsed.families["streamcap_licence_upstream_seconds"].family_type,
        openmetrics_parser::OpenMetricsType::Histogram
    );
    assert!(parsed.families.contains_key("streamcap_licence_requests"));
    let classic = scrape("text/plain");
    let parsed =
        openmetrics_parser::prometheus::parse_prometheus(&classic).unwrap_or_else(|e| panic!("{e:?}\n{classic}"));
    assert!(parsed.families.contains_key("streamcap_licence_upstream_seconds"), "{classic}");
}

// ---- refusals ---------------------------------------------------------------------------------

#[test]
fn refused_requests_never_reach_the_upstream() {
    let up = Upstream::start(Mode::Licence);
    let g = gate(&up);
    let api = g.server.api;
    let user = unique("refused");
    let s = start(&api, &user);

    // 401: a forged token, and none at all.
    let forged = Session { token: flip(&s.token, 20), ..s.clone() };
    assert_error(&licence(&api, &forged, "clearkey", &[], b"x"), 401, "invalid_token");
    let r = api.raw(&request_bytes("POST", &licence_path(&s, "clearkey"), None, &[], b"x")).unwrap();
    assert_error(&r, 401, "invalid_token");
    // 403: the token of another user's session.
    let other = Session { user: unique("other"), ..s.clone() };
    assert_error(&licence(&api, &other, "clearkey", &[], b"x"), 403, "forbidden");
    // 404: a system the tenant has no upstream for, and one that does not exist.
    assert_error(&licence(&api, &s, "widevine", &[], b"x"), 404, "not_found");
    assert_error(&licence(&api, &s, "fairplay", &[], b"x"), 404, "not_found");
    assert_error(&licence(&api, &s, "primetime", &[], b"x"), 404, "not_found");
    // 413: over 64 KiB, announced or not.
    let big = vec![0u8; 64 * 1024 + 1];
    assert_error(&licence(&api, &s, "clearkey", &[], &big), 413, "payload_too_large");
    let mut chunked =
        request_bytes("POST", &licence_path(&s, "clearkey"), Some(&s.token), &[("Transfer-Encoding", "chunked")], b"");
    chunked.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_error(&api.raw(&chunked).unwrap(), 413, "payload_too_large");
    // Exactly 64 KiB is accepted (and forwarded: checked last).
    // 410: a kicked session, then an ended one.
    let kicked = s.clone();
    api.stop(&user, &s.id, &acme_grant(&user, 1)).expect(204);
    let r = licence(&api, &kicked, "clearkey", &[], b"x");
    assert_error(&r, 410, "session_stopped");
    assert_eq!(r.json()["reason"], "kicked");
    assert_eq!(r.header("streamcap-token"), None, "a refused request renews nothing");
    let ended = start(&api, &user);
    api.stop(&user, &ended.id, &ended.token).expect(204);
    let r = licence(&api, &ended, "clearkey", &[], b"x");
    assert_error(&r, 410, "session_stopped");
    assert_eq!(r.json()["reason"], "ended");
    // Over the limit: a second session on a limit of 1 evicts nothing under
    // reject_new, so replace the first and license the replaced one.
    let first = start(&api, &user);
    api.start_replacing(&user, &acme_grant(&user, 1), &first.id).expect(201);
    let r = licence(&api, &first, "clearkey", &[], b"x");
    assert_error(&r, 410, "session_stopped");
    assert_eq!(r.json()["reason"], "replaced");

    assert!(up.received().is_empty(), "refused requests reached the upstream: {:?}", up.received());
    assert_eq!(up.connections.load(Ordering::Relaxed), 0);

    let text = g.server.metrics();
    for (outcome, n) in [
        ("refused_invalid_token", 2.0),
        ("refused_forbidden", 1.0),
        ("refused_payload_too_large", 2.0),
        ("refused_kicked", 1.0),
        ("refused_ended", 1.0),
        ("refused_replaced", 1.0),
    ] {
        let series = format!(r#"streamcap_licence_requests_total{{system="clearkey",outcome="{outcome}"}}"#);
        assert_eq!(metric(&text, &series), Some(n), "{series}");
    }
    for system in ["widevine", "fairplay"] {
        let series = format!(r#"streamcap_licence_requests_total{{system="{system}",outcome="refused_not_found"}}"#);
        assert_eq!(metric(&text, &series), Some(1.0), "{series}");
    }

    let live = start(&api, &unique("edge"));
    let r = licence(&api, &live, "clearkey", &[], &big[..64 * 1024]);
    assert_eq!(r.status, 200, "exactly 64 KiB is forwarded");
    assert_eq!(up.received().len(), 1);
    assert_eq!(up.received()[0].body.len(), 64 * 1024);
}

#[test]
fn other_methods_and_the_preflight() {
    let up = Upstream::start(Mode::Licence);
    let g = gate(&up);
    let api = g.server.api;
    let s = start(&api, &unique("cors"));
    let preflight = |system: &str| {
        api.raw(&request_bytes(
            "OPTIONS",
            &licence_path(&s, system),
            None,
            &[
                ("Origin", "https://player.example"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, soapaction"),
            ],
            b"",
        ))
        .unwrap()
    };
    let r = preflight("playready");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("Authorization, Content-Type, soapaction"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = preflight("clearkey");
    assert_eq!(r.header("access-control-allow-headers"), Some("Authorization, Content-Type"));
    let r = api.call("GET", &licence_path(&s, "clearkey"), Some(&s.token));
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    assert!(up.received().is_empty());
}

#[test]
fn dev_mode_has_no_licence_upstreams() {
    let server = TestServer::dev();
    let user = unique("dev");
    let s = server.api.start_ok(&user, &grant(&user, 1));
    let r = licence(&server.api, &s, "clearkey", &[], b"x");
    assert_error(&r, 404, "not_found");
}

// ---- faults -------------------------------------------------------------------------------------

#[test]
fn a_broken_upstream_gets_502_with_the_renewed_lease_and_no_secret() {
    let up = Upstream::start(Mode::Garbage);
    let elsewhere = Upstream::start(Mode::Licence);
    let g = gate(&up);
    let api = g.server.api;
    let mut s = start(&api, &unique("broken"));
    for mode in [
        Mode::Garbage,
        Mode::Oversized(true),
        Mode::Oversized(false),
        Mode::Truncated,
        Mode::Redirect(elsewhere.url("/stolen")),
        Mode::Status(301, ""),
    ] {
        up.set(mode.clone());
        let r = licence(&api, &s, "clearkey", &[], b"challenge");
        assert_error(&r, 502, "upstream_unavailable");
        assert_renewed(&api, &mut s, &r);
    }
    assert!(elsewhere.received().is_empty(), "a redirect was followed");
    assert_eq!(up.received().len(), 6);
    let text = g.server.metrics();
    assert_eq!(
        metric(&text, r#"streamcap_licence_requests_total{system="clearkey",outcome="upstream_unavailable"}"#),
        Some(6.0)
    );
    // The server still serves: a good answer after all that.
    up.set(Mode::Licence);
    let r = licence(&api, &s, "clearkey", &[], b"challenge");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, LICENCE);
}

#[test]
fn a_dead_upstream_gets_502() {
    let port = free_port();
    let tables = format!(
        "[tenants.licence.clearkey]\nupstream = \"http://127.0.0.1:{port}/nobody\"\n\
         headers = {{ \"X-Vendor-Auth\" = \"{VENDOR_SECRET}\" }}\n"
    );
    let g = gate_with("licence_connect_timeout_ms = 500", &tables);
    let api = g.server.api;
    let mut s = start(&api, &unique("dead"));
    let r = licence(&api, &s, "clearkey", &[], b"x");
    assert_error(&r, 502, "upstream_unavailable");
    assert_renewed(&api, &mut s, &r);
}

#[test]
fn a_hung_upstream_gets_504_and_never_stalls_other_users_heartbeats() {
    let up = Upstream::start(Mode::Hang);
    let g = gate(&up); // licence_timeout_ms = 1000
    let api = g.server.api;
    let mut s = start(&api, &unique("hung"));
    let mut other = start(&api, &unique("bystander"));

    let path = licence_path(&s, "clearkey");
    let token = s.token.clone();
    let waiting = std::thread::spawn(move || {
        let began = Instant::now();
        let origin = [("Origin", "https://player.example")];
        let r = api.raw(&request_bytes("POST", &path, Some(&token), &origin, b"challenge")).unwrap();
        (r, began.elapsed())
    });
    // Once the upstream holds the request, heartbeats and starts go on.
    assert!(eventually(Duration::from_secs(5), || (!up.received().is_empty()).then_some(())).is_some());
    for _ in 0..5 {
        let began = Instant::now();
        api.beat_ok(&mut other);
        assert!(began.elapsed() < Duration::from_millis(500), "a heartbeat waited {:?}", began.elapsed());
    }
    let began = Instant::now();
    start(&api, &unique("newcomer"));
    assert!(began.elapsed() < Duration::from_millis(500));
    assert!(!waiting.is_finished(), "the licence request is still waiting on the upstream");

    let (r, took) = waiting.join().unwrap();
    assert_error(&r, 504, "upstream_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    assert_renewed(&api, &mut s, &r);
    let text = g.server.metrics();
    assert_eq!(
        metric(&text, r#"streamcap_licence_requests_total{system="clearkey",outcome="upstream_timeout"}"#),
        Some(1.0)
    );
}

#[test]
fn many_waiting_licence_requests_hold_no_worker() {
    let up = Upstream::start(Mode::Hang);
    let g = gate_with("licence_timeout_ms = 3000", &tables(&up));
    let api = g.server.api;
    // More waiting requests than the server has worker threads (2).
    let waiting: Vec<_> = (0..16)
        .map(|_| {
            let s = start(&api, &unique("queue"));
            std::thread::spawn(move || licence(&api, &s, "clearkey", &[], b"c").status)
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || (up.received().len() == 16).then_some(())).is_some());
    let mut other = start(&api, &unique("bystander"));
    let began = Instant::now();
    api.beat_ok(&mut other);
    assert!(began.elapsed() < Duration::from_millis(500), "a heartbeat waited {:?}", began.elapsed());
    for w in waiting {
        assert_eq!(w.join().unwrap(), 504);
    }
}

#[test]
fn https_upstreams_are_verified_against_the_configured_ca() {
    let up = Upstream::start_tls(Mode::Licence);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/licence-tls");
    let url = format!("https://localhost:{}/clearkey", up.addr.port());
    let table = |system: &str, ca: &str| format!("[tenants.licence.{system}]\nupstream = \"{url}\"\n{ca}\n");
    let tables = [
        table("clearkey", &format!("ca_file = \"{dir}/ca.pem\"")),
        table("widevine", &format!("ca_file = \"{dir}/other-ca.pem\"")),
        table("playready", ""),
    ]
    .concat();
    let g = gate_with("", &tables);
    let api = g.server.api;
    let mut s = start(&api, &unique("tls"));
    let r = licence(&api, &s, "clearkey", &[], b"over tls");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, LICENCE);
    assert_renewed(&api, &mut s, &r);
    assert_eq!(up.received().len(), 1);
    assert_eq!(up.received()[0].body, b"over tls");
    // Another CA, and the system's roots: the certificate is not trusted.
    for system in ["widevine", "playready"] {
        assert_error(&licence(&api, &s, system, &[], b"x"), 502, "upstream_unavailable");
    }
    assert_eq!(up.received().len(), 1, "nothing was sent over an untrusted connection");
}

// ---- the real binary: reload and logs -------------------------------------------------------------

#[test]
fn sighup_applies_licence_tables_and_no_secret_reaches_the_log() {
    let up = Upstream::start(Mode::Licence);
    let dir = TempDir::new("licence-reload");
    let path = dir.path("streamcap.toml");
    std::fs::write(&path, config_text("", "")).unwrap();
    let node = Binary::spawn(&Binary::args(&path, 0));
    let mut s = start(&node.api, &unique("reload"));
    assert_error(&licence(&node.api, &s, "clearkey", &[], b"x"), 404, "not_found");

    // A query-string credential, as some vendors use, must not be logged either.
    let query_key = "qk-5ecret-91";
    let tables = format!(
        "[tenants.licence.clearkey]\nupstream = \"{}?key={query_key}\"\n\
         headers = {{ \"X-Vendor-Auth\" = \"{VENDOR_SECRET}\" }}\n",
        up.url("/clearkey")
    );
    std::fs::write(&path, config_text("", &tables)).unwrap();
    node.signal("HUP");
    let ok = eventually(Duration::from_secs(5), || {
        let r = licence(&node.api, &s, "clearkey", &[], b"x");
        (r.status == 200).then_some(r)
    })
    .expect("the licence table is in force after SIGHUP");
    assert_eq!(ok.body, LICENCE);
    assert_renewed(&node.api, &mut s, &ok);
    assert_eq!(up.received().last().unwrap().path, format!("/clearkey?key={query_key}"));

    // Failures are logged, without the credential or the URL.
    up.set(Mode::Garbage);
    assert_error(&licence(&node.api, &s, "clearkey", &[], b"x"), 502, "upstream_unavailable");
    // A table that does not load is refused, naming no secret.
    let bad = tables.replace("X-Vendor-Auth", "X Vendor Auth");
    std::fs::write(&path, config_text("", &bad)).unwrap();
    node.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || node.log().contains("reload refused").then_some(())).is_some());
    up.set(Mode::Licence);
    assert_eq!(licence(&node.api, &s, "clearkey", &[], b"x").status, 200, "the previous tables stay in force");

    let log = node.log();
    assert!(log.contains("licence upstream failed"), "{log}");
    assert!(log.contains("acme/clearkey"), "the summary names the table: {log}");
    for secret in [VENDOR_SECRET, query_key] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    let mut help = String::new();
    std::process::Command::new(env!("CARGO_BIN_EXE_streamcap"))
        .args(["serve", "--help"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut help)
        .unwrap();
    assert!(help.contains("--licence-timeout-ms") && help.contains("--licence-connect-timeout-ms"), "{help}");
}
