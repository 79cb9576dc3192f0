//! [`Semaphore`] and [`BoundedSemaphore`]: a counter word and a waiter count in the shared heap.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::futex::{self, Woke};

/// `[count, sleeping waiters, bound, bounded (1) or not (0)]`.
type State = Shared<[AtomicU32; 4]>;
const COUNT: usize = 0;
const WAITERS: usize = 1;
const BOUND: usize = 2;
const BOUNDED: usize = 3;

/// A semaphore of `value` units; `bound`: the most units it may ever hold (`None`: up to
/// `i32::MAX`). A bound is kept beside a flag, so that a bound of 0 (Python's
/// `BoundedSemaphore(0)`) is a bound and not "none".
fn create(value: u32, bound: Option<u32>) -> Result<State, Error> {
    if value > i32::MAX as u32 {
        return Err(Error::InvalidValue(
            "a semaphore's value must be at most i32::MAX",
        ));
    }
    let s: State = Shared::new().map_err(Error::Heap)?;
    s[COUNT].store(value, SeqCst);
    s[BOUND].store(bound.unwrap_or(0), SeqCst);
    s[BOUNDED].store(u32::from(bound.is_some()), SeqCst);
    Ok(s)
}

fn try_take(s: &[AtomicU32; 4]) -> bool {
    let mut c = s[COUNT].load(Relaxed);
    while c > 0 {
        match s[COUNT].compare_exchange_weak(c, c - 1, SeqCst, Relaxed) {
            Ok(_) => return true,
            Err(now) => c = now,
        }
    }
    false
}

/// Takes one unit, waiting until `deadline` (`None`: forever); whether it got one.
fn take(s: &[AtomicU32; 4], deadline: Option<Instant>) -> bool {
    if try_take(s) {
        return true;
    }
    s[WAITERS].fetch_add(1, SeqCst);
    let got = loop {
        if try_take(s) {
            break true;
        }
        let left = futex::left(deadline);
        if left == Some(Duration::ZERO) {
            break false;
        }
        // The release side increments the count (SeqCst) before it reads the waiter count.
        if let Woke::TimedOut = futex::wait(&s[COUNT], 0, left) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break try_take(s);
            }
        }
    };
    s[WAITERS].fetch_sub(1, SeqCst);
    got
}

/// Gives one unit back; [`Error::TooManyReleases`] above a bounded semaphore's bound.
fn give(s: &[AtomicU32; 4]) -> Result<(), Error> {
    let bound = (s[BOUNDED].load(Relaxed) != 0).then(|| s[BOUND].load(Relaxed));
    let mut c = s[COUNT].load(Relaxed);
    loop {
        if bound.is_some_and(|b| c >= b) || c >= i32::MAX as u32 {
            return Err(Error::TooManyReleases);
        }
        match s[COUNT].compare_exchange_weak(c, c + 1, SeqCst, Relaxed) {
            Ok(_) => break,
            Err(now) => c = now,
        }
    }
    if s[WAITERS].load(SeqCst) > 0 {
        futex::wake(&s[COUNT], 1);
    }
    Ok(())
}

macro_rules! semaphore_api {
    ($name:ident) => {
        impl $name {
            /// Takes one unit, waiting as long as it takes (Python's `acquire()`).
            pub fn acquire(&self) -> SemaphoreGuard<'_> {
                take(&self.state, None);
                SemaphoreGuard { state: &self.state }
            }

            /// Takes one unit if one is free (Python's `acquire(block=False)`).
            pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
                try_take(&self.state).then(|| SemaphoreGuard { state: &self.state })
            }

            /// Waits at most `timeout` for a unit (Python's `acquire(timeout=t)`).
            pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
                take(&self.state, futex::deadline(timeout))
                    .then(|| SemaphoreGuard { state: &self.state })
            }

            /// Takes a unit without a guard, waiting at most `timeout` (`None`: forever);
            /// whether it got one. Give it back with [`release`](Self::release), from any
            /// thread or process.
            pub fn acquire_raw(&self, timeout: Option<Duration>) -> bool {
                take(&self.state, timeout.and_then(futex::deadline))
            }

            /// The number of free units (Python's `get_value()`).
            pub fn get_value(&self) -> u32 {
                self.state[COUNT].load(SeqCst)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("value", &self.get_value())
                    .finish()
            }
        }
    };
}

/// A counting semaphore shared by processes (Python's `multiprocessing.Semaphore`).
///
/// ```
/// use multiproc_sync::Semaphore;
///
/// let sem = Semaphore::new(2)?;
/// let a = sem.acquire();
/// let b = sem.acquire();
/// assert!(sem.try_acquire().is_none());
/// drop(a);
/// assert_eq!(sem.get_value(), 1);
/// # drop(b);
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Semaphore {
    state: State,
}

impl Semaphore {
    /// A semaphore with `value` free units.
    pub fn new(value: u32) -> Result<Semaphore, Error> {
        Ok(Semaphore {
            state: create(value, None)?,
        })
    }

    /// Gives back one unit (Python's `release()`); any thread or process may.
    pub fn release(&self) -> Result<(), Error> {
        give(&self.state)
    }
}

semaphore_api!(Semaphore);

/// A semaphore that refuses to be released above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`).
///
/// ```
/// use multiproc_sync::{BoundedSemaphore, Error};
///
/// let sem = BoundedSemaphore::new(1)?;
/// // Already at its initial value:
/// assert!(matches!(sem.release(), Err(Error::TooManyReleases)));
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct BoundedSemaphore {
    state: State,
}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` free units, never more (with 0, every `release` that
    /// is not paired with an `acquire` is refused, as in Python).
    pub fn new(value: u32) -> Result<BoundedSemaphore, Error> {
        Ok(BoundedSemaphore {
            state: create(value, Some(value))?,
        })
    }

    /// Gives back one unit; [`Error::TooManyReleases`] above the initial value.
    pub fn release(&self) -> Result<(), Error> {
        give(&self.state)
    }
}

semaphore_api!(BoundedSemaphore);

/// One unit of a semaphore; given back when dropped.
#[must_use = "the unit is given back as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    state: &'a State,
}

impl SemaphoreGuard<'_> {
    /// Keeps the unit without a guard (give it back with `release`).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let _ = give(self.state);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard").finish_non_exhaustive()
    }
}
