//! The `engine` fuzz target: two engines, up to a dozen scripted clients and a scripted
//! PostgreSQL (see `harness`), driven by an arbitrary script of operations — client bytes
//! (well-formed statements or anything), server bytes, disconnects on either side, time,
//! cancels, failing connects, and the delivery of messages and hand-offs between the
//! engines in any order. The world's invariants are checked after every step.
//!
//! A script is a sequence of operations, each an opcode byte followed by its arguments
//! ([`Op`]); the seeds under `fuzz/corpus/engine` are the scenarios' scripts.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use super::harness::{Connects, Setup, World};
use crate::protocol::backend as be;
use crate::protocol::frontend::{self, Target};
use crate::protocol::{ErrorBuilder, Severity, SqlState};

const MAX_CLIENTS: usize = 12;
/// Operations per script (longer inputs are cut).
const MAX_OPS: usize = 400;

/// Opcodes of a script (a byte, modulo their number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `engine, user`: a client connects (and logs in as the world settles).
    Connect = 0,
    /// `client, kind`: the client sends a well-formed request (see `request`).
    Request = 1,
    /// `client, len, bytes…`: the client sends raw bytes.
    Raw = 2,
    /// `client`: the client goes away.
    Disconnect = 3,
    /// `server`: the server ends the query it is running.
    Release = 4,
    /// `server`: the server closes the connection.
    Kill = 5,
    /// `server, kind`: the server sends something unasked (see `unasked`).
    Unasked = 6,
    /// `step`: time passes.
    Advance = 7,
    /// `n`: one (even `n`) or all (odd) messages between the engines are delivered.
    Deliver = 8,
    /// `mode`: how new connections fare; pending connects complete or fail.
    Connects = 9,
    /// `client, engine`: a CancelRequest with the client's key arrives.
    Cancel = 10,
    /// `server`: the server stops answering (or starts again).
    Silence = 11,
    /// `engine`: the engine shuts down.
    Shutdown = 12,
    /// `kind`: a reload or a console command changes the configuration (see
    /// `reconfigure`). Only opcode byte 0xFF means this, so that the scripts written
    /// before it keep their meaning.
    Reconfigure = 13,
}

impl Op {
    const ALL: [Op; 13] = [
        Op::Connect,
        Op::Request,
        Op::Raw,
        Op::Disconnect,
        Op::Release,
        Op::Kill,
        Op::Unasked,
        Op::Advance,
        Op::Deliver,
        Op::Connects,
        Op::Cancel,
        Op::Silence,
        Op::Shutdown,
    ];

    fn from_byte(b: u8) -> Op {
        if b == 0xFF {
            return Op::Reconfigure;
        }
        Op::ALL[usize::from(b) % Op::ALL.len()]
    }
}

/// Runs one script; the virtual clock starts at `origin`.
pub fn fuzz_engine(data: &[u8], origin: Instant) {
    let mut w = World::new(
        Setup {
            engines: 2,
            max_conns: 3,
            min_idle: usize::from(data.first().is_some_and(|b| b & 1 == 1)),
            acquire_timeout: Duration::from_secs(1),
            max_lifetime: Some(Duration::from_secs(20)),
            lifetime_jitter: Some(Duration::from_secs(5)),
            max_idle_time: Some(Duration::from_secs(10)),
            health_check_period: Some(Duration::from_secs(2)),
            connect_timeout: Duration::from_secs(2),
            login_timeout: Duration::from_secs(5),
            // Peering and the handover (listen_reuse_port) by the first byte too.
            peer_id: data.first().filter(|b| *b & 2 != 0).map(|_| 1),
            peers: vec![2],
            handover: Duration::from_secs(u64::from(data.first().is_some_and(|b| b & 4 != 0))),
            // A tight max_logins_in_progress by the first byte too.
            max_logins: if data.first().is_some_and(|b| b & 8 != 0) {
                2
            } else {
                256
            },
        },
        origin,
    );
    w.auto_mail = false;
    let mut script = Script(data.get(1..).unwrap_or_default());
    for _ in 0..MAX_OPS {
        let Some(op) = script.byte() else { break };
        step(&mut w, op, &mut script);
        w.check();
    }
}

