//! [`Condition`]: a table of waiter slots, each with its own futex word.
//!
//! Under the condition's lock a waiter takes a free slot, writes its pid, its token (see
//! `futex::own_token`) and a ticket (arrival order), marks it waiting and sleeps on the
//! slot's word. `notify(n)` (under the lock) grants the `n` oldest waiting slots whose
//! process still lives: it sets each to granted and wakes that one word. A slot whose process
//! died (killed inside `wait`) is freed instead, so a dead waiter neither takes a grant from
//! a live one nor stays counted. (When `n` covers every waiter nobody has to be chosen, so
//! nobody is checked: a dead waiter's grant deprives no one, and its slot is freed when the
//! table fills up.) A waiter returns notified only if its own slot was granted,
//! which it reads after taking the lock back (a grant that arrives while its timeout fires
//! is still its own), then frees the slot. So exactly `min(n, live waiters)` wake, no grant
//! outlives its waiter, and a notifier that waits right after notifying cannot take its own
//! grant (its slot is new). One hand-off each way per notify and no thundering herd, where
//! Python's algorithm waits for every woken sleeper's acknowledgement; the cost is one
//! liveness check (a pidfd) per waiter chosen from more waiters than `n`.

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

/// How many processes and threads may wait on one condition at once.
pub const MAX_WAITERS: usize = 128;

/// `[next ticket, waiting slots, 0, 0]`, then per slot `[state, pid, token, ticket]`; all
/// but the slots' states (which their waiters read) change under the condition's lock.
type State = Shared<[AtomicU32; 4 + 4 * MAX_WAITERS]>;
const NEXT_TICKET: usize = 0;
const WAITING_SLOTS: usize = 1;
const SLOT_STATE: usize = 0;
const SLOT_PID: usize = 1;
const SLOT_TOKEN: usize = 2;
const SLOT_TICKET: usize = 3;
/// Slot states.
const FREE: u32 = 0;
const WAITING: u32 = 1;
const GRANTED: u32 = 2;

