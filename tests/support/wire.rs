//! A small blocking PostgreSQL wire client for tests that need to see (or send) exact bytes:
//! built on `pglink::protocol` builders/decoders and `pglink::auth::ScramClient`, over a plain
//! `TcpStream` or a rustls stream (after SSLRequest, or direct TLS). Every read is bounded by
//! the socket's read timeout ([`IO_TIMEOUT`] unless changed).
//!
//! ```ignore
//! let mut c = Conn::plain(proxy.addr);
//! let info = c.login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &LoginOptions::default())?;
//! assert_eq!(c.simple_query("SELECT 1")?, vec![vec![Some("1".into())]]);
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

use pglink::auth::{
    ClientChannelBinding, OsRng, SaltedKeyCache, ScramClient, select_mechanism,
    tls_server_end_point,
};
use pglink::protocol::backend::{Authentication, BackendMessage};
use pglink::protocol::startup::{ProtocolVersion, ssl_request, startup_message};
use pglink::protocol::{ErrorFields, frontend};

use super::pg::PgServer;

/// Default bound on every blocking read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Anything a connection can run over.
pub trait Transport: Read + Write + Send {}
impl<T: Read + Write + Send> Transport for T {}

/// An ErrorResponse (or NoticeResponse) in readable form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl PgError {
    pub fn decode(tag: u8, body: &[u8]) -> PgError {
        let fields = ErrorFields::decode(tag, body)
            .unwrap_or_else(|e| panic!("undecodable ErrorResponse {body:?}: {e}"));
        let s = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        PgError {
            severity: s(fields.severity()),
            code: s(fields.code()),
            message: s(fields.message()),
        }
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// How a login or query went wrong.
#[derive(Debug)]
pub enum Failure {
    /// The server sent an ErrorResponse.
    Server(PgError),
    /// The connection closed (or was reset) before the expected answer.
    Closed,
    /// Nothing arrived within the read timeout.
    TimedOut,
    /// Our side refused (SCRAM error, unexpected message, ...).
    Client(String),
}

impl Failure {
    /// The server error, panicking with the actual failure otherwise.
    pub fn server_error(self) -> PgError {
        match self {
            Failure::Server(e) => e,
            other => panic!("expected an ErrorResponse, got {other:?}"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Closed,
            _ => Failure::Client(format!("I/O error: {e}")),
        }
    }
}

/// Channel binding behaviour of our SCRAM client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Binding {
    /// libpq's `channel_binding=prefer`: PLUS when offered and TLS is up.
    #[default]
    Prefer,
    /// Never bind (gs2 flag `n`).
    Disable,
    /// `channel_binding=require`.
    Require,
    /// Use SCRAM-SHA-256-PLUS with these (deliberately wrong) binding bytes.
    Wrong(Vec<u8>),
    /// Plain SCRAM-SHA-256 with gs2 flag `y` ("I could bind but you did not offer PLUS"),
    /// which a server that did offer PLUS must treat as a downgrade attack.
    ClaimNotOffered,
}

/// What to send and how to authenticate.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    pub version: ProtocolVersion,
    /// Extra startup parameters.
    pub params: Vec<(String, String)>,
    pub binding: Binding,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            version: ProtocolVersion::V3_0,
            params: Vec::new(),
            binding: Binding::Prefer,
        }
    }
}

/// What a successful login showed.
#[derive(Clone, Debug, Default)]
pub struct LoginInfo {
    /// Tags of every message up to and including ReadyForQuery, in order.
    pub tags: Vec<u8>,
    /// The SASL mechanisms offered (empty when not SASL).
    pub offered: Vec<String>,
    /// The mechanism we used (`SCRAM-SHA-256`, `SCRAM-SHA-256-PLUS`, `md5`, `password`, or
    /// `trust` when AuthenticationOk came first).
    pub method: String,
    /// NegotiateProtocolVersion's newest minor version, if one was sent.
    pub negotiated_minor: Option<u32>,
    pub params: Vec<(String, String)>,
    pub key: Option<(u32, Vec<u8>)>,
}

