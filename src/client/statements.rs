//! Named prepared statements under transaction pooling.
//!
//! A client's named statement must work on whichever backend it gets next, so pglink gives
//! every distinct statement — (query text, parameter type OIDs, the client's `search_path`),
//! compared in full, never by hash alone — a server-side name `pglink_<id>` in a
//! per-database [`Registry`] shared by all clients of that database.
//!
//! The `search_path` is part of the key because it decides what the text means: the same
//! text under two paths may name two tables with different columns. PostgreSQL parses a
//! prepared statement again when the path it was planned under changes, so one server
//! statement shared by clients with different paths would be re-planned at every change
//! of client (and fail with 0A000 where the columns differ), and a description cached for
//! one path would be handed to a client of another. The client's value when it sends the
//! Parse counts (as pglink knows it: from its startup parameters and settings read back
//! after its transactions, so a path changed earlier in the same transaction is not seen). Each client keeps its own names ([`ClientStatements`]); each
//! backend remembers which statements it has prepared ([`BackendStatements`], an LRU bounded
//! by `statement_cache_capacity`). Before a Bind or Describe of a statement its backend lacks,
//! the session injects the Parse; a client Parse of a statement the backend already has is
//! answered without a round trip.
//!
//! Result types: PostgreSQL fixes a statement's result columns when it is prepared, and if
//! DDL later changes them it fails the statement with 0A000 "cached plan must not change
//! result type" rather than return rows of another shape; drivers that cache descriptions
//! (tokio-postgres, asyncpg, JDBC) rely on this. pglink keeps the same promise across
//! backends: each client name remembers the [`Shape`] (column names, types and modifiers)
//! the client was given, each backend the shape its copy was prepared with. Every Parse
//! pglink sends is followed by a Describe so the shape is always known; a client whose shape
//! differs from what a freshly prepared copy returns gets 0A000 instead of those rows.

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
    /// The `search_path` of the clients that share it (`None`: the server's default).
    pub search_path: Option<Box<str>>,
    /// The Parse message that prepares it on a backend.
    pub parse_message: Box<[u8]>,
    /// A server accepted it, so a client's Parse of it can be answered locally.
    verified: AtomicBool,
    /// ParameterDescription followed by RowDescription or NoData, as a server sent them,
    /// with the shape they describe.
    description: Mutex<Option<(Shape, Arc<[u8]>)>>,
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
    fn new(id: u64, key: &Key<'_>) -> Statement {
        let Key {
            query,
            param_types,
            search_path,
        } = *key;
        let server_name = server_name(id);
        let mut parse_message = Vec::with_capacity(query.len() + 32 + 4 * param_types.len());
        frontend::parse(&mut parse_message, &server_name, query, param_types);
        Statement {
            id,
            server_name,
            query: query.into(),
            param_types: param_types.into(),
            search_path: search_path.map(Into::into),
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

    /// The cached Describe answer, if it describes `shape`.
    pub fn description(&self, shape: Shape) -> Option<Arc<[u8]>> {
        match &*self
            .description
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some((s, bytes)) if *s == shape => Some(bytes.clone()),
            _ => None,
        }
    }

    /// The shape of the cached Describe answer (the latest a server gave), if any.
    pub fn cached_shape(&self) -> Option<Shape> {
        self.description
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(s, _)| *s)
    }

    fn set_description(&self, entry: Option<(Shape, Arc<[u8]>)>) -> bool {
        let mut slot = self
            .description
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let had = slot.is_some();
        *slot = entry;
        had
    }
}

/// What a statement returns, as PostgreSQL compares it: the result columns' names, type
/// OIDs and type modifiers (or "no rows"), hashed. Source table and column numbers are left
/// out: recreating a table changes them but not the result type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape(u64);

