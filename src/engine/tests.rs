//! Deterministic scenarios: real engines, scripted clients and a scripted PostgreSQL on a
//! virtual clock (see `harness`). One behaviour per scenario; every one checks the world's
//! invariants as it goes.

use std::time::Duration;

use super::harness::{Connects, Setup, World};
use crate::observe::metrics::CloseReason;
use crate::protocol::backend::tag as be;
use crate::protocol::frontend;
use crate::protocol::{Severity, SqlState};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn world(setup: Setup) -> World {
    World::new(setup, std::time::Instant::now())
}

/// A client's `SELECT '<marker>'` and what it got back.
fn select(w: &mut World, c: usize, n: usize) -> Vec<String> {
    w.query(c, &format!("SELECT '{}'", World::marker(c, n)));
    let got = w.take(c);
    World::rows_of(&got)
}

#[test]
fn login_learns_parameters_from_a_first_server_connection_and_gives_it_back() {
    let mut w = world(Setup::default());
    let c = w.login(0, 0);
    assert_eq!(
        w.open_servers(),
        1,
        "the first login opened one to learn parameters"
    );
    assert!(w.is_idle(0), "and gave it back");
    assert_eq!(select(&mut w, c, 1), vec![World::marker(c, 1)]);
    w.check();
}

#[test]
fn acquire_timeout_is_an_error_53300_and_the_session_goes_on() {
    let mut w = world(Setup {
        max_conns: 1,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.query(a, "SELECT pg_sleep(10)");
    let held = w.server_of(a).unwrap();
    w.query(b, "SELECT 'x'");
    assert!(w.tags(b).is_empty(), "b waits");
    w.advance(999 * MS);
    assert!(
        w.tags(b).is_empty(),
        "still within pool_acquire_timeout_milliseconds"
    );
    w.advance(MS);
    let got = w.take(b);
    let (code, severity, message) = World::error_of(&got).unwrap();
    assert_eq!(code, SqlState::TOO_MANY_CONNECTIONS);
    assert_eq!(severity, Severity::Error, "an ERROR, not a FATAL");
    assert!(
        message.starts_with("pglink: no server connection"),
        "{message}"
    );
    assert_eq!(got.last().map(|m| m.0), Some(be::READY_FOR_QUERY));
    w.check();
    w.release(held);
    w.take(a);
    assert_eq!(
        select(&mut w, b, 2),
        vec![World::marker(b, 2)],
        "b's session survived"
    );
    w.check();
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let mut w = world(Setup {
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let (b, c) = (w.login(0, 0), w.login(0, 0));
    w.query(a, "SELECT pg_sleep(1)");
    let s = w.server_of(a).unwrap();
    w.query(b, "SELECT pg_sleep(1)");
    w.advance(MS);
    w.query(c, "SELECT pg_sleep(1)");
    w.release(s);
    assert_eq!(w.server_of(b), Some(s), "b waited longer");
    assert_eq!(w.server_of(c), None);
    w.release(s);
    assert_eq!(w.server_of(c), Some(s));
    w.check();
}

#[test]
fn a_wait_that_ended_does_not_wake_the_driver_at_its_old_deadline() {
    let mut w = world(Setup {
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.query(a, "SELECT pg_sleep(1)");
    let s = w.server_of(a).unwrap();
    w.advance(7 * MS); // off the maintenance period's grid
    w.query(b, &format!("SELECT '{}'", World::marker(b, 1)));
    let stale = w.now + 60 * S;
    w.release(s);
    let got = w.take(b);
    assert_eq!(
        World::rows_of(&got),
        vec![World::marker(b, 1)],
        "b was served"
    );
    let mut wakeups = 0;
    while let Some(at) = w.engines[0].poll_timeout() {
        if at > stale {
            break;
        }
        assert_ne!(at, stale, "woken for b's acquire deadline");
        w.advance(at.saturating_duration_since(w.now));
        wakeups += 1;
    }
    assert!(wakeups <= 130, "only maintenance wakes it: {wakeups}");
    w.check();
}

#[test]
fn a_user_at_the_database_cap_makes_room_by_closing_another_users_idle_connection() {
    let mut w = world(Setup {
        max_conns: 1,
        ..Setup::default()
    });
    let alice = w.login(0, 0);
    assert!(w.is_idle(0), "alice's pool keeps its connection");
    let bob = w.connect(0, 1);
    w.settle();
    assert!(w.tags(bob).contains(&be::READY_FOR_QUERY), "bob logged in");
    assert_eq!(w.closes(CloseReason::MakingRoom), 1);
    assert_eq!(w.open_servers(), 1, "never more than pool_max_conns");
    assert_eq!(select(&mut w, bob, 1), vec![World::marker(bob, 1)]);
    assert_eq!(select(&mut w, alice, 1), vec![World::marker(alice, 1)]);
    assert_eq!(w.closes(CloseReason::MakingRoom), 2, "and back");
    w.check();
}

#[test]
fn an_idle_connection_on_another_engine_is_handed_over() {
    let mut w = world(Setup {
        engines: 2,
        max_conns: 1,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    assert_eq!(w.servers[0].engine, 0);
    let b = w.login(1, 0);
    assert_eq!(w.open_servers(), 1, "borrowed, not opened");
    assert_eq!(select(&mut w, b, 1), vec![World::marker(b, 1)]);
    assert_eq!(w.servers[0].engine, 1, "the connection moved to b's engine");
    assert_eq!(select(&mut w, a, 1), vec![World::marker(a, 1)]);
    assert_eq!(w.servers[0].engine, 0, "and back to a's");
    assert_eq!(w.open_servers(), 1);
    w.check();
}

#[test]
fn a_connection_freed_goes_to_the_engine_whose_client_waited_longer() {
    let mut w = world(Setup {
        engines: 2,
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(1, 0);
    let c = w.login(0, 0);
    w.query(a, "SELECT pg_sleep(1)");
    let s = w.server_of(a).unwrap();
    w.query(b, "SELECT pg_sleep(1)");
    w.advance(10 * MS);
    w.query(c, "SELECT pg_sleep(1)");
    w.release(s);
    assert_eq!(
        w.server_of(b),
        Some(s),
        "b, on the other engine, waited longest"
    );
    w.release(s);
    assert_eq!(w.server_of(c), Some(s));
    w.check();
}

#[test]
fn lifetime_ends_at_a_jittered_deadline() {
    let mut w = world(Setup {
        max_lifetime: Some(10 * S),
        lifetime_jitter: Some(5 * S),
        ..Setup::default()
    });
    let c = w.login(0, 0);
    // The harness's random bytes put the jitter half-way: 2.5 s.
    w.advance_by_steps(12 * S, 250 * MS);
    assert!(w.is_idle(0), "alive at 12 s");
    w.advance_by_steps(S, 250 * MS);
    assert!(!w.is_idle(0), "closed by 13 s");
    assert_eq!(w.closes(CloseReason::Lifetime), 1);
    assert_eq!(
        select(&mut w, c, 1),
        vec![World::marker(c, 1)],
        "a new one serves"
    );
    w.check();
}

#[test]
fn a_connection_released_after_its_lifetime_closes_instead_of_going_back() {
    let mut w = world(Setup {
        max_lifetime: Some(S),
        ..Setup::default()
    });
    let c = w.login(0, 0);
    w.query(c, "SELECT pg_sleep(5)");
    let s = w.server_of(c).unwrap();
    w.advance(2 * S);
    w.release(s);
    assert!(w.servers[s].closed);
    assert_eq!(w.closes(CloseReason::Lifetime), 1);
    w.check();
}

#[test]
fn idle_connections_expire_but_health_checks_do_not_keep_them() {
    let mut w = world(Setup {
        max_idle_time: Some(5 * S),
        health_check_period: Some(S),
        ..Setup::default()
    });
    w.login(0, 0);
    w.advance_by_steps(4 * S, 250 * MS);
    assert!(w.is_idle(0));
    assert!(
        w.servers[0].queries.iter().filter(|q| q.is_empty()).count() >= 2,
        "health checks ran: {:?}",
        w.servers[0].queries
    );
    w.advance_by_steps(2 * S, 250 * MS);
    assert!(w.servers[0].closed, "idle for 5 s despite the checks");
    assert_eq!(w.closes(CloseReason::IdleTimeout), 1);
    w.check();
}

#[test]
fn a_health_check_closes_a_server_that_does_not_answer() {
    let mut w = world(Setup {
        health_check_period: Some(S),
        ..Setup::default()
    });
    w.login(0, 0);
    w.servers[0].silent = true;
    w.advance_by_steps(S + 500 * MS, 250 * MS);
    assert!(!w.is_idle(0), "being checked");
    assert!(!w.servers[0].closed);
    w.advance_by_steps(5 * S, 250 * MS);
    assert!(w.servers[0].closed, "no answer within the reset timeout");
    assert_eq!(w.closes(CloseReason::HealthCheckFailed), 1);
    w.check();
}

#[test]
fn min_idle_connections_are_opened_and_refilled() {
    let mut w = world(Setup {
        min_idle: 2,
        ..Setup::default()
    });
    w.advance(500 * MS);
    assert_eq!(w.open_servers(), 2);
    w.kill(0);
    assert_eq!(w.open_servers(), 1);
    w.advance(500 * MS);
    assert_eq!(w.open_servers(), 2, "refilled at the next maintenance");
    w.check();
}

#[test]
fn a_refused_login_fails_waiters_and_is_retried_with_back_off() {
    let mut w = world(Setup {
        min_idle: 1,
        ..Setup::default()
    });
    w.connects = Connects::RefuseLogin;
    let c = w.connect(0, 0);
    w.settle();
    let got = w.take(c);
    let (code, severity, message) = World::error_of(&got).unwrap();
    assert_eq!(code, SqlState::INVALID_PASSWORD, "{message}");
    assert_eq!(
        severity,
        Severity::Fatal,
        "a login that waited for parameters ends"
    );
    assert!(message.contains("cannot log in to server"), "{message}");
    let ctx = w.ctx.clone();
    let attempts = || ctx.stats[0].pool(0).unwrap().connect_attempts.get();
    let before = attempts();
    w.advance_by_steps(10 * S, 100 * MS);
    // Every 500 ms without back-off (20); after 0.5 s, 1 s, then every 2 s with it.
    let tried = attempts() - before;
    assert!(
        (5..=7).contains(&tried),
        "min-idle refills back off: {tried} attempts in 10 s"
    );
    w.connects = Connects::Accept;
    w.advance_by_steps(20 * S, 100 * MS);
    assert_eq!(
        w.open_servers(),
        2,
        "each user's pool refilled once logins work"
    );
    w.check();
}

#[test]
fn a_refused_tcp_connection_is_an_error_08006_for_the_waiting_statement() {
    let mut w = world(Setup::default());
    let c = w.login(0, 0);
    w.kill(0);
    w.connects = Connects::Refuse;
    w.query(c, "SELECT 'x'");
    let got = w.take(c);
    let (code, severity, message) = World::error_of(&got).unwrap();
    assert_eq!(code, SqlState::CONNECTION_FAILURE);
    assert_eq!(severity, Severity::Error);
    assert!(message.contains("cannot connect to server"), "{message}");
    w.connects = Connects::Accept;
    // Within the back-off after a failure, the same answer without a new attempt...
    w.query(c, "SELECT 'y'");
    assert_eq!(World::error_of(&w.take(c)).unwrap().2, message);
    // ...and a new attempt after it.
    w.advance(500 * MS);
    assert_eq!(select(&mut w, c, 1), vec![World::marker(c, 1)]);
    w.check();
}

#[test]
fn a_connect_that_hangs_times_out() {
    let mut w = world(Setup {
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let c = w.login(0, 0);
    w.kill(0);
    w.connects = Connects::Hang;
    w.query(c, "SELECT 'x'");
    w.advance(5 * S);
    let (code, _, message) = World::error_of(&w.take(c)).unwrap();
    assert_eq!(code, SqlState::CONNECTION_FAILURE);
    assert!(message.contains("timeout expired"), "{message}");
    w.check();
}

#[test]
fn connects_to_a_failing_server_back_off_and_clients_hear_why_at_once() {
    let mut w = world(Setup {
        max_conns: 5,
        ..Setup::default()
    });
    let clients: Vec<usize> = (0..5).map(|_| w.login(0, 0)).collect();
    w.kill(0);
    w.connects = Connects::Refuse;
    let ctx = w.ctx.clone();
    let attempts = || ctx.stats[0].pool(0).unwrap().connect_attempts.get();
    let before = attempts();
    // Every client asks again as soon as it has its answer, for 10 s: 1000 statements.
    for _ in 0..200 {
        for &c in &clients {
            w.query(c, "SELECT 'x'");
            let got = w.take(c);
            let (code, severity, message) = World::error_of(&got).expect("an answer at once");
            assert_eq!(
                (code, severity),
                (SqlState::CONNECTION_FAILURE, Severity::Error)
            );
            assert!(message.contains("cannot connect to server"), "{message}");
            assert!(message.contains("refused"), "the cause: {message}");
        }
        w.advance(50 * MS);
    }
    // Attempts at 0, 0.5, 1.5, 3.5, 5.5, 7.5 and 9.5 s (the back-off doubles up to 2 s).
    assert_eq!(attempts() - before, 7, "attempts in 10 s");
    // The server is back, slow to accept: past the back-off (11.5 s), one attempt probes it
    // while every client waits for that one.
    w.connects = Connects::Hang;
    w.advance(2 * S);
    for &c in &clients {
        w.query(c, &format!("SELECT '{}'", World::marker(c, 1)));
    }
    assert_eq!(attempts() - before, 8, "one attempt after failures");
    for &c in &clients {
        assert!(w.tags(c).is_empty(), "client {c} waits for it");
    }
    // It succeeds: every client is served.
    w.connects = Connects::Accept;
    w.complete_connects(false);
    for &c in &clients {
        assert_eq!(World::rows_of(&w.take(c)), [World::marker(c, 1)]);
    }
    w.check();
}

#[test]
fn a_client_waiting_behind_a_busy_connection_is_told_why_no_new_one_came() {
    let mut w = world(Setup::default());
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.query(a, "BEGIN");
    let s = w.server_of(a).unwrap();
    w.connects = Connects::Refuse;
    w.query(b, "SELECT 'x'");
    assert!(
        w.tags(b).is_empty(),
        "b waits for a's connection, which may come back"
    );
    w.advance(S);
    let (code, severity, message) = World::error_of(&w.take(b)).unwrap();
    assert_eq!(
        (code, severity),
        (SqlState::TOO_MANY_CONNECTIONS, Severity::Error)
    );
    assert!(
        message.contains("the last attempt to open one failed: cannot connect to server"),
        "{message}"
    );
    w.query(a, "COMMIT");
    w.take(a);
    assert!(w.is_idle(s));
    // Back-off or not, an idle connection serves at once.
    assert_eq!(select(&mut w, b, 1), vec![World::marker(b, 1)]);
    w.check();
}

#[test]
fn a_client_that_vanishes_mid_transaction_is_cancelled_and_rolled_back() {
    let (mut w, a, s) = sleeping_in_a_transaction();
    w.disconnect(a);
    assert_cleaned_up_and_lent_again(&mut w, s);
    assert_eq!(w.open_servers(), 1);
    w.check();
}

/// A pool of one, its connection lent to a client inside a transaction, in `pg_sleep`:
/// the world, the client and the server connection.
fn sleeping_in_a_transaction() -> (World, usize, usize) {
    let mut w = world(Setup {
        max_conns: 1,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    w.query(a, "BEGIN");
    w.query(a, "SELECT pg_sleep(100)");
    let s = w.server_of(a).unwrap();
    (w, a, s)
}

/// Server connection `s`, left mid-transaction in `pg_sleep` by a client that is gone, had
/// its query cancelled and was rolled back, went back to the pool and serves a new client.
fn assert_cleaned_up_and_lent_again(w: &mut World, s: usize) {
    assert_eq!(w.servers[s].cancels, 1, "what ran was cancelled");
    assert_eq!(
        w.servers[s].queries.last().map(String::as_str),
        Some("ROLLBACK")
    );
    assert!(w.is_idle(s), "and the connection went back");
    let b = w.login(0, 0);
    assert_eq!(select(w, b, 1), vec![World::marker(b, 1)]);
}

#[test]
fn a_terminate_mid_transaction_ends_the_session_whatever_follows_it() {
    // Found by the `engine` fuzz target: a Terminate and more bytes in one read used to
    // leave the connection lent to a client that was gone (the pool lost it for good).
    let (mut w, a, s) = sleeping_in_a_transaction();
    w.take(a);
    let mut bytes = Vec::new();
    frontend::terminate(&mut bytes);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xb7]);
    w.send(a, &bytes);
    w.settle();
    assert!(w.clients[a].closed, "Terminate closed the client");
    let got = w.take(a);
    assert!(
        World::error_of(&got).is_none(),
        "and what followed it was not read: {got:?}"
    );
    assert_cleaned_up_and_lent_again(&mut w, s);
    w.check();
}

#[test]
fn cleanup_after_a_vanished_client_gives_up_at_its_deadline() {
    let mut w = world(Setup::default());
    let a = w.login(0, 0);
    w.query(a, "BEGIN");
    let s = w.server_of(a).unwrap();
    w.servers[s].silent = true;
    w.disconnect(a);
    assert!(!w.servers[s].closed, "draining");
    w.advance(4 * S);
    assert!(!w.servers[s].closed);
    w.advance(S);
    assert!(w.servers[s].closed, "closed at the reset deadline");
    assert_eq!(w.closes(CloseReason::ResetFailed), 1);
    w.check();
}

#[test]
fn a_cancel_reaches_only_the_connection_its_client_holds() {
    let mut w = world(Setup::default());
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.query(a, "SELECT pg_sleep(10)");
    w.query(b, "SELECT pg_sleep(10)");
    let (sa, sb) = (w.server_of(a).unwrap(), w.server_of(b).unwrap());
    w.cancel(a, 0);
    assert_eq!((w.servers[sa].cancels, w.servers[sb].cancels), (1, 0));
    let (code, _, _) = World::error_of(&w.take(a)).unwrap();
    assert_eq!(code, SqlState::QUERY_CANCELED);
    w.release(sb);
    w.take(b);
    w.cancel(b, 0);
    assert_eq!(
        w.servers[sb].cancels, 0,
        "b holds nothing now: nothing is cancelled"
    );
    w.check();
}

#[test]
fn a_cancel_of_a_statement_waiting_for_a_connection_fails_it_57014_and_it_leaves_the_queue() {
    use crate::observe::metrics::CancelOutcome;
    let mut w = world(Setup {
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.query(a, "SELECT pg_sleep(10)");
    let s = w.server_of(a).unwrap();
    w.query(b, "SELECT pg_sleep(60)");
    w.advance(MS);
    assert!(w.tags(b).is_empty(), "b waits for the only connection");
    w.cancel(b, 0);
    let got = w.take(b);
    let (code, severity, message) = World::error_of(&got).unwrap();
    assert_eq!(code, SqlState::QUERY_CANCELED);
    assert_eq!(severity, Severity::Error);
    assert!(message.contains("canceling statement"), "{message}");
    assert_eq!(got.last().map(|m| m.0), Some(be::READY_FOR_QUERY));
    assert_eq!(w.servers[s].cancels, 0, "a's query runs on");
    assert_eq!(cancels(&w, 0, CancelOutcome::Waiting), 1);
    w.release(s);
    w.take(a);
    assert!(w.is_idle(s), "nobody waits for it any more");
    assert_eq!(select(&mut w, b, 2), vec![World::marker(b, 2)]);
    w.check();
}

#[test]
fn a_connection_is_not_lent_again_until_its_cancel_was_delivered() {
    let mut w = world(Setup {
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.auto_mail = false;
    w.query(a, "SELECT pg_sleep(10)");
    let s = w.server_of(a).unwrap();
    w.cancel(a, 0);
    w.take(a);
    w.query(b, "SELECT 'x'");
    assert_eq!(
        w.server_of(b),
        None,
        "parked until the delivery reports back"
    );
    w.deliver_all();
    w.settle();
    assert_eq!(World::rows_of(&w.take(b)), vec!["x".to_owned()]);
    assert!(w.is_idle(s));
    w.check();
}

#[test]
fn a_cancel_arriving_on_the_other_engine_is_routed_to_its_client() {
    let mut w = world(Setup {
        engines: 2,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    w.query(a, "SELECT pg_sleep(10)");
    let s = w.server_of(a).unwrap();
    w.cancel(a, 1);
    assert_eq!(w.servers[s].cancels, 1);
    w.check();
}

#[test]
fn a_server_lost_mid_transaction_is_fatal_08006_for_its_client_only() {
    let mut w = world(Setup::default());
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    w.query(a, "BEGIN");
    let s = w.server_of(a).unwrap();
    w.kill(s);
    let (code, severity, _) = World::error_of(&w.take(a)).unwrap();
    assert_eq!(
        (code, severity),
        (SqlState::CONNECTION_FAILURE, Severity::Fatal)
    );
    assert!(w.clients[a].closed);
    assert_eq!(select(&mut w, b, 1), vec![World::marker(b, 1)]);
    w.check();
}

#[test]
fn pipelined_batches_release_only_after_the_last_sync() {
    let mut w = world(Setup {
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    let mut batch = Vec::new();
    for n in 0..3 {
        frontend::parse(
            &mut batch,
            b"",
            format!("SELECT '{}'", World::marker(a, n)).as_bytes(),
            &[],
        );
        frontend::bind(&mut batch, b"", b"", &[], [], &[]);
        frontend::execute(&mut batch, b"", 0);
        frontend::sync(&mut batch);
    }
    w.query(b, "SELECT pg_sleep(1)");
    let s = w.server_of(b).unwrap();
    w.send(a, &batch);
    w.settle();
    w.release(s);
    w.take(b);
    let got = w.take(a);
    assert_eq!(
        World::rows_of(&got),
        (0..3).map(|n| World::marker(a, n)).collect::<Vec<_>>()
    );
    let ready = got.iter().filter(|m| m.0 == be::READY_FOR_QUERY).count();
    assert_eq!(ready, 3);
    assert!(w.is_idle(s), "released after the third ReadyForQuery");
    w.check();
}

#[test]
fn a_login_that_never_finishes_is_cut_off() {
    let mut w = world(Setup {
        login_timeout: 2 * S,
        ..Setup::default()
    });
    let c = w.connect_mute(0, 0);
    w.advance(2 * S - MS);
    assert!(!w.clients[c].closed);
    w.advance(MS);
    let (code, severity, _) = World::error_of(&w.take(c)).unwrap();
    assert_eq!(
        (code, severity),
        (SqlState::QUERY_CANCELED, Severity::Fatal)
    );
    assert!(w.clients[c].closed);
    w.check();
}

#[test]
fn logins_in_progress_are_capped_and_every_way_out_frees_a_slot() {
    use crate::observe::metrics::RefuseReason;
    let mut w = world(Setup {
        login_timeout: 2 * S,
        max_logins: 2,
        ..Setup::default()
    });
    let refused =
        |w: &World| w.ctx.stats[0].clients_refused[RefuseReason::TooManyLogins.index()].get();
    let gone = w.connect_mute(0, 0);
    let slow = w.connect_mute(0, 1);
    w.settle();
    assert_eq!(w.ctx.logins_in_progress(), 2);
    // Over the cap: FATAL 53300 at once, and no slot taken.
    let c = w.connect(0, 0);
    w.settle();
    let (code, severity, message) = World::error_of(&w.take(c)).unwrap();
    assert_eq!(
        (code, severity),
        (SqlState::TOO_MANY_CONNECTIONS, Severity::Fatal)
    );
    assert_eq!(
        message,
        "pglink: too many connections are logging in (max_logins_in_progress is 2)"
    );
    assert!(w.clients[c].closed);
    assert_eq!(refused(&w), 1);
    assert_eq!(w.ctx.logins_in_progress(), 2);
    w.check();
    // A client gone mid-login frees its slot; a finished login frees its own.
    w.disconnect(gone);
    assert_eq!(w.ctx.logins_in_progress(), 1);
    let ok = w.login(0, 0);
    assert_eq!(w.ctx.logins_in_progress(), 1);
    assert_eq!(select(&mut w, ok, 1), vec![World::marker(ok, 1)]);
    // A login timeout frees the last one.
    w.advance(2 * S);
    assert!(w.clients[slow].closed);
    assert_eq!(w.ctx.logins_in_progress(), 0);
    // Logged-in clients do not count: two more may log in at the same time.
    let a = w.connect_mute(0, 0);
    let b = w.connect_mute(0, 1);
    w.settle();
    assert!(!w.clients[a].closed && !w.clients[b].closed);
    assert_eq!(w.ctx.logins_in_progress(), 2);
    assert_eq!(refused(&w), 1);
    assert_eq!(w.ctx.client_count(), 3);
    w.check();
}

#[test]
fn a_connection_refused_for_max_client_connections_takes_no_login_slot() {
    let mut w = world(Setup {
        max_logins: 1,
        ..Setup::default()
    });
    let mut next = w.reloaded(|_| {});
    next.max_clients = 1;
    w.reload(next);
    let first = w.login(0, 0);
    let c = w.connect(0, 1);
    w.settle();
    let (code, _, message) = World::error_of(&w.take(c)).unwrap();
    assert_eq!(code, SqlState::TOO_MANY_CONNECTIONS);
    assert!(message.contains("max_client_connections"), "{message}");
    assert_eq!(w.ctx.logins_in_progress(), 0);
    w.disconnect(first);
    w.login(0, 1);
    w.check();
}

#[test]
fn shutdown_closes_idle_clients_at_once_and_busy_ones_when_their_transaction_ends() {
    let mut w = world(Setup::default());
    let idle = w.login(0, 0);
    let busy = w.login(0, 0);
    w.query(busy, "SELECT pg_sleep(1)");
    let s = w.server_of(busy).unwrap();
    w.engines[0].handle_shutdown(w.now);
    w.settle();
    let (code, _, _) = World::error_of(&w.take(idle)).unwrap();
    assert_eq!(code, SqlState::ADMIN_SHUTDOWN);
    assert!(w.clients[idle].closed);
    assert!(!w.clients[busy].closed);
    w.release(s);
    assert!(w.clients[busy].closed, "closed once its transaction ended");
    assert!(w.engines[0].is_finished());
    w.check();
}

#[test]
fn events_follow_a_server_connection_through_its_states() {
    use crate::observe::events::{Event, OwnedEvent, Recorded, ServerState};
    use std::sync::{Arc, Mutex};
    struct Shared(Arc<Mutex<Recorded>>);
    impl crate::observe::events::EventSink for Shared {
        fn record(&mut self, at: std::time::Instant, event: &Event<'_>) {
            self.0.lock().unwrap().record(at, event);
        }
    }
    let mut w = world(Setup::default());
    let log = Arc::new(Mutex::new(Recorded::default()));
    w.engines[0].set_event_sink(Box::new(Shared(log.clone())));
    let c = w.login(0, 0);
    select(&mut w, c, 1);
    let states: Vec<ServerState> = log
        .lock()
        .unwrap()
        .0
        .iter()
        .filter_map(|(_, e)| match e {
            OwnedEvent::Server { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    use ServerState::*;
    assert_eq!(
        states,
        vec![Connecting, LoggingIn, Idle, Lent, Idle, Lent, Idle]
    );
}

/// The flight recorder keeps a one-statement transaction's nine events in five records: the
/// state changes go into the records of the events they come with.
#[test]
fn a_transaction_takes_five_flight_records() {
    use crate::config::{FlightRecorderConfig, FlightRecorderTriggers};
    use crate::observe::events::NoEvents;
    use crate::observe::flight::FlightRecorder;
    let config = FlightRecorderConfig {
        min_age: std::time::Duration::from_secs(60),
        max_bytes: 1 << 20,
        output_dir: std::env::temp_dir(),
        periodic_interval: std::time::Duration::ZERO,
        triggers: FlightRecorderTriggers::default(),
    };
    // Before the world, whose clock starts now: its instants are after the recorder's epoch.
    let recorder = FlightRecorder::new(&config, 1);
    let held = || -> u64 {
        let status: serde_json::Value = serde_json::from_str(&recorder.status_json()).unwrap();
        status["events"].as_u64().unwrap()
    };
    let mut w = world(Setup::default());
    w.engines[0].set_event_sink(Box::new(recorder.sink(0)));
    let c = w.login(0, 0);
    select(&mut w, c, 1);
    w.engines[0].flush_events();
    let before = held();
    for n in 2..=4 {
        select(&mut w, c, n);
        w.engines[0].flush_events();
    }
    assert_eq!(held() - before, 3 * 5);
    w.engines[0].set_event_sink(Box::new(NoEvents));
}

/// A sink gets only the kinds of event it asked for; what nobody asked for is not built.
#[test]
fn a_sink_gets_only_the_events_it_wants() {
    use crate::observe::events::{Event, EventSink, Interest, OwnedEvent, Recorded};
    use std::sync::{Arc, Mutex};
    struct Picky(Arc<Mutex<Recorded>>, Interest);
    impl EventSink for Picky {
        fn record(&mut self, at: std::time::Instant, event: &Event<'_>) {
            self.0.lock().unwrap().record(at, event);
        }
        fn interest(&self) -> Interest {
            self.1
        }
    }
    let run = |interest: Interest| {
        let mut w = world(Setup::default());
        let log = Arc::new(Mutex::new(Recorded::default()));
        w.engines[0].set_event_sink(Box::new(Picky(log.clone(), interest)));
        let c = w.login(0, 0);
        select(&mut w, c, 1);
        w.disconnect(c);
        w.settle();
        std::mem::take(&mut log.lock().unwrap().0)
    };
    let wanted = Interest::STATEMENT_ENDED.and(Interest::CLIENT_CLOSED);
    let events = run(wanted);
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| match e {
            OwnedEvent::StatementEnded { .. } => "statement ended",
            OwnedEvent::Client { .. } => "client closed",
            other => panic!("not asked for: {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["statement ended", "client closed"]);
    // Everything, for comparison: the same run records much more, a statement's start too.
    let all = run(Interest::ALL);
    assert!(all.len() > 10, "{}", all.len());
    assert!(
        all.iter()
            .any(|(_, e)| matches!(e, OwnedEvent::StatementStarted { .. }))
    );
    // The default leaves a statement's start out.
    let default = run(Interest::DEFAULT);
    assert!(
        !default
            .iter()
            .any(|(_, e)| matches!(e, OwnedEvent::StatementStarted { .. }))
    );
    assert_eq!(default.len() + 1, all.len());
}

#[test]
fn a_parameter_sync_that_ends_before_the_waiting_message_runs_keeps_the_lending() {
    let mut w = world(Setup {
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let b = w.login(0, 0);
    // a changes a setting pglink then reads back (the scripted server answers the read-back
    // with a value of its own): the connection's settings now differ from b's.
    w.query(a, "SET application_name = 'x'");
    w.take(a);
    w.query(a, "SELECT pg_sleep(1)");
    let s = w.server_of(a).unwrap();
    w.query(b, &format!("SELECT '{}'", World::marker(b, 1)));
    // b is handed the connection when a's statement ends; pglink first brings the settings in
    // line, and b's statement must run on the connection whatever the order of events: the
    // sync alone is not a transaction that gives the connection back.
    let ctx = w.ctx.clone();
    let transactions = || ctx.stats[0].pool(0).unwrap().transactions.get();
    let before = transactions();
    w.release(s);
    w.take(a);
    assert_eq!(World::rows_of(&w.take(b)), vec![World::marker(b, 1)]);
    assert_eq!(transactions() - before, 2, "a's statement, then b's");
    let syncs = w.servers[s]
        .queries
        .iter()
        .filter(|q| q.contains("set_config") || q.starts_with("RESET"))
        .count();
    assert_eq!(syncs, 1, "one sync: {:?}", w.servers[s].queries);
    w.check();
}

#[test]
fn while_stopping_no_connection_is_opened_for_waiters() {
    let mut w = world(Setup {
        engines: 2,
        max_conns: 1,
        acquire_timeout: 60 * S,
        ..Setup::default()
    });
    let a = w.login(1, 0);
    let b = w.login(1, 0);
    w.query(a, "SELECT pg_sleep(1)");
    let s = w.server_of(a).unwrap();
    w.query(b, "SELECT 'x'");
    // Another reactor starts the shutdown; this one has not wound down yet.
    let now = w.now;
    w.engines[0].handle_shutdown(now);
    w.settle();
    let opened = w.servers.len();
    w.release(s);
    assert!(
        w.servers[s].closed,
        "a connection freed while stopping closes"
    );
    assert_eq!(w.servers.len(), opened, "and none is opened in its place");
    w.engines[1].handle_shutdown(now);
    w.settle();
    let (code, _, _) = World::error_of(&w.take(b)).unwrap();
    assert_eq!(code, SqlState::ADMIN_SHUTDOWN);
    w.check();
}

#[test]
fn a_connection_whose_settings_match_is_lent_without_a_sync() {
    let mut w = world(Setup::default());
    let (a, b) = (w.login(0, 0), w.login(0, 0));
    assert_eq!(select(&mut w, a, 1), vec![World::marker(a, 1)]);
    assert_eq!(select(&mut w, b, 1), vec![World::marker(b, 1)]);
    assert_eq!(
        w.servers[0].queries,
        vec![
            format!("SELECT '{}'", World::marker(a, 1)),
            format!("SELECT '{}'", World::marker(b, 1))
        ],
        "the statements, and nothing else"
    );
    w.check();
}

// ---------------------------------------------------------------- reload

#[test]
fn a_moved_server_retires_idle_connections_now_and_a_lent_one_when_it_comes_back() {
    let mut w = world(Setup {
        max_conns: 2,
        ..Setup::default()
    });
    let (a, b) = (w.login(0, 0), w.login(0, 0));
    w.query(a, "SELECT pg_sleep(10)");
    let lent = w.server_of(a).unwrap();
    assert_eq!(select(&mut w, b, 1), vec![World::marker(b, 1)]);
    let idle = (0..w.servers.len()).find(|&s| w.is_idle(s)).unwrap();
    let next = w.reloaded(|dbs| dbs[0].target = World::moved_target());
    w.reload(next);
    assert!(w.servers[idle].closed, "the idle one closes at once");
    assert!(
        !w.servers[lent].closed,
        "the lent one serves its transaction to the end"
    );
    assert_eq!(w.closes(CloseReason::Reconfigured), 1);
    w.release(lent);
    w.take(a);
    assert!(w.servers[lent].closed, "and closes when it comes back");
    assert_eq!(w.closes(CloseReason::Reconfigured), 2);
    // Both sessions go on, on connections to the moved server.
    assert_eq!(select(&mut w, a, 2), vec![World::marker(a, 2)]);
    assert_eq!(select(&mut w, b, 3), vec![World::marker(b, 3)]);
    w.check();
}

#[test]
fn a_removed_users_sessions_end_57p01_when_idle_and_others_carry_on() {
    let mut w = world(Setup {
        max_conns: 3,
        ..Setup::default()
    });
    let keep = w.login(0, 0);
    let (idle, busy) = (w.login(0, 1), w.login(0, 1));
    w.query(busy, "SELECT pg_sleep(10)");
    let held = w.server_of(busy).unwrap();
    let next = w.reloaded(|_| {});
    next.pools[1].remove();
    w.reload(next);
    let got = w.take(idle);
    let (code, severity, message) = World::error_of(&got).expect("an error for the idle one");
    assert_eq!(
        (code, severity),
        (SqlState::ADMIN_SHUTDOWN, Severity::Fatal)
    );
    assert!(message.starts_with("pglink: user"), "{message}");
    assert!(w.clients[idle].closed);
    assert!(!w.clients[busy].closed, "in a transaction: not yet");
    w.release(held);
    let got = w.take(busy);
    assert!(
        got.iter().any(|m| m.0 == be::READY_FOR_QUERY),
        "its transaction ends normally"
    );
    assert_eq!(
        World::error_of(&got).map(|e| e.0),
        Some(SqlState::ADMIN_SHUTDOWN),
        "then the session ends"
    );
    assert!(w.clients[busy].closed);
    assert!(
        w.servers[held].closed,
        "a removed user's connection is not kept"
    );
    assert_eq!(select(&mut w, keep, 1), vec![World::marker(keep, 1)]);
    w.check();
}

#[test]
fn a_lowered_pool_max_conns_closes_connections_as_they_come_back() {
    let mut w = world(Setup {
        max_conns: 3,
        ..Setup::default()
    });
    let clients: Vec<usize> = (0..3).map(|_| w.login(0, 0)).collect();
    for &c in &clients {
        w.query(c, "SELECT pg_sleep(10)");
    }
    let held: Vec<usize> = clients.iter().map(|&c| w.server_of(c).unwrap()).collect();
    let next = w.reloaded(|dbs| dbs[0].settings.max_conns = 1);
    w.reload(next);
    for (&c, &s) in clients.iter().zip(&held) {
        w.release(s);
        w.take(c);
    }
    assert_eq!(w.open_servers(), 1, "down to the new pool_max_conns");
    assert_eq!(w.closes(CloseReason::Reconfigured), 2);
    w.check();
}

#[test]
fn maintenance_closes_what_a_pause_retired_even_if_its_message_was_lost() {
    let mut w = world(Setup::default());
    let c = w.login(0, 0);
    assert_eq!(select(&mut w, c, 1), vec![World::marker(c, 1)]);
    let idle = (0..w.servers.len()).find(|&s| w.is_idle(s)).unwrap();
    // PAUSE sets the flag; its `Maintain` message never arrives.
    w.ctx.databases[0].set_paused(true);
    w.advance(MS);
    assert!(!w.servers[idle].closed);
    w.advance(S);
    assert!(
        w.servers[idle].closed,
        "the next maintenance pass closes it"
    );
    assert_eq!(w.closes(CloseReason::Reconfigured), 1);
    w.check();
}

/// How many CancelRequests engine `e` counted with `outcome`.
fn cancels(w: &World, e: usize, outcome: crate::observe::metrics::CancelOutcome) -> u64 {
    w.ctx.stats[e].cancels[outcome.index()].get()
}

#[test]
fn with_peering_keys_name_their_instance_and_cancels_for_a_peer_go_there() {
    use super::cancel::{FORWARDED, key_peer};
    use crate::observe::metrics::CancelOutcome::{Loop, Peer, UnknownPeer};
    let mut w = world(Setup {
        engines: 2,
        peer_id: Some(1),
        peers: vec![2],
        ..Setup::default()
    });
    let a = w.login(0, 0);
    let (pid, secret) = w.clients[a].key.clone().unwrap();
    assert_eq!(key_peer(&secret), Some(1));
    assert!(pid & FORWARDED == 0, "issued pids stay below 2^31");
    w.query(a, "SELECT pg_sleep(10)");
    let s = w.server_of(a).unwrap();

    // A key of peer 2 (same pid, its id in the secret) goes to peer 2, marked, as it came.
    let mut theirs = secret.clone();
    theirs[1] ^= 3;
    assert_eq!(key_peer(&theirs), Some(2));
    w.cancel_with(pid, &theirs, 1);
    assert_eq!(
        w.forwarded_cancels,
        vec![(1, 2, pid | FORWARDED, theirs.clone())]
    );
    assert_eq!(cancels(&w, 1, Peer), 1);
    // Forwarded to us by a peer but not ours: never forwarded again.
    w.cancel_with(pid | FORWARDED, &theirs, 0);
    assert_eq!(cancels(&w, 0, Loop), 1);
    // A peer not in `peers`.
    theirs[1] ^= 3 ^ 6;
    w.cancel_with(pid, &theirs, 0);
    assert_eq!(cancels(&w, 0, UnknownPeer), 1);
    assert_eq!(w.forwarded_cancels.len(), 1);
    assert_eq!(w.servers[s].cancels, 0, "none of those reached a server");

    // Our own key, forwarded to us by a peer, cancels the query.
    w.cancel_with(pid | FORWARDED, &secret, 1);
    assert_eq!(w.servers[s].cancels, 1);
    let (code, _, _) = World::error_of(&w.take(a)).unwrap();
    assert_eq!(code, SqlState::QUERY_CANCELED);
    assert_eq!(
        w.ctx.cancels_in_flight(),
        0,
        "every delivery reported back, forwarded ones too"
    );
    w.check();
}

#[test]
fn without_peering_keys_are_wholly_random_and_nothing_is_forwarded() {
    let mut w = world(Setup::default());
    let a = w.login(0, 0);
    let (pid, mut secret) = w.clients[a].key.clone().unwrap();
    w.query(a, "SELECT pg_sleep(10)");
    let s = w.server_of(a).unwrap();
    secret[1] ^= 3;
    w.cancel_with(pid, &secret, 0);
    assert!(w.forwarded_cancels.is_empty());
    assert_eq!(w.servers[s].cancels, 0, "a wrong key cancels nothing");
    w.check();
}

#[test]
fn a_handover_stops_accepting_but_serves_on_until_it_ends_then_drains() {
    let mut w = world(Setup {
        handover: S,
        ..Setup::default()
    });
    let idle = w.login(0, 0);
    w.engines[0].handle_shutdown(w.now);
    w.settle();
    assert!(!w.clients[idle].closed, "not drained during the handover");
    // A connection the kernel had queued before the listener closed: served in full.
    let late = w.login(0, 0);
    assert_eq!(select(&mut w, late, 1), vec![World::marker(late, 1)]);
    assert_eq!(select(&mut w, idle, 1), vec![World::marker(idle, 1)]);
    assert!(!w.engines[0].is_finished());
    w.advance(S);
    for c in [idle, late] {
        let (code, _, _) = World::error_of(&w.take(c)).unwrap();
        assert_eq!(code, SqlState::ADMIN_SHUTDOWN);
        assert!(w.clients[c].closed);
    }
    assert!(w.engines[0].is_finished());
    w.check();
}

#[test]
fn without_a_handover_a_connection_accepted_after_the_stop_is_refused() {
    let mut w = world(Setup::default());
    w.engines[0].handle_shutdown(w.now);
    w.settle();
    let c = w.connect(0, 0);
    w.settle();
    assert!(w.clients[c].closed);
    let (code, _, _) = World::error_of(&w.take(c)).unwrap();
    assert_eq!(code, SqlState::CANNOT_CONNECT_NOW);
    w.check();
}
