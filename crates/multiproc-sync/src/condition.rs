//! [`Condition`]: Python's algorithm (`multiprocessing.synchronize.Condition`) on three
//! futex semaphores in the shared heap: sleepers announce themselves, `notify(n)` grants up to
//! `n` wake-ups and waits for each woken sleeper to acknowledge, so exactly `n` wake up (a bare
//! sequence counter wakes too many).

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::futex;
use crate::lock::{Acquired, Lock, RLock};
use crate::semaphore::Counter;

/// How long `notify` waits for a woken sleeper to acknowledge before giving up on it (a sleeper
/// that died between its wake-up and its acknowledgement must not block the notifier forever).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

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

/// `[sleeping, its waiters, woken, its waiters, wake grants, its waiters, ..]`.
type State = Shared<[AtomicU32; 8]>;

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

    fn sleeping(&self) -> Counter<'_> {
        Counter {
            count: &self.state[0],
            waiters: &self.state[1],
            bound: 0,
        }
    }

    fn woken(&self) -> Counter<'_> {
        Counter {
            count: &self.state[2],
            waiters: &self.state[3],
            bound: 0,
        }
    }

    fn grants(&self) -> Counter<'_> {
        Counter {
            count: &self.state[4],
            waiters: &self.state[5],
            bound: 0,
        }
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
        self.sleeping().give()?;
        let saved = self.lock.release_all();
        let notified = self.grants().take(deadline);
        // Acknowledge before taking the lock back: the notifier waits for this, holding it.
        let _ = self.woken().give();
        self.lock.reacquire(saved);
        Ok(notified)
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

    /// Wakes up to `n` waiters and waits until they have woken. [`Error::NotOwner`] if the
    /// caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<(), Error> {
        if !self.lock.held_by_caller() {
            return Err(Error::NotOwner);
        }
        // Sleepers that timed out since the last notify acknowledged without a grant.
        while self.woken().try_take() {
            self.sleeping().try_take();
        }
        let mut granted = 0;
        while granted < n && self.sleeping().try_take() {
            self.grants().give()?;
            granted += 1;
        }
        if granted > 0 {
            let deadline = futex::deadline(ACK_TIMEOUT);
            for _ in 0..granted {
                self.woken().take(deadline);
            }
            // Grants left over by sleepers whose timeout fired as we granted.
            while self.grants().try_take() {}
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
