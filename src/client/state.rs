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
use super::relay::{Effect, Expect, Route, ServerReset};
use super::statements::server_name;
use super::{Action, Lending, Out, ParamList, Session, SessionError};
use crate::protocol::SqlState;
use crate::protocol::backend as be_msg;
use crate::protocol::frontend::{self, Target};

/// A query the server fails (26000, no such statement) without effects.
const FAILING_QUERY: &[u8] = b"DEALLOCATE \"pglink_\x01failed_query\"";

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
        if let Some(lending) = self.lending_mut() {
            lending.syncing = true;
        }
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
            client:% = crate::observe::log::Field(self.peer),
            database = self.database.as_str(),
            user = self.user.as_str(),
            conn = self.key.pid;
            "client {}@{}: its session settings could not be applied ({message}); closing",
            self.user,
            self.database
        );
        let error = SessionError::SettingsRejected {
            code,
            message: message.into_owned(),
        };
        self.end(&error, Action::Release, out);
    }

    /// Whether a backend with `backend` values needs no sync query for this client.
    pub fn settings_match(&self, backend: &Params) -> bool {
        params::in_sync(&self.desired, backend, &|n| self.is_reported(n))
    }

    /// A ParameterStatus from the held backend: the backend's value, and the client's if it
    /// saw the message (its own statement changed the value).
    pub(super) fn on_parameter_status(&mut self, body: &[u8], forwarded: bool, out: &mut Out<'_>) {
        let Some((name, value)) = out.backend.on_parameter_status(body) else {
            return;
        };
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
                Touched::All => {
                    if let Some(lending) = self.lending_mut() {
                        lending.reset_all = true;
                    }
                }
                Touched::Param(name) => self.touch(name),
                // Which one is not in the text: any of those tracked.
                Touched::Unknown => {
                    let extras = self.db_context.as_ref().map(|db| db.track_extra.clone());
                    for name in extras.into_iter().flatten() {
                        self.touch(name);
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

    /// Notes that the client's statements changed `name` (read back after the transaction).
    fn touch(&mut self, name: String) {
        if self.is_reported(&name) {
            return;
        }
        if let Some(lending) = self.lending_mut()
            && !lending.touched.contains(&name)
        {
            lending.touched.push(name);
        }
    }

    /// Pins the session (once). The reactor counts the pin down again when it removes the
    /// client ([`Session::pinned`]).
    fn pin(&mut self, reason: PinReason, out: &mut Out<'_>) {
        if self.pinned.is_none() {
            log::info!(
                client:% = crate::observe::log::Field(self.peer),
                database = self.database.as_str(),
                user = self.user.as_str(),
                conn = self.key.pid;
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
    ///
    /// Answered here only as a statement of its own (what drivers and poolers send). Within
    /// a longer text, in an extended-protocol statement, in a transaction block or in a
    /// pinned session they go to the server, and its CommandComplete ("DEALLOCATE ALL",
    /// "DISCARD ALL") says what happened (see `on_server_reset`). So does a DISCARD ALL
    /// while a backend is held: pglink's answer could not be ordered after the parameter
    /// read-back still on its way.
    pub(super) fn on_query(&mut self, sql: &[u8], held: bool, out: &mut Out<'_>) -> QueryHandling {
        // A simple Query destroys the unnamed statement (one pglink keeps, that is).
        if self.caches_unnamed() {
            self.statements.remove(b"");
        }
        if !inspect::worth_inspecting(sql) {
            return QueryHandling::Forward;
        }
        if let Some(name) = inspect::deallocates_server_name(sql) {
            self.fail_query(SessionError::UnknownStatement { name }, held, out);
            return QueryHandling::Answered;
        }
        match inspect::local_command(sql) {
            Some(LocalCommand::Deallocate(name))
                if self.statements.contains(&name) || self.pinned.is_none() =>
            {
                if !self.statements.remove(&name) {
                    self.fail_query(SessionError::unknown_statement(&name), held, out);
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
            // Without a backend no transaction is open (inside one the server refuses it).
            // (Without a backend no parameter waits to be read back either.)
            Some(LocalCommand::DiscardAll) if !held && self.pinned.is_none() => {
                self.statements.clear();
                let mut answer = Vec::with_capacity(64);
                be_msg::command_complete(&mut answer, b"DISCARD ALL");
                self.reset_to_startup(&mut answer);
                be_msg::ready_for_query(&mut answer, self.relay.status());
                self.emit_local(&answer, held, out);
                QueryHandling::Answered
            }
            _ => {
                if held {
                    self.inspect_statement(sql, out);
                }
                QueryHandling::Forward
            }
        }
    }

    /// Puts the client's settings back to its startup values (what RESET ALL restores in
    /// PostgreSQL) and writes a ParameterStatus to `statuses` for every reported parameter
    /// whose value that changes, as the server would.
    pub(super) fn reset_to_startup(&mut self, statuses: &mut Vec<u8>) {
        let Some(reported) = self.reported.clone() else {
            return;
        };
        let before = self.desired.clone();
        self.init_desired(&reported);
        for (name, _) in reported.iter() {
            let value = self.desired.get(name);
            if value != before.get(name) {
                be_msg::parameter_status(
                    statuses,
                    name.as_bytes(),
                    value.unwrap_or_default().as_bytes(),
                );
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

    /// An error (and ReadyForQuery) in the Query's place. With a backend held the server is
    /// made to fail a query instead, with this error in its place, so that a transaction
    /// block is aborted as PostgreSQL would abort it.
    fn fail_query(&mut self, error: SessionError, held: bool, out: &mut Out<'_>) {
        let mut answer = Vec::with_capacity(64);
        self.note_error(&error, out);
        error.encode(&mut answer, out.stats);
        if held {
            frontend::query(out.to_backend, FAILING_QUERY);
            self.relay.push_failing(Expect::Cycle, answer.into());
        } else {
            be_msg::ready_for_query(&mut answer, self.relay.status());
            out.to_client.extend_from_slice(&answer);
        }
    }

    pub(super) fn emit_local(&mut self, answer: &[u8], held: bool, out: &mut Out<'_>) {
        if held {
            self.relay.push_local(answer, out.to_client);
        } else {
            out.to_client.extend_from_slice(answer);
        }
    }

    /// The server ran DEALLOCATE ALL or DISCARD ALL for this client (its CommandComplete
    /// said so): the backend's prepared statements are gone but for those prepared after it,
    /// and so are the client's names made before it. DISCARD ALL reset every parameter too.
    ///
    /// `DEALLOCATE name` is not followed this way (its CommandComplete does not say which):
    /// a client's own statement names are answered locally, and a server name `pglink_<n>`,
    /// which no client created, is refused with 26000 (`inspect::deallocates_server_name`).
    ///
    /// The backend's side of it (its statements) is `BackendContext::apply_outcome`'s.
    pub(super) fn on_server_reset(&mut self, reset: &ServerReset) {
        self.statements.forget_up_to(reset.seq);
        if reset.discard_all
            && let Some(lending) = self.lending_mut()
        {
            lending.reset_all = true;
        }
    }

    /// The transaction is over with nothing outstanding: read back parameters the client
    /// changed, drop statements a zero-capacity backend must not keep, or release.
    pub(super) fn after_transaction(&mut self, out: &mut Out<'_>) -> AfterTransaction {
        let Some(lending) = self.lending_mut() else {
            return AfterTransaction::Continue;
        };
        let reset_all = std::mem::take(&mut lending.reset_all);
        // `track_extra_parameters` are read back after every transaction that ran a
        // statement (see below); taken now, as the read-back query runs no client statement.
        let ran = std::mem::take(&mut lending.ran);
        if reset_all {
            // RESET ALL / DISCARD ALL: the server put its parameters back to its own startup
            // values (the reported ones said so); the client's go back to those it started
            // with, and the backend is given them before anything else runs.
            let reported = self.reported.clone();
            let is_reported = |n: &str| {
                reported
                    .as_ref()
                    .is_some_and(|r| r.iter().any(|(rn, _)| rn.eq_ignore_ascii_case(n)))
            };
            out.backend.params.retain(is_reported);
            if let Some(db) = &self.db_context {
                for (name, value) in db.overrides.iter().filter(|(n, _)| !is_reported(n)) {
                    out.backend.params.set(name, value);
                }
            }
            self.reset_to_startup(out.to_client);
            self.sync_backend(out);
        }
        // `track_extra_parameters` are read back after every transaction that ran a
        // statement (a function or a `set_config` with bound arguments may have changed
        // them; a pinned session's values go nowhere), the others when the client's
        // statements named them. The client has its ReadyForQuery already: the read-back
        // costs it nothing, the backend one round trip before it goes back to the pool.
        let read_extras = ran && self.pinned.is_none();
        let touched = self.lending().is_some_and(|l| !l.touched.is_empty());
        if touched || read_extras && self.has_extras_to_read() {
            let mut names = self
                .lending_mut()
                .map(|l| std::mem::take(&mut l.touched))
                .unwrap_or_default();
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
        if self.lending().is_some_and(|l| l.syncing) {
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

    /// Whether the held backend's parameters may differ from its record in ways still to be
    /// read back (or being read back, or synced): a session ending now leaves them unknown.
    /// Reported parameters do not count: the server reports them to whoever drains it.
    pub(super) fn settings_in_doubt(&self, lending: &Lending) -> bool {
        !lending.touched.is_empty()
            || lending.reset_all
            || lending.syncing
            || self.relay.reads_back_parameters()
            || lending.ran && self.has_extras_to_read()
    }

    /// Whether `track_extra_parameters` names a parameter the server does not report.
    fn has_extras_to_read(&self) -> bool {
        self.db_context
            .as_ref()
            .is_some_and(|db| db.track_extra.iter().any(|n| !self.is_reported(n)))
    }

    /// Parameter values read back after the client changed them.
    /// (The backend's are `BackendContext::apply_outcome`'s.)
    pub(super) fn on_captured(&mut self, names: &[String], values: &[Option<String>]) {
        for (name, value) in names.iter().zip(values) {
            match value {
                Some(v) => {
                    if self.desired.get(name) != Some(v.as_str()) {
                        Arc::make_mut(&mut self.desired).set(name, v);
                    }
                }
                None => {
                    if self.desired.get(name).is_some() {
                        Arc::make_mut(&mut self.desired).remove(name);
                    }
                }
            }
        }
    }
}
