//! The licence gate's route (docs/spec.md §10):
//! `POST /v1/users/{user}/sessions/{id}/licence/{system}`. A licence request
//! is a heartbeat ([`crate::limiter::Limiter::heartbeat_then`]); only a
//! session that may play has its challenge forwarded, by
//! [`crate::upstream`], and the licence server's answer comes back with the
//! renewed lease in `Streamcap-*` headers. The judging is synchronous and
//! done before the first `.await` on the upstream: no map guard is held
//! while a licence server is waited on. Errors are rendered by
//! [`crate::http::failure`], like every other route's. Nothing here logs a
//! header value or the upstream URL.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::clock::now_ms;
use crate::http::{self as adapter, Api, Edge, Failure, Reply, failure};
use crate::limiter::{Error, Issued};
use crate::metrics::Route;
use crate::upstream::{Answer, UpstreamError, Vars};
use crate::wire::{self, DrmSystem, StopReason};

/// Serves one request on the licence route, whatever its method.
pub async fn serve(api: &Api, parts: &Parts, body: Incoming, user: &str, id: &str, system: &str) -> Reply {
    // An owned copy: the upstream may be waited on for seconds, and a reload
    // meanwhile must neither wait for this request nor change it midway.
    let edge = api.edge.load_full();
    let system = DrmSystem::parse(system);
    let read = adapter::read_body(edge.header_timeout, wire::MAX_LICENCE_BODY_BYTES, &parts.headers, body).await;
    let mut reply = match read {
        Err(f) => {
            if parts.method == Method::POST {
                count(api, system, refused(&f));
            }
            failure(&f)
        }
        Ok(body) => match (&parts.method, system) {
            (&Method::OPTIONS, _) => preflight(system.map(|s| edge.licence.preflight_headers(s).clone())),
            (&Method::POST, Some(system)) => gate(api, &edge, parts, user, id, system, body).await,
            (&Method::POST, None) => failure(&Failure::NotFound),
            _ => failure(&Failure::MethodNotAllowed("POST, OPTIONS")),
        },
    };
    edge.cors.allow(&parts.headers, reply.headers_mut(), wire::EXPOSED_LICENCE_HEADERS);
    api.limiter.metrics().request(Route::Licence, reply.status().as_u16());
    reply
}

/// Judge as a heartbeat, then forward: the refused never reach the upstream.
async fn gate(api: &Api, edge: &Edge, parts: &Parts, user: &str, id: &str, system: DrmSystem, body: Bytes) -> Reply {
    let metrics = api.limiter.metrics();
    let judged = adapter::checked_user(user).and_then(|user| {
        let id = adapter::session_id(id)?;
        let token = adapter::bearer(&parts.headers);
        let upstreams = &edge.licence;
        let judged = api.limiter.heartbeat_then(user, id, token, now_ms(), |c| {
            let upstream = upstreams.get(c.tenant, system).ok_or(Error::NoLicenceUpstream)?;
            let vars =
                Vars { tenant: c.tenant, user: c.user, session_id: c.session, device: c.device, content: c.content };
            Ok((upstream, upstream.request(body, &parts.headers, &vars)))
        })?;
        Ok(judged)
    });
    let (renewed, (upstream, request)) = match judged {
        Ok(j) => j,
        Err(f) => {
            count(api, Some(system), refused(&f));
            return failure(&f);
        }
    };
    let result = match request {
        Ok(req) => {
            let (result, took) = upstream.send(req, edge.licence.timeout()).await;
            metrics.licence_upstream(system, took);
            result
        }
        Err(e) => Err(e),
    };
    let mut reply = match result {
        Ok(answer) => {
            count(api, Some(system), forwarded(answer.status));
            relay(answer)
        }
        Err(e) => {
            log_failure(system, e);
            count(
                api,
                Some(system),
                match e {
                    UpstreamError::Unavailable(_) => Outcome::UpstreamUnavailable,
                    UpstreamError::Timeout => Outcome::UpstreamTimeout,
                },
            );
            failure(&Failure::Upstream(e))
        }
    };
    lease_headers(&mut reply, &renewed);
    reply
}

/// Logs an upstream failure, at most once a second per DRM system (a dead
/// licence server under load would otherwise write a line per request; the
/// metrics count every one). The kind only: a client error's text could
/// name the upstream's address.
fn log_failure(system: DrmSystem, e: UpstreamError) {
    static LAST: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
    let second = now_ms() / 1000;
    if LAST[system as usize].swap(second, Relaxed) != second {
        tracing::warn!(system = system.as_str(), error = ?e, "licence upstream failed (logged at most once a second)");
    }
}

/// The licence server's answer as the player gets it: status, end-to-end
/// headers (`Content-Type` among them) and body untouched.
fn relay(answer: Answer) -> Reply {
    let mut r = Response::new(Full::new(answer.body));
    *r.status_mut() = answer.status;
    *r.headers_mut() = answer.headers;
    r
}

