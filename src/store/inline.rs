//! The projection a store writes with group commit's batches, and what the
//! store prepared for it (SQLite: its tables' INSERTs; PostgreSQL: the one
//! statement). Both SQL stores keep it the same way; each supplies only how
//! to prepare and how to append.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keyledger_sql::InlineProjection;

/// The projection set by `Backend::set_inline`, with `T` prepared for it.
pub struct Inline<T> {
    state: Mutex<State<T>>,
    prepare: fn(Option<&dyn InlineProjection>) -> T,
}

struct State<T> {
    projection: Option<Arc<dyn InlineProjection>>,
    prepared: Arc<T>,
}

impl<T> Inline<T> {
    /// No projection yet: `prepare(None)` (events only).
    pub fn new(prepare: fn(Option<&dyn InlineProjection>) -> T) -> Self {
        Self {
            state: Mutex::new(State {
                projection: None,
                prepared: Arc::new(prepare(None)),
            }),
            prepare,
        }
    }

    /// Replaces the projection, and what was prepared for it with it.
    pub fn set(&self, projection: Arc<dyn InlineProjection>) {
        let prepared = Arc::new((self.prepare)(Some(projection.as_ref())));
        *self.state() = State {
            projection: Some(projection),
            prepared,
        };
    }

    pub fn projection(&self) -> Option<Arc<dyn InlineProjection>> {
        self.state().projection.clone()
    }

    /// What was prepared for the current projection; a batch keeps the one it
    /// started with, whatever `set` does meanwhile.
    pub fn prepared(&self) -> Arc<T> {
        self.state().prepared.clone()
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
