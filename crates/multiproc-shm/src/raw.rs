//! The only unsafe code of this crate: element access to shared regions.
//!
//! Unsynchronised elements (`RawValue`, `RawArray`) are read and written with atomic
//! operations of their size (or byte by byte), so concurrent access from other processes is a
//! race in value (like Python's) but never undefined behaviour. Synchronised ones (`Value`,
//! `Array`) are viewed as `&mut T`/`&mut [T]` only by the holder of their lock.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};

use bytemuck::Pod;
use multiproc_core::heap::Region;

use crate::value::{AnyLock, Guard, RawArray};

/// `len` elements of `T` in a shared region; checked on construction.
#[derive(Clone, Debug)]
pub(crate) struct Elements<T: Pod> {
    region: Region,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> Elements<T> {
    /// Zeroed room for `len` elements.
    pub(crate) fn zeroed(len: usize) -> std::io::Result<Elements<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| std::io::Error::other("array too large"))?;
        let region = Region::new(bytes, std::mem::align_of::<T>().max(8))?;
        Ok(Elements {
            region,
            len,
            _t: PhantomData,
        })
    }

    /// Elements over a region received from another process, if it fits `T`.
    pub(crate) fn from_region(region: Region) -> Option<Elements<T>> {
        let size = std::mem::size_of::<T>();
        let fits = size != 0
            && region.len() % size == 0
            && (region.as_ptr() as usize) % std::mem::align_of::<T>() == 0;
        fits.then(|| Elements {
            len: region.len() / size,
            region,
            _t: PhantomData,
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn ptr(&self, i: usize) -> *mut T {
        assert!(
            i < self.len,
            "index {i} out of range for {} elements",
            self.len
        );
        self.region.as_ptr().cast::<T>().wrapping_add(i)
    }

    /// Reads element `i` with atomic loads.
    pub(crate) fn load(&self, i: usize) -> T {
        let p = self.ptr(i);
        let size = std::mem::size_of::<T>();
        let aligned = |n: usize| (p as usize) % n == 0;
        // SAFETY: `p` points at element `i` of the region (checked above), which lives as long
        // as `self`; the atomic type has the element's size and its alignment holds, so the
        // bytes are read as one atomic load; `T: Pod` accepts any bits.
        unsafe {
            match size {
                1 => bytemuck::pod_read_unaligned(&[(*p.cast::<AtomicU8>()).load(Relaxed)]),
                2 if aligned(2) => bytemuck::pod_read_unaligned(
                    &(*p.cast::<AtomicU16>()).load(Relaxed).to_ne_bytes(),
                ),
                4 if aligned(4) => bytemuck::pod_read_unaligned(
                    &(*p.cast::<AtomicU32>()).load(Relaxed).to_ne_bytes(),
                ),
                8 if aligned(8) => bytemuck::pod_read_unaligned(
                    &(*p.cast::<AtomicU64>()).load(Relaxed).to_ne_bytes(),
                ),
                _ => {
                    let mut v = T::zeroed();
                    let bytes = bytemuck::bytes_of_mut(&mut v);
                    for (k, b) in bytes.iter_mut().enumerate() {
                        *b = (*p.cast::<AtomicU8>().add(k)).load(Relaxed);
                    }
                    v
                }
            }
        }
    }

    /// Writes element `i` with atomic stores.
    pub(crate) fn store(&self, i: usize, v: T) {
        let p = self.ptr(i);
        let size = std::mem::size_of::<T>();
        let aligned = |n: usize| (p as usize) % n == 0;
        let bytes = bytemuck::bytes_of(&v);
        // SAFETY: as in `load`; other processes only access these bytes atomically or under
        // a lock that this raw (lock-free) element type does not have, so no `&mut` aliases.
        unsafe {
            match size {
                1 => (*p.cast::<AtomicU8>()).store(bytes[0], Relaxed),
                2 if aligned(2) => {
                    (*p.cast::<AtomicU16>()).store(bytemuck::pod_read_unaligned(bytes), Relaxed)
                }
                4 if aligned(4) => {
                    (*p.cast::<AtomicU32>()).store(bytemuck::pod_read_unaligned(bytes), Relaxed)
                }
                8 if aligned(8) => {
                    (*p.cast::<AtomicU64>()).store(bytemuck::pod_read_unaligned(bytes), Relaxed)
                }
                _ => {
                    for (k, b) in bytes.iter().enumerate() {
                        (*p.cast::<AtomicU8>().add(k)).store(*b, Relaxed);
                    }
                }
            }
        }
    }
}

/// Elements and the lock that every access to them takes ([`Value`](crate::Value) and
/// [`Array`](crate::Array) expose no other path), so the holder of the lock may view them as
/// `&mut [T]`.
#[derive(Clone)]
pub(crate) struct Locked<T: Pod> {
    elems: Elements<T>,
    lock: AnyLock,
}

impl<T: Pod> Locked<T> {
    pub(crate) fn new(elems: Elements<T>, lock: AnyLock) -> Locked<T> {
        Locked { elems, lock }
    }

    pub(crate) fn elems(&self) -> &Elements<T> {
        &self.elems
    }

    pub(crate) fn lock(&self) -> &AnyLock {
        &self.lock
    }

    /// Takes the lock and views the elements.
    pub(crate) fn guard(&self) -> Guard<'_, T> {
        let held = self.lock.hold();
        // SAFETY: the region holds `len` elements of `T`, aligned (checked on construction)
        // and alive as long as `self`; `held` keeps the lock that every access to them takes
        // for the guard's whole lifetime, so nothing else reads or writes them meanwhile.
        let slice = unsafe {
            std::slice::from_raw_parts_mut(self.elems.region.as_ptr().cast::<T>(), self.elems.len)
        };
        Guard { _held: held, slice }
    }
}

impl<T: Pod> RawArray<T> {
    /// The elements as a slice, without synchronisation.
    ///
    /// # Safety
    ///
    /// No other process or thread may write the array while the slice lives (for example:
    /// every writer has finished and been joined).
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: the region holds `len` aligned elements alive as long as `self`; the absence
        // of writers is the caller's promise.
        unsafe {
            std::slice::from_raw_parts(self.elems.region.as_ptr().cast::<T>(), self.elems.len)
        }
    }
}

