//! Named prepared statements across backends: how the session rewrites Parse, Bind,
//! Describe and Close (see [`super::statements`] for the bookkeeping).
//!
//! - Parse of a new name: the (shared) statement — one per text, parameter types and
//!   `search_path` — is prepared on the held backend under its server name, followed by a Describe whose answer pglink keeps (the statement's shape),
//!   unless the backend has it already, in which case ParseComplete is answered locally.
//!   Without a backend, a statement some server has accepted before is answered locally too,
//!   so re-preparing costs no backend at all.
//! - Bind/Describe of a name: the backend gets the statement first if it lacks it (its
//!   answers swallowed), then the message with the server name. If the client has seen the
//!   statement's shape, pglink waits for the fresh copy's shape before sending the Bind: a
//!   different one means DDL changed the result type since the client prepared it, and the
//!   client gets PostgreSQL's own 0A000 instead of rows it would misread. A Describe whose
//!   answer is cached for the client's shape is answered locally. A copy prepared in an
//!   earlier batch of the same pipeline (a Sync between) is not counted on until its answer
//!   is in: an error before it in that batch makes the server skip its Parse.
//! - Close of a name: forgotten by the client and answered locally; the server statement
//!   stays for others.
//! - Errors PostgreSQL would raise (42P05 for a name in use, 26000 for an unknown one,
//!   0A000 for a changed result type) are pglink's own. With a backend held, pglink sends a
//!   Bind that the server must fail and puts its error in that place, so the server skips to
//!   Sync and aborts the implicit transaction exactly as it would have.
//! - The unnamed statement passes through untouched, unless the database caches it
//!   (`cache_unnamed_statements`): then it is a statement like the named ones under the name
//!   "" that a Parse of it replaces (even one that fails, as in PostgreSQL) and a simple Query
//!   destroys, so that each server connection parses and plans a text once. Portals pass
//!   through untouched.

use std::sync::Arc;

use super::relay::{Effect, Expect, Outcome, Route};
use super::statements::{BackendShape, ClientStatement, Key, Shape, Statement, server_name};
use super::{BackendContext, Out, Session, SessionError};
use crate::observe::events::Interest;
use crate::protocol::backend as be_msg;
use crate::protocol::framing::{Header, peek_header};
use crate::protocol::frontend::{self, FrontendMessage, Target, tag as fe};

/// A statement name no backend has: a Bind of it fails, which is what pglink wants when it
/// must fail a batch on the server's side.
const NO_SUCH_STATEMENT: &[u8] = b"pglink_\x01failed_batch";

/// What happened to one inspected message.
pub(super) enum Handled {
    /// Done (forwarded, rewritten, or answered).
    Done,
    /// Not yet: a statement's shape is on its way (see `prepare_for_use`). Leave the message
    /// unconsumed; the session asks for its input again when the answer is in.
    Wait,
    /// Needs a backend: leave it unconsumed and acquire one.
    NeedBackend,
    /// Malformed: the connection must end with this error.
    Invalid(SessionError),
}

/// Whether a Bind or Describe of a client's statement can go to the held backend.
enum Use {
    /// Send it.
    Go,
    /// The statement's shape on this backend is on its way: leave the message unconsumed.
    Wait,
    /// A fresh copy has another shape than the client was given: 0A000.
    Stale,
}

