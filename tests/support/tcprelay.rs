//! A TCP relay between pglink and PostgreSQL that a test can cut, to lose server connections
//! the way a network does: no FATAL message, just a connection reset.
//!
//! ```ignore
//! let relay = TcpRelay::start(pg.port());
//! let proxy = ProxyConfig::new(pg).backend("port", json!(relay.port())).start();
//! relay.cut(); // every connection through the relay is reset; new ones still work
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct TcpRelay {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl TcpRelay {
    /// Listens on an ephemeral loopback port and forwards to 127.0.0.1:`target_port`.
    pub fn start(target_port: u16) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (live2, stop2) = (live.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = live2.lock().unwrap_or_else(|e| e.into_inner());
                    live.extend(
                        [client.try_clone(), server.try_clone()]
                            .into_iter()
                            .flatten(),
                    );
                }
                pump(client.try_clone(), server.try_clone());
                pump(server.try_clone(), client.try_clone());
            }
        });
        TcpRelay { addr, live, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Resets every connection made through the relay so far.
    pub fn cut(&self) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for s in live.drain(..) {
            // SO_LINGER 0 would send a RST; a shutdown of both directions is enough for
            // pglink to see the connection end without any message from the server.
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
