//! Named prepared statements under transaction pooling.
//!
//! A client's named statement must work on whichever backend it gets next, so pglink gives
//! every distinct statement — (query text, parameter type OIDs), compared in full, never by
//! hash alone — a server-side name `pglink_<id>` in a per-database [`Registry`] shared by all
//! clients of that database. Each client keeps its own names ([`ClientStatements`]); each
//! backend remembers which statements it has prepared ([`BackendStatements`], an LRU bounded
//! by `statement_cache_capacity`). Before a Bind or Describe of a statement its backend lacks,
//! the session injects the Parse; a client Parse of a statement the backend already has is
//! answered without a round trip.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::protocol::frontend;

/// Prefix of server-side statement names.
pub const SERVER_NAME_PREFIX: &[u8] = b"pglink_";

/// One distinct statement.
pub struct Statement {
    pub id: u64,
    /// The name on servers, `pglink_<id>`.
    pub server_name: Box<[u8]>,
    pub query: Box<[u8]>,
    pub param_types: Box<[u32]>,
    /// The Parse message that prepares it on a backend.
    pub parse_message: Box<[u8]>,
    /// A server accepted it, so a client's Parse of it can be answered locally.
    verified: AtomicBool,
    /// ParameterDescription followed by RowDescription or NoData, as a server sent them.
    description: Mutex<Option<Arc<[u8]>>>,
    /// Whether executing it changes session parameters or pins the session (looked at once).
    session_effects: std::sync::OnceLock<bool>,
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement")
            .field("id", &self.id)
            .field("query", &String::from_utf8_lossy(&self.query))
            .finish_non_exhaustive()
    }
}

impl Statement {
    fn new(id: u64, query: &[u8], param_types: &[u32]) -> Statement {
        let server_name = server_name(id);
        let mut parse_message = Vec::with_capacity(query.len() + 32 + 4 * param_types.len());
        frontend::parse(&mut parse_message, &server_name, query, param_types);
        Statement {
            id,
            server_name,
            query: query.into(),
            param_types: param_types.into(),
            parse_message: parse_message.into(),
            verified: AtomicBool::new(false),
            description: Mutex::new(None),
            session_effects: std::sync::OnceLock::new(),
        }
    }

    /// Whether its text changes session state (parameters, pinning), worth inspecting when
    /// it is executed. Computed once per statement.
    pub fn has_session_effects(&self) -> bool {
        *self.session_effects.get_or_init(|| {
            !super::inspect::touched_params(&self.query).is_empty()
                || super::inspect::pin_reason(&self.query).is_some()
        })
    }

    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    pub fn mark_verified(&self) {
        self.verified.store(true, Ordering::Release);
    }

    /// The cached Describe answer, if any.
    pub fn description(&self) -> Option<Arc<[u8]>> {
        self.description
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_description(&self, bytes: Option<Arc<[u8]>>) -> bool {
        let mut slot = self
            .description
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let had = slot.is_some();
        *slot = bytes;
        had
    }
}

/// `pglink_<id>`.
pub fn server_name(id: u64) -> Box<[u8]> {
    let mut name = SERVER_NAME_PREFIX.to_vec();
    name.extend_from_slice(id.to_string().as_bytes());
    name.into()
}

/// Statement ids are unique in the process, so names never collide on a backend.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Distinct statements of one database, shared by its clients.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
    /// `prepared_statement_cache_size`; 0 disables sharing.
    capacity: usize,
    /// `description_cache_capacity`: how many statements may keep a cached description.
    description_capacity: usize,
    descriptions: AtomicUsize,
}

#[derive(Debug, Default)]
struct RegistryInner {
    /// Buckets by hash of (query, types); entries compared in full.
    buckets: HashMap<u64, Vec<(Arc<Statement>, u64)>>,
    len: usize,
    tick: u64,
}

fn key_hash(query: &[u8], param_types: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    query.hash(&mut h);
    param_types.hash(&mut h);
    h.finish()
}

impl Registry {
    pub fn new(capacity: usize, description_capacity: usize) -> Registry {
        Registry {
            inner: Mutex::new(RegistryInner::default()),
            capacity,
            description_capacity,
            descriptions: AtomicUsize::new(0),
        }
    }

