//! Prometheus exposition of the hot-path counters (feature `metrics`).
//!
//! [`ProxyCollector`] is a `prometheus::core::Collector` that reads the reactors' atomics
//! ([`crate::observe::metrics`]) when it is scraped, sums them over reactors and puts the
//! names on: pool and database labels come from the configuration, the others from the
//! label enums. Nothing is registered or updated per event; the work happens on the
//! scraping thread, which takes no lock a reactor waits for (the credentials lock is read
//! only, the statement registry is read through its atomics).
//!
//! [`METRICS`] lists every family; the README's metric table is checked against it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use serde_json::json;

use crate::client::inspect::PinReason;
use crate::observe::metrics::{
    BackendState, CancelOutcome, CloseReason, PoolStats, PoolTotals, ReactorStats, RefuseReason,
    SQLSTATE_CLASSES,
};
use crate::server::Shared;

/// One metric family: name, help, type and label names.
#[derive(Debug)]
pub struct Meta {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

const fn meta(
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    help: &'static str,
) -> Meta {
    Meta {
        name,
        help,
        kind,
        labels,
    }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

const POOL: &[&str] = &["database", "user"];
const DATABASE: &[&str] = &["database"];

pub const CLIENTS_CONNECTED: Meta = meta(
    "pglink_clients_connected",
    GAUGE,
    &[],
    "Client connections open now, counted against max_client_connections.",
);
pub const CLIENTS_ACCEPTED: Meta = meta(
    "pglink_clients_accepted_total",
    COUNTER,
    &[],
    "Client connections accepted.",
);
pub const CLIENTS_REFUSED: Meta = meta(
    "pglink_clients_refused_total",
    COUNTER,
    &["reason"],
    "Client connections turned away before login, by reason.",
);
pub const LOGINS: Meta = meta(
    "pglink_client_logins_total",
    COUNTER,
    POOL,
    "Successful client logins.",
);
pub const AUTH_FAILURES: Meta = meta(
    "pglink_client_auth_failures_total",
    COUNTER,
    DATABASE,
    "Failed client password checks (unknown user or wrong password).",
);
pub const ERRORS_SENT: Meta = meta(
    "pglink_errors_sent_total",
    COUNTER,
    &["sqlstate_class"],
    "ErrorResponses pglink itself sent to clients, by SQLSTATE class.",
);
pub const POOL_CLIENTS: Meta = meta(
    "pglink_pool_clients",
    GAUGE,
    POOL,
    "Logged-in clients of the pool.",
);
pub const POOL_WAITING: Meta = meta(
    "pglink_pool_clients_waiting",
    GAUGE,
    POOL,
    "Clients waiting for a server connection.",
);
pub const POOL_SERVERS: Meta = meta(
    "pglink_pool_server_connections",
    GAUGE,
    &["database", "user", "state"],
    "Server connections by state.",
);
pub const POOL_TRANSACTIONS: Meta = meta(
    "pglink_pool_transactions_total",
    COUNTER,
    POOL,
    "Transactions (and statements outside one) that ran to their end on a server connection.",
);
pub const POOL_ACQUIRE_TIMEOUTS: Meta = meta(
    "pglink_pool_acquire_timeouts_total",
    COUNTER,
    POOL,
    "Waits for a server connection that ran out (the statement failed with 53300).",
);
pub const POOL_ACQUIRE_WAIT: Meta = meta(
    "pglink_pool_acquire_wait_seconds",
    HISTOGRAM,
    POOL,
    "Time from needing a server connection to getting one (0 when one was free).",
);
pub const POOL_TRANSACTION_TIME: Meta = meta(
    "pglink_pool_transaction_duration_seconds",
    HISTOGRAM,
    POOL,
    "Transactions (and statements outside one) on a server connection, from the first \
     message sent to the end.",
);
pub const POOL_QUERY_TIME: Meta = meta(
    "pglink_pool_query_duration_seconds",
    HISTOGRAM,
    POOL,
    "Client statements (a simple Query or an extended-protocol Execute) on a server \
     connection, from when the server began on one to the end of its answer.",
);
pub const POOL_SERVER_ERRORS: Meta = meta(
    "pglink_pool_server_errors_total",
    COUNTER,
    &["database", "user", "class"],
    "ErrorResponses servers sent to clients, by SQLSTATE class (first two characters; \
     `other` for a class PostgreSQL does not define).",
);
pub const POOL_CONNECT_ATTEMPTS: Meta = meta(
    "pglink_pool_server_connect_attempts_total",
    COUNTER,
    POOL,
    "Server connections pglink started to open.",
);
pub const POOL_CONNECT_FAILURES: Meta = meta(
    "pglink_pool_server_connect_failures_total",
    COUNTER,
    POOL,
    "Server connection attempts that failed (connect, TLS or login).",
);
pub const POOL_CLOSES: Meta = meta(
    "pglink_pool_server_closes_total",
    COUNTER,
    &["database", "user", "reason"],
    "Server connections closed after login, by reason.",
);
pub const POOL_PINNED: Meta = meta(
    "pglink_pool_pinned_sessions_total",
    COUNTER,
    &["database", "user", "reason"],
    "Sessions pinned to their server connection, by what pinned them.",
);
pub const POOL_PINNED_NOW: Meta = meta(
    "pglink_pool_pinned_sessions",
    GAUGE,
    &["database", "user", "reason"],
    "Sessions pinned to their server connection now, by what pinned them.",
);
pub const DB_SERVERS: Meta = meta(
    "pglink_database_server_connections",
    GAUGE,
    DATABASE,
    "Server connections open or opening for the database, all users together.",
);
pub const DB_SERVERS_MAX: Meta = meta(
    "pglink_database_server_connections_max",
    GAUGE,
    DATABASE,
    "pool_max_conns of the database.",
);
pub const STATEMENTS: Meta = meta(
    "pglink_prepared_statements",
    GAUGE,
    DATABASE,
    "Distinct named prepared statements in the database's shared registry.",
);
pub const STATEMENT_HITS: Meta = meta(
    "pglink_prepared_statement_hits_total",
    COUNTER,
    DATABASE,
    "Client Parses of a statement already in the registry.",
);
pub const STATEMENT_MISSES: Meta = meta(
    "pglink_prepared_statement_misses_total",
    COUNTER,
    DATABASE,
    "Client Parses that added a statement to the registry.",
);
pub const STATEMENT_EVICTIONS: Meta = meta(
    "pglink_prepared_statement_evictions_total",
    COUNTER,
    DATABASE,
    "Statements dropped from the registry to stay within prepared_statement_cache_size.",
);
pub const CANCELS: Meta = meta(
    "pglink_cancel_requests_total",
    COUNTER,
    &["outcome"],
    "CancelRequests received, by what became of them.",
);
pub const REACTOR_BYTES: Meta = meta(
    "pglink_reactor_bytes_total",
    COUNTER,
    &["reactor", "peer", "direction"],
    "Protocol bytes (after TLS decryption) received from and sent to clients and servers.",
);
pub const REACTOR_WAKEUPS: Meta = meta(
    "pglink_reactor_wakeups_total",
    COUNTER,
    &["reactor"],
    "Event loop turns (returns from epoll).",
);
pub const REACTOR_CPU: Meta = meta(
    "pglink_reactor_cpu_seconds_total",
    COUNTER,
    &["reactor"],
    "CPU time the reactor thread used (Linux, from /proc).",
);
pub const REACTORS_RUNNING: Meta = meta(
    "pglink_reactors_running",
    GAUGE,
    &[],
    "Reactor threads running their event loop.",
);

pub const CONFIG_RELOADS: Meta = meta(
    "pglink_config_reloads_total",
    COUNTER,
    &["result"],
    "Configuration reloads (SIGHUP, the embedding API), applied (success) or refused (failure).",
);

pub const TRACE_SPANS: Meta = meta(
    "pglink_trace_spans_total",
    COUNTER,
    &["outcome"],
    "OpenTelemetry spans: exported to the collector, dropped (the export queue was full) or \
     failed (the collector refused them or did not answer in time).",
);
pub const FLIGHT_SNAPSHOTS: Meta = meta(
    "pglink_flight_recorder_snapshots_total",
    COUNTER,
    &["trigger"],
    "Flight-recorder snapshots written, by trigger.",
);
pub const FLIGHT_FAILURES: Meta = meta(
    "pglink_flight_recorder_snapshot_failures_total",
    COUNTER,
    &[],
    "Flight-recorder snapshots whose file could not be written.",
);
pub const FLIGHT_BYTES: Meta = meta(
    "pglink_flight_recorder_bytes",
    GAUGE,
    &[],
    "Memory the flight recorder's rings hold (at most max_bytes).",
);
pub const FLIGHT_DROPPED: Meta = meta(
    "pglink_flight_recorder_events_dropped_total",
    COUNTER,
    &[],
    "Events the flight recorder let go before min_age because of max_bytes.",
);

/// Every family pglink exports.
pub const METRICS: &[&Meta] = &[
    &CLIENTS_CONNECTED,
    &CLIENTS_ACCEPTED,
    &CLIENTS_REFUSED,
    &LOGINS,
    &AUTH_FAILURES,
    &ERRORS_SENT,
    &POOL_CLIENTS,
    &POOL_WAITING,
    &POOL_SERVERS,
    &POOL_TRANSACTIONS,
    &POOL_ACQUIRE_TIMEOUTS,
    &POOL_ACQUIRE_WAIT,
    &POOL_TRANSACTION_TIME,
    &POOL_QUERY_TIME,
    &POOL_SERVER_ERRORS,
    &POOL_CONNECT_ATTEMPTS,
    &POOL_CONNECT_FAILURES,
    &POOL_CLOSES,
    &POOL_PINNED,
    &POOL_PINNED_NOW,
    &DB_SERVERS,
    &DB_SERVERS_MAX,
    &STATEMENTS,
    &STATEMENT_HITS,
    &STATEMENT_MISSES,
    &STATEMENT_EVICTIONS,
    &CANCELS,
    &REACTOR_BYTES,
    &REACTOR_WAKEUPS,
    &REACTOR_CPU,
    &REACTORS_RUNNING,
    &CONFIG_RELOADS,
    &TRACE_SPANS,
    &FLIGHT_SNAPSHOTS,
    &FLIGHT_FAILURES,
    &FLIGHT_BYTES,
    &FLIGHT_DROPPED,
];

/// Reads the reactors' counters at scrape time.
pub struct ProxyCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl ProxyCollector {
    pub fn new(shared: Arc<Shared>) -> ProxyCollector {
        let descs = METRICS
            .iter()
            .filter_map(|m| {
                Desc::new(
                    m.name.to_owned(),
                    m.help.to_owned(),
                    m.labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .ok()
            })
            .collect();
        ProxyCollector { shared, descs }
    }
}

impl Collector for ProxyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.shared)
    }
}