/// The rest of a script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn arg(&mut self) -> usize {
        usize::from(self.byte().unwrap_or(0))
    }

    fn bytes(&mut self) -> &[u8] {
        let len = self.arg().min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        taken
    }
}

fn step(w: &mut World, op: u8, s: &mut Script<'_>) {
    let clients = w.clients.len().max(1);
    let servers = w.servers.len().max(1);
    match Op::from_byte(op) {
        Op::Connect => {
            let (engine, user) = (s.arg() % w.engines.len(), s.arg());
            if w.clients.len() < MAX_CLIENTS {
                w.connect(engine, user);
            }
        }
        Op::Request => {
            let (c, kind) = (s.arg() % clients, s.arg());
            if c < w.clients.len() {
                let bytes = request(c, kind);
                w.send(c, &bytes);
            }
        }
        Op::Raw => {
            let c = s.arg() % clients;
            let bytes = s.bytes().to_vec();
            if c < w.clients.len() {
                w.send(c, &bytes);
            }
        }
        Op::Disconnect => {
            let c = s.arg() % clients;
            if c < w.clients.len() {
                w.disconnect(c);
            }
        }
        Op::Release => {
            let sv = s.arg() % servers;
            if sv < w.servers.len() {
                w.release(sv);
            }
        }
        Op::Kill => {
            let sv = s.arg() % servers;
            if sv < w.servers.len() {
                w.kill(sv);
            }
        }
        Op::Unasked => {
            let (sv, kind) = (s.arg() % servers, s.arg());
            let bytes = if kind % 5 == 2 {
                s.bytes().to_vec()
            } else {
                unasked(kind)
            };
            if sv < w.servers.len() {
                w.server_sends(sv, &bytes);
            }
        }
        Op::Advance => {
            const STEPS: [u64; 8] = [1, 10, 100, 500, 1_000, 5_000, 30_000, 120_000];
            w.advance(Duration::from_millis(STEPS[s.arg() % STEPS.len()]));
        }
        Op::Deliver => {
            if s.arg().is_multiple_of(2) {
                w.deliver_one();
            } else {
                w.deliver_all();
            }
            w.settle_io();
        }
        Op::Connects => {
            let mode = s.arg();
            w.connects = match mode % 4 {
                0 => Connects::Accept,
                1 => Connects::Hang,
                2 => Connects::Refuse,
                _ => Connects::RefuseLogin,
            };
            w.complete_connects(mode % 8 >= 4);
        }
        Op::Cancel => {
            let (c, a) = (s.arg() % clients, s.arg());
            let (engine, how) = (a % w.engines.len(), a / w.engines.len() % 8);
            if let Some((mut pid, mut secret)) = w.clients.get(c).and_then(|c| c.key.clone()) {
                // Now and then a key of another peer (1 → 2, in peers; 1 → 7, not), or a
                // request marked as forwarded by a peer.
                match how {
                    1 => secret[1] ^= 3,
                    2 => secret[1] ^= 6,
                    3 => pid |= super::cancel::FORWARDED,
                    _ => {}
                }
                w.cancel_with(pid, &secret, engine);
            }
        }
        Op::Silence => {
            let sv = s.arg() % servers;
            if sv < w.servers.len() {
                w.servers[sv].silent = !w.servers[sv].silent;
                w.settle_io();
            }
        }
        Op::Shutdown => {
            let e = s.arg() % w.engines.len();
            let now = w.now;
            w.engines[e].handle_shutdown(now);
            w.settle_io();
        }
        Op::Reconfigure => reconfigure(w, s.arg()),
    }
}

/// A reload (new server address, smaller or larger pool, a removed user) or a console
/// command (PAUSE or RESUME, RECONNECT).
fn reconfigure(w: &mut World, kind: usize) {
    match kind % 6 {
        0 => {
            let next = w.reloaded(|dbs| dbs[0].target = World::moved_target());
            w.reload(next);
        }
        1 => {
            let next = w.reloaded(|dbs| dbs[0].settings.max_conns = 1);
            w.reload(next);
        }
        2 => {
            let next = w.reloaded(|dbs| dbs[0].settings.max_conns = 3);
            w.reload(next);
        }
        3 => {
            let next = w.reloaded(|_| {});
            next.pools[1].remove();
            w.reload(next);
        }
        4 => {
            let db = &w.ctx.databases[0];
            db.set_paused(!db.is_paused());
            maintain(w);
        }
        _ => {
            w.ctx.databases[0].reconnect();
            maintain(w);
        }
    }
}

