//! Reading sluice's `/metrics` as a scraper does, and the metric names a Grafana dashboard's
//! PromQL queries use.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET /metrics` with `Accept: accept` (none when `None`): (Content-Type, body).
pub fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: scraper\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .expect("Content-Type")
        .to_owned();
    (content_type, body.to_owned())
}

/// The value of the first sample line of `body` that starts with `prefix`.
pub fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The names of every sample in an exposition (`x_total`, `x_bucket`, …).
pub fn sample_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_owned())
        .collect()
}

/// PromQL functions, aggregations and keywords, and the label names the dashboard groups
/// and selects by: every other identifier in a query is a metric name.
const NOT_METRICS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "rate",
    "irate",
    "increase",
    "changes",
    "resets",
    "delta",
    "deriv",
    "histogram_quantile",
    "label_values",
    "vector",
    "time",
    "clamp_min",
    "clamp_max",
    "abs",
    "topk",
    "bottomk",
    "le",
    "namespace",
    "service",
    "endpoint",
    "direction",
    "result",
    "worker",
    "instance",
    "job",
    "kind",
    "to",
    "node_port",
    "port_name",
    "protocol",
    "version",
    "driver",
    "prometheus",
];

/// Every metric name the dashboard's queries (panel targets, template variables,
/// annotations) use.
pub fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut queries = Vec::new();
    collect_queries(dashboard, &mut queries);
    assert!(!queries.is_empty(), "no queries found in the dashboard");
    let mut names = BTreeSet::new();
    for q in queries {
        for ident in identifiers(&q) {
            if !NOT_METRICS.contains(&ident.as_str()) {
                names.insert(ident);
            }
        }
    }
    names
}

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_queries(i, out)),
        _ => {}
    }
}

/// Identifiers of a PromQL expression, outside string literals, `$variables`, durations
/// in `[...]` and numbers.
fn identifiers(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    let mut current = String::new();
    let flush = |current: &mut String, out: &mut Vec<String>| {
        if !current.is_empty() {
            if !current.starts_with(|c: char| c.is_ascii_digit()) {
                out.push(current.clone());
            }
            current.clear();
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut current, &mut out);
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
            }
            '$' => {
                flush(&mut current, &mut out);
                while chars
                    .peek()
                    .is_some_and(|d| d.is_ascii_alphanumeric() || matches!(d, '_' | '{' | '}'))
                {
                    chars.next();
                }
            }
            '[' => {
                flush(&mut current, &mut out);
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' => current.push(c),
            _ => flush(&mut current, &mut out),
        }
    }
    flush(&mut current, &mut out);
    out
}
