//! Pool state shared between reactors.
//!
//! Each reactor keeps its own idle backends and waiting clients per pool (see
//! `reactor::pool`); what must be global lives here, as atomics:
//! - the number of open (or opening) backends per database, which enforces `pool_max_conns`
//!   exactly across users and reactors (a slot is reserved with a compare-and-swap before a
//!   connection attempt starts and given back when the backend closes);
//! - per pool and per reactor, how many backends are idle and how many clients wait, so a
//!   reactor with a waiter can ask the one holding an idle backend to hand it over, and a
//!   reactor releasing a backend can send it where a client waits;
//! - the current credentials (secrets rotate) and the server parameters learnt from the first
//!   backend that logged in.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::backend::Target;
use crate::client::users::{DbId, PoolId};
use crate::client::{DatabaseContext, ParamList};

/// Pool settings of one database.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_conns: usize,
    pub min_idle: usize,
    pub acquire_timeout: Duration,
    pub max_lifetime: Option<Duration>,
    pub lifetime_jitter: Option<Duration>,
    pub max_idle_time: Option<Duration>,
    pub health_check_period: Option<Duration>,
    /// Prepared statements each backend keeps (`statement_cache_capacity`).
    pub statement_cache_capacity: usize,
}

/// The part of a [`Database`] that reloads keep.
#[derive(Debug, Default)]
struct DbShared {
    /// Backends open or being opened for this database, across users and reactors.
    open: AtomicUsize,
    /// PAUSE: no server connection is lent or opened; those that come back close.
    paused: AtomicBool,
    /// Bumped by RECONNECT: connections opened before are closed when next idle.
    reconnect: AtomicU64,
}

/// One configured database.
#[derive(Debug)]
pub struct Database {
    pub id: DbId,
    pub name: String,
    pub settings: PoolSettings,
    pub target: Arc<Target>,
    /// Shared by the database's sessions (prepared statements, parameter settings).
    pub context: Arc<DatabaseContext>,
    /// What stays with the database across reloads: its connection count, and the admin
    /// console's PAUSE and RECONNECT.
    shared: Arc<DbShared>,
    /// Pools of this database.
    pub pools: Vec<PoolId>,
    /// Removed from the configuration by a reload (its id stays taken).
    pub removed: bool,
}

impl Database {
    pub fn new(
        id: DbId,
        name: String,
        settings: PoolSettings,
        target: Arc<Target>,
        context: Arc<DatabaseContext>,
    ) -> Database {
        Database {
            id,
            name,
            settings,
            target,
            context,
            shared: Arc::default(),
            pools: Vec::new(),
            removed: false,
        }
    }

    /// The same database in a reloaded configuration: the connection count (and whatever
    /// `settings`, `target` and `context` the caller keeps) carries over.
    pub fn reloaded(
        &self,
        settings: PoolSettings,
        target: Arc<Target>,
        context: Arc<DatabaseContext>,
    ) -> Database {
        Database {
            id: self.id,
            name: self.name.clone(),
            settings,
            target,
            context,
            shared: self.shared.clone(),
            pools: Vec::new(),
            removed: false,
        }
    }

    /// This database, removed by a reload: its id stays taken so nothing is confused with
    /// it, and its connections are closed as they come back.
    pub fn tombstone(&self) -> Database {
        Database {
            removed: true,
            pools: self.pools.clone(),
            ..self.reloaded(
                self.settings.clone(),
                self.target.clone(),
                self.context.clone(),
            )
        }
    }

    /// Whether more connections are open than `pool_max_conns` allows now (a reload
    /// lowered it): connections coming back are closed instead of kept.
    pub fn over_limit(&self) -> bool {
        self.shared.open.load(Ordering::Acquire) > self.settings.max_conns
    }

