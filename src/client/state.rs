//! Session state that must follow the client: parameters, pinning, and the SQL commands
//! about the client's own statements that pglink answers itself.
//!
//! Pinning: `LISTEN`, session advisory locks, temporary tables, `WITH HOLD` cursors and SQL
//! `PREPARE` (which outlives even a rolled-back transaction) leave state on the server that cannot be moved to
//! another backend. A client that creates any of them keeps its backend for the rest of its
//! session (logged once with the reason). When such a session ends its backend is closed
//! rather than returned, so the state never reaches another client.

use std::sync::Arc;

use super::inspect::{self, LocalCommand, PinReason, Touched};
use super::params::{self, Params};
use super::relay::{Effect, Expect, Route};
use super::statements::server_name;
use super::{BackendContext, Out, ParamList, Session};
use crate::protocol::backend as be_msg;
use crate::protocol::frontend::{self, Target};
use crate::protocol::{SqlState, TransactionStatus};

/// What to do when a transaction has ended and nothing is outstanding.
pub(super) enum AfterTransaction {
    /// Give the backend back.
    Release,
    /// More work was sent (parameters read back, statements closed); wait for it.
    Continue,
    /// Keep the backend: the session is pinned.
    Hold,
}

/// Whether a simple Query goes to the backend.
pub(super) enum QueryHandling {
    Forward,
    /// Answered by pglink (already written).
    Answered,
}

impl Session {
    /// The client's starting values: the server's reported parameters, overlaid with the
    /// client's startup parameters, overlaid with `default_startup_parameters`.
    pub(super) fn init_desired(&mut self, server_params: &Arc<ParamList>) {
        let mut desired = Params::default();
        for (name, value) in server_params.iter() {
            desired.set(name, value);
        }
        for (name, value) in &self.startup_params {
            if name.eq_ignore_ascii_case("options") {
                for (n, v) in params::options_settings(value) {
                    desired.set(&n, &v);
                }
            } else {
                desired.set(name, value);
            }
        }
        if let Some(db) = &self.db_context {
            for (name, value) in &db.overrides {
                desired.set(name, value);
            }
        }
        self.desired = match &self.db_context {
            Some(db) => db.shared_params.share(desired),
            None => Arc::new(desired),
        };
        self.reported = Some(server_params.clone());
    }

