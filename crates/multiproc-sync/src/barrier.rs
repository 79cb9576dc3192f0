//! [`Barrier`]: Python's `multiprocessing.Barrier` semantics on a generation futex.
//!
//! Arrivals are counted under a [`Lock`]; the last party bumps the generation word and wakes
//! every sleeper at once (one handoff, where Python's Condition-based barrier needs several).
//! How a generation ended (released or broken) is recorded in a small ring of outcomes, so a
//! waiter that wakes late still learns its own generation's fate after later cycles or a reset.

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use multiproc_core::FnRef;
use multiproc_core::heap::Shared;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::futex::{self, Woke};
use crate::lock::Lock;

const FILLING: u32 = 0;
const BROKEN: u32 = 1;

/// `[state, count (arrived in this generation), parties, generation, ..]`.
type State = Shared<[AtomicU32; 4]>;
const STATE: usize = 0;
const COUNT: usize = 1;
const PARTIES: usize = 2;
const GEN: usize = 3;
/// Outcomes of the last generations: `generation << 1 | broken`, at `generation % 8`.
type Outcomes = Shared<[AtomicU64; 8]>;

/// The barrier was broken (a waiter timed out, [`Barrier::abort`] or [`Barrier::reset`] was
/// called, or an action panicked): every current and future waiter gets this until `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the barrier is broken")]
pub struct BrokenBarrier;

/// A barrier for a fixed number of parties across processes (Python's
/// `multiprocessing.Barrier`).
///
/// Each party calls [`wait`](Barrier::wait); when the last one arrives all are released, and
/// each gets a distinct index in `0..parties` (its arrival order). A waiter that times out
/// breaks the barrier for everyone, as in Python.
///
/// A party that dies after it arrived counts as arrived: the others complete the cycle. One
/// that dies before it arrives cannot be told from a slow one: give the barrier a timeout
/// (here or per call, as in Python), and the others are released, broken, when it passes,
/// instead of waiting forever.
///
/// Python's `action` argument: [`with_action`](Barrier::with_action) stores a function that
/// the last party to arrive runs before the others are released, in whichever process that
/// party is (the function travels with the barrier as a checked
/// [`FnRef`](multiproc_core::FnRef)). A panic in it breaks the barrier for every party.
/// [`wait_with`](Barrier::wait_with) gives a one-off action (a closure) instead.
///
/// ```
/// use multiproc_sync::Barrier;
///
/// let b = Barrier::new(1, None)?;
/// assert_eq!(b.wait(), Ok(0)); // one party: released at once
///
/// fn announce(_: ()) {
///     println!("all here");
/// }
/// let b = Barrier::with_action(1, announce, None)?;
/// assert_eq!(b.wait(), Ok(0)); // prints "all here" first
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    lock: Lock,
    state: State,
    outcomes: Outcomes,
    timeout: Option<Duration>,
    action: Option<FnRef<(), ()>>,
}

impl Barrier {
    /// A barrier for `parties` (at least 1) with a default `timeout` for [`wait`](Barrier::wait)
    /// (`None`: wait forever).
    pub fn new(parties: u32, timeout: Option<Duration>) -> Result<Barrier, Error> {
        if parties == 0 {
            return Err(Error::InvalidValue("a barrier needs at least one party"));
        }
        let state: State = Shared::new().map_err(Error::Heap)?;
        state[PARTIES].store(parties, SeqCst);
        let outcomes = Shared::new().map_err(Error::Heap)?;
        Ok(Barrier {
            lock: Lock::new()?,
            state,
            outcomes,
            timeout,
            action: None,
        })
    }

    /// A barrier whose last arriving party runs `action` before the others are released
    /// (Python's `Barrier(parties, action, timeout)`); a panic in it breaks the barrier.
    ///
    /// `action` is a function or non-capturing closure of this program taking `()`; it can be
    /// called in any process of the program that receives the barrier
    /// ([`Error::Action`] if it is not code of the main executable).
    pub fn with_action(
        parties: u32,
        action: fn(()),
        timeout: Option<Duration>,
    ) -> Result<Barrier, Error> {
        let mut b = Barrier::new(parties, timeout)?;
        b.action = Some(FnRef::new(action).map_err(Error::Action)?);
        Ok(b)
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
    /// (after the stored action, if any) before releasing the others (a panic in it breaks the
    /// barrier and propagates as [`BrokenBarrier`] to every party).
    pub fn wait_with(&self, action: impl FnOnce()) -> Result<u32, BrokenBarrier> {
        self.wait_full(self.timeout, action)
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        &self.state[i]
    }

    fn hold(&self) -> crate::LockGuard<'_> {
        // A process that died inside the barrier's short critical sections leaves plain
        // counters behind: take the lock over and go on.
        self.lock.acquire().unwrap_or_else(|dead| dead.into_guard())
    }

