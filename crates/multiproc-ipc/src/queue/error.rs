//! The errors of the queues.

use std::fmt;

/// Why a `put` refused an item; every variant hands the item back
/// ([`into_inner`](PutError::into_inner)), as crossbeam's channels do.
///
/// Python raises `queue.Full` for the first two and `ValueError("Queue is closed")` for the
/// third.
#[non_exhaustive]
pub enum PutError<T> {
    /// The queue holds `maxsize` items and the put was not to wait
    /// ([`try_put`](crate::Queue::try_put)).
    Full(T),
    /// The queue stayed full for the whole timeout ([`put_timeout`](crate::Queue::put_timeout)).
    Timeout(T),
    /// This handle was closed with [`close`](crate::Queue::close).
    Closed(T),
    /// The item could not be encoded with postcard.
    Encode(T, String),
    /// The operating system refused something the put needed (the feeder thread).
    Os(T, std::io::Error),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(v)
            | PutError::Timeout(v)
            | PutError::Closed(v)
            | PutError::Encode(v, _)
            | PutError::Os(v, _) => v,
        }
    }

    /// Whether the queue was full (now, or for the whole timeout).
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_) | PutError::Timeout(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Timeout(_) => f.write_str("Timeout(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
            PutError::Os(_, e) => write!(f, "Os(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Timeout(_) => f.write_str("the queue stayed full for the whole timeout"),
            PutError::Closed(_) => f.write_str("this queue handle is closed"),
            PutError::Encode(_, e) => write!(f, "cannot encode the item: {e}"),
            PutError::Os(_, e) => write!(f, "cannot put the item: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {}

/// Why a `get` returned no item.
///
/// Python raises `queue.Empty` for the first two and `ValueError("Queue is closed")` for the
/// third.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No item was there ([`try_get`](crate::Queue::try_get)), or another process held the
    /// consumers' side at that moment (as Python's `get(block=False)`).
    #[error("the queue is empty")]
    Empty,
    /// No item came within the timeout ([`get_timeout`](crate::Queue::get_timeout)).
    #[error("no item came within the timeout")]
    Timeout,
    /// This handle was closed with [`close`](crate::Queue::close).
    #[error("this queue handle is closed")]
    Closed,
    /// The item was taken from the queue but could not be decoded into the requested type
    /// (both ends must agree on `T`). The queue stays usable.
    #[error("cannot decode the item: {0}")]
    Decode(String),
    /// The queue's shared memory does not hold what its producers write (it was overwritten
    /// from outside the queue). Nothing more can be taken from it.
    #[error("{0}")]
    Corrupt(String),
}

/// [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) was called more times than
/// items were put (Python's `ValueError("task_done() called too many times")`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called too many times")]
pub struct TaskDoneError;

/// Why [`join_thread`](crate::Queue::join_thread) returned without the feeder being flushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinThreadError {
    /// The handle was not closed first (Python asserts it).
    #[error("join_thread() needs the queue handle to be closed first")]
    NotClosed,
    /// The items buffered by this process were not all written within the timeout.
    #[error("the feeder did not flush its buffered items within the timeout")]
    Timeout,
}
