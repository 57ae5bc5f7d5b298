//! The built-in demo: three local HTTP "pods" and the seed's `workshop/myfrontend` Service.
//!
//! This module owns two things: [`demo_model`], the one Service the demo serves (built
//! directly, no config file), and [`DemoPods`], tiny HTTP/1.1 servers ([`crate::http`], on a
//! thread of their own) that answer every request with a body naming the pod. The pods exist so that
//! `sluice demo` works on a laptop with no cluster: `curl 127.0.0.1:30000` shows which pod
//! answered. They are test fixtures, not a web server: they must not be used for anything
//! but loopback demos and tests. They never panic on network input; a malformed request
//! closes that connection and nothing else.

use crate::http;
use crate::model::{
    Endpoint, Model, Policy, Protocol, ServiceDefaults, ServiceName, ServicePort, ServicePortKey,
    Settings,
};
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where the three demo pods listen (the demo Service's endpoints).
pub const DEMO_POD_ADDRS: [&str; 3] = ["127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000"];

/// The NodePort the demo Service is served on.
pub const DEMO_NODE_PORT: u16 = 30000;

/// The seed Service: `workshop/myfrontend`, port `http` 80 → target port 9000, NodePort
/// 30000, three endpoints on 127.0.0.2-4:9000, every tunable at its default.
pub fn demo_model() -> Model {
    let settings = Settings::default();
    let defaults = ServiceDefaults::default();
    let endpoints = DEMO_POD_ADDRS
        .iter()
        .map(|a| {
            Endpoint::new(
                a.parse()
                    .expect("DEMO_POD_ADDRS are valid socket addresses"),
            )
        })
        .collect();
    Model {
        settings,
        services: vec![ServicePort {
            key: ServicePortKey {
                service: ServiceName {
                    namespace: "workshop".into(),
                    name: "myfrontend".into(),
                },
                port_name: "http".into(),
                protocol: Protocol::Tcp,
            },
            port: 80,
            node_port: DEMO_NODE_PORT,
            node_port_allocated: false,
            target_port: 9000,
            endpoints,
            policy: Policy::default(),
            timeouts: defaults.timeouts,
            connect_retries: defaults.connect_retries,
            maglev_table_size: defaults.maglev_table_size,
            forwarding: Default::default(),
            udp_responses: None,
            traffic_policy: Default::default(),
            families: Default::default(),
            health: Default::default(),
            meta: None,
            addresses: Default::default(),
        }],
        primary_ips: Vec::new(),
    }
}

/// The demo pods' names and addresses: `pod-1` on 127.0.0.2:9000, and so on.
pub fn demo_pods() -> Vec<(String, SocketAddr)> {
    DEMO_POD_ADDRS
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                format!("pod-{}", i + 1),
                a.parse()
                    .expect("DEMO_POD_ADDRS are valid socket addresses"),
            )
        })
        .collect()
}

