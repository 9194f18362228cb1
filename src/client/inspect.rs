//! What pglink reads in SQL text. Only three things, all by pattern, never by parsing SQL:
//!
//! - session parameters a statement changes (`SET`, `RESET`, `set_config(..., false)`), so
//!   they follow the client to its next backend and never leak to another client;
//! - statements that leave state on the server that cannot follow the client (session
//!   advisory locks, `LISTEN`, temporary tables, `WITH HOLD` cursors, SQL `PREPARE`), which
//!   pin the client to its backend;
//! - `DEALLOCATE` and `DISCARD ALL`, which concern the client's own prepared statements and
//!   session and are answered by pglink, and `DEALLOCATE` of one of pglink's own server
//!   names, which is refused.
//!
//! False positives (a keyword inside a string literal) only cost a parameter read back or a
//! pinned session; they never break anything.

use std::sync::OnceLock;

use regex::bytes::Regex;

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    // The patterns are constants checked by the unit tests below.
    #[allow(clippy::expect_used)]
    cell.get_or_init(|| Regex::new(pattern).expect("valid built-in pattern"))
}

/// Whether `sql` could hold anything the functions below look for. A cheap scan (first word
/// of each statement, four substrings) so that ordinary statements — nearly all of them —
/// skip the patterns; every pattern below needs one of these to match.
pub fn worth_inspecting(sql: &[u8]) -> bool {
    const FIRST_WORDS: &[&[u8]] = &[
        b"set",
        b"reset",
        b"listen",
        b"prepare",
        b"create",
        b"alter",
        b"drop",
        b"truncate",
        b"comment",
        b"deallocate",
        b"discard",
    ];
    let starts = std::iter::once(0).chain(
        sql.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b';')
            .map(|(i, _)| i + 1),
    );
    for start in starts {
        let rest = sql.get(start..).unwrap_or_default();
        let word_at = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let rest = rest.get(word_at..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|b| !b.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let word = rest.get(..len).unwrap_or_default();
        if FIRST_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word)) {
            return true;
        }
    }
    contains_any_ignore_case(sql, &[b"set_config", b"advisory", b"hold", b"temp"])
}

/// Whether any of `needles` (lower case, not empty) occurs in `haystack`, ignoring ASCII case:
/// one pass, looking further only where a needle's first byte is.
fn contains_any_ignore_case(haystack: &[u8], needles: &[&[u8]]) -> bool {
    haystack.iter().enumerate().any(|(i, b)| {
        let b = b.to_ascii_lowercase();
        needles.iter().any(|needle| {
            needle.first() == Some(&b)
                && haystack
                    .get(i..i + needle.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        })
    })
}

const NAME: &str = r#""(?:[^"]|"")+"|[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?"#;

/// A session parameter named in a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// `SET name ...` / `RESET name` / `set_config('name', ..., false)` (lower case).
    Param(String),
    /// `RESET ALL`.
    All,
    /// `set_config(...)` whose parameter name is not a literal (a bound parameter, say):
    /// some parameter, which one the text does not say.
    Unknown,
}

/// Session parameters the statements in `sql` change (not `SET LOCAL`, not transaction
/// characteristics).
pub fn touched_params(sql: &[u8]) -> Vec<Touched> {
    static SET: OnceLock<Regex> = OnceLock::new();
    static SET_CONFIG: OnceLock<Regex> = OnceLock::new();
    let set = regex(
        &SET,
        &format!(
            r"(?i)(?:^|;)\s*(?:SET\s+(?:(?P<auth>SESSION\s+AUTHORIZATION)|(?:SESSION\s+)?(?P<set>TIME\s+ZONE|{NAME}))|RESET\s+(?P<reset>TIME\s+ZONE|SESSION\s+AUTHORIZATION|{NAME}))"
        ),
    );
    static SET_CONFIG_ANY: OnceLock<Regex> = OnceLock::new();
    // A literal name, and `false` or a bound parameter (which may be false) for is_local.
    let set_config = regex(
        &SET_CONFIG,
        r"(?i)set_config\s*\(\s*'([^']+)'\s*,[^;]*?,\s*(?:false|\$\d+)\s*\)",
    );
    // A name that is not a literal.
    let set_config_any = regex(&SET_CONFIG_ANY, r"(?i)set_config\s*\(\s*[^'\s]");
    let mut out = Vec::new();
    for caps in set.captures_iter(sql) {
        let (word, is_reset) = match (caps.name("auth").or(caps.name("set")), caps.name("reset")) {
            (Some(m), _) => (m.as_bytes(), false),
            (None, Some(m)) => (m.as_bytes(), true),
            _ => continue,
        };
        let name = normalize(word);
        match name.as_str() {
            // Not session parameters (or only for the current transaction).
            "local" | "transaction" | "constraints" | "characteristics" => {}
            "all" if is_reset => out.push(Touched::All),
            _ => out.push(Touched::Param(name)),
        }
    }
    for caps in set_config.captures_iter(sql) {
        if let Some(m) = caps.get(1) {
            out.push(Touched::Param(normalize(m.as_bytes())));
        }
    }
    if set_config_any.is_match(sql) {
        out.push(Touched::Unknown);
    }
    out
}

