//! Counters for `/metrics`: plain atomics bumped on the request path (no
//! locks, no label lookups), rendered in Prometheus text format by
//! `prometheus-client` only when scraped. The counters every request bumps
//! are striped: each thread adds to its own copy, on cache lines no other
//! thread writes, and a scrape sums the copies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::wire::StopReason;

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
    List,
    Preflight,
    Other,
}

impl Route {
    const ALL: [Route; 6] = [Route::Start, Route::Heartbeat, Route::Stop, Route::List, Route::Preflight, Route::Other];

    fn as_str(self) -> &'static str {
        match self {
            Route::Start => "start",
            Route::Heartbeat => "heartbeat",
            Route::Stop => "stop",
            Route::List => "list",
            Route::Preflight => "preflight",
            Route::Other => "other",
        }
    }
}

/// Statuses the API answers with; anything else is counted as "other".
const STATUSES: [u16; 16] = [200, 201, 204, 400, 401, 403, 404, 405, 409, 410, 411, 413, 431, 500, 503, 0];
const STATUS_TEXT: [&str; STATUSES.len()] =
    ["200", "201", "204", "400", "401", "403", "404", "405", "409", "410", "411", "413", "431", "500", "503", "other"];

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
    requests: [[AtomicU64; STATUSES.len()]; 6],
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

#[derive(Debug, Default)]
pub struct Metrics {
    hot: [Hot; STRIPES],
    starts_rejected: [AtomicU64; 5],
    pub heartbeats_healed: AtomicU64,
    pub heartbeats_invalid: AtomicU64,
    heartbeats_stopped: [AtomicU64; 5],
    /// Sessions stopped by a rule: eviction, replacement, limit_exceeded.
    stopped_by_rule: [AtomicU64; 5],
    pub stops: AtomicU64,
    pub kicks: AtomicU64,
    pub expiries: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_refused: AtomicU64,
    // Configured bounds, set at start and on reload, so alerts need not repeat them.
    pub max_sessions: AtomicU64,
    pub max_connections: AtomicU64,
    // Gauges refreshed by the sweeper.
    pub live_sessions: AtomicU64,
    pub users: AtomicU64,
    pub records: AtomicU64,
}

impl Metrics {
    pub fn rejected(&self, why: Rejection) {
        self.starts_rejected[why as usize].fetch_add(1, Relaxed);
    }

    pub fn heartbeat_stopped(&self, reason: StopReason) {
        self.heartbeats_stopped[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn sessions_stopped(&self, reason: StopReason, n: usize) {
        if n > 0 {
            self.stopped_by_rule[reason as usize].fetch_add(n as u64, Relaxed);
        }
    }

    /// Counts sessions that expired. Like every counter here that is
    /// usually bumped by nothing, adding zero is skipped: a locked add on a
    /// line both workers write costs the same whatever it adds.
    pub fn expired(&self, n: usize) {
        if n > 0 {
            self.expiries.fetch_add(n as u64, Relaxed);
        }
    }

    pub fn healed(&self, healed: bool) {
        if healed {
            self.heartbeats_healed.fetch_add(1, Relaxed);
        }
    }

    pub fn request(&self, route: Route, status: u16) {
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1);
        self.hot[stripe()].requests[route as usize][i].fetch_add(1, Relaxed);
    }

    pub fn heartbeat_ok(&self) {
        self.hot[stripe()].heartbeats_ok.fetch_add(1, Relaxed);
    }

    pub fn start_admitted(&self) {
        self.hot[stripe()].starts_admitted.fetch_add(1, Relaxed);
    }

    /// A striped counter's total.
    fn sum(&self, counter: impl Fn(&Hot) -> &AtomicU64) -> u64 {
        self.hot.iter().map(|h| counter(h).load(Relaxed)).sum()
    }

    /// Renders every metric in Prometheus text format.
    pub fn render(self: &std::sync::Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
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
            StopReason::ALL.iter().map(|r| {
                let v = match r {
                    StopReason::Ended => get(&self.stops),
                    StopReason::Kicked => get(&self.kicks),
                    _ => get(&self.stopped_by_rule[*r as usize]),
                };
                (vec![("reason", r.as_str())], v)
            }),
        )?;
        counter(&mut e, "streamcap_expiries", "Sessions that expired without a heartbeat.", get(&self.expiries))?;
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
    fn striped_counters_add_up_across_threads() {
        let m = std::sync::Arc::new(Metrics::default());
        // More threads than stripes, so some share one.
        std::thread::scope(|s| {
            for _ in 0..2 * STRIPES + 1 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        m.heartbeat_ok();
                        m.request(Route::Heartbeat, 200);
                    }
                    m.start_admitted();
                    m.request(Route::Start, 999);
                });
            }
        });
        let text = m.render();
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
