//! The one poison-ignoring [`lock`] for std mutexes.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poison. Only for data that every update leaves consistent (a
/// single push, pop, swap or counter change) and that is never held across an await: a
/// panic elsewhere then cannot have left it half-changed, and one panic must not stop the rest.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