impl Shape {
    /// The shape a Describe (statement) answer gives: ParameterDescription, then
    /// RowDescription or NoData. `None` if the answer is not that.
    pub fn of_description(answer: &[u8]) -> Option<Shape> {
        use crate::protocol::backend::BackendMessage;
        use crate::protocol::framing::Frames;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut rows = None;
        for frame in Frames::new(answer, usize::MAX) {
            match frame.ok()?.backend().ok()? {
                BackendMessage::ParameterDescription(_) => {}
                BackendMessage::NoData => rows = Some(false),
                BackendMessage::RowDescription(r) => {
                    r.field_count().hash(&mut h);
                    for f in r.fields() {
                        (f.name, f.type_oid, f.type_modifier).hash(&mut h);
                    }
                    rows = Some(true);
                }
                _ => return None,
            }
        }
        rows?.hash(&mut h);
        Some(Shape(h.finish()))
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
    /// Counts DDL seen through pglink: a backend's record of a statement's shape from
    /// before the last one is not trusted for a client that has not seen a shape yet.
    schema_epoch: AtomicU64,
    /// Lookups and evictions, for metrics (read without the lock).
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    /// `RegistryInner::len`, readable without the lock.
    len: AtomicUsize,
}

/// What [`Registry::counts`] reports (the metrics read it).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryCounts {
    /// Distinct statements registered now.
    pub statements: usize,
    /// Parses of a statement already registered.
    pub hits: u64,
    /// Parses that registered a new statement.
    pub misses: u64,
    /// Statements dropped to stay within `prepared_statement_cache_size`.
    pub evictions: u64,
}

#[derive(Debug, Default)]
struct RegistryInner {
    /// Buckets by hash of (query, types); entries compared in full.
    buckets: HashMap<u64, Vec<(Arc<Statement>, u64)>>,
    len: usize,
    tick: u64,
}

/// What makes two Parses the same statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key<'a> {
    pub query: &'a [u8],
    pub param_types: &'a [u32],
    /// The client's `search_path`, if it has one other than the server's default.
    pub search_path: Option<&'a str>,
}

impl Key<'_> {
    fn hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        Hash::hash(self, &mut h);
        h.finish()
    }

    fn matches(&self, statement: &Statement) -> bool {
        *statement.query == *self.query
            && *statement.param_types == *self.param_types
            && statement.search_path.as_deref() == self.search_path
    }
}

impl Registry {
    pub fn new(capacity: usize, description_capacity: usize) -> Registry {
        Registry {
            inner: Mutex::new(RegistryInner::default()),
            capacity,
            description_capacity,
            descriptions: AtomicUsize::new(0),
            schema_epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            len: AtomicUsize::new(0),
        }
    }

