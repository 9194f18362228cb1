//! Idle: a logged-in session without a backend answers what it can itself and asks for a
//! backend for the rest (leaving that message unconsumed until one is held).

use super::prepared::Handled;
use super::relay::MAX_STREAMED_MESSAGE;
use super::{AcquireError, Action, Idle, Out, Session, SessionError, State, query_text, state};
use crate::protocol::TransactionStatus;
use crate::protocol::backend as be_msg;
use crate::protocol::framing::{Header, peek_header};
use crate::protocol::frontend::tag as fe;

/// A message the session needs whole (see `Session::whole_message`).
pub(super) enum Whole<'d> {
    Complete(&'d [u8]),
    Partial,
    /// Over the limit; the session was failed.
    TooLong,
}

impl Session {
    fn idle_mut(&mut self) -> Option<&mut Idle> {
        match &mut self.state {
            State::Idle(idle) => Some(idle),
            _ => None,
        }
    }

    /// Idle: answer what needs no backend, ask for one for the rest.
    pub(super) fn on_idle_bytes(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        let Some(idle) = self.idle_mut() else {
            return 0;
        };
        if idle.discard > 0 {
            let n = idle.discard.min(data.len());
            idle.discard -= n;
            return n;
        }
        let header = match peek_header(data, MAX_STREAMED_MESSAGE) {
            Ok(Some(h)) => h,
            Ok(None) => return 0,
            Err(e) => {
                self.fail(SessionError::Framing(e), out);
                return data.len();
            }
        };
        if let Some(error) = self.idle_mut().and_then(|idle| idle.failure.take()) {
            return self.fail_waiting_message(header, data, error, out);
        }
        let skip_to_sync = self.idle_mut().is_some_and(|idle| idle.skip_to_sync);
        let acquire = |session: &mut Session, out: &mut Out<'_>| {
            session.set_state(State::Acquiring { since: out.now }, out);
            out.actions.push(Action::Acquire);
            0
        };
        match header.tag {
            fe::SYNC => {
                if let Some(idle) = self.idle_mut() {
                    idle.skip_to_sync = false;
                }
                be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
                self.consume(header, data)
            }
            // Outside COPY the server ignores these, and Flush has nothing to flush.
            fe::FLUSH | fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => self.consume(header, data),
            fe::TERMINATE => {
                self.set_state(State::closed(), out);
                out.actions.push(Action::Close);
                data.len()
            }
            _ if skip_to_sync => self.consume(header, data),
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE => {
                let whole = match self.whole_message(header, data, out) {
                    Whole::Complete(whole) => whole,
                    Whole::Partial => return 0,
                    Whole::TooLong => return data.len(),
                };
                let after = data.get(header.frame_len()..).unwrap_or_default();
                match self.on_statement_message(header.tag, whole, after, out) {
                    Handled::Done => header.frame_len(),
                    Handled::NeedBackend | Handled::Wait => acquire(self, out),
                    Handled::Invalid(e) => {
                        self.fail(e, out);
                        data.len()
                    }
                }
            }
            fe::QUERY => {
                let whole = match self.whole_message(header, data, out) {
                    Whole::Complete(whole) => whole,
                    Whole::Partial => return 0,
                    Whole::TooLong => return data.len(),
                };
                match self.on_query(query_text(whole), false, out) {
                    state::QueryHandling::Answered => header.frame_len(),
                    state::QueryHandling::Forward => acquire(self, out),
                }
            }
            fe::EXECUTE | fe::FUNCTION_CALL => acquire(self, out),
            tag => {
                self.fail(SessionError::UnexpectedMessage { tag }, out);
                data.len()
            }
        }
    }

    /// A message the session must see whole, bounded by the message size limit (a longer
    /// one fails the session).
    pub(super) fn whole_message<'d>(
        &mut self,
        header: Header,
        data: &'d [u8],
        out: &mut Out<'_>,
    ) -> Whole<'d> {
        if header.frame_len() > self.relay_max_len() {
            let error = SessionError::MessageTooLong {
                len: header.frame_len(),
                max: self.relay_max_len(),
            };
            self.fail(error, out);
            return Whole::TooLong;
        }
        match data.get(..header.frame_len()) {
            Some(whole) => Whole::Complete(whole),
            None => Whole::Partial,
        }
    }

    /// Reports a failed acquire against the message that needed the backend: a simple Query
    /// gets ERROR + ReadyForQuery; an extended-protocol message gets ERROR and the rest of its
    /// batch is dropped up to Sync, as the server itself would.
    fn fail_waiting_message(
        &mut self,
        header: Header,
        data: &[u8],
        error: AcquireError,
        out: &mut Out<'_>,
    ) -> usize {
        let error = SessionError::NoServer(error);
        self.note_error(&error, out);
        error.encode(out.to_client, out.stats);
        if matches!(header.tag, fe::QUERY | fe::FUNCTION_CALL) {
            be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
        } else if let Some(idle) = self.idle_mut() {
            idle.skip_to_sync = true;
        }
        self.consume(header, data)
    }

    /// Reports `error` for a message without a backend: the error, then messages are dropped
    /// up to Sync.
    pub(super) fn fail_locally(&mut self, error: SessionError, out: &mut Out<'_>) {
        self.note_error(&error, out);
        error.encode(out.to_client, out.stats);
        if let Some(idle) = self.idle_mut() {
            idle.skip_to_sync = true;
        }
    }

    /// Consumes one message (or the part of it that has arrived, dropping the rest later).
    fn consume(&mut self, header: Header, data: &[u8]) -> usize {
        let n = header.frame_len().min(data.len());
        if let Some(idle) = self.idle_mut() {
            idle.discard = header.frame_len() - n;
        }
        n
    }
}
