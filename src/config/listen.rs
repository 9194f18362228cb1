//! Listen addresses (`listen`, `prometheus.listen`).
//!
//! Accepted forms, as in Go's `net.Listen`: `"5432"` and `":5432"` (every interface, IPv4 and
//! IPv6), `"127.0.0.1:5432"`, `"[::1]:5432"`, `"localhost:5432"` (resolved when binding).
//! Port 0 asks the OS for a free port, which tests use. A client `listen` entry may also be
//! an absolute path: a unix socket ([`Listen::Unix`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Longest unix socket path (`sun_path` is 108 bytes on Linux, with the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// One entry of the top-level `listen`: a TCP address, or a unix socket file to create.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Listen {
    Tcp(ListenAddr),
    /// The socket file itself (libpq finds `<dir>/.s.PGSQL.<port>` for `host=<dir>
    /// port=<port>`).
    Unix(PathBuf),
}

impl Listen {
    /// An absolute path is a unix socket; anything else a TCP address ([`ListenAddr::parse`]).
    pub fn parse(text: &str) -> Result<Listen, String> {
        let s = text.trim();
        if !s.starts_with('/') {
            return ListenAddr::parse(text).map(Listen::Tcp);
        }
        if s.ends_with('/') {
            return Err(format!(
                "listen path {text:?} is a directory: name the socket file, e.g. \
                 \"{s}.s.PGSQL.5432\""
            ));
        }
        if s.len() > MAX_UNIX_PATH {
            return Err(format!(
                "listen path {text:?} is {} bytes long; unix socket paths are limited to \
                 {MAX_UNIX_PATH}",
                s.len()
            ));
        }
        if s.contains('\0') {
            return Err(format!("listen path {text:?} contains a NUL byte"));
        }
        Ok(Listen::Unix(PathBuf::from(s)))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(path) => path.display().fmt(f),
        }
    }
}

impl serde::Serialize for Listen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Listen::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The host part of a listen address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenHost {
    /// No host given: every interface, both IPv4 (`0.0.0.0`) and IPv6 (`[::]`).
    All,
    /// A literal IP address; binds only that address.
    Ip(IpAddr),
    /// A host name, resolved when binding; binds every address it resolves to.
    Name(String),
}

/// One parsed listen address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    pub host: ListenHost,
    pub port: u16,
}

impl ListenAddr {
    /// Parses `"5432"`, `":5432"`, `"host:5432"`, `"1.2.3.4:5432"` or `"[::1]:5432"`.
    pub fn parse(text: &str) -> Result<ListenAddr, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("empty listen address".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(ListenAddr {
                host: ListenHost::All,
                port: parse_port(s, text)?,
            });
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("listen address {text:?}: expected \"[IPv6]:port\""))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("listen address {text:?}: invalid IPv6 address {ip:?}"))?;
            (ListenHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| {
                format!("listen address {text:?} has no port (expected \"host:port\" or \":port\")")
            })?;
            if host.contains(':') {
                return Err(format!(
                    "listen address {text:?}: put IPv6 addresses in brackets, e.g. \"[::1]:5432\""
                ));
            }
            (parse_host(host, text)?, port)
        };
        Ok(ListenAddr {
            host,
            port: parse_port(port, text)?,
        })
    }

    /// True when the address binds every interface.
    pub fn is_all_interfaces(&self) -> bool {
        self.host == ListenHost::All
    }

    /// The socket addresses to bind: `0.0.0.0:port` and `[::]:port` for all interfaces, the
    /// literal address, or every address the host name resolves to (this may block on DNS).
    pub fn to_socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match &self.host {
            ListenHost::All => Ok(vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
            ]),
            ListenHost::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            ListenHost::Name(name) => {
                let addrs: Vec<SocketAddr> =
                    (name.as_str(), self.port).to_socket_addrs()?.collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{name} resolves to no address"),
                    ));
                }
                Ok(addrs)
            }
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            ListenHost::All => write!(f, ":{}", self.port),
            ListenHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            ListenHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            ListenHost::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ListenAddr::parse(s)
    }
}

