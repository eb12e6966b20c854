//! Locking shared by the crate.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex` even when a thread panicked holding it: the values guarded this way are
/// changed in single steps, so a panic leaves them whole, and reporting goes on.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