    /// Registry size and lookup counts (without taking the lock). With sharing off
    /// (`prepared_statement_cache_size` 0) nothing is registered or counted.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn counts(&self) -> RegistryCounts {
        RegistryCounts {
            statements: self.len.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// The registered statement for this key, if there is one
    /// (never with sharing off). Not counted as a hit or miss: a Parse looked at before a
    /// backend is held is looked up again with [`Registry::get_or_insert`] once one is,
    /// unless [`Registry::count_hit`] says it was answered from what this found.
    pub fn find(&self, key: &Key<'_>) -> Option<Arc<Statement>> {
        if self.capacity == 0 {
            return None;
        }
        let hash = key.hash();
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner
            .buckets
            .get_mut(&hash)?
            .iter_mut()
            .find(|(s, _)| key.matches(s))?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    /// A Parse was answered from a statement [`Registry::find`] returned.
    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// The statement for this key, shared when sharing is on
    /// (otherwise a new one each time, private to the caller). Counts a hit or a miss.
    pub fn get_or_insert(&self, key: &Key<'_>) -> Arc<Statement> {
        if self.capacity == 0 {
            return Arc::new(Statement::new(NEXT_ID.fetch_add(1, Ordering::Relaxed), key));
        }
        let hash = key.hash();
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(bucket) = inner.buckets.get_mut(&hash)
            && let Some(entry) = bucket.iter_mut().find(|(s, _)| key.matches(s))
        {
            entry.1 = tick;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return entry.0.clone();
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if inner.len >= self.capacity {
            self.evict_oldest(&mut inner);
        }
        let statement = Arc::new(Statement::new(NEXT_ID.fetch_add(1, Ordering::Relaxed), key));
        inner
            .buckets
            .entry(hash)
            .or_default()
            .push((statement.clone(), tick));
        inner.len += 1;
        self.len.store(inner.len, Ordering::Relaxed);
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
            self.len.store(inner.len, Ordering::Relaxed);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Caches a statement's Describe answer (of `shape`) if there is room; a newer answer
    /// replaces an older one.
    pub fn cache_description(&self, statement: &Statement, shape: Shape, bytes: Arc<[u8]>) {
        if statement.cached_shape().is_some() {
            statement.set_description(Some((shape, bytes)));
            return;
        }
        let reserved = self
            .descriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.description_capacity).then_some(n + 1)
            })
            .is_ok();
        if reserved && statement.set_description(Some((shape, bytes))) {
            // Someone else filled it meanwhile.
            self.descriptions.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets a statement's cached description (a server reported its plan stale).
    pub fn forget_description(&self, statement: &Statement) {
        if statement.set_description(None) {
            self.descriptions.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// DDL went through this database: cached descriptions may be out of date, and so may
    /// every backend's record of its statements' shapes.
    pub fn schema_changed(&self) {
        self.schema_epoch.fetch_add(1, Ordering::AcqRel);
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

    pub fn schema_epoch(&self) -> u64 {
        self.schema_epoch.load(Ordering::Acquire)
    }
}

/// A client's name for a statement.
#[derive(Debug, Clone)]
pub struct ClientStatement {
    pub statement: Arc<Statement>,
    /// The result shape the client was given; `None` until a server's answer shows it.
    pub shape: Option<Shape>,
    /// When the name was made, as a request sequence number (`Relay::pushed`): a
    /// DEALLOCATE ALL sent before that does not remove it.
    pub since: u64,
}

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    names: HashMap<Box<[u8]>, ClientStatement>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&ClientStatement> {
        self.names.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    pub fn insert(
        &mut self,
        name: &[u8],
        statement: Arc<Statement>,
        shape: Option<Shape>,
        since: u64,
    ) {
        self.names.insert(
            name.into(),
            ClientStatement {
                statement,
                shape,
                since,
            },
        );
    }

    /// The client will learn `name`'s shape anew (it asks for it, or its batch describes
    /// the portal before running it).
    pub fn forget_shape(&mut self, name: &[u8]) {
        if let Some(entry) = self.names.get_mut(name) {
            entry.shape = None;
        }
    }

    /// `name` now has `shape` (it is about to be shown rows of it).
    pub fn set_shape(&mut self, name: &[u8], shape: Shape) {
        if let Some(entry) = self.names.get_mut(name) {
            entry.shape = Some(shape);
        }
    }

    /// A server showed statement `id`'s shape: names that had none now have it.
    pub fn learn_shape(&mut self, id: u64, shape: Shape) {
        for entry in self.names.values_mut() {
            if entry.statement.id == id && entry.shape.is_none() {
                entry.shape = Some(shape);
            }
        }
    }

    /// Removes `name` if it still refers to statement `id` (undoing a failed Parse).
    pub fn remove_if(&mut self, name: &[u8], id: u64) {
        if self.names.get(name).is_some_and(|s| s.statement.id == id) {
            self.names.remove(name);
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.names.remove(name).is_some()
    }

    pub fn take(&mut self, name: &[u8]) -> Option<ClientStatement> {
        self.names.remove(name)
    }

    /// Gives `name` back its `previous` statement (or none) if it still refers to statement
    /// `id` (undoing a Parse the server skipped).
    pub fn restore_if(&mut self, name: &[u8], id: u64, previous: Option<ClientStatement>) {
        if self.names.get(name).is_some_and(|s| s.statement.id == id) {
            match previous {
                Some(p) => self.names.insert(name.into(), p),
                None => self.names.remove(name),
            };
        }
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    /// Removes the names made before request `seq` (a DEALLOCATE ALL the server ran).
    pub fn forget_up_to(&mut self, seq: u64) {
        self.names.retain(|_, s| s.since > seq);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What a backend knows of the result shape of a statement it has prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendShape {
    /// Prepared in this lending; the Describe answer is on its way.
    Pending,
    /// As a Describe showed, when the schema epoch was `epoch`.
    Known { shape: Shape, epoch: u64 },
    /// The server reported the statement's plan stale: prepare it again before use.
    Stale,
}

/// The statements one backend has prepared, least recently used evicted first.
#[derive(Debug)]
pub struct BackendStatements {
    /// id → (last use, shape).
    prepared: HashMap<u64, (u64, BackendShape)>,
    tick: u64,
    capacity: usize,
    /// How many are `Pending`.
    pending: usize,
}

impl BackendStatements {
    /// `statement_cache_capacity`. With 0 nothing is kept between lendings: statements are
    /// prepared when used and closed before the backend goes back to the pool.
    pub fn new(capacity: usize) -> BackendStatements {
        BackendStatements {
            prepared: HashMap::new(),
            tick: 0,
            capacity,
            pending: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Its shape if it is prepared (and marks it used).
    pub fn touch(&mut self, id: u64) -> Option<BackendShape> {
        self.tick += 1;
        let tick = self.tick;
        self.prepared.get_mut(&id).map(|(t, shape)| {
            *t = tick;
            *shape
        })
    }

    pub fn contains(&self, id: u64) -> bool {
        self.prepared.contains_key(&id)
    }

    /// Records `id` as being prepared (shape pending); returns the statement to close first
    /// when over capacity.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let evict = (self.capacity > 0
            && self.prepared.len() >= self.capacity
            && !self.prepared.contains_key(&id))
        .then(|| {
            self.prepared
                .iter()
                .min_by_key(|&(_, &(t, _))| t)
                .map(|(&id, _)| id)
        })
        .flatten();
        if let Some(old) = evict {
            self.remove(old);
        }
        let previous = self.prepared.insert(id, (self.tick, BackendShape::Pending));
        if !matches!(previous, Some((_, BackendShape::Pending))) {
            self.pending += 1;
        }
        evict
    }

    /// Sets the shape of a prepared statement (no-op if it is not prepared).
    pub fn set_shape(&mut self, id: u64, shape: BackendShape) {
        if let Some((_, s)) = self.prepared.get_mut(&id) {
            match (*s == BackendShape::Pending, shape == BackendShape::Pending) {
                (true, false) => self.pending -= 1,
                (false, true) => self.pending += 1,
                _ => {}
            }
            *s = shape;
        }
    }

    /// Shapes still pending when a lending ends were never read: those copies are treated
    /// as stale (prepared afresh when next used).
    pub fn settle_pending(&mut self) {
        if self.pending == 0 {
            return;
        }
        for (_, shape) in self.prepared.values_mut() {
            if *shape == BackendShape::Pending {
                *shape = BackendShape::Stale;
            }
        }
        self.pending = 0;
    }

    pub fn remove(&mut self, id: u64) {
        if let Some((_, BackendShape::Pending)) = self.prepared.remove(&id) {
            self.pending -= 1;
        }
    }

    pub fn clear(&mut self) {
        self.prepared.clear();
        self.pending = 0;
    }

    /// Forgets every statement but those in `keep` (the server dropped the others).
    pub fn retain_only(&mut self, keep: &[u64]) {
        let pending = &mut self.pending;
        self.prepared.retain(|id, (_, shape)| {
            let kept = keep.contains(id);
            if !kept && *shape == BackendShape::Pending {
                *pending -= 1;
            }
            kept
        });
    }

    #[cfg(test)]
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

    impl Registry {
        fn get_text(&self, query: &[u8], param_types: &[u32]) -> Arc<Statement> {
            self.get_or_insert(&Key {
                query,
                param_types,
                search_path: None,
            })
        }

        fn find_text(&self, query: &[u8], param_types: &[u32]) -> Option<Arc<Statement>> {
            self.find(&Key {
                query,
                param_types,
                search_path: None,
            })
        }
    }

    fn key_hash(query: &[u8], param_types: &[u32]) -> u64 {
        Key {
            query,
            param_types,
            search_path: None,
        }
        .hash()
    }

    #[test]
    fn same_text_and_types_share_one_statement() {
        let r = Registry::new(10, 10);
        let a = r.get_text(b"SELECT $1", &[23]);
        let b = r.get_text(b"SELECT $1", &[23]);
        let c = r.get_text(b"SELECT $1", &[20]);
        let d = r.get_text(b"SELECT $1 ", &[23]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id, "different parameter types");
        assert_ne!(a.id, d.id, "different text");
        assert_eq!(r.len(), 3);
        assert!(a.server_name.starts_with(b"pglink_"));
        assert!(a.parse_message.windows(9).any(|w| w == b"SELECT $1"));
    }

    #[test]
    fn the_search_path_is_part_of_the_key() {
        let r = Registry::new(10, 10);
        let key = |search_path| Key {
            query: b"SELECT * FROM t",
            param_types: &[],
            search_path,
        };
        let default = r.get_or_insert(&key(None));
        let a = r.get_or_insert(&key(Some("a")));
        let b = r.get_or_insert(&key(Some("b")));
        assert_ne!(default.id, a.id);
        assert_ne!(a.id, b.id, "one text, two meanings");
        assert!(Arc::ptr_eq(&a, &r.get_or_insert(&key(Some("a")))));
        assert_eq!(b.search_path.as_deref(), Some("b"));
    }

    #[test]
    fn colliding_hashes_still_compare_full_text() {
        // Force two statements into one bucket and check lookups compare the text.
        let r = Registry::new(10, 10);
        let a = r.get_text(b"SELECT 1", &[]);
        {
            let mut inner = r.inner.lock().unwrap();
            let bucket = inner.buckets.remove(&key_hash(b"SELECT 1", &[])).unwrap();
            inner.buckets.insert(key_hash(b"SELECT 2", &[]), bucket);
        }
        let b = r.get_text(b"SELECT 2", &[]);
        assert_ne!(a.id, b.id, "a bare hash match must not return another text");
    }

    #[test]
    fn registry_is_bounded_and_zero_disables_sharing() {
        let r = Registry::new(2, 2);
        let a = r.get_text(b"a", &[]);
        r.get_text(b"b", &[]);
        r.get_text(b"a", &[]); // a is now more recent than b
        r.get_text(b"c", &[]); // evicts b
        assert_eq!(r.len(), 2);
        let counts = r.counts();
        assert_eq!(
            counts,
            RegistryCounts {
                statements: 2,
                hits: 1,
                misses: 3,
                evictions: 1
            }
        );
        assert!(Arc::ptr_eq(&a, &r.get_text(b"a", &[])));
        let found = r.find_text(b"a", &[]).unwrap();
        assert!(Arc::ptr_eq(&a, &found));
        assert!(r.find_text(b"b", &[]).is_none(), "evicted");
        assert_eq!(r.counts().hits, 2, "find itself counts nothing");
        r.count_hit();
        assert_eq!(r.counts().hits, 3);
        let unshared = Registry::new(0, 0);
        let x = unshared.get_text(b"a", &[]);
        let y = unshared.get_text(b"a", &[]);
        assert_ne!(x.id, y.id);
        assert!(unshared.is_empty());
        assert!(unshared.find_text(b"a", &[]).is_none());
    }

    /// ParameterDescription (no parameters) + RowDescription of `columns` (name, type), or
    /// NoData without columns.
    fn describe_answer(columns: &[(&str, u32)]) -> Vec<u8> {
        let message = |tag: u8, body: &[u8]| {
            let mut m = vec![tag];
            m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let mut out = message(b't', &[0, 0]);
        if columns.is_empty() {
            out.extend(message(b'n', &[]));
        } else {
            let mut body = (columns.len() as u16).to_be_bytes().to_vec();
            for (i, (name, oid)) in columns.iter().enumerate() {
                body.extend_from_slice(name.as_bytes());
                body.push(0);
                body.extend_from_slice(&(1000 + i as u32).to_be_bytes()); // table OID
                body.extend_from_slice(&(i as i16 + 1).to_be_bytes()); // column
                body.extend_from_slice(&oid.to_be_bytes());
                body.extend_from_slice(&(-1i16).to_be_bytes()); // size
                body.extend_from_slice(&(-1i32).to_be_bytes()); // modifier
                body.extend_from_slice(&0i16.to_be_bytes()); // format
            }
            out.extend(message(b'T', &body));
        }
        out
    }

    #[test]
    fn shapes_compare_names_and_types_but_not_source_tables() {
        let a = Shape::of_description(&describe_answer(&[("id", 23), ("name", 25)])).unwrap();
        let same = Shape::of_description(&describe_answer(&[("id", 23), ("name", 25)])).unwrap();
        let wider = Shape::of_description(&describe_answer(&[("id", 23), ("name", 25), ("x", 25)]))
            .unwrap();
        let retyped = Shape::of_description(&describe_answer(&[("id", 20), ("name", 25)])).unwrap();
        let none = Shape::of_description(&describe_answer(&[])).unwrap();
        assert_eq!(a, same);
        assert_ne!(a, wider);
        assert_ne!(a, retyped);
        assert_ne!(a, none);
        assert_eq!(Shape::of_description(b"garbage"), None);
        let mut with_table = describe_answer(&[("id", 23), ("name", 25)]);
        // The first field's table OID sits after "t" header+count, "T" header+count, "id\0".
        let at = 7 + 7 + 3;
        with_table[at..at + 4].copy_from_slice(&4242u32.to_be_bytes());
        assert_eq!(Shape::of_description(&with_table), Some(a));
    }

    #[test]
    fn description_cache_is_bounded_and_keyed_by_shape() {
        let r = Registry::new(10, 1);
        let a = r.get_text(b"a", &[]);
        let b = r.get_text(b"b", &[]);
        let answer: Arc<[u8]> = describe_answer(&[("x", 23)]).into();
        let shape = Shape::of_description(&answer).unwrap();
        let other = Shape::of_description(&describe_answer(&[("y", 23)])).unwrap();
        r.cache_description(&a, shape, answer.clone());
        r.cache_description(&b, shape, answer.clone());
        assert!(a.description(shape).is_some());
        assert!(
            a.description(other).is_none(),
            "another shape is not answered"
        );
        assert!(b.description(shape).is_none(), "capacity 1");
        let epoch = r.schema_epoch();
        r.schema_changed();
        assert_eq!(r.schema_epoch(), epoch + 1);
        assert!(a.cached_shape().is_none());
        r.cache_description(&b, other, answer);
        assert_eq!(b.cached_shape(), Some(other), "room again after forgetting");
    }

    #[test]
    fn clients_learn_shapes_they_lack() {
        let r = Registry::new(10, 10);
        let a = r.get_text(b"a", &[]);
        let shape = Shape::of_description(&describe_answer(&[("x", 23)])).unwrap();
        let old = Shape::of_description(&describe_answer(&[("x", 20)])).unwrap();
        let mut c = ClientStatements::default();
        c.insert(b"new", a.clone(), None, 0);
        c.insert(b"old", a.clone(), Some(old), 0);
        c.learn_shape(a.id, shape);
        assert_eq!(c.get(b"new").unwrap().shape, Some(shape));
        assert_eq!(
            c.get(b"old").unwrap().shape,
            Some(old),
            "a shape seen is kept"
        );
    }

    #[test]
    fn backend_lru_evicts_least_recently_used() {
        let mut b = BackendStatements::new(2);
        assert_eq!(b.insert(1), None);
        assert_eq!(b.insert(2), None);
        assert_eq!(b.touch(1), Some(BackendShape::Pending));
        assert_eq!(b.touch(9), None);
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
    fn backend_shapes_pending_known_stale() {
        let mut b = BackendStatements::new(10);
        b.insert(1);
        b.insert(2);
        assert_eq!(b.pending, 2);
        b.set_shape(1, BackendShape::Stale);
        assert_eq!(b.touch(1), Some(BackendShape::Stale));
        b.settle_pending();
        assert_eq!(b.touch(2), Some(BackendShape::Stale), "never read: stale");
        assert_eq!(b.pending, 0);
        b.insert(2);
        assert_eq!(b.pending, 1);
        b.remove(2);
        b.remove(2);
        assert_eq!(b.pending, 0);
        b.insert(3);
        b.clear();
        assert_eq!((b.pending, b.len()), (0, 0));
    }

    #[test]
    fn a_server_reset_keeps_only_what_came_after_it() {
        let r = Registry::new(10, 10);
        let (a, b) = (r.get_text(b"a", &[]), r.get_text(b"b", &[]));
        let mut c = ClientStatements::default();
        c.insert(b"before", a.clone(), None, 3);
        c.insert(b"after", b.clone(), None, 4);
        c.forget_up_to(3);
        assert!(!c.contains(b"before") && c.contains(b"after"));
        let mut backend = BackendStatements::new(10);
        backend.insert(a.id);
        backend.insert(b.id);
        backend.set_shape(a.id, BackendShape::Stale);
        backend.retain_only(&[b.id]);
        assert!(!backend.contains(a.id) && backend.contains(b.id));
        backend.retain_only(&[]);
        assert_eq!((backend.len(), backend.pending), (0, 0));
    }

    #[test]
    fn client_names_undo_only_their_own_statement() {
        let r = Registry::new(10, 10);
        let a = r.get_text(b"a", &[]);
        let b = r.get_text(b"b", &[]);
        let mut c = ClientStatements::default();
        c.insert(b"s", a.clone(), None, 0);
        c.remove_if(b"s", b.id);
        assert!(c.contains(b"s"));
        c.remove_if(b"s", a.id);
        assert!(!c.contains(b"s"));
    }
}
