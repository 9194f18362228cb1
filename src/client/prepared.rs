//! Named prepared statements across backends: how the session rewrites Parse, Bind,
//! Describe and Close (see [`super::statements`] for the bookkeeping).
//!
//! - Parse of a new name: the (shared) statement is prepared on the held backend under its
//!   server name, unless the backend has it already, in which case ParseComplete is answered
//!   locally. Without a backend, a statement some server has accepted before is answered
//!   locally too, so re-preparing costs no backend at all.
//! - Bind/Describe of a name: the backend gets the statement first if it lacks it (its
//!   ParseComplete swallowed), then the message with the server name. A Describe whose answer
//!   is cached is answered locally.
//! - Close of a name: forgotten by the client and answered locally; the server statement
//!   stays for others.
//! - Errors PostgreSQL would raise (42P05 for a name in use, 26000 for an unknown one) are
//!   pglink's own. With a backend held, pglink sends a Bind that the server must fail and
//!   puts its error in that place, so the server skips to Sync and aborts the implicit
//!   transaction exactly as it would have.
//! - The unnamed statement and portals pass through untouched.

use std::sync::Arc;

use super::relay::{Effect, Expect, Outcome, Route};
use super::statements::{Statement, server_name};
use super::{BackendContext, Out, Session};
use crate::protocol::backend as be_msg;
use crate::protocol::frontend::{self, FrontendMessage, Target, tag as fe};
use crate::protocol::{ErrorBuilder, Severity, SqlState};

/// A statement name no backend has: a Bind of it fails, which is what pglink wants when it
/// must fail a batch on the server's side.
const NO_SUCH_STATEMENT: &[u8] = b"pglink_\x01failed_batch";

/// What happened to one inspected message.
pub(super) enum Handled {
    /// Done (forwarded, rewritten, or answered).
    Done,
    /// Needs a backend: leave it unconsumed and acquire one.
    NeedBackend,
    /// Malformed: the connection must end.
    Invalid(String),
}

impl Session {
    /// Parse, Bind, Describe or Close while a backend is held.
    pub(super) fn on_statement_message_active(
        &mut self,
        tag: u8,
        body: &[u8],
        whole: &[u8],
        out: &mut Out<'_>,
    ) -> Handled {
        let msg = match FrontendMessage::decode(tag, body) {
            Ok(m) => m,
            Err(e) => return Handled::Invalid(e.to_string()),
        };
        match msg {
            FrontendMessage::Parse(p) if !p.name.is_empty() => {
                if self.statements.contains(p.name) {
                    self.fail_batch(out, SqlState::DUPLICATE_PSTATEMENT, &already_exists(p.name));
                    return Handled::Done;
                }
                let types: Vec<u32> = p.param_types().collect();
                let Some(database) = self.db_context.clone() else {
                    return Handled::Invalid("no statement registry".into());
                };
                let statement = database.registry.get_or_insert(p.query, &types);
                self.statements.insert(p.name, statement.clone());
                if out.backend.statements.touch(statement.id) {
                    let mut answer = Vec::with_capacity(5);
                    be_msg::parse_complete(&mut answer);
                    self.relay.push_local(&answer, out.to_client);
                } else {
                    self.prepare_on_backend(&statement, Some(p.name), Route::Forward, out);
                }
            }
            FrontendMessage::Bind(b) if !b.statement.is_empty() => {
                let Some(statement) = self.statements.get(b.statement).cloned() else {
                    self.fail_batch(
                        out,
                        SqlState::INVALID_SQL_STATEMENT_NAME,
                        &does_not_exist(b.statement),
                    );
                    return Handled::Done;
                };
                if statement.has_session_effects() {
                    self.inspect_statement(&statement.query);
                }
                self.ensure_prepared(&statement, out);
                b.encode_with_statement(out.to_backend, &statement.server_name);
                self.relay
                    .push(Expect::Bind, Route::Forward, Effect::Bound(statement));
            }
            FrontendMessage::Describe(d) if d.target == Target::Statement && !d.name.is_empty() => {
                let Some(statement) = self.statements.get(d.name).cloned() else {
                    self.fail_batch(
                        out,
                        SqlState::INVALID_SQL_STATEMENT_NAME,
                        &does_not_exist(d.name),
                    );
                    return Handled::Done;
                };
                if let Some(answer) = statement.description() {
                    self.relay.push_local(&answer, out.to_client);
                } else {
                    self.ensure_prepared(&statement, out);
                    frontend::describe(out.to_backend, Target::Statement, &statement.server_name);
                    self.relay.push(
                        Expect::DescribeStatement,
                        Route::Forward,
                        Effect::Describe(statement),
                    );
                }
            }
            FrontendMessage::Close(c) if c.target == Target::Statement && !c.name.is_empty() => {
                self.statements.remove(c.name);
                let mut answer = Vec::with_capacity(5);
                be_msg::close_complete(&mut answer);
                self.relay.push_local(&answer, out.to_client);
            }
            // Unnamed statements and portals: untouched (but looked at).
            other => {
                if let FrontendMessage::Parse(p) = other {
                    self.inspect_statement(p.query);
                }
                let header = crate::protocol::framing::Header {
                    tag,
                    len: u32::try_from(whole.len().saturating_sub(1)).unwrap_or(u32::MAX),
                };
                if let Err(e) = self
                    .relay
                    .forward_client_message(header, whole, out.to_backend)
                {
                    return Handled::Invalid(e.to_string());
                }
            }
        }
        Handled::Done
    }

