//! [`Value`], [`Array`], [`RawValue`], [`RawArray`]: plain data in the shared heap.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytemuck::Pod;
use multiproc_core::heap::{Region, Shared};
use multiproc_sync::{Lock, LockGuard, RLock, RLockGuard, TryAcquireError, TryLockResult};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::raw::{Elements, Locked, Wait, end_borrow};

/// The lock of a [`Value`] or [`Array`] (Python's `get_lock()`): an `RLock` (the default, as
/// in Python) or a `Lock`, shared by every copy and by every value built with it.
///
/// It locks like Python's lock, but cannot be released except by dropping its guard: a lock
/// that hands out `&mut` access to shared data must not be released while that access lives.
/// So there is no safe `release` (Python's bare `lock.release()` is the `unsafe`
/// [`release`](AnyLock::release)), and no way to get the plain [`Lock`] or [`RLock`] out of it.
///
/// Python's `with v.get_lock(): v.value += 1` ports in one line: with the default `RLock`, the
/// value's own accessors re-enter the lock that the thread holds.
///
/// ```
/// use multiproc_shm::Value;
///
/// let v = Value::new(0i32)?;
/// {
///     let _held = v.get_lock().acquire(); // with v.get_lock():
///     v.set(v.get() + 1); //                     v.value += 1
/// }
/// assert_eq!(v.get(), 1);
/// # Ok::<(), multiproc_shm::Error>(())
/// ```
///
/// The release that Python's API allows is not reachable without `unsafe`:
///
/// ```compile_fail,E0133
/// let v = multiproc_shm::Value::new(0i32).unwrap();
/// let mut g = v.lock();
/// v.get_lock().release().unwrap(); // error: call to unsafe function
/// *g += 1;
/// ```
///
/// nor is the plain lock inside (whose `release` is safe):
///
/// ```compile_fail,E0599
/// let v = multiproc_shm::Value::new(0i32).unwrap();
/// if let multiproc_shm::AnyLock::RLock(l) = v.get_lock() {
///     // error: `AnyLock` is opaque (it was an enum of the plain locks)
///     l.release().unwrap();
/// }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct AnyLock {
    pub(crate) kind: Kind,
    /// Bumped by every acquire that takes the lock over from a dead owner: a borrow word
    /// written in an earlier epoch was left by a guard that died (see `raw.rs`).
    epoch: Shared<AtomicU32>,
}