    /// Ends generation `g` (the lock is held): records how, then wakes every sleeper.
    fn finish(&self, g: u32, broken: bool) {
        self.outcomes[(g % 8) as usize].store(u64::from(g) << 1 | u64::from(broken), Release);
        self.word(COUNT).store(0, Relaxed);
        self.word(GEN).store(g.wrapping_add(1), Release);
        futex::wake(self.word(GEN), u32::MAX);
    }

    /// Breaks the barrier (the lock is held).
    fn break_locked(&self) {
        self.word(STATE).store(BROKEN, Relaxed);
        if self.word(COUNT).load(Relaxed) > 0 {
            self.finish(self.word(GEN).load(Relaxed), true);
        }
    }

    /// How generation `g` ended (it has ended).
    fn outcome(&self, g: u32) -> Result<(), BrokenBarrier> {
        let e = self.outcomes[(g % 8) as usize].load(Acquire);
        // Overwritten only after eight more generations: it was released long ago.
        if e >> 1 == u64::from(g) && e & 1 == 1 {
            Err(BrokenBarrier)
        } else {
            Ok(())
        }
    }

    fn wait_full(
        &self,
        timeout: Option<Duration>,
        action: impl FnOnce(),
    ) -> Result<u32, BrokenBarrier> {
        let deadline = timeout.and_then(futex::deadline);
        let guard = self.hold();
        if self.word(STATE).load(Relaxed) == BROKEN {
            return Err(BrokenBarrier);
        }
        let g = self.word(GEN).load(Relaxed);
        let index = self.word(COUNT).load(Relaxed);
        self.word(COUNT).store(index + 1, Relaxed);
        if index + 1 >= self.word(PARTIES).load(Relaxed) {
            let stored = self.action;
            let run = move || {
                if let Some(stored) = stored {
                    // The call catches a panic (quietly) and returns it as a value.
                    if let Err(e) = stored.call(()) {
                        std::panic::resume_unwind(Box::new(e.to_string()));
                    }
                }
                action();
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                self.break_locked();
                return Err(BrokenBarrier);
            }
            self.finish(g, false);
            return Ok(index);
        }
        drop(guard);
        loop {
            if self.word(GEN).load(Acquire) != g {
                return self.outcome(g).map(|()| index);
            }
            let left = futex::left(deadline);
            let expired = left == Some(Duration::ZERO)
                || matches!(futex::wait(self.word(GEN), g, left), Woke::TimedOut)
                    && deadline.is_some_and(|d| Instant::now() >= d);
            if expired {
                let _g = self.hold();
                if self.word(GEN).load(Relaxed) == g {
                    self.break_locked();
                }
                drop(_g);
                return self.outcome(g).map(|()| index);
            }
        }
    }

    /// Breaks the barrier: current and future waiters get [`BrokenBarrier`] until
    /// [`reset`](Barrier::reset).
    pub fn abort(&self) {
        let _g = self.hold();
        self.break_locked();
    }

    /// Returns the barrier to its initial state; parties waiting now get [`BrokenBarrier`].
    pub fn reset(&self) {
        let _g = self.hold();
        if self.word(COUNT).load(Relaxed) > 0 {
            self.finish(self.word(GEN).load(Relaxed), true);
        }
        self.word(STATE).store(FILLING, Relaxed);
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.word(STATE).load(Relaxed) == BROKEN
    }

    /// How many parties wait now.
    pub fn n_waiting(&self) -> u32 {
        if self.broken() {
            0
        } else {
            self.word(COUNT).load(Relaxed)
        }
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.word(PARTIES).load(Relaxed)
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
