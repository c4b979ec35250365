//! Locking shared by the in-memory parts of the projections.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`. A poisoned lock only means a panic elsewhere while it was
/// held; every structure behind these locks is valid between statements,
/// so the data is still good and the panic is not spread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
