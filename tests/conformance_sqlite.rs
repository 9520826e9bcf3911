//! The conformance suite against the SQLite backend, each check on a new file.

fn fresh_backend() -> flowline::SqliteBackend {
    // Kept after the test: SQLite reopens the file by path for its readers, so
    // the directory must outlive the backend. Cargo's target/tmp is its home.
    let dir = tempfile::Builder::new()
        .prefix("conformance-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory")
        .keep();
    flowline::SqliteBackend::open(dir.join("flowline.db")).expect("a new database file")
}

flowline::conformance_tests!(fresh_backend());
