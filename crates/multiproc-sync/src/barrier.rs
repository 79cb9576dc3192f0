//! [`Barrier`]: Python's `threading.Barrier` algorithm (which `multiprocessing.Barrier` reuses)
//! over a [`Condition`] and two words in the shared heap.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::error::Error;
use crate::futex;
use crate::lock::Lock;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;

/// `[state, count (threads inside wait), parties, ..]`.
type State = Shared<[AtomicU32; 4]>;

/// The barrier was broken (a waiter timed out, [`Barrier::abort`] or [`Barrier::reset`] was
/// called, or an action panicked): every current and future waiter gets this until `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the barrier is broken")]
pub struct BrokenBarrier;

/// A barrier for a fixed number of parties across processes (Python's
/// `multiprocessing.Barrier`).
///
/// Each party calls [`wait`](Barrier::wait); when the last one arrives all are released, and
/// each gets a distinct index in `0..parties`. A waiter that times out breaks the barrier for
/// everyone, as in Python.
///
/// Python's `action` argument is given to [`wait_with`](Barrier::wait_with) instead: the last
/// party to arrive runs its action before the others are released (a function value cannot be
/// stored in shared memory for every process to call).
///
/// ```
/// use multiproc_sync::Barrier;
///
/// let b = Barrier::new(1, None)?;
/// assert_eq!(b.wait(), Ok(0)); // one party: released at once
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    cond: Condition<Lock>,
    state: State,
    timeout: Option<Duration>,
}

impl Barrier {
    /// A barrier for `parties` (at least 1) with a default `timeout` for [`wait`](Barrier::wait)
    /// (`None`: wait forever).
    pub fn new(parties: u32, timeout: Option<Duration>) -> Result<Barrier, Error> {
        if parties == 0 {
            return Err(Error::InvalidValue("a barrier needs at least one party"));
        }
        let state: State = Shared::new().map_err(Error::Heap)?;
        state[2].store(parties, Relaxed);
        Ok(Barrier {
            cond: Condition::with_lock(Lock::new()?)?,
            state,
            timeout,
        })
    }

    /// Waits for all parties, with the barrier's default timeout; this party's index.
    pub fn wait(&self) -> Result<u32, BrokenBarrier> {
        self.wait_full(self.timeout, || {})
    }

    /// Waits for all parties at most `timeout`; a timeout breaks the barrier.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, BrokenBarrier> {
        self.wait_full(Some(timeout), || {})
    }

    /// Like [`wait`](Barrier::wait); if this party is the last to arrive, it runs `action`
    /// before releasing the others (a panic in it breaks the barrier and propagates).
    pub fn wait_with(&self, action: impl FnOnce()) -> Result<u32, BrokenBarrier> {
        self.wait_full(self.timeout, action)
    }

    fn s(&self, i: usize) -> &AtomicU32 {
        &self.state[i]
    }

    fn wait_full(
        &self,
        timeout: Option<Duration>,
        action: impl FnOnce(),
    ) -> Result<u32, BrokenBarrier> {
        let deadline = timeout.and_then(futex::deadline);
        let _g = self
            .cond
            .lock()
            .acquire()
            .unwrap_or_else(|dead| dead.into_guard());
        // Block while the barrier drains or resets.
        while matches!(self.s(0).load(Relaxed), DRAINING | RESETTING) {
            let _ = self.cond.wait();
        }
        if self.s(0).load(Relaxed) == BROKEN {
            return Err(BrokenBarrier);
        }
        let index = self.s(1).load(Relaxed);
        self.s(1).store(index + 1, Relaxed);
        let result = if index + 1 == self.s(2).load(Relaxed) {
            self.release(action)
        } else {
            self.wait_release(deadline)
        };
        // Leave; the last one out of a drain or reset refills the barrier.
        let count = self.s(1).load(Relaxed) - 1;
        self.s(1).store(count, Relaxed);
        if count == 0 && matches!(self.s(0).load(Relaxed), DRAINING | RESETTING) {
            self.s(0).store(FILLING, Relaxed);
            let _ = self.cond.notify_all();
        }
        result.map(|()| index)
    }

    fn release(&self, action: impl FnOnce()) -> Result<(), BrokenBarrier> {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(action)).is_err() {
            self.break_it();
            return Err(BrokenBarrier);
        }
        self.s(0).store(DRAINING, Relaxed);
        let _ = self.cond.notify_all();
        Ok(())
    }

    fn wait_release(&self, deadline: Option<Instant>) -> Result<(), BrokenBarrier> {
        let timeout = futex::left(deadline);
        let released = self
            .cond
            .wait_for(|| self.s(0).load(Relaxed) != FILLING, timeout)
            .unwrap_or(false);
        if !released {
            self.break_it();
            return Err(BrokenBarrier);
        }
        match self.s(0).load(Relaxed) {
            DRAINING => Ok(()),
            _ => Err(BrokenBarrier),
        }
    }

    /// Breaks the barrier and wakes every waiter (the lock is held).
    fn break_it(&self) {
        self.s(0).store(BROKEN, Relaxed);
        let _ = self.cond.notify_all();
    }

    /// Breaks the barrier: current and future waiters get [`BrokenBarrier`] until
    /// [`reset`](Barrier::reset).
    pub fn abort(&self) {
        let _g = self
            .cond
            .lock()
            .acquire()
            .unwrap_or_else(|dead| dead.into_guard());
        self.break_it();
    }

    /// Returns the barrier to its initial state; parties waiting now get [`BrokenBarrier`].
    pub fn reset(&self) {
        let _g = self
            .cond
            .lock()
            .acquire()
            .unwrap_or_else(|dead| dead.into_guard());
        if self.s(1).load(Relaxed) > 0 {
            let state = self.s(0).load(Relaxed);
            if state == FILLING || state == BROKEN {
                self.s(0).store(RESETTING, Relaxed);
            }
        } else {
            self.s(0).store(FILLING, Relaxed);
        }
        let _ = self.cond.notify_all();
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.s(0).load(Relaxed) == BROKEN
    }

    /// How many parties wait now.
    pub fn n_waiting(&self) -> u32 {
        if self.s(0).load(Relaxed) == FILLING {
            self.s(1).load(Relaxed)
        } else {
            0
        }
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.s(2).load(Relaxed)
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .finish()
    }
}
