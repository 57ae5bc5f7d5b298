//! Tests of `health`.

use crate::config::parse;
use crate::model::*;
use std::time::Duration;

fn health_of(text: &str) -> Vec<HealthConfig> {
    parse(text, "h.toml", None)
        .unwrap_or_else(|e| panic!("{e}"))
        .services
        .into_iter()
        .map(|s| s.health)
        .collect()
}

fn error_of(text: &str) -> (usize, usize, String) {
    let e = parse(text, "h.toml", None).unwrap_err();
    (e.line, e.column, e.message)
}

#[test]
fn haproxy_defaults_and_timeout_is_the_interval() {
    let h = health_of("[[service]]\nname = \"a\"\nport = 80\nhealth_check = \"tcp\"\n");
    assert_eq!(
        h[0].active,
        Some(ActiveCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            port: None,
        })
    );
    assert_eq!(h[0].passive, None);
    assert!(!h[0].shutdown_sessions);
    let h = health_of(
        "[[service]]\nname = \"a\"\nport = 80\nhealth_check = \"http\"\nhealth_check_interval = \"500ms\"\n",
    );
    let a = h[0].active.as_ref().unwrap();
    assert_eq!(a.timeout, Duration::from_millis(500));
    assert_eq!(
        a.kind,
        CheckKind::Http {
            path: "/".into(),
            expect: (200, 399)
        }
    );
}

#[test]
fn off_by_default() {
    let h = health_of("[[service]]\nname = \"a\"\nport = 80\n");
    assert_eq!(h[0], HealthConfig::default());
}

