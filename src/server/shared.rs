//! What the threads of a running server share: the engines' context, the login table
//! (replaced when secrets rotate), the client-side TLS settings, and how to reach each
//! reactor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use super::verifiers::Verifiers;
use crate::client::users::UserTable;
use crate::engine::Context;
use crate::reactor::{ReactorHandle, ServerTlsConfig};

/// What a client's TLS handshake uses: the rustls configuration, and the
/// `tls-server-end-point` data of its certificate (for SCRAM-SHA-256-PLUS), which must be
/// that of the certificate the connection was actually served, whatever a reload did since.
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    pub config: Arc<ServerTlsConfig>,
    pub channel_binding: Option<Vec<u8>>,
}

/// State every reactor shares.
pub struct Shared {
    /// The configuration in effect: what the engines share, and the login table. Replaced
    /// as a whole by a reload (and the table alone when secrets rotate); `epoch` counts the
    /// replacements, so a reactor sees a new one with one atomic load per turn.
    current: RwLock<(Arc<Context>, Arc<UserTable>)>,
    epoch: AtomicU64,
    /// The first configuration, for what every configuration shares (counts, the stop flag,
    /// the counters) without taking the lock.
    base: Arc<Context>,
    /// The client-side TLS configuration and its certificate's channel-binding data (a
    /// reload may replace both, together).
    tls: RwLock<Option<ClientIdentity>>,
    /// Reloads applied and refused, for `pglink_config_reloads_total`.
    pub(crate) reloads: [AtomicU64; 2],
    /// The SCRAM verifier thread.
    pub(crate) verifiers: Verifiers,
    reactors: OnceLock<Vec<ReactorHandle>>,
    /// Reactor threads inside their loop right now.
    running: AtomicUsize,
    /// Short-lived helper threads (cancel deliveries), joined on shutdown.
    helpers: Mutex<Vec<JoinHandle<()>>>,
    /// Where admin console commands go.
    console: OnceLock<super::console::ConsoleHandle>,
    /// A stop was asked for. The engines drain at once, or after the handover
    /// (`Context::handover`) during which they only stop accepting.
    stop_requested: AtomicBool,
    /// The flight recorder, when configured.
    flight: OnceLock<Arc<crate::observe::flight::FlightRecorder>>,
    /// The span exporter, when tracing is on (for its counters).
    #[cfg(feature = "otel")]
    spans: OnceLock<crate::observe::otlp::Exporter>,
}

impl Shared {
    pub(crate) fn new(
        ctx: Context,
        users: UserTable,
        tls: Option<ClientIdentity>,
        verifiers: Verifiers,
    ) -> Shared {
        let ctx = Arc::new(ctx);
        Shared {
            base: ctx.clone(),
            current: RwLock::new((ctx, Arc::new(users))),
            epoch: AtomicU64::new(0),
            tls: RwLock::new(tls),
            reloads: Default::default(),
            verifiers,
            reactors: OnceLock::new(),
            running: AtomicUsize::new(0),
            helpers: Mutex::new(Vec::new()),
            console: OnceLock::new(),
            stop_requested: AtomicBool::new(false),
            flight: OnceLock::new(),
            #[cfg(feature = "otel")]
            spans: OnceLock::new(),
        }
    }

    /// What the engines share now.
    pub fn ctx(&self) -> Arc<Context> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The configuration in effect and its login table.
    pub(crate) fn current(&self) -> (Arc<Context>, Arc<UserTable>) {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a reloaded configuration in effect.
    pub(crate) fn publish(&self, ctx: Context, users: UserTable) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            (Arc::new(ctx), Arc::new(users));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.wake_all();
    }

    /// The client-side TLS configuration for new handshakes, with the channel-binding data
    /// of the certificate it presents.
    pub(crate) fn tls(&self) -> Option<ClientIdentity> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_tls(&self, tls: Option<ClientIdentity>) {
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = tls;
    }

    /// Reactors configured.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn reactor_count(&self) -> usize {
        self.base.stats.len()
    }

    /// Reactors created and not yet stopped (all of them until shutdown, unless one failed).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn reactors_running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Clients connected right now (all reactors).
    pub fn client_count(&self) -> usize {
        self.base.client_count()
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
        self.stop_requested.store(true, Ordering::Release);
        if self.base.handover.is_zero() {
            self.base.stop();
        }
        self.wake_all();
    }

    fn wake_all(&self) {
        for r in self.reactors.get().into_iter().flatten() {
            r.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stop_requested.load(Ordering::Acquire) || self.base.is_stopping()
    }

    /// A cancel delivery finished (see `Context::cancel_delivered`).
    pub(crate) fn cancel_delivered(&self) {
        self.base.cancel_delivered();
    }

    /// Every reactor's counters (the same in every configuration).
    pub fn stats(&self) -> &[Arc<crate::observe::metrics::ReactorStats>] {
        &self.base.stats
    }

    /// Bumped with every new configuration or login table.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The flight recorder, when the configuration has a `flight_recorder` section.
    pub(crate) fn flight(&self) -> Option<&Arc<crate::observe::flight::FlightRecorder>> {
        self.flight.get()
    }

    pub(crate) fn set_flight(&self, recorder: Arc<crate::observe::flight::FlightRecorder>) {
        let _ = self.flight.set(recorder);
    }

    /// `user@database` of every pool, by pool id (the flight recorder's track names).
    pub(crate) fn pool_labels(&self) -> Vec<String> {
        let ctx = self.ctx();
        ctx.pools
            .iter()
            .map(|pool| {
                let db = ctx.databases.get(pool.db).map_or("?", |d| d.name.as_str());
                format!("{}@{db}", pool.credentials().0.user)
            })
            .collect()
    }

    /// The span exporter, when tracing is on.
    #[cfg(feature = "otel")]
    pub(crate) fn set_span_exporter(&self, exporter: crate::observe::otlp::Exporter) {
        let _ = self.spans.set(exporter);
    }

    /// The span exporter's counters, when tracing is on.
    #[cfg(feature = "otel")]
    pub(crate) fn span_stats(&self) -> Option<&crate::observe::otlp::ExportStats> {
        self.spans.get().map(|e| e.stats())
    }

    pub(crate) fn set_console(&self, console: super::console::ConsoleHandle) {
        let _ = self.console.set(console);
    }

    /// Has an admin console command of `client` (of reactor `reactor`) run; when it cannot
    /// be, the answer to give the client instead.
    pub(crate) fn run_console(
        &self,
        reactor: usize,
        client: crate::engine::ClientId,
        command: String,
    ) -> Result<(), Vec<u8>> {
        let job = super::console::Job {
            reactor,
            client,
            command,
        };
        match self.console.get() {
            Some(console) => console
                .submit(job)
                .map_err(|_| super::console::unavailable()),
            None => Err(super::console::unavailable()),
        }
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
