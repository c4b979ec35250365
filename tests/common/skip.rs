//! Saying that a test skipped, where a plain `cargo test` shows it.

use std::io::Write;

/// Writes `SKIPPED (<test>): why` to the process's stderr directly: the test
/// harness captures `println!`/`eprintln!` of passing tests, so a skip said
/// that way would look like a pass. `.ci/run` sets the `KEYLEDGER_REQUIRE_*`
/// variables, which turn each skip into a failure instead.
pub fn skipped(why: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED ({}): {why}",
        std::thread::current().name().unwrap_or("a test")
    );
}
