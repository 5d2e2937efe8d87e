//! Counters for `/metrics`: plain atomics bumped on the request path (no
//! locks, no label lookups), rendered by `prometheus-client` only when
//! scraped, in OpenMetrics or the classic Prometheus text format ([`Format`]). The counters every request bumps
//! are striped: each thread adds to its own copy, on cache lines no other
//! thread writes, and a scrape sums the copies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::licence::{LicenceMetrics, Outcome};
use crate::policy::{Admitted, BeatOutcome, SignedOut, StopOutcome};
use crate::store::Swept;
use crate::wire::{DrmSystem, StopReason};

/// Why a start was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    LimitReached,
    GroupLimitReached,
    OverCapacity,
    InvalidGrant,
    Forbidden,
}

impl Rejection {
    const ALL: [Rejection; 5] = [
        Rejection::LimitReached,
        Rejection::GroupLimitReached,
        Rejection::OverCapacity,
        Rejection::InvalidGrant,
        Rejection::Forbidden,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Rejection::LimitReached => "limit_reached",
            Rejection::GroupLimitReached => "group_limit_reached",
            Rejection::OverCapacity => "over_capacity",
            Rejection::InvalidGrant => "invalid_grant",
            Rejection::Forbidden => "forbidden",
        }
    }
}

/// Routes as counted in `streamcap_http_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Start,
    Heartbeat,
    Stop,
    SignOut,
    List,
    OpenApi,
    Preflight,
    Other,
    /// Every method on the licence route (docs/spec.md §10), preflights included.
    Licence,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::Start,
        Route::Heartbeat,
        Route::Stop,
        Route::SignOut,
        Route::List,
        Route::OpenApi,
        Route::Preflight,
        Route::Other,
        Route::Licence,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Route::Start => "start",
            Route::Heartbeat => "heartbeat",
            Route::Stop => "stop",
            Route::SignOut => "sign_out",
            Route::List => "list",
            Route::OpenApi => "openapi",
            Route::Preflight => "preflight",
            Route::Other => "other",
            Route::Licence => "licence",
        }
    }
}

/// Statuses the API answers with; anything else is counted as "other".
const STATUSES: [u16; 19] =
    [200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 410, 411, 413, 431, 500, 502, 503, 504, 0];
const STATUS_TEXT: [&str; STATUSES.len()] = [
    "200", "201", "204", "304", "400", "401", "403", "404", "405", "409", "410", "411", "413", "431", "500", "502",
    "503", "504", "other",
];

/// Copies of the per-request counters; more than the worker threads a
/// server of this size runs, so two rarely share one.
const STRIPES: usize = 8;

/// One thread's copy of the counters every request bumps. A locked add on
/// a line another core has just written waits for the line to move: tens
/// of nanoseconds, paid twice per heartbeat when all workers shared one
/// line. 128-byte aligned: adjacent lines are fetched in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Hot {
    requests: [[AtomicU64; STATUSES.len()]; Route::ALL.len()],
    heartbeats_ok: AtomicU64,
    starts_admitted: AtomicU64,
}

/// This thread's stripe, handed out in turn as threads first count.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// Every counter and gauge, bumped through one method per event.
#[derive(Debug, Default)]
pub struct Metrics {
    hot: [Hot; STRIPES],
    starts_rejected: [AtomicU64; Rejection::ALL.len()],
    heartbeats_healed: AtomicU64,
    heartbeats_invalid: AtomicU64,
    /// Heartbeats answered `410`, by reason.
    heartbeats_stopped: [AtomicU64; StopReason::ALL.len()],
    /// Sessions stopped, by reason: by a rule (eviction, replacement,
    /// limit_exceeded) or a request (ended, kicked).
    sessions_stopped: [AtomicU64; StopReason::ALL.len()],
    expiries: AtomicU64,
    sweeper_panics: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_refused: AtomicU64,
    // Configured bounds, set at start and on reload, so alerts need not repeat them.
    max_sessions: AtomicU64,
    max_connections: AtomicU64,
    // Gauges refreshed by the sweeper (records also by each scrape).
    live_sessions: AtomicU64,
    users: AtomicU64,
    records: AtomicU64,
    /// The licence gate's outcomes and upstream latency.
    licence: LicenceMetrics,
}

