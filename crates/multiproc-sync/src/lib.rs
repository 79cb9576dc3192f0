//! Process-shared synchronisation primitives, Python's `multiprocessing.synchronize`: futex
//! words in the shared heap of `multiproc-core`, usable from any process that received a copy
//! of the handle (as a `Process` argument, under fork, spawn or forkserver).
//!
//! | Python | multiproc |
//! |---|---|
//! | `Lock()`, `with lock:` | [`Lock::new()`], `let _g = lock.acquire()` |
//! | `lock.acquire(block=False)`, `acquire(timeout=t)` | [`Lock::try_acquire`], [`Lock::acquire_timeout`] |
//! | `lock.acquire()` / `lock.release()` (no `with`) | [`Lock::acquire_raw`] / [`Lock::release`] |
//! | `RLock()` | [`RLock::new()`] |
//! | `Semaphore(n)`, `BoundedSemaphore(n)`, `get_value()` | [`Semaphore::new(n)`](Semaphore::new), [`BoundedSemaphore::new(n)`](BoundedSemaphore::new), [`Semaphore::get_value`] |
//! | `Event()`, `set`, `clear`, `is_set`, `wait(t)` | [`Event`] |
//! | `Condition(lock)`, `wait(t)`, `wait_for`, `notify(n)`, `notify_all` | [`Condition::new()`] (over an `RLock`), [`Condition::with_lock`] |
//! | `Barrier(parties, action, timeout)`, `wait()`, `abort`, `reset`, `broken`, `n_waiting` | [`Barrier::new`], [`Barrier::wait`], [`Barrier::wait_with`] (the action) … |
//!
//! Beyond Python: a process that dies holding a [`Lock`] or [`RLock`] does not deadlock the
//! others: the next acquirer takes the lock over and gets [`OwnerDied`] carrying the guard.
//!
//! ```
//! use multiproc_core::Process;
//! use multiproc_sync::Lock;
//!
//! fn work(lock: Lock) {
//!     let _guard = lock.acquire().unwrap();
//!     // only one process at a time here
//! }
//!
//! let lock = Lock::new()?;
//! let mut p = Process::new(work, lock.clone());
//! p.start().unwrap();
//! p.join().unwrap();
//! # Ok::<(), multiproc_sync::Error>(())
//! ```
//!
#![forbid(unsafe_code)]

mod barrier;
mod condition;
mod error;
mod event;
mod futex;
mod lock;
mod semaphore;

pub use crate::barrier::{Barrier, BrokenBarrier};
pub use crate::condition::{Condition, ConditionLock, MAX_WAITERS};
pub use crate::error::{Error, LockResult, OwnerDied, TryAcquireError, TryLockResult};
pub use crate::event::Event;
pub use crate::lock::{Acquired, Lock, LockGuard, MAX_SLICE, RLock, RLockGuard, SLICE};

/// Hooks for tests of owner-death detection (not a stable API).
#[doc(hidden)]
pub mod testing {
    pub use crate::futex::{START_TIME, force_start_time_tokens};
}
pub use crate::semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};