/// The parameter a SET/RESET word stands for, as PostgreSQL names it (lower case).
fn normalize(word: &[u8]) -> String {
    let text = String::from_utf8_lossy(word);
    if let Some(quoted) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return quoted.replace("\"\"", "\"");
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    match words.as_slice() {
        ["time", "zone"] => "timezone".into(),
        ["session", "authorization"] => "session_authorization".into(),
        ["schema"] => "search_path".into(),
        ["names"] => "client_encoding".into(),
        _ => lower,
    }
}

crate::observe::metrics::label_enum! {
    /// Server-side state that pins a session to its server connection.
    pub enum PinReason {
        Listen = "listen",
        /// `pg_advisory_lock`, `pg_try_advisory_lock` and their shared variants.
        AdvisoryLock = "advisory_lock",
        TemporaryTable = "temporary_table",
        /// `DECLARE … WITH HOLD`.
        WithHoldCursor = "with_hold_cursor",
        /// SQL `PREPARE` (a rollback does not undo it).
        SqlPrepare = "sql_prepare",
    }
}

impl std::fmt::Display for PinReason {
    /// What the session used, for the log line: "it used {reason}".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinReason::Listen => "LISTEN",
            PinReason::AdvisoryLock => "a session advisory lock",
            PinReason::TemporaryTable => "a temporary table",
            PinReason::WithHoldCursor => "a WITH HOLD cursor",
            PinReason::SqlPrepare => "SQL PREPARE",
        })
    }
}

/// Why a statement pins its client to the backend, if it does.
pub fn pin_reason(sql: &[u8]) -> Option<PinReason> {
    static PIN: OnceLock<Regex> = OnceLock::new();
    let pin = regex(
        &PIN,
        r"(?i)(?P<lock>pg_(?:try_)?advisory_lock(?:_shared)?\s*\()|(?:^|;)\s*(?:(?P<listen>LISTEN\s)|(?P<temp>CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s|(?:\(\s*)?(?:SELECT|WITH)\b[^;]*?\bINTO\s+TEMP(?:ORARY)?\s)|(?P<prepare>PREPARE\s))|(?P<hold>\bWITH\s+HOLD\b)",
    );
    let caps = pin.captures(sql)?;
    Some(if caps.name("lock").is_some() {
        PinReason::AdvisoryLock
    } else if caps.name("listen").is_some() {
        PinReason::Listen
    } else if caps.name("temp").is_some() {
        PinReason::TemporaryTable
    } else if caps.name("prepare").is_some() {
        PinReason::SqlPrepare
    } else {
        PinReason::WithHoldCursor
    })
}

/// A statement pglink answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalCommand {
    /// `DEALLOCATE [PREPARE] name` (name as PostgreSQL resolves it: folded unless quoted).
    Deallocate(Vec<u8>),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
}

/// `sql` when it is a single DEALLOCATE or DISCARD ALL statement.
pub fn local_command(sql: &[u8]) -> Option<LocalCommand> {
    static DEALLOCATE: OnceLock<Regex> = OnceLock::new();
    static DISCARD: OnceLock<Regex> = OnceLock::new();
    let deallocate = regex(
        &DEALLOCATE,
        &format!(r"(?i)^\s*DEALLOCATE\s+(?:PREPARE\s+)?(?P<name>{NAME})\s*;?\s*$"),
    );
    let discard = regex(&DISCARD, r"(?i)^\s*DISCARD\s+ALL\s*;?\s*$");
    if discard.is_match(sql) {
        return Some(LocalCommand::DiscardAll);
    }
    let caps = deallocate.captures(sql)?;
    let name = caps.name("name")?.as_bytes();
    if name.eq_ignore_ascii_case(b"all") {
        return Some(LocalCommand::DeallocateAll);
    }
    Some(LocalCommand::Deallocate(statement_name(name)))
}

/// A statement name as PostgreSQL resolves it: folded to lower case unless quoted.
fn statement_name(name: &[u8]) -> Vec<u8> {
    match name.strip_prefix(b"\"").and_then(|n| n.strip_suffix(b"\"")) {
        Some(quoted) => String::from_utf8_lossy(quoted)
            .replace("\"\"", "\"")
            .into_bytes(),
        None => name.to_ascii_lowercase(),
    }
}

