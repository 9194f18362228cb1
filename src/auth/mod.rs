//! Authentication primitives (sans-IO).
//!
//! Everything here works on SASL/password message *payloads* (the bytes inside the
//! `SASLInitialResponse`, `SASLResponse`, `AuthenticationSASLContinue`, … messages), never on wire
//! framing, sockets or the clock, so unit tests and `cargo fuzz` drive it directly.
//!
//! - [`scram`]: SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side (clients logging in to pglink),
//!   the verifier format PostgreSQL stores in `pg_authid.rolpassword`, and the shared error type.
//! - [`scram_client`]: SCRAM client (pglink logging in to a backend), libpq's mechanism selection
//!   rules and a cache so a pool pays PBKDF2 once per (password, salt, iterations).
//! - [`md5`]: the legacy `md5` password method.
//! - [`channel_binding`]: `tls-server-end-point` data (RFC 5929) from a DER certificate.
//! - [`rng`]: the randomness source, injectable so exchanges are reproducible in tests.
//! - [`constant_time_eq`] and [`cleartext_verify`]: every secret comparison goes through these.
//!
//! Input from peers never panics: this module denies indexing, `unwrap`, `expect` and `panic`
//! outside tests. Errors say what the peer got wrong ([`ScramError`]) and how the proxy should
//! report it ([`AuthFailureKind`]).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod channel_binding;
mod ct;
mod error;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzzing;
pub mod md5;
pub mod rng;
pub mod scram;
pub mod scram_client;
#[cfg(test)]
mod tests;
mod verifier;

pub use channel_binding::{CertHashError, tls_server_end_point};
pub use ct::{cleartext_verify, constant_time_eq};
pub use md5::{md5_password, md5_stored, md5_verify, md5_verify_stored};
pub use rng::{FixedRng, OsRng, Rng};
pub use scram::{
    AuthFailureKind, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, ScramServer, ScramVerifier,
    ScramVerifierError, mechanisms,
};
pub use scram_client::{
    ClientChannelBinding, MAX_SERVER_ITERATIONS, SaltedKeyCache, ScramClient, ScramKeys,
    select_mechanism,
};