/// Every engine acts on a PAUSE, RESUME or RECONNECT (`Message::Maintain`).
fn maintain(w: &mut World) {
    for e in 0..w.engines.len() {
        let now = w.now;
        w.engines[e].handle_message(super::Message::Maintain, now);
        w.settle_io();
    }
}

/// A well-formed request of client `c`.
fn request(c: usize, kind: usize) -> Vec<u8> {
    let marker = World::marker(c, kind);
    let mut m = Vec::new();
    let select = format!("SELECT '{marker}'");
    match kind % 14 {
        0 => frontend::query(&mut m, select.as_bytes()),
        1 => frontend::query(&mut m, b"BEGIN"),
        2 => frontend::query(&mut m, b"COMMIT"),
        3 => frontend::query(&mut m, b"ROLLBACK"),
        4 => frontend::query(&mut m, b"SELECT pg_sleep(1)"),
        5 => frontend::query(&mut m, b"FAIL"),
        6 => {
            frontend::parse(&mut m, b"", select.as_bytes(), &[]);
            frontend::bind(&mut m, b"", b"", &[], [], &[]);
            frontend::execute(&mut m, b"", 0);
            frontend::sync(&mut m);
        }
        7 => {
            let name = format!("s{}", kind % 3);
            frontend::parse(&mut m, name.as_bytes(), select.as_bytes(), &[]);
            frontend::sync(&mut m);
        }
        8 => {
            let name = format!("s{}", kind % 3);
            frontend::bind(&mut m, b"", name.as_bytes(), &[], [], &[]);
            frontend::describe(&mut m, Target::Portal, b"");
            frontend::execute(&mut m, b"", 0);
            frontend::sync(&mut m);
        }
        9 => frontend::terminate(&mut m),
        10 => frontend::query(&mut m, b"SET application_name = 'x'"),
        11 => {
            frontend::query(&mut m, select.as_bytes());
            frontend::query(&mut m, b"SELECT pg_sleep(1)");
        }
        12 => {
            let name = format!("s{}", kind % 3);
            frontend::close(&mut m, Target::Statement, name.as_bytes());
            frontend::sync(&mut m);
        }
        _ => frontend::query(&mut m, b""),
    }
    m
}

/// Something a server sends unasked.
fn unasked(kind: usize) -> Vec<u8> {
    let mut m = Vec::new();
    match kind % 5 {
        0 => ErrorBuilder::new(Severity::Notice, SqlState::SUCCESSFUL_COMPLETION, "hello")
            .encode_notice(&mut m),
        1 => be::parameter_status(&mut m, b"application_name", b"changed"),
        3 => ErrorBuilder::new(Severity::Fatal, SqlState::ADMIN_SHUTDOWN, "terminating")
            .encode_error(&mut m),
        _ => be::notification_response(&mut m, 1, b"channel", b"payload"),
    }
    m
}