/// The first statement name `DEALLOCATE` in `sql` names that is one of pglink's server names
/// (`pglink_…`). No client created such a statement, so pglink refuses it as PostgreSQL
/// would (26000) rather than let the server drop a statement other clients share.
pub fn deallocates_server_name(sql: &[u8]) -> Option<String> {
    static DEALLOCATE: OnceLock<Regex> = OnceLock::new();
    let deallocate = regex(
        &DEALLOCATE,
        &format!(r"(?i)(?:^|;)\s*DEALLOCATE\s+(?:PREPARE\s+)?(?P<name>{NAME})"),
    );
    deallocate.captures_iter(sql).find_map(|caps| {
        let name = statement_name(caps.name("name")?.as_bytes());
        name.starts_with(super::statements::SERVER_NAME_PREFIX)
            .then(|| String::from_utf8_lossy(&name).into_owned())
    })
}

/// Whether `sql` contains DDL that may change result types, so cached statement
/// descriptions can no longer be trusted.
pub fn is_ddl(sql: &[u8]) -> bool {
    static DDL: OnceLock<Regex> = OnceLock::new();
    regex(
        &DDL,
        r"(?i)(?:^|;)\s*(?:ALTER|DROP|CREATE\s+OR\s+REPLACE|TRUNCATE|COMMENT)\s",
    )
    .is_match(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(sql: &str) -> Vec<Touched> {
        touched_params(sql.as_bytes())
    }

    fn p(name: &str) -> Touched {
        Touched::Param(name.into())
    }

    #[test]
    fn set_and_reset_name_the_parameters_they_change() {
        assert_eq!(params("SET search_path TO foo"), [p("search_path")]);
        assert_eq!(
            params("set Application_Name = 'x'"),
            [p("application_name")]
        );
        assert_eq!(params("SET SESSION TimeZone TO 'UTC'"), [p("timezone")]);
        assert_eq!(
            params("SET TIME ZONE 'UTC'; SET SCHEMA 'a'"),
            [p("timezone"), p("search_path")]
        );
        assert_eq!(params("set names 'UTF8'"), [p("client_encoding")]);
        assert_eq!(params("SET myapp.tenant = '7'"), [p("myapp.tenant")]);
        assert_eq!(params(r#"SET "Weird""Name" = 1"#), [p(r#"Weird"Name"#)]);
        assert_eq!(
            params("RESET work_mem; RESET ALL"),
            [p("work_mem"), Touched::All]
        );
        assert_eq!(params("SET ROLE admin"), [p("role")]);
        assert_eq!(
            params("SET SESSION AUTHORIZATION bob"),
            [p("session_authorization")]
        );
        assert_eq!(
            params("SELECT set_config('app.user', '42', false)"),
            [p("app.user")]
        );
        assert_eq!(
            params("SELECT set_config('search_path', $1, $2)"),
            [p("search_path")],
            "is_local may be false"
        );
        assert_eq!(
            params("SELECT set_config($1, $2, false)"),
            [Touched::Unknown]
        );
        assert_eq!(
            params("select pg_catalog.set_config( name, 'x', false) from t"),
            [Touched::Unknown]
        );
    }

    #[test]
    fn local_and_transaction_settings_are_not_session_changes() {
        assert!(params("SET LOCAL work_mem = '1MB'").is_empty());
        assert!(params("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_empty());
        assert!(params("SET CONSTRAINTS ALL DEFERRED").is_empty());
        assert!(params("SELECT set_config('a.b', '1', true)").is_empty());
        assert!(params("SELECT 'not a SET here'").is_empty());
        assert!(params("UPDATE t SET a = 1").is_empty());
    }

    #[test]
    fn pinning_statements_are_recognised() {
        let reason = |s: &str| pin_reason(s.as_bytes());
        assert_eq!(
            reason("SELECT pg_advisory_lock(1)"),
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(
            reason("select PG_TRY_ADVISORY_LOCK_SHARED(1, 2)"),
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(reason("SELECT pg_advisory_xact_lock(1)"), None);
        assert_eq!(reason("SELECT pg_advisory_unlock(1)"), None);
        assert_eq!(reason("LISTEN chan"), Some(PinReason::Listen));
        assert_eq!(
            reason("BEGIN; LISTEN chan; COMMIT"),
            Some(PinReason::Listen)
        );
        assert_eq!(
            reason("create temp table t (a int)"),
            Some(PinReason::TemporaryTable)
        );
        assert_eq!(
            reason("CREATE GLOBAL TEMPORARY TABLE t (a int)"),
            Some(PinReason::TemporaryTable)
        );
        assert_eq!(
            reason("SELECT * INTO TEMP t FROM s"),
            Some(PinReason::TemporaryTable)
        );
        assert_eq!(
            reason("BEGIN; select a, b\ninto temporary table t from s; COMMIT"),
            Some(PinReason::TemporaryTable)
        );
        assert_eq!(
            reason("WITH x AS (SELECT 1 AS a) SELECT a INTO TEMP t FROM x"),
            Some(PinReason::TemporaryTable)
        );
        assert_eq!(
            reason("SELECT * INTO t FROM s"),
            None,
            "a table like any other"
        );
        assert_eq!(
            reason("INSERT INTO temp VALUES (1)"),
            None,
            "a table named temp"
        );
        assert_eq!(reason("SELECT * INTO temp_copy FROM s"), None);
        assert_eq!(
            reason("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Some(PinReason::WithHoldCursor)
        );
        assert_eq!(reason("PREPARE q AS SELECT 1"), Some(PinReason::SqlPrepare));
        assert_eq!(reason("SELECT 1"), None);
        assert_eq!(reason("CREATE TABLE temperature (a int)"), None);
        assert_eq!(reason("SELECT listen_port FROM t"), None);
        assert_eq!(
            PinReason::AdvisoryLock.to_string(),
            "a session advisory lock"
        );
        assert_eq!(PinReason::WithHoldCursor.label(), "with_hold_cursor");
    }

    #[test]
    fn deallocate_and_discard_are_recognised_only_alone() {
        let cmd = |s: &str| local_command(s.as_bytes());
        assert_eq!(
            cmd("DEALLOCATE S_1"),
            Some(LocalCommand::Deallocate(b"s_1".to_vec()))
        );
        assert_eq!(
            cmd(r#"deallocate prepare "S_1";"#),
            Some(LocalCommand::Deallocate(b"S_1".to_vec()))
        );
        assert_eq!(cmd("DEALLOCATE ALL"), Some(LocalCommand::DeallocateAll));
        assert_eq!(cmd(" discard all ; "), Some(LocalCommand::DiscardAll));
        assert_eq!(cmd("DISCARD PLANS"), None);
        assert_eq!(cmd("DEALLOCATE a; SELECT 1"), None);
    }

    #[test]
    fn deallocating_a_server_name_is_recognised_anywhere() {
        let found = |s: &str| deallocates_server_name(s.as_bytes());
        assert_eq!(found("DEALLOCATE pglink_7"), Some("pglink_7".into()));
        assert_eq!(
            found("SELECT 1; deallocate prepare PGLINK_12; SELECT 2"),
            Some("pglink_12".into())
        );
        assert_eq!(found(r#"DEALLOCATE "pglink_3""#), Some("pglink_3".into()));
        assert_eq!(
            found(r#"DEALLOCATE "PGLINK_3""#),
            None,
            "quoted: another name"
        );
        assert_eq!(found("DEALLOCATE mine; DEALLOCATE ALL"), None);
        assert_eq!(found("SELECT 'DEALLOCATE pglink_1'"), None);
    }

    #[test]
    fn the_prefilter_lets_through_everything_a_pattern_finds() {
        let found = [
            "SET search_path TO foo",
            "  set Application_Name = 'x'",
            "BEGIN;\n\tRESET work_mem",
            "SELECT set_config('app.user', '42', false)",
            "SELECT set_config($1, $2, false)",
            "SELECT PG_TRY_ADVISORY_LOCK_SHARED(1, 2)",
            "BEGIN; LISTEN chan; COMMIT",
            "create temp table t (a int)",
            "SELECT * INTO\n TEMPORARY t FROM s",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE q AS SELECT 1",
            " discard all ; ",
            "deallocate prepare \"S_1\";",
            "SELECT 1;DEALLOCATE pglink_1",
            "BEGIN; DROP VIEW v; COMMIT",
            "create or replace view v as select 1",
            "TRUNCATE t",
            "COMMENT ON TABLE t IS 'x'",
            "ALTER TABLE t ADD COLUMN b int",
        ];
        for sql in found {
            let sql = sql.as_bytes();
            assert!(
                !touched_params(sql).is_empty()
                    || pin_reason(sql).is_some()
                    || local_command(sql).is_some()
                    || deallocates_server_name(sql).is_some()
                    || is_ddl(sql),
                "{}",
                String::from_utf8_lossy(sql)
            );
            assert!(worth_inspecting(sql), "{}", String::from_utf8_lossy(sql));
        }
        for sql in [
            "SELECT 1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "INSERT INTO pgbench_history (tid, bid) VALUES (1, 2)",
            "BEGIN",
            "END",
            "select * from settings",
        ] {
            assert!(!worth_inspecting(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn ddl_is_recognised() {
        assert!(is_ddl(b"ALTER TABLE t ADD COLUMN b int"));
        assert!(is_ddl(b"BEGIN; DROP VIEW v; COMMIT"));
        assert!(is_ddl(b"create or replace view v as select 1"));
        assert!(!is_ddl(b"SELECT 'alter me'"));
        assert!(
            !is_ddl(b"CREATE TABLE t (a int)"),
            "a new table changes no existing statement"
        );
    }
}
