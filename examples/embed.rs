//! pglink embedded in another program: start it in front of a PostgreSQL, run a query through
//! it with a driver, shut it down.
//!
//! ```text
//! PGHOST=127.0.0.1 PGPORT=5432 PGUSER=app PGPASSWORD=secret PGDATABASE=app \
//!     cargo run --example embed
//! ```
//!
//! The PostgreSQL role must be able to log in over TCP with that password (SCRAM or md5);
//! pglink logs in as the same user with the same password. The program prints what the query
//! returned and exits 0, or says what failed and exits 1.

use std::process::ExitCode;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (host, port) = (env("PGHOST", "127.0.0.1"), env("PGPORT", "5432"));
    let user = env("PGUSER", "postgres");
    let password = std::env::var("PGPASSWORD").map_err(|_| "PGPASSWORD is not set")?;
    let database = env("PGDATABASE", &user);

    // The configuration: the same fields as pglink.json, here as a JSON value.
    let config = pglink::Config::from_value(serde_json::json!({
        "listen": "127.0.0.1:0",
        "databases": {
            database.as_str(): {
                "users": [{
                    "username": { "insecure_value": user },
                    "password": { "insecure_value": password }
                }],
                "backend": {
                    "host": host,
                    "port": port.parse::<u16>()?,
                    "database": database,
                    "pool_max_conns": 4,
                    "sslmode": "prefer"
                }
            }
        }
    }))?;

    // Returns once pglink accepts connections; its threads are named `pglink-*`.
    let server = pglink::Server::start(config)?;
    let addr = server.local_addrs()[0];
    println!("pglink listening on {addr}");

    // Any driver works; this one is tokio-postgres.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: String = runtime.block_on(async {
        let dsn = format!(
            "host={} port={} user={user} password={password} dbname={database}",
            addr.ip(),
            addr.port()
        );
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let row = client
            .query_one("SELECT 'through pglink: ' || (40 + 2)::text", &[])
            .await?;
        drop(client);
        let _ = driver.await;
        Ok::<_, tokio_postgres::Error>(row.get(0))
    })?;
    println!("{answer}");

    // Graceful: open transactions may finish, then every thread is joined.
    server.shutdown();
    println!("pglink stopped");
    Ok(())
}
