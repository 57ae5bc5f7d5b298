//! A server of this module on its own thread and runtime, for the crate's unit tests.

use super::{serve, Handler, Options, ServerStats};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves on 127.0.0.1 (a kernel-chosen port) until dropped.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(options: Options, handler: Handler) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("bound address");
        let stats = Arc::new(ServerStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = Arc::clone(&stats);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::select! {
                    _ = serve(listener, options, handler, s) => {}
                    _ = stopped => {}
                }
            });
        });
        TestServer {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
