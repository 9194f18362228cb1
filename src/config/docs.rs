//! The field table: every section and field of `pglink.json`, with its type, default and meaning.
//!
//! This table is the single source of the user documentation: `pglink -help` and the README's
//! configuration reference are rendered from it ([`help_text`], [`markdown`]). The loader also
//! walks it to check JSON types and to report unknown keys, so a field missing from the table is
//! flagged as unknown in every config that uses it, and `tests/config_table.rs` checks that
//! every field here round-trips through the typed structs (`src/config/types.rs`).
//!
//! To change the docs, edit this file and re-run `PGLINK_BLESS=1 cargo test --test config_docs`.

pub use super::render::{help_text, markdown, usage};

/// What a JSON value must look like; drives type checking and the "Type" column.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    String,
    /// A file or directory path (a string).
    Path,
    Bool,
    /// A whole number in `min..=max`.
    Integer {
        min: u64,
        max: u64,
    },
    /// A number in `min..=max`.
    Number {
        min: f64,
        max: f64,
    },
    /// See the "Durations" note.
    Duration,
    /// One of the values of an enum table.
    Enum(&'static EnumDoc),
    /// One listen address or an array of them.
    ListenList,
    /// One listen address.
    Listen,
    /// One address to connect to: `host:port`, or a unix socket file's absolute path.
    Address,
    /// `true`, `false` or a regular expression with a capture group.
    Regex,
    StringList,
    StringMap,
    /// A nested object.
    Section(&'static Section),
    /// An object whose values are all of one section (non-empty).
    Map(&'static Section),
    /// An array of objects of one section (non-empty).
    List(&'static Section),
}

/// Whether a field must be present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Required {
    Yes,
    No,
    /// Required in the situation described.
    When(&'static str),
}

/// The documented default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Default {
    /// No default: absent means "not set".
    None,
    /// A JSON literal equal to what the typed config holds when the field is absent.
    Json(&'static str),
    /// Behaviour that is not a single value (shown in italics).
    Text(&'static str),
}

/// One field of a section.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: Required,
    pub default: Default,
    pub doc: &'static str,
    /// Not in the original pglink contract; added by this implementation.
    pub extension: bool,
    /// Holds a secret: never printed (serialized as `"<redacted>"`).
    pub sensitive: bool,
}

impl Field {
    const fn new(name: &'static str, kind: Kind, doc: &'static str) -> Field {
        Field {
            name,
            kind,
            required: Required::No,
            default: Default::None,
            doc,
            extension: false,
            sensitive: false,
        }
    }
    const fn required(self) -> Field {
        Field {
            required: Required::Yes,
            ..self
        }
    }
    const fn required_when(self, when: &'static str) -> Field {
        Field {
            required: Required::When(when),
            ..self
        }
    }
    const fn default(self, json: &'static str) -> Field {
        Field {
            default: Default::Json(json),
            ..self
        }
    }
    const fn default_text(self, text: &'static str) -> Field {
        Field {
            default: Default::Text(text),
            ..self
        }
    }
    const fn extension(self) -> Field {
        Field {
            extension: true,
            ..self
        }
    }
    const fn sensitive(self) -> Field {
        Field {
            sensitive: true,
            ..self
        }
    }
}

/// One JSON object type.
#[derive(Debug)]
pub struct Section {
    /// Heading, e.g. `TLSConfig`.
    pub name: &'static str,
    /// Where it appears, e.g. `databases.<name>.backend`.
    pub location: &'static str,
    pub summary: &'static str,
    pub fields: &'static [Field],
}

impl Section {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A string enum's documented values.
#[derive(Debug)]
pub struct EnumDoc {
    pub name: &'static str,
    pub summary: &'static str,
    pub values: &'static [EnumValue],
}

#[derive(Debug)]
pub struct EnumValue {
    pub name: &'static str,
    pub doc: &'static str,
    /// `Some(message)` for a documented value that a config may not use.
    pub rejected: Option<&'static str>,
}

impl EnumDoc {
    /// The values a config may use.
    pub fn accepted(&self) -> impl Iterator<Item = &'static str> + use<> {
        let values: &'static [EnumValue] = self.values;
        values
            .iter()
            .filter(|v| v.rejected.is_none())
            .map(|v| v.name)
    }
}

/// A command-line flag.
#[derive(Debug)]
pub struct Flag {
    pub name: &'static str,
    pub arg: Option<&'static str>,
    pub aliases: &'static str,
    pub doc: &'static str,
    pub extension: bool,
}

/// A titled block of prose shown after the sections.
#[derive(Debug)]
pub struct Note {
    pub title: &'static str,
    pub body: &'static str,
}

const fn section(
    name: &'static str,
    location: &'static str,
    summary: &'static str,
    fields: &'static [Field],
) -> Section {
    Section {
        name,
        location,
        summary,
        fields,
    }
}

const fn int(min: u64, max: u64) -> Kind {
    Kind::Integer { min, max }
}

const U32: u64 = u32::MAX as u64;
const NO_MAX: u64 = i64::MAX as u64;

pub static FLAGS: &[Flag] = &[
    Flag {
        name: "-config",
        arg: Some("FILE"),
        aliases: "--config FILE, -config=FILE",
        doc: "The pglink.json file to load. Required unless -help is given.",
        extension: false,
    },
    Flag {
        name: "-json",
        arg: None,
        aliases: "--json",
        doc: "Write log lines as JSON objects instead of human-readable text.",
        extension: false,
    },
    Flag {
        name: "-check",
        arg: None,
        aliases: "--check",
        doc: "Load the configuration, resolve every secret, report what is wrong and exit \
              (status 0 when all is well) without starting the proxy. Useful in CI and before \
              a reload.",
        extension: true,
    },
    Flag {
        name: "-help",
        arg: None,
        aliases: "--help, -h",
        doc: "Print this documentation and exit.",
        extension: false,
    },
];

/// The top-level object; every other section hangs off it.
pub static CONFIG: Section = section(
    "Config",
    "top level",
    "The top-level object of the configuration file.",
    &[
        Field::new(
            "listen",
            Kind::ListenList,
            "Where pglink accepts client connections: one address or an array of addresses. \
             A port alone (`\"6432\"` or `\":6432\"`) listens on every IPv4 and IPv6 \
             interface; `\"127.0.0.1:6432\"`, `\"[::1]:6432\"` or `\"name:6432\"` listen on \
             that address only. An absolute path is a unix socket file to create: name it \
             `<dir>/.s.PGSQL.<port>` so that libpq's `host=<dir> port=<port>` finds it \
             (mode 0777; a stale file is replaced only if nothing answers on it; removed on \
             shutdown). Unix-socket clients are local, as in PostgreSQL: TLS is neither offered \
             nor required there.",
        )
        .default("\":16432\""),
        Field::new(
            "tls",
            Kind::Section(&TLS),
            "TLS for connections from clients. Without this object pglink offers TLS with a \
             self-signed certificate created in memory at startup, and still accepts clients \
             that do not use TLS.",
        )
        .default_text("prefer, in-memory self-signed certificate"),
        Field::new(
            "databases",
            Kind::Map(&DATABASE),
            "The databases clients can connect to, keyed by the database name clients put in \
             their connection string. Each entry names the PostgreSQL server connections are \
             forwarded to and the credentials pglink accepts. At least one entry is needed.",
        )
        .required(),
        Field::new(
            "auth_method",
            Kind::Enum(&AUTH_METHOD),
            "How clients authenticate to pglink; see AuthMethod.",
        )
        .default("\"scram-sha-256\""),
        Field::new(
            "scram_iterations",
            int(1, U32),
            "Hashing iterations for SCRAM-SHA-256. More iterations make a captured \
             authentication exchange harder to brute-force, and make each login cost the \
             client more CPU.",
        )
        .default("4096"),
        Field::new(
            "max_client_connections",
            int(1, U32),
            "The most clients connected at the same time. A client arriving beyond the limit \
             is turned away immediately with SQLSTATE 53300 (too_many_connections).",
        )
        .default("1000"),
        Field::new(
            "opentelemetry",
            Kind::Section(&OPENTELEMETRY),
            "Trace export over OTLP. Needs a build with the `otel` cargo feature.",
        )
        .default_text("no tracing"),
        Field::new(
            "prometheus",
            Kind::Section(&PROMETHEUS),
            "Serve Prometheus metrics over HTTP; having this object turns the endpoint on. \
             Needs a build with the `metrics` cargo feature.",
        )
        .default_text("no metrics endpoint"),
        Field::new(
            "flight_recorder",
            Kind::Section(&FLIGHT_RECORDER),
            "Keep a bounded in-memory trace of recent activity that can be saved for \
             post-mortem analysis; having this object turns it on.",
        )
        .default_text("off"),
        Field::new(
            "reactor_threads",
            int(0, 1024),
            "Number of event-loop threads serving connections. 0 starts one per CPU core.",
        )
        .default("0")
        .extension(),
        Field::new(
            "client_login_timeout",
            Kind::Duration,
            "Time a new client has from connecting until it is authenticated; pglink closes \
             connections that take longer, so stalled clients cannot pile up.",
        )
        .default("\"15s\"")
        .extension(),
        Field::new(
            "max_logins_in_progress",
            int(1, U32),
            "The most connections still logging in (TLS, startup, authentication) at the same \
             time, counted apart from `max_client_connections`: slow or silent clients can hold \
             at most this many slots until `client_login_timeout` closes them, and cannot \
             crowd out clients already logged in. A connection arriving beyond the limit is \
             turned away immediately with SQLSTATE 53300 (too_many_connections) and counted in \
             `pglink_clients_refused_total{reason=\"too_many_logins\"}`.",
        )
        .default("256")
        .extension(),
        Field::new(
            "secret_refresh_interval",
            Kind::Duration,
            "How often secrets kept in AWS Secrets Manager are fetched again, so rotated \
             credentials apply without a restart. If a refresh fails, a warning is logged and \
             the previous values stay in use. 0 fetches them only at startup.",
        )
        .default("\"5m\"")
        .extension(),
        Field::new(
            "admin_users",
            Kind::StringList,
            "Users who may log in to the admin console: the virtual database `pglink` \
             (`psql -h HOST -p PORT -U USER pglink`), with PgBouncer's SHOW, RELOAD, PAUSE, \
             RESUME, RECONNECT and SHUTDOWN commands. Each must be a user configured under some \
             database and logs in with that user's password. Other users are refused with \
             42501.",
        )
        .default("[]")
        .extension(),
        Field::new(
            "shutdown_timeout",
            Kind::Duration,
            "On SIGTERM or SIGINT pglink stops accepting connections, ends idle sessions with \
             FATAL 57P01 and lets open transactions finish for up to this long; then it closes \
             what is left and exits. A second signal exits at once.",
        )
        .default("\"30s\"")
        .extension(),
        Field::new(
            "peer_id",
            int(1, 16383),
            "This instance's id among several pglink instances behind one address (a load \
             balancer, or `listen_reuse_port` on one host). It is carried in every cancel key \
             pglink hands to clients, so that an instance receiving a CancelRequest for \
             another's session forwards it to that instance (see `peers`) instead of dropping \
             it. Give every instance a different id. See docs/scale-out.md.",
        )
        .default_text("no peering: cancel keys are wholly random")
        .extension(),
        Field::new(
            "peers",
            Kind::Map(&PEER),
            "The instances cancel requests are forwarded to, keyed by their `peer_id` \
             (`\"1\"` to `\"16383\"`). This instance's own entry may be listed and is ignored, \
             so every instance can share one list. Needs `peer_id`. A cancel for an id not \
             listed is dropped and counted (`pglink_cancel_requests_total{outcome=\"unknown_peer\"}`); \
             a forwarded cancel is never forwarded again (`outcome=\"loop\"`). A reload \
             applies changes.",
        )
        .default_text("none")
        .extension(),
        Field::new(
            "listen_reuse_port",
            Kind::Bool,
            "Let several processes listen on the same TCP port (SO_REUSEPORT): the kernel \
             spreads new connections over the pglink instances on one host, and one of them can \
             be restarted while the others serve. Every instance sharing the port must set it. \
             With it, SIGTERM or SIGINT first only stops accepting, for one second (at most \
             `shutdown_timeout`): the siblings take the new connections, while those already \
             queued for or accepted by this instance are served as usual; then the drain \
             `shutdown_timeout` describes begins. When false pglink refuses to start on a port something else listens on, so that \
             no second process takes a share of the connections by accident.",
        )
        .default("false")
        .extension(),
    ],
);

pub static PEER: Section = section(
    "PeerConfig",
    "peers.<id>",
    "Another pglink instance that cancel requests for its sessions are forwarded to.",
    &[
        Field::new(
            "address",
            Kind::Address,
            "Where the instance accepts clients: `\"host:port\"`, or an absolute path to its \
             unix socket file (`<dir>/.s.PGSQL.<port>`).",
        )
        .required(),
        Field::new(
            "sslmode",
            Kind::Enum(&BACKEND_SSL_MODE),
            "TLS for the forwarded cancel request, with the meanings of `backend.sslmode`. Over \
             a unix socket no TLS is used.",
        )
        .default("\"prefer\""),
        Field::new(
            "sslrootcert",
            Kind::Path,
            "CA certificates the peer's certificate is verified against (`verify-ca`, \
             `verify-full`), or `\"system\"`, as for `backend.sslrootcert`.",
        ),
    ],
);

pub static TLS: Section = section(
    "TLSConfig",
    "tls",
    "TLS between clients and pglink, with pglink acting as the server. Unless `sslmode` is \
     `disable`, give either both certificate paths or `generate_cert: true`.",
    &[
        Field::new(
            "sslmode",
            Kind::Enum(&SSL_MODE),
            "Whether clients may, should or must use TLS; see SSLMode.",
        )
        .default("\"prefer\""),
        Field::new(
            "cert_path",
            Kind::Path,
            "PEM file with the server certificate, followed by any intermediate certificates. \
             Set it together with `cert_private_key_path`.",
        ),
        Field::new(
            "cert_private_key_path",
            Kind::Path,
            "PEM file with the private key belonging to `cert_path`.",
        ),
        Field::new(
            "generate_cert",
            Kind::Bool,
            "Create a self-signed certificate at startup. When both paths are set and neither \
             file exists yet, the new certificate and key are written there (the key readable \
             by its owner only) and reused on later starts; without paths the pair lives in \
             memory only.",
        )
        .default("false"),
    ],
);

pub static DATABASE: Section = section(
    "DatabaseConfig",
    "databases.<name>",
    "One database clients can connect to: the server behind it and who may log in.",
    &[
        Field::new(
            "users",
            Kind::List(&USER),
            "The credentials accepted for this database. pglink logs in to the server with the \
             same username and password, and keeps a separate pool of server connections per \
             user. At least one user; usernames must be unique within the database.",
        )
        .required(),
        Field::new(
            "backend",
            Kind::Section(&BACKEND),
            "The PostgreSQL server that this database's connections are forwarded to.",
        )
        .required(),
        Field::new(
            "pool_acquire_timeout_milliseconds",
            // The longest duration pglink takes anywhere (Go's), in milliseconds.
            int(0, i64::MAX as u64 / 1_000_000),
            "How long, in milliseconds, a client's statement waits for a server connection \
             when all are busy. When the wait runs out the statement fails with SQLSTATE 53300; \
             the client stays connected and can retry.",
        )
        .default("1000"),
        Field::new(
            "track_extra_parameters",
            Kind::StringList,
            "Parameters whose values pglink reads back from the server after every \
             transaction that ran a statement, so that they follow the client to its next \
             server connection and never reach another client even when the statement text \
             does not name them: a function that calls set_config, set_config with bound \
             arguments. The cost is one extra round trip per transaction on the server \
             connection, after the client has its answer and before the connection goes back \
             to the pool. Without this, a parameter follows its client when the client's own \
             startup parameters, SET, RESET or set_config with a literal name change it; a \
             change of any other parameter inside a function is not seen. Parameters \
             PostgreSQL reports on its own (client_encoding, DateStyle, TimeZone, \
             IntervalStyle, application_name and the like) need no listing. Example: \
             `[\"search_path\"]`.",
        )
        .default("[]"),
    ],
);

pub static USER: Section = section(
    "UserConfig",
    "databases.<name>.users[]",
    "One login accepted by a database.",
    &[
        Field::new(
            "username",
            Kind::Section(&SECRET_REF),
            "The role name, read from a secret source.",
        )
        .required(),
        Field::new(
            "password",
            Kind::Section(&SECRET_REF),
            "The password, read from a secret source. Clients are checked against it and pglink \
             uses it to log in to the server.",
        )
        .required(),
    ],
);

pub static SECRET_REF: Section = section(
    "SecretRef",
    "databases.<name>.users[].username, databases.<name>.users[].password",
    "Where one secret value comes from. Set exactly one of `insecure_value`, `env_var` or \
     `aws_secret_arn` (the latter together with `key`). Secret values are never logged.",
    &[
        Field::new(
            "aws_secret_arn",
            Kind::String,
            "ARN (or name) of an AWS Secrets Manager secret whose SecretString is a JSON \
             object. Read at startup and again every `secret_refresh_interval`. Needs `key` \
             and a build with the `aws` cargo feature; credentials and region come from the \
             usual AWS environment (variables, profile, instance role).",
        ),
        Field::new(
            "key",
            Kind::String,
            "Which member of the secret's JSON object to use; the member must be a string. \
             Only meaningful with `aws_secret_arn`.",
        )
        .required_when("with aws_secret_arn"),
        Field::new(
            "insecure_value",
            Kind::String,
            "The value itself, written in the configuration file. For local development: \
             whoever can read the file can read the secret.",
        )
        .sensitive(),
        Field::new(
            "env_var",
            Kind::String,
            "Name of the environment variable that holds the value; it must be set when \
             pglink starts.",
        ),
    ],
);

pub static BACKEND: Section = section(
    "BackendConfig",
    "databases.<name>.backend",
    "The PostgreSQL server behind a database, and how pglink pools connections to it.",
    &[
        Field::new(
            "host",
            Kind::String,
            "Host name or IP address of the server, or, starting with `/`, the directory of \
             its unix socket (as in libpq: pglink connects to `<host>/.s.PGSQL.<port>`). \
             There is no TLS over a unix socket: `sslmode` prefer and allow mean plaintext \
             there, and require, verify-ca and verify-full are refused.",
        )
        .required(),
        Field::new("port", int(1, 65535), "TCP port of the server.").default("5432"),
        Field::new(
            "database",
            Kind::String,
            "Name of the database on the server; it may differ from the name clients use.",
        )
        .required(),
        Field::new(
            "connect_timeout",
            Kind::Duration,
            "Limit on opening a server connection, TLS and authentication included. A plain \
             number counts seconds, as in libpq. 0 waits as long as the operating system \
             does.",
        )
        .default("\"10s\""),
        Field::new(
            "sslmode",
            Kind::Enum(&BACKEND_SSL_MODE),
            "TLS towards the server, with libpq's meaning; see BackendSSLMode. With \
             `sslrootcert` `\"system\"` the default is `verify-full` and a weaker mode is \
             refused, as in libpq.",
        )
        .default("\"prefer\""),
        Field::new(
            "sslkey",
            Kind::Path,
            "PEM private key of the client certificate presented to the server.",
        ),
        Field::new(
            "sslcert",
            Kind::Path,
            "PEM client certificate presented to the server; set it together with `sslkey`.",
        ),
        Field::new(
            "sslrootcert",
            Kind::Path,
            "PEM file of the CA certificates that the server's certificate is verified \
             against, or `\"system\"` for the platform's trust store, as libpq's \
             `sslrootcert=system`: the CA bundle and hashed certificate directory OpenSSL \
             uses by default, or the ones the `SSL_CERT_FILE` and `SSL_CERT_DIR` environment \
             variables name (read at startup, and at a reload that changes this section). \
             Anyone can get a publicly trusted certificate for a name they control, so with \
             `\"system\"` only `sslmode` `verify-full` is allowed, and it is the default. A \
             file named `system` is written `./system`.",
        ),
        Field::new(
            "sslpassword",
            Kind::String,
            "Passphrase of `sslkey`, when the key file is encrypted.",
        )
        .sensitive(),
        Field::new(
            "statement_cache_capacity",
            int(0, NO_MAX),
            "Prepared statements kept on each server connection. When the cache is full the \
             least recently used statement is closed on the server. 0 disables the cache.",
        )
        .default("512"),
        Field::new(
            "description_cache_capacity",
            int(0, NO_MAX),
            "Statement descriptions (parameter and result column types) remembered per \
             database, so a Describe of a known statement is answered without asking the \
             server. 0 disables the cache.",
        )
        .default("512"),
        Field::new(
            "prepared_statement_cache_size",
            int(0, NO_MAX),
            "Distinct named prepared statements tracked per database, so that a statement a \
             client prepared can be used on whichever server connection it gets. 0 turns \
             sharing off: each client's statements are then prepared under their own names.",
        )
        .default("1000"),
        Field::new(
            "cache_unnamed_statements",
            Kind::Bool,
            "Serve the unnamed prepared statement from the same shared statements as named \
             ones: each server connection then parses and plans a query text once instead of \
             at every execution. Drivers that use the unnamed statement by default gain most \
             (libpq's PQexecParams, psycopg, node-postgres, JDBC below prepareThreshold, \
             Npgsql). Results, errors and their order stay those of PostgreSQL. The trade-off \
             is PostgreSQL's generic plans: a named statement may switch to a generic plan \
             after five executions, where an unnamed one is planned for its parameter values \
             every time; for skewed data set `plan_cache_mode` (e.g. in \
             `default_startup_parameters`) to `force_custom_plan`. Each distinct text takes a \
             slot of `prepared_statement_cache_size` (needs it above 0) and of \
             `statement_cache_capacity` on every server connection that ran it, so queries \
             with literals inlined instead of parameters gain nothing and churn the caches.",
        )
        .default("false")
        .extension(),
        Field::new(
            "pool_max_conns",
            int(1, U32),
            "The most server connections open for this database, all users together. Must \
             be at least 1.",
        )
        .required(),
        Field::new(
            "pool_min_idle_conns",
            int(0, U32),
            "Idle server connections kept ready for each user. This number times the number \
             of users may not exceed `pool_max_conns`.",
        )
        .default("0"),
        Field::new(
            "pool_max_conn_lifetime",
            Kind::Duration,
            "Server connections older than this are closed when next idle and replaced. 0 \
             keeps them indefinitely.",
        )
        .default("\"1h\""),
        Field::new(
            "pool_max_conn_lifetime_jitter",
            Kind::Duration,
            "Up to this much random extra lifetime per connection, so that connections opened \
             together are not all replaced at the same moment.",
        )
        .default("\"0s\""),
        Field::new(
            "pool_max_conn_idle_time",
            Kind::Duration,
            "Server connections left unused this long are closed, down to \
             `pool_min_idle_conns`. 0 never closes them for being idle.",
        )
        .default("\"30m\""),
        Field::new(
            "pool_health_check_period",
            Kind::Duration,
            "Interval between checks of idle server connections; broken ones are closed and \
             replaced. 0 turns the checks off.",
        )
        .default("\"1m\""),
        Field::new(
            "default_startup_parameters",
            Kind::StringMap,
            "Session parameters sent to the server when a connection opens, e.g. \
             `{\"statement_timeout\": \"30s\"}`. For these keys the configured value replaces \
             whatever a client asks for.",
        )
        .default("{}"),
    ],
);

pub static FLIGHT_RECORDER: Section = section(
    "FlightRecorderConfig",
    "flight_recorder",
    "A bounded in-memory record of recent activity (connection states, messages, waits, \
     transactions, statements, errors; never SQL text) that is saved as a Chrome trace file, \
     viewable in Perfetto, when asked or triggered. The object being present turns the \
     recorder on (adding or removing it takes a restart; a reload applies changes to its \
     fields).",
    &[
        Field::new(
            "min_age",
            Kind::Duration,
            "Keep at least this much recent history, as far as `max_bytes` allows. About twice \
             the length of the incidents you want to catch is a good choice.",
        )
        .default("\"10s\""),
        Field::new(
            "max_bytes",
            int(1, NO_MAX),
            "Memory budget of the recording, in bytes; it wins over `min_age`. Busy servers \
             produce a few MB of events per second.",
        )
        .default("10485760"),
        Field::new(
            "output_dir",
            Kind::Path,
            "Directory that snapshot files are written to (created if missing), named \
             `pglink-flight-<UTC time>-<trigger>.json`.",
        )
        .required(),
        Field::new(
            "periodic_interval",
            Kind::Duration,
            "Also save a snapshot on this schedule. 0 means no periodic snapshots.",
        )
        .default("\"0s\""),
        Field::new(
            "triggers",
            Kind::Section(&TRIGGERS),
            "Events that save a snapshot automatically.",
        )
        .default_text("snapshot on SIGUSR1 only"),
    ],
);

pub static TRIGGERS: Section = section(
    "FlightRecorderTriggers",
    "flight_recorder.triggers",
    "Automatic flight-recorder snapshots. Snapshots requested over HTTP \
     (`/debug/flight-recorder/snapshot`) are always available.",
    &[
        Field::new(
            "on_slow_query_ms",
            int(0, NO_MAX),
            "Save a snapshot when a query takes longer than this many milliseconds. 0 turns \
             this trigger off.",
        )
        .default("0"),
        Field::new(
            "on_error",
            Kind::Bool,
            "Save a snapshot when a protocol error occurs (a malformed or unexpected \
             message), or when pglink itself answers a client with an error (a refused \
             login, a pool timeout).",
        )
        .default("false"),
        Field::new(
            "on_signal",
            Kind::Bool,
            "Save a snapshot when pglink receives SIGUSR1.",
        )
        .default("true"),
        Field::new(
            "cooldown",
            Kind::Duration,
            "Least time between two snapshots caused by `on_slow_query_ms` or `on_error`, so \
             a lasting problem does not flood the disk. Signal and HTTP requests are not \
             limited.",
        )
        .default("\"60s\""),
    ],
);

pub static OPENTELEMETRY: Section = section(
    "OpenTelemetryConfig",
    "opentelemetry",
    "Distributed tracing: spans for transactions and queries, exported with OTLP. Tracing is \
     on only when `enabled` is true.",
    &[
        Field::new(
            "enabled",
            Kind::Bool,
            "Turn tracing on. Needs a build with the `otel` cargo feature.",
        )
        .default("false"),
        Field::new(
            "service_name",
            Kind::String,
            "The `service.name` recorded on exported spans.",
        )
        .default("\"pglink\""),
        Field::new(
            "otlp_endpoint",
            Kind::String,
            "URL of the OTLP collector. When absent, the standard \
             OTEL_EXPORTER_OTLP_ENDPOINT environment variable decides.",
        )
        .default_text("from OTEL_EXPORTER_OTLP_ENDPOINT"),
        Field::new(
            "otlp_protocol",
            Kind::Enum(&OTLP_PROTOCOL),
            "Protocol spoken to the collector; see OTLPProtocol.",
        )
        .default("\"grpc\""),
        Field::new(
            "sampling_rate",
            Kind::Number { min: 0.0, max: 1.0 },
            "Share of transactions that are traced, from 0.0 (none) to 1.0 (every one).",
        )
        .default("1.0"),
        Field::new(
            "include_query_text",
            Kind::Bool,
            "Record the SQL text on query spans. Off by default because statements can carry \
             personal or secret data.",
        )
        .default("false"),
        Field::new(
            "traceparent_startup_parameter",
            Kind::String,
            "Startup parameter in which a client can pass its W3C trace context, so pglink's \
             spans join the client's trace.",
        )
        .default("\"traceparent\""),
        Field::new(
            "traceparent_sql_regex",
            Kind::Regex,
            "Look for a W3C traceparent inside the SQL text. `true` uses a built-in pattern \
             for `/*traceparent='...'*/` comments, `false` turns the search off, and a string \
             is your own regular expression whose first capture group yields the traceparent.",
        )
        .required_when("when enabled is true"),
        Field::new(
            "application_name_sql_regex",
            Kind::Regex,
            "Look for a per-query application_name inside the SQL text. `true` uses a built-in \
             pattern for `/*application_name='...'*/` comments and `SET application_name` \
             statements, `false` turns the search off, and a string is your own regular \
             expression with a capture group for the name.",
        )
        .default("false"),
    ],
);

pub static PROMETHEUS: Section = section(
    "PrometheusConfig",
    "prometheus",
    "An HTTP endpoint serving metrics in the Prometheus text format, together with \
     `GET /healthz` (200 `ok` while pglink runs, 503 while it stops), `GET /debug/pools` \
     (JSON: per pool its database, user, clients, waiting clients, server connections by \
     state and `pool_max_conns`) and, with a `flight_recorder`, \
     `GET /debug/flight-recorder/snapshot` and `/debug/flight-recorder/status`. The object \
     being present turns it on. The metrics are listed in the README.",
    &[
        Field::new(
            "listen",
            Kind::Listen,
            "Address of the metrics HTTP server, `\"host:port\"` or `\":port\"` (every \
             interface). Startup fails if it cannot be bound.",
        )
        .default("\":9090\""),
        Field::new(
            "path",
            Kind::String,
            "URL path serving the metrics; must begin with `/` and be neither `/healthz`, \
             `/debug/pools` nor under `/debug/flight-recorder/`.",
        )
        .default("\"/metrics\""),
    ],
);

/// Every section, in documentation order.
pub static SECTIONS: &[&Section] = &[
    &CONFIG,
    &TLS,
    &DATABASE,
    &USER,
    &SECRET_REF,
    &BACKEND,
    &FLIGHT_RECORDER,
    &TRIGGERS,
    &OPENTELEMETRY,
    &PROMETHEUS,
    &PEER,
];

pub static AUTH_METHOD: EnumDoc = EnumDoc {
    name: "AuthMethod",
    summary: "Values of `auth_method`.",
    values: &[
        EnumValue {
            name: "plaintext",
            doc: "The client sends its password as is (PostgreSQL's `password` method). \
                  Accepted only over TLS, so `tls.sslmode` must not be `disable`.",
            rejected: None,
        },
        EnumValue {
            name: "md5_password",
            doc: "PostgreSQL's older MD5 challenge. Captured exchanges are easy to attack; use \
                  it only for clients that cannot do SCRAM. TLS is strongly advised.",
            rejected: None,
        },
        EnumValue {
            name: "scram-sha-256",
            doc: "Salted challenge-response login; the default and the strongest choice. On \
                  TLS connections pglink also offers SCRAM-SHA-256-PLUS, which ties the login \
                  to the TLS channel.",
            rejected: None,
        },
        EnumValue {
            name: "scram-sha-256-plus",
            doc: "Not a setting of its own: choose `scram-sha-256` and channel binding is \
                  offered automatically on TLS connections.",
            rejected: Some(
                "\"scram-sha-256-plus\" cannot be configured directly; use \"scram-sha-256\": \
                 SCRAM-SHA-256-PLUS (channel binding) is offered automatically on TLS connections",
            ),
        },
    ],
};

pub static SSL_MODE: EnumDoc = EnumDoc {
    name: "SSLMode",
    summary: "Values of `tls.sslmode`, with pglink in the role of the server.",
    values: &[
        EnumValue {
            name: "disable",
            doc: "No TLS; a client asking for TLS is told to carry on without it.",
            rejected: None,
        },
        EnumValue {
            name: "allow",
            doc: "Clients may use TLS or plain connections.",
            rejected: None,
        },
        EnumValue {
            name: "prefer",
            doc: "TLS is offered to every client that asks for it; clients that cannot use \
                  TLS are still accepted. The default.",
            rejected: None,
        },
        EnumValue {
            name: "require",
            doc: "Only TLS connections are accepted; plain ones are refused.",
            rejected: None,
        },
    ],
};

pub static BACKEND_SSL_MODE: EnumDoc = EnumDoc {
    name: "BackendSSLMode",
    summary: "Values of `backend.sslmode`, with pglink in the role of the client; they mean \
              what they mean for libpq.",
    values: &[
        EnumValue {
            name: "disable",
            doc: "Never use TLS.",
            rejected: None,
        },
        EnumValue {
            name: "allow",
            doc: "Connect without TLS; use TLS only if the server insists.",
            rejected: None,
        },
        EnumValue {
            name: "prefer",
            doc: "Use TLS when the server supports it, otherwise connect without. The \
                  certificate is not checked. The default.",
            rejected: None,
        },
        EnumValue {
            name: "require",
            doc: "Always use TLS. As in libpq, the certificate is checked only when \
                  `sslrootcert` is given.",
            rejected: None,
        },
        EnumValue {
            name: "verify-ca",
            doc: "Always use TLS and check that the server certificate was issued by a \
                  trusted CA.",
            rejected: None,
        },
        EnumValue {
            name: "verify-full",
            doc: "Like verify-ca, and also check that the certificate names the host \
                  connected to.",
            rejected: None,
        },
    ],
};

pub static OTLP_PROTOCOL: EnumDoc = EnumDoc {
    name: "OTLPProtocol",
    summary: "Values of `opentelemetry.otlp_protocol`.",
    values: &[
        EnumValue {
            name: "grpc",
            doc: "OTLP over gRPC (collectors usually listen on port 4317).",
            rejected: None,
        },
        EnumValue {
            name: "http",
            doc: "OTLP over HTTP with protobuf bodies (usually port 4318).",
            rejected: None,
        },
    ],
};

/// Every enum table, in documentation order.
pub static ENUMS: &[&EnumDoc] = &[&AUTH_METHOD, &SSL_MODE, &BACKEND_SSL_MODE, &OTLP_PROTOCOL];

/// Prose shown after the field tables.
pub static NOTES: &[Note] = &[
    Note {
        title: "Durations",
        body: "Durations are written like Go durations: numbers with units `ns`, `us` (or \
               `µs`), `ms`, `s`, `m` and `h`, combined as in `\"1h30m\"`, `\"5m30s\"`, \
               `\"250ms\"` or `\"1.5h\"`. A plain number of seconds is also accepted, as a JSON \
               number (`5`, `0.5`) or as a string (`\"5\"`). Durations cannot be negative.",
    },
    Note {
        title: "Unknown keys and errors",
        body: "Keys pglink does not know are reported as warnings, with their JSON path, and \
               otherwise ignored, so a misspelt key is visible at startup. Every problem in an \
               invalid configuration is reported at once, each with the JSON path of the \
               offending value (for example `databases.mydb.backend.pool_max_conns`). Relative \
               file paths are resolved against the working directory.",
    },
    Note {
        title: "Signals",
        body: "SIGTERM or SIGINT starts a graceful shutdown: pglink stops accepting \
               connections, ends idle sessions with FATAL 57P01, lets open transactions finish \
               for up to `shutdown_timeout`, closes what is left and exits with status 0; \
               metrics and `/healthz` (503, `draining`) stay up meanwhile. With \
               `listen_reuse_port` it first only stops accepting for one second, while \
               sibling instances take new connections (see docs/scale-out.md). A second SIGTERM or \
               SIGINT exits at once, with status 1. SIGHUP reloads the configuration file \
               without dropping sessions (an invalid file is refused whole and logged; the \
               running configuration stays). SIGUSR1 saves a flight recorder snapshot when \
               `flight_recorder` is configured and `triggers.on_signal` is true; otherwise \
               it logs a warning and carries on.",
    },
    Note {
        title: "Exit status",
        body: "0: success (for `-help` and `-check`, or a clean shutdown). 1: pglink could not \
               start, including a secret that could not be read, or a shutdown was cut short \
               by a second signal. 2: invalid command line or invalid configuration.",
    },
];
