//! The admin console session (the virtual database `pglink`): after the login, each simple
//! Query is a command that the engine hands to the console thread (`Action::Console`); its
//! answer comes back as protocol bytes ([`Session::on_console_reply`]) and is followed by
//! ReadyForQuery. Anything but a simple Query or Terminate ends the session (psql and
//! PgBouncer's admin tools speak only the simple protocol to a console).

use super::{Action, Out, Session, SessionError, State};
use crate::protocol::TransactionStatus;
use crate::protocol::backend as be_msg;
use crate::protocol::framing::peek_header;
use crate::protocol::frontend::tag as fe;

/// Longest console command accepted.
const MAX_COMMAND: usize = 64 * 1024;

impl Session {
    /// Logged in to the console: its parameters, its cancel key, ReadyForQuery.
    pub(super) fn finish_console_login(&mut self, out: &mut Out<'_>) {
        let version = concat!(env!("CARGO_PKG_VERSION"), "/pglink");
        let application_name = self
            .startup_params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map_or("", |(_, v)| v.as_str());
        for (name, value) in [
            ("server_version", version),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("application_name", application_name),
        ] {
            be_msg::parameter_status(out.to_client, name.as_bytes(), value.as_bytes());
        }
        be_msg::backend_key_data(out.to_client, self.key.pid, self.key.secret());
        be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
        self.set_state(State::Console { busy: false }, out);
        out.actions.push(Action::LoggedIn);
    }

    /// Input while logged in to the console and no command is running.
    pub(super) fn on_console_bytes(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        let header = match peek_header(data, MAX_COMMAND) {
            Ok(Some(h)) => h,
            Ok(None) => return 0,
            Err(e) => {
                self.fail(SessionError::Framing(e), out);
                return data.len();
            }
        };
        match header.tag {
            fe::TERMINATE => {
                self.set_state(State::closed(), out);
                out.actions.push(Action::Close);
                data.len()
            }
            fe::QUERY => {
                let Some(whole) = data.get(..header.frame_len()) else {
                    return 0;
                };
                let sql = String::from_utf8_lossy(super::query_text(whole)).into_owned();
                self.set_state(State::Console { busy: true }, out);
                out.actions.push(Action::Console(sql));
                header.frame_len()
            }
            tag => {
                self.fail(SessionError::ConsoleProtocol { tag }, out);
                data.len()
            }
        }
    }

    /// The answer to the running console command (complete messages, an ErrorResponse
    /// included if it failed); the session takes input again.
    pub fn on_console_reply(&mut self, answer: &[u8], out: &mut Out<'_>) {
        if !matches!(self.state, State::Console { busy: true }) {
            return;
        }
        out.to_client.extend_from_slice(answer);
        be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
        self.set_state(State::Console { busy: false }, out);
        out.actions.push(Action::ResumeInput);
    }

    /// A console command is running (its answer has not come back yet).
    pub fn is_console_busy(&self) -> bool {
        matches!(self.state, State::Console { busy: true })
    }

    /// A session logged in (or logging in) to the admin console.
    pub fn is_console_login(&self) -> bool {
        self.console.is_some() && !self.is_closed()
    }
}