impl Session {
    /// Parse, Bind, Describe or Close (`whole`: the message; `after`: the client bytes that
    /// follow it, as far as they have arrived). With a backend held, named statements are
    /// rewritten onto it; without one, what can be answered locally is, and the rest needs a
    /// backend. Names are checked, and errors raised, the same way in both cases: in the
    /// batch's place on the server when one is held (`fail_batch`), locally otherwise
    /// (`fail_locally`).
    pub(super) fn on_statement_message(
        &mut self,
        tag: u8,
        whole: &[u8],
        after: &[u8],
        out: &mut Out<'_>,
    ) -> Handled {
        let held = self.holds_backend();
        let body = whole.get(Header::SIZE..).unwrap_or_default();
        let msg = match FrontendMessage::decode(tag, body) {
            Ok(m) => m,
            Err(e) => return Handled::Invalid(SessionError::InvalidMessage(e)),
        };
        if out.interest.wants(Interest::STATEMENT_STARTED) {
            self.trace_statement_text(&msg);
        }
        // While the server skips to Sync after an error, a Parse of the unnamed statement
        // is skipped and does not replace it: it goes through as it is, to be skipped too.
        let cached = self.caches_unnamed();
        let parse_cached = cached && !(held && self.relay.skipping_to_sync());
        match msg {
            FrontendMessage::Parse(p) if p.name.is_empty() && parse_cached => {
                self.parse_unnamed(p.query, p.param_types().collect(), held, after, out)
            }
            FrontendMessage::Parse(p) if !p.name.is_empty() => {
                if self.statements.contains(p.name) {
                    return self.fail_statement(SessionError::duplicate_statement(p.name), out);
                }
                if let Some(error) = refused_statement(p.query) {
                    return self.fail_statement(error, out);
                }
                let types: Vec<u32> = p.param_types().collect();
                let Some(database) = self.db_context.clone() else {
                    return if held {
                        Handled::Invalid(SessionError::NoStatementRegistry)
                    } else {
                        Handled::NeedBackend
                    };
                };
                let key = Key {
                    query: p.query,
                    param_types: &types,
                    search_path: self.desired.get("search_path"),
                };
                if held {
                    let statement = database.registry.get_or_insert(&key);
                    let epoch = database.registry.schema_epoch();
                    return self.parse_on_backend(p.name, statement, epoch, after, out);
                }
                // A statement that is new, or that no server has accepted yet, must be
                // checked by a server now (and is looked up again then). So must one whose
                // Bind follows: see `parse_unnamed`.
                if bind_follows(after) {
                    return Handled::NeedBackend;
                }
                let Some(statement) = database.registry.find(&key).filter(|s| s.is_verified())
                else {
                    return Handled::NeedBackend;
                };
                database.registry.count_hit();
                self.parse_without_backend(p.name, statement, out)
            }
            FrontendMessage::Bind(b) if !b.statement.is_empty() || cached => {
                let Some(named) = self.statements.get(b.statement).cloned() else {
                    return self.fail_statement(SessionError::unknown_statement(b.statement), out);
                };
                if !held {
                    return Handled::NeedBackend;
                }
                // A client that describes the portal before running it learns the result
                // shape from this very batch (libpq does): whatever shape a fresh copy has
                // now is fine for it, as for a new Parse.
                let named = if describes_before_executing(after, b.portal) {
                    self.statements.forget_shape(b.statement);
                    ClientStatement {
                        shape: None,
                        ..named
                    }
                } else {
                    named
                };
                match self.prepare_for_use(b.statement, &named, out) {
                    Use::Wait => return Handled::Wait,
                    Use::Stale => return self.fail_statement(SessionError::StalePlan, out),
                    Use::Go => {}
                }
                let statement = named.statement;
                if statement.has_session_effects() {
                    self.inspect_statement(&statement.query, out);
                }
                if out.interest.wants(Interest::STATEMENT_STARTED) {
                    self.traced_bound = Some(Arc::clone(&statement));
                }
                b.encode_with_statement(out.to_backend, &statement.server_name);
                self.relay
                    .push(Expect::Bind, Route::Forward, Effect::Bound(statement));
                Handled::Done
            }
            FrontendMessage::Describe(d)
                if d.target == Target::Statement && (!d.name.is_empty() || cached) =>
            {
                let Some(named) = self.statements.get(d.name).cloned() else {
                    return self.fail_statement(SessionError::unknown_statement(d.name), out);
                };
                if let Some(answer) = named.shape.and_then(|s| named.statement.description(s)) {
                    self.emit_local(&answer, held, out);
                    return Handled::Done;
                }
                if !held {
                    return Handled::NeedBackend;
                }
                // The client asks for the description: it takes whatever shape is current.
                self.statements.forget_shape(d.name);
                let named = ClientStatement {
                    shape: None,
                    ..named
                };
                match self.prepare_for_use(d.name, &named, out) {
                    Use::Wait => return Handled::Wait,
                    Use::Stale => return self.fail_statement(SessionError::StalePlan, out),
                    Use::Go => {}
                }
                let statement = named.statement;
                frontend::describe(out.to_backend, Target::Statement, &statement.server_name);
                self.relay.push(
                    Expect::DescribeStatement,
                    Route::Forward,
                    Effect::Describe(statement),
                );
                Handled::Done
            }
            FrontendMessage::Close(c)
                if c.target == Target::Statement && (!c.name.is_empty() || cached) =>
            {
                self.statements.remove(c.name);
                let mut answer = Vec::with_capacity(5);
                be_msg::close_complete(&mut answer);
                self.emit_local(&answer, held, out);
                Handled::Done
            }
            // Unnamed statements and portals: untouched (but looked at) on the backend.
            _ if !held => Handled::NeedBackend,
            other => {
                if let FrontendMessage::Parse(p) = other {
                    if let Some(error) = refused_statement(p.query) {
                        return self.fail_statement(error, out);
                    }
                    self.inspect_statement(p.query, out);
                }
                let header = Header {
                    tag,
                    len: u32::try_from(whole.len().saturating_sub(1)).unwrap_or(u32::MAX),
                };
                match self
                    .relay
                    .forward_client_message(header, whole, out.to_backend)
                {
                    Ok(_) => Handled::Done,
                    Err(e) => Handled::Invalid(SessionError::Relay(e)),
                }
            }
        }
    }

