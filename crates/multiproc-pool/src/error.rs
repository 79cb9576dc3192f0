//! [`PoolError`]: why a task gave no result, or why the pool refused it.

use std::time::Duration;

use multiproc_core::{FnRefError, Panicked};

/// Why a task gave no result, or why the pool refused it.
///
/// Python raises the task's own exception from `get()`, `ValueError("Pool not running")` for a
/// task given to a closed pool, and hangs forever when a worker dies; here every case is a
/// variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The task panicked: its message and location.
    #[error("the task {0}")]
    Panicked(Panicked),
    /// The worker running the task died before it returned (killed, aborted, `exit` called,
    /// out of memory). The worker is replaced; the pool goes on.
    #[error("worker process {pid} died while it held the task ({})", describe_exit(*exitcode))]
    WorkerLost {
        /// The dead worker's pid.
        pid: u32,
        /// Its exit code, Python's way: `-N` for killed by signal `N`.
        exitcode: i32,
    },
    /// The task ran longer than the pool's per-task time limit: its worker was killed and
    /// replaced.
    #[error("the task ran longer than its limit of {limit:?}; its worker was killed and replaced")]
    TaskTimeout {
        /// The pool's limit.
        limit: Duration,
    },
    /// A `*_timeout` wait ended before the result was there (the task goes on).
    #[error("timed out waiting for the result")]
    WaitTimeout,
    /// The pool was closed (or is shutting down) and takes no new tasks.
    #[error("the pool is not running: it was closed or terminated and takes no new tasks")]
    Closed,
    /// The pool was terminated (or dropped) before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// `join` was called on a pool that is still running (Python: `ValueError`).
    #[error("join() on a running pool: call close() or terminate() first")]
    NotClosed,
    /// The worker initializer failed (panicked) in a worker: the pool is broken and runs no
    /// task (Python would start workers forever).
    #[error("the worker initializer failed: {0}")]
    Initializer(String),
    /// The task's argument could not be encoded (a handle that owns a file descriptor cannot
    /// pass through a pool), or decoded in the worker.
    #[error("cannot pass the task's argument: {0}")]
    Args(String),
    /// The task's result could not be encoded in the worker or decoded here.
    #[error("cannot return the task's result: {0}")]
    Result(String),
    /// The task's function cannot be named in a worker process.
    #[error("cannot hand the function to a worker: {0}")]
    Function(FnRefError),
    /// The result was taken already (by an earlier `get`).
    #[error("the result was already taken")]
    ResultTaken,
    /// The executor's future was cancelled before it ran.
    #[error("the task was cancelled")]
    Cancelled,
    /// A system call failed (starting a worker, the shared heap).
    #[error("{0}")]
    Os(String),
}

impl From<std::io::Error> for PoolError {
    fn from(e: std::io::Error) -> PoolError {
        PoolError::Os(e.to_string())
    }
}

impl From<multiproc_core::Error> for PoolError {
    fn from(e: multiproc_core::Error) -> PoolError {
        PoolError::Os(e.to_string())
    }
}

impl From<FnRefError> for PoolError {
    fn from(e: FnRefError) -> PoolError {
        PoolError::Function(e)
    }
}

/// `"killed by signal 9 (SIGKILL)"`, `"exit code 3"`.
pub(crate) fn describe_exit(code: i32) -> String {
    if code < 0 {
        let sig = -code;
        let name = match sig {
            1 => " (SIGHUP)",
            2 => " (SIGINT)",
            6 => " (SIGABRT)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        format!("exit code {code}")
    }
}