/// Scripts of the scenarios, the seeds of the fuzz corpus: `(name, script)`.
#[rustfmt::skip]
#[cfg(test)]
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Op::*;
    let op = |o: Op| o as u8;
    vec![
        (
            "login-query",
            vec![0, op(Connect), 0, 0, op(Request), 0, 0, op(Deliver), 1],
        ),
        (
            "acquire-timeout",
            vec![
                0,
                op(Connect), 0, 0,
                op(Connect), 0, 0,
                op(Connect), 0, 0,
                op(Connect), 0, 0,
                op(Request), 0, 4,
                op(Request), 1, 4,
                op(Request), 2, 4,
                op(Request), 3, 0,
                op(Advance), 4,
                op(Release), 0,
                op(Request), 3, 0,
            ],
        ),
        (
            "hand-off",
            vec![
                0,
                op(Connect), 0, 0,
                op(Request), 0, 0,
                op(Connect), 1, 0,
                op(Deliver), 1,
                op(Request), 1, 0,
                op(Deliver), 1,
                op(Deliver), 1,
                op(Request), 0, 6,
                op(Deliver), 1,
            ],
        ),
        (
            "make-room",
            vec![
                0,
                op(Connect), 0, 0,
                op(Connect), 0, 0,
                op(Connect), 1, 0,
                op(Request), 0, 1,
                op(Connect), 0, 1,
                op(Deliver), 1,
                op(Request), 3, 0,
                op(Deliver), 1,
            ],
        ),
        (
            "vanished-mid-transaction",
            vec![
                0,
                op(Connect), 0, 0,
                op(Request), 0, 1,
                op(Request), 0, 4,
                op(Disconnect), 0,
                op(Deliver), 1,
                op(Connect), 0, 0,
                op(Request), 1, 0,
            ],
        ),
        (
            "cancel",
            vec![
                0,
                op(Connect), 0, 0,
                op(Connect), 1, 0,
                op(Deliver), 1,
                op(Request), 0, 4,
                op(Request), 1, 4,
                op(Cancel), 0, 1,
                op(Deliver), 0,
                op(Deliver), 1,
                op(Release), 1,
            ],
        ),
        (
            "refused-logins-and-time",
            vec![
                1,
                op(Connects), 3,
                op(Connect), 0, 0,
                op(Advance), 3,
                op(Advance), 4,
                op(Connects), 0,
                op(Advance), 5,
                op(Advance), 6,
                op(Connect), 1, 1,
                op(Request), 1, 0,
            ],
        ),
        (
            "server-faults",
            vec![
                0,
                op(Connect), 0, 0,
                op(Request), 0, 1,
                op(Unasked), 0, 0,
                op(Unasked), 0, 1,
                op(Kill), 0,
                op(Connect), 0, 1,
                op(Silence), 1,
                op(Advance), 5,
                op(Shutdown), 0,
            ],
        ),
        (
            "prepared-statements",
            vec![
                0,
                op(Connect), 0, 0,
                op(Request), 0, 7,
                op(Request), 0, 8,
                op(Request), 0, 12,
                op(Connect), 1, 0,
                op(Deliver), 1,
                op(Request), 1, 21,
                op(Request), 1, 22,
                op(Deliver), 1,
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/engine")
    }

    #[test]
    fn seeds_run_clean() {
        for (name, script) in seeds() {
            let run = std::panic::catch_unwind(|| fuzz_engine(&script, Instant::now()));
            assert!(run.is_ok(), "seed {name} fails");
        }
    }

    /// Every committed input (the seeds, and inputs that once failed) runs clean.
    #[test]
    fn committed_corpus_runs_clean() {
        let mut ran = 0;
        for entry in std::fs::read_dir(seed_dir()).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| fuzz_engine(&data, Instant::now()));
            assert!(run.is_ok(), "{} fails", path.display());
            ran += 1;
        }
        assert!(
            ran >= seeds().len() + 5,
            "seeds and regressions are committed"
        );
    }

    #[test]
    fn committed_seeds_are_current() {
        for (name, script) in seeds() {
            let committed = std::fs::read(seed_dir().join(name)).unwrap_or_default();
            assert!(
                committed == script,
                "stale seed {name}: run `cargo test --lib write_engine_seeds -- --ignored`"
            );
        }
    }

    /// `cargo test --lib write_engine_seeds -- --ignored` refreshes the committed seeds.
    #[test]
    #[ignore]
    fn write_engine_seeds() {
        std::fs::create_dir_all(seed_dir()).unwrap();
        for (name, script) in seeds() {
            std::fs::write(seed_dir().join(name), script).unwrap();
        }
    }

    /// Replays a fuzz finding under the test harness (with debug assertions and a
    /// backtrace): `ENGINE_CRASH=<file> cargo test --lib replay_engine_input -- --ignored`.
    #[test]
    #[ignore]
    fn replay_engine_input() {
        let path = std::env::var("ENGINE_CRASH").expect("ENGINE_CRASH names the input");
        fuzz_engine(&std::fs::read(path).unwrap(), Instant::now());
    }

    #[test]
    fn arbitrary_scripts_keep_the_invariants() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..300 {
            let len = (state % 200) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            fuzz_engine(&data, Instant::now());
        }
    }
}
