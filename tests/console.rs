//! The web console, served by the binary itself: its files and their headers, and
//! a real browser (Debian's Chromium, driven by Playwright in
//! `tests/console/e2e.mjs`) taking a key through create, copy, deactivate,
//! reactivate, rotate, edit and delete while checking what the page shows against
//! what the API then says (also the hygiene lists, the usage charts' numbers and
//! the overview), and refusing to switch to the token of a `#token=` link
//! (another tenant's) without asking. axe-core checks every screen on the way: a
//! `serious` or `critical` accessibility violation fails the run. The browser run
//! also saves the screenshots of `docs/screenshots/` (or of
//! `KEYLEDGER_SCREENSHOTS`).
//!
//! Without node, `tests/console/node_modules` (`npm ci --prefix tests/console`:
//! playwright-core and axe-core) or Chromium the browser test prints `SKIPPED` and
//! passes; with `KEYLEDGER_REQUIRE_BROWSER=1` (as in `.ci/run`) a skip is a failure.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use helpers::{start, token, Backend, TestApp, TestStore};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, including Chromium's start.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

/// A keyledger server over a fresh SQLite store.
async fn console_server() -> TestApp {
    let store = TestStore::new(Backend::Sqlite)
        .await
        .expect("an embedded store needs no configuration");
    start(store, |config| {
        // Short, so that the page shows usage counts the test produced.
        config.usage_flush_interval = Duration::from_secs(1);
        config.poll_interval = Duration::from_millis(50);
        // The webhooks page's endpoint is on this machine.
        config.webhook_allow_private = true;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_with_strict_headers() {
    let server = console_server().await;
    let client = reqwest::Client::new();
    let cases = [
        ("/", "text/html"),
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ];
    for (path, content_type) in cases {
        let response = client.get(server.url(path)).send().await.expect("get");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            header("content-type").starts_with(content_type),
            "{path}: {}",
            header("content-type")
        );
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp}");
        }
        let body = response.text().await.expect("body");
        assert!(!body.is_empty(), "{path}");
        // The SVG namespace (of the usage charts) is a name, not an address.
        let addresses = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !addresses.contains("http://") && !addresses.contains("https://"),
            "{path} loads nothing from another origin"
        );
    }

    let page = client.get(server.url("/")).send().await.expect("get");
    let html = page.text().await.expect("body");
    assert!(html.contains(r#"src="/console/console.js""#));
    assert!(html.contains(r#"href="/console/console.css""#));
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style (the policy forbids them)"
    );

    // The API and the JSON 404 are unchanged around the console.
    let missing = client.get(server.url("/console/nope")).send().await;
    let missing = missing.expect("get");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found");
    let keys = client
        .get(server.url("/v1/keys"))
        .bearer_auth(token("acme", "alice"))
        .send()
        .await
        .expect("list");
    assert_eq!(keys.status(), 200);
    let wrong = client.post(server.url("/")).send().await.expect("post");
    assert_eq!(wrong.status(), 405);
    server.stop().await;
}

/// Why the browser test cannot run here, if it cannot.
fn missing_browser_prerequisite(dir: &Path) -> Option<String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("`node` is not on PATH".into());
    }
    for package in ["playwright-core", "axe-core"] {
        if !dir
            .join("node_modules")
            .join(package)
            .join("package.json")
            .exists()
        {
            return Some(format!(
                "{} has no {package}: run `npm ci --prefix tests/console`",
                dir.display()
            ));
        }
    }
    if !Path::new(&chromium()).exists() {
        return Some(format!(
            "{} is missing: `apt-get install -y chromium`",
            chromium()
        ));
    }
    None
}

fn chromium() -> String {
    std::env::var("KEYLEDGER_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_goes_through_its_lifecycle_in_the_console_in_a_real_browser() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/console");
    if let Some(why) = missing_browser_prerequisite(&dir) {
        let required = std::env::var("KEYLEDGER_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(!required, "KEYLEDGER_REQUIRE_BROWSER=1 but {why}");
        helpers::skipped(&format!("browser test of the web console: {why}"));
        return;
    }

    // KEYLEDGER_SCREENSHOTS elsewhere leaves the committed screenshots alone.
    let screenshots = std::env::var_os("KEYLEDGER_SCREENSHOTS")
        .map_or_else(|| root.join("docs/screenshots"), PathBuf::from);
    let server = console_server().await;
    let run = tokio::process::Command::new("node")
        .arg("e2e.mjs")
        .current_dir(&dir)
        .env("KEYLEDGER_URL", &server.address)
        .env("KEYLEDGER_TOKEN", token("acme", "alice"))
        // A sign-in link someone else sent: another tenant, which the console
        // must not switch to without asking.
        .env("KEYLEDGER_OTHER_TOKEN", token("evil-corp", "mallory"))
        .env("KEYLEDGER_CHROMIUM", chromium())
        .env("KEYLEDGER_SCREENSHOTS", screenshots)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("the browser test took longer than {BROWSER_TIMEOUT:?}"))
        .expect("run node tests/console/e2e.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "tests/console/e2e.mjs failed ({}); its output is above",
        output.status
    );
    server.stop().await;
}
