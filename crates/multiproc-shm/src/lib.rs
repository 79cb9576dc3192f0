//! Shared values and arrays of plain data, Python's `multiprocessing.sharedctypes`: `Value`,
//! `Array`, `RawValue`, `RawArray`, in the shared heap of `multiproc-core`.
//!
//! | Python | multiproc |
//! |---|---|
//! | `Value('i', 0)`, `v.value`, `with v.get_lock():` | [`Value::new(0i32)`](Value::new), [`Value::get`]/[`Value::set`], `*v.lock() += 1` |
//! | `Array('i', [1, 2])`, `Array('d', 10)` | [`Array::from_slice(&[1i32, 2])`](Array::from_slice), [`Array::<f64>::zeroed(10)`](Array::zeroed) |
//! | `Value(t, v, lock=lock)` | [`Value::with_lock`] (a `Lock` or an `RLock`) |
//! | `RawValue`, `RawArray` | [`RawValue`], [`RawArray`] (no lock; per-element atomic access) |
//!
//! Element types are [`bytemuck::Pod`]: any bit pattern is a valid value, so memory another
//! process writes can never make a value invalid. A [`Value`] or [`Array`] hands out `&mut`
//! access only to the holder of its lock.
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
mod value;

pub use crate::value::{AnyLock, Array, Guard, RawArray, RawValue, Value, ValueGuard};

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
}
