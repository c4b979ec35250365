//! A webhook receiver for the end-to-end tests (shared by the API and fault
//! suites).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The test receiver (tests/fixtures/webhook_receiver.py): Python's
/// `standardwebhooks` verifies every message. Without Python or the package
/// the delivery tests print `SKIPPED` and pass, unless
/// `KEYLEDGER_REQUIRE_WEBHOOK_RECEIVER=1` (CI).
pub struct Receiver {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Receiver {
    pub fn start() -> Option<Self> {
        let available = Command::new("python3")
            .args(["-c", "import standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            assert!(
                std::env::var("KEYLEDGER_REQUIRE_WEBHOOK_RECEIVER").as_deref() != Ok("1"),
                "python3 with standardwebhooks missing and KEYLEDGER_REQUIRE_WEBHOOK_RECEIVER=1 \
                 (python3 -m pip install standardwebhooks==1.0.0)"
            );
            crate::helpers::skipped(
                "webhook receiver: python3 -m pip install standardwebhooks==1.0.0",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhook_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the receiver");
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.path().join("port")) {
                break p.trim().parse().expect("port");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(Self { dir, child, port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn set(&self, name: &str, value: &str) {
        std::fs::write(self.dir.path().join(name), value).expect("write");
    }

    pub fn raw(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("messages.jsonl")).unwrap_or_default()
    }

    pub fn messages(&self) -> Vec<Value> {
        self.raw()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a recorded message"))
            .collect()
    }

    /// Waits until `done` holds of the messages arrived (at most `timeout`).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let seen = self.messages();
            if done(&seen) {
                return seen;
            }
            assert!(
                started.elapsed() < timeout,
                "{} messages arrived: {seen:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` messages arrived (10 s at most).
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        self.wait_until(Duration::from_secs(10), |seen| seen.len() >= n)
            .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
