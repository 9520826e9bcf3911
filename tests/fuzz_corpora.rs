//! Replays what the fuzzers keep: every input of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same check the fuzz target
//! runs (`fuzz/targets/`). A regression is an input that once broke a
//! promise, kept after the fix; the corpora are the inputs that reached new
//! code. `fuzz/README.md` says how to fuzz for longer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// `pub` for the fuzz crate; here `sqlite_file::check` (a scratch folder per
// process) is replaced by `check_in` (a temporary folder per test).
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/targets/mod.rs"]
mod targets;

/// The inputs kept for `target`, corpus and regressions, in name order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.expect("a readable folder").path()));
    }
    files.sort();
    files
}

/// Runs `check` on every input kept for `target`; fails naming each input
/// that broke it.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no inputs kept for {target}");
    let mut broken = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            broken.push(file.display().to_string());
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {} inputs of {target} broke its check:\n{}",
        broken.len(),
        files.len(),
        broken.join("\n")
    );
}

#[test]
fn order_json_inputs_are_validated_or_refused_with_a_field() {
    replay("order_json", targets::order_json::check);
}

#[test]
fn envelope_inputs_decode_round_trip_or_are_refused() {
    replay("envelope", targets::envelope::check);
}

#[test]
fn cron_inputs_parse_and_fire_in_order_or_are_refused() {
    replay("cron", targets::cron::check);
}

#[test]
fn http_inputs_are_answered_below_500() {
    replay("http_request", targets::http_request::check);
}

#[test]
fn sqlite_file_inputs_open_and_read_or_are_refused() {
    let dir = tempfile::tempdir().expect("a scratch folder");
    replay("sqlite_file", |data| {
        targets::sqlite_file::check_in(dir.path(), data)
    });
}