/// The renewed lease: on every answer after a successful judging, 502 and
/// 504 included (the player retries with it).
fn lease_headers(reply: &mut Reply, r: &Issued) {
    let h = reply.headers_mut();
    let mut int = itoa::Buffer::new();
    // A lease token is `[A-Za-z0-9._-]` by construction; numbers are digits.
    if let Ok(token) = HeaderValue::from_str(&r.token) {
        h.insert(wire::HEADER_TOKEN, token);
    }
    h.insert(wire::HEADER_EXPIRES_AT, HeaderValue::from(wire::unix_secs(r.expires_ms)));
    h.insert(wire::HEADER_POLL_AFTER, HeaderValue::from_str(int.format(r.poll_after)).unwrap_or(HeaderValue::from(0)));
}

fn preflight(allow_headers: Option<HeaderValue>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        allow_headers.unwrap_or(HeaderValue::from_static("Authorization, Content-Type")),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}

// ---- metrics -------------------------------------------------------------------------------

/// What became of a licence request (`outcome` in
/// `streamcap_licence_requests_total`). A 3xx never comes back: it is
/// `upstream_unavailable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded2xx,
    Forwarded4xx,
    Forwarded5xx,
    RefusedInvalidToken,
    RefusedForbidden,
    RefusedNotFound,
    RefusedPayloadTooLarge,
    RefusedBadRequest,
    RefusedOverCapacity,
    Refused(StopReason),
    UpstreamUnavailable,
    UpstreamTimeout,
}

const OUTCOMES: [&str; 16] = [
    "forwarded_2xx",
    "forwarded_4xx",
    "forwarded_5xx",
    "refused_invalid_token",
    "refused_forbidden",
    "refused_not_found",
    "refused_payload_too_large",
    "refused_bad_request",
    "refused_over_capacity",
    "refused_evicted",
    "refused_limit_exceeded",
    "refused_replaced",
    "refused_ended",
    "refused_kicked",
    "upstream_unavailable",
    "upstream_timeout",
];

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Forwarded2xx => 0,
            Outcome::Forwarded4xx => 1,
            Outcome::Forwarded5xx => 2,
            Outcome::RefusedInvalidToken => 3,
            Outcome::RefusedForbidden => 4,
            Outcome::RefusedNotFound => 5,
            Outcome::RefusedPayloadTooLarge => 6,
            Outcome::RefusedBadRequest => 7,
            Outcome::RefusedOverCapacity => 8,
            Outcome::Refused(reason) => 9 + reason as usize,
            Outcome::UpstreamUnavailable => 14,
            Outcome::UpstreamTimeout => 15,
        }
    }
}

fn forwarded(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Forwarded2xx,
        400..=499 => Outcome::Forwarded4xx,
        _ => Outcome::Forwarded5xx,
    }
}

fn refused(f: &Failure) -> Outcome {
    match f {
        Failure::Core(Error::InvalidToken(_) | Error::InvalidGrant(_)) => Outcome::RefusedInvalidToken,
        Failure::Core(Error::Forbidden(_)) => Outcome::RefusedForbidden,
        Failure::Core(Error::SessionStopped { reason, .. }) => Outcome::Refused(*reason),
        Failure::Core(Error::NoLicenceUpstream) | Failure::NotFound => Outcome::RefusedNotFound,
        Failure::Core(Error::OverCapacity | Error::LimitReached { .. }) => Outcome::RefusedOverCapacity,
        Failure::TooLarge(_) => Outcome::RefusedPayloadTooLarge,
        _ => Outcome::RefusedBadRequest,
    }
}

fn count(api: &Api, system: Option<DrmSystem>, outcome: Outcome) {
    if let Some(system) = system {
        api.limiter.metrics().licence_request(system, outcome);
    }
}