/// Running HTTP pods. Dropping it (or calling [`DemoPods::stop`]) stops every pod: the
/// listeners close, open connections are closed, and the pods' thread is joined.
pub struct DemoPods {
    /// (name, bound address): the port is the real one when port 0 was asked for.
    pods: Vec<(String, SocketAddr)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DemoPods {
    /// Binds every pod's address (fails if any is taken) and starts serving, on one thread
    /// with its own tokio runtime and [`crate::http`]'s server (its default limits).
    pub fn start(pods: &[(String, SocketAddr)]) -> io::Result<DemoPods> {
        // Bind all first, so a failure leaves nothing running.
        let mut listeners = Vec::with_capacity(pods.len());
        for (name, addr) in pods {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            let bound = listener.local_addr()?;
            listeners.push((name.clone(), bound, listener));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let named: Vec<(String, SocketAddr)> =
            listeners.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("demo-pods".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut servers = tokio::task::JoinSet::new();
                    for (name, bound, listener) in listeners {
                        let listener = match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = started_tx.send(Err(e));
                                return;
                            }
                        };
                        let body = Bytes::from(format!("hello from {name} ({bound})\n"));
                        let handler: http::Handler = Arc::new(move |_request| {
                            http::response(
                                200,
                                &[("Content-Type", "text/plain; charset=utf-8")],
                                body.clone(),
                            )
                        });
                        servers.spawn(http::serve(
                            listener,
                            http::Options::default(),
                            handler,
                            Arc::default(),
                        ));
                    }
                    let _ = started_tx.send(Ok(()));
                    let _ = stopped.await;
                    // Dropping the set aborts the servers: listeners and connections close.
                    servers.shutdown().await;
                });
            })?;
        let running = DemoPods {
            pods: named,
            stop: Some(stop),
            thread: Some(thread),
        };
        match started.recv() {
            Ok(Ok(())) => Ok(running),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("the demo pods' thread ended at start")),
        }
    }

    /// The pods' names and bound addresses.
    pub fn pods(&self) -> &[(String, SocketAddr)] {
        &self.pods
    }

    /// Stops every pod and waits for its thread. Idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DemoPods {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn start_one(name: &str, ip: &str) -> DemoPods {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        DemoPods::start(&[(name.to_string(), addr)]).expect("bind a demo pod on port 0")
    }

    /// Reads one HTTP response (status line, headers, Content-Length body).
    fn read_response(
        reader: &mut io::BufReader<TcpStream>,
    ) -> (String, Vec<(String, String)>, String) {
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("response has Content-Length")
            .1
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        (
            status.trim_end().to_string(),
            headers,
            String::from_utf8(body).unwrap(),
        )
    }

    fn connect(pods: &DemoPods) -> (TcpStream, io::BufReader<TcpStream>) {
        let s = TcpStream::connect(pods.pods()[0].1).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = io::BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    #[test]
    fn demo_model_is_the_seed_service() {
        let model = demo_model();
        assert_eq!(model.settings, Settings::default());
        assert_eq!(model.services.len(), 1);
        let svc = &model.services[0];
        assert_eq!(svc.key.to_string(), "workshop/myfrontend:http");
        assert_eq!(
            (svc.port, svc.target_port, svc.node_port),
            (80, 9000, 30000)
        );
        assert!(!svc.node_port_allocated);
        assert!(model.settings.node_port_range.contains(svc.node_port));
        let addrs: Vec<String> = svc.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, DEMO_POD_ADDRS);
        assert!(svc
            .endpoints
            .iter()
            .all(|e| e.weight == crate::model::DEFAULT_WEIGHT));
        assert_eq!(svc.policy, Policy::default());
        assert_eq!(svc.timeouts, ServiceDefaults::default().timeouts);
        assert_eq!(
            svc.connect_retries,
            ServiceDefaults::default().connect_retries
        );
    }

    #[test]
    fn demo_pods_are_named_after_their_addresses() {
        let pods = demo_pods();
        assert_eq!(pods[0].0, "pod-1");
        assert_eq!(pods[2].1.to_string(), "127.0.0.4:9000");
    }

    #[test]
    fn pod_answers_keep_alive_requests_with_its_name() {
        let pods = start_one("pod-7", "127.0.0.2");
        let bound = pods.pods()[0].1;
        assert_ne!(bound.port(), 0, "pods() reports the bound port");
        let (mut s, mut r) = connect(&pods);
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (status, headers, body) = read_response(&mut r);
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())));
            assert_eq!(body, format!("hello from pod-7 ({bound})\n"));
        }
        // A request with a body, pipelined with a second request.
        s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_response(&mut r).2,
            format!("hello from pod-7 ({bound})\n")
        );
        let (_, headers, _) = read_response(&mut r);
        assert!(headers.contains(&("connection".into(), "close".into())));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "pod closes after Connection: close");
    }

    #[test]
    fn pod_closes_http10_and_rejects_garbage() {
        let pods = start_one("pod-8", "127.0.0.3");
        let (mut s, mut r) = connect(&pods);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert!(body.starts_with("hello from pod-8"));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        let (mut s, mut r) = connect(&pods);
        s.write_all(b"NONSENSE\r\n\r\n").unwrap();
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn stop_closes_open_connections_and_frees_the_port() {
        let mut pods = start_one("pod-9", "127.0.0.4");
        let bound = pods.pods()[0].1;
        let (mut s, mut r) = connect(&pods);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        read_response(&mut r);
        pods.stop(); // must not hang on the open keep-alive connection
        let mut rest = Vec::new();
        // EOF or reset: either way the connection is gone.
        let _ = r.read_to_end(&mut rest);
        assert!(rest.is_empty());
        TcpListener::bind(bound).expect("port is free again after stop");
        pods.stop(); // idempotent
    }
}
