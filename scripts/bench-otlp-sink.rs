//! A discard OTLP/HTTP collector for scripts/bench --observability (Rust standard library
//! only: scripts/bench builds it with `rustc -O`).
//!
//!   bench-otlp-sink --stats FILE NAME=PORT...
//!
//! Listens on 127.0.0.1:PORT for each NAME (one listener per pglink target, so that each
//! target's exports are counted apart), reads the body of every POST (Content-Length, or
//! chunked) and answers 200 with Content-Type application/x-protobuf and an empty body, which
//! an OTLP exporter takes as "everything accepted" (an empty ExportTraceServiceResponse); a
//! GET gets "ok". Nothing is decoded or kept. The counts are written to FILE as JSON,
//! {"NAME": {"bytes": B, "errors": E, "requests": N}, ...} (bytes = request bodies as sent,
//! compressed or not), replaced atomically at most every 0.2 s while requests arrive and once
//! more on SIGTERM, SIGINT or SIGHUP, before exiting.
//!
//! It stands in for a collector on another machine, so it is made to cost this machine as
//! little as it can: a thread per connection blocked in read(2) into one 1 MiB buffer, bodies
//! skipped, never parsed or copied, and SO_RCVLOWAT set to the rest of a body (up to 32 KiB)
//! so that a request costs a wake-up or two instead of one per segment that arrives. (It
//! replaces a Python collector that cost about 0.6 µs of CPU per traced transaction, a
//! share of the machine the traced targets were charged for.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
const ALIVE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
const MAX_LINE: usize = 64 << 10;
/// Bytes of a read searched for a line's end at a time (a body after a head is not copied).
const STEP: usize = 4096;
/// The most SO_RCVLOWAT asks for. Asked for the whole rest of a 150 KiB request, it stalled
/// a connection for the exporter's 10 s timeout twice in 24-round runs (one request failed,
/// the queue filled behind it): the kernel's receive window can close below the mark. At
/// 32 KiB, far below any window, a request still wakes the reader a handful of times.
const LOWAT: usize = 32 << 10;

static STOP: AtomicBool = AtomicBool::new(false);
static DIRTY: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
}
const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SOL_SOCKET: i32 = 1;
const SO_RCVLOWAT: i32 = 18;

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Relaxed);
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

#[derive(PartialEq)]
enum State {
    /// A request head, up to its empty line.
    Head,
    /// A Content-Length body: `left` bytes to skip.
    Body,
    /// A chunk-size line.
    Size,
    /// A chunk's data and its CRLF: `left` bytes to skip.
    Chunk,
    /// Trailer lines, up to the empty one.
    Trailer,
}

struct Conn {
    counts: Arc<Counts>,
    state: State,
    /// A head or a line not complete yet.
    line: Vec<u8>,
    left: usize,
    body: u64,
    lowat: usize,
}