    /// Whether this session's database caches the unnamed statement.
    pub(super) fn caches_unnamed(&self) -> bool {
        self.db_context.as_ref().is_some_and(|d| d.cache_unnamed)
    }

    /// Reports an error of the current extended-protocol batch in its place: on the server's
    /// side while a backend is held, locally otherwise. Either way what follows in the batch
    /// is skipped up to Sync.
    fn fail_statement(&mut self, error: SessionError, out: &mut Out<'_>) -> Handled {
        if self.holds_backend() {
            self.fail_batch(&error, out);
        } else {
            self.fail_locally(error, out);
        }
        Handled::Done
    }

    /// Parse of a new name with a backend held: the shared statement is prepared on it,
    /// unless it has a current copy already (then ParseComplete is answered locally).
    fn parse_on_backend(
        &mut self,
        name: &[u8],
        statement: Arc<Statement>,
        epoch: u64,
        after: &[u8],
        out: &mut Out<'_>,
    ) -> Handled {
        match self.backend_copy(&statement, epoch, out) {
            // The backend has a current copy (or one whose shape is on its way, which this
            // name learns with it).
            Some(shape) => {
                self.statements
                    .insert(name, statement, shape, self.relay.pushed());
                let mut answer = Vec::with_capacity(5);
                be_msg::parse_complete(&mut answer);
                self.push_parse_complete(&answer, Effect::None, after, out);
            }
            None => {
                let since = self.relay.pushed();
                self.statements.insert(name, statement.clone(), None, since);
                self.prepare_afresh(&statement, Some(name), Route::Forward, out);
            }
        }
        Handled::Done
    }