/// A condition variable shared by processes (Python's `multiprocessing.Condition`), over an
/// [`RLock`] (the default, as in Python) or a [`Lock`].
///
/// As in Python, the caller holds the condition's lock around `wait` and `notify`.
/// `notify(n)` wakes exactly `min(n, live waiters)`, the longest waiting first; a waiter whose
/// process was killed inside `wait` never takes a live waiter's place and stops counting. At
/// most [`MAX_WAITERS`] wait at once (beyond: [`Error::TooManyWaiters`]).
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

    /// Word `field` of slot `i`.
    fn slot(&self, i: usize, field: usize) -> &AtomicU32 {
        &self.state[4 + 4 * i + field]
    }

    /// Whether the process that took slot `i` still lives (`me`: the caller's pid, whose
    /// own threads need no check).
    fn slot_alive(&self, i: usize, me: u32) -> bool {
        let pid = self.slot(i, SLOT_PID).load(Relaxed);
        pid == me
            || futex::owner(pid, self.slot(i, SLOT_TOKEN).load(Relaxed)) == futex::Owner::Alive
    }

    /// Frees slot `i` (the lock is held).
    fn free_slot(&self, i: usize) {
        if self.slot(i, SLOT_STATE).swap(FREE, Release) == WAITING {
            self.state[WAITING_SLOTS].fetch_sub(1, Relaxed);
        }
        self.slot(i, SLOT_PID).store(0, Relaxed);
    }

    /// Takes a free slot for the caller (the lock is held), freeing the slots of dead
    /// processes first if none is free.
    fn register(&self) -> Result<usize, Error> {
        let me = multiproc_core::current_pid();
        let free = (0..MAX_WAITERS)
            .find(|&i| self.slot(i, SLOT_STATE).load(Relaxed) == FREE)
            .or_else(|| {
                for i in 0..MAX_WAITERS {
                    if !self.slot_alive(i, me) {
                        self.free_slot(i);
                    }
                }
                (0..MAX_WAITERS).find(|&i| self.slot(i, SLOT_STATE).load(Relaxed) == FREE)
            })
            .ok_or(Error::TooManyWaiters(MAX_WAITERS))?;
        let ticket = self.state[NEXT_TICKET].fetch_add(1, Relaxed);
        self.slot(free, SLOT_PID).store(me, Relaxed);
        self.slot(free, SLOT_TOKEN)
            .store(futex::own_token(), Relaxed);
        self.slot(free, SLOT_TICKET).store(ticket, Relaxed);
        // Counted before it is marked: a process killed in between leaves the count one
        // high (harmless: a notify finds no slot to grant), never below the waiting slots.
        self.state[WAITING_SLOTS].fetch_add(1, Relaxed);
        self.slot(free, SLOT_STATE).store(WAITING, Release);
        Ok(free)
    }

    /// Releases the lock, waits for a notification, takes the lock back; `Ok(true)` when
    /// notified. [`Error::NotOwner`] if the caller does not hold the lock,
    /// [`Error::TooManyWaiters`] if [`MAX_WAITERS`] live waiters wait already.
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
        let slot = self.register()?;
        let word = self.slot(slot, SLOT_STATE);
        let saved = self.lock.release_all();
        loop {
            if word.load(Acquire) != WAITING {
                break;
            }
            let left = futex::left(deadline);
            if left == Some(Duration::ZERO) {
                break;
            }
            if let Woke::TimedOut = futex::wait(word, WAITING, left) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
        self.lock.reacquire(saved);
        // Under the lock: a grant given while the timeout fired is ours.
        let notified = word.load(Acquire) == GRANTED;
        self.free_slot(slot);
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

    /// Grants slot `i` if its process lives (or without looking, if not `check`), else frees
    /// it; whether it was granted.
    fn grant(&self, i: usize, me: u32, check: bool) -> bool {
        if check && !self.slot_alive(i, me) {
            self.free_slot(i);
            return false;
        }
        let word = self.slot(i, SLOT_STATE);
        word.store(GRANTED, Release);
        self.state[WAITING_SLOTS].fetch_sub(1, Relaxed);
        futex::wake(word, 1);
        true
    }

    /// Wakes up to `n` waiters, the longest waiting first; a waiter whose process died is
    /// skipped (and forgotten). [`Error::NotOwner`] if the caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<(), Error> {
        if !self.lock.held_by_caller() {
            return Err(Error::NotOwner);
        }
        let me = multiproc_core::current_pid();
        let waiting = |i: usize| self.slot(i, SLOT_STATE).load(Relaxed) == WAITING;
        if n >= self.state[WAITING_SLOTS].load(Relaxed) {
            // Everyone: no order to keep, and no need to look for dead waiters: one that takes
            // a grant with it deprives nobody (its slot is freed when the table fills up).
            for i in (0..MAX_WAITERS).filter(|&i| waiting(i)) {
                self.grant(i, me, false);
            }
            return Ok(());
        }
        let mut left = n;
        while left > 0 && self.state[WAITING_SLOTS].load(Relaxed) > 0 {
            // The oldest ticket: the largest distance back from the next one (wrapping).
            let next = self.state[NEXT_TICKET].load(Relaxed);
            let age = |i: usize| next.wrapping_sub(self.slot(i, SLOT_TICKET).load(Relaxed));
            let Some(oldest) = (0..MAX_WAITERS)
                .filter(|&i| waiting(i))
                .max_by_key(|&i| age(i))
            else {
                break;
            };
            if self.grant(oldest, me, true) {
                left -= 1;
            }
        }
        Ok(())
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<(), Error> {
        self.notify(u32::MAX)
    }

    /// How many waiters are counted as waiting now (a snapshot; dead ones are forgotten only
    /// when a notify reaches them or the table is full). For tests.
    #[doc(hidden)]
    pub fn waiting(&self) -> u32 {
        self.state[WAITING_SLOTS].load(Relaxed)
    }
}

impl<L: ConditionLock + fmt::Debug> fmt::Debug for Condition<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}
