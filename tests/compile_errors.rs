//! What rustc says about the common mistakes: each message points at the
//! fix. The expected messages are in `tests/ui/*.stderr`; after a change of
//! wording, trybuild writes them anew when the test runs with the
//! environment variable `TRYBUILD` set to `overwrite` (read the diff before
//! committing it).

#[test]
fn common_mistakes_point_at_the_fix() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
