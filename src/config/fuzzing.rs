//! Helper behind the `config` fuzz target (kept here, beside the code it drives, so the target
//! stays a one-liner and the seeds are checked by unit tests).
//!
//! The input is a configuration file's text. Whatever it holds, parsing and validation must
//! end in a [`Config`](super::Config) or in errors that say what is wrong (at least one, none
//! blank), never a panic. A configuration that passes must pass again once written out as
//! JSON and read back: what pglink prints (`-check`, the admin console) is what it read.
// Assertions are the point of a fuzz harness: a violated invariant must crash loudly.
#![allow(clippy::panic)]

/// Parses and validates `data` as `pglink.json`; true when it is a valid configuration.
pub fn fuzz_config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match super::parse(text) {
        Ok(parsed) => {
            let config = parsed.config;
            let _ = config.effective_reactor_threads();
            let value = serde_json::to_value(&config)
                .unwrap_or_else(|e| panic!("a valid configuration does not serialize: {e}"));
            if let Err(e) = super::parse_value(value.clone()) {
                panic!("a valid configuration written out is invalid: {e}\n{value:#}");
            }
            true
        }
        Err(e) => {
            assert!(!e.errors.is_empty(), "rejected without an error");
            for problem in &e.errors {
                assert!(!problem.to_string().trim().is_empty(), "a blank error");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config")
    }

    /// The committed seeds: the README's example, a minimal file and (with every feature) the
    /// every-field fixture are valid, and nothing in the corpus (reproducers of past findings
    /// included) panics.
    #[test]
    fn the_corpus_runs_and_its_valid_seeds_pass() {
        let mut valid = Vec::new();
        for entry in std::fs::read_dir(corpus_dir()).unwrap() {
            let path = entry.unwrap().path();
            if fuzz_config(&std::fs::read(&path).unwrap()) {
                valid.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        // The named seeds are valid; what campaigns found (hash-named) may be either.
        // every_field.json sets sections that need the default features (the fuzz target,
        // built without them, sees their errors).
        let full = cfg!(all(feature = "aws", feature = "otel", feature = "metrics"));
        for (seed, is_valid) in [
            ("example.json", true),
            ("minimal.json", true),
            ("every_field.json", full),
        ] {
            assert_eq!(valid.iter().any(|v| v == seed), is_valid, "{seed}");
        }
    }

    #[test]
    fn the_example_is_a_seed() {
        let committed = std::fs::read_to_string(corpus_dir().join("example.json")).unwrap();
        assert_eq!(committed, super::super::render::EXAMPLE);
    }
}
