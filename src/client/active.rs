//! Active: the session holds a backend. Client messages go to it (statement messages
//! rewritten, some answered locally), and its answers come back through the relay until the
//! transaction is over and the backend can go back.

use super::idle::Whole;
use super::prepared::Handled;
use super::relay::{self, BackendStop, MAX_STREAMED_MESSAGE};
use super::{Action, Out, Session, SessionError, State, query_text, state};
use crate::observe::events::Interest;
use crate::protocol::TransactionStatus;
use crate::protocol::framing::peek_header;
use crate::protocol::frontend::tag as fe;

impl Session {
    /// Active: everything goes to the held backend, statement messages rewritten.
    pub(super) fn on_active_bytes(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        self.relay.set_now(out.now);
        let traced = out.interest.wants(Interest::STATEMENT_STARTED);
        if let Some(lending) = self.lending_mut() {
            lending.resuming = false;
            if lending.started.is_none() && !data.is_empty() {
                lending.started = Some(out.now);
            }
        }
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            if self.relay.client_mid_message() {
                let n = self.relay.continue_client_message(rest, out.to_backend);
                if n == 0 {
                    return pos;
                }
                pos += n;
                continue;
            }
            let Some(lending) = self.lending() else {
                return pos;
            };
            if lending.syncing || self.relay.pipeline_full() || self.waiting_for_shape() {
                self.block_input();
                return pos;
            }
            let header = match peek_header(rest, MAX_STREAMED_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => return pos,
                Err(e) => {
                    self.fail(SessionError::Framing(e), out);
                    return data.len();
                }
            };
            let batch_start = self.relay.outstanding() == 0
                && !self.relay.unsynced()
                && self.relay.status() == TransactionStatus::Idle;
            let before = pos;
            let failed = match header.tag {
                fe::TERMINATE => {
                    if rest.len() < header.frame_len() {
                        return pos;
                    }
                    // The session is over now, whatever follows in the same read: the held
                    // backend meets the fate it would if the client left, handed over by
                    // `detach` when the engine closes the client.
                    let leftover = self.backend_fate();
                    self.set_state(State::Closed { leftover }, out);
                    out.actions.push(Action::Close);
                    return data.len();
                }
                fe::QUERY | fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE => {
                    let whole = match self.whole_message(header, rest, out) {
                        Whole::Complete(whole) => whole,
                        Whole::Partial => return pos,
                        Whole::TooLong => return data.len(),
                    };
                    let failed = if header.tag == fe::QUERY {
                        match self.on_query(query_text(whole), true, out) {
                            state::QueryHandling::Answered => None,
                            state::QueryHandling::Forward => {
                                self.note_statement_ran();
                                let failed = self
                                    .relay
                                    .forward_client_message(header, whole, out.to_backend)
                                    .err()
                                    .map(SessionError::Relay);
                                if traced && failed.is_none() {
                                    self.statement_started(query_text(whole), false, out);
                                }
                                failed
                            }
                        }
                    } else {
                        let after = rest.get(header.frame_len()..).unwrap_or_default();
                        match self.on_statement_message(header.tag, whole, after, out) {
                            Handled::Invalid(e) => Some(e),
                            // Nothing is on its way after all: decide again at once.
                            Handled::Wait if !self.waiting_for_shape() => continue,
                            Handled::Wait => {
                                self.block_input();
                                return pos;
                            }
                            Handled::Done | Handled::NeedBackend => {
                                if let Some(lending) = self.lending_mut() {
                                    lending.waited_for = None;
                                    lending.waited_for_batch = false;
                                }
                                None
                            }
                        }
                    };
                    pos += header.frame_len();
                    failed
                }
                tag => {
                    if matches!(tag, fe::EXECUTE | fe::FUNCTION_CALL) {
                        self.note_statement_ran();
                    }
                    match self
                        .relay
                        .forward_client_message(header, rest, out.to_backend)
                    {
                        Ok(n) => {
                            pos += n;
                            if traced && matches!(tag, fe::EXECUTE | fe::FUNCTION_CALL) {
                                self.execute_started(out);
                            }
                            None
                        }
                        Err(e) => Some(SessionError::Relay(e)),
                    }
                }
            };
            if let Some(e) = failed {
                self.fail(e, out);
                return data.len();
            }
            if pos > before {
                self.client_message(header, out);
            }
            let whole = rest
                .get(..header.frame_len())
                .filter(|_| pos - before == header.frame_len());
            self.record_for_replay(batch_start, header.tag, whole);
        }
    }

    /// Client input stopped short: it is asked for again once the cause has passed.
    fn block_input(&mut self) {
        if let Some(lending) = self.lending_mut() {
            lending.input_blocked = true;
        }
    }

    /// A client statement went to the server (see `Lending::ran`).
    fn note_statement_ran(&mut self) {
        if let Some(lending) = self.lending_mut() {
            lending.ran = true;
        }
    }

    /// Backend bytes while a backend is held; returns how many were consumed. Bytes after a
    /// `Release` are not this client's.
    pub fn on_backend_data(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        if !self.holds_backend() {
            return 0;
        }
        self.relay.set_now(out.now);
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let result = self.relay.on_backend_data(rest, out.to_client);
            self.count_server_errors(out);
            self.statements_ended(out);
            self.apply_outcomes(out);
            if !self.holds_backend() {
                // A failed parameter sync ended the session (and released the backend, whose
                // later bytes are not this client's).
                return pos + result.as_ref().map_or(0, |(n, _)| *n);
            }
            self.resume_input_if_unblocked(out);
            let resuming = self.lending().is_some_and(|l| l.resuming);
            match result {
                Ok((n, BackendStop::NeedMore)) => return pos + n,
                Ok((
                    n,
                    BackendStop::ParameterStatus {
                        start,
                        end,
                        forwarded,
                    },
                )) => {
                    let body = rest.get(start..end).unwrap_or_default();
                    self.on_parameter_status(body, forwarded, out);
                    pos += n;
                }
                Ok((n, BackendStop::Idle)) if resuming => return pos + n,
                Ok((n, BackendStop::Idle)) => {
                    pos += n;
                    match self.after_transaction(out) {
                        state::AfterTransaction::Continue => continue,
                        state::AfterTransaction::Hold => {
                            self.transaction_done(out);
                            return pos;
                        }
                        state::AfterTransaction::Release => {
                            self.transaction_done(out);
                            if let Some(server) = self.server() {
                                out.actions.push(Action::Release(server));
                            }
                            self.set_state(State::Idle(super::Idle::default()), out);
                            return pos;
                        }
                    }
                }
                Ok((n, BackendStop::StalePlan { start, end })) => {
                    let error = rest.get(start..end).unwrap_or_default().to_vec();
                    pos += n;
                    self.on_stale_plan(&error, out);
                }
                Ok((n, BackendStop::Fatal)) => {
                    // The server's FATAL went to the client; the session is over.
                    if let Some(server) = self.server() {
                        out.actions.push(Action::DropBackend(server));
                    }
                    self.set_state(State::closed(), out);
                    out.actions.push(Action::Close);
                    return pos + n;
                }
                Err(relay::RelayError::CopyBoth) if !self.relay.backend_mid_message() => {
                    self.fail(SessionError::Relay(relay::RelayError::CopyBoth), out);
                    return data.len();
                }
                Err(e) => {
                    log::warn!(
                        client:% = crate::observe::log::Field(self.peer),
                        database = self.database.as_str(),
                        user = self.user.as_str(),
                        conn = self.key.pid;
                        "client {}@{}: {e}; closing",
                        self.user,
                        self.database
                    );
                    self.on_backend_lost(out);
                    return data.len();
                }
            }
        }
    }

    /// Input that stopped for the pipeline, a sync or a statement's shape may go on once
    /// none of them holds it any more: the reactor is asked to offer it again.
    fn resume_input_if_unblocked(&mut self, out: &mut Out<'_>) {
        let blocked = self
            .lending()
            .is_some_and(|l| l.input_blocked && !l.syncing);
        if blocked && !self.relay.pipeline_full() && !self.waiting_for_shape() {
            if let Some(lending) = self.lending_mut() {
                lending.input_blocked = false;
                lending.resuming = true;
            }
            out.actions.push(Action::ResumeInput);
        }
    }
}
