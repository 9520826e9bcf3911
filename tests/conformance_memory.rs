//! The backend conformance suite, run against the in-memory backend.

flowline::conformance_tests!(flowline::MemoryBackend::new());