/// A shared mapping of a POSIX shared memory object (for `SharedMemory`): core's
/// [`SharedMapping`](multiproc_core::heap::SharedMapping) plus the accesses to its bytes.
pub(crate) struct Mapping(multiproc_core::heap::SharedMapping);

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-write.
    pub(crate) fn new(fd: &std::os::fd::OwnedFd, len: usize) -> std::io::Result<Mapping> {
        multiproc_core::heap::SharedMapping::new(fd, len).map(Mapping)
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// Copies `out.len()` bytes from `offset`; panics when out of range.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(
            offset
                .checked_add(out.len())
                .is_some_and(|end| end <= self.0.len()),
            "read out of range"
        );
        // SAFETY: the range lies inside the mapping (checked), which lives as long as `self`;
        // `out` is ours and cannot overlap shared memory we map. Other processes may write the
        // bytes meanwhile: they are copied as plain data, never viewed as a reference.
        unsafe {
            std::ptr::copy_nonoverlapping(self.0.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        }
    }

    /// Copies `data` to `offset`; panics when out of range.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset
                .checked_add(data.len())
                .is_some_and(|end| end <= self.0.len()),
            "write out of range"
        );
        // SAFETY: as in `read`, the other way round.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.0.as_ptr().add(offset), data.len())
        }
    }

    /// Views the mapping as bytes.
    ///
    /// # Safety
    ///
    /// No process may write the segment while the slice lives.
    pub(crate) unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping holds `len` bytes alive as long as `self`; no writer is the
        // caller's promise.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), self.0.len()) }
    }

    /// Views the mapping as mutable bytes.
    ///
    /// # Safety
    ///
    /// No other process or thread may read or write the segment while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), self.0.len()) }
    }
}

impl crate::shared_memory::SharedMemory {
    /// Views the whole segment as bytes, without copying.
    ///
    /// # Safety
    ///
    /// No process may write the segment while the slice lives.
    pub unsafe fn as_slice(&self) -> Result<&[u8], crate::Error> {
        // SAFETY: the caller's promise is `Mapping::as_slice`'s precondition.
        Ok(unsafe { self.mapping()?.as_slice() })
    }

    /// Views the whole segment as mutable bytes, without copying.
    ///
    /// # Safety
    ///
    /// No other process or thread may read or write the segment while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> Result<&mut [u8], crate::Error> {
        // SAFETY: the caller's promise is `Mapping::as_mut_slice`'s precondition.
        Ok(unsafe { self.mapping()?.as_mut_slice() })
    }
}
