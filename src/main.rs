//! The `pglink` binary: everything lives in the library ([`pglink::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    pglink::cli::main()
}
