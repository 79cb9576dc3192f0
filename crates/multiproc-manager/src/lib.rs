//! Managers: a server process that holds shared objects, used from any process through typed
//! proxies (Python's `multiprocessing.Manager`, `SyncManager`, `BaseManager.register` and
//! remote managers).
//!
//! ```
//! use multiproc_manager::{DictProxy, Manager};
//!
//! fn child(d: DictProxy<String, u32>) {
//!     d.set("from child", &7).unwrap();
//! }
//!
//! let mgr = Manager::start()?;
//! let d = mgr.dict::<String, u32>()?;
//! let mut p = multiproc_core::Process::new(child, d.clone());
//! p.start()?;
//! p.join()?;
//! assert_eq!(d.get("from child")?, Some(7));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`Manager::start`] starts the server process (named `SyncManager-N`, ignoring SIGINT,
//!   killed with its parent); dropping the manager, or [`Manager::shutdown`], stops it.
//! - Its constructors make objects: [`dict`](Manager::dict), [`list`](Manager::list),
//!   [`namespace`](Manager::namespace), [`value`](Manager::value), [`array`](Manager::array),
//!   [`queue`](Manager::queue), [`joinable_queue`](Manager::joinable_queue),
//!   [`lock`](Manager::lock), [`rlock`](Manager::rlock), [`semaphore`](Manager::semaphore),
//!   [`bounded_semaphore`](Manager::bounded_semaphore), [`condition`](Manager::condition),
//!   [`event`](Manager::event), [`barrier`](Manager::barrier), and objects of user types
//!   ([`managed!`], [`Manager::create`]).
//! - Proxies are serde handles: a `Process` argument, a Pool task argument, a value stored in
//!   another managed object (a list inside a dict comes back as a working proxy).
//! - The server keeps an object while any process has a proxy of it (or a stored value or a
//!   published name refers to it); a process that dies releases its proxies.
//! - Remote use: [`ManagerBuilder::serve`] on a TCP address with an authkey,
//!   [`Manager::connect`] from other programs, [`Manager::publish`] / [`Manager::get`] to find
//!   objects by name.
//!
//! The server does not decode values: it stores what clients encoded and compares keys by
//! their encoding (see docs/decisions.md for what that means for floats).

#![forbid(unsafe_code)]

mod client;
mod custom;
mod error;
mod mailbox;
mod manager;
mod objects;
mod protocol;
mod proxies;
mod server;
mod shared_memory_manager;

pub use crate::client::ObjectRef;
pub use crate::custom::Managed;
pub use crate::error::{ManagerError, RemoteError, RemoteErrorKind, Result};
pub use crate::manager::{Manager, ManagerBuilder};
pub use crate::protocol::Kind;
pub use crate::proxies::{
    AcquireGuard, ArrayProxy, BarrierProxy, BoundedSemaphoreProxy, ConditionProxy, DictProxy,
    EventProxy, JoinableQueueProxy, ListProxy, LockProxy, NamespaceProxy, Proxy, QueueProxy,
    RLockProxy, SemaphoreProxy, ValueProxy,
};
pub use crate::shared_memory_manager::SharedMemoryManager;
pub use multiproc_ipc::{Address, Error as IpcError};

/// What [`managed!`] expands to refers to (not public API).
#[doc(hidden)]
pub mod __private {
    pub use crate::custom::{decode_args, encode_result, not_exposed};
    pub use serde;
}
