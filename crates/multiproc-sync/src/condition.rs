//! [`Condition`]: counted wake-up grants over a sequence futex.
//!
//! Under the condition's lock a waiter counts itself in `waiters` and notes the sequence
//! number; `notify(n)` moves up to `n` counted waiters to `grants`, bumps the sequence (the
//! futex sleepers wait on) and records it as the grant generation. A waiter returns notified
//! only by taking a grant, and may take one only if it started waiting before the latest
//! notify (so a notifier that waits right after notifying cannot take its own grant). A
//! waiter whose timeout fires takes the lock back and either takes a grant it is entitled to
//! or leaves the count. `waiters + grants` is always the number of waiters that have not
//! returned, so exactly as many wake as were granted and no grant is left over. One hand-off
//! each way per notify, where Python's algorithm waits for every woken sleeper's
//! acknowledgement.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::futex::{self, Woke};
use crate::lock::{Acquired, Lock, RLock};

mod private {
    pub trait Sealed {}
    impl Sealed for crate::Lock {}
    impl Sealed for crate::RLock {}
}

/// A lock a [`Condition`] can be built on: [`Lock`] or [`RLock`].
pub trait ConditionLock: private::Sealed + Clone + Serialize + DeserializeOwned {
    /// Whether the caller holds it (the thread for an `RLock`, the process for a `Lock`).
    #[doc(hidden)]
    fn held_by_caller(&self) -> bool;
    /// Releases it completely; what `reacquire` needs to restore.
    #[doc(hidden)]
    fn release_all(&self) -> u32;
    /// Takes it back as it was.
    #[doc(hidden)]
    fn reacquire(&self, saved: u32);
}

impl ConditionLock for Lock {
    fn held_by_caller(&self) -> bool {
        self.is_mine()
    }
    fn release_all(&self) -> u32 {
        let _ = self.release();
        1
    }
    fn reacquire(&self, _: u32) {
        // A dead previous owner changes nothing here: the lock is ours again either way.
        let got = self.acquire_raw(None);
        debug_assert_ne!(got, Acquired::TimedOut);
    }
}

impl ConditionLock for RLock {
    fn held_by_caller(&self) -> bool {
        self.is_mine()
    }
    fn release_all(&self) -> u32 {
        RLock::release_all(self)
    }
    fn reacquire(&self, saved: u32) {
        RLock::reacquire(self, saved)
    }
}

/// `[sequence, waiters, grants, grant generation]`; all but the sequence's readers change
/// under the condition's lock.
type State = Shared<[AtomicU32; 4]>;
const SEQ: usize = 0;
const WAITERS: usize = 1;
const GRANTS: usize = 2;
const GRANT_GEN: usize = 3;

/// A condition variable shared by processes (Python's `multiprocessing.Condition`), over an
/// [`RLock`] (the default, as in Python) or a [`Lock`].
///
/// As in Python, the caller holds the condition's lock around `wait` and `notify`.
///
/// ```
/// use multiproc_sync::Condition;
/// use std::time::Duration;
///
/// let cond = Condition::new()?;
/// let _guard = cond.lock().acquire().unwrap();
/// assert_eq!(cond.wait_timeout(Duration::from_millis(10))?, false); // nobody notifies
/// cond.notify_all()?;
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "L: ConditionLock")]
pub struct Condition<L: ConditionLock = RLock> {
    lock: L,
    state: State,
}

impl Condition<RLock> {
    /// A condition over a new [`RLock`].
    pub fn new() -> Result<Condition<RLock>, Error> {
        Condition::with_lock(RLock::new()?)
    }
}

impl<L: ConditionLock> Condition<L> {
    /// A condition over `lock` (Python's `Condition(lock)`).
    pub fn with_lock(lock: L) -> Result<Condition<L>, Error> {
        Ok(Condition {
            lock,
            state: Shared::new().map_err(Error::Heap)?,
        })
    }

    /// The lock to hold around [`wait`](Self::wait) and [`notify`](Self::notify).
    pub fn lock(&self) -> &L {
        &self.lock
    }

    /// Takes one grant, if the waiter that started at sequence `since` may (it started before
    /// the latest notify) and one is left.
    fn take_grant(&self, since: u32) -> bool {
        let st = &*self.state;
        if (st[GRANT_GEN].load(Acquire).wrapping_sub(since) as i32) <= 0 {
            return false;
        }
        let mut g = st[GRANTS].load(Acquire);
        while g > 0 {
            match st[GRANTS].compare_exchange_weak(g, g - 1, Acquire, Acquire) {
                Ok(_) => return true,
                Err(now) => g = now,
            }
        }
        false
    }

    /// Releases the lock, waits for a notification, takes the lock back; `Ok(true)` when
    /// notified. [`Error::NotOwner`] if the caller does not hold the lock.
    pub fn wait(&self) -> Result<bool, Error> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`: `Ok(false)` then.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.wait_until(futex::deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        if !self.lock.held_by_caller() {
            return Err(Error::NotOwner);
        }
        let st = &*self.state;
        st[WAITERS].fetch_add(1, Relaxed);
        // Read under the lock: a notify after this changes the word, so the futex wait below
        // returns at once instead of missing it.
        let since = st[SEQ].load(Acquire);
        let mut seq = since;
        let saved = self.lock.release_all();
        let notified = loop {
            if self.take_grant(since) {
                break true;
            }
            let left = futex::left(deadline);
            if left == Some(Duration::ZERO) {
                break false;
            }
            if let Woke::TimedOut = futex::wait(&st[SEQ], seq, left) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break false;
                }
            }
            seq = st[SEQ].load(Acquire);
        };
        self.lock.reacquire(saved);
        if notified || self.take_grant(since) {
            // (A grant given while the timeout fired is ours: we were counted.)
            return Ok(true);
        }
        st[WAITERS].fetch_sub(1, Relaxed);
        Ok(false)
    }

    /// Waits until `predicate()` holds, re-checking it after every wake-up, for at most
    /// `timeout` (`None`: forever); the predicate's last value (Python's `wait_for`).
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, Error> {
        let deadline = timeout.and_then(futex::deadline);
        let mut result = predicate();
        while !result {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.wait_until(deadline)?;
            result = predicate();
        }
        Ok(result)
    }

    /// Wakes up to `n` waiters. [`Error::NotOwner`] if the caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<(), Error> {
        if !self.lock.held_by_caller() {
            return Err(Error::NotOwner);
        }
        let st = &*self.state;
        let k = n.min(st[WAITERS].load(Relaxed));
        if k > 0 {
            st[WAITERS].fetch_sub(k, Relaxed);
            st[GRANTS].fetch_add(k, Release);
            let generation = st[SEQ].fetch_add(1, Release).wrapping_add(1);
            st[GRANT_GEN].store(generation, Release);
            futex::wake(&st[SEQ], k);
        }
        Ok(())
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<(), Error> {
        self.notify(u32::MAX)
    }
}

impl<L: ConditionLock + fmt::Debug> fmt::Debug for Condition<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}
