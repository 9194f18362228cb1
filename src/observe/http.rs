//! The admin HTTP endpoint (feature `metrics`): `prometheus.path` (the metrics, Prometheus
//! text format), `GET /healthz`, `GET /debug/pools`, and with a flight recorder
//! `GET /debug/flight-recorder/snapshot` (takes one: writes the file and answers its JSON)
//! and `GET /debug/flight-recorder/status`.
//!
//! One thread per listening socket (`pglink-metrics`) reads each request's head (bounded in
//! size and time), answers it with `Connection: close` and reads only the reactors' atomics
//! (see `observe::prometheus`). Nothing here is on a reactor's path: a slow or stuck scraper
//! delays other scrapes, never a client. Request bodies are never read. The threads are
//! pglink's own, named and joined on shutdown, as an embedding host expects.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{ListenAddr, ListenHost};
use crate::server::Shared;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// Binds `prometheus.listen`. A port alone (all interfaces) is one dual-stack IPv6 socket,
/// or IPv4 only where IPv6 is unavailable; a host name binds every address it resolves to.
/// On failure: the address that could not be bound, and why.
pub fn bind(listen: &ListenAddr) -> Result<Vec<TcpListener>, (String, io::Error)> {
    if listen.host == ListenHost::All {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), listen.port);
        return match bind_one(v6, true) {
            Ok(l) => Ok(vec![l]),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err((v6.to_string(), e)),
            Err(_) => {
                let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), listen.port);
                bind_one(v4, false)
                    .map(|l| vec![l])
                    .map_err(|e| (v4.to_string(), e))
            }
        };
    }
    let mut addrs = listen
        .to_socket_addrs()
        .map_err(|e| (listen.to_string(), e))?;
    addrs.dedup();
    addrs
        .into_iter()
        .map(|a| bind_one(a, false).map_err(|e| (a.to_string(), e)))
        .collect()
}

fn bind_one(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    // TIME_WAIT connections of an earlier run must not block the port; no SO_REUSEPORT, so
    // a port another process listens on is an error.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    Ok(socket.into())
}

/// How long one request may take to arrive, and its answer to be taken.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;

/// The running endpoint: one answering thread per listening socket.
pub struct AdminServer {
    threads: Vec<JoinHandle<()>>,
    /// The listening sockets the threads accept on (shut down to wake them).
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    stopping: Arc<AtomicBool>,
}

