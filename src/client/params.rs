//! Session parameters follow the client from backend to backend.
//!
//! A client's *desired* values start at login: the parameters the server reports, overlaid
//! with the client's startup parameters (including `options=-c name=value`) and then with
//! `default_startup_parameters`. They change when the client's own statements change them:
//! reported parameters through ParameterStatus (which PostgreSQL also sends when a rollback
//! or the end of `SET LOCAL` restores a value), others by reading them back with
//! `current_setting` after a transaction whose text named them, and
//! `track_extra_parameters` after every transaction that ran a statement (a function may
//! have changed them).
//!
//! Each backend's *known* values are tracked the same way. When a client gets a backend
//! whose values differ, one `SELECT set_config(...); RESET ...` query goes first (its answers
//! swallowed, an error excepted); a parameter the backend has from another client but this
//! client never set is RESET, so no client sees a value it did not set.

use std::fmt::Write as _;

/// Parameters no client can change; never sent in a SET.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "in_hot_standby",
    "scram_iterations",
];

/// Values by parameter name (names compare case-insensitively; stored lower case, sorted,
/// so two sets compare in one pass without allocating).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    entries: Vec<(String, String)>,
}

/// `name` in lower case, borrowed when it already is.
fn lower(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

impl Params {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let name = lower(name);
        self.find(&name)
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        let name = lower(name);
        match self.find(&name) {
            Ok(i) => {
                if let Some(slot) = self.entries.get_mut(i) {
                    value.clone_into(&mut slot.1);
                }
            }
            Err(i) => self
                .entries
                .insert(i, (name.into_owned(), value.to_owned())),
        }
    }

    pub fn remove(&mut self, name: &str) {
        let name = lower(name);
        if let Ok(i) = self.find(&name) {
            self.entries.remove(i);
        }
    }

    /// In name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only the names `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|(n, _)| keep(n));
    }
}

/// Recently seen settings sets of one database, so that clients with the same settings
/// (the usual case: one application, one driver) share one copy instead of a dozen strings
/// each. Bounded; a client that changes a setting gets a copy of its own (`Arc::make_mut`).
#[derive(Debug, Default)]
pub struct SharedParams {
    recent: std::sync::Mutex<Vec<std::sync::Arc<Params>>>,
}

impl SharedParams {
    const KEEP: usize = 8;

    /// A shared copy of `params`.
    pub fn share(&self, params: Params) -> std::sync::Arc<Params> {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = recent.iter().position(|p| **p == params) {
            let shared = recent.remove(at);
            recent.push(shared.clone());
            return shared;
        }
        let shared = std::sync::Arc::new(params);
        if recent.len() >= Self::KEEP {
            recent.remove(0);
        }
        recent.push(shared.clone());
        shared
    }
}

/// Whether pglink can send `name` in a SET (a plain or qualified identifier, not read-only).
fn settable(name: &str) -> bool {
    let ident = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| ident(p)) && !READ_ONLY.contains(&name)
}

/// A parameter change: a value to set, or `None` to reset to the server's default.
pub type Change = (String, Option<String>);

/// Walks what a backend with `backend` values must change to have the client's `desired`
/// ones, in name order: `f(name, Some(value))` to set, `f(name, None)` to reset; stops when
/// `f` returns false. `reported` names the parameters the server reports, which are never
/// reset (the client always has a value for those).
fn for_each_change(
    desired: &Params,
    backend: &Params,
    reported: &dyn Fn(&str) -> bool,
    mut f: impl FnMut(&str, Option<&str>) -> bool,
) {
    use std::cmp::Ordering;
    let (mut d, mut b) = (desired.iter().peekable(), backend.iter().peekable());
    loop {
        let go_on = match (d.peek().copied(), b.peek().copied()) {
            (None, None) => return,
            (Some((dn, dv)), Some((bn, bv))) if dn == bn => {
                d.next();
                b.next();
                dv == bv || !settable(dn) || f(dn, Some(dv))
            }
            (Some((dn, dv)), next_b)
                if next_b.is_none_or(|(bn, _)| dn.cmp(bn) == Ordering::Less) =>
            {
                d.next();
                !settable(dn) || f(dn, Some(dv))
            }
            (_, Some((bn, _))) => {
                b.next();
                !settable(bn) || reported(bn) || f(bn, None)
            }
            (_, None) => return,
        };
        if !go_on {
            return;
        }
    }
}

