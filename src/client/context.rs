//! What pglink knows about a database's sessions and about one server connection, and the
//! one place that knowledge about a server connection follows from its answers.

use std::borrow::Cow;

use super::ParamList;
use super::params::{self, Params, SharedParams};
use super::relay::{Effect, Outcome};
use super::statements::{BackendShape, BackendStatements, Registry};

/// Per-database settings and state the sessions of that database share.
#[derive(Debug)]
pub struct DatabaseContext {
    pub registry: Registry,
    /// `track_extra_parameters`: read back after every transaction that ran a statement.
    pub track_extra: Vec<String>,
    /// `default_startup_parameters`: override the client's values for these names.
    pub overrides: Vec<(String, String)>,
    /// Settings sets clients of this database started with, shared between clients that
    /// have the same (see `params::SharedParams`).
    pub shared_params: SharedParams,
    /// `cache_unnamed_statements`: the unnamed statement goes through the registry too.
    pub cache_unnamed: bool,
}

/// What pglink knows about a backend that goes with it from client to client.
#[derive(Debug)]
pub struct BackendContext {
    pub statements: BackendStatements,
    /// Parameter values known to be in effect on the backend.
    pub params: Params,
}

impl BackendContext {
    pub fn new(statement_capacity: usize) -> BackendContext {
        BackendContext {
            statements: BackendStatements::new(statement_capacity),
            params: Params::default(),
        }
    }

    /// The parameters a backend has right after login, and again after RESET ALL: those the
    /// server reported, and the startup parameters pglink logged in with
    /// (`default_startup_parameters`) for the others.
    pub fn set_login_params(&mut self, reported: &ParamList, startup: &[(String, String)]) {
        self.params = Params::default();
        for (name, value) in startup.iter().chain(reported.iter()) {
            self.params.set(name, value);
        }
    }

    /// What a resolved request shows about the server connection itself: which prepared
    /// statements it has and in what state, and its parameter values. The session (for the
    /// client that holds the connection) and a drain (after the client left) both apply
    /// every outcome here first; what an outcome means for the client is the session's.
    ///
    /// Two things are left to the caller. The shape a Describe showed is recorded for the
    /// database's current schema epoch, which only the session knows (`Session::on_described`);
    /// in a drain the statement stays pending and is settled as stale once the server is idle.
    /// And DISCARD ALL also reset the server's parameters: the session brings them back in line
    /// with its client's after the transaction, a drain puts back the login values.
    pub fn apply_outcome(&mut self, outcome: &Outcome) {
        match outcome {
            // Failed or skipped: whether the server has a copy is unknown, so the next use
            // closes it first. A stale plan: the copy must be prepared again.
            Outcome::Failed(Effect::Prepare { statement, .. }) | Outcome::StalePlan(statement) => {
                self.statements.set_shape(statement.id, BackendShape::Stale);
            }
            Outcome::Captured(names, values) => {
                for (name, value) in names.iter().zip(values) {
                    match value {
                        Some(v) => self.params.set(name, v),
                        None => self.params.remove(name),
                    }
                }
            }
            Outcome::Succeeded(Effect::Sync(changes)) => params::apply(&mut self.params, changes),
            Outcome::Reset(reset) => self.statements.retain_only(&reset.preparing),
            Outcome::Succeeded(_)
            | Outcome::Failed(_)
            | Outcome::Described(..)
            | Outcome::SyncFailed(_) => {}
        }
    }

    /// A ParameterStatus from the server (its body): the value is in effect there now.
    /// Returns the parameter's name and value, `None` for a malformed body.
    pub fn on_parameter_status<'b>(
        &mut self,
        body: &'b [u8],
    ) -> Option<(Cow<'b, str>, Cow<'b, str>)> {
        let mut parts = body.split(|&b| b == 0);
        let (name, value) = (parts.next()?, parts.next()?);
        let (name, value) = (
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value),
        );
        self.params.set(&name, &value);
        Some((name, value))
    }
}
