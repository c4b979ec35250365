//! `keyledger scan` as a user runs it: files and directories, a repository's
//! history, liveness from a server, and the rule it prints for other
//! scanners, checked against the key-format vectors and near misses.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keyledger");

fn scan(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .arg("scan")
        .args(args)
        .current_dir(dir)
        .env_remove("KEYLEDGER_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run keyledger scan")
}

fn vectors() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("domain/vectors/key-format.json"),
    )
    .expect("vectors");
    serde_json::from_str(&text).expect("json")
}

fn valid_keys() -> Vec<String> {
    vectors()["valid"]
        .as_array()
        .expect("valid")
        .iter()
        .map(|v| v["key"].as_str().expect("key").to_string())
        .collect()
}

#[test]
fn keys_in_files_are_reported_by_display_prefix_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = &valid_keys()[2];
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    std::fs::write(
        dir.path().join("config/app.env"),
        format!("NAME=x\nAPI_KEY={key}\n# {key} again\n"),
    )
    .expect("write");
    // Near misses and the .git directory are not reported.
    std::fs::write(
        dir.path().join("notes.txt"),
        format!("{}X\n", &key[..key.len() - 1]),
    )
    .expect("write");
    std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
    std::fs::write(dir.path().join(".git/ORIG"), key).expect("write");

    let out = scan(&[], dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let display = &key[..16];
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("./config/app.env:2: {display}..."),
            format!("./config/app.env:3: {display}..."),
        ]
    );
    assert!(!stdout.contains(key.as_str()), "never a whole key");

    let json = scan(&["--json", "config"], dir.path());
    let first: Value = serde_json::from_str(
        String::from_utf8(json.stdout)
            .expect("utf-8")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(first["display_prefix"], display);
    assert_eq!(first["line"], 2);

    let clean = tempfile::tempdir().expect("tempdir");
    std::fs::write(clean.path().join("a.txt"), "nothing here\n").expect("write");
    assert_eq!(scan(&[], clean.path()).status.code(), Some(0));
}

#[test]
fn the_history_of_a_repository_is_scanned_with_git() {
    let git_ok = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(git_ok, "git is needed for this test");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = &valid_keys()[0];
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    std::fs::write(
        dir.path().join("settings.py"),
        format!("DEBUG = True\nKEY = '{key}'\n"),
    )
    .expect("write");
    git(&["add", "."]);
    git(&["commit", "-qm", "add settings"]);
    // Removed later: only the history has it.
    std::fs::write(dir.path().join("settings.py"), "DEBUG = True\n").expect("write");
    git(&["commit", "-qam", "remove the key"]);
    assert_eq!(
        scan(&[], dir.path()).status.code(),
        Some(0),
        "the tree is clean"
    );
    let out = scan(&["--git"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        stdout
            .trim()
            .ends_with(&format!(":settings.py:2: {}...", &key[..16])),
        "{stdout}"
    );
    assert!(!stdout.contains(key.as_str()));
}

#[test]
fn the_printed_regex_finds_every_valid_vector_and_no_near_miss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = scan(&["--rules", "regex"], dir.path());
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let re = regex::Regex::new(printed.trim()).expect("a valid expression");
    for key in valid_keys() {
        assert!(re.is_match(&format!("x = \"{key}\";")), "{key}");
    }
    let key = &valid_keys()[2];
    let near_misses = [
        key.replace("_live_", "_prod_"),
        key.replace("kl_", "KL_"),
        key[..key.len() - 1].to_string(),
        format!("{key}0"),
        format!("{}{}", &key[..20], &key[21..]),
        key.replace('A', "-"),
        format!("_{}", &key[3..]),
    ];
    for miss in &near_misses {
        assert!(!re.is_match(miss), "{miss}");
    }
    let gitleaks = scan(&["--rules", "gitleaks"], dir.path());
    let rule = String::from_utf8(gitleaks.stdout).expect("utf-8");
    assert!(
        rule.contains("[[rules]]") && rule.contains(printed.trim()),
        "{rule}"
    );
    assert_eq!(
        scan(&["--rules", "yara"], dir.path()).status.code(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_tells_which_keys_are_still_live() {
    let app = helpers::spawn_sqlite_app().await;
    let (_, live) = app.create_key("in a file").await;
    let (revoked_id, revoked) = app.create_key("revoked").await;
    app.post(
        &format!("/v1/keys/{revoked_id}/deactivate"),
        serde_json::json!({}),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("leak.txt"), format!("{live}\n{revoked}\n")).expect("write");
    let out = tokio::task::spawn_blocking({
        let (address, token, path) = (
            app.address.clone(),
            app.token.clone(),
            dir.path().to_path_buf(),
        );
        move || scan(&["--server", &address, "--token", &token], &path)
    })
    .await
    .expect("scan");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].ends_with("... (live)"), "{stdout}");
    assert!(lines[1].ends_with("... (inactive)"), "{stdout}");
    assert!(
        !stdout.contains(&live) && !stdout.contains(&revoked),
        "never a whole key"
    );
}