impl Conn {
    /// Takes bytes read; appends what to answer to `out`.
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !data.is_empty() {
            if matches!(self.state, State::Body | State::Chunk) {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                if self.state == State::Body {
                    self.body += n as u64;
                    if self.left == 0 {
                        self.done(out, OK);
                    }
                } else if self.left == 0 {
                    self.state = State::Size;
                }
                continue;
            }
            // A head ends with an empty line, a chunk-size or trailer line with CRLF.
            let end = if self.state == State::Head {
                b"\r\n\r\n".as_slice()
            } else {
                b"\r\n"
            };
            let seen = self.line.len().saturating_sub(end.len() - 1);
            let take = data.len().min(STEP);
            self.line.extend_from_slice(&data[..take]);
            let Some(at) = find(&self.line[seen..], end).map(|i| i + seen) else {
                if self.line.len() > MAX_LINE {
                    return Err("request head or line too long".into());
                }
                data = &data[take..];
                continue;
            };
            // What followed the line in this read goes round again.
            let consumed = at + end.len() - (self.line.len() - take);
            data = &data[consumed..];
            let line = std::mem::take(&mut self.line);
            let text = String::from_utf8_lossy(&line[..at]);
            match self.state {
                State::Head => self.head(&text, out)?,
                State::Size => {
                    let hex = text.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(if hex.is_empty() { "0" } else { hex }, 16)
                        .map_err(|_| format!("bad chunk size {hex:?}"))?;
                    if size == 0 {
                        self.state = State::Trailer;
                    } else {
                        self.body += size as u64;
                        self.left = size + 2;
                        self.state = State::Chunk;
                    }
                }
                State::Trailer if text.is_empty() => self.done(out, OK),
                _ => {}
            }
            self.line = line;
            self.line.clear();
        }
        Ok(())
    }

    fn head(&mut self, head: &str, out: &mut Vec<u8>) -> Result<(), String> {
        let mut lines = head.split("\r\n");
        let request = lines.next().unwrap_or("");
        let (mut length, mut chunked) = (0usize, false);
        for line in lines {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().map_err(|_| format!("bad content-length {v:?}"))?;
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
        if request.starts_with("GET ") {
            out.extend_from_slice(ALIVE);
        } else if chunked {
            self.state = State::Size;
        } else if length > 0 {
            self.left = length;
            self.state = State::Body;
        } else {
            self.done(out, OK);
        }
        Ok(())
    }

    fn done(&mut self, out: &mut Vec<u8>, reply: &[u8]) {
        self.counts.requests.fetch_add(1, Relaxed);
        self.counts.bytes.fetch_add(self.body, Relaxed);
        DIRTY.store(true, Relaxed);
        self.body = 0;
        self.state = State::Head;
        out.extend_from_slice(reply);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn serve(mut sock: TcpStream, counts: Arc<Counts>) {
    let mut conn = Conn {
        counts,
        state: State::Head,
        line: Vec::new(),
        left: 0,
        body: 0,
        lowat: 1,
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        out.clear();
        let fed = conn.feed(&buf[..n], &mut out);
        if let Err(e) = fed {
            eprintln!("bench-otlp-sink: {e}");
            conn.counts.errors.fetch_add(1, Relaxed);
            DIRTY.store(true, Relaxed);
            return;
        }
        // Wake for the rest of a body at once, not for every segment that arrives.
        let lowat = if conn.state == State::Body {
            conn.left.min(LOWAT)
        } else {
            1
        };
        if lowat != conn.lowat {
            let value = lowat as i32;
            // SAFETY: a valid socket and a 4-byte int option.
            unsafe { setsockopt(sock.as_raw_fd(), SOL_SOCKET, SO_RCVLOWAT, &value, 4) };
            conn.lowat = lowat;
        }
        if !out.is_empty() && sock.write_all(&out).is_err() {
            return;
        }
    }
}

fn write_stats(path: &str, targets: &[(String, Arc<Counts>)]) {
    let mut sorted: Vec<_> = targets.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let body: Vec<String> = sorted
        .iter()
        .map(|(name, c)| {
            format!(
                "\"{name}\": {{\"bytes\": {}, \"errors\": {}, \"requests\": {}}}",
                c.bytes.load(Relaxed),
                c.errors.load(Relaxed),
                c.requests.load(Relaxed)
            )
        })
        .collect();
    let tmp = format!("{path}.tmp");
    let written = std::fs::write(&tmp, format!("{{{}}}\n", body.join(", ")))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        eprintln!("bench-otlp-sink: writing {path}: {e}");
    }
}

fn usage() -> ! {
    eprintln!("usage: bench-otlp-sink --stats FILE NAME=PORT...");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("--stats"), Some(stats)) = (args.first().map(String::as_str), args.get(1)) else {
        usage()
    };
    if args.len() < 3 {
        usage();
    }
    let mut targets = Vec::new();
    for spec in &args[2..] {
        let Some((name, port)) = spec.rsplit_once('=') else {
            usage()
        };
        let Ok(port) = port.parse::<u16>() else {
            usage()
        };
        if name.is_empty() || name.contains(['"', '\\']) {
            usage();
        }
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
            eprintln!("bench-otlp-sink: listening on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        });
        let counts = Arc::new(Counts::default());
        targets.push((name.to_string(), Arc::clone(&counts)));
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || serve(sock, counts));
            }
        });
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for sig in [SIGHUP, SIGINT, SIGTERM] {
            signal(sig, on_signal as extern "C" fn(i32) as usize);
        }
    }
    write_stats(stats, &targets);
    while !STOP.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if DIRTY.swap(false, Relaxed) {
            write_stats(stats, &targets);
        }
    }
    write_stats(stats, &targets);
}