/// Adds `n` to a counter. Like every counter here that is usually bumped
/// by nothing, adding zero is skipped: a locked add on a line both workers
/// write costs the same whatever it adds.
fn add(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Relaxed);
    }
}

impl Metrics {
    /// A public request answered with `status`.
    pub fn request(&self, route: Route, status: u16) {
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1);
        self.hot[stripe()].requests[route as usize][i].fetch_add(1, Relaxed);
    }

    /// A start admitted: it and what it stopped or dropped on the way.
    pub fn start_admitted(&self, a: &Admitted) {
        self.hot[stripe()].starts_admitted.fetch_add(1, Relaxed);
        add(&self.sessions_stopped[StopReason::Evicted as usize], a.evicted.len());
        add(&self.sessions_stopped[StopReason::Replaced as usize], a.replaced);
        add(&self.expiries, a.expired);
    }

    /// A start refused.
    pub fn start_refused(&self, why: Rejection) {
        self.starts_rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// A heartbeat judged: renewed, lost to re-validation, already stopped
    /// or refused for the user's record bound.
    pub fn heartbeat(&self, outcome: &BeatOutcome) {
        match outcome {
            BeatOutcome::Renewed { healed, over_limit, expired, .. } => {
                self.hot[stripe()].heartbeats_ok.fetch_add(1, Relaxed);
                add(&self.heartbeats_healed, usize::from(*healed));
                add(&self.sessions_stopped[StopReason::LimitExceeded as usize], over_limit.len());
                add(&self.expiries, *expired);
            }
            BeatOutcome::Lost { healed, over_limit, expired } => {
                add(&self.heartbeats_healed, usize::from(*healed));
                // The caller's own session is stopped too.
                add(&self.sessions_stopped[StopReason::LimitExceeded as usize], over_limit.len() + 1);
                add(&self.expiries, *expired);
                add(&self.heartbeats_stopped[StopReason::LimitExceeded as usize], 1);
            }
            BeatOutcome::AlreadyStopped(t) => add(&self.heartbeats_stopped[t.reason as usize], 1),
            BeatOutcome::Full => {}
        }
    }

    /// A heartbeat refused with `401` or `403`.
    pub fn heartbeat_invalid(&self) {
        self.heartbeats_invalid.fetch_add(1, Relaxed);
    }

    /// A stop (`reason` ended) or kick (`reason` kicked) recorded.
    pub fn session_stop(&self, reason: StopReason, outcome: &StopOutcome) {
        let expired = match outcome {
            StopOutcome::Tombstoned { expired } | StopOutcome::Remembered { expired } => *expired,
            StopOutcome::AlreadyStopped => 0,
            StopOutcome::Full => return,
        };
        add(&self.sessions_stopped[reason as usize], 1);
        add(&self.expiries, expired);
    }

    /// A sign-out: the sessions it kicked, and those it found expired.
    pub fn signed_out(&self, out: &SignedOut) {
        add(&self.sessions_stopped[StopReason::Kicked as usize], out.stopped);
        add(&self.expiries, out.expired);
    }

    /// A sweep pass: what it dropped, and the gauges as it found them.
    pub fn swept(&self, swept: &Swept) {
        add(&self.expiries, swept.expired);
        self.live_sessions.store(swept.live as u64, Relaxed);
        self.users.store(swept.users as u64, Relaxed);
        self.records.store(swept.records as u64, Relaxed);
    }

    /// A sweep pass panicked; the sweeper carries on with the next one.
    pub fn sweeper_panicked(&self) {
        self.sweeper_panics.fetch_add(1, Relaxed);
    }

    /// The exact number of records held now.
    pub fn records_held(&self, records: u64) {
        self.records.store(records, Relaxed);
    }

    /// A public connection accepted.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }

    /// A public connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// A public connection refused at `max_connections`.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A configuration reload put in force (`true`) or refused.
    pub fn reloaded(&self, ok: bool) {
        add(if ok { &self.reloads_ok } else { &self.reloads_refused }, 1);
    }

    /// The configured bounds, at start and on every reload.
    pub fn bounds(&self, max_sessions: u64, max_connections: usize) {
        self.max_sessions.store(max_sessions, Relaxed);
        self.max_connections.store(max_connections as u64, Relaxed);
    }

    /// A licence request's outcome (docs/spec.md §10).
    pub fn licence_request(&self, system: DrmSystem, outcome: Outcome) {
        self.licence.outcome(system, outcome);
    }

    /// How long one exchange with a licence upstream took, failed ones included.
    pub fn licence_upstream(&self, system: DrmSystem, took: Duration) {
        self.licence.observe(system, took);
    }

    /// Heartbeats that rebuilt a session so far.
    pub fn heartbeats_healed(&self) -> u64 {
        self.heartbeats_healed.load(Relaxed)
    }

    /// A striped counter's total.
    fn sum(&self, counter: impl Fn(&Hot) -> &AtomicU64) -> u64 {
        self.hot.iter().map(|h| counter(h).load(Relaxed)).sum()
    }

    /// Renders every metric in `format`.
    pub fn render(self: &std::sync::Arc<Self>, format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
            Format::Classic => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
        };
        out
    }
}