    /// Parse of the unnamed statement, cached (`cache_unnamed_statements`). As in
    /// PostgreSQL it replaces the client's unnamed statement even if it fails, but not if the
    /// server skips it after an error earlier in its batch: a Parse answered locally carries
    /// the statement it replaces and puts it back then (`Effect::UnnamedParsed`); one that
    /// must go to the server waits until the batch so far has been answered.
    fn parse_unnamed(
        &mut self,
        query: &[u8],
        types: Vec<u32>,
        held: bool,
        after: &[u8],
        out: &mut Out<'_>,
    ) -> Handled {
        if let Some(error) = refused_statement(query) {
            self.statements.remove(b"");
            return self.fail_statement(error, out);
        }
        let Some(database) = self.db_context.clone() else {
            return Handled::Invalid(SessionError::NoStatementRegistry);
        };
        let key = Key {
            query,
            param_types: &types,
            search_path: self.desired.get("search_path"),
        };
        if !held {
            // A Bind follows: the batch needs a backend anyway, and with one held the
            // ParseComplete goes out with the server's answers (one write to the client).
            if bind_follows(after) {
                return Handled::NeedBackend;
            }
            let Some(statement) = database.registry.find(&key).filter(|s| s.is_verified()) else {
                return Handled::NeedBackend;
            };
            database.registry.count_hit();
            self.statements.remove(b"");
            return self.parse_without_backend(b"", statement, out);
        }
        let statement = database.registry.get_or_insert(&key);
        let epoch = database.registry.schema_epoch();
        match self.backend_copy(&statement, epoch, out) {
            Some(shape) => {
                let previous = self.statements.take(b"").map(Box::new);
                self.statements
                    .insert(b"", statement.clone(), shape, self.relay.pushed());
                let mut answer = Vec::with_capacity(5);
                be_msg::parse_complete(&mut answer);
                let effect = Effect::UnnamedParsed {
                    id: statement.id,
                    previous,
                };
                self.push_parse_complete(&answer, effect, after, out);
            }
            None if self.relay.batch_pending() => {
                frontend::flush(out.to_backend);
                if let Some(lending) = self.lending_mut() {
                    lending.waited_for_batch = true;
                }
                return Handled::Wait;
            }
            None => {
                // Nothing before it in the batch can fail any more: the Parse runs.
                self.statements.remove(b"");
                let since = self.relay.pushed();
                self.statements.insert(b"", statement.clone(), None, since);
                self.prepare_afresh(&statement, Some(b""), Route::Forward, out);
            }
        }
        Handled::Done
    }

    /// A ParseComplete pglink answers itself. When the client's batch ends in a Sync that has
    /// arrived already (`after`: the rest of this read), the answer waits to go out with the
    /// server's answers to the batch: one write to the client rather than two.
    fn push_parse_complete(
        &mut self,
        answer: &[u8],
        effect: Effect,
        after: &[u8],
        out: &mut Out<'_>,
    ) {
        if sync_follows(after) {
            self.relay.push_local_deferred(answer, effect);
        } else {
            self.relay.push_local_with(answer, effect, out.to_client);
        }
    }

    /// Whether the held backend has a current copy of `statement` (with its shape, if
    /// known), or one being prepared in this batch (whatever fails that Parse fails a
    /// second one too); `None`: it must be prepared.
    fn backend_copy(
        &mut self,
        statement: &Statement,
        epoch: u64,
        out: &mut Out<'_>,
    ) -> Option<Option<Shape>> {
        match out.backend.statements.touch(statement.id) {
            Some(BackendShape::Known { shape, epoch: e }) if e == epoch => Some(Some(shape)),
            Some(BackendShape::Pending)
                if !self.relay.skipping_to_sync()
                    && !self.relay.preparing_before_sync(statement.id) =>
            {
                Some(None)
            }
            _ => None,
        }
    }

    /// Parse of a new name without a backend, of a statement some server has accepted
    /// before: answered locally.
    fn parse_without_backend(
        &mut self,
        name: &[u8],
        statement: Arc<Statement>,
        out: &mut Out<'_>,
    ) -> Handled {
        // The client's shape is the latest a server showed, if pglink has it; else the first
        // backend to run it shows it.
        let shape = statement.cached_shape();
        self.statements
            .insert(name, statement, shape, self.relay.pushed());
        be_msg::parse_complete(out.to_client);
        Handled::Done
    }

