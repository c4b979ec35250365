//! `keyledger-bench seed` writes what it says into the store named by the
//! same options as `keyledger`'s, chained so that the ledger verifies.

use std::process::Command;

#[test]
fn seed_writes_the_keys_and_events_asked_for_and_the_raw_keys_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_out = dir.path().join("keys.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-bench"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["seed", "--keys", "7", "--events", "30", "--keys-out"])
        .arg(&keys_out)
        .env_remove("DATABASE_URL")
        .env_remove("KEYLEDGER_EVENT_STORE")
        .output()
        .expect("run keyledger-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("seeded keys=7 events=30 in "),
        "{stdout}"
    );
    let raw = std::fs::read_to_string(&keys_out).expect("keys file");
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 7, "{raw}");
    for key in lines {
        keyledger_domain::ParsedKey::parse(key).expect("a key in keyledger's format");
    }
    // The store holds exactly those events, numbered 1..=30.
    let config = keyledger::Config::new(dir.path().join("data"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = keyledger::app::open_store(&config).await.expect("open");
        assert_eq!(store.head().await.expect("head"), 30);
        let feed = store.read_feed(0, 100).await.expect("feed");
        assert_eq!(feed.len(), 30);
        let created = feed.iter().filter(|e| e.event_type == "KeyCreated").count();
        assert_eq!(created, 7);
        store.close().await;
    });
}