/// The families, in [`METRICS`] order; those without samples are left out.
fn families(shared: &Shared) -> Vec<MetricFamily> {
    let mut f = Families::default();
    let ctx = shared.ctx();
    let reactors = shared.stats();
    let sum = |get: &dyn Fn(&ReactorStats) -> u64| reactors.iter().map(|r| get(r)).sum::<u64>();

    f.gauge(&CLIENTS_CONNECTED, &[], shared.client_count() as f64);
    f.counter(&CLIENTS_ACCEPTED, &[], sum(&|r| r.clients_accepted.get()));
    for reason in RefuseReason::ALL {
        let n = sum(&|r| slot(&r.clients_refused, reason.index()));
        f.counter(&CLIENTS_REFUSED, &[reason.label()], n);
    }
    for (i, class) in SQLSTATE_CLASSES.iter().chain(&["other"]).enumerate() {
        let n = sum(&|r| slot(&r.errors_sent, i));
        if n > 0 {
            f.counter(&ERRORS_SENT, &[class], n);
        }
    }
    for db in ctx.databases.iter().filter(|d| !d.removed) {
        let name = db.name.as_str();
        let failures = sum(&|r| r.database(db.id).map_or(0, |d| d.auth_failures.get()));
        f.counter(&AUTH_FAILURES, &[name], failures);
        f.gauge(&DB_SERVERS, &[name], db.open_count() as f64);
        f.gauge(&DB_SERVERS_MAX, &[name], db.settings.max_conns as f64);
        let counts = db.context.registry.counts();
        f.gauge(&STATEMENTS, &[name], counts.statements as f64);
        f.counter(&STATEMENT_HITS, &[name], counts.hits);
        f.counter(&STATEMENT_MISSES, &[name], counts.misses);
        f.counter(&STATEMENT_EVICTIONS, &[name], counts.evictions);
    }
    for pool in ctx.pools.iter().filter(|p| !p.is_removed()) {
        let database = ctx.databases.get(pool.db).map_or("", |d| d.name.as_str());
        let user = pool.credentials().0.user.clone();
        let labels = [database, user.as_str()];
        let totals = PoolTotals::of(reactors, pool.id);
        let count = |get: &dyn Fn(&PoolStats) -> u64| totals.count(get);
        let level = |get: &dyn Fn(&PoolStats) -> i64| totals.level(get);
        let stats = totals.reactors();
        f.counter(&LOGINS, &labels, count(&|p| p.logins.get()));
        f.gauge(&POOL_CLIENTS, &labels, level(&|p| p.clients.get()) as f64);
        f.gauge(&POOL_WAITING, &labels, pool.total_waiting() as f64);
        for state in BackendState::ALL {
            let n = totals.backends(*state);
            f.gauge(&POOL_SERVERS, &[database, &user, state.label()], n as f64);
        }
        f.counter(
            &POOL_TRANSACTIONS,
            &labels,
            count(&|p| p.transactions.get()),
        );
        let timeouts = count(&|p| p.acquire_timeouts.get());
        f.counter(&POOL_ACQUIRE_TIMEOUTS, &labels, timeouts);
        f.histogram(&POOL_ACQUIRE_WAIT, &labels, stats, |p| &p.acquire_wait);
        f.histogram(&POOL_TRANSACTION_TIME, &labels, stats, |p| {
            &p.transaction_time
        });
        f.histogram(&POOL_QUERY_TIME, &labels, stats, |p| &p.query_time);
        for (i, class) in SQLSTATE_CLASSES.iter().chain(&["other"]).enumerate() {
            let n = count(&|p| slot(&p.server_errors, i));
            if n > 0 {
                f.counter(&POOL_SERVER_ERRORS, &[database, &user, class], n);
            }
        }
        let attempts = count(&|p| p.connect_attempts.get());
        f.counter(&POOL_CONNECT_ATTEMPTS, &labels, attempts);
        let failures = count(&|p| p.connect_failures.get());
        f.counter(&POOL_CONNECT_FAILURES, &labels, failures);
        for reason in CloseReason::ALL {
            let n = count(&|p| slot(&p.closes, reason.index()));
            f.counter(&POOL_CLOSES, &[database, &user, reason.label()], n);
        }
        for reason in PinReason::ALL {
            let labels = [database, user.as_str(), reason.label()];
            let n = count(&|p| slot(&p.pinned, reason.index()));
            f.counter(&POOL_PINNED, &labels, n);
            let now = level(&|p| p.pinned_now.get(reason.index()).map_or(0, |g| g.get()));
            f.gauge(&POOL_PINNED_NOW, &labels, now as f64);
        }
    }
    for outcome in CancelOutcome::ALL {
        let n = sum(&|r| slot(&r.cancels, outcome.index()));
        f.counter(&CANCELS, &[outcome.label()], n);
    }
    for (id, r) in reactors.iter().enumerate() {
        let reactor = id.to_string();
        for (peer, direction, n) in [
            ("client", "received", r.client_bytes_received.get()),
            ("client", "sent", r.client_bytes_sent.get()),
            ("server", "received", r.server_bytes_received.get()),
            ("server", "sent", r.server_bytes_sent.get()),
        ] {
            f.counter(&REACTOR_BYTES, &[&reactor, peer, direction], n);
        }
        f.counter(&REACTOR_WAKEUPS, &[&reactor], r.wakeups.get());
        if let Some(cpu) = r.thread_id().and_then(thread_cpu_time) {
            f.counter_f64(&REACTOR_CPU, &[&reactor], cpu.as_secs_f64());
        }
    }
    f.gauge(&REACTORS_RUNNING, &[], shared.reactors_running() as f64);
    for (result, n) in ["success", "failure"].iter().zip(&shared.reloads) {
        f.counter(&CONFIG_RELOADS, &[result], n.load(Relaxed));
    }
    #[cfg(feature = "otel")]
    let spans = shared
        .span_stats()
        .map_or([0; 3], |s| [s.exported(), s.dropped(), s.failed()]);
    #[cfg(not(feature = "otel"))]
    let spans = [0; 3];
    for (outcome, n) in ["exported", "dropped", "failed"].iter().zip(spans) {
        f.counter(&TRACE_SPANS, &[outcome], n);
    }
    if let Some(recorder) = shared.flight() {
        for trigger in crate::observe::flight::Trigger::ALL {
            f.counter(
                &FLIGHT_SNAPSHOTS,
                &[trigger.label()],
                recorder.snapshots(trigger),
            );
        }
        f.counter(&FLIGHT_FAILURES, &[], recorder.failures());
        f.gauge(&FLIGHT_BYTES, &[], recorder.bytes() as f64);
        f.counter(&FLIGHT_DROPPED, &[], recorder.dropped());
    }
    f.finish()
}

