//! A minimal blocking PostgreSQL client built on pglink's own codec, for tests that need
//! control over the bytes (abrupt disconnects, slow reading, bogus cancel keys, garbage).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use pglink::auth::{ClientChannelBinding, OsRng, ScramClient, md5_password};
use pglink::protocol::backend::{Authentication, BackendMessage};
use pglink::protocol::framing::{Header, peek_header};
use pglink::protocol::frontend;
use pglink::protocol::startup::{ProtocolVersion, cancel_request, startup_message};

const MAX: usize = 1 << 30;

/// A server message: tag and body.
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
        match self.decode() {
            BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e) => {
                let s =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
                Some((s(e.severity()), s(e.code()), s(e.message())))
            }
            _ => None,
        }
    }
}

pub struct WireClient {
    pub sock: TcpStream,
    buf: Vec<u8>,
    /// BackendKeyData from login.
    pub key: Option<(u32, Vec<u8>)>,
}

impl WireClient {
    /// Connects and logs in (SCRAM, md5 or cleartext, whatever is asked).
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<WireClient, String> {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut c = WireClient {
            sock,
            buf: Vec::new(),
            key: None,
        };
        let mut m = Vec::new();
        startup_message(
            &mut m,
            ProtocolVersion::V3_0,
            &[(b"user", user.as_bytes()), (b"database", db.as_bytes())],
        );
        c.send(&m);
        let mut scram: Option<ScramClient> = None;
        loop {
            let msg = c.read()?;
            match msg.decode() {
                BackendMessage::Authentication(Authentication::Ok) => {}
                BackendMessage::Authentication(Authentication::Sasl(_)) => {
                    let s = ScramClient::new(
                        password.as_bytes(),
                        ClientChannelBinding::Unsupported,
                        &mut OsRng,
                    );
                    let mut m = Vec::new();
                    frontend::sasl_initial_response(
                        &mut m,
                        s.mechanism().as_bytes(),
                        Some(&s.client_first()),
                    );
                    c.send(&m);
                    scram = Some(s);
                }
                BackendMessage::Authentication(Authentication::SaslContinue { data }) => {
                    let s = scram.as_mut().ok_or("SASLContinue without SASL")?;
                    let reply = s.on_server_first(data).map_err(|e| e.to_string())?;
                    let mut m = Vec::new();
                    frontend::sasl_response(&mut m, &reply);
                    c.send(&m);
                }
                BackendMessage::Authentication(Authentication::SaslFinal { data }) => {
                    scram
                        .as_mut()
                        .ok_or("SASLFinal without SASL")?
                        .on_server_final(data)
                        .map_err(|e| e.to_string())?;
                }
                BackendMessage::Authentication(Authentication::Md5Password { salt }) => {
                    let mut m = Vec::new();
                    frontend::password(
                        &mut m,
                        &md5_password(user.as_bytes(), password.as_bytes(), salt),
                    );
                    c.send(&m);
                }
                BackendMessage::Authentication(Authentication::CleartextPassword) => {
                    let mut m = Vec::new();
                    frontend::password(&mut m, password.as_bytes());
                    c.send(&m);
                }
                BackendMessage::BackendKeyData(k) => c.key = Some((k.pid, k.key.to_vec())),
                BackendMessage::ReadyForQuery(_) => return Ok(c),
                BackendMessage::ErrorResponse(_) => {
                    return Err(format!("{:?}", msg.error()));
                }
                _ => {}
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to server");
    }

    /// Reads one message (bounded by the socket's read timeout).
    pub fn read(&mut self) -> Result<Msg, String> {
        loop {
            if let Some(h) = peek_header(&self.buf, MAX).map_err(|e| e.to_string())?
                && self.buf.len() >= h.frame_len()
            {
                let body = self.buf[Header::SIZE..h.frame_len()].to_vec();
                self.buf.drain(..h.frame_len());
                return Ok(Msg { tag: h.tag, body });
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
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

    /// First column of every DataRow of a simple query; an ErrorResponse becomes `Err`.
    pub fn query_column(&mut self, sql: &str) -> Result<Vec<String>, String> {
        let msgs = self.simple(sql)?;
        if let Some(err) = msgs
            .iter()
            .find_map(|m| (m.tag == b'E').then(|| m.error()))
            .flatten()
        {
            return Err(format!("{} {}: {}", err.0, err.1, err.2));
        }
        Ok(msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| match m.decode() {
                BackendMessage::DataRow(row) => row
                    .columns()
                    .next()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
                _ => unreachable!(),
            })
            .collect())
    }

    /// Closes the TCP connection without a Terminate message.
    pub fn vanish(self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Sends a CancelRequest for `pid`/`key` on a new connection.
pub fn send_cancel(addr: SocketAddr, pid: u32, key: &[u8]) {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect for cancel");
    let mut m = Vec::new();
    cancel_request(&mut m, pid, key);
    s.write_all(&m).expect("send cancel");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    // pglink closes the connection without an answer.
    let _ = s.read(&mut [0u8; 1]);
}