    /// PAUSE (`true`) or RESUME (`false`).
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
    }

    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }

    /// RECONNECT: connections opened until now are closed as they become idle.
    pub fn reconnect(&self) {
        self.shared.reconnect.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts RECONNECTs; a server connection remembers the count it was opened under.
    pub fn reconnect_epoch(&self) -> u64 {
        self.shared.reconnect.load(Ordering::Acquire)
    }

    /// Reserves a connection slot if the database is below `pool_max_conns`.
    pub fn try_reserve(&self) -> bool {
        self.shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_conns).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back (the backend closed or its connection attempt failed).
    pub fn release_slot(&self) {
        let prev = self.shared.open.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev > 0, "connection slot released twice");
    }

    /// Connections open or opening (the metrics and the tests read it).
    #[cfg_attr(not(any(feature = "metrics", test, fuzzing)), allow(dead_code))]
    pub fn open_count(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }
}

/// User name and password a pool logs in with.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One (database, user) pool.
#[derive(Debug)]
pub struct Pool {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub id: PoolId,
    pub db: DbId,
    credentials: RwLock<Arc<Credentials>>,
    /// Bumped when the credentials change; backends logged in with older ones are closed.
    credentials_version: AtomicU64,
    params: RwLock<Option<Arc<ParamList>>>,
    /// Backends of this pool open or opening (all reactors).
    open: AtomicUsize,
    idle: Box<[AtomicU32]>,
    waiting: Box<[AtomicU32]>,
    /// Per reactor: when its oldest waiter started waiting (nanoseconds on the reactors'
    /// common clock, see [`Pool::set_waiting`]), or `u64::MAX` with nobody waiting.
    oldest_wait: Box<[AtomicU64]>,
    /// Its user (or database) was removed from the configuration by a reload.
    removed: AtomicBool,
}

impl Pool {
    pub fn new(id: PoolId, db: DbId, credentials: Credentials, reactors: usize) -> Pool {
        let counters = || (0..reactors).map(|_| AtomicU32::new(0)).collect();
        Pool {
            id,
            db,
            credentials: RwLock::new(Arc::new(credentials)),
            credentials_version: AtomicU64::new(0),
            params: RwLock::new(None),
            open: AtomicUsize::new(0),
            idle: counters(),
            waiting: counters(),
            oldest_wait: (0..reactors).map(|_| AtomicU64::new(u64::MAX)).collect(),
            removed: AtomicBool::new(false),
        }
    }

    /// Marks the pool removed by a reload (for good: a user added again gets a new pool).
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn credentials(&self) -> (Arc<Credentials>, u64) {
        let creds = self
            .credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (creds, self.credentials_version.load(Ordering::Acquire))
    }

    /// Replaces the credentials (secret rotation); returns whether they changed.
    pub fn set_credentials(&self, new: Credentials) -> bool {
        let mut slot = self
            .credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.user == new.user && slot.password == new.password {
            return false;
        }
        *slot = Arc::new(new);
        self.credentials_version.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub fn credentials_version(&self) -> u64 {
        self.credentials_version.load(Ordering::Acquire)
    }

    pub fn params(&self) -> Option<Arc<ParamList>> {
        self.params
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records parameters from a freshly logged-in backend (the first one wins; later ones
    /// refresh values such as server_version after a server upgrade).
    pub fn set_params(&self, params: Arc<ParamList>) {
        *self
            .params
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(params);
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn set_idle(&self, reactor: usize, n: usize) {
        if let Some(c) = self.idle.get(reactor) {
            c.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Release);
        }
    }

    /// Publishes a reactor's waiter count and when its oldest waiter started waiting.
    ///
    /// Times are durations since a reference instant all reactors share (the pool reads no
    /// clock): the reactors convert their `Instant`s to and from it.
    pub fn set_waiting(&self, reactor: usize, n: usize, oldest: Option<Duration>) {
        if let Some(c) = self.waiting.get(reactor) {
            c.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Release);
        }
        if let Some(c) = self.oldest_wait.get(reactor) {
            let nanos = oldest.map_or(u64::MAX, |t| {
                u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1)
            });
            c.store(nanos, Ordering::Release);
        }
    }

    /// The other reactor whose oldest waiter has waited longest, and since when (on the
    /// clock of [`Pool::set_waiting`]).
    pub fn oldest_waiter_elsewhere(&self, except: usize) -> Option<(usize, Duration)> {
        self.oldest_wait
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != except)
            .map(|(i, c)| (i, c.load(Ordering::Acquire)))
            .filter(|&(_, nanos)| nanos != u64::MAX)
            .min_by_key(|&(_, nanos)| nanos)
            .map(|(i, nanos)| (i, Duration::from_nanos(nanos)))
    }

