//! The time source. Injectable so that tests can move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// Gives the current time, in whole milliseconds (the precision projections keep).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        let ms = Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed);
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    /// Moves this clock (and every clone of it) forward; for tests.
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}
