//! Failures a test injects right after a commit (`Config::after_commit`), to
//! prove that nothing committed is answered as failed.

use std::sync::Arc;

use crate::error::Error;

/// Where a test's injected failure strikes (`AfterCommit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Right after a new key's event was committed.
    Created,
    /// Right after any other command's events were committed.
    Command,
}

/// A failure injected right after a commit, standing in for whatever can go
/// wrong there (a lost acknowledgement, a store gone, projections that cannot
/// catch up). For tests only: `serve` never sets one.
#[derive(Clone)]
pub struct AfterCommit(Arc<dyn Fn(Stage) -> Result<(), Error> + Send + Sync>);

impl AfterCommit {
    pub fn new(hook: impl Fn(Stage) -> Result<(), Error> + Send + Sync + 'static) -> Self {
        Self(Arc::new(hook))
    }

    pub(crate) fn call(&self, stage: Stage) -> Result<(), Error> {
        (self.0)(stage)
    }
}

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterCommit(..)")
    }
}
