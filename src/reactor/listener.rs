//! A listening socket of either family, as the reactor accepts from it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};

use super::stream::{Peer, Sock};

/// One listening socket: TCP (every reactor has its own, SO_REUSEPORT), or a unix socket
/// (only reactor 0 has it: unix sockets have no SO_REUSEPORT).
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// The socket file's path is every unix client's peer in logs.
    Unix {
        listener: UnixListener,
        path: Arc<Path>,
    },
}

impl Listener {
    /// Accepts one connection.
    pub fn accept(&self) -> io::Result<(Sock, Peer)> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .map(|(sock, addr)| (Sock::Tcp(sock), Peer::Tcp(addr))),
            Listener::Unix { listener, path } => listener
                .accept()
                .map(|(sock, _)| (Sock::Unix(sock), Peer::Unix(path.clone()))),
        }
    }
}

impl mio::event::Source for Listener {
    fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, token, interest),
            Listener::Unix { listener, .. } => listener.register(r, token, interest),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, token, interest),
            Listener::Unix { listener, .. } => listener.reregister(r, token, interest),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix { listener, .. } => listener.deregister(r),
        }
    }
}
