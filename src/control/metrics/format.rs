//! The two exposition formats `/metrics` speaks, chosen by the request's `Accept` header as
//! the Prometheus Go client does (`expfmt.NegotiateIncludingOpenMetrics`): OpenMetrics 1.0
//! when the client ranks it first, else the Prometheus text format 0.0.4 (also the answer
//! to no `Accept`, `*/*`, or anything unknown).
//!
//! prometheus-client encodes OpenMetrics only; the 0.0.4 text is derived from it line by
//! line: counter families are named after their samples (`x_total`), `# UNIT` lines and
//! the closing `# EOF` are dropped, `unknown` becomes `untyped` and `info` a gauge
//! (`x_info`). Samples are the same in both.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for an `Accept` header (None: no header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::PrometheusText;
        };
        let mut ranges: Vec<(f32, usize, Option<Format>)> = accept
            .split(',')
            .enumerate()
            .filter_map(|(i, range)| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let mut q = 1.0f32;
                let mut version = None;
                for p in parts {
                    let (k, v) = p.split_once('=')?;
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.parse().ok()?,
                        "version" => version = Some(v.to_owned()),
                        _ => {}
                    }
                }
                let format = match (media.as_str(), version.as_deref()) {
                    ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                        Some(Format::OpenMetrics)
                    }
                    ("text/plain", None | Some("0.0.4")) => Some(Format::PrometheusText),
                    _ => None,
                };
                (q > 0.0).then_some((q, i, format))
            })
            .collect();
        // Highest quality first; equal ones in the order written.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges
            .into_iter()
            .find_map(|(_, _, f)| f)
            .unwrap_or(Format::PrometheusText)
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text exposition.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len());
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed(rest);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            // prometheus-client writes TYPE right after HELP: the family's 0.0.4 name.
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = lines
                .get(i + 1)
                .and_then(|next| next.strip_prefix("# TYPE "))
                .map(|t| typed(t).0)
                .filter(|typed| typed.starts_with(name))
                .unwrap_or_else(|| name.to_owned());
            out.push_str(&format!("# HELP {name} {doc}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// An OpenMetrics `# TYPE` line's rest (`name kind`) → the 0.0.4 family name and type.
fn typed(rest: &str) -> (String, &'static str) {
    let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "unknown"));
    let (suffix, kind) = match kind {
        "counter" => ("_total", "counter"),
        "gauge" => ("", "gauge"),
        "histogram" => ("", "histogram"),
        "summary" => ("", "summary"),
        "info" => ("_info", "gauge"),
        _ => ("", "untyped"),
    };
    (format!("{name}{suffix}"), kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_prometheus_go_client() {
        use Format::*;
        let n = |a: &str| Format::negotiate(Some(a));
        assert_eq!(Format::negotiate(None), PrometheusText);
        assert_eq!(n("*/*"), PrometheusText);
        assert_eq!(n("application/json"), PrometheusText);
        assert_eq!(n("text/plain"), PrometheusText);
        assert_eq!(n("application/openmetrics-text"), OpenMetrics);
        // What Prometheus 2.x/3.x scrapers send.
        assert_eq!(
            n("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
            OpenMetrics
        );
        assert_eq!(
            n("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"),
            PrometheusText
        );
        // Versions this server does not speak are skipped; q=0 means "not this".
        assert_eq!(
            n("application/openmetrics-text;version=2.0.0,text/plain;version=0.0.4;q=0.1"),
            PrometheusText
        );
        assert_eq!(
            n("application/openmetrics-text;q=0,text/plain;q=0.5"),
            PrometheusText
        );
        assert_eq!(
            n("text/plain;version=1.0.0, application/openmetrics-text; version=\"1.0.0\""),
            OpenMetrics
        );
    }

    #[test]
    fn openmetrics_to_prometheus_text() {
        // Per family: its OpenMetrics header, its 0.0.4 header, and its samples (the same
        // in both formats).
        let families = [
            // A counter family is named after its samples.
            (
                "# HELP sluice_reloads Reload attempts by result.\n\
# TYPE sluice_reloads counter\n",
                "# HELP sluice_reloads_total Reload attempts by result.\n\
# TYPE sluice_reloads_total counter\n",
                "sluice_reloads_total{result=\"success\"} 2\n",
            ),
            // A gauge stays as it is.
            (
                "# HELP sluice_up Up.\n# TYPE sluice_up gauge\n",
                "# HELP sluice_up Up.\n# TYPE sluice_up gauge\n",
                "sluice_up 1\n",
            ),
            // `# UNIT` is dropped.
            (
                "# HELP x_seconds Time.\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\n",
                "# HELP x_seconds Time.\n# TYPE x_seconds histogram\n",
                "x_seconds_sum 0.5\nx_seconds_count 1\nx_seconds_bucket{le=\"+Inf\"} 1\n",
            ),
            // An info family becomes a gauge named after its samples.
            (
                "# HELP b Build.\n# TYPE b info\n",
                "# HELP b_info Build.\n# TYPE b_info gauge\n",
                "b_info{version=\"1\"} 1\n",
            ),
        ];
        let om: String = families
            .iter()
            .map(|(head, _, samples)| format!("{head}{samples}"))
            .chain(["# EOF\n".to_owned()])
            .collect();
        let text: String = families
            .iter()
            .map(|(_, head, samples)| format!("{head}{samples}"))
            .collect();
        assert_eq!(to_prometheus_text(&om), text);
    }
}