impl fmt::Debug for AnyLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::RLock(l) => f.debug_tuple("AnyLock").field(l).finish(),
            Kind::Lock(l) => f.debug_tuple("AnyLock").field(l).finish(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Kind {
    RLock(RLock),
    Lock(Lock),
}

pub(crate) enum Held<'a> {
    R(#[allow(dead_code)] RLockGuard<'a>),
    L(#[allow(dead_code)] LockGuard<'a>),
}

/// A guard or the dead owner's pid out of a sync-crate acquire result.
#[inline]
fn took<G>(r: TryLockResult<G>) -> Option<(G, Option<u32>)> {
    match r {
        Ok(g) => Some((g, None)),
        Err(TryAcquireError::OwnerDied(e)) => {
            let pid = e.dead_owner();
            Some((e.into_guard(), Some(pid)))
        }
        Err(_) => None,
    }
}

impl AnyLock {
    /// A new re-entrant lock (Python's default `RLock`), to share between values with
    /// [`Value::with_lock`] and [`Array::from_slice_with_lock`].
    pub fn new_rlock() -> Result<AnyLock, Error> {
        AnyLock::with_kind(Kind::RLock(RLock::new()?))
    }

    /// A new plain lock (Python's `Lock`): taking it twice on one thread blocks forever, as in
    /// Python, so a value's accessors cannot be used while `acquire`'s guard lives.
    pub fn new_lock() -> Result<AnyLock, Error> {
        AnyLock::with_kind(Kind::Lock(Lock::new()?))
    }

    fn with_kind(kind: Kind) -> Result<AnyLock, Error> {
        Ok(AnyLock {
            kind,
            epoch: Shared::new().map_err(Error::Heap)?,
        })
    }

    /// The identities of the lock and of its epoch counter, the same in every process.
    pub(crate) fn identity(&self) -> (u128, u128) {
        let lock = match &self.kind {
            Kind::RLock(l) => l.identity(),
            Kind::Lock(l) => l.identity(),
        };
        (lock, self.epoch.identity())
    }

    /// Whether it is an `RLock` (the owning thread may take it again).
    pub fn is_reentrant(&self) -> bool {
        matches!(self.kind, Kind::RLock(_))
    }

    /// Takes the lock (`RLock`: or re-enters it on the owning thread), waiting as `wait` says;
    /// the dead previous owner's pid when it was taken over, and the borrow tag of this
    /// epoch (nonzero). A dead owner is no error here: the data is plain bytes, valid
    /// whatever they hold.
    #[inline]
    pub(crate) fn hold(&self, wait: Wait) -> Option<(Held<'_>, Option<u32>, u32)> {
        let (held, died) = match &self.kind {
            Kind::RLock(l) => {
                let r = match wait {
                    Wait::Forever => l.acquire().map_err(TryAcquireError::OwnerDied),
                    Wait::No => l.try_acquire(),
                    Wait::For(t) => l.acquire_timeout(t),
                };
                took(r).map(|(g, d)| (Held::R(g), d))?
            }
            Kind::Lock(l) => {
                let r = match wait {
                    Wait::Forever => l.acquire().map_err(TryAcquireError::OwnerDied),
                    Wait::No => l.try_acquire(),
                    Wait::For(t) => l.acquire_timeout(t),
                };
                took(r).map(|(g, d)| (Held::L(g), d))?
            }
        };
        // Only the holder changes the epoch, so a load and a store under the lock suffice.
        let mut epoch = self.epoch.load(Relaxed);
        if died.is_some() {
            epoch = epoch.wrapping_add(1);
            self.epoch.store(epoch, Relaxed);
        }
        Some((held, died, (epoch << 1) | 1))
    }

    fn lock_guard(&self, wait: Wait) -> Option<AnyLockGuard<'_>> {
        self.hold(wait).map(|(held, owner_died, _)| AnyLockGuard {
            _held: held,
            owner_died,
        })
    }

    /// Waits for the lock (Python's `acquire()` / `with lock:`). The guard gives no access to
    /// data; the values that share the lock are read and written with their own accessors
    /// (which, with an `RLock`, re-enter it).
    pub fn acquire(&self) -> AnyLockGuard<'_> {
        self.lock_guard(Wait::Forever)
            .expect("a lock without deadline is acquired")
    }

    /// Takes the lock if it is free (Python's `acquire(block=False)`).
    pub fn try_acquire(&self) -> Option<AnyLockGuard<'_>> {
        self.lock_guard(Wait::No)
    }

    /// Waits at most `timeout` for the lock (Python's `acquire(timeout=t)`).
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<AnyLockGuard<'_>> {
        self.lock_guard(Wait::For(timeout))
    }

    /// Whether some thread or process holds the lock right now (a snapshot).
    pub fn is_locked(&self) -> bool {
        match &self.kind {
            Kind::RLock(l) => l.depth() > 0,
            Kind::Lock(l) => l.is_locked(),
        }
    }
}

/// Holds an [`AnyLock`] (from [`AnyLock::acquire`]); releases it when dropped. It gives no
/// access to data.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct AnyLockGuard<'a> {
    _held: Held<'a>,
    owner_died: Option<u32>,
}

impl AnyLockGuard<'_> {
    /// The pid of a process that died holding the lock, if this acquire took it over (the data
    /// it guards may be half-updated; the lock works normally).
    pub fn owner_died(&self) -> Option<u32> {
        self.owner_died
    }
}

impl fmt::Debug for AnyLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyLockGuard")
            .field("owner_died", &self.owner_died)
            .finish_non_exhaustive()
    }
}

