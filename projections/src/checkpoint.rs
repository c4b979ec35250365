//! Names of the checkpoints kept in the `projection_checkpoints` table. Persisted:
//! renaming one makes its projection start again from position 0.

/// Checkpoint of the key list view.
pub const KEY_LIST: &str = "key_list";
/// Checkpoint of the audit log.
pub const AUDIT_LOG: &str = "audit_log";
/// Checkpoint of the usage buckets.
pub const USAGE: &str = "usage_buckets";

/// The checkpoints of the SQL projections, as read in one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoints {
    pub key_list: i64,
    pub audit_log: i64,
    pub usage: i64,
}

impl Checkpoints {
    /// The lowest checkpoint: the feed must be read from there.
    pub fn min(&self) -> i64 {
        self.key_list.min(self.audit_log).min(self.usage)
    }
}