/// The text formats `/metrics` answers in. Prometheus asks for OpenMetrics;
/// some scrapers and agents read only the classic format, version 0.0.4,
/// where a counter's `# TYPE` names the `_total` series and there is no
/// `# EOF`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above zero and at least
    /// that of the classic format (`text/plain`, `text/*`, `*/*`); the
    /// classic format otherwise, and when there is no header.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let (mut openmetrics, mut classic) = (0.0f32, 0.0f32);
        for range in accept.into_iter().flat_map(|v| v.split(',')) {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim();
            let quality = params
                .find_map(|p| {
                    let (name, value) = p.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("q").then(|| value.trim().parse::<f32>().ok())?
                })
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics = openmetrics.max(quality);
            } else if media.eq_ignore_ascii_case("text/plain") || media.eq_ignore_ascii_case("text/*") || media == "*/*"
            {
                classic = classic.max(quality);
            }
        }
        if openmetrics > 0.0 && openmetrics >= classic { Format::OpenMetrics } else { Format::Classic }
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter_family<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'static str, &'a str)>, u64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let get = |a: &AtomicU64| a.load(Relaxed);
        gauge(&mut e, "streamcap_live_sessions", "Live sessions at the last sweep.", get(&self.live_sessions) as i64)?;
        gauge(&mut e, "streamcap_users", "Users with any record at the last sweep.", get(&self.users) as i64)?;
        gauge(
            &mut e,
            "streamcap_records",
            "Session records held now (live, unswept and tombstones).",
            get(&self.records) as i64,
        )?;
        counter(&mut e, "streamcap_starts_admitted", "Starts admitted.", self.sum(|h| &h.starts_admitted))?;
        counter_family(
            &mut e,
            "streamcap_starts_rejected",
            "Starts refused, by reason.",
            Rejection::ALL.iter().map(|r| (vec![("reason", r.as_str())], get(&self.starts_rejected[*r as usize]))),
        )?;
        counter(&mut e, "streamcap_heartbeats_ok", "Heartbeats renewed.", self.sum(|h| &h.heartbeats_ok))?;
        counter(
            &mut e,
            "streamcap_heartbeats_healed",
            "Heartbeats that rebuilt an unknown session from its token.",
            get(&self.heartbeats_healed),
        )?;
        counter(
            &mut e,
            "streamcap_heartbeats_invalid",
            "Heartbeats refused with 401 or 403.",
            get(&self.heartbeats_invalid),
        )?;
        counter_family(
            &mut e,
            "streamcap_heartbeats_stopped",
            "Heartbeats answered 410, by reason.",
            StopReason::ALL.iter().map(|r| (vec![("reason", r.as_str())], get(&self.heartbeats_stopped[*r as usize]))),
        )?;
        counter_family(
            &mut e,
            "streamcap_sessions_stopped",
            "Sessions stopped by a rule or a request, by reason (evictions are reason=evicted).",
            StopReason::ALL.iter().map(|r| (vec![("reason", r.as_str())], get(&self.sessions_stopped[*r as usize]))),
        )?;
        counter(&mut e, "streamcap_expiries", "Sessions that expired without a heartbeat.", get(&self.expiries))?;
        counter(
            &mut e,
            "streamcap_sweeper_panics",
            "Sweep passes that panicked (logged; the sweeper carries on).",
            get(&self.sweeper_panics),
        )?;
        counter_family(
            &mut e,
            "streamcap_http_requests",
            "HTTP requests on the public listener, by route and status.",
            Route::ALL.iter().flat_map(|route| {
                STATUS_TEXT.iter().enumerate().filter_map(move |(i, status)| {
                    let v = self.sum(|h| &h.requests[*route as usize][i]);
                    (v > 0).then(|| (vec![("route", route.as_str()), ("status", *status)], v))
                })
            }),
        )?;
        gauge(
            &mut e,
            "streamcap_connections_open",
            "Open connections on the public listener.",
            get(&self.connections_open) as i64,
        )?;
        counter(
            &mut e,
            "streamcap_connections_refused",
            "Connections refused at max_connections.",
            get(&self.connections_refused),
        )?;
        gauge(&mut e, "streamcap_max_connections", "Configured max_connections.", get(&self.max_connections) as i64)?;
        gauge(&mut e, "streamcap_max_sessions", "Configured max_sessions.", get(&self.max_sessions) as i64)?;
        counter_family(
            &mut e,
            "streamcap_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            [("ok", get(&self.reloads_ok)), ("refused", get(&self.reloads_refused))]
                .into_iter()
                .map(|(result, v)| (vec![("result", result)], v)),
        )?;
        self.licence.encode(&mut e)?;
        gauge(&mut e, "process_resident_memory_bytes", "Resident set size of this process.", resident_bytes() as i64)?;
        Ok(())
    }
}