/// The elements of a [`Value`] or [`Array`] while its lock is held; derefs to `[T]`.
///
/// Only one guard of the same elements lives at a time: another thread or process waits for
/// the lock, and the thread that holds a guard and asks for a second one (which its `RLock`
/// would let in) is refused: [`Array::lock`] panics, [`Array::try_lock`] returns `None`.
/// A guard cannot leave its thread (an `RLock` is released by the thread that took it).
///
/// ```compile_fail,E0277
/// let a = multiproc_shm::Array::from_slice(&[1i32]).unwrap();
/// let g = a.lock();
/// std::thread::spawn(move || drop(g)); // error: the guard is not `Send`
/// ```
pub struct Guard<'a, T: Pod> {
    pub(crate) _held: Held<'a>,
    pub(crate) word: &'a AtomicU32,
    pub(crate) slice: &'a mut [T],
    pub(crate) owner_died: Option<u32>,
}

impl<T: Pod> Guard<'_, T> {
    /// The pid of a process that died holding the lock, if this lock took it over from it:
    /// the elements may be half-updated (Python cannot tell; [`Lock::acquire`] reports it as
    /// `OwnerDied`). The lock works normally.
    pub fn owner_died(&self) -> Option<u32> {
        self.owner_died
    }
}

impl<T: Pod> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // The borrow ends before `_held` (a field, dropped after this) releases the lock.
        end_borrow(self.word);
    }
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

/// The one element of a [`Value`] while its lock is held; derefs to `T`. The rules of
/// [`Guard`] apply.
pub struct ValueGuard<'a, T: Pod>(Guard<'a, T>);

impl<T: Pod> ValueGuard<'_, T> {
    /// The pid of a process that died holding the lock, if this lock took it over from it
    /// (see [`Guard::owner_died`]).
    pub fn owner_died(&self) -> Option<u32> {
        self.0.owner_died()
    }
}

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
        Locked::from_region(w.region, w.lock)
            .ok_or_else(|| D::Error::custom("shared array of another element type"))
    }
}

/// A value of plain data shared by processes, with a lock (Python's `multiprocessing.Value`).
///
/// `T` is any [`bytemuck::Pod`] type (integers, floats, arrays of them, `#[repr(C)]` structs
/// deriving `Pod`). [`get`](Value::get) and [`set`](Value::set) take the lock, as Python's
/// `value.value` does; [`lock`](Value::lock) holds it for a read-modify-write and hands out
/// the only `&mut T`.
///
/// ```
/// use multiproc_shm::Value;
///
/// let counter = Value::new(0i64)?;
/// *counter.lock() += 1;
/// assert_eq!(counter.get(), 1);
/// # Ok::<(), multiproc_shm::Error>(())
/// ```
///
/// One guard at a time: while a thread holds a guard, its own `get`, `set` or second `lock`
/// panics (`already locked`, like `RefCell`'s "already borrowed") instead of aliasing the
/// guard's `&mut`; `Debug` prints `<locked>`. Other threads and processes wait.
///
/// A process that dies holding the lock does not block the others: the next `lock()` takes it
/// over and its guard tells [`owner_died`](ValueGuard::owner_died) (the value may be
/// half-updated); `get`/`set` take it over silently.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Value<T: Pod> {
    inner: Locked<T>,
}

impl<T: Pod> Value<T> {
    /// A shared `v` with a new `RLock`.
    pub fn new(v: T) -> Result<Value<T>, Error> {
        Value::with_lock(v, AnyLock::new_rlock()?)
    }

    /// A shared `v` guarded by `lock` (Python's `Value(t, v, lock=lock)`), made with
    /// [`AnyLock::new_rlock`] or [`AnyLock::new_lock`] or taken from another value's
    /// [`get_lock`](Value::get_lock).
    pub fn with_lock(v: T, lock: AnyLock) -> Result<Value<T>, Error> {
        let inner = Locked::zeroed(1, lock).map_err(Error::Heap)?;
        inner.elems().store(0, v);
        Ok(Value { inner })
    }

