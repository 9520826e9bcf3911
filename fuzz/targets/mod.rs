//! What each fuzz target checks, one module per target.
//!
//! Each `check` takes the fuzzer's bytes and panics only when flowline breaks
//! a promise on them: a panic inside flowline, an input accepted that should
//! not be, a value that does not survive its own round trip, or an answer
//! outside the documented ones. Bad input itself is no failure: flowline must
//! answer it with a typed error, and that is what the checks let through.
//!
//! The fuzz binaries (`fuzz_targets/`) call these, and so does the main
//! crate's `tests/fuzz_corpora.rs`, which replays `corpus/` and
//! `regressions/` on every `cargo test --all-features`.

pub mod cron;
pub mod envelope;
pub mod http_request;
pub mod order_json;
pub mod sqlite_file;
