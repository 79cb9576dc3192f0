//! [`Value`], [`Array`], [`RawValue`], [`RawArray`]: plain data in the shared heap.

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;
use multiproc_core::heap::Region;
use multiproc_sync::{Lock, LockGuard, RLock, RLockGuard};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::raw::{Elements, Locked};

/// The lock of a [`Value`] or [`Array`]: Python's default `RLock`, or a `Lock`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AnyLock {
    /// A re-entrant lock (the default, as in Python).
    RLock(RLock),
    /// A plain lock.
    Lock(Lock),
}

impl From<Lock> for AnyLock {
    fn from(l: Lock) -> AnyLock {
        AnyLock::Lock(l)
    }
}

impl From<RLock> for AnyLock {
    fn from(l: RLock) -> AnyLock {
        AnyLock::RLock(l)
    }
}

pub(crate) enum Held<'a> {
    R(#[allow(dead_code)] RLockGuard<'a>),
    L(#[allow(dead_code)] LockGuard<'a>),
}

impl AnyLock {
    /// Acquires it; a dead previous owner is not an error here (the data is plain bytes, valid
    /// whatever it holds), as Python would not know either.
    pub(crate) fn hold(&self) -> Held<'_> {
        match self {
            AnyLock::RLock(l) => Held::R(l.acquire().unwrap_or_else(|dead| dead.into_guard())),
            AnyLock::Lock(l) => Held::L(l.acquire().unwrap_or_else(|dead| dead.into_guard())),
        }
    }
}

/// The elements of a [`Value`] or [`Array`] while its lock is held; derefs to `[T]`.
pub struct Guard<'a, T: Pod> {
    pub(crate) _held: Held<'a>,
    pub(crate) slice: &'a mut [T],
}

impl<T: Pod> Deref for Guard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T: Pod> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.slice
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Guard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.slice.fmt(f)
    }
}

/// The one element of a [`Value`] while its lock is held; derefs to `T`.
pub struct ValueGuard<'a, T: Pod>(Guard<'a, T>);

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0[0]
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

#[derive(Serialize, Deserialize)]
struct LockedWire {
    region: Region,
    lock: AnyLock,
}

impl<T: Pod> Serialize for Locked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LockedWire {
            region: self.elems().region().clone(),
            lock: self.lock().clone(),
        }
        .serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Locked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = LockedWire::deserialize(d)?;
        let elems = Elements::from_region(w.region)
            .ok_or_else(|| D::Error::custom("shared array of another element type"))?;
        Ok(Locked::new(elems, w.lock))
    }
}

/// A value of plain data shared by processes, with a lock (Python's `multiprocessing.Value`).
///
/// `T` is any [`bytemuck::Pod`] type (integers, floats, arrays of them, `#[repr(C)]` structs
/// deriving `Pod`). [`get`](Value::get) and [`set`](Value::set) take the lock, as Python's
/// `value.value` does; [`lock`](Value::lock) holds it for a read-modify-write.
///
/// ```
/// use multiproc_shm::Value;
///
/// let counter = Value::new(0i64)?;
/// *counter.lock() += 1;
/// assert_eq!(counter.get(), 1);
/// # Ok::<(), multiproc_shm::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Value<T: Pod> {
    inner: Locked<T>,
}

impl<T: Pod> Value<T> {
    /// A shared `v` with a new `RLock`.
    pub fn new(v: T) -> Result<Value<T>, Error> {
        Value::with_lock(v, RLock::new()?)
    }

    /// A shared `v` guarded by `lock` (Python's `Value(t, v, lock=lock)`).
    pub fn with_lock(v: T, lock: impl Into<AnyLock>) -> Result<Value<T>, Error> {
        let elems = Elements::zeroed(1).map_err(Error::Heap)?;
        elems.store(0, v);
        Ok(Value {
            inner: Locked::new(elems, lock.into()),
        })
    }