    /// Makes sure the held backend can run the client's statement `named` with the shape
    /// the client knows: prepares it if the backend lacks it (or has a stale copy), and if
    /// the client has seen a shape, waits for the copy's shape and compares.
    fn prepare_for_use(&mut self, name: &[u8], named: &ClientStatement, out: &mut Out<'_>) -> Use {
        let statement = &named.statement;
        if self.relay.skipping_to_sync() {
            // The server discards it all until the client's Sync.
            return Use::Go;
        }
        // The shape this message was waiting for has arrived: no second round.
        let waited = self.lending().and_then(|l| l.waited_for) == Some(statement.id);
        let epoch = self
            .db_context
            .as_ref()
            .map_or(0, |d| d.registry.schema_epoch());
        let on_backend = out.backend.statements.touch(statement.id);
        // A copy prepared in an earlier batch of this pipeline exists only if nothing before
        // it in that batch fails (the server skips to Sync after an error): wait for it.
        let earlier_batch = on_backend == Some(BackendShape::Pending)
            && self.relay.preparing_before_sync(statement.id);
        match (on_backend, named.shape) {
            (Some(BackendShape::Known { shape, .. }), Some(seen)) if shape == seen => Use::Go,
            (Some(BackendShape::Known { .. }), Some(_)) if waited => Use::Stale,
            (Some(BackendShape::Known { .. }), None) if waited => Use::Go,
            (Some(BackendShape::Pending), _) if earlier_batch => self.wait_for_shape(statement.id),
            (Some(BackendShape::Pending), None) => Use::Go,
            (Some(BackendShape::Pending), Some(_)) => self.wait_for_shape(statement.id),
            (Some(BackendShape::Known { shape, epoch: e }), None) if e == epoch => {
                self.statements.set_shape(name, shape);
                Use::Go
            }
            // Not there, stale, or its Parse failed or was skipped (an error in the same batch
            // leaves the relay skipping to Sync, and the message goes as it is, above).
            (_, seen) => {
                self.prepare_afresh(statement, None, Route::Swallow, out);
                match seen {
                    None => Use::Go,
                    Some(_) => {
                        frontend::flush(out.to_backend);
                        self.wait_for_shape(statement.id)
                    }
                }
            }
        }
    }

    /// Prepares `statement` on the held backend; a copy the backend may have (stale, from
    /// before DDL, or of unknown fate after an error) is closed first. PostgreSQL answers a
    /// Close of a statement it does not have like any other.
    fn prepare_afresh(
        &mut self,
        statement: &Arc<Statement>,
        client_name: Option<&[u8]>,
        route: Route,
        out: &mut Out<'_>,
    ) {
        if out.backend.statements.contains(statement.id) {
            frontend::close(out.to_backend, Target::Statement, &statement.server_name);
            self.relay.push(Expect::Close, Route::Swallow, Effect::None);
            out.backend.statements.remove(statement.id);
        }
        self.prepare_on_backend(statement, client_name, route, out);
    }

    fn wait_for_shape(&mut self, id: u64) -> Use {
        if let Some(lending) = self.lending_mut() {
            lending.waited_for = Some(id);
        }
        Use::Wait
    }

    /// Whether client input must wait for a statement's shape (see `prepare_for_use`), or
    /// for its batch so far to be answered (see `parse_unnamed`).
    pub(super) fn waiting_for_shape(&self) -> bool {
        self.lending().is_some_and(|l| {
            l.waited_for.is_some_and(|id| self.relay.awaits_shape(id))
                || (l.waited_for_batch && self.relay.batch_pending())
        })
    }

