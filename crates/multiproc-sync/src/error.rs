//! Errors of the synchronisation primitives.

use std::fmt;

/// A misuse of a primitive, or a failure to create one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Releasing a `Lock` that is not held (Python: `ValueError: semaphore or lock released too
    /// many times`).
    #[error("lock released while not held")]
    NotHeld,
    /// Releasing an `RLock` the calling thread does not own (Python: `RuntimeError: cannot
    /// release un-acquired lock`).
    #[error("cannot release un-acquired lock: the calling thread does not own it")]
    NotOwner,
    /// Releasing a `BoundedSemaphore` above its initial value (Python: `ValueError: Semaphore
    /// released too many times`).
    #[error("semaphore released too many times")]
    TooManyReleases,
    /// A value out of range (a semaphore's initial value above `i32::MAX`).
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
    /// A `Condition` already has this many live waiters (its table of waiter slots is full).
    #[error("too many waiters on one condition (at most {0})")]
    TooManyWaiters(usize),
    /// A Barrier's action cannot be named across processes (not code of the main executable).
    #[error("invalid barrier action: {0}")]
    Action(#[source] multiproc_core::FnRefError),
    /// The shared heap could not provide memory.
    #[error("cannot allocate in the shared heap: {0}")]
    Heap(#[source] std::io::Error),
}

/// The lock was acquired, but its previous owner process died holding it: the data it
/// protects may be half-updated. The lock is held by the caller and works normally; the guard
/// is inside (like `std::sync::PoisonError`).
pub struct OwnerDied<G> {
    pub(crate) guard: G,
    pub(crate) owner: u32,
}

impl<G> OwnerDied<G> {
    /// The guard of the lock, now held by the caller.
    pub fn into_guard(self) -> G {
        self.guard
    }

    /// The pid of the process that died holding the lock.
    pub fn dead_owner(&self) -> u32 {
        self.owner
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the previous owner (pid {}) died holding the lock; it is now held by the caller",
            self.owner
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// Why a non-blocking or timed acquire did not simply succeed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TryAcquireError<G> {
    /// The lock is held by someone else (and the deadline, if any, passed).
    WouldBlock,
    /// Acquired after its owner died (see [`OwnerDied`]).
    OwnerDied(OwnerDied<G>),
}

impl<G> fmt::Display for TryAcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryAcquireError::WouldBlock => f.write_str("the lock is held elsewhere"),
            TryAcquireError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G: fmt::Debug> std::error::Error for TryAcquireError<G> {}

/// Result of a blocking acquire.
pub type LockResult<G> = Result<G, OwnerDied<G>>;
/// Result of a non-blocking or timed acquire.
pub type TryLockResult<G> = Result<G, TryAcquireError<G>>;
