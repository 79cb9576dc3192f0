//! **multiproc**: Python's `multiprocessing`, done right in Rust.
//!
//! True parallelism across OS processes with the vocabulary a Python programmer knows
//! ([`Process`], start methods, [`pipe`] …) in the form a Rust programmer expects: types,
//! `Result`, serde. The layers are separate crates, re-exported here:
//!
//! | module | crate | Python |
//! |---|---|---|
//! | [`process`] | `multiproc-core` | `multiprocessing.Process`, start methods, `current_process` … |
//! | [`sync`] | `multiproc-sync` | `Lock`, `RLock`, `Semaphore`, `BoundedSemaphore`, `Event`, `Condition`, `Barrier` |
//! | [`shm`] | `multiproc-shm` | `Value`, `Array`, `RawValue`, `RawArray`, `shared_memory.SharedMemory`, `ShareableList` |
//! | [`ipc`] | `multiproc-ipc` | `multiprocessing.Pipe`, `Queue`, `SimpleQueue`, `JoinableQueue`, `multiprocessing.connection` |
//! | [`futures`] | `multiproc-pool` | `concurrent.futures`: `ProcessPoolExecutor`, `Future`, `wait`, `as_completed` |
//! | [`manager`] | `multiproc-manager` | `multiprocessing.Manager`, `SyncManager` and its proxies, `BaseManager.register`, remote managers |
//!
//! Python's top-level names are here flat: `multiproc::Process`, `multiproc::pipe`,
//! `multiproc::Manager` (with its proxies, `multiproc::DictProxy` …),
//! `multiproc::wait` (Python's `multiprocessing.connection.wait`), and the
//! common ones in [`prelude`].
//!
//! ```
//! use multiproc::prelude::*;
//!
//! fn f(mut conn: Connection) {
//!     conn.send(&(42, None::<i32>, "hello")).unwrap();
//! }
//!
//! multiproc::init();
//! let (mut parent_conn, child_conn) = pipe()?;
//! let mut p = Process::new(f, child_conn);
//! p.start()?;
//! let got: (i32, Option<i32>, String) = parent_conn.recv()?;
//! assert_eq!(got, (42, None, "hello".to_string()));
//! p.join()?;
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! ```python
//! from multiprocessing import Process, Pipe
//!
//! def f(conn):
//!     conn.send([42, None, 'hello'])
//!     conn.close()
//!
//! if __name__ == '__main__':
//!     parent_conn, child_conn = Pipe()
//!     p = Process(target=f, args=(child_conn,))
//!     p.start()
//!     print(parent_conn.recv())   # prints "[42, None, 'hello']"
//!     p.join()
//! ```
#![forbid(unsafe_code)]

#[doc(inline)]
pub use multiproc_core as process;
#[doc(inline)]
pub use multiproc_ipc as ipc;
#[doc(inline)]
pub use multiproc_manager as manager;
#[doc(inline)]
pub use multiproc_pool as pool;
#[doc(inline)]
pub use multiproc_shm as shm;
#[doc(inline)]
pub use multiproc_sync as sync;

pub use multiproc_core::{
    CallError, Context, CurrentProcess, DEFAULT_START_METHOD, FnRef, ParentProcess, Process,
    ProcessHandle, StartMethod, active_children, allow_fork_with_threads, cpu_count,
    current_process, force_start_method, get_all_start_methods, get_context, get_start_method,
    init, parent_process, register_after_fork, set_start_method, start_method_if_set,
};
pub use multiproc_ipc::{
    Address, Client, Connection, GetError, JoinableQueue, Listener, PutError, Queue, QueueBuilder,
    Reader, SimpleQueue, Waitable, Writer, pipe, simplex, socketpair, wait,
};
pub use multiproc_manager::{
    ArrayProxy, BarrierProxy, BoundedSemaphoreProxy, ConditionProxy, DictProxy, EventProxy,
    JoinableQueueProxy, ListProxy, LockProxy, Manager, ManagerBuilder, ManagerError,
    NamespaceProxy, QueueProxy, RLockProxy, SemaphoreProxy, SharedMemoryManager, ValueProxy,
    managed,
};
pub use multiproc_pool::{
    AsyncResult, Future, MapOptions, Pool, PoolBuilder, PoolError, ProcessPoolExecutor,
    ProcessPoolExecutorBuilder, Progress, WaitMode, as_completed,
};

/// Python's `concurrent.futures`: [`ProcessPoolExecutor`], its [`Future`],
/// [`wait`] and [`as_completed`] (from `multiproc-pool`).
///
/// `wait` lives only here: the flat `multiproc::wait` is Python's
/// `multiprocessing.connection.wait`.
pub mod futures {
    #[doc(inline)]
    pub use multiproc_pool::{
        AnyFuture, AsCompleted, DoneAndNotDone, Future, MapResults, PoolError, ProcessPoolExecutor,
        ProcessPoolExecutorBuilder, WaitMode, as_completed, wait,
    };
}
pub use multiproc_shm::{Array, RawArray, RawValue, ShareableList, SharedMemory, Value};
pub use multiproc_sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore};

/// Any error of multiproc: a process error or a connection error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Creating, starting or waiting for a process failed.
    #[error(transparent)]
    Process(#[from] multiproc_core::Error),
    /// Sending or receiving on a connection failed.
    #[error(transparent)]
    Ipc(#[from] multiproc_ipc::Error),
    /// Creating or releasing a lock, semaphore or event failed.
    #[error(transparent)]
    Sync(#[from] multiproc_sync::Error),
    /// Creating a shared value or array failed.
    #[error(transparent)]
    Shm(#[from] multiproc_shm::Error),
    /// A queue's `get` returned no item.
    #[error(transparent)]
    Get(#[from] multiproc_ipc::GetError),
    /// A queue's `put` refused its item (the item itself is dropped: match on the
    /// [`PutError`] before converting to keep it).
    #[error("{0}")]
    Put(String),
    /// A pool task gave no result, or the pool refused it.
    #[error(transparent)]
    Pool(#[from] multiproc_pool::PoolError),
    /// A manager or one of its proxies failed (the server refused an operation, or is gone).
    #[error(transparent)]
    Manager(#[from] multiproc_manager::ManagerError),
}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Error {
        Error::Put(e.to_string())
    }
}

/// `Result` with the umbrella [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The names most programs use: `use multiproc::prelude::*;`.
pub mod prelude {
    pub use crate::{
        BoundedSemaphore, Connection, Event, JoinableQueue, Lock, Manager, Pool, Process, Queue,
        RLock, Reader, Semaphore, SimpleQueue, StartMethod, Writer, get_context, pipe,
        set_start_method, simplex, socketpair, wait,
    };
}