    fn is_reported(&self, name: &str) -> bool {
        self.reported
            .as_ref()
            .is_some_and(|r| r.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
    }

    /// Sends one query first if the backend's parameters differ from the client's; the
    /// backend's known values change when it succeeds. Client input waits for its answer:
    /// no statement of the client may run with settings other than its own. If it fails (a
    /// role since dropped, a startup parameter the server does not know) the session ends
    /// with FATAL, as PostgreSQL ends a session whose settings it refuses at startup.
    pub(super) fn sync_backend(&mut self, out: &mut Out<'_>) {
        let reported = |n: &str| self.is_reported(n);
        if params::in_sync(&self.desired, &out.backend.params, &reported) {
            return;
        }
        let changes = params::sync_changes(&self.desired, &out.backend.params, &reported);
        frontend::query(out.to_backend, params::sync_query(&changes).as_bytes());
        self.relay
            .push(Expect::Cycle, Route::Discard, Effect::Sync(changes));
        self.syncing = true;
    }

    /// The sync query failed with `error` (an ErrorResponse): FATAL with the server's code
    /// and message, and the (clean) backend goes back to the pool.
    pub(super) fn on_sync_failed(&mut self, error: &[u8], out: &mut Out<'_>) {
        let fields = error
            .get(crate::protocol::framing::Header::SIZE..)
            .and_then(|body| {
                crate::protocol::ErrorFields::decode(be_msg::tag::ERROR_RESPONSE, body).ok()
            });
        let code = fields
            .and_then(|f| f.sqlstate())
            .unwrap_or(SqlState::INTERNAL_ERROR);
        let message = fields
            .and_then(|f| f.message())
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        log::info!(
            "client {}@{}: its session settings could not be applied ({message}); closing",
            self.user,
            self.database
        );
        let text = format!(
            "pglink: this session's settings could not be applied on a server connection: \
             {message}"
        );
        crate::protocol::ErrorBuilder::new(crate::protocol::Severity::Fatal, code, &text)
            .encode_error(out.to_client);
        out.stats.error_sent(code);
        self.syncing = false;
        self.state = super::State::Closed;
        out.actions.push(super::Action::Release);
        out.actions.push(super::Action::Close);
    }

    /// Whether a backend with `backend` values needs no sync query for this client.
    pub fn settings_match(&self, backend: &Params) -> bool {
        params::in_sync(&self.desired, backend, &|n| self.is_reported(n))
    }

    /// A ParameterStatus from the held backend.
    pub(super) fn on_parameter_status(&mut self, body: &[u8], forwarded: bool, out: &mut Out<'_>) {
        let mut parts = body.split(|&b| b == 0);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            return;
        };
        let (name, value) = (
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value),
        );
        out.backend.params.set(&name, &value);
        if forwarded && self.desired.get(&name) != Some(&*value) {
            Arc::make_mut(&mut self.desired).set(&name, &value);
        }
    }

    /// Notes what a statement text the client sends does to session state.
    pub(super) fn inspect_statement(&mut self, sql: &[u8], out: &mut Out<'_>) {
        if !inspect::worth_inspecting(sql) {
            return;
        }
        for touched in inspect::touched_params(sql) {
            match touched {
                Touched::All => self.reset_all = true,
                Touched::Param(name) => {
                    if !self.is_reported(&name) && !self.touched.contains(&name) {
                        self.touched.push(name);
                    }
                }
            }
        }
        if let Some(reason) = inspect::pin_reason(sql) {
            // SQL PREPARE too, even inside a transaction block: a rollback does not undo it.
            self.pin(reason, out);
        }
        if inspect::is_ddl(sql)
            && let Some(db) = &self.db_context
        {
            db.registry.schema_changed();
        }
    }

    /// Pins the session (once). The reactor counts the pin down again when it removes the
    /// client ([`Session::pinned`]).
    fn pin(&mut self, reason: PinReason, out: &mut Out<'_>) {
        if self.pinned.is_none() {
            log::info!(
                "client {}@{} pinned to its server connection: it used {reason}",
                self.user,
                self.database
            );
            self.pinned = Some(reason);
            if let Some(p) = self.pool.and_then(|p| out.stats.pool(p)) {
                p.pinned(reason);
            }
        }
    }

    /// Why the session keeps its backend for good, if it does.
    pub fn pinned(&self) -> Option<PinReason> {
        self.pinned
    }

    /// A simple Query: DEALLOCATE and DISCARD ALL are about the client's own statements and
    /// session, and answered here; anything else goes to the backend (`held`: one is held).
    pub(super) fn on_query(&mut self, sql: &[u8], held: bool, out: &mut Out<'_>) -> QueryHandling {
        if !inspect::worth_inspecting(sql) {
            return QueryHandling::Forward;
        }
        match inspect::local_command(sql) {
            Some(LocalCommand::Deallocate(name))
                if self.statements.contains(&name) || self.pinned.is_none() =>
            {
                if !self.statements.remove(&name) {
                    let text = format!(
                        "pglink: prepared statement \"{}\" does not exist",
                        String::from_utf8_lossy(&name)
                    );
                    self.answer_error(SqlState::INVALID_SQL_STATEMENT_NAME, &text, held, out);
                    return QueryHandling::Answered;
                }
                self.answer_command(b"DEALLOCATE", held, out);
                QueryHandling::Answered
            }
            Some(LocalCommand::DeallocateAll) if self.pinned.is_none() => {
                self.statements.clear();
                self.answer_command(b"DEALLOCATE ALL", held, out);
                QueryHandling::Answered
            }
            // Inside a transaction block the server refuses it (25001): let it.
            Some(LocalCommand::DiscardAll)
                if self.pinned.is_none() && self.relay.status() == TransactionStatus::Idle =>
            {
                self.statements.clear();
                self.touched.clear();
                if let Some(reported) = self.reported.clone() {
                    self.init_desired(&reported);
                }
                self.answer_command(b"DISCARD ALL", held, out);
                QueryHandling::Answered
            }
            Some(LocalCommand::DiscardAll | LocalCommand::DeallocateAll) => {
                // A pinned session's backend really has SQL statements to drop: forward, and
                // forget the protocol-level ones it will lose too.
                self.statements.clear();
                out.backend.statements.clear();
                self.reset_all = true;
                QueryHandling::Forward
            }
            _ => {
                if held {
                    self.inspect_statement(sql, out);
                }
                QueryHandling::Forward
            }
        }
    }

    /// CommandComplete + ReadyForQuery in the Query's place.
    fn answer_command(&mut self, tag: &[u8], held: bool, out: &mut Out<'_>) {
        let mut answer = Vec::with_capacity(32);
        be_msg::command_complete(&mut answer, tag);
        be_msg::ready_for_query(&mut answer, self.relay.status());
        self.emit_local(&answer, held, out);
    }

    fn answer_error(&mut self, code: SqlState, message: &str, held: bool, out: &mut Out<'_>) {
        let mut answer = Vec::with_capacity(64);
        crate::protocol::ErrorBuilder::new(crate::protocol::Severity::Error, code, message)
            .encode_error(&mut answer);
        out.stats.error_sent(code);
        be_msg::ready_for_query(&mut answer, self.relay.status());
        self.emit_local(&answer, held, out);
    }

    fn emit_local(&mut self, answer: &[u8], held: bool, out: &mut Out<'_>) {
        if held {
            self.relay.push_local(answer, out.to_client);
        } else {
            out.to_client.extend_from_slice(answer);
        }
    }

    /// The transaction is over with nothing outstanding: read back parameters the client
    /// changed, drop statements a zero-capacity backend must not keep, or release.
    pub(super) fn after_transaction(&mut self, out: &mut Out<'_>) -> AfterTransaction {
        if self.reset_all {
            // RESET ALL / DISCARD ALL: unreported parameters are back at their defaults.
            self.reset_all = false;
            let reported = self.reported.clone();
            let is_reported = |n: &str| {
                reported
                    .as_ref()
                    .is_some_and(|r| r.iter().any(|(rn, _)| rn.eq_ignore_ascii_case(n)))
            };
            Arc::make_mut(&mut self.desired).retain(&is_reported);
            out.backend.params.retain(&is_reported);
        }
        if !self.touched.is_empty() {
            let mut names = std::mem::take(&mut self.touched);
            if let Some(db) = &self.db_context {
                for extra in &db.track_extra {
                    if !names.contains(extra) && !self.is_reported(extra) {
                        names.push(extra.clone());
                    }
                }
            }
            frontend::query(out.to_backend, params::capture_query(&names).as_bytes());
            self.relay
                .push(Expect::Cycle, Route::Swallow, Effect::Capture(names));
            return AfterTransaction::Continue;
        }
        if self.pinned.is_some() {
            return AfterTransaction::Hold;
        }
        if out.backend.statements.capacity() == 0 && !out.backend.statements.is_empty() {
            let ids: Vec<u64> = out.backend.statements.ids().collect();
            for id in ids {
                frontend::close(out.to_backend, Target::Statement, &server_name(id));
                self.relay.push(Expect::Close, Route::Discard, Effect::None);
            }
            frontend::sync(out.to_backend);
            self.relay.push(Expect::Sync, Route::Discard, Effect::None);
            out.backend.statements.clear();
            return AfterTransaction::Continue;
        }
        out.backend.statements.settle_pending();
        AfterTransaction::Release
    }

    /// Parameter values read back after the client changed them.
    pub(super) fn on_captured(
        &mut self,
        names: &[String],
        values: &[Option<String>],
        backend: &mut BackendContext,
    ) {
        for (name, value) in names.iter().zip(values) {
            match value {
                Some(v) => {
                    if self.desired.get(name) != Some(v.as_str()) {
                        Arc::make_mut(&mut self.desired).set(name, v);
                    }
                    backend.params.set(name, v);
                }
                None => {
                    if self.desired.get(name).is_some() {
                        Arc::make_mut(&mut self.desired).remove(name);
                    }
                    backend.params.remove(name);
                }
            }
        }
    }
}