    /// Another reactor with an idle backend of this pool, preferring the fullest.
    pub fn reactor_with_idle(&self, except: usize) -> Option<usize> {
        self.busiest(&self.idle, except)
    }

    /// Another reactor with clients waiting for this pool, preferring the longest queue.
    #[cfg(test)]
    pub fn reactor_with_waiters(&self, except: usize) -> Option<usize> {
        self.busiest(&self.waiting, except)
    }

    pub fn total_idle(&self) -> usize {
        self.idle
            .iter()
            .map(|c| c.load(Ordering::Acquire) as usize)
            .sum()
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn total_waiting(&self) -> usize {
        self.waiting
            .iter()
            .map(|c| c.load(Ordering::Acquire) as usize)
            .sum()
    }

    fn busiest(&self, counters: &[AtomicU32], except: usize) -> Option<usize> {
        counters
            .iter()
            .enumerate()
            .filter(|&(i, c)| i != except && c.load(Ordering::Acquire) > 0)
            .max_by_key(|(_, c)| c.load(Ordering::Acquire))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(max: usize) -> Database {
        let settings = PoolSettings {
            max_conns: max,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(1),
            max_lifetime: None,
            lifetime_jitter: None,
            max_idle_time: None,
            health_check_period: None,
            statement_cache_capacity: 8,
        };
        Database::new(
            0,
            "db".into(),
            settings,
            Arc::new(Target::for_tests()),
            Arc::new(DatabaseContext {
                registry: crate::client::statements::Registry::new(8, 8),
                track_extra: Vec::new(),
                overrides: Vec::new(),
                shared_params: Default::default(),
                cache_unnamed: false,
            }),
        )
    }

    #[test]
    fn capacity_is_exact_across_threads() {
        let db = Arc::new(db(5));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                std::thread::spawn(move || (0..1000).filter(|_| db.try_reserve()).count())
            })
            .collect();
        let reserved: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(reserved, 5);
        assert_eq!(db.open_count(), 5);
        db.release_slot();
        assert!(db.try_reserve());
        assert!(!db.try_reserve());
    }

    #[test]
    fn finds_other_reactors_with_idle_or_waiters() {
        let pool = Pool::new(
            0,
            0,
            Credentials {
                user: "u".into(),
                password: "p".into(),
            },
            3,
        );
        assert_eq!(pool.reactor_with_idle(0), None);
        pool.set_idle(0, 4);
        pool.set_idle(2, 1);
        assert_eq!(pool.reactor_with_idle(0), Some(2));
        assert_eq!(pool.reactor_with_idle(1), Some(0));
        let since = Duration::from_millis(7);
        pool.set_waiting(1, 2, Some(since));
        pool.set_waiting(2, 1, Some(since + Duration::from_millis(5)));
        assert_eq!(pool.reactor_with_waiters(0), Some(1));
        assert_eq!(pool.reactor_with_waiters(1), Some(2));
        assert_eq!(pool.oldest_waiter_elsewhere(0), Some((1, since)));
        assert_eq!(
            pool.oldest_waiter_elsewhere(1),
            Some((2, since + Duration::from_millis(5)))
        );
        pool.set_waiting(1, 0, None);
        assert_eq!(pool.oldest_waiter_elsewhere(0).map(|(r, _)| r), Some(2));
        assert_eq!(pool.total_idle(), 5);
    }

    #[test]
    fn credential_changes_bump_the_version() {
        let pool = Pool::new(
            0,
            0,
            Credentials {
                user: "u".into(),
                password: "a".into(),
            },
            1,
        );
        assert!(!pool.set_credentials(Credentials {
            user: "u".into(),
            password: "a".into()
        }));
        assert_eq!(pool.credentials_version(), 0);
        assert!(pool.set_credentials(Credentials {
            user: "u".into(),
            password: "b".into()
        }));
        assert_eq!(pool.credentials_version(), 1);
        assert_eq!(pool.credentials().0.password, "b");
    }
}