impl LoginInfo {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Rows of a simple query, NULL as `None`.
pub type Rows = Vec<Vec<Option<String>>>;

/// How a connection ended after something was sent that should end it.
#[derive(Debug, Default)]
pub struct Ending {
    /// ErrorResponses received before the end.
    pub errors: Vec<PgError>,
    /// Tags of all other messages received.
    pub other: Vec<u8>,
    /// The peer closed the connection (EOF or reset).
    pub closed: bool,
    /// The read timeout passed with the connection still open.
    pub hung: bool,
    /// How long until the connection ended (or the timeout).
    pub elapsed: Duration,
}

/// One client connection.
pub struct Conn {
    io: Box<dyn Transport>,
    /// The raw socket (for timeouts and shutdown, also under TLS).
    pub tcp: TcpStream,
    buf: Vec<u8>,
    /// `tls-server-end-point` hash of the server's certificate when TLS is up.
    pub end_point: Option<Vec<u8>>,
    /// The DER of the server's leaf certificate when TLS is up.
    pub peer_cert: Option<Vec<u8>>,
    /// ALPN protocol the TLS handshake agreed on.
    pub alpn: Option<Vec<u8>>,
}

impl Conn {
    /// A plain TCP connection with [`IO_TIMEOUT`] on reads and writes.
    pub fn plain(addr: SocketAddr) -> Conn {
        let tcp = connect(addr);
        Conn {
            io: Box::new(tcp.try_clone().expect("clone socket")),
            tcp,
            buf: Vec::new(),
            end_point: None,
            peer_cert: None,
            alpn: None,
        }
    }

    /// SSLRequest; on 'S' a TLS handshake with `config` (`Err` carries the answer byte
    /// otherwise, or the handshake error).
    pub fn tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<Conn, String> {
        let mut tcp = connect(addr);
        let mut req = Vec::new();
        ssl_request(&mut req);
        tcp.write_all(&req).map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .map_err(|e| format!("reading the SSL answer: {e}"))?;
        if answer[0] != b'S' {
            return Err(format!(
                "server answered {:?} to SSLRequest",
                answer[0] as char
            ));
        }
        Conn::handshake(tcp, config, name)
    }

    /// Direct TLS (PostgreSQL 17 `sslnegotiation=direct`): the ClientHello is the first byte.
    pub fn direct_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<Conn, String> {
        Conn::handshake(connect(addr), config, name)
    }

    fn handshake(
        mut tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<Conn, String> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let mut tls = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        let peer_cert = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        // None when the certificate's signature has no hash (Ed25519): no binding possible.
        let end_point = peer_cert
            .as_deref()
            .and_then(|c| tls_server_end_point(c).ok());
        let alpn = tls.alpn_protocol().map(<[u8]>::to_vec);
        let raw = tcp.try_clone().expect("clone socket");
        Ok(Conn {
            io: Box::new(rustls::StreamOwned::new(tls, tcp)),
            tcp: raw,
            buf: Vec::new(),
            end_point,
            peer_cert,
            alpn,
        })
    }

    /// A connection over an established stream (e.g. after a login driven elsewhere);
    /// `buffered` are bytes already read from it but not consumed.
    pub fn from_stream(io: Box<dyn Transport>, tcp: TcpStream, buffered: Vec<u8>) -> Conn {
        Conn {
            io,
            tcp,
            buf: buffered,
            end_point: None,
            peer_cert: None,
            alpn: None,
        }
    }

    /// The raw socket of a plain connection, for holding it open at the smallest cost (no
    /// buffers). Panics if bytes were buffered.
    pub fn into_tcp(self) -> TcpStream {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        self.tcp
    }

    /// The raw socket and any bytes read from it but not consumed yet.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.tcp, self.buf)
    }

    /// Back from [`into_tcp`](Self::into_tcp).
    pub fn from_tcp(tcp: TcpStream) -> Conn {
        let io = Box::new(tcp.try_clone().expect("clone socket"));
        Conn::from_stream(io, tcp, Vec::new())
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.tcp.set_read_timeout(Some(timeout)).expect("timeout");
    }

    /// Writes raw bytes (and flushes TLS).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    /// Half-closes our sending side.
    pub fn shutdown_write(&self) {
        let _ = self.tcp.shutdown(Shutdown::Write);
    }

    /// The next message; `Ok(None)` on a clean EOF between messages.
    pub fn read_message(&mut self) -> Result<Option<(u8, Vec<u8>)>, Failure> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!(
                    (4..=64 << 20).contains(&len),
                    "server sent a message with length {len}: {:?}",
                    &self.buf[..5]
                );
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Ok(Some((tag, body)));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.io.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Like [`read_message`](Self::read_message), EOF being a failure.
    pub fn expect_message(&mut self) -> Result<(u8, Vec<u8>), Failure> {
        self.read_message()?.ok_or(Failure::Closed)
    }

