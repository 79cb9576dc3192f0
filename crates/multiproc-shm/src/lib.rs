//! Shared values and arrays of plain data, Python's `multiprocessing.sharedctypes`: `Value`,
//! `Array`, `RawValue`, `RawArray`, in the shared heap of `multiproc-core`.
//!
//! | Python | multiproc |
//! |---|---|
//! | `Value('i', 0)`, `v.value`, `with v.get_lock():` | [`Value::new(0i32)`](Value::new), [`Value::get`]/[`Value::set`], `*v.lock() += 1` or `let _g = v.get_lock().acquire();` |
//! | `Array('i', [1, 2])`, `Array('d', 10)` | [`Array::from_slice(&[1i32, 2])`](Array::from_slice), [`Array::<f64>::zeroed(10)`](Array::zeroed) |
//! | `Value(t, v, lock=lock)` | [`Value::with_lock`] (an [`AnyLock`]: `new_rlock()`, `new_lock()`, or another value's `get_lock().clone()`) |
//! | `RawValue`, `RawArray` | [`RawValue`], [`RawArray`] (no lock; per-element atomic access) |
//! | `shared_memory.SharedMemory(name, create, size)` | [`SharedMemory::create`], [`SharedMemory::attach`] |
//! | `shared_memory.ShareableList(seq, name=None)` | [`ShareableList::new`], [`ShareableList::attach`] (Python's exact layout; see [`shareable_list`]) |
//!
//! Element types are [`bytemuck::Pod`]: any bit pattern is a valid value, so memory another
//! process writes can never make a value invalid. A [`Value`] or [`Array`] hands out `&mut`
//! access only to the holder of its lock, through one guard at a time: a thread that asks for
//! a second guard of the same value while its first lives (which the default `RLock` would let
//! in) panics with "already locked", like `RefCell`; and the lock has no safe `release`.
//! A process that dies holding the lock is reported by the next guard's `owner_died()`.
//!
//! ```
//! use multiproc_core::Process;
//! use multiproc_shm::Array;
//!
//! fn bump(a: Array<i32>) {
//!     a.lock()[0] += 100;
//! }
//!
//! let a = Array::from_slice(&[1, 2, 3, 4])?;
//! let mut p = Process::new(bump, a.clone());
//! p.start().unwrap();
//! p.join().unwrap();
//! assert_eq!(a.to_vec(), [101, 2, 3, 4]);
//! # Ok::<(), multiproc_shm::Error>(())
//! ```
#![deny(unsafe_code)]

#[allow(unsafe_code)] // Element access to shared regions; see the module docs.
mod raw;
pub mod shareable_list;
mod shared_memory;
mod value;

pub use crate::shareable_list::{Item, ShareableList};
pub use crate::shared_memory::SharedMemory;
pub use crate::value::{
    AnyLock, AnyLockGuard, Array, Guard, RawArray, RawValue, Value, ValueGuard,
};

/// Why a shared value or array could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The shared heap could not provide memory.
    #[error("cannot allocate in the shared heap: {0}")]
    Heap(#[source] std::io::Error),
    /// The lock could not be made.
    #[error(transparent)]
    Sync(#[from] multiproc_sync::Error),
    /// `SharedMemory::create` with a name that exists (Python: `FileExistsError`).
    #[error("shared memory {0:?} already exists")]
    Exists(String),
    /// `SharedMemory::attach` (or `unlink`) of a name that does not exist (Python:
    /// `FileNotFoundError`).
    #[error("no shared memory named {0:?}")]
    NotFound(String),
    /// Size 0 (Python: `ValueError: 'size' must be a positive number different from zero`).
    #[error("shared memory size must be positive")]
    InvalidSize,
    /// A name that is empty, too long, or contains `/` after its first character.
    #[error("invalid shared memory name {0:?}")]
    InvalidName(String),
    /// The segment was closed in this process.
    #[error("shared memory is closed")]
    Closed,
    /// A read or write beyond the end of the segment.
    #[error("{len} bytes at offset {offset} do not fit in {size} bytes of shared memory")]
    OutOfRange {
        /// Where the access starts.
        offset: usize,
        /// How many bytes.
        len: usize,
        /// The segment's size.
        size: usize,
    },
    /// A [`ShareableList`] index at or past its length (Python: `IndexError`).
    #[error("index {index} out of range for a ShareableList of {len} items")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The list's length.
        len: usize,
    },
    /// A str or bytes longer than the storage of its [`ShareableList`] slot, or, at creation,
    /// than [`shareable_list::MAX_ITEM_LEN`] (Python's message, from its `ValueError`).
    #[error("bytes/str item exceeds available storage")]
    ExceedsStorage {
        /// The item's index.
        index: usize,
        /// The value's length in bytes (UTF-8 for a str).
        len: usize,
        /// The bytes available.
        available: usize,
    },
    /// [`ShareableList::index`] of a value not in the list (Python: `ValueError`).
    #[error("{0} not in this container")]
    NotInList(Item),
    /// The block does not hold a valid [`ShareableList`] (attach), or another process left an
    /// item corrupt (get).
    #[error("shared memory {name:?} does not hold a valid ShareableList: {reason}")]
    InvalidList {
        /// The block's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
