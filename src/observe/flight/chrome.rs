//! A snapshot as Chrome trace-event JSON (the format `chrome://tracing` and the Perfetto UI
//! open): `{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`, `ts` and
//! `dur` in microseconds since the recorder started.
//!
//! Two processes hold the tracks: `clients`, with two threads per client session (its
//! states, and its queries: transactions with their statements nested, pool waits and
//! messages), labelled `client <pid> user@database`; and `servers`, one thread per server
//! connection (its states), labelled `server r<reactor>/<slot>.<generation> user@database`
//! (server ids are per reactor, so the reactor qualifies them). States are complete slices
//! (`"ph": "X"`) from one change to the next (the last one open until the snapshot);
//! transactions and statements are slices too; logins, waits, messages and errors are
//! instant events (`"ph": "i"`). A pid is reused once its session ends: a later session
//! with it gets tracks of its own, numbered (`client 7 (2) ...`). Everything is rendered
//! here, on the recorder's thread.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::file::utc_rfc3339;
use super::ring::{
    CLIENT_THEN, HAS_PID, HAS_SERVER, Kind, Record, SERVER_THEN, client_state_name,
    error_origin_name, server_state_name, statement_end_name,
};

/// The process ids of the two groups of tracks.
const CLIENTS: u32 = 1;
const SERVERS: u32 = 2;

/// What a trace says about itself.
#[derive(Debug)]
pub struct TraceInfo<'a> {
    pub trigger: &'a str,
    pub taken_at: SystemTime,
    /// When the snapshot was taken, in ns since the recorder's epoch: open slices end here.
    pub end: u64,
    /// The wall-clock time of the epoch (`ts` 0).
    pub epoch_wall: SystemTime,
    /// `user@database` of each pool, by pool id.
    pub pools: &'a [String],
    pub reactors: usize,
    /// Events the memory bound pushed out before `min_age`, so far.
    pub dropped: u64,
}

struct ClientTrack {
    pid: u32,
    /// 1 for the first session with this pid in the trace, 2 for the next, ...
    session: u32,
    states: u32,
    queries: u32,
    pool: Option<u32>,
    /// The state being in since (ns).
    open: Option<(u64, u8)>,
}

struct ServerTrack {
    tid: u32,
    name: String,
    pool: Option<u32>,
    open: Option<(u64, u8)>,
}

/// The trace being built: events with their sort keys, and the tracks.
#[derive(Default)]
struct Trace {
    events: Vec<(u64, std::cmp::Reverse<u64>, String)>,
    clients: HashMap<u32, usize>,
    client_tracks: Vec<ClientTrack>,
    servers: HashMap<(usize, u32, u32), usize>,
    server_tracks: Vec<ServerTrack>,
    next_tid: u32,
}

/// Microseconds (with ns precision) for `ts` and `dur`.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1_000_000.0
}

impl Trace {
    fn tid(&mut self) -> u32 {
        self.next_tid += 1;
        self.next_tid
    }

    fn client(&mut self, pid: u32) -> usize {
        if let Some(&i) = self.clients.get(&pid) {
            return i;
        }
        let (states, queries) = (self.tid(), self.tid());
        let session = 1 + self.client_tracks.iter().filter(|t| t.pid == pid).count() as u32;
        self.client_tracks.push(ClientTrack {
            pid,
            session,
            states,
            queries,
            pool: None,
            open: None,
        });
        let i = self.client_tracks.len() - 1;
        self.clients.insert(pid, i);
        i
    }

    fn server(&mut self, reactor: usize, r: &Record) -> usize {
        let key = (reactor, r.server, r.generation);
        if let Some(&i) = self.servers.get(&key) {
            return i;
        }
        let tid = self.tid();
        self.server_tracks.push(ServerTrack {
            tid,
            name: server_name(reactor, r),
            pool: None,
            open: None,
        });
        let i = self.server_tracks.len() - 1;
        self.servers.insert(key, i);
        i
    }

    fn push(&mut self, ts: u64, dur: u64, event: Value) {
        self.events
            .push((ts, std::cmp::Reverse(dur), event.to_string()));
    }