    /// Sends a StartupMessage for `user` on `database`.
    pub fn send_startup(&mut self, user: &str, database: &str, options: &LoginOptions) {
        let mut params: Vec<(&[u8], &[u8])> = vec![
            (b"user", user.as_bytes()),
            (b"database", database.as_bytes()),
        ];
        for (k, v) in &options.params {
            params.push((k.as_bytes(), v.as_bytes()));
        }
        let mut out = Vec::new();
        startup_message(&mut out, options.version, &params);
        self.send(&out).expect("send startup");
    }

    /// StartupMessage, authentication, and everything up to ReadyForQuery.
    pub fn login(
        &mut self,
        user: &str,
        database: &str,
        password: &str,
        options: &LoginOptions,
    ) -> Result<LoginInfo, Failure> {
        let mut cache = SaltedKeyCache::new(1);
        self.login_cached(user, database, password, options, &mut cache)
    }

    /// [`login`](Self::login) with a PBKDF2 cache shared across logins (thousands of them).
    pub fn login_cached(
        &mut self,
        user: &str,
        database: &str,
        password: &str,
        options: &LoginOptions,
        cache: &mut SaltedKeyCache,
    ) -> Result<LoginInfo, Failure> {
        self.send_startup(user, database, options);
        self.authenticate(user, password, &options.binding, cache)
    }

    /// Answers the server's authentication requests, then reads up to ReadyForQuery.
    pub fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        binding: &Binding,
        cache: &mut SaltedKeyCache,
    ) -> Result<LoginInfo, Failure> {
        let mut info = LoginInfo::default();
        let mut scram: Option<ScramClient> = None;
        loop {
            let (tag, body) = self.expect_message()?;
            info.tags.push(tag);
            let msg = BackendMessage::decode(tag, &body)
                .map_err(|e| Failure::Client(format!("undecodable message: {e}")))?;
            let mut out = Vec::new();
            match msg {
                BackendMessage::ErrorResponse(_) => {
                    return Err(Failure::Server(PgError::decode(tag, &body)));
                }
                BackendMessage::NegotiateProtocolVersion(v) => {
                    info.negotiated_minor = Some(v.newest_minor);
                }
                BackendMessage::Authentication(auth) => match auth {
                    Authentication::Ok => {
                        if let Some(s) = &scram
                            && !s.is_complete()
                        {
                            return Err(Failure::Client("AuthenticationOk before SASL end".into()));
                        }
                        if info.method.is_empty() {
                            info.method = "trust".into();
                        }
                    }
                    Authentication::CleartextPassword => {
                        info.method = "password".into();
                        frontend::password(&mut out, password.as_bytes());
                    }
                    Authentication::Md5Password { salt } => {
                        info.method = "md5".into();
                        let hash =
                            pglink::auth::md5_password(user.as_bytes(), password.as_bytes(), salt);
                        frontend::password(&mut out, &hash);
                    }
                    Authentication::Sasl(mechs) => {
                        info.offered = mechs
                            .iter()
                            .map(|m| String::from_utf8_lossy(m).into_owned())
                            .collect();
                        let (mechanism, cb) = match binding {
                            Binding::Wrong(bytes) => (
                                pglink::auth::SCRAM_SHA_256_PLUS,
                                ClientChannelBinding::TlsServerEndPoint(bytes.clone()),
                            ),
                            Binding::ClaimNotOffered => {
                                (pglink::auth::SCRAM_SHA_256, ClientChannelBinding::NotUsed)
                            }
                            Binding::Disable => select_mechanism(mechs.iter(), None, false)
                                .map_err(|e| {
                                    Failure::Client(format!("mechanism selection: {e}"))
                                })?,
                            Binding::Prefer | Binding::Require => select_mechanism(
                                mechs.iter(),
                                self.end_point.clone(),
                                *binding == Binding::Require,
                            )
                            .map_err(|e| Failure::Client(format!("mechanism selection: {e}")))?,
                        };
                        info.method = mechanism.into();
                        let client = ScramClient::new(password.as_bytes(), cb, &mut OsRng);
                        frontend::sasl_initial_response(
                            &mut out,
                            mechanism.as_bytes(),
                            Some(&client.client_first()),
                        );
                        scram = Some(client);
                    }
                    Authentication::SaslContinue { data } => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| Failure::Client("SASLContinue without SASL".into()))?;
                        let reply = s
                            .on_server_first_cached(data, cache)
                            .map_err(|e| Failure::Client(format!("SCRAM: {e}")))?;
                        frontend::sasl_response(&mut out, &reply);
                    }
                    Authentication::SaslFinal { data } => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| Failure::Client("SASLFinal without SASL".into()))?;
                        s.on_server_final(data)
                            .map_err(|e| Failure::Client(format!("SCRAM final: {e}")))?;
                    }
                    other => {
                        return Err(Failure::Client(format!("unsupported auth {other:?}")));
                    }
                },
                BackendMessage::ParameterStatus(p) => info.params.push((
                    String::from_utf8_lossy(p.name).into_owned(),
                    String::from_utf8_lossy(p.value).into_owned(),
                )),
                BackendMessage::BackendKeyData(k) => info.key = Some((k.pid, k.key.to_vec())),
                BackendMessage::NoticeResponse(_) => {}
                BackendMessage::ReadyForQuery(_) => return Ok(info),
                other => {
                    return Err(Failure::Client(format!(
                        "unexpected message during login: {other:?}"
                    )));
                }
            }
            if !out.is_empty() {
                self.send(&out)?;
            }
        }
    }

    /// Runs one simple query; the rows of its (last) result set.
    pub fn simple_query(&mut self, sql: &str) -> Result<Rows, Failure> {
        let mut out = Vec::new();
        frontend::query(&mut out, sql.as_bytes());
        self.send(&out)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.expect_message()?;
            let msg = BackendMessage::decode(tag, &body)
                .map_err(|e| Failure::Client(format!("undecodable message: {e}")))?;
            match msg {
                BackendMessage::RowDescription(_) => rows.clear(),
                BackendMessage::DataRow(row) => rows.push(
                    row.columns()
                        .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                ),
                BackendMessage::ErrorResponse(_) => {
                    let e = PgError::decode(tag, &body);
                    if e.severity == "FATAL" || e.severity == "PANIC" {
                        return Err(Failure::Server(e));
                    }
                    error = Some(e);
                }
                BackendMessage::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(Failure::Server(e)),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// The single value of a one-row, one-column query.
    pub fn query_value(&mut self, sql: &str) -> Result<Option<String>, Failure> {
        let rows = self.simple_query(sql)?;
        assert_eq!(rows.len(), 1, "{sql}: expected one row, got {rows:?}");
        assert_eq!(rows[0].len(), 1, "{sql}: expected one column, got {rows:?}");
        Ok(rows[0][0].clone())
    }

    /// Sends Terminate (best effort).
    pub fn terminate(mut self) {
        let mut out = Vec::new();
        frontend::terminate(&mut out);
        let _ = self.send(&out);
    }

    /// Reads until the connection ends or `timeout` passes, collecting what arrived.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Ending {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut ending = Ending::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ending.hung = true;
                break;
            }
            self.set_timeout(left);
            match self.read_message() {
                Ok(Some((b'E', body))) => ending.errors.push(PgError::decode(b'E', &body)),
                Ok(Some((tag, _))) => ending.other.push(tag),
                Ok(None) | Err(Failure::Closed) => {
                    ending.closed = true;
                    break;
                }
                Err(Failure::TimedOut) => {
                    ending.hung = true;
                    break;
                }
                Err(Failure::Client(e)) if e.contains("I/O error") => {
                    // e.g. a TLS alert or a corrupt record: the connection is over.
                    ending.closed = true;
                    break;
                }
                Err(e) => panic!("reading until close: {e:?}"),
            }
        }
        ending.elapsed = start.elapsed();
        ending
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    tcp.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// A rustls client config that trusts `ca_der` only, with ALPN `postgresql` unless `alpn`
/// is false.
pub fn client_config_trusting(ca_der: &[u8], alpn: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .expect("add CA");
    let mut config = rustls::ClientConfig::builder_with_provider(pglink::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![pglink::tls::ALPN_POSTGRESQL.to_vec()];
    }
    Arc::new(config)
}

