//! [`Event`]: a futex word holding the flag and a generation, beside a count of sleepers.
//!
//! Word layout: bit 0 the flag, bits 1..32 a generation that every `set` of a clear event
//! bumps. A waiter notes the generation *before* it counts itself as a sleeper and returns
//! `true` once the flag is set or the generation moved, so a `set()` followed at once by
//! `clear()` still releases every waiter that was blocked at the time of the `set()` (as in
//! CPython); it cannot see a clear flag and go back to sleep. The sleeper count lets `set`
//! skip the system call when nobody waits (the waiter counts itself before reading the word,
//! the setter writes the word before reading the count, both `SeqCst`: one of them sees the
//! other).

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::futex::{self, Woke};

/// `[flag | generation << 1, sleepers]`.
type State = Shared<[AtomicU32; 2]>;
const WORD: usize = 0;
const SLEEPERS: usize = 1;
const SET: u32 = 1;
/// One step of the generation (bits 1..32).
const GENERATION: u32 = 2;

/// A flag processes can wait for (Python's `multiprocessing.Event`).
///
/// Every process blocked in [`wait`](Event::wait) when [`set`](Event::set) is called returns
/// (`true` from [`wait_timeout`](Event::wait_timeout)), even if the event is cleared again at
/// once.
///
/// ```
/// use multiproc_sync::Event;
/// use std::time::Duration;
///
/// let ev = Event::new()?;
/// assert!(!ev.wait_timeout(Duration::from_millis(10)));
/// ev.set();
/// assert!(ev.is_set() && ev.wait_timeout(Duration::ZERO));
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    state: State,
}

impl Event {
    /// A new, clear event.
    pub fn new() -> Result<Event, Error> {
        Ok(Event {
            state: Shared::new().map_err(Error::Heap)?,
        })
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.state[WORD].load(SeqCst) & SET != 0
    }

    /// Sets the flag and wakes every waiter (no system call when nobody waits).
    pub fn set(&self) {
        let word = &self.state[WORD];
        let mut v = word.load(SeqCst);
        loop {
            if v & SET != 0 {
                return;
            }
            // Clear to set, one generation on (wrapping: a waiter would have to sleep through
            // 2^31 set/clear pairs to miss one).
            let next = (v & !SET).wrapping_add(GENERATION) | SET;
            match word.compare_exchange_weak(v, next, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if self.state[SLEEPERS].load(SeqCst) > 0 {
            futex::wake(word, u32::MAX);
        }
    }

    /// Clears the flag (waiters blocked before the last `set` still return).
    pub fn clear(&self) {
        self.state[WORD].fetch_and(!SET, SeqCst);
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag (Python's `wait(timeout)`): `true` if it is set,
    /// or was set while this call waited.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(futex::deadline(timeout))
    }

    /// The number of processes and threads sleeping in `wait` now (a snapshot), for tests
    /// that must know a waiter is blocked before they act.
    #[doc(hidden)]
    pub fn sleepers(&self) -> u32 {
        self.state[SLEEPERS].load(SeqCst)
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let word = &self.state[WORD];
        // The generation is noted before this waiter counts as a sleeper: once it counts, any
        // `set` moves the generation past the noted one.
        let start = word.load(SeqCst);
        if start & SET != 0 {
            return true;
        }
        self.state[SLEEPERS].fetch_add(1, SeqCst);
        let released = |v: u32| v & SET != 0 || v != start;
        let got = loop {
            let v = word.load(SeqCst);
            if released(v) {
                break true;
            }
            let left = futex::left(deadline);
            if left == Some(Duration::ZERO) {
                break false;
            }
            if let Woke::TimedOut = futex::wait(word, v, left) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break released(word.load(SeqCst));
                }
            }
        };
        self.state[SLEEPERS].fetch_sub(1, SeqCst);
        got
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