impl serde::Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_port(port: &str, text: &str) -> Result<u16, String> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("listen address {text:?}: invalid port {port:?}"));
    }
    port.parse()
        .map_err(|_| format!("listen address {text:?}: port {port} is out of range (0..=65535)"))
}

fn parse_host(host: &str, text: &str) -> Result<ListenHost, String> {
    if host.is_empty() {
        return Ok(ListenHost::All);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ListenHost::Ip(ip));
    }
    let valid = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(ListenHost::Name(host.to_owned()))
    } else {
        Err(format!("listen address {text:?}: invalid host {host:?}"))
    }
}

/// `#[serde(with = "listen::serde_list")]`: a string or an array of strings.
pub mod serde_list {
    use super::Listen;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(list: &[Listen], s: S) -> Result<S::Ok, S::Error> {
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Listen>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Listen),
            Many(Vec<Listen>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(addr) => vec![addr],
            OneOrMany::Many(list) => list,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ListenAddr {
        ListenAddr::parse(s).unwrap()
    }

    #[test]
    fn bare_port_means_every_interface() {
        for s in ["5432", ":5432", " :5432 "] {
            let a = p(s);
            assert!(a.is_all_interfaces());
            assert_eq!(a.port, 5432);
            assert_eq!(a.to_string(), ":5432");
            let addrs = a.to_socket_addrs().unwrap();
            assert_eq!(
                addrs,
                vec![
                    "0.0.0.0:5432".parse::<SocketAddr>().unwrap(),
                    "[::]:5432".parse().unwrap()
                ]
            );
        }
    }

    #[test]
    fn literal_and_named_hosts() {
        assert_eq!(p("127.0.0.1:6432").to_string(), "127.0.0.1:6432");
        assert_eq!(
            p("0.0.0.0:1").to_socket_addrs().unwrap(),
            vec!["0.0.0.0:1".parse::<SocketAddr>().unwrap()]
        );
        let v6 = p("[::1]:7000");
        assert_eq!(v6.host, ListenHost::Ip("::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "[::1]:7000");
        let named = p("localhost:7001");
        assert_eq!(named.host, ListenHost::Name("localhost".into()));
        assert!(
            named
                .to_socket_addrs()
                .unwrap()
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7001)
        );
        assert_eq!(p(":0").port, 0);
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "host",
            "host:",
            ":",
            ":65536",
            ":-1",
            "::1:5432",
            "[::1]",
            "[nope]:1",
            "a b:1",
            "host:port",
        ] {
            assert!(
                ListenAddr::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn serde_one_or_many() {
        #[derive(serde::Deserialize)]
        struct W {
            #[serde(with = "serde_list")]
            l: Vec<Listen>,
        }
        let one: W = serde_json::from_str(r#"{"l":"6432"}"#).unwrap();
        assert_eq!(one.l, vec![Listen::Tcp(p(":6432"))]);
        let many: W =
            serde_json::from_str(r#"{"l":[":1","127.0.0.1:2","/run/pglink/.s.PGSQL.6432"]}"#)
                .unwrap();
        assert_eq!(many.l.len(), 3);
        assert_eq!(
            many.l[2],
            Listen::Unix(PathBuf::from("/run/pglink/.s.PGSQL.6432"))
        );
    }

    #[test]
    fn unix_socket_paths() {
        let l = Listen::parse(" /tmp/.s.PGSQL.6432 ").unwrap();
        assert_eq!(l, Listen::Unix("/tmp/.s.PGSQL.6432".into()));
        assert_eq!(l.to_string(), "/tmp/.s.PGSQL.6432");
        assert_eq!(Listen::parse(":1").unwrap(), Listen::Tcp(p(":1")));
        for bad in [
            "/tmp/",
            &format!("/{}", "x".repeat(MAX_UNIX_PATH)),
            "/a\0b",
            "tmp/s",
        ] {
            assert!(Listen::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Listen::parse(&format!("/{}", "x".repeat(MAX_UNIX_PATH - 1))).is_ok());
    }
}