/// A rustls client config that accepts any server certificate (pglink's generated one), with
/// ALPN `postgresql` unless `alpn` is false. Built with pglink's own `sslmode=require` rules.
pub fn client_config_any_cert(alpn: bool) -> Arc<rustls::ClientConfig> {
    let config = pglink::tls::backend_client_config(
        pglink::tls::Verify::Nothing,
        &pglink::tls::BackendTlsSource::default(),
    )
    .expect("client config");
    if alpn {
        return config;
    }
    let mut config = (*config).clone();
    config.alpn_protocols.clear();
    Arc::new(config)
}

/// xorshift64*: a tiny seeded generator for reproducible random inputs.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Resident set size of this process in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A server message as read by [`WireClient`].
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn decode(&self) -> BackendMessage<'_> {
        BackendMessage::decode(self.tag, &self.body).expect("valid server message")
    }

    /// (severity, code, message) of an ErrorResponse/NoticeResponse.
    pub fn error(&self) -> Option<(String, String, String)> {
        matches!(self.tag, b'E' | b'N').then(|| {
            let e = PgError::decode(self.tag, &self.body);
            (e.severity, e.code, e.message)
        })
    }
}

/// A logged-in plain connection with conveniences for pooling tests, over [`Conn`].
pub struct WireClient {
    pub conn: Conn,
    /// BackendKeyData from login.
    pub key: Option<(u32, Vec<u8>)>,
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Server(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

impl WireClient {
    /// Connects without TLS and logs in (SCRAM, md5 or cleartext, whatever is asked).
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<WireClient, String> {
        let mut conn = Conn::plain(addr);
        let info = conn
            .login(user, db, password, &LoginOptions::default())
            .map_err(failure_text)?;
        Ok(WireClient {
            conn,
            key: info.key,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.conn.send(bytes).expect("write to server");
    }

    /// Reads one message (bounded by the read timeout).
    pub fn read(&mut self) -> Result<Msg, String> {
        self.conn
            .expect_message()
            .map(|(tag, body)| Msg { tag, body })
            .map_err(failure_text)
    }

    /// Sends a simple query and collects everything up to ReadyForQuery.
    pub fn simple(&mut self, sql: &str) -> Result<Vec<Msg>, String> {
        let mut m = Vec::new();
        frontend::query(&mut m, sql.as_bytes());
        self.send(&m);
        self.until_ready()
    }

    pub fn until_ready(&mut self) -> Result<Vec<Msg>, String> {
        let mut msgs = Vec::new();
        loop {
            let msg = self.read()?;
            let done = msg.tag == b'Z';
            msgs.push(msg);
            if done {
                return Ok(msgs);
            }
        }
    }

    /// First column of every row of a simple query; an ErrorResponse becomes `Err("ERROR
    /// <code>: <message>")`.
    pub fn query_column(&mut self, sql: &str) -> Result<Vec<String>, String> {
        let msgs = self.simple(sql)?;
        if let Some(m) = msgs.iter().find(|m| m.tag == b'E') {
            return Err(PgError::decode(m.tag, &m.body).to_string());
        }
        Ok(msgs
            .iter()
            .filter_map(|m| match m.decode() {
                BackendMessage::DataRow(row) => Some(
                    row.columns()
                        .next()
                        .flatten()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Runs `SELECT pg_sleep(10)`, sends a CancelRequest with this session's key to `addr`
    /// once `pg` shows the query running (a cancel that arrives before it would find nothing
    /// to cancel), checks that the query failed with 57014 and returns how long that took
    /// after the cancel was sent.
    pub fn cancel_a_sleep(&mut self, addr: SocketAddr, pg: &PgServer) -> Duration {
        let mark = super::unique_mark();
        let sql = format!("SELECT pg_sleep(10) /* {mark} */");
        self.cancel_when(addr, &sql, || pg.query_running(&mark))
    }

    /// [`cancel_a_sleep`](Self::cancel_a_sleep) for a statement that never reaches the server
    /// (it waits in pglink, for the pool say): the cancel is sent once `waiting` is true.
    pub fn cancel_a_waiting_sleep(
        &mut self,
        addr: SocketAddr,
        waiting: impl FnMut() -> bool,
    ) -> Duration {
        self.cancel_when(addr, "SELECT pg_sleep(10)", waiting)
    }

    fn cancel_when(
        &mut self,
        addr: SocketAddr,
        sql: &str,
        ready: impl FnMut() -> bool,
    ) -> Duration {
        let (pid, key) = self.key.clone().expect("BackendKeyData at login");
        let mut m = Vec::new();
        frontend::query(&mut m, sql.as_bytes());
        self.send(&m);
        super::wait_until("the statement to cancel", Duration::from_secs(10), ready);
        let started = std::time::Instant::now();
        send_cancel(addr, pid, &key);
        let msgs = self.until_ready().unwrap();
        let err = msgs.iter().find_map(|m| m.error()).expect("cancelled");
        assert_eq!(err.1, "57014", "{err:?}");
        started.elapsed()
    }

    /// Closes the TCP connection without a Terminate message.
    pub fn vanish(self) {
        let _ = self.conn.tcp.shutdown(Shutdown::Both);
    }
}

/// Sends a CancelRequest for `pid`/`key` on a new connection; pglink answers nothing and
/// closes it.
pub fn send_cancel(addr: SocketAddr, pid: u32, key: &[u8]) {
    let mut c = Conn::plain(addr);
    let mut m = Vec::new();
    pglink::protocol::startup::cancel_request(&mut m, pid, key);
    c.send(&m).expect("send cancel");
    let _ = c.read_until_closed(Duration::from_secs(5));
}