    /// Parse, Bind, Describe or Close without a backend: answered locally when possible.
    pub(super) fn on_statement_message_idle(
        &mut self,
        tag: u8,
        body: &[u8],
        out: &mut Out<'_>,
    ) -> Handled {
        let msg = match FrontendMessage::decode(tag, body) {
            Ok(m) => m,
            Err(e) => return Handled::Invalid(e.to_string()),
        };
        match msg {
            FrontendMessage::Parse(p) if !p.name.is_empty() => {
                if self.statements.contains(p.name) {
                    self.fail_locally(out, SqlState::DUPLICATE_PSTATEMENT, &already_exists(p.name));
                    return Handled::Done;
                }
                let types: Vec<u32> = p.param_types().collect();
                let Some(database) = self.db_context.clone() else {
                    return Handled::NeedBackend;
                };
                let statement = database.registry.get_or_insert(p.query, &types);
                if !statement.is_verified() {
                    // Never accepted by a server: a server must check it now.
                    return Handled::NeedBackend;
                }
                self.statements.insert(p.name, statement);
                be_msg::parse_complete(out.to_client);
            }
            FrontendMessage::Describe(d) if d.target == Target::Statement && !d.name.is_empty() => {
                let Some(statement) = self.statements.get(d.name) else {
                    self.fail_locally(
                        out,
                        SqlState::INVALID_SQL_STATEMENT_NAME,
                        &does_not_exist(d.name),
                    );
                    return Handled::Done;
                };
                match statement.description() {
                    Some(answer) => out.to_client.extend_from_slice(&answer),
                    None => return Handled::NeedBackend,
                }
            }
            FrontendMessage::Close(c) if c.target == Target::Statement && !c.name.is_empty() => {
                self.statements.remove(c.name);
                be_msg::close_complete(out.to_client);
            }
            FrontendMessage::Bind(b)
                if !b.statement.is_empty() && !self.statements.contains(b.statement) =>
            {
                self.fail_locally(
                    out,
                    SqlState::INVALID_SQL_STATEMENT_NAME,
                    &does_not_exist(b.statement),
                );
            }
            _ => return Handled::NeedBackend,
        }
        Handled::Done
    }

    /// Prepares `statement` on the held backend unless it has it.
    fn ensure_prepared(&mut self, statement: &Arc<Statement>, out: &mut Out<'_>) {
        if !out.backend.statements.touch(statement.id) {
            self.prepare_on_backend(statement, None, Route::Swallow, out);
        }
    }

    /// Sends the statement's Parse (after a Close of the least recently used statement if
    /// the backend is at `statement_cache_capacity`).
    fn prepare_on_backend(
        &mut self,
        statement: &Arc<Statement>,
        client_name: Option<&[u8]>,
        route: Route,
        out: &mut Out<'_>,
    ) {
        if let Some(evicted) = out.backend.statements.insert(statement.id) {
            frontend::close(out.to_backend, Target::Statement, &server_name(evicted));
            self.relay.push(Expect::Close, Route::Swallow, Effect::None);
        }
        out.to_backend.extend_from_slice(&statement.parse_message);
        let effect = Effect::Prepare {
            statement: statement.clone(),
            client_name: client_name.map(Into::into),
        };
        self.relay.push(Expect::Parse, route, effect);
    }

    /// Reports `message` as the error of the current batch while a backend is held: the
    /// server fails a Bind in its place, skipping to Sync as it would for a real error.
    fn fail_batch(&mut self, out: &mut Out<'_>, code: SqlState, message: &str) {
        let mut error = Vec::new();
        ErrorBuilder::new(Severity::Error, code, message).encode_error(&mut error);
        frontend::bind(out.to_backend, b"", NO_SUCH_STATEMENT, &[], [], &[]);
        self.relay.push_failing(Expect::Bind, error.into());
    }