    /// Sends the statement's Parse (after a Close of the least recently used statement if
    /// the backend is at `statement_cache_capacity`) and a Describe for its shape. The
    /// Parse's answer goes to the client (`route`) when it is the client's own Parse.
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
        frontend::describe(out.to_backend, Target::Statement, &statement.server_name);
        self.relay.push(
            Expect::DescribeStatement,
            Route::Swallow,
            Effect::Describe(statement.clone()),
        );
    }

    /// Reports `error` as the error of the current batch while a backend is held: the
    /// server fails a Bind in its place, skipping to Sync as it would for a real error.
    fn fail_batch(&mut self, error: &SessionError, out: &mut Out<'_>) {
        let mut bytes = Vec::new();
        self.note_error(error, out);
        error.encode(&mut bytes, out.stats);
        frontend::bind(out.to_backend, b"", NO_SUCH_STATEMENT, &[], [], &[]);
        self.relay.push_failing(Expect::Bind, bytes.into());
    }

    /// A batch that began with a Bind of a shared statement outside a transaction failed with
    /// "cached plan must not change result type" before the client saw anything of it
    /// (`error`). If the whole batch was recorded and it describes its portals before running
    /// them (so the client learns the new shape from the replay), the stale copy is closed
    /// and the batch sent again, the statement prepared afresh on the way. Otherwise the
    /// error goes to the client, as PostgreSQL would send it.
    pub(super) fn on_stale_plan(&mut self, error: &[u8], out: &mut Out<'_>) {
        let statement = self.relay.take_stale();
        let batch = self
            .lending_mut()
            .and_then(|l| l.replay.take())
            .filter(|b| ends_with_sync(b) && batch_describes_its_portals(b));
        let (Some(statement), Some(batch)) = (statement.clone(), batch) else {
            self.relay.forward_error(error, statement, out.to_client);
            return;
        };
        log::debug!(
            "statement {} changed result type: prepared again and the batch replayed",
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
            "a recorded batch holds whole messages and never waits"
        );
    }

    /// Records the client messages of a batch that may have to be replayed (see
    /// `on_stale_plan`): one starting outside a transaction with a Bind (`batch_start`: the
    /// message `tag` began a batch), made of Bind, Describe, Execute, Flush and Sync only,
    /// whole and small. `message` is `None` if it was not handled whole.
    pub(super) fn record_for_replay(&mut self, batch_start: bool, tag: u8, message: Option<&[u8]>) {
        const LIMIT: usize = 64 * 1024;
        // Room for a usual batch (Bind, Execute, Sync of a few parameters) at once: grown
        // from empty, it would be reallocated two or three times in every transaction.
        const USUAL: usize = 256;
        let Some(lending) = self.lending_mut() else {
            return;
        };
        if batch_start {
            lending.replay = (tag == fe::BIND).then(|| Vec::with_capacity(USUAL));
        }
        let Some(batch) = lending.replay.as_mut() else {
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
            _ => lending.replay = None,
        }
    }

    /// Applies what the backend's answers showed: first to what is known of the backend
    /// (the part a drain shares, [`BackendContext::apply_outcome`]), then to the client's
    /// statements, parameters and the shared registry.
    pub(super) fn apply_outcomes(&mut self, out: &mut Out<'_>) {
        if !self.relay.has_outcomes() {
            return;
        }
        let outcomes: Vec<Outcome> = self.relay.take_outcomes().collect();
        for outcome in outcomes {
            out.backend.apply_outcome(&outcome);
            match outcome {
                Outcome::Succeeded(Effect::Prepare { statement, .. }) => statement.mark_verified(),
                Outcome::Failed(Effect::Prepare {
                    statement,
                    client_name,
                }) => {
                    if let Some(name) = client_name {
                        self.statements.remove_if(&name, statement.id);
                    }
                }
                Outcome::Failed(Effect::UnnamedParsed { id, previous }) => {
                    self.statements.restore_if(b"", id, previous.map(|p| *p));
                }
                Outcome::Described(statement, answer) => {
                    self.on_described(statement, answer, out.backend)
                }
                Outcome::StalePlan(statement) => {
                    log::debug!("statement {} has a stale plan on its backend", statement.id);
                    // Its cached description is likely out of date too.
                    if let Some(database) = &self.db_context {
                        database.registry.forget_description(&statement);
                    }
                }
                Outcome::Captured(names, values) => self.on_captured(&names, &values),
                Outcome::Succeeded(Effect::Sync(_)) => {
                    if let Some(lending) = self.lending_mut() {
                        lending.syncing = false;
                    }
                }
                Outcome::SyncFailed(error) => {
                    self.on_sync_failed(&error, out);
                    return;
                }
                Outcome::Reset(reset) => self.on_server_reset(&reset),
                Outcome::Succeeded(_) | Outcome::Failed(_) => {}
            }
        }
    }

    /// A Describe answer for `statement` from the held backend: its shape there, for the
    /// client's names that have none yet, and for the description cache.
    fn on_described(
        &mut self,
        statement: Arc<Statement>,
        answer: Vec<u8>,
        backend: &mut BackendContext,
    ) {
        let Some(shape) = Shape::of_description(&answer) else {
            return;
        };
        statement.mark_verified();
        let epoch = self
            .db_context
            .as_ref()
            .map_or(0, |d| d.registry.schema_epoch());
        if backend.statements.contains(statement.id) {
            backend
                .statements
                .set_shape(statement.id, BackendShape::Known { shape, epoch });
        }
        self.statements.learn_shape(statement.id, shape);
        if let Some(database) = &self.db_context {
            database
                .registry
                .cache_description(&statement, shape, answer.into());
        }
    }
}

