//! Draining a server connection no client holds: the clean-up after a client that left
//! mid-transaction, and the health check of an idle connection.
//!
//! A client that vanished may leave its server connection anywhere: running a query, in
//! COPY IN, in the middle of an extended-protocol batch, in a transaction block. The
//! connection is not closed for that (logging in again costs far more): whatever is missing
//! is sent in the client's place (CopyFail, Sync) and then `ROLLBACK`, and every answer is
//! swallowed until the ReadyForQuery that leaves nothing outstanding. The relay the client
//! used keeps counting what the server still owes, so that moment is known exactly. The
//! answers still teach pglink about the connection (a statement's Parse failed, DISCARD ALL
//! ran, a parameter changed): they are applied to its [`BackendContext`] through the same
//! code the session uses.
//!
//! A health check sends an empty query to a connection that sat idle and waits for its
//! ReadyForQuery the same way. Deadlines for both are the caller's.

use super::relay::{BackendStop, Expect, Relay, RelayError, Route};
use super::{BackendContext, ParamList};
use crate::protocol::frontend;

/// Why a server connection is being drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainKind {
    /// Cleaning up after a client that left mid-transaction.
    Reset,
    /// Checking that an idle connection still answers.
    HealthCheck,
}

/// How far a drain got with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// Nothing outstanding is complete yet: offer the rest with more bytes.
    NeedMore,
    /// The server is idle with nothing outstanding: it can go back to the pool. Bytes after
    /// the consumed count are not the drain's.
    Idle,
    /// The server reported a FATAL error and will close the connection.
    Fatal,
}

/// A server connection being drained; it owns the relay that counts what is outstanding.
#[derive(Debug)]
pub struct Drain {
    relay: Relay,
    kind: DrainKind,
    /// Something was running when the client left.
    needs_cancel: bool,
    /// Where the answers go (nowhere: cleared after every call).
    swallowed: Vec<u8>,
}

impl Drain {
    /// Starts the clean-up after a client that left mid-transaction, with the relay of its
    /// lending: an unfinished COPY IN is failed, an unsynced batch synced, and the transaction
    /// rolled back. The messages are appended to `to_server`.
    pub fn reset(mut relay: Relay, to_server: &mut Vec<u8>) -> Result<Drain, RelayError> {
        let needs_cancel = relay.outstanding() > 0;
        relay.stop_timing();
        let mut cleanup = Vec::new();
        if relay.server_in_copy_in() {
            frontend::copy_fail(&mut cleanup, b"pglink: client disconnected");
        }
        if relay.unsynced() {
            frontend::sync(&mut cleanup);
        }
        frontend::query(&mut cleanup, b"ROLLBACK");
        relay.on_client_data(&cleanup, to_server)?;
        Ok(Drain {
            relay,
            kind: DrainKind::Reset,
            needs_cancel,
            swallowed: Vec::new(),
        })
    }

    /// Starts a health check: an empty query (appended to `to_server`) the server must
    /// answer.
    pub fn health_check(max_message_len: usize, to_server: &mut Vec<u8>) -> Drain {
        let mut relay = Relay::new(max_message_len);
        frontend::query(to_server, b"");
        relay.push(Expect::Cycle, Route::Forward, Default::default());
        Drain {
            relay,
            kind: DrainKind::HealthCheck,
            needs_cancel: false,
            swallowed: Vec::new(),
        }
    }

    pub fn kind(&self) -> DrainKind {
        self.kind
    }

    /// Whether something was running on the server when the client left: it should be
    /// cancelled, or the drain waits for it to finish.
    pub fn needs_cancel(&self) -> bool {
        self.needs_cancel
    }