fn slot(counters: &[crate::observe::metrics::Counter], i: usize) -> u64 {
    counters.get(i).map_or(0, |c| c.get())
}

/// Families being filled, in the order they were first used.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, meta: &Meta) -> &mut MetricFamily {
        let at = match self.0.iter().position(|f| f.name() == meta.name) {
            Some(at) => at,
            None => {
                let mut family = MetricFamily::default();
                family.set_name(meta.name.to_owned());
                family.set_help(meta.help.to_owned());
                family.set_field_type(meta.kind);
                self.0.push(family);
                self.0.len() - 1
            }
        };
        &mut self.0[at]
    }

    fn sample(&mut self, meta: &Meta, values: &[&str], fill: impl FnOnce(&mut proto::Metric)) {
        debug_assert_eq!(meta.labels.len(), values.len(), "{}", meta.name);
        let labels = meta
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut metric = proto::Metric::from_label(labels);
        fill(&mut metric);
        self.family(meta).mut_metric().push(metric);
    }

    fn counter(&mut self, meta: &Meta, labels: &[&str], value: u64) {
        self.counter_f64(meta, labels, value as f64);
    }

    fn counter_f64(&mut self, meta: &Meta, labels: &[&str], value: f64) {
        self.sample(meta, labels, |m| {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        });
    }

    fn gauge(&mut self, meta: &Meta, labels: &[&str], value: f64) {
        self.sample(meta, labels, |m| {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        });
    }

    /// One histogram of a pool (`pick`), its reactors' copies merged.
    fn histogram<const N: usize>(
        &mut self,
        meta: &Meta,
        labels: &[&str],
        pools: &[&PoolStats],
        pick: impl Fn(&PoolStats) -> &crate::observe::metrics::Histogram<N>,
    ) {
        let Some(first) = pools.first() else {
            return;
        };
        let bounds = pick(first).bounds_us();
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum = Duration::ZERO;
        for p in pools {
            for (total, n) in counts.iter_mut().zip(pick(p).counts()) {
                *total += n;
            }
            sum += pick(p).sum();
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (bound, n) in bounds.iter().zip(&counts) {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound as f64 / 1e6);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        // The +Inf bucket is the count, which the encoder writes itself.
        let total = counts.iter().sum();
        self.sample(meta, labels, |m| {
            let mut h = proto::Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(total);
            h.set_sample_sum(sum.as_secs_f64());
            m.set_histogram(h);
        });
    }

    fn finish(self) -> Vec<MetricFamily> {
        self.0
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

/// CPU time of thread `tid` of this process: `schedstat` has nanoseconds on the CPU;
/// `stat` (user + system time in clock ticks, 100 per second on Linux) otherwise.
fn thread_cpu_time(tid: u64) -> Option<Duration> {
    let dir = format!("/proc/self/task/{tid}");
    if let Ok(text) = std::fs::read_to_string(format!("{dir}/schedstat"))
        && let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse().ok())
    {
        return Some(Duration::from_nanos(ns));
    }
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// The Prometheus text exposition of everything (what `prometheus.path` serves).
pub fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder as _;
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out) {
        log::warn!("metrics: cannot encode: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A registry holding the proxy's collector.
pub fn registry(shared: Arc<Shared>) -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    if let Err(e) = registry.register(Box::new(ProxyCollector::new(shared))) {
        log::warn!("metrics: cannot register the collector: {e}");
    }
    registry
}

/// `GET /debug/pools`: per pool, its database and user, clients, waiters, server
/// connections by state and the database's `pool_max_conns`.
pub fn pools_json(shared: &Shared) -> String {
    let ctx = shared.ctx();
    let pools: Vec<serde_json::Value> = ctx
        .pools
        .iter()
        .filter(|p| !p.is_removed())
        .map(|pool| {
            let db = ctx.databases.get(pool.db);
            let totals = PoolTotals::of(shared.stats(), pool.id);
            let backends: serde_json::Map<String, serde_json::Value> = BackendState::ALL
                .iter()
                .map(|&s| (s.label().to_owned(), json!(totals.backends(s))))
                .collect();
            json!({
                "database": db.map_or("", |d| d.name.as_str()),
                "user": pool.credentials().0.user,
                "clients": totals.level(|p| p.clients.get()),
                "clients_waiting": pool.total_waiting(),
                "backends": backends,
                "pool_max_conns": db.map_or(0, |d| d.settings.max_conns),
            })
        })
        .collect();
    let mut text = json!({ "pools": pools }).to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