/// Upper bounds of `streamcap_licence_upstream_seconds`' buckets.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The licence gate's counters, per DRM system: outcomes, and the
/// upstream's latency (every exchange, failed ones included).
#[derive(Debug, Default)]
pub struct LicenceMetrics {
    outcomes: [[AtomicU64; OUTCOMES.len()]; 4],
    latency: [Histogram; 4],
}

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket, the last one `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut e: MetricEncoder) -> std::fmt::Result {
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.buckets.iter().map(|b| b.load(Relaxed))).collect();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        e.encode_histogram::<NoLabelSet>(sum, self.count.load(Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl LicenceMetrics {
    pub fn outcome(&self, system: DrmSystem, outcome: Outcome) {
        self.outcomes[system as usize][outcome.index()].fetch_add(1, Relaxed);
    }

    pub fn observe(&self, system: DrmSystem, took: Duration) {
        let h = &self.latency[system as usize];
        let secs = took.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        h.buckets[i].fetch_add(1, Relaxed);
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Series with a count only, as for the request counters; a family with
    /// none is left out whole (a descriptor without samples is not valid
    /// OpenMetrics).
    pub fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let counted = |s: DrmSystem, i: usize| self.outcomes[s as usize][i].load(Relaxed);
        if DrmSystem::ALL.iter().any(|s| (0..OUTCOMES.len()).any(|i| counted(*s, i) > 0)) {
            let mut family = e.encode_descriptor(
                "streamcap_licence_requests",
                "Licence requests, by DRM system and outcome.",
                None,
                MetricType::Counter,
            )?;
            for system in DrmSystem::ALL {
                for (i, outcome) in OUTCOMES.iter().enumerate() {
                    let v = counted(system, i);
                    if v > 0 {
                        let labels = [("system", system.as_str()), ("outcome", *outcome)];
                        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let observed = |s: DrmSystem| self.latency[s as usize].count.load(Relaxed) > 0;
        if DrmSystem::ALL.iter().any(|s| observed(*s)) {
            let mut family = e.encode_descriptor(
                "streamcap_licence_upstream_seconds",
                "Time from sending a licence request upstream to its whole answer (or the failure).",
                None,
                MetricType::Histogram,
            )?;
            for system in DrmSystem::ALL.into_iter().filter(|s| observed(*s)) {
                self.latency[system as usize].encode(family.encode_family(&[("system", system.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_have_distinct_labels_in_order() {
        let all = [
            Outcome::Forwarded2xx,
            Outcome::Forwarded4xx,
            Outcome::Forwarded5xx,
            Outcome::RefusedInvalidToken,
            Outcome::RefusedForbidden,
            Outcome::RefusedNotFound,
            Outcome::RefusedPayloadTooLarge,
            Outcome::RefusedBadRequest,
            Outcome::RefusedOverCapacity,
        ]
        .into_iter()
        .chain(StopReason::ALL.map(Outcome::Refused))
        .chain([Outcome::UpstreamUnavailable, Outcome::UpstreamTimeout]);
        let indices: Vec<usize> = all.map(Outcome::index).collect();
        assert_eq!(indices, (0..OUTCOMES.len()).collect::<Vec<_>>());
        for reason in StopReason::ALL {
            assert_eq!(OUTCOMES[Outcome::Refused(reason).index()], format!("refused_{}", reason.as_str()));
        }
        assert_eq!(forwarded(StatusCode::OK), Outcome::Forwarded2xx);
        assert_eq!(forwarded(StatusCode::FORBIDDEN), Outcome::Forwarded4xx);
        assert_eq!(forwarded(StatusCode::BAD_GATEWAY), Outcome::Forwarded5xx);
    }

    #[test]
    fn histogram_and_counters_render() {
        let m = std::sync::Arc::new(crate::metrics::Metrics::default());
        m.licence_request(DrmSystem::ClearKey, Outcome::Forwarded2xx);
        m.licence_request(DrmSystem::ClearKey, Outcome::Refused(StopReason::Kicked));
        m.licence_upstream(DrmSystem::ClearKey, Duration::from_millis(3));
        m.licence_upstream(DrmSystem::ClearKey, Duration::from_secs(30));
        for format in [crate::metrics::Format::OpenMetrics, crate::metrics::Format::Classic] {
            let text = m.render(format);
            assert_licence_series(&text);
        }
    }

    type Sample = (String, Vec<(String, String)>, f64);

    /// A sample line as (name, labels sorted, value), numbers read as numbers:
    /// the two formats order labels and write bounds differently.
    fn sample(line: &str) -> Option<Sample> {
        let (series, value) = line.rsplit_once(' ')?;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let mut labels: Vec<(String, String)> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                let v = v.trim_matches('"');
                let v = v.parse::<f64>().map_or(v.to_owned(), |n| n.to_string());
                Some((k.to_owned(), v))
            })
            .collect();
        labels.sort();
        Some((name.to_owned(), labels, value.parse().ok()?))
    }

    fn assert_licence_series(text: &str) {
        let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).filter_map(sample).collect();
        for line in [
            r#"streamcap_licence_requests_total{system="clearkey",outcome="forwarded_2xx"} 1"#,
            r#"streamcap_licence_requests_total{system="clearkey",outcome="refused_kicked"} 1"#,
            r#"streamcap_licence_upstream_seconds_bucket{system="clearkey",le="0.005"} 1"#,
            r#"streamcap_licence_upstream_seconds_bucket{system="clearkey",le="10"} 1"#,
            r#"streamcap_licence_upstream_seconds_bucket{system="clearkey",le="+Inf"} 2"#,
            r#"streamcap_licence_upstream_seconds_count{system="clearkey"} 2"#,
            r#"streamcap_licence_upstream_seconds_sum{system="clearkey"} 30.003"#,
        ] {
            let want = sample(line).unwrap();
            assert!(samples.contains(&want), "missing {line:?} in\n{text}");
        }
        assert!(text.lines().any(|l| l == "# TYPE streamcap_licence_upstream_seconds histogram"), "{text}");
        assert!(!text.contains("widevine"), "{text}");
    }
}