    /// Server bytes: swallowed, what they show applied to `server`. Returns how many were
    /// consumed and how far the drain got. `login_params` and `startup` are what the
    /// connection logged in with (and has again after DISCARD ALL).
    pub fn on_server_data(
        &mut self,
        data: &[u8],
        server: &mut BackendContext,
        login_params: &ParamList,
        startup: &[(String, String)],
    ) -> Result<(usize, DrainStep), RelayError> {
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let result = self.relay.on_backend_data(rest, &mut self.swallowed);
            self.swallowed.clear();
            self.apply_outcomes(server, login_params, startup);
            let (n, stop) = result?;
            pos += n;
            match stop {
                BackendStop::NeedMore => return Ok((pos, DrainStep::NeedMore)),
                BackendStop::ParameterStatus { start, end, .. } => {
                    // A statement of the client that left changed it (or a rollback
                    // restored it).
                    server.on_parameter_status(rest.get(start..end).unwrap_or_default());
                }
                BackendStop::Idle => {
                    // Shapes that were on their way were not read: prepare those afresh.
                    server.statements.settle_pending();
                    return Ok((pos, DrainStep::Idle));
                }
                BackendStop::StalePlan { start, end } => {
                    // No client to replay for: an error like any other.
                    let stale = self.relay.take_stale();
                    let error = rest.get(start..end).unwrap_or_default();
                    self.relay.forward_error(error, stale, &mut self.swallowed);
                    self.swallowed.clear();
                    self.apply_outcomes(server, login_params, startup);
                }
                BackendStop::Fatal => return Ok((pos, DrainStep::Fatal)),
            }
        }
    }

    /// What the answers showed, applied to the connection's record: the session's outcome
    /// path ([`BackendContext::apply_outcome`]), and DISCARD ALL's parameter reset, which
    /// puts back what the connection logged in with.
    fn apply_outcomes(
        &mut self,
        server: &mut BackendContext,
        login_params: &ParamList,
        startup: &[(String, String)],
    ) {
        for outcome in self.relay.take_outcomes() {
            server.apply_outcome(&outcome);
            if let super::relay::Outcome::Reset(reset) = outcome
                && reset.discard_all
            {
                server.set_login_params(login_params, startup);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::statements::{BackendShape, Registry};
    use crate::protocol::TransactionStatus;
    use crate::protocol::backend as be_msg;
    use crate::protocol::framing::Frames;

    fn tags(bytes: &[u8]) -> Vec<u8> {
        Frames::new(bytes, 1 << 20)
            .map(|f| f.unwrap().tag)
            .collect()
    }

    fn ready(status: TransactionStatus) -> Vec<u8> {
        let mut m = Vec::new();
        be_msg::ready_for_query(&mut m, status);
        m
    }

    fn command_complete(tag: &str) -> Vec<u8> {
        let mut m = Vec::new();
        be_msg::command_complete(&mut m, tag.as_bytes());
        m
    }

    /// A relay that forwarded `client` (and saw `server` answer, if any).
    fn relay_after(client: &[u8], server: &[u8]) -> Relay {
        let mut relay = Relay::new(1 << 20);
        relay.on_client_data(client, &mut Vec::new()).unwrap();
        if !server.is_empty() {
            relay.on_backend_data(server, &mut Vec::new()).unwrap();
        }
        relay
    }

    fn login_params() -> ParamList {
        vec![
            ("DateStyle".into(), "ISO, MDY".into()),
            ("application_name".into(), String::new()),
        ]
    }

    fn startup() -> Vec<(String, String)> {
        vec![("statement_timeout".into(), "5s".into())]
    }

    /// Feeds `data` all at once; returns the step and checks everything was consumed.
    fn feed(drain: &mut Drain, server: &mut BackendContext, data: &[u8]) -> DrainStep {
        let (n, step) = drain
            .on_server_data(data, server, &login_params(), &startup())
            .unwrap();
        assert_eq!(n, data.len(), "{step:?}");
        step
    }

    #[test]
    fn a_client_that_left_in_copy_in_is_failed_synced_and_rolled_back() {
        // COPY through the extended protocol, its Sync not sent yet (as drivers do it).
        let mut client = Vec::new();
        frontend::parse(&mut client, b"", b"COPY t FROM STDIN", &[]);
        frontend::bind(&mut client, b"", b"", &[], [], &[]);
        frontend::execute(&mut client, b"", 0);
        let mut answers = Vec::new();
        be_msg::parse_complete(&mut answers);
        be_msg::bind_complete(&mut answers);
        be_msg::copy_in_response(&mut answers, 0, &[0]);
        let mut relay = relay_after(&client, &answers);
        assert!(relay.server_in_copy_in());
        let mut row = Vec::new();
        frontend::copy_data(&mut row, b"1\n");
        relay.on_client_data(&row, &mut Vec::new()).unwrap();

        let mut to_server = Vec::new();
        let mut drain = Drain::reset(relay, &mut to_server).unwrap();
        assert_eq!(drain.kind(), DrainKind::Reset);
        assert!(drain.needs_cancel(), "the COPY was running");
        assert_eq!(tags(&to_server), b"fSQ", "CopyFail, Sync, then ROLLBACK");

        let mut server = BackendContext::new(4);
        // The COPY fails; the Sync ends the batch; ROLLBACK runs.
        let mut answers = Vec::new();
        crate::protocol::ErrorBuilder::new(
            crate::protocol::Severity::Error,
            crate::protocol::SqlState::QUERY_CANCELED,
            "COPY from stdin failed: pglink: client disconnected",
        )
        .encode_error(&mut answers);
        answers.extend(ready(TransactionStatus::Idle));
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::NeedMore);
        let mut rollback = command_complete("ROLLBACK");
        rollback.extend(ready(TransactionStatus::Idle));
        assert_eq!(feed(&mut drain, &mut server, &rollback), DrainStep::Idle);
    }

    #[test]
    fn an_unsynced_batch_is_synced_before_the_rollback() {
        let mut client = Vec::new();
        frontend::parse(&mut client, b"", b"SELECT 1", &[]);
        frontend::bind(&mut client, b"", b"", &[], [], &[]);
        let relay = relay_after(&client, &[]);
        let mut to_server = Vec::new();
        let mut drain = Drain::reset(relay, &mut to_server).unwrap();
        assert!(drain.needs_cancel());
        assert_eq!(tags(&to_server), b"SQ", "Sync, then ROLLBACK");
        let mut answers = Vec::new();
        be_msg::parse_complete(&mut answers);
        be_msg::bind_complete(&mut answers);
        answers.extend(ready(TransactionStatus::Idle));
        answers.extend(command_complete("ROLLBACK"));
        answers.extend(ready(TransactionStatus::Idle));
        let mut server = BackendContext::new(4);
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::Idle);
    }

    #[test]
    fn a_parameter_status_during_the_drain_updates_the_record() {
        let mut client = Vec::new();
        frontend::query(&mut client, b"BEGIN");
        let mut begun = command_complete("BEGIN");
        begun.extend(ready(TransactionStatus::InBlock));
        let relay = relay_after(&client, &begun);
        let mut drain = Drain::reset(relay, &mut Vec::new()).unwrap();
        assert!(!drain.needs_cancel(), "nothing was running");
        let mut server = BackendContext::new(4);
        server.params.set("DateStyle", "German");
        // The rollback restores a value the transaction had changed.
        let mut answers = command_complete("ROLLBACK");
        be_msg::parameter_status(&mut answers, b"DateStyle", b"ISO, MDY");
        answers.extend(ready(TransactionStatus::Idle));
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::Idle);
        assert_eq!(server.params.get("datestyle"), Some("ISO, MDY"));
    }

    #[test]
    fn a_discard_all_puts_the_login_parameters_back() {
        let mut client = Vec::new();
        frontend::query(&mut client, b"DISCARD ALL");
        let relay = relay_after(&client, &[]);
        let mut drain = Drain::reset(relay, &mut Vec::new()).unwrap();
        let mut server = BackendContext::new(4);
        server.params.set("DateStyle", "German");
        server.params.set("work_mem", "1GB");
        let registry = Registry::new(4, 4);
        let statement = registry.get_or_insert(&crate::client::statements::Key {
            query: b"SELECT 1",
            param_types: &[],
            search_path: None,
        });
        server.statements.insert(statement.id);
        server
            .statements
            .set_shape(statement.id, BackendShape::Stale);
        let mut answers = command_complete("DISCARD ALL");
        answers.extend(ready(TransactionStatus::Idle));
        answers.extend(command_complete("ROLLBACK"));
        answers.extend(ready(TransactionStatus::Idle));
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::Idle);
        assert_eq!(server.params.get("DateStyle"), Some("ISO, MDY"));
        assert_eq!(server.params.get("statement_timeout"), Some("5s"));
        assert_eq!(
            server.params.get("work_mem"),
            None,
            "what the client set is gone"
        );
        assert!(server.statements.is_empty(), "its statements are gone too");
    }

    #[test]
    fn a_fatal_from_the_server_ends_the_drain() {
        let mut client = Vec::new();
        frontend::query(&mut client, b"SELECT pg_sleep(10)");
        let relay = relay_after(&client, &[]);
        let mut drain = Drain::reset(relay, &mut Vec::new()).unwrap();
        let mut answers = Vec::new();
        crate::protocol::ErrorBuilder::new(
            crate::protocol::Severity::Fatal,
            crate::protocol::SqlState::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .encode_error(&mut answers);
        let mut server = BackendContext::new(4);
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::Fatal);
    }

    #[test]
    fn a_health_check_reaches_idle() {
        let mut to_server = Vec::new();
        let mut drain = Drain::health_check(1 << 20, &mut to_server);
        assert_eq!(drain.kind(), DrainKind::HealthCheck);
        assert!(!drain.needs_cancel());
        let mut empty = Vec::new();
        frontend::query(&mut empty, b"");
        assert_eq!(to_server, empty);
        let mut server = BackendContext::new(4);
        let mut answers = Vec::new();
        be_msg::empty_query_response(&mut answers);
        answers.extend(ready(TransactionStatus::Idle));
        // In two pieces: the first one is not enough.
        let (n, step) = drain
            .on_server_data(&answers[..3], &mut server, &login_params(), &startup())
            .unwrap();
        assert_eq!((n, step), (0, DrainStep::NeedMore));
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::Idle);
    }

    #[test]
    fn pending_shapes_are_settled_stale_when_the_drain_ends() {
        let registry = Registry::new(4, 4);
        let statement = registry.get_or_insert(&crate::client::statements::Key {
            query: b"SELECT 1",
            param_types: &[],
            search_path: None,
        });
        let mut server = BackendContext::new(4);
        server.statements.insert(statement.id);
        assert_eq!(
            server.statements.touch(statement.id),
            Some(BackendShape::Pending)
        );
        let mut drain = Drain::health_check(1 << 20, &mut Vec::new());
        let mut answers = Vec::new();
        be_msg::empty_query_response(&mut answers);
        answers.extend(ready(TransactionStatus::Idle));
        assert_eq!(feed(&mut drain, &mut server, &answers), DrainStep::Idle);
        assert_eq!(
            server.statements.touch(statement.id),
            Some(BackendShape::Stale)
        );
    }
}