/// What a backend with `backend` values must change to have the client's `desired` ones
/// (empty when nothing differs); see `for_each_change`.
pub fn sync_changes(
    desired: &Params,
    backend: &Params,
    reported: &dyn Fn(&str) -> bool,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for_each_change(desired, backend, reported, |name, value| {
        changes.push((name.to_owned(), value.map(str::to_owned)));
        true
    });
    changes
}

/// Whether a backend with `backend` values needs no change for the client (no allocation).
pub fn in_sync(desired: &Params, backend: &Params, reported: &dyn Fn(&str) -> bool) -> bool {
    let mut same = true;
    for_each_change(desired, backend, reported, |_, _| {
        same = false;
        false
    });
    same
}

/// One query text making `changes`. Values go through `set_config`, which takes a setting's
/// text form exactly as `current_setting` gives it (a list such as `search_path` included);
/// resets are `RESET` statements. PostgreSQL runs the query as one implicit transaction, so
/// either every change happens or none does.
pub fn sync_query(changes: &[Change]) -> String {
    let mut query = String::new();
    for (name, value) in changes {
        if let Some(value) = value {
            query.push_str(if query.is_empty() { "SELECT " } else { ", " });
            let _ = write!(
                query,
                "pg_catalog.set_config({}, {}, false)",
                quote(name),
                quote(value)
            );
        }
    }
    if !query.is_empty() {
        query.push(';');
    }
    for (name, value) in changes {
        if value.is_none() {
            let _ = write!(query, "{};", reset_statement(name));
        }
    }
    query
}

/// Records `changes` as made on a backend.
pub fn apply(params: &mut Params, changes: &[Change]) {
    for (name, value) in changes {
        match value {
            Some(value) => params.set(name, value),
            None => params.remove(name),
        }
    }
}

fn reset_statement(name: &str) -> String {
    match name {
        "role" => "RESET ROLE".into(),
        "session_authorization" => "RESET SESSION AUTHORIZATION".into(),
        _ => format!("RESET {name}"),
    }
}

/// A string literal that means `value` whatever `standard_conforming_strings` is.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `SELECT current_setting('a', true), ...` reading back `names`.
pub fn capture_query(names: &[String]) -> String {
    let columns: Vec<String> = names
        .iter()
        .map(|n| format!("pg_catalog.current_setting({}, true)", quote(n)))
        .collect();
    format!("SELECT {}", columns.join(", "))
}

/// `name=value` pairs from a startup `options` string (`-c name=value`, `--name=value`).
pub fn options_settings(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = split_options(options).into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next()
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest.to_owned())
        } else {
            word.strip_prefix("--").map(str::to_owned)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    out
}