    fn slice(&mut self, pid: u32, tid: u32, name: &str, start: u64, end: u64, args: Value) {
        let dur = end.saturating_sub(start);
        self.push(
            start,
            dur,
            json!({"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": us(start),
                   "dur": us(dur), "args": args}),
        );
    }

    fn instant(&mut self, pid: u32, tid: u32, name: &str, at: u64, args: Value) {
        self.push(
            at,
            0,
            json!({"ph": "i", "s": "t", "pid": pid, "tid": tid, "name": name, "ts": us(at),
                   "args": args}),
        );
    }

    /// Client `r.pid` entered state `code` at `r.at`.
    fn client_state(&mut self, r: &Record, code: u8) {
        let i = self.client(r.pid);
        let track = &mut self.client_tracks[i];
        let (previous, tid) = (track.open.take(), track.states);
        let (_, closed) = client_state_name(code);
        if !closed {
            track.open = Some((r.at, code));
        }
        if let Some((since, state)) = previous {
            let name = client_state_name(state).0;
            self.slice(CLIENTS, tid, name, since, r.at, json!({}));
        }
        if closed {
            self.instant(CLIENTS, tid, "closed", r.at, json!({}));
            // A later client with this pid is another session: a track of its own.
            self.clients.remove(&r.pid);
        }
    }

    /// Server connection `r.server` (of pool `r.pool`) entered state `code` at `r.at`.
    fn server_state(&mut self, reactor: usize, r: &Record, code: u8) {
        let i = self.server(reactor, r);
        let track = &mut self.server_tracks[i];
        track.pool = Some(r.pool);
        let (previous, tid) = (track.open.take(), track.tid);
        let (name, gone) = server_state_name(code);
        if !gone {
            track.open = Some((r.at, code));
        }
        if let Some((since, state)) = previous {
            let previous_name = server_state_name(state).0;
            self.slice(SERVERS, tid, previous_name, since, r.at, json!({}));
        }
        if gone {
            self.instant(SERVERS, tid, name, r.at, json!({}));
            self.servers.remove(&(reactor, r.server, r.generation));
        }
    }

    fn record(&mut self, reactor: usize, r: &Record, info: &TraceInfo<'_>) {
        self.event(reactor, r, info);
        // The state changes folded into the record follow its event.
        if r.has(CLIENT_THEN) {
            self.client_state(r, r.client_then);
        }
        if r.has(SERVER_THEN) {
            self.server_state(reactor, r, r.server_then);
        }
    }

