//! `/metrics` answers in the format the scraper's `Accept` asks for:
//! OpenMetrics for Prometheus, the classic text format (0.0.4) for anything
//! else. Each answer is read back with a parser of that format.

mod common;

use std::collections::BTreeMap;

use common::*;
use openmetrics_parser::{OpenMetricsType, PrometheusType, openmetrics, prometheus};

/// What Prometheus sends when it scrapes (its default scrape protocols).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,\
     text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

fn scrape(server: &TestServer, accept: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let r = Client { addr: server.admin }.raw(&request_bytes("GET", "/metrics", None, &headers, b"")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("vary"), Some("accept"), "{:?}", r.headers);
    r
}

/// A server with traffic behind every kind of family: plain and labelled
/// counters, gauges.
fn server_with_traffic() -> TestServer {
    let server = TestServer::dev();
    let user = unique("scraped");
    let mut s = server.api.start_ok(&user, &grant(&user, 1));
    server.api.start(&user, &grant(&user, 1)).expect_error(409, "limit_reached");
    server.api.beat_ok(&mut s);
    server
}

#[test]
fn the_accept_header_chooses_the_format() {
    let server = TestServer::dev();
    for (accept, content_type) in [
        (Some(PROMETHEUS_ACCEPT), OPENMETRICS),
        (Some("application/openmetrics-text"), OPENMETRICS),
        (Some("Application/OpenMetrics-Text; version=0.0.1"), OPENMETRICS),
        (Some("text/plain;version=0.0.4;q=0.5, application/openmetrics-text;q=0.9"), OPENMETRICS),
        (None, CLASSIC),
        (Some("*/*"), CLASSIC),
        (Some("text/plain"), CLASSIC),
        (Some("text/plain;version=0.0.4"), CLASSIC),
        (Some("text/plain, application/openmetrics-text;q=0.5"), CLASSIC),
        (Some("application/openmetrics-text;q=0, text/plain;q=0.1"), CLASSIC),
        (Some("application/json"), CLASSIC),
    ] {
        let r = scrape(&server, accept);
        assert_eq!(r.header("content-type"), Some(content_type), "Accept: {accept:?}");
        assert_eq!(r.text().ends_with("# EOF\n"), content_type == OPENMETRICS, "Accept: {accept:?}\n{}", r.text());
    }
}

/// Series as `name{labels}` -> value.
type Series = BTreeMap<String, f64>;

#[test]
fn openmetrics_answer_parses_as_openmetrics() {
    let server = server_with_traffic();
    let text = scrape(&server, Some(PROMETHEUS_ACCEPT)).text();
    let parsed = openmetrics::parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let family = |name: &str| parsed.families.get(name).unwrap_or_else(|| panic!("no family {name}:\n{text}"));
    // OpenMetrics names a counter family without `_total`; its samples carry it.
    for name in ["streamcap_starts_admitted", "streamcap_starts_rejected", "streamcap_http_requests"] {
        assert_eq!(family(name).family_type, OpenMetricsType::Counter, "{name}");
    }
    for name in ["streamcap_live_sessions", "streamcap_max_connections", "process_resident_memory_bytes"] {
        assert_eq!(family(name).family_type, OpenMetricsType::Gauge, "{name}");
    }
    assert!(parsed.families.keys().all(|n| !n.ends_with("_total")), "{:?}", parsed.families.keys());
    let series = series(&text);
    assert_eq!(series.get("streamcap_starts_admitted_total"), Some(&1.0), "{text}");
    assert_eq!(series.get(r#"streamcap_starts_rejected_total{reason="limit_reached"}"#), Some(&1.0), "{text}");
}

#[test]
fn classic_answer_parses_as_the_0_0_4_text_format() {
    let server = server_with_traffic();
    let text = scrape(&server, None).text();
    let parsed = prometheus::parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let family = |name: &str| parsed.families.get(name).unwrap_or_else(|| panic!("no family {name}:\n{text}"));
    // The 0.0.4 format names a counter by its `_total` series.
    for name in ["streamcap_starts_admitted_total", "streamcap_starts_rejected_total", "streamcap_http_requests_total"]
    {
        assert_eq!(family(name).family_type, PrometheusType::Counter, "{name}");
        assert!(text.contains(&format!("\n# TYPE {name} counter\n")), "{name}:\n{text}");
    }
    for name in ["streamcap_live_sessions", "streamcap_max_connections", "process_resident_memory_bytes"] {
        assert_eq!(family(name).family_type, PrometheusType::Gauge, "{name}");
    }
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    let series = series(&text);
    assert_eq!(series.get("streamcap_starts_admitted_total"), Some(&1.0), "{text}");
    assert_eq!(series.get(r#"streamcap_http_requests_total{route="start",status="409"}"#), Some(&1.0), "{text}");
}

/// Both formats carry the same families and the same counts.
#[test]
fn both_formats_carry_the_same_series() {
    let server = server_with_traffic();
    let classic = scrape(&server, None).text();
    let open = scrape(&server, Some(PROMETHEUS_ACCEPT)).text();
    let families = |text: &str| -> Vec<String> {
        let typed = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '));
        typed
            .map(|(name, kind)| match kind == "counter" && !name.ends_with("_total") {
                true => format!("{name}_total"),
                false => name.to_owned(),
            })
            .collect()
    };
    assert_eq!(families(&classic), families(&open));
    // Counters only: gauges (sessions at the last sweep, open connections) may move between scrapes.
    let counts = |text: &str| {
        let mut s = series(text);
        s.retain(|series, _| series.split('{').next().unwrap().ends_with("_total"));
        s
    };
    assert!(counts(&classic).len() > 10, "{classic}");
    assert_eq!(counts(&classic), counts(&open));
}

/// Every sample line of an exposition, either format.
fn series(text: &str) -> Series {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("sample value in {l:?}")))
        })
        .collect()
}