impl AdminServer {
    /// Serves the bound `listeners`; `path` is `prometheus.path`.
    pub fn start(
        listeners: Vec<TcpListener>,
        shared: Arc<Shared>,
        path: &str,
    ) -> io::Result<AdminServer> {
        let registry = Arc::new(super::prometheus::registry(shared.clone()));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut admin = AdminServer {
            threads: Vec::new(),
            listeners: Vec::new(),
            addrs: Vec::new(),
            stopping: stopping.clone(),
        };
        for listener in listeners {
            admin.addrs.push(listener.local_addr()?);
            admin.listeners.push(listener.try_clone()?);
            let handler = Handler {
                shared: shared.clone(),
                registry: registry.clone(),
                path: path.to_owned(),
            };
            let stopping = stopping.clone();
            let thread = std::thread::Builder::new()
                .name("pglink-metrics".into())
                .spawn(move || handler.serve(&listener, &stopping))?;
            admin.threads.push(thread);
        }
        log::info!(
            "metrics on {} (path {path}, also /healthz and /debug/pools)",
            admin
                .addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(admin)
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops answering, waits for the answering threads and closes the sockets.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Shutting a listening socket down wakes the thread blocked in its `accept` (Linux);
        // it sees the flag and returns.
        for listener in self.listeners.drain(..) {
            let _ = socket2::SockRef::from(&listener).shutdown(std::net::Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Handler {
    shared: Arc<Shared>,
    registry: Arc<prometheus::Registry>,
    path: String,
}

/// A request's method and path, as far as this endpoint cares.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
    /// `None`: a method other than GET and HEAD.
    path: Option<String>,
}

impl Handler {
    /// Answers connections one at a time until stopped (a slow scraper delays the next
    /// scrape by at most `IO_TIMEOUT`, never a client of the proxy).
    fn serve(&self, listener: &TcpListener, stopping: &AtomicBool) {
        loop {
            let accepted = listener.accept();
            if stopping.load(Ordering::Acquire) {
                return;
            }
            match accepted {
                Ok((stream, _)) => {
                    if let Err(e) = self.answer(stream) {
                        log::debug!("metrics: cannot answer a request: {e}");
                    }
                }
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// One request and its answer, within `IO_TIMEOUT` in all (a socket timeout alone would
    /// restart with every byte a slow client trickles in).
    fn answer(&self, stream: TcpStream) -> io::Result<()> {
        let mut stream = Deadlined {
            stream,
            deadline: Instant::now() + IO_TIMEOUT,
        };
        let Some(request) = read_request(&mut stream)? else {
            return write_response(&mut stream, 400, PLAIN, "bad request\n", false);
        };
        let (status, content_type, body) = match &request.path {
            Some(path) => self.route(path.split('?').next().unwrap_or_default()),
            None => (405, PLAIN, "only GET is supported\n".to_owned()),
        };
        // A snapshot may take a moment to make: the answer gets its own time to be taken.
        stream.deadline = Instant::now() + IO_TIMEOUT;
        write_response(&mut stream, status, content_type, &body, request.head_only)
    }

    fn route(&self, path: &str) -> (u16, &'static str, String) {
        if path == self.path {
            return (200, TEXT_FORMAT, super::prometheus::render(&self.registry));
        }
        match path {
            "/healthz" => {
                let (running, all) = (self.shared.reactors_running(), self.shared.reactor_count());
                if self.shared.is_stopping() {
                    (503, PLAIN, "draining\n".to_owned())
                } else if running < all {
                    (503, PLAIN, format!("{running} of {all} reactors running\n"))
                } else {
                    (200, PLAIN, "ok\n".to_owned())
                }
            }
            "/debug/pools" => (200, JSON, super::prometheus::pools_json(&self.shared)),
            "/debug/flight-recorder/snapshot" => self.flight_snapshot(),
            "/debug/flight-recorder/status" => match self.shared.flight() {
                Some(recorder) => (200, JSON, recorder.status_json()),
                None => (404, PLAIN, NO_RECORDER.to_owned()),
            },
            _ => (404, PLAIN, "not found\n".to_owned()),
        }
    }
}

const NO_RECORDER: &str = "no flight_recorder is configured\n";

impl Handler {
    /// Takes a snapshot (the trigger `http`): its JSON, once its file is written.
    fn flight_snapshot(&self) -> (u16, &'static str, String) {
        use super::flight::{SnapshotError, Trigger};
        let Some(recorder) = self.shared.flight() else {
            return (404, PLAIN, NO_RECORDER.to_owned());
        };
        match recorder.snapshot(Trigger::Http) {
            Ok(snapshot) => (200, JSON, snapshot.json),
            Err(SnapshotError::Busy) => (503, PLAIN, "flight recorder busy, retry\n".to_owned()),
            Err(e) => (500, PLAIN, format!("{e}\n")),
        }
    }
}

/// A connection whose every read and write must finish by one `deadline`.
struct Deadlined {
    stream: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    /// Time left, or `TimedOut` when none is.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl io::Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl io::Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Reads a request head; `None` when it is not HTTP/1.x or too long.
fn read_request(stream: &mut impl io::Read) -> io::Result<Option<Request>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(parse_request_line(&head))
}

fn parse_request_line(head: &[u8]) -> Option<Request> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some(Request {
        head_only: method == "HEAD",
        path: matches!(method, "GET" | "HEAD").then(|| target.to_owned()),
    })
}

fn write_response(
    stream: &mut impl io::Write,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_one_deadline_in_all_not_one_per_read() {
        use std::io::Read as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut spent = Deadlined {
            stream,
            deadline: Instant::now(),
        };
        let e = spent.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // With time left, a read waits at most that long (the client sends nothing).
        spent.deadline = Instant::now() + Duration::from_millis(50);
        let started = Instant::now();
        assert!(spent.read(&mut [0u8; 8]).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn request_lines() {
        let get = |path: &str| Request {
            head_only: false,
            path: Some(path.into()),
        };
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(get("/metrics"))
        );
        assert_eq!(
            parse_request_line(b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n"),
            Some(Request {
                head_only: true,
                path: Some("/healthz?x=1".into())
            })
        );
        assert_eq!(
            parse_request_line(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request {
                head_only: false,
                path: None
            })
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }
}