    /// The record's own event.
    fn event(&mut self, reactor: usize, r: &Record, info: &TraceInfo<'_>) {
        let server = format!("r{reactor}/{}.{}", r.server, r.generation);
        match r.kind {
            Kind::Client => self.client_state(r, r.detail),
            Kind::Server => self.server_state(reactor, r, r.detail),
            Kind::LoggedIn => {
                let i = self.client(r.pid);
                self.client_tracks[i].pool = Some(r.pool);
                let tid = self.client_tracks[i].states;
                let args = json!({"pool": pool_label(info, r.pool)});
                self.instant(CLIENTS, tid, "login", r.at, args);
            }
            Kind::Acquired => {
                let i = self.client(r.pid);
                let track = &mut self.client_tracks[i];
                track.pool.get_or_insert(r.pool);
                let tid = track.queries;
                let name = if r.value == 0 {
                    "acquired"
                } else {
                    "pool wait"
                };
                let args = json!({"server": server, "waited_ms": ms(r.value)});
                self.instant(CLIENTS, tid, name, r.at, args);
            }
            Kind::ClientMessage => {
                let i = self.client(r.pid);
                let tid = self.client_tracks[i].queries;
                let types = r.message_types();
                let kinds: String = types.iter().map(|&t| char::from(t)).collect();
                let args = json!({"bytes": r.value, "type": kinds, "messages": types.len()});
                let name = match types {
                    [one] => message_name(*one).to_owned(),
                    more => more
                        .iter()
                        .map(|&t| message_name(t))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                self.instant(CLIENTS, tid, &name, r.at, args);
            }
            Kind::StatementEnded => {
                let i = self.client(r.pid);
                let tid = self.client_tracks[i].queries;
                let tag = String::from_utf8_lossy(r.tag()).into_owned();
                let end = statement_end_name(r.detail);
                let name = match (r.sqlstate_str(), tag.is_empty()) {
                    (Some(code), _) => format!("{end} {code}"),
                    (None, false) => tag.clone(),
                    (None, true) => end.to_owned(),
                };
                let args = json!({"server": server, "end": end, "tag": tag,
                                  "sqlstate": r.sqlstate_str(), "ms": ms(r.at.saturating_sub(r.value))});
                self.slice(CLIENTS, tid, &name, r.value, r.at, args);
            }
            Kind::TransactionEnded => {
                let i = self.client(r.pid);
                let tid = self.client_tracks[i].queries;
                let args = json!({"server": server, "pool": pool_label(info, r.pool),
                                  "ms": ms(r.at.saturating_sub(r.value))});
                self.slice(CLIENTS, tid, "transaction", r.value, r.at, args);
            }
            Kind::Error => {
                let code = r.sqlstate_str().unwrap_or("?????");
                let name = format!("error {code}");
                let origin = error_origin_name(r.detail);
                let mut args = json!({"sqlstate": code, "origin": origin});
                if r.has(HAS_SERVER) {
                    args["server"] = json!(server);
                }
                if r.has(HAS_PID) {
                    let i = self.client(r.pid);
                    let tid = self.client_tracks[i].states;
                    self.instant(CLIENTS, tid, &name, r.at, args);
                } else if r.has(HAS_SERVER) {
                    let i = self.server(reactor, r);
                    let tid = self.server_tracks[i].tid;
                    self.instant(SERVERS, tid, &name, r.at, args);
                } else {
                    self.push(
                        r.at,
                        0,
                        json!({"ph": "i", "s": "g", "pid": CLIENTS, "tid": 0, "name": name,
                               "ts": us(r.at), "args": args}),
                    );
                }
            }
        }
    }

    /// Closes the slices still open at `end`, names the tracks, and writes the JSON.
    fn finish(mut self, info: &TraceInfo<'_>) -> String {
        let end = info.end;
        let mut meta = vec![
            json!({"ph": "M", "pid": CLIENTS, "name": "process_name", "args": {"name": "clients"}}),
            json!({"ph": "M", "pid": CLIENTS, "name": "process_sort_index", "args": {"sort_index": 1}}),
            json!({"ph": "M", "pid": SERVERS, "name": "process_name", "args": {"name": "servers"}}),
            json!({"ph": "M", "pid": SERVERS, "name": "process_sort_index", "args": {"sort_index": 2}}),
        ];
        let thread = |pid: u32, tid: u32, name: String| {
            [
                json!({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                       "args": {"name": name}}),
                json!({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": tid}}),
            ]
        };
        let clients = std::mem::take(&mut self.client_tracks);
        for track in &clients {
            if let Some((since, state)) = track.open {
                let name = client_state_name(state).0;
                self.slice(
                    CLIENTS,
                    track.states,
                    name,
                    since,
                    end.max(since),
                    json!({}),
                );
            }
            // A pid is reused once its session ends: later sessions are numbered.
            let pid = match track.session {
                1 => track.pid.to_string(),
                n => format!("{} ({n})", track.pid),
            };
            let label = match track.pool {
                Some(pool) => format!("client {pid} {}", pool_label(info, pool)),
                None => format!("client {pid}"),
            };
            meta.extend(thread(CLIENTS, track.states, label.clone()));
            meta.extend(thread(CLIENTS, track.queries, format!("{label} queries")));
        }
        let servers = std::mem::take(&mut self.server_tracks);
        for track in &servers {
            if let Some((since, state)) = track.open {
                let name = server_state_name(state).0;
                self.slice(SERVERS, track.tid, name, since, end.max(since), json!({}));
            }
            let label = match track.pool {
                Some(pool) => format!("{} {}", track.name, pool_label(info, pool)),
                None => track.name.clone(),
            };
            meta.extend(thread(SERVERS, track.tid, label));
        }
        // By time, and the longer of two slices that start together first, so that nesting
        // reads right in viewers that take the file's order.
        self.events.sort_by_key(|e| (e.0, e.1));
        let other = json!({
            "generator": concat!("pglink ", env!("CARGO_PKG_VERSION")),
            "trigger": info.trigger,
            "taken_at": utc_rfc3339(info.taken_at),
            "ts_zero": utc_rfc3339(info.epoch_wall),
            "reactors": info.reactors,
            "events": self.events.len(),
            "events_dropped": info.dropped,
        });
        let size: usize = self.events.iter().map(|e| e.2.len() + 2).sum();
        let mut out = String::with_capacity(size + meta.len() * 120 + 256);
        out.push_str("{\"traceEvents\":[\n");
        let mut first = true;
        let lines = meta
            .iter()
            .map(Value::to_string)
            .chain(self.events.into_iter().map(|e| e.2));
        for line in lines {
            if !first {
                out.push_str(",\n");
            }
            first = false;
            out.push_str(&line);
        }
        out.push_str("\n],\"displayTimeUnit\":\"ms\",\"otherData\":");
        out.push_str(&other.to_string());
        out.push_str("}\n");
        out
    }
}

fn server_name(reactor: usize, r: &Record) -> String {
    format!("server r{reactor}/{}.{}", r.server, r.generation)
}

fn pool_label(info: &TraceInfo<'_>, pool: u32) -> String {
    match info.pools.get(pool as usize) {
        Some(label) => label.clone(),
        None => format!("pool {pool}"),
    }
}

/// A frontend message's name, by its type byte.
fn message_name(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'E' => "Execute",
        b'D' => "Describe",
        b'S' => "Sync",
        b'H' => "Flush",
        b'C' => "Close",
        b'X' => "Terminate",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'F' => "FunctionCall",
        b'p' => "Password",
        _ => "message",
    }
}

/// The merged records (with their reactor numbers, in time order) as a trace.
pub fn render(records: &[(usize, Record)], info: &TraceInfo<'_>) -> String {
    let mut trace = Trace::default();
    for (reactor, r) in records {
        trace.record(*reactor, r, info);
    }
    trace.finish(info)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::id::ServerId;
    use crate::observe::events::{ClientState, ErrorOrigin, Event, ServerState, StatementEnd};
    use crate::protocol::SqlState;
    use crate::test_clock::epoch;

    fn at(ms: u64) -> Instant {
        epoch() + Duration::from_millis(ms)
    }

    /// An event of reactor `reactor` at `ms`.
    type Timed = (usize, u64, Event<'static>);

    fn rec(reactor: usize, ms: u64, event: Event<'static>) -> Timed {
        (reactor, ms, event)
    }

    /// One record per event.
    fn unfolded(events: &[Timed]) -> Vec<(usize, Record)> {
        events
            .iter()
            .filter_map(|(reactor, ms, e)| Some((*reactor, Record::encode(epoch(), at(*ms), e)?)))
            .collect()
    }

    /// The records as the reactors' sinks keep them: an event goes into the record before
    /// it when that one can take it.
    fn folded(events: &[Timed]) -> Vec<(usize, Record)> {
        let mut records: Vec<(usize, Record)> = Vec::new();
        for (reactor, ms, e) in events {
            let ns = ms * 1_000_000;
            if let Some((last_reactor, last)) = records.last_mut()
                && last_reactor == reactor
                && last.absorb(ns, e)
            {
                continue;
            }
            records.extend(Record::encode(epoch(), at(*ms), e).map(|r| (*reactor, r)));
        }
        records
    }

    /// A client's login, one transaction with a pool wait, an error, and the pid reused.
    fn trace_events() -> Vec<Timed> {
        let s = ServerId::new(4, 2);
        vec![
            rec(
                1,
                0,
                Event::Server {
                    server: s,
                    pool: 0,
                    state: ServerState::Connecting,
                },
            ),
            rec(
                1,
                1,
                Event::Client {
                    pid: 77,
                    state: ClientState::Authenticating,
                },
            ),
            rec(
                1,
                2,
                Event::Server {
                    server: s,
                    pool: 0,
                    state: ServerState::Idle,
                },
            ),
            rec(
                1,
                3,
                Event::LoggedIn {
                    pid: 77,
                    pool: 0,
                    database: "db",
                    user: "alice",
                    peer: None,
                    traceparent: None,
                    server: crate::observe::events::ServerAddress {
                        host: "pg",
                        port: 5432,
                        database: "db",
                    },
                },
            ),
            rec(
                1,
                3,
                Event::Client {
                    pid: 77,
                    state: ClientState::Idle,
                },
            ),
            rec(
                1,
                10,
                Event::ClientMessage {
                    pid: 77,
                    tag: b'Q',
                    len: 20,
                },
            ),
            rec(
                1,
                10,
                Event::Client {
                    pid: 77,
                    state: ClientState::Acquiring,
                },
            ),
            rec(
                1,
                12,
                Event::Acquired {
                    pid: 77,
                    server: s,
                    pool: 0,
                    waited: Duration::from_millis(2),
                },
            ),
            rec(
                1,
                12,
                Event::Client {
                    pid: 77,
                    state: ClientState::Active,
                },
            ),
            rec(
                1,
                12,
                Event::Server {
                    server: s,
                    pool: 0,
                    state: ServerState::Lent,
                },
            ),
            rec(
                1,
                40,
                Event::StatementEnded {
                    pid: 77,
                    server: s,
                    pool: 0,
                    started: at(12),
                    end: StatementEnd::Completed,
                    tag: b"SELECT 1",
                    sqlstate: None,
                },
            ),
            rec(
                1,
                40,
                Event::TransactionEnded {
                    pid: 77,
                    server: s,
                    pool: 0,
                    started: at(10),
                },
            ),
            rec(
                1,
                40,
                Event::Client {
                    pid: 77,
                    state: ClientState::Idle,
                },
            ),
            rec(
                1,
                40,
                Event::Server {
                    server: s,
                    pool: 0,
                    state: ServerState::Idle,
                },
            ),
            rec(
                0,
                50,
                Event::Error {
                    pid: Some(78),
                    server: None,
                    origin: ErrorOrigin::Protocol,
                    sqlstate: SqlState::PROTOCOL_VIOLATION,
                },
            ),
            rec(
                1,
                60,
                Event::Client {
                    pid: 77,
                    state: ClientState::Closed,
                },
            ),
            // The pid, reused by a new session.
            rec(
                1,
                70,
                Event::Client {
                    pid: 77,
                    state: ClientState::Authenticating,
                },
            ),
        ]
    }

    fn render_json(records: &[(usize, Record)]) -> Value {
        let pools = ["alice@db".to_owned()];
        let info = TraceInfo {
            trigger: "api",
            taken_at: SystemTime::UNIX_EPOCH,
            end: 100_000_000,
            epoch_wall: SystemTime::UNIX_EPOCH,
            pools: &pools,
            reactors: 2,
            dropped: 0,
        };
        let text = render(records, &info);
        serde_json::from_str(&text).expect("valid JSON")
    }

    fn trace() -> Value {
        render_json(&folded(&trace_events()))
    }

    #[test]
    fn state_changes_folded_into_a_record_render_as_records_of_their_own_would() {
        let events = trace_events();
        let (one_each, folded) = (unfolded(&events), folded(&events));
        // The client goes idle as it logs in (3 ms) and acquiring after its Query (10 ms); it
        // goes active and the server connection lent as it is acquired (12 ms); both go idle
        // as the transaction ends (40 ms).
        assert_eq!((one_each.len(), folded.len()), (17, 11));
        let sorted = |t: Value| {
            let mut events: Vec<String> = t["traceEvents"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect();
            events.sort();
            (events, t["otherData"].clone())
        };
        assert_eq!(sorted(render_json(&folded)), sorted(render_json(&one_each)));
    }

    fn events<'a>(t: &'a Value, ph: &str) -> Vec<&'a Value> {
        t["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == ph)
            .collect()
    }

    fn thread_name(t: &Value, pid: u64, tid: &Value) -> String {
        events(t, "M")
            .into_iter()
            .find(|e| e["name"] == "thread_name" && e["pid"] == pid && e["tid"] == *tid)
            .map(|e| e["args"]["name"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn tracks_are_named_per_client_and_server() {
        let t = trace();
        assert_eq!(t["displayTimeUnit"], "ms");
        assert_eq!(t["otherData"]["trigger"], "api");
        let names: Vec<&str> = events(&t, "M")
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "client 77 alice@db",
                "client 77 alice@db queries",
                "client 78",
                "client 78 queries",
                "client 77 (2)",
                "client 77 (2) queries",
                "server r1/4.2 alice@db"
            ]
        );
        let processes: Vec<&str> = events(&t, "M")
            .iter()
            .filter(|e| e["name"] == "process_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(processes, ["clients", "servers"]);
    }

    #[test]
    fn states_transactions_and_statements_are_slices() {
        let t = trace();
        let slices = events(&t, "X");
        let find = |name: &str| -> Vec<(f64, f64, String)> {
            slices
                .iter()
                .filter(|e| e["name"] == name)
                .map(|e| {
                    (
                        e["ts"].as_f64().unwrap(),
                        e["dur"].as_f64().unwrap(),
                        thread_name(&t, e["pid"].as_u64().unwrap(), &e["tid"]),
                    )
                })
                .collect()
        };
        assert_eq!(
            find("transaction"),
            [(10_000.0, 30_000.0, "client 77 alice@db queries".into())]
        );
        assert_eq!(
            find("SELECT 1"),
            [(12_000.0, 28_000.0, "client 77 alice@db queries".into())]
        );
        assert_eq!(
            find("active"),
            [(12_000.0, 28_000.0, "client 77 alice@db".into())]
        );
        // The server's last state stays open until the snapshot.
        let idle: Vec<_> = find("idle")
            .into_iter()
            .filter(|s| s.2.starts_with("server"))
            .collect();
        assert_eq!(
            idle,
            [
                (2_000.0, 10_000.0, "server r1/4.2 alice@db".into()),
                (40_000.0, 60_000.0, "server r1/4.2 alice@db".into())
            ]
        );
        // A closed client has no open state left.
        let client_idle = find("idle")
            .into_iter()
            .filter(|s| s.2 == "client 77 alice@db")
            .count();
        assert_eq!(client_idle, 2);
        // Sorted by time.
        let ts: Vec<f64> = slices.iter().map(|e| e["ts"].as_f64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    }

    #[test]
    fn errors_waits_and_messages_are_instants() {
        let t = trace();
        let instants = events(&t, "i");
        let error = instants
            .iter()
            .find(|e| e["name"] == "error 08P01")
            .unwrap();
        assert_eq!(error["args"]["origin"], "protocol");
        assert_eq!(thread_name(&t, 1, &error["tid"]), "client 78");
        let wait = instants.iter().find(|e| e["name"] == "pool wait").unwrap();
        assert_eq!(wait["args"]["waited_ms"], 2.0);
        assert_eq!(wait["args"]["server"], "r1/4.2");
        let query = instants.iter().find(|e| e["name"] == "Query").unwrap();
        assert_eq!(query["args"]["bytes"], 20);
        assert!(instants.iter().all(|e| e["s"] == "t"));
    }

    #[test]
    fn an_empty_recording_is_a_valid_trace() {
        let info = TraceInfo {
            trigger: "periodic",
            taken_at: SystemTime::now(),
            end: 0,
            epoch_wall: SystemTime::now(),
            pools: &[],
            reactors: 1,
            dropped: 3,
        };
        let t: Value = serde_json::from_str(&render(&[], &info)).unwrap();
        assert_eq!(t["traceEvents"].as_array().unwrap().len(), 4);
        assert_eq!(t["otherData"]["events_dropped"], 3);
    }
}