fn ends_with_sync(batch: &[u8]) -> bool {
    batch.len() >= 5
        && batch.get(batch.len() - 5) == Some(&fe::SYNC)
        && batch.ends_with(&[0, 0, 0, 4])
}

/// Whether the messages in `after` (those following a Bind of `portal`, as far as they have
/// arrived) describe the portal before executing it, within the same batch.
fn describes_before_executing(after: &[u8], portal: &[u8]) -> bool {
    let mut rest = after;
    for _ in 0..16 {
        let Ok(Some(header)) = peek_header(rest, usize::MAX) else {
            return false;
        };
        let Some(body) = rest.get(5..header.frame_len()) else {
            return false;
        };
        match (header.tag, body.split_first()) {
            (fe::DESCRIBE, Some((b'P', name))) if name.strip_suffix(&[0]) == Some(portal) => {
                return true;
            }
            (fe::EXECUTE, _) if body.starts_with(portal) && body.get(portal.len()) == Some(&0) => {
                return false;
            }
            (fe::SYNC | fe::BIND | fe::QUERY, _) => return false,
            _ => {}
        }
        rest = rest.get(header.frame_len()..).unwrap_or_default();
    }
    false
}

/// Whether the next message in `after` is a Bind.
fn bind_follows(after: &[u8]) -> bool {
    after.first() == Some(&fe::BIND)
}

/// Whether a Sync is among the next messages in `after` (which goes to the server and is
/// always answered).
fn sync_follows(after: &[u8]) -> bool {
    let mut rest = after;
    for _ in 0..16 {
        let Ok(Some(header)) = peek_header(rest, usize::MAX) else {
            return false;
        };
        if header.tag == fe::SYNC {
            return true;
        }
        let Some(next) = rest.get(header.frame_len()..) else {
            return false;
        };
        rest = next;
    }
    false
}

/// Whether every Bind of a recorded batch is followed by a Describe of its portal before
/// the portal is executed.
fn batch_describes_its_portals(batch: &[u8]) -> bool {
    let mut rest = batch;
    while let Ok(Some(header)) = peek_header(rest, usize::MAX) {
        let Some(message) = rest.get(..header.frame_len()) else {
            return false;
        };
        rest = rest.get(header.frame_len()..).unwrap_or_default();
        if header.tag == fe::BIND {
            let Ok(FrontendMessage::Bind(b)) =
                FrontendMessage::decode(fe::BIND, message.get(5..).unwrap_or_default())
            else {
                return false;
            };
            if !describes_before_executing(rest, b.portal) {
                return false;
            }
        }
    }
    true
}

/// The error for a statement text pglink does not let through: DEALLOCATE of one of its own
/// server names (see `inspect::deallocates_server_name`).
fn refused_statement(query: &[u8]) -> Option<SessionError> {
    if !super::inspect::worth_inspecting(query) {
        return None;
    }
    super::inspect::deallocates_server_name(query)
        .map(|name| SessionError::unknown_statement(name.as_bytes()))
}
