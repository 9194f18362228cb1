//! What the threads of a running server share: the engines' context, the login table
//! (replaced when secrets rotate), the client-side TLS settings, and how to reach each
//! reactor.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use super::verifiers::Verifiers;
use crate::client::users::UserTable;
use crate::engine::Context;
use crate::reactor::{ReactorHandle, ServerTlsConfig};

/// State every reactor shares.
pub struct Shared {
    /// What the engines share.
    pub ctx: Arc<Context>,
    users: RwLock<Arc<UserTable>>,
    users_epoch: AtomicU64,
    pub tls: Option<Arc<ServerTlsConfig>>,
    /// The SCRAM verifier thread.
    pub(crate) verifiers: Verifiers,
    reactors: OnceLock<Vec<ReactorHandle>>,
    /// Reactor threads inside their loop right now.
    running: AtomicUsize,
    /// Short-lived helper threads (cancel deliveries), joined on shutdown.
    helpers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn new(
        ctx: Context,
        users: UserTable,
        tls: Option<Arc<ServerTlsConfig>>,
        verifiers: Verifiers,
    ) -> Shared {
        Shared {
            ctx: Arc::new(ctx),
            users: RwLock::new(Arc::new(users)),
            users_epoch: AtomicU64::new(0),
            tls,
            verifiers,
            reactors: OnceLock::new(),
            running: AtomicUsize::new(0),
            helpers: Mutex::new(Vec::new()),
        }
    }

    /// Reactors configured.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn reactor_count(&self) -> usize {
        self.ctx.stats.len()
    }

    /// Reactors created and not yet stopped (all of them until shutdown, unless one failed).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn reactors_running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Publishes a new login table (secret rotation).
    pub fn set_users(&self, users: UserTable) {
        *self
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(users);
        self.users_epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn users(&self) -> Arc<UserTable> {
        self.users
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Clients connected right now (all reactors).
    pub fn client_count(&self) -> usize {
        self.ctx.client_count()
    }

    pub fn set_reactors(&self, handles: Vec<ReactorHandle>) {
        let _ = self.reactors.set(handles);
    }

    pub(crate) fn reactor(&self, id: usize) -> Option<&ReactorHandle> {
        self.reactors.get().and_then(|r| r.get(id))
    }

    /// Starts a shutdown: every reactor stops accepting and winds down (it notices the flag
    /// on its next turn; the waker makes that turn happen now).
    pub fn stop(&self) {
        self.ctx.stop();
        for r in self.reactors.get().into_iter().flatten() {
            r.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.ctx.is_stopping()
    }

    /// Bumped with every new login table.
    pub(crate) fn users_epoch(&self) -> u64 {
        self.users_epoch.load(Ordering::Acquire)
    }

    /// Keeps a helper thread's handle for [`Shared::join_helpers`] (and forgets those that
    /// have finished).
    pub(crate) fn add_helper(&self, thread: JoinHandle<()>) {
        let mut helpers = self.helpers.lock().unwrap_or_else(PoisonError::into_inner);
        helpers.retain(|t| !t.is_finished());
        helpers.push(thread);
    }

    /// Waits for every helper thread still running.
    pub(crate) fn join_helpers(&self) {
        let helpers =
            std::mem::take(&mut *self.helpers.lock().unwrap_or_else(PoisonError::into_inner));
        for t in helpers {
            let _ = t.join();
        }
    }

    pub(crate) fn reactor_started(&self) {
        self.running.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn reactor_stopped(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}
