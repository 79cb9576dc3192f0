//! The error type of multiproc-core.

use std::io;

use crate::reduction::ReductionError;

/// Everything that can go wrong while creating, starting and waiting for processes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `start` was called on a process that was already started.
    #[error("cannot start a process twice")]
    AlreadyStarted,
    /// `join`, `terminate` or `sentinel` before `start`.
    #[error("process not started: can only join a started process")]
    NotStarted,
    /// The process object was closed with `close`.
    #[error("process object is closed")]
    Closed,
    /// `close` while the child is still running.
    #[error("cannot close a process while it is still running; join() or terminate() it first")]
    StillRunning,
    /// A setting that must be made before `start` was changed after it.
    #[error("process has already started")]
    AlreadyStartedSetting,
    /// A daemon process tried to start a child.
    #[error("daemonic processes are not allowed to have children")]
    DaemonCannotHaveChildren,
    /// `set_start_method` was called a second time without forcing.
    #[error("context has already been set")]
    StartMethodAlreadySet,
    /// An unknown start method name.
    #[error("cannot find context for {0:?}")]
    UnknownStartMethod(String),
    /// Fork refused in a parent with other threads (see [`allow_fork_with_threads`](crate::allow_fork_with_threads)).
    #[error(
        "refusing to fork: this process has {threads} threads, and a forked child could deadlock on a lock \
         another thread holds; use the spawn or forkserver start method, or opt in by calling \
         multiproc::allow_fork_with_threads. Under `cargo test` every #[test] runs on a thread of its \
         own: test fork-based code in a `harness = false` test binary (see the README)"
    )]
    ForkWithThreads {
        /// Threads counted in the parent.
        threads: usize,
    },
    /// The pre-`main` hook did not run and `init()` was not called: a spawned child could not
    /// be dispatched before `main`.
    #[error(
        "the pre-main hook of multiproc-core did not run in this binary and multiproc::init() was not \
         called: call multiproc::init() first thing in main to use the spawn and forkserver start methods"
    )]
    HookNotRun,
    /// The executable cannot be re-executed as a child (see the message).
    #[error("{0}")]
    NotReexecutable(String),
    /// The target or its trampoline is not code of the main executable (a fn in a dylib).
    #[error(
        "the target function is not in the main executable (a function from a dynamic library cannot be \
         named by offset in a re-executed child); wrap it in a function or closure of your program"
    )]
    TargetOutsideExecutable,
    /// A spawn or forkserver record could not be encoded.
    #[error(transparent)]
    Reduction(#[from] ReductionError),
    /// A child's arguments hold more fds than one message can carry.
    #[error("the arguments hold {0} file descriptors; at most {max} can be handed to a child", max = crate::fdpass::MAX_FDS - 1)]
    TooManyFds(usize),
    /// The forkserver died or answered with something unexpected.
    #[error("forkserver failed: {0}")]
    Forkserver(String),
    /// An operating-system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Os { op, source }
    }

    pub(crate) fn errno(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
        move |e| Error::Os {
            op,
            source: e.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
