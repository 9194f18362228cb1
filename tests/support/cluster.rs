//! The cluster files: the initdb template, `pg_hba.conf`, the role setup script, and small
//! file and quoting helpers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::{self, ServerUser, binaries};
use super::workdir::Workdir;
use super::{AuthMethod, SUPERUSER, TEST_DATABASE, TEST_USERS};

/// `pg_hba.conf`: local trust for everyone; over TCP each harness role gets its method, TLS
/// only roles are rejected without TLS, and any other role (tests may create their own) SCRAM.
pub fn hba_conf() -> String {
    // Over the unix socket the password roles authenticate as over TCP (so that a proxy
    // whose backend is the socket directory really logs in); everyone else, the bootstrap
    // superuser included, is trusted there.
    let mut hba = String::from("# pglink test harness\n");
    for user in TEST_USERS
        .iter()
        .filter(|u| u.password.is_some() && !u.tls_only)
    {
        hba += &format!("local all {} {}\n", user.name, user.method.hba());
    }
    hba += "local all all trust\n";
    for addr in ["127.0.0.1/32", "::1/128"] {
        for user in TEST_USERS {
            if user.tls_only {
                hba += &format!("hostnossl all {} {addr} reject\n", user.name);
            }
            let kind = if user.method == AuthMethod::Cert || user.tls_only {
                "hostssl"
            } else {
                "host"
            };
            hba += &format!("{kind} all {} {addr} {}\n", user.name, user.method.hba());
        }
        hba += &format!("host all all {addr} scram-sha-256\n");
    }
    hba
}

/// Roles (md5 ones stored as md5) and the test database, writable by everyone.
pub fn setup_sql() -> String {
    let mut sql = String::new();
    for user in TEST_USERS {
        let mut create = format!("CREATE ROLE {} LOGIN", user.name);
        if user.superuser {
            create += " SUPERUSER";
        }
        if let Some(pw) = user.password {
            create += &format!(" PASSWORD {}", quote_literal(pw));
        }
        if user.method == AuthMethod::Md5 {
            sql += &format!(
                "SET password_encryption = 'md5';\n{create};\nRESET password_encryption;\n"
            );
        } else {
            sql += &format!("{create};\n");
        }
    }
    sql += &format!("CREATE DATABASE {TEST_DATABASE};\n\\connect {TEST_DATABASE}\n");
    sql += "GRANT ALL ON SCHEMA public TO PUBLIC;\n";
    sql
}

/// A pristine `initdb` result, made once per test process and copied (`cp -a`, which keeps
/// owner and modes) for every server: about 0.3 s instead of 0.7 s for initdb. Its directory
/// lives in a static and is removed by its watchdog when the process exits.
pub fn copy_template(user: &ServerUser, dest: &Path) {
    static TEMPLATE: OnceLock<Result<Workdir, String>> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        panic::catch_unwind(AssertUnwindSafe(|| make_template(user)))
            .map_err(|e| panic_message(e.as_ref()))
    });
    let template = match template {
        Ok(t) => t,
        Err(why) => panic!("initdb failed earlier in this test process: {why}"),
    };
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(template.data_dir()).arg(dest);
    let out = cmd.output().expect("run cp");
    assert!(
        out.status.success(),
        "{} failed: {}",
        process::describe(&cmd),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_template(user: &ServerUser) -> Workdir {
    let workdir = Workdir::create(user, "template");
    let mut cmd = user.command(&binaries().initdb);
    cmd.arg("-D")
        .arg(workdir.data_dir())
        .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=reject"])
        .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        .current_dir(workdir.path());
    let out = process::run_with_timeout(&mut cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    if !out.status.success() {
        panic!(
            "{} failed: {}{}",
            process::describe(&cmd),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    workdir
}

pub fn write_file(path: &Path, contents: &str, mode: u32, owner: Option<&ServerUser>) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    if let Some(user) = owner {
        user.chown(path);
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_string()
}

/// `'...'` with quotes doubled: SQL literals and `postgresql.conf` values.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