    /// The same without a backend: the error, then drop messages up to Sync.
    pub(super) fn fail_locally(&mut self, out: &mut Out<'_>, code: SqlState, message: &str) {
        ErrorBuilder::new(Severity::Error, code, message).encode_error(out.to_client);
        self.skip_to_sync = true;
    }

    /// A batch that began with a Bind or Describe of a shared statement outside a transaction
    /// failed with "cached plan must not change result type" before the client saw anything
    /// of it (`error`): if the whole batch was recorded, drop the stale statement from the
    /// backend and the description cache and send the batch again (the statement is
    /// prepared afresh on the way); otherwise pass the error on.
    pub(super) fn on_stale_plan(&mut self, error: &[u8], out: &mut Out<'_>) {
        let statement = self.relay.take_stale();
        let batch = self.replay.take().filter(|b| ends_with_sync(b));
        let (Some(statement), Some(batch)) = (statement, batch) else {
            self.relay.forward_error(error, out.to_client);
            return;
        };
        log::debug!(
            "statement {} changed result type: prepared again and retried",
            statement.id
        );
        if let Some(database) = &self.db_context {
            database.registry.forget_description(&statement);
        }
        self.relay.abandon_batch();
        if out.backend.statements.contains(statement.id) {
            frontend::close(out.to_backend, Target::Statement, &statement.server_name);
            self.relay.push(Expect::Close, Route::Discard, Effect::None);
            out.backend.statements.remove(statement.id);
        }
        let consumed = self.on_active_bytes(&batch, out);
        debug_assert_eq!(
            consumed,
            batch.len(),
            "a recorded batch holds whole messages"
        );
    }

    /// Records the client messages of a batch that may have to be replayed (see
    /// `on_stale_plan`): one starting outside a transaction with a Bind or Describe, made of
    /// Bind, Describe, Execute, Flush and Sync only, complete and small.
    pub(super) fn record_for_replay(&mut self, tag: u8, message: Option<&[u8]>) {
        const LIMIT: usize = 256 * 1024;
        let batch_start = self.relay.outstanding() == 0
            && !self.relay.unsynced()
            && self.relay.status() == crate::protocol::TransactionStatus::Idle;
        if batch_start {
            self.replay = matches!(tag, fe::BIND | fe::DESCRIBE).then(Vec::new);
        }
        let Some(batch) = self.replay.as_mut() else {
            return;
        };
        match message {
            Some(m)
                if matches!(
                    tag,
                    fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::FLUSH | fe::SYNC
                ) && batch.len() + m.len() <= LIMIT
                    && !ends_with_sync(batch) =>
            {
                batch.extend_from_slice(m);
            }
            _ => self.replay = None,
        }
    }

    /// Applies what the backend's answers showed about statements.
    pub(super) fn apply_outcomes(&mut self, backend: &mut BackendContext) {
        if !self.relay.has_outcomes() {
            return;
        }
        let outcomes: Vec<Outcome> = self.relay.take_outcomes().collect();
        for outcome in outcomes {
            match outcome {
                Outcome::Succeeded(Effect::Prepare { statement, .. }) => statement.mark_verified(),
                Outcome::Failed(Effect::Prepare {
                    statement,
                    client_name,
                }) => {
                    backend.statements.remove(statement.id);
                    if let Some(name) = client_name {
                        self.statements.remove_if(&name, statement.id);
                    }
                }
                Outcome::Described(statement, answer) => {
                    statement.mark_verified();
                    if let Some(database) = &self.db_context {
                        database
                            .registry
                            .cache_description(&statement, answer.into());
                    }
                }
                Outcome::Captured(names, values) => self.on_captured(&names, &values, backend),
                Outcome::Succeeded(_) | Outcome::Failed(_) => {}
            }
        }
    }
}

fn ends_with_sync(batch: &[u8]) -> bool {
    batch.len() >= 5
        && batch.get(batch.len() - 5) == Some(&fe::SYNC)
        && batch.ends_with(&[0, 0, 0, 4])
}

fn already_exists(name: &[u8]) -> String {
    format!(
        "pglink: prepared statement \"{}\" already exists",
        String::from_utf8_lossy(name)
    )
}

fn does_not_exist(name: &[u8]) -> String {
    format!(
        "pglink: prepared statement \"{}\" does not exist",
        String::from_utf8_lossy(name)
    )
}
