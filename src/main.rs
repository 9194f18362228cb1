//! The `pglink` binary: the command line ([`cli`]) around the library's [`pglink::Server`].

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