#[test]
fn every_key_and_node_wide_defaults() {
    let text = r#"
health_check_interval = "1s"
health_check_rise = 4
outlier_ejection = true
outlier_ejection_time = "10s"

[[service]]
name = "a"
port = 80
health_check = "http"
health_check_path = "/healthz?full=1"
health_check_status = 204
health_check_timeout = "300ms"
health_check_fall = 1
health_check_port = 8081
outlier_consecutive_failures = 3
shutdown_sessions = true

[[service]]
name = "b"
port = 80
health_check = "tcp"
health_check_status_unused = 1
"#;
    // An unknown key is still an unknown key.
    assert!(error_of(text)
        .2
        .contains("unknown key `health_check_status_unused`"));
    let text = text.replace(
        "health_check_status_unused = 1\n",
        "outlier_ejection = false\n",
    );
    let h = health_of(&text);
    assert_eq!(
        h[0],
        HealthConfig {
            active: Some(ActiveCheck {
                kind: CheckKind::Http {
                    path: "/healthz?full=1".into(),
                    expect: (204, 204),
                },
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(300),
                rise: 4,
                fall: 1,
                port: Some(8081),
            }),
            passive: Some(PassiveCheck {
                consecutive_failures: 3,
                ejection_time: Duration::from_secs(10),
            }),
            shutdown_sessions: true,
        }
    );
    assert_eq!(
        h[1],
        HealthConfig {
            active: Some(ActiveCheck {
                kind: CheckKind::Tcp,
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                rise: 4,
                fall: 3,
                port: None,
            }),
            passive: None,
            shutdown_sessions: false,
        }
    );
    let m = parse(&text, "h.toml", None).unwrap();
    let shown = crate::config::render_check(&m);
    assert!(
        shown.contains(
            "default/a sets its own: health http GET /healthz?full=1 expect 204 every 1s \
             (timeout 300ms, rise 4, fall 1, port 8081) + outlier ejection (3 failures, 10s) \
             + shutdown sessions"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("maglev table 65537, health outlier ejection (5 failures, 10s)\n"),
        "{shown}"
    );
    assert_eq!(m.settings.defaults.health.active, None);
    assert_eq!(
        m.settings.defaults.health.passive,
        Some(PassiveCheck {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
        })
    );
}

#[test]
fn a_service_can_turn_the_default_off() {
    let h = health_of(
        "health_check = \"tcp\"\nshutdown_sessions = true\n[[service]]\nname = \"a\"\nport = 80\nhealth_check = \"none\"\n",
    );
    assert_eq!(h[0].active, None);
    // shutdown_sessions inherited, harmless without checks.
    assert!(h[0].shutdown_sessions);
}

#[test]
fn status_ranges() {
    let svc = |v: &str| {
        format!("[[service]]\nname = \"a\"\nport = 80\nhealth_check = \"http\"\nhealth_check_status = {v}\n")
    };
    let expect = |v: &str| match &health_of(&svc(v))[0].active.as_ref().unwrap().kind {
        CheckKind::Http { expect, .. } => *expect,
        CheckKind::Tcp => unreachable!(),
    };
    assert_eq!(expect("\"200-299\""), (200, 299));
    assert_eq!(expect("\"301\""), (301, 301));
    assert_eq!(expect("200"), (200, 200));
    for bad in ["99", "600", "\"2xx\"", "\"300-200\"", "\"200-\""] {
        let (line, col, msg) = error_of(&svc(bad));
        assert_eq!((line, col), (5, 23), "{bad}: {msg}");
        assert!(msg.starts_with("health_check_status "), "{bad}: {msg}");
    }
}

/// Each row: TOML, the error's line and column, and a part of its message.
#[test]
fn errors_point_at_the_value() {
    let svc = "[[service]]\nname = \"a\"\nport = 80\n";
    #[rustfmt::skip]
    let rows: &[(String, (usize, usize), &str)] = &[
        (format!("{svc}health_check = \"udp\"\n"), (4, 16),
            "health_check \"udp\" is not accepted; expected one of \"none\", \"tcp\", \"http\""),
        (format!("{svc}health_check = \"tcp\"\nhealth_check_path = \"/x\"\n"), (5, 21),
            "`health_check_path` applies to health_check = \"http\", but this Service's health_check is \"tcp\""),
        (format!("health_check = \"tcp\"\n{svc}health_check_path = \"/x\"\n"), (5, 21),
            "health_check is \"tcp\" (the default set at line 1)"),
        ("health_check = \"tcp\"\nhealth_check_path = \"/x\"\n".to_owned(), (2, 21),
            "`health_check_path` applies to health_check = \"http\", but health_check is \"tcp\" (line 1)"),
        (format!("{svc}health_check_interval = \"1s\"\n"), (4, 25),
            "`health_check_interval` has no effect: this Service has no active health check (the default)"),
        (format!("{svc}health_check = \"tcp\"\nhealth_check_interval = \"5ms\"\n"), (5, 25),
            "health_check_interval 5ms is too short: at least 10ms is needed"),
        (format!("{svc}health_check = \"tcp\"\nhealth_check_interval = \"1s\"\nhealth_check_timeout = \"2s\"\n"), (6, 24),
            "health_check_timeout 2s is longer than health_check_interval 1s"),
        (format!("{svc}health_check = \"tcp\"\nhealth_check_rise = 0\n"), (5, 21),
            "health_check_rise 0 is out of range: must be 1..=100"),
        (format!("{svc}health_check = \"tcp\"\nhealth_check_port = 70000\n"), (5, 21),
            "health_check_port 70000 is out of range: must be 1..=65535"),
        (format!("{svc}health_check = \"http\"\nhealth_check_path = \"healthz\"\n"), (5, 21),
            "health_check_path \"healthz\" must start with '/'"),
        (format!("{svc}health_check = \"http\"\nhealth_check_path = \"/a b\"\n"), (5, 21),
            "health_check_path \"/a b\" contains ' '"),
        (format!("{svc}outlier_consecutive_failures = 3\n"), (4, 32),
            "`outlier_consecutive_failures` has no effect: outlier ejection is off for this Service"),
        (format!("{svc}outlier_ejection = true\noutlier_ejection_time = \"0s\"\n"), (5, 25),
            "outlier_ejection_time must be longer than zero"),
        (format!("{svc}shutdown_sessions = true\n"), (4, 21),
            "`shutdown_sessions` has no effect"),
        ("outlier_ejection = false\noutlier_ejection_time = \"3s\"\n".to_owned(), (2, 25),
            "`outlier_ejection_time` has no effect: outlier_ejection = false (line 1)"),
        // Top-level tuning values are judged even when no Service uses them.
        (format!("health_check_fall = 0\n{svc}"), (1, 21),
            "health_check_fall 0 is out of range"),
    ];
    for (text, pos, want) in rows {
        let (line, col, msg) = error_of(text);
        assert!(msg.contains(want), "{text}\ngot {msg:?}\nwant {want:?}");
        assert_eq!((line, col), *pos, "{text}\n{msg}");
    }
}