/// Resident set size from `/proc/self/statm` (0 where there is none).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn negotiation_reads_every_accept_value() {
        let two = ["text/plain;q=0.2", "application/openmetrics-text;q=0.3"];
        assert_eq!(Format::negotiate(two), Format::OpenMetrics);
        assert_eq!(Format::negotiate(["text/plain;q=0.4", "application/openmetrics-text;q=0.3"]), Format::Classic);
        // A quality that is not one counts as 1.
        assert_eq!(Format::negotiate(["application/openmetrics-text;q=nan, text/plain;q=0.9"]), Format::OpenMetrics);
        assert_eq!(Format::negotiate([]), Format::Classic);
        assert_eq!(Format::negotiate([",;,=;q=,"]), Format::Classic);
    }

    #[test]
    fn striped_counters_add_up_across_threads() {
        let m = std::sync::Arc::new(Metrics::default());
        // More threads than stripes, so some share one.
        std::thread::scope(|s| {
            for _ in 0..2 * STRIPES + 1 {
                s.spawn(|| {
                    let renewed =
                        BeatOutcome::Renewed { healed: false, over_limit: Vec::new(), expired: 0, carry: Vec::new() };
                    for _ in 0..1000 {
                        m.heartbeat(&renewed);
                        m.request(Route::Heartbeat, 200);
                    }
                    m.start_admitted(&Admitted {
                        active: 1,
                        evicted: Vec::new(),
                        replaced: 0,
                        expired: 0,
                        carry: Vec::new(),
                    });
                    m.request(Route::Start, 999);
                });
            }
        });
        let text = m.render(Format::OpenMetrics);
        let n = (2 * STRIPES + 1) as u64;
        assert_eq!(value(&text, "streamcap_heartbeats_ok_total"), Some(1000 * n), "{text}");
        assert_eq!(value(&text, "streamcap_starts_admitted_total"), Some(n), "{text}");
        assert_eq!(
            value(&text, r#"streamcap_http_requests_total{route="heartbeat",status="200"}"#),
            Some(1000 * n),
            "{text}"
        );
        assert_eq!(value(&text, r#"streamcap_http_requests_total{route="start",status="other"}"#), Some(n), "{text}");
    }
}