    /// Holds the lock; the guard derefs to the value.
    pub fn lock(&self) -> ValueGuard<'_, T> {
        ValueGuard(self.inner.guard())
    }

    /// Reads the value under the lock.
    pub fn get(&self) -> T {
        *self.lock()
    }

    /// Writes the value under the lock.
    pub fn set(&self, v: T) {
        *self.lock() = v;
    }

    /// The lock (Python's `get_lock()`).
    pub fn get_lock(&self) -> &AnyLock {
        self.inner.lock()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

/// An array of plain data shared by processes, with a lock (Python's
/// `multiprocessing.Array`).
///
/// ```
/// use multiproc_shm::Array;
///
/// let a = Array::from_slice(&[1i32, 2, 3, 4])?;
/// a.lock()[0] += 100;
/// assert_eq!(a.to_vec(), [101, 2, 3, 4]);
/// # Ok::<(), multiproc_shm::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Array<T: Pod> {
    inner: Locked<T>,
}

impl<T: Pod> Array<T> {
    /// `n` zeroed elements with a new `RLock`.
    pub fn zeroed(n: usize) -> Result<Array<T>, Error> {
        Ok(Array {
            inner: Locked::new(
                Elements::zeroed(n).map_err(Error::Heap)?,
                RLock::new()?.into(),
            ),
        })
    }

    /// A copy of `values` with a new `RLock`.
    pub fn from_slice(values: &[T]) -> Result<Array<T>, Error> {
        Array::from_slice_with_lock(values, RLock::new()?)
    }

    /// A copy of `values` guarded by `lock`.
    pub fn from_slice_with_lock(values: &[T], lock: impl Into<AnyLock>) -> Result<Array<T>, Error> {
        let elems = Elements::zeroed(values.len()).map_err(Error::Heap)?;
        for (i, v) in values.iter().enumerate() {
            elems.store(i, *v);
        }
        Ok(Array {
            inner: Locked::new(elems, lock.into()),
        })
    }

    /// Holds the lock; the guard derefs to the elements.
    pub fn lock(&self) -> Guard<'_, T> {
        self.inner.guard()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.inner.elems().len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, read under the lock; panics if out of range.
    pub fn get(&self, i: usize) -> T {
        self.lock()[i]
    }

    /// Writes element `i` under the lock; panics if out of range.
    pub fn set(&self, i: usize, v: T) {
        self.lock()[i] = v;
    }

    /// A copy of every element, taken under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        self.lock().to_vec()
    }

    /// The lock (Python's `get_lock()`).
    pub fn get_lock(&self) -> &AnyLock {
        self.inner.lock()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

/// A value of plain data shared by processes without a lock (Python's `RawValue`): reads and
/// writes are atomic per value of up to 8 bytes, otherwise byte by byte (a concurrent reader
/// may see a mix, as in Python).
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RawValue<T: Pod> {
    inner: RawArray<T>,
}

impl<T: Pod> RawValue<T> {
    /// A shared `v`.
    pub fn new(v: T) -> Result<RawValue<T>, Error> {
        Ok(RawValue {
            inner: RawArray::from_slice(&[v])?,
        })
    }

    /// Reads the value.
    pub fn get(&self) -> T {
        self.inner.get(0)
    }

    /// Writes the value.
    pub fn set(&self, v: T) {
        self.inner.set(0, v)
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawValue").field(&self.get()).finish()
    }
}

/// An array of plain data shared by processes without a lock (Python's `RawArray`); element
/// access is atomic per element as for [`RawValue`].
#[derive(Clone)]
pub struct RawArray<T: Pod> {
    pub(crate) elems: Elements<T>,
}

impl<T: Pod> RawArray<T> {
    /// `n` zeroed elements.
    pub fn zeroed(n: usize) -> Result<RawArray<T>, Error> {
        Ok(RawArray {
            elems: Elements::zeroed(n).map_err(Error::Heap)?,
        })
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Result<RawArray<T>, Error> {
        let a = RawArray::zeroed(values.len())?;
        for (i, v) in values.iter().enumerate() {
            a.set(i, *v);
        }
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.elems.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`; panics if out of range.
    pub fn get(&self, i: usize) -> T {
        self.elems.load(i)
    }

    /// Writes element `i`; panics if out of range.
    pub fn set(&self, i: usize, v: T) {
        self.elems.store(i, v)
    }

    /// A copy of every element (element by element: not a snapshot if others write).
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

impl<T: Pod> Serialize for RawArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.elems.region().serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let region = Region::deserialize(d)?;
        let elems = Elements::from_region(region)
            .ok_or_else(|| D::Error::custom("shared array of another element type"))?;
        Ok(RawArray { elems })
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawArray").field(&self.to_vec()).finish()
    }
}
