//! [`Event`]: one futex word in the shared heap (0 clear, 1 set, 2 clear with sleepers).

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::futex::{self, Woke};

const CLEAR: u32 = 0;
const SET: u32 = 1;
const SLEEPERS: u32 = 2;

/// A flag processes can wait for (Python's `multiprocessing.Event`).
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
    state: Shared<AtomicU32>,
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
        self.state.load(SeqCst) == SET
    }

    /// Sets the flag and wakes every waiter (no system call when nobody waits).
    pub fn set(&self) {
        if self.state.swap(SET, SeqCst) == SLEEPERS {
            futex::wake(&self.state, u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        let _ = self.state.compare_exchange(SET, CLEAR, SeqCst, SeqCst);
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; whether it is set (Python's `wait(timeout)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(futex::deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            match self.state.load(SeqCst) {
                SET => return true,
                // Announce a sleeper, so that `set` knows to wake.
                CLEAR
                    if self
                        .state
                        .compare_exchange(CLEAR, SLEEPERS, SeqCst, SeqCst)
                        .is_err() =>
                {
                    continue;
                }
                _ => {}
            }
            let left = futex::left(deadline);
            if left == Some(Duration::ZERO) {
                return self.is_set();
            }
            if let Woke::TimedOut = futex::wait(&self.state, SLEEPERS, left) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return self.is_set();
                }
            }
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