    /// Holds the lock; the guard derefs to the value.
    ///
    /// # Panics
    ///
    /// If a guard of this value already lives on the calling thread.
    #[inline]
    pub fn lock(&self) -> ValueGuard<'_, T> {
        ValueGuard(
            self.inner
                .guard(Wait::Forever)
                .expect("a lock without deadline is acquired"),
        )
    }

    /// Holds the lock if it is free; `None` if another thread or process holds it, or a guard
    /// of this value lives on the calling thread.
    pub fn try_lock(&self) -> Option<ValueGuard<'_, T>> {
        self.inner.guard(Wait::No).map(ValueGuard)
    }

    /// Waits at most `timeout` for the lock; `None` as for [`try_lock`](Value::try_lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Option<ValueGuard<'_, T>> {
        self.inner.guard(Wait::For(timeout)).map(ValueGuard)
    }

    /// Reads the value under the lock (Python's `v.value`).
    ///
    /// # Panics
    ///
    /// If a guard of this value lives on the calling thread (read through the guard instead).
    pub fn get(&self) -> T {
        *self.lock()
    }

    /// Writes the value under the lock (Python's `v.value = x`).
    ///
    /// # Panics
    ///
    /// If a guard of this value lives on the calling thread (write through the guard instead).
    pub fn set(&self, v: T) {
        *self.lock() = v;
    }

    /// The lock (Python's `get_lock()`), without a safe `release`: see [`AnyLock`].
    pub fn get_lock(&self) -> &AnyLock {
        self.inner.lock()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_tuple("Value").field(&*g).finish(),
            None => f
                .debug_tuple("Value")
                .field(&format_args!("<locked>"))
                .finish(),
        }
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
///
/// The rules of [`Value`] hold: one guard at a time (a second one on the same thread panics
/// in [`lock`](Array::lock), is `None` from [`try_lock`](Array::try_lock)), and a dead
/// owner's lock is taken over and reported by [`Guard::owner_died`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Array<T: Pod> {
    inner: Locked<T>,
}

impl<T: Pod> Array<T> {
    /// `n` zeroed elements with a new `RLock`.
    pub fn zeroed(n: usize) -> Result<Array<T>, Error> {
        Array::zeroed_with_lock(n, AnyLock::new_rlock()?)
    }

    /// `n` zeroed elements guarded by `lock` (Python's `Array(t, n, lock=lock)`).
    pub fn zeroed_with_lock(n: usize, lock: AnyLock) -> Result<Array<T>, Error> {
        Ok(Array {
            inner: Locked::zeroed(n, lock).map_err(Error::Heap)?,
        })
    }

    /// A copy of `values` with a new `RLock`.
    pub fn from_slice(values: &[T]) -> Result<Array<T>, Error> {
        Array::from_slice_with_lock(values, AnyLock::new_rlock()?)
    }

    /// A copy of `values` guarded by `lock` (Python's `Array(t, seq, lock=lock)`).
    pub fn from_slice_with_lock(values: &[T], lock: AnyLock) -> Result<Array<T>, Error> {
        let a = Array::zeroed_with_lock(values.len(), lock)?;
        for (i, v) in values.iter().enumerate() {
            a.inner.elems().store(i, *v);
        }
        Ok(a)
    }

    /// Holds the lock; the guard derefs to the elements.
    ///
    /// # Panics
    ///
    /// If a guard of this array already lives on the calling thread.
    #[inline]
    pub fn lock(&self) -> Guard<'_, T> {
        self.inner
            .guard(Wait::Forever)
            .expect("a lock without deadline is acquired")
    }

    /// Holds the lock if it is free; `None` if another thread or process holds it, or a guard
    /// of this array lives on the calling thread.
    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.inner.guard(Wait::No)
    }

    /// Waits at most `timeout` for the lock; `None` as for [`try_lock`](Array::try_lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Option<Guard<'_, T>> {
        self.inner.guard(Wait::For(timeout))
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.inner.elems().len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, read under the lock.
    ///
    /// # Panics
    ///
    /// If `i` is out of range, or a guard of this array lives on the calling thread.
    pub fn get(&self, i: usize) -> T {
        self.lock()[i]
    }

    /// Writes element `i` under the lock.
    ///
    /// # Panics
    ///
    /// If `i` is out of range, or a guard of this array lives on the calling thread.
    pub fn set(&self, i: usize, v: T) {
        self.lock()[i] = v;
    }

    /// A copy of every element, taken under the lock.
    ///
    /// # Panics
    ///
    /// If a guard of this array lives on the calling thread.
    pub fn to_vec(&self) -> Vec<T> {
        self.lock().to_vec()
    }

    /// The lock (Python's `get_lock()`), without a safe `release`: see [`AnyLock`].
    pub fn get_lock(&self) -> &AnyLock {
        self.inner.lock()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_tuple("Array").field(&&*g).finish(),
            None => f
                .debug_tuple("Array")
                .field(&format_args!("<locked>"))
                .finish(),
        }
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

