//! The server's limits against real sockets on loopback: keep-alive, the header-read
//! timeout, shedding the longest-idle connection at the bound, and prompt clients served
//! while many slow ones hang.

use super::testing::TestServer;
use super::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

fn echo_path() -> Handler {
    Arc::new(|req: &Request<Incoming>| {
        response(
            200,
            &[("Content-Type", "text/plain")],
            format!("you asked for {}\n", req.uri().path()),
        )
    })
}

fn start(limits: Limits) -> TestServer {
    TestServer::start(
        Options {
            limits,
            date_header: true,
        },
        echo_path(),
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response with a Content-Length body; returns (status line, body).
fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("a response");
        assert_eq!(
            n,
            1,
            "closed in the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (
        head.lines().next().unwrap().to_owned(),
        String::from_utf8(body).unwrap(),
    )
}

/// True once the server closed the connection (EOF or reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn get(s: &mut TcpStream, path: &str) -> (String, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_response(s)
}

#[test]
fn keep_alive_answers_several_requests_on_one_connection() {
    let server = start(Limits::DEFAULT);
    let mut s = connect(server.addr);
    for path in ["/a", "/b", "/c"] {
        let (status, body) = get(&mut s, path);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, format!("you asked for {path}\n"));
    }
    assert_eq!(server.stats.accepted.load(Ordering::Relaxed), 1);
    // Pipelined, with a body that the handler does not read.
    s.write_all(b"POST /d HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /e HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).1, "you asked for /d\n");
    assert_eq!(read_response(&mut s).1, "you asked for /e\n");
    // HTTP/1.0 without keep-alive: answered, then closed.
    s.write_all(b"GET /f HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).0, "HTTP/1.0 200 OK");
    assert!(closed_by_server(&mut s));
}

#[test]
fn header_read_timeout_closes_a_stalled_client_and_an_idle_one() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::DEFAULT
    };
    let server = start(limits);
    let mut stalled = connect(server.addr);
    stalled.write_all(b"GET /slow HTTP/1.1\r\nHo").unwrap();
    let t = Instant::now();
    assert!(
        closed_by_server(&mut stalled),
        "a half-sent head is closed by the header-read timeout"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    // Kept alive after a response, then idle: closed after the same time.
    let mut idle = connect(server.addr);
    assert_eq!(get(&mut idle, "/x").0, "HTTP/1.1 200 OK");
    assert!(
        closed_by_server(&mut idle),
        "an idle kept-alive connection is closed"
    );
}

/// At the bound, a new connection closes the one idle the longest; the others stay.
#[test]
fn over_the_bound_the_longest_idle_connection_is_shed() {
    let limits = Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(60),
        ..Limits::DEFAULT
    };
    let server = start(limits);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..4 {
        let mut s = connect(server.addr);
        s.write_all(b"GET /held HTTP/1.1\r\n").unwrap();
        held.push(s);
        // Accepted in order: each is in the table before the next connects.
        let want = held.len() as u64;
        wait_until(|| server.stats.accepted.load(Ordering::Relaxed) >= want);
    }
    let mut probe = connect(server.addr);
    assert_eq!(get(&mut probe, "/probe").1, "you asked for /probe\n");
    assert_eq!(server.stats.shed.load(Ordering::Relaxed), 1);
    assert!(
        closed_by_server(&mut held[0]),
        "the oldest idle one is shed"
    );
    // The other three are still open: they finish their requests.
    for s in &mut held[1..] {
        s.write_all(b"Host: t\r\n\r\n").unwrap();
        assert_eq!(read_response(s).1, "you asked for /held\n");
    }
}

/// More slow clients than the bound, each holding half a request head: prompt clients
/// are still answered, every one of them.
#[test]
fn slow_clients_do_not_keep_prompt_ones_out() {
    let limits = Limits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(60),
        ..Limits::DEFAULT
    };
    let server = start(limits);
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut s = connect(server.addr);
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sl").unwrap();
        slow.push(s);
    }
    for i in 0..7 {
        let mut probe = connect(server.addr);
        probe
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (status, body) = get(&mut probe, &format!("/healthz{i}"));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, format!("you asked for /healthz{i}\n"));
    }
    drop(slow);
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A large answer read slowly is not cut by the header-read timeout of the next request.
#[test]
fn a_slow_reader_gets_a_large_answer_whole() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::DEFAULT
    };
    let big: Handler = Arc::new(|_req: &Request<Incoming>| {
        response(200, &[("Content-Type", "text/plain")], vec![b'x'; 32 << 20])
    });
    let server = TestServer::start(
        Options {
            limits,
            date_header: true,
        },
        big,
    );
    let mut s = connect(server.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < (32 << 20) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes, {:?}", t.elapsed());
        got += n;
        // The slow client's pace (not a wait for a condition): about 2.5 s for the whole
        // answer, most of it beyond what the kernel's socket buffers hold, so hyper is
        // still writing long after the 300 ms timeout.
        std::thread::sleep(Duration::from_millis(5));
    }
}
