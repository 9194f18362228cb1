//! The admin HTTP endpoint (feature `metrics`): `prometheus.path` (the metrics, Prometheus
//! text format), `GET /healthz` and `GET /debug/pools`.
//!
//! tiny_http parses the requests on its own threads; one thread per listening socket answers
//! them, reading only the reactors' atomics (see `observe::prometheus`). Nothing here is on
//! a reactor's path: a slow or stuck scraper delays other scrapes, never a client. Request
//! bodies are never read.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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

/// The running endpoint: one tiny_http server and answering thread per listening socket.
pub struct AdminServer {
    servers: Vec<Arc<tiny_http::Server>>,
    threads: Vec<JoinHandle<()>>,
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
            servers: Vec::new(),
            threads: Vec::new(),
            addrs: Vec::new(),
            stopping: stopping.clone(),
        };
        for listener in listeners {
            admin.addrs.push(listener.local_addr()?);
            let server = tiny_http::Server::from_listener(listener, None)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let server = Arc::new(server);
            admin.servers.push(server.clone());
            let handler = Handler {
                shared: shared.clone(),
                registry: registry.clone(),
                path: path.to_owned(),
            };
            let stopping = stopping.clone();
            let thread = std::thread::Builder::new()
                .name("pglink-metrics".into())
                .spawn(move || handler.serve(&server, &stopping))?;
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
        for server in &self.servers {
            server.unblock();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Dropping the last reference stops tiny_http's accept thread and closes the socket.
        self.servers.clear();
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

impl Handler {
    fn serve(&self, server: &tiny_http::Server, stopping: &AtomicBool) {
        loop {
            match server.recv() {
                Ok(request) => self.answer(request),
                Err(e) => {
                    if !stopping.load(Ordering::Acquire) {
                        log::warn!("metrics endpoint stopped: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn answer(&self, request: tiny_http::Request) {
        let path = request.url().split('?').next().unwrap_or_default();
        let (status, content_type, body) = match request.method() {
            tiny_http::Method::Get | tiny_http::Method::Head => self.route(path),
            _ => (405, PLAIN, "only GET is supported\n".to_owned()),
        };
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(header) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type) {
            response.add_header(header);
        }
        if let Err(e) = request.respond(response) {
            log::debug!("metrics: cannot answer a request: {e}");
        }
    }

    fn route(&self, path: &str) -> (u16, &'static str, String) {
        if path == self.path {
            return (200, TEXT_FORMAT, super::prometheus::render(&self.registry));
        }
        match path {
            "/healthz" => {
                let (running, all) = (self.shared.reactors_running(), self.shared.reactor_count());
                if self.shared.is_stopping() {
                    (503, PLAIN, "stopping\n".to_owned())
                } else if running < all {
                    (503, PLAIN, format!("{running} of {all} reactors running\n"))
                } else {
                    (200, PLAIN, "ok\n".to_owned())
                }
            }
            "/debug/pools" => (200, JSON, super::prometheus::pools_json(&self.shared)),
            _ => (404, PLAIN, "not found\n".to_owned()),
        }
    }
}
