//! The engine's part in the admin console: commands go out to the console thread
//! (`Io::Console`) and their answers come back (`Message::ConsoleReply`); `SHOW CLIENTS` and
//! `SHOW SERVERS` read each engine's connections ([`Engine::snapshot`]).

use std::time::Duration;

use super::Engine;
use super::id::{ClientId, ServerId};
use super::server::State;

/// One client connection as `SHOW CLIENTS` lists it.
#[derive(Debug, Clone)]
pub struct ClientRow {
    pub id: ClientId,
    pub user: String,
    pub database: String,
    /// `login`, `idle`, `waiting`, `active` (holds a server connection), `console`.
    pub state: &'static str,
    /// The server connection it holds.
    pub server: Option<ServerId>,
    /// How long it has been waiting for a server connection.
    pub wait: Option<Duration>,
    pub application_name: String,
}

/// One server connection as `SHOW SERVERS` lists it.
#[derive(Debug, Clone)]
pub struct ServerRow {
    pub id: ServerId,
    pub user: String,
    pub database: String,
    /// `login`, `idle`, `active` (lent), `tested` (cleanup, health check, cancel delivery).
    pub state: &'static str,
    /// The server's own process id (from its BackendKeyData).
    pub pid: Option<u32>,
    pub tls: bool,
}

impl Engine {
    /// This engine's connections now.
    pub fn snapshot(&self) -> (Vec<ClientRow>, Vec<ServerRow>) {
        let clients = self
            .clients
            .iter()
            .filter(|(_, c)| !c.session.is_closed())
            .map(|(i, c)| {
                let s = &c.session;
                ClientRow {
                    id: ClientId::new(i, c.generation),
                    user: s.user().to_owned(),
                    database: s.database().to_owned(),
                    state: s.activity(),
                    server: s.server(),
                    wait: s
                        .waiting_since()
                        .map(|t| self.now.saturating_duration_since(t)),
                    application_name: s.application_name().to_owned(),
                }
            })
            .collect();
        let servers = self
            .servers
            .iter()
            .map(|(i, sv)| {
                let (user, database) = self.ctx.pool_database(sv.pool).map_or_else(
                    || (String::new(), String::new()),
                    |(p, db)| (p.credentials().0.user.clone(), db.name.clone()),
                );
                ServerRow {
                    id: ServerId::new(i, sv.generation),
                    user,
                    database,
                    state: match sv.state {
                        State::Connecting { .. } | State::LoggingIn { .. } => "login",
                        State::Idle => "idle",
                        State::Lent(_) => "active",
                        State::Draining(_) | State::Parked => "tested",
                    },
                    pid: sv.server_key.as_ref().map(|(pid, _)| *pid),
                    tls: sv.uses_tls,
                }
            })
            .collect();
        (clients, servers)
    }
}
