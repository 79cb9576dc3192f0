//! [`ByteRing`]: the shared ring of byte records under [`Queue`](super::Queue), for engines
//! built above this crate (the process pool's task and result rings).

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ring::{Popped, Ring, Stop};

/// Why a [`ByteRing`] operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The timeout passed first (no room for a record, or no record to take).
    #[error("timed out")]
    Timeout,
    /// The shared bytes are not what producers write.
    #[error("{0}")]
    Corrupt(String),
}

/// A ring of byte records in the shared heap, shared by every process that holds a clone
/// (serde hands it to another process): many producers, many consumers, each record taken
/// once, in the order producers committed them. A process killed while it holds either side is
/// detected and the others go on; records larger than a quarter of the ring pass in chunks.
///
/// It is [`Queue`](super::Queue)'s transport without types, feeder or `maxsize`, for layers
/// that frame their own records. [`pop_claimed`](Self::pop_claimed) lets a consumer note what
/// it is taking (in shared memory of its own) before the ring's consumer position moves past
/// it, which is how a pool knows exactly which task a killed worker held.
///
/// ```
/// use multiproc_ipc::queue::ByteRing;
///
/// let ring = ByteRing::new(64 * 1024)?;
/// ring.push(b"first", None)?;
/// ring.push(b"second", None)?;
/// let mut out = Vec::new();
/// let mut at = None;
/// assert!(ring.pop_claimed(&mut out, None, &mut |bytes, pos| at = Some((bytes.len(), pos)))?);
/// assert_eq!(out, b"first");
/// assert_eq!(at, Some((5, 0)));
/// assert!(ring.head_position() > 0);
/// assert!(ring.pop(&mut out, Some(std::time::Duration::ZERO))?);
/// assert_eq!(out, b"second");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct ByteRing {
    ring: Ring,
}

impl fmt::Debug for ByteRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteRing")
            .field("capacity", &self.ring.capacity())
            .field("records", &self.ring.qsize())
            .finish()
    }
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl ByteRing {
    /// A new ring of about `bytes` (rounded up to a power of two, at least 4 KiB, at most
    /// 1 GiB) in the shared heap.
    pub fn new(bytes: usize) -> std::io::Result<ByteRing> {
        Ok(ByteRing {
            ring: Ring::new(bytes, 0, 0)?,
        })
    }

    /// Maps the ring's pages into this process now, so that streaming through it takes no
    /// page fault per page on its first laps (`MADV_POPULATE_WRITE`, Linux 5.14+; nothing on
    /// older kernels). For a process that will use the whole ring, such as a pool's workers.
    pub fn prefault(&self) {
        self.ring.prefault();
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Records committed and not yet taken.
    pub fn len(&self) -> usize {
        self.ring.qsize() as usize
    }

    /// Whether no committed record waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The consumers' byte position (modulo 2^40): every record that began before it has been
    /// taken, whole or (by a consumer that died) in part.
    pub fn head_position(&self) -> u64 {
        self.ring.head_pos()
    }

    /// Commits one record, waiting for room (and for other producers) up to `timeout`
    /// (`None`: as long as it takes).
    pub fn push(&self, record: &[u8], timeout: Option<Duration>) -> Result<(), RingError> {
        self.push_many(&[record], timeout).map_err(|(_, e)| e)
    }

    /// Commits records one after the other under one hold of the producer side, making them
    /// visible in batches; on `Err((n, why))` the first `n` were committed and the rest not.
    pub fn push_many(
        &self,
        records: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<(), (usize, RingError)> {
        let until = deadline(timeout);
        let mut p = self.ring.produce(until).map_err(|e| (0, stop(e)))?;
        for (done, r) in records.iter().enumerate() {
            p.push(r, until).map_err(|e| (done, stop(e)))?;
            if done % 32 == 31 {
                p.publish();
            }
        }
        Ok(())
    }

    /// Takes the next record into `out` (cleared first), waiting up to `timeout` for one
    /// (`None`: as long as it takes); `false` on timeout.
    pub fn pop(&self, out: &mut Vec<u8>, timeout: Option<Duration>) -> Result<bool, RingError> {
        self.pop_claimed(out, timeout, &mut |_, _| {})
    }

    /// [`pop`](Self::pop), calling `claim(bytes, position)` once the record's first part is in
    /// `out` and before the consumers' position moves past it: `bytes` is what `out` holds then
    /// (the whole record unless it is chunked), `position` the record's start. A consumer
    /// killed before the position moved leaves the record to the next one; once
    /// [`head_position`](Self::head_position) is past `position`, the record was taken.
    pub fn pop_claimed(
        &self,
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
        claim: &mut dyn FnMut(&[u8], u64),
    ) -> Result<bool, RingError> {
        let until = deadline(timeout);
        loop {
            // Wait for a record without holding the consumers' lock: a waiting consumer that
            // held it would make the next one queue on the lock, and every record would end
            // with a lock hand-off between sleeping processes.
            if !self.ring.wait_not_empty(until) {
                return Ok(false);
            }
            let Some(mut c) = self.ring.consume(until) else {
                return Ok(false);
            };
            match c.pop_claimed(Some(Instant::now()), out, claim) {
                Ok(Popped::Item) => return Ok(true),
                // Another consumer took it first.
                Ok(Popped::Timeout) => {
                    if until.is_some_and(|u| Instant::now() >= u) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(RingError::Corrupt(e.0)),
            }
        }
    }

    /// Takes up to `max` records that are already committed, without waiting (beyond other
    /// consumers' brief holds), appending each to `out`.
    pub fn pop_ready(&self, max: usize, out: &mut Vec<Vec<u8>>) -> Result<(), RingError> {
        let Some(mut c) = self
            .ring
            .consume(Some(Instant::now() + Duration::from_millis(50)))
        else {
            return Ok(());
        };
        c.pop_ready(max, out).map_err(|e| RingError::Corrupt(e.0))
    }
}

fn stop(s: Stop) -> RingError {
    match s {
        Stop::Timeout | Stop::NoRoom => RingError::Timeout,
    }
}