    /// The statement for this text and these parameter types, shared when sharing is on
    /// (otherwise a new one each time, private to the caller).
    pub fn get_or_insert(&self, query: &[u8], param_types: &[u32]) -> Arc<Statement> {
        if self.capacity == 0 {
            return Arc::new(Statement::new(
                NEXT_ID.fetch_add(1, Ordering::Relaxed),
                query,
                param_types,
            ));
        }
        let hash = key_hash(query, param_types);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(bucket) = inner.buckets.get_mut(&hash)
            && let Some(entry) = bucket
                .iter_mut()
                .find(|(s, _)| *s.query == *query && *s.param_types == *param_types)
        {
            entry.1 = tick;
            return entry.0.clone();
        }
        if inner.len >= self.capacity {
            self.evict_oldest(&mut inner);
        }
        let statement = Arc::new(Statement::new(
            NEXT_ID.fetch_add(1, Ordering::Relaxed),
            query,
            param_types,
        ));
        inner
            .buckets
            .entry(hash)
            .or_default()
            .push((statement.clone(), tick));
        inner.len += 1;
        statement
    }

    /// Drops the least recently used statement from the registry. Clients and backends that
    /// hold it keep using it; new Parses of its text get a new one.
    fn evict_oldest(&self, inner: &mut RegistryInner) {
        let oldest = inner
            .buckets
            .iter()
            .flat_map(|(&h, b)| b.iter().map(move |(s, t)| (h, s.id, *t)))
            .min_by_key(|&(_, _, t)| t);
        if let Some((hash, id, _)) = oldest
            && let Some(bucket) = inner.buckets.get_mut(&hash)
        {
            if let Some(pos) = bucket.iter().position(|(s, _)| s.id == id) {
                let (statement, _) = bucket.swap_remove(pos);
                if statement.set_description(None) {
                    self.descriptions.fetch_sub(1, Ordering::AcqRel);
                }
            }
            if bucket.is_empty() {
                inner.buckets.remove(&hash);
            }
            inner.len -= 1;
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Caches a statement's Describe answer if there is room.
    pub fn cache_description(&self, statement: &Statement, bytes: Arc<[u8]>) {
        if statement.description().is_some() {
            statement.set_description(Some(bytes));
            return;
        }
        let reserved = self
            .descriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.description_capacity).then_some(n + 1)
            })
            .is_ok();
        if reserved && statement.set_description(Some(bytes)) {
            // Someone else filled it meanwhile.
            self.descriptions.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets a statement's description (its result type changed).
    pub fn forget_description(&self, statement: &Statement) {
        if statement.set_description(None) {
            self.descriptions.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets every cached description (after DDL went through this database).
    pub fn forget_all_descriptions(&self) {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (statement, _) in inner.buckets.values().flatten() {
            if statement.set_description(None) {
                self.descriptions.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    names: HashMap<Box<[u8]>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    pub fn insert(&mut self, name: &[u8], statement: Arc<Statement>) {
        self.names.insert(name.into(), statement);
    }

    /// Removes `name` if it still refers to statement `id` (undoing a failed Parse).
    pub fn remove_if(&mut self, name: &[u8], id: u64) {
        if self.names.get(name).is_some_and(|s| s.id == id) {
            self.names.remove(name);
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.names.remove(name).is_some()
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The statements one backend has prepared, least recently used evicted first.
#[derive(Debug)]
pub struct BackendStatements {
    /// id → last use.
    prepared: HashMap<u64, u64>,
    tick: u64,
    capacity: usize,
}

impl BackendStatements {
    /// `statement_cache_capacity`. With 0 nothing is kept between lendings: statements are
    /// prepared when used and closed before the backend goes back to the pool.
    pub fn new(capacity: usize) -> BackendStatements {
        BackendStatements {
            prepared: HashMap::new(),
            tick: 0,
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether it is prepared (and marks it used).
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.prepared.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.prepared.contains_key(&id)
    }

    /// Records `id` as prepared; returns the statement to close first when over capacity.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let evict = (self.capacity > 0
            && self.prepared.len() >= self.capacity
            && !self.prepared.contains_key(&id))
        .then(|| {
            self.prepared
                .iter()
                .min_by_key(|&(_, &t)| t)
                .map(|(&id, _)| id)
        })
        .flatten();
        if let Some(old) = evict {
            self.prepared.remove(&old);
        }
        self.prepared.insert(id, self.tick);
        evict
    }

    pub fn remove(&mut self, id: u64) {
        self.prepared.remove(&id);
    }

    pub fn clear(&mut self) {
        self.prepared.clear();
    }

    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }

    /// Everything prepared (to close when nothing may be kept).
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.prepared.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_and_types_share_one_statement() {
        let r = Registry::new(10, 10);
        let a = r.get_or_insert(b"SELECT $1", &[23]);
        let b = r.get_or_insert(b"SELECT $1", &[23]);
        let c = r.get_or_insert(b"SELECT $1", &[20]);
        let d = r.get_or_insert(b"SELECT $1 ", &[23]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id, "different parameter types");
        assert_ne!(a.id, d.id, "different text");
        assert_eq!(r.len(), 3);
        assert!(a.server_name.starts_with(b"pglink_"));
        assert!(a.parse_message.windows(9).any(|w| w == b"SELECT $1"));
    }

    #[test]
    fn colliding_hashes_still_compare_full_text() {
        // Force two statements into one bucket and check lookups compare the text.
        let r = Registry::new(10, 10);
        let a = r.get_or_insert(b"SELECT 1", &[]);
        {
            let mut inner = r.inner.lock().unwrap();
            let bucket = inner.buckets.remove(&key_hash(b"SELECT 1", &[])).unwrap();
            inner.buckets.insert(key_hash(b"SELECT 2", &[]), bucket);
        }
        let b = r.get_or_insert(b"SELECT 2", &[]);
        assert_ne!(a.id, b.id, "a bare hash match must not return another text");
    }

    #[test]
    fn registry_is_bounded_and_zero_disables_sharing() {
        let r = Registry::new(2, 2);
        let a = r.get_or_insert(b"a", &[]);
        r.get_or_insert(b"b", &[]);
        r.get_or_insert(b"a", &[]); // a is now more recent than b
        r.get_or_insert(b"c", &[]); // evicts b
        assert_eq!(r.len(), 2);
        assert!(Arc::ptr_eq(&a, &r.get_or_insert(b"a", &[])));
        let unshared = Registry::new(0, 0);
        let x = unshared.get_or_insert(b"a", &[]);
        let y = unshared.get_or_insert(b"a", &[]);
        assert_ne!(x.id, y.id);
        assert!(unshared.is_empty());
    }

    #[test]
    fn description_cache_is_bounded() {
        let r = Registry::new(10, 1);
        let a = r.get_or_insert(b"a", &[]);
        let b = r.get_or_insert(b"b", &[]);
        r.cache_description(&a, Arc::from(&b"tn"[..]));
        r.cache_description(&b, Arc::from(&b"tn"[..]));
        assert!(a.description().is_some());
        assert!(b.description().is_none(), "capacity 1");
        r.forget_description(&a);
        r.cache_description(&b, Arc::from(&b"tT"[..]));
        assert_eq!(b.description().as_deref(), Some(&b"tT"[..]));
        r.forget_all_descriptions();
        assert!(b.description().is_none());
        r.cache_description(&a, Arc::from(&b"tn"[..]));
        assert!(a.description().is_some(), "room again after forgetting");
    }

    #[test]
    fn backend_lru_evicts_least_recently_used() {
        let mut b = BackendStatements::new(2);
        assert_eq!(b.insert(1), None);
        assert_eq!(b.insert(2), None);
        assert!(b.touch(1));
        assert_eq!(b.insert(3), Some(2));
        assert!(b.contains(1) && b.contains(3) && !b.contains(2));
        assert_eq!(b.insert(3), None, "re-inserting does not evict");
        b.remove(1);
        assert_eq!(b.len(), 1);
        let mut unlimited_zero = BackendStatements::new(0);
        assert_eq!(unlimited_zero.insert(1), None);
        assert_eq!(
            unlimited_zero.insert(2),
            None,
            "0 keeps within a lending; closed at release"
        );
    }

    #[test]
    fn client_names_undo_only_their_own_statement() {
        let r = Registry::new(10, 10);
        let a = r.get_or_insert(b"a", &[]);
        let b = r.get_or_insert(b"b", &[]);
        let mut c = ClientStatements::default();
        c.insert(b"s", a.clone());
        c.remove_if(b"s", b.id);
        assert!(c.contains(b"s"));
        c.remove_if(b"s", a.id);
        assert!(!c.contains(b"s"));
    }
}