/// An `options` string setting `settings` (`-c name=value` each, escaped as libpq does).
pub fn options_string(settings: &[(String, String)]) -> String {
    let escape = |s: &str| {
        s.chars().fold(String::new(), |mut out, c| {
            if c == '\\' || c.is_whitespace() {
                out.push('\\');
            }
            out.push(c);
            out
        })
    };
    settings
        .iter()
        .map(|(n, v)| format!("-c {}={}", escape(n), escape(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits on whitespace; a backslash escapes the next character (libpq's rules).
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (n, v) in pairs {
            p.set(n, v);
        }
        p
    }

    #[test]
    fn names_are_case_insensitive() {
        let mut p = params(&[("TimeZone", "UTC")]);
        assert_eq!(p.get("timezone"), Some("UTC"));
        p.set("TIMEZONE", "Europe/Paris");
        assert_eq!(p.len(), 1);
        p.remove("timeZone");
        assert!(p.is_empty());
    }

    #[test]
    fn sync_sets_what_differs_and_resets_what_the_client_never_set() {
        let reported = |n: &str| n == "timezone" || n == "application_name";
        let desired = params(&[
            ("TimeZone", "UTC"),
            ("application_name", "it's"),
            ("server_version", "15"),
            ("search_path", "\"$user\", public"),
        ]);
        let mut backend = params(&[
            ("TimeZone", "UTC"),
            ("application_name", "other"),
            ("server_version", "16"),
            ("myapp.secret", "x"),
            ("role", "admin"),
        ]);
        let changes = sync_changes(&desired, &backend, &reported);
        assert!(!in_sync(&desired, &backend, &reported));
        assert_eq!(
            sync_query(&changes),
            "SELECT pg_catalog.set_config(E'application_name', E'it''s', false), \
             pg_catalog.set_config(E'search_path', E'\"$user\", public', false);\
             RESET myapp.secret;RESET ROLE;"
        );
        apply(&mut backend, &changes);
        assert!(sync_changes(&desired, &backend, &reported).is_empty());
        assert!(in_sync(&desired, &backend, &reported));
        assert_eq!(backend.get("myapp.secret"), None);
        assert_eq!(backend.get("server_version"), Some("16"));
        assert_eq!(sync_query(&[]), "");
    }

    #[test]
    fn odd_names_and_values_are_handled_safely() {
        let desired = params(&[("myapp.tenant", "a\\b"), ("bad name; drop", "x")]);
        let changes = sync_changes(&desired, &Params::default(), &|_| false);
        assert_eq!(
            sync_query(&changes),
            "SELECT pg_catalog.set_config(E'myapp.tenant', E'a\\\\b', false);"
        );
        assert_eq!(
            sync_query(&[("session_authorization".into(), None)]),
            "RESET SESSION AUTHORIZATION;"
        );
    }

    #[test]
    fn identical_settings_are_shared_until_one_changes() {
        let shared = SharedParams::default();
        let a = shared.share(params(&[("timezone", "UTC")]));
        let mut b = shared.share(params(&[("TimeZone", "UTC")]));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        std::sync::Arc::make_mut(&mut b).set("timezone", "Asia/Tokyo");
        assert_eq!(a.get("timezone"), Some("UTC"), "a copy on write");
        for i in 0..20 {
            shared.share(params(&[("x", &i.to_string())]));
        }
        assert!(shared.recent.lock().unwrap().len() <= SharedParams::KEEP);
    }

    #[test]
    fn capture_reads_back_named_settings() {
        assert_eq!(
            capture_query(&["search_path".into(), "x.y".into()]),
            "SELECT pg_catalog.current_setting(E'search_path', true), pg_catalog.current_setting(E'x.y', true)"
        );
    }

    #[test]
    fn options_are_parsed_like_libpq() {
        assert_eq!(
            options_settings(
                r"-c search_path=a,b --work-mem=64MB -cstatement_timeout=5s -c app.v=x\ y"
            ),
            vec![
                ("search_path".to_owned(), "a,b".to_owned()),
                ("work_mem".to_owned(), "64MB".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("app.v".to_owned(), "x y".to_owned()),
            ]
        );
        assert!(options_settings("-c").is_empty());
    }

    #[test]
    fn settings_make_an_options_string_that_parses_back() {
        let settings = vec![
            ("app.v".to_owned(), r"x y\z".to_owned()),
            ("work_mem".to_owned(), "64MB".to_owned()),
        ];
        let text = options_string(&settings);
        assert_eq!(text, r"-c app.v=x\ y\\z -c work_mem=64MB");
        assert_eq!(options_settings(&text), settings);
    }
}
