//! Several pglink processes in front of one PostgreSQL: cancel keys name their instance
//! (`peer_id`) and a CancelRequest that lands on another instance is forwarded to the one
//! holding the session (`peers`), whether clients are spread by a TCP balancer or by the
//! kernel (`listen_reuse_port`); a forged key cancels nothing; losing or restarting one
//! instance leaves the others serving and refuses no connection.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::proxy::{ChildProxy, ReadyAt, create_user};
use support::wire::{TestRng, WireClient, send_cancel};
use support::*;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The instance a key names: the low 14 bits of the secret's first two bytes.
fn key_peer(secret: &[u8]) -> u16 {
    u16::from_be_bytes([secret[0], secret[1]]) & 0x3FFF
}

/// A TCP balancer: every connection goes to one of `targets`, picked at random.
struct Balancer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    fn start(targets: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            let mut rng = TestRng::new(u64::from(addr.port()));
            for conn in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let target = targets[rng.below(targets.len() as u64) as usize];
                // A dead instance: the client sees its connection closed, as behind a
                // balancer without health checks.
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                pipe(client, server);
            }
        });
        Balancer { addr, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
        thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// Runs `SELECT pg_sleep(10)` on `client` and sends its key to `cancel_at` once `pg` shows
/// it running: whether the query ended with 57014 (and within 5 s).
fn cancel_reaches(pg: &PgServer, client: &mut WireClient, cancel_at: SocketAddr) -> bool {
    let (pid, key) = client.key.clone().expect("BackendKeyData at login");
    let mark = unique_mark();
    let mut m = Vec::new();
    pglink::protocol::frontend::query(
        &mut m,
        format!("SELECT pg_sleep(10) /* {mark} */").as_bytes(),
    );
    client.send(&m);
    // Earlier, there would be nothing to cancel.
    pg.wait_for_query(&mark);
    let sent = Instant::now();
    send_cancel(cancel_at, pid, &key);
    let msgs = client.until_ready().unwrap();
    let code = msgs.iter().find_map(|m| m.error()).map(|e| e.1);
    code.as_deref() == Some("57014") && sent.elapsed() < Duration::from_secs(5)
}

/// A config for instance `id` of a group with these `peers`.
fn instance_config(pg: &PgServer, user: &TestUser, id: u16, peers: &Value) -> ProxyConfig {
    ProxyConfig::new(pg)
        .user(user)
        .set("peer_id", json!(id))
        .set("peers", peers.clone())
        .set("shutdown_timeout", json!("5s"))
}

fn connect(addr: SocketAddr, user: &TestUser) -> WireClient {
    WireClient::connect(addr, user.name, Proxy::password(user), TEST_DATABASE).unwrap()
}

/// A client speaking protocol 3.2, whose cancel key is 32 bytes long.
fn connect_v32(addr: SocketAddr, user: &TestUser) -> WireClient {
    let mut conn = support::wire::Conn::plain(addr);
    let options = support::wire::LoginOptions {
        version: pglink::protocol::ProtocolVersion::V3_2,
        ..Default::default()
    };
    let info = conn
        .login(user.name, TEST_DATABASE, Proxy::password(user), &options)
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    let client = WireClient {
        conn,
        key: info.key,
    };
    assert_eq!(client.key.as_ref().map(|k| k.1.len()), Some(32));
    client
}

#[test]
fn behind_a_balancer_cancels_reach_their_query_whichever_instance_receives_them() {
    let pg = PgServer::shared();
    let user = create_user(pg, "scale_lb");
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    // Peer 1 gets its cancels over TLS (the default, prefer), 2 and 3 in plaintext.
    let peers = json!({
        "1": { "address": addrs[0].to_string() },
        "2": { "address": addrs[1].to_string(), "sslmode": "disable" },
        "3": { "address": addrs[2].to_string(), "sslmode": "disable" },
    });
    let mut instances: Vec<ChildProxy> = (0..3)
        .map(|i| {
            let config = instance_config(pg, &user, i as u16 + 1, &peers);
            let listen = json!(addrs[i].to_string());
            ChildProxy::start_on(&config, &format!("lb{i}"), listen, ReadyAt::Tcp(addrs[i]))
        })
        .collect();
    let lb = Balancer::start(addrs.clone());

    // Sessions opened through the balancer, cancelled through it (any instance) or
    // directly at an instance that does not hold the session (forwarded for sure).
    let sent = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(AtomicUsize::new(0));
    let forwarded = Arc::new(AtomicUsize::new(0));
    let owners = Arc::new(Mutex::new([0usize; 3]));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (addrs, user) = (addrs.clone(), user);
            let (sent, reached, forwarded, owners) = (
                sent.clone(),
                reached.clone(),
                forwarded.clone(),
                owners.clone(),
            );
            let lb = lb.addr;
            thread::spawn(move || {
                for round in 0..4 {
                    // Protocol 3.2 clients get long keys, which name their instance too.
                    let mut client = if round == 3 {
                        connect_v32(lb, &user)
                    } else {
                        connect(lb, &user)
                    };
                    let owner = key_peer(&client.key.as_ref().unwrap().1);
                    assert!((1..=3).contains(&owner), "key names peer {owner}");
                    owners.lock().unwrap()[usize::from(owner - 1)] += 1;
                    let target = if (w + round) % 2 == 0 {
                        lb
                    } else {
                        forwarded.fetch_add(1, Ordering::Relaxed);
                        addrs[usize::from(owner) % 3]
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if cancel_reaches(pg, &mut client, target) {
                        reached.fetch_add(1, Ordering::Relaxed);
                    }
                    // The session goes on.
                    assert_eq!(client.query_column("SELECT 7").unwrap(), ["7"]);
                    client.conn.terminate();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (sent, reached) = (
        sent.load(Ordering::Relaxed),
        reached.load(Ordering::Relaxed),
    );
    eprintln!(
        "balancer: {reached} of {sent} cancels reached their query ({} sent to an instance \
         other than the session's; sessions per instance {:?})",
        forwarded.load(Ordering::Relaxed),
        owners.lock().unwrap()
    );
    assert_eq!(reached, sent);
    assert!(
        owners.lock().unwrap().iter().all(|n| *n > 0),
        "the balancer spread the sessions"
    );

    // A forged key cancels nothing, on any instance: the owner's id with a wrong secret,
    // another pid, or a peer that does not exist.
    let mut victim = connect(addrs[0], &user);
    let (pid, key) = victim.key.clone().unwrap();
    let mut m = Vec::new();
    pglink::protocol::frontend::query(&mut m, b"SELECT pg_sleep(1), 'survived'");
    victim.send(&m);
    thread::sleep(Duration::from_millis(100));
    let mut wrong_secret = key.clone();
    wrong_secret[3] ^= 0x5A;
    let mut unknown_peer = key.clone();
    unknown_peer[1] ^= 0x40;
    for addr in &addrs {
        send_cancel(*addr, pid, &wrong_secret);
        send_cancel(*addr, pid ^ 1, &key);
        send_cancel(*addr, pid, &unknown_peer);
    }
    let msgs = victim.until_ready().unwrap();
    assert!(
        msgs.iter().all(|m| m.error().is_none()),
        "a forged key cancelled the query: {:?}",
        msgs.iter().find_map(|m| m.error())
    );

    // Losing one instance leaves the others serving: their sessions, new connections, and
    // cancels forwarded between them.
    let mut on_three = connect(addrs[2], &user);
    instances[1].child.kill().unwrap();
    instances[1].child.wait().unwrap();
    assert_eq!(victim.query_column("SELECT 1").unwrap(), ["1"]);
    assert_eq!(on_three.query_column("SELECT 3").unwrap(), ["3"]);
    assert!(cancel_reaches(pg, &mut on_three, addrs[0]));
    let mut fresh = connect(addrs[0], &user);
    assert_eq!(fresh.query_column("SELECT 2").unwrap(), ["2"]);
}

/// Instance `i` of a group sharing `port`: the shared port and a unix socket of its own,
/// which its peers use to reach it.
struct Sibling {
    socket: PathBuf,
}

impl Sibling {
    fn new(port: u16, i: usize) -> Sibling {
        let dir = std::env::temp_dir().join(format!("pglink-ru{i}-{}", std::process::id()));
        Sibling {
            socket: dir.join(format!(".s.PGSQL.{port}")),
        }
    }

    fn start(&self, config: &ProxyConfig, shared: SocketAddr, name: &str) -> ChildProxy {
        let listen = json!([shared.to_string(), self.socket.to_str().unwrap()]);
        ChildProxy::start_on(config, name, listen, ReadyAt::Unix(self.socket.clone()))
    }
}

#[test]
fn instances_sharing_a_port_forward_cancels_and_restart_one_by_one_refusing_nobody() {
    let pg = PgServer::shared();
    let user = create_user(pg, "scale_rp");
    let port = free_port();
    let shared: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let siblings: Vec<Sibling> = (0..2).map(|i| Sibling::new(port, i)).collect();
    let peers = json!({
        "1": { "address": siblings[0].socket.to_str().unwrap() },
        "2": { "address": siblings[1].socket.to_str().unwrap() },
    });
    let config =
        |id: u16| instance_config(pg, &user, id, &peers).set("listen_reuse_port", json!(true));
    let mut instances: Vec<ChildProxy> = (0..2)
        .map(|i| siblings[i].start(&config(i as u16 + 1), shared, &format!("rp{i}")))
        .collect();

    // Without listen_reuse_port the port is still refused.
    let mut intruder = ChildProxy::start_on(
        &instance_config(pg, &user, 3, &peers),
        "rp-intruder",
        json!(shared.to_string()),
        ReadyAt::Tcp(shared),
    );
    let status = intruder
        .wait_exit(Duration::from_secs(10))
        .expect("refused");
    assert!(!status.success());

    // The kernel spreads the connections; every cancel sent to the shared port reaches its
    // query, wherever it lands.
    let mut owners = [0usize; 2];
    let (mut sent, mut reached) = (0, 0);
    for _ in 0..16 {
        let mut client = connect(shared, &user);
        owners[usize::from(key_peer(&client.key.as_ref().unwrap().1)) - 1] += 1;
        sent += 1;
        reached += usize::from(cancel_reaches(pg, &mut client, shared));
        client.conn.terminate();
    }
    eprintln!("shared port: {reached} of {sent} cancels reached their query; sessions {owners:?}");
    assert_eq!(reached, sent);
    assert!(
        owners.iter().all(|n| *n > 0),
        "both instances took sessions"
    );

    // Rolling restart: clients keep connecting (a new connection per query) while each
    // instance in turn gets SIGTERM, exits, and is started again.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let result = WireClient::connect(
                        shared,
                        user.name,
                        Proxy::password(&user),
                        TEST_DATABASE,
                    )
                    .and_then(|mut c| {
                        let got = c.query_column("SELECT 1")?;
                        c.conn.terminate();
                        Ok(got)
                    });
                    match result {
                        Ok(rows) if rows == ["1"] => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failed.lock().unwrap().push(format!("{other:?}"));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        assert!(process::signal(instances[i].pid(), "TERM"));
        let status = instances[i].wait_exit(Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        let before = ok.load(Ordering::Relaxed);
        wait_until(
            &format!("the sibling to serve while instance {} is down", i + 1),
            Duration::from_secs(15),
            || ok.load(Ordering::Relaxed) > before,
        );
        instances[i] = siblings[i].start(&config(i as u16 + 1), shared, &format!("rp{i}b"));
        thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Release);
    for l in loops {
        l.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    eprintln!(
        "rolling restart: {} connections served, {} failed",
        ok.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty(), "refused during the restarts: {failed:?}");

    // The restarted instances serve and forward cancels; one killed outright leaves the
    // other taking every new connection.
    let mut client = connect(shared, &user);
    assert!(cancel_reaches(pg, &mut client, shared));
    instances[0].child.kill().unwrap();
    instances[0].child.wait().unwrap();
    for _ in 0..10 {
        let mut c = connect(shared, &user);
        assert_eq!(key_peer(&c.key.as_ref().unwrap().1), 2);
        assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    }
}

/// The value of the sample `series` (name and labels as exposed) at a metrics endpoint.
fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: pglink\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn a_reload_applies_a_new_peers_list_and_the_outcomes_are_counted() {
    let pg = PgServer::shared();
    let user = create_user(pg, "scale_reload");
    let (a, b): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let only_itself = json!({ "1": { "address": a.to_string() } });
    let both = json!({
        "1": { "address": a.to_string() },
        "2": { "address": b.to_string(), "sslmode": "disable" },
    });
    let config_a = |peers: &Value| {
        instance_config(pg, &user, 1, peers)
            .set("prometheus", json!({ "listen": metrics.to_string() }))
    };
    let first = ChildProxy::start_on(
        &config_a(&only_itself),
        "rl-a",
        json!(a.to_string()),
        ReadyAt::Tcp(a),
    );
    let _second = ChildProxy::start_on(
        &instance_config(pg, &user, 2, &both),
        "rl-b",
        json!(b.to_string()),
        ReadyAt::Tcp(b),
    );
    let unknown = "pglink_cancel_requests_total{outcome=\"unknown_peer\"}";
    let sent_on = "pglink_cancel_requests_total{outcome=\"peer\"}";

    // A session on instance 2, its cancel sent to instance 1, which does not know 2 yet.
    let mut client = connect(b, &user);
    let (pid, key) = client.key.clone().unwrap();
    assert_eq!(key_peer(&key), 2);
    let mut m = Vec::new();
    pglink::protocol::frontend::query(&mut m, b"SELECT pg_sleep(10)");
    client.send(&m);
    thread::sleep(Duration::from_millis(200));
    send_cancel(a, pid, &key);
    client.conn.set_timeout(Duration::from_secs(1));
    assert!(client.read().is_err(), "nothing cancelled the query");
    assert_eq!(metric(metrics, unknown), Some(1.0));

    // After a reload that lists peer 2, the same cancel reaches it.
    first.write_config(config_a(&both).json());
    assert!(process::signal(first.pid(), "HUP"));
    wait_until("the reload", Duration::from_secs(10), || {
        metric(metrics, "pglink_config_reloads_total{result=\"success\"}") == Some(1.0)
    });
    send_cancel(a, pid, &key);
    client.conn.set_timeout(Duration::from_secs(10));
    let msgs = client.until_ready().unwrap();
    let code = msgs.iter().find_map(|m| m.error()).map(|e| e.1);
    assert_eq!(code.as_deref(), Some("57014"));
    assert_eq!(metric(metrics, sent_on), Some(1.0));
}