#[cfg(test)]
mod tests {
    //! One-thread rules of the guards (no processes: the heap and the locks only).
    use super::*;
    use multiproc_core::heap::Shared;
    use multiproc_core::reduction::{decode, encode};
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_value_decoded_as_another_handle_type_is_refused() {
        let v = Value::new(7u32).unwrap();
        let (bytes, fds) = encode(&v).unwrap();
        // Same shape on the wire (a region first): a raw array over the value's bytes would
        // write them atomically under a live guard's `&mut`.
        assert!(decode::<RawArray<u32>>(&bytes, fds).is_err());
        let (bytes, fds) = encode(&v).unwrap();
        assert!(decode::<Shared<AtomicU32>>(&bytes, fds).is_err());
        // And the other way: a raw array or a lock's words never become a locked value.
        let raw = RawArray::<u32>::zeroed(16).unwrap();
        let (bytes, fds) = encode(&(raw, AnyLock::new_rlock().unwrap())).unwrap();
        assert!(decode::<Value<u32>>(&bytes, fds).is_err());
        assert_eq!(v.get(), 7);
    }

    #[test]
    fn a_value_spliced_with_another_lock_is_refused() {
        let v = Value::new(7u32).unwrap();
        let (bytes, fds) = encode(&v).unwrap();
        // The wire is (region, lock): take the region, pair it with another lock.
        let (region, own): (multiproc_core::heap::Region, AnyLock) = decode(&bytes, fds).unwrap();
        let other = AnyLock::new_rlock().unwrap();
        let (bytes, fds) = encode(&(&region, &other)).unwrap();
        assert!(decode::<Value<u32>>(&bytes, fds).is_err());
        // With the lock it was made with, the same region decodes.
        let (bytes, fds) = encode(&(&region, &own)).unwrap();
        let back: Value<u32> = decode(&bytes, fds).unwrap();
        assert_eq!(back.get(), 7);
    }

    #[test]
    #[should_panic(expected = "already locked")]
    fn issue_6_get_under_a_guard_panics_instead_of_aliasing() {
        let a = Array::from_slice(&[1i32, 2]).unwrap();
        let _g = a.lock();
        let _ = a.get(0); // the RLock lets this thread in; a second `&mut` must not
    }

    #[test]
    #[should_panic(expected = "already locked")]
    fn issue_6_second_value_guard_panics() {
        let v = Value::new(1u8).unwrap();
        let _g = v.lock();
        let _h = v.lock();
    }

    #[test]
    fn issue_6_try_lock_and_debug_under_a_guard() {
        let v = Value::new(7u64).unwrap();
        let a = Array::from_slice_with_lock(&[1u8, 2], v.get_lock().clone()).unwrap();
        {
            let mut g = v.lock();
            assert!(v.try_lock().is_none());
            assert!(v.lock_timeout(Duration::from_millis(1)).is_none());
            assert_eq!(format!("{v:?}"), "Value(<locked>)");
            *g += 1;
            // Another array under the same RLock: its own data, so its guard may coexist.
            let mut h = a.lock();
            h[0] = 9;
            assert_eq!(format!("{h:?}"), "[9, 2]");
            assert_eq!(g.owner_died(), None);
        }
        assert_eq!(format!("{v:?}"), "Value(8)");
        assert_eq!(format!("{a:?}"), "Array([9, 2])");
        assert!(!v.get_lock().is_locked());
    }

    #[test]
    fn issue_6_with_get_lock_then_accessors_port_python() {
        let v = Value::new(0i32).unwrap();
        {
            let held = v.get_lock().acquire();
            assert_eq!(held.owner_died(), None);
            v.set(v.get() + 1);
            assert!(v.get_lock().is_locked());
        }
        assert!(!v.get_lock().is_locked());
        assert_eq!(v.get(), 1);
    }
}
