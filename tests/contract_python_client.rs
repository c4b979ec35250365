//! A client generated from the served `GET /openapi.json` by a well-known
//! generator (PyPI `openapi-python-client`, the version pinned in
//! tests/contract/python_client.sh) runs the key lifecycle against the built
//! binary: tests/contract/python_client.sh does the work, this test makes it
//! part of `cargo test`. It fails when the generator cannot take part of the
//! document, or when an answer does not fit the generated models.
//!
//! Without that generator version (`python3 -m pip install
//! openapi-python-client==<pinned>`) the test prints `SKIPPED: openapi-python-client
//! not installed` and passes; with `KEYLEDGER_REQUIRE_OPENAPI_VALIDATOR=1` (as in
//! `.ci/run`, which installs the pinned version) a skip is a failure.

#[path = "common/skip.rs"]
mod skip;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_keyledger");
const REQUIRE: &str = "KEYLEDGER_REQUIRE_OPENAPI_VALIDATOR";
const SCRIPT: &str = include_str!("contract/python_client.sh");

/// The generator version the script pins (`OPENAPI_PYTHON_CLIENT_VERSION=`).
fn pinned_version() -> &'static str {
    SCRIPT
        .lines()
        .find_map(|line| line.strip_prefix("OPENAPI_PYTHON_CLIENT_VERSION="))
        .map(str::trim)
        .expect("python_client.sh pins OPENAPI_PYTHON_CLIENT_VERSION")
}

/// Why the generator cannot run here, if it cannot.
fn generator_missing(pinned: &str) -> Option<String> {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('openapi-python-client'))",
        ])
        .stdin(Stdio::null())
        .output();
    match probe {
        Err(e) => Some(format!("python3 not runnable: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "python3 -m pip install openapi-python-client=={pinned}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => {
            let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (found != pinned).then(|| {
                format!(
                    "version {found} is installed, the test pins {pinned} \
                     (python3 -m pip install openapi-python-client=={pinned})"
                )
            })
        }
    }
}

#[test]
fn a_client_generated_from_openapi_json_runs_the_key_lifecycle() {
    let pinned = pinned_version();
    if let Some(why) = generator_missing(pinned) {
        if std::env::var(REQUIRE).as_deref() == Ok("1") {
            panic!("{REQUIRE}=1 but openapi-python-client {pinned} is unavailable: {why}");
        }
        skip::skipped(&format!("openapi-python-client not installed: {why}"));
        return;
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/python_client.sh");
    let started = Instant::now();
    // No PORT: the script takes a free one, so parallel runs do not collide.
    let out = Command::new("bash")
        .arg(&script)
        .arg(BIN)
        .env_remove("PORT")
        .stdin(Stdio::null())
        .output()
        .expect("run tests/contract/python_client.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tests/contract/python_client.sh failed ({}):\n{report}",
        out.status
    );
    eprintln!("{}", report.trim());
    eprintln!("python client lifecycle took {:?}", started.elapsed());
}
