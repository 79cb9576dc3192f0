//! The only unsafe code of this crate: element access to shared regions, and the copies in
//! and out of a `SharedMemory`.
//!
//! Unsynchronised elements (`RawValue`, `RawArray`) are read and written with atomic
//! operations of their size (or byte by byte), so concurrent access from other processes is a
//! race in value (like Python's) but never undefined behaviour. Synchronised ones (`Value`,
//! `Array`) are viewed as `&mut [T]` only by the holder of their lock, and only by one guard at
//! a time: a word in front of the elements (the *borrow word*) is set while a guard lives, to
//! a tag of the lock's epoch (which every takeover from a dead owner advances), so a thread
//! that re-enters the `RLock` while its own guard lives is refused (a panic for `lock()`,
//! `None` for `try_lock()`), never handed a second `&mut`, and a word left by a guard whose
//! process died is recognised as stale. `SharedMemory`'s
//! copies use relaxed atomic loads and stores (aligned words in the middle, bytes at the
//! edges): two threads copying the same bytes race in value, never in Rust's memory model.

use std::marker::PhantomData;
use std::sync::atomic::{
    AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::time::Duration;

use bytemuck::Pod;
use multiproc_core::heap::Region;

use crate::value::{AnyLock, Guard, Kind, RawArray};

/// `len` elements of `T` in a shared region, `offset` bytes after its start; checked on
/// construction.
#[derive(Clone, Debug)]
pub(crate) struct Elements<T: Pod> {
    region: Region,
    offset: usize,
    len: usize,
    _t: PhantomData<T>,
}

/// The heap kind of a locked array's region (`Value`, `Array`): only `Locked` decodes it.
const LOCKED_KIND: u8 = 1;
/// The heap kind of a raw array's region (`RawValue`, `RawArray`).
const RAW_KIND: u8 = 2;

/// Where the identities of a locked array's lock and epoch sit in its header.
const IDENTITY_AT: usize = 16;

/// The bytes in front of a locked array's elements: the borrow word (at 0), then the
/// identities of the lock and of its epoch counter (at 16 and 32, written once at creation,
/// checked when the region is received), padded to the elements' alignment.
fn header<T: Pod>() -> usize {
    (IDENTITY_AT + 32).next_multiple_of(std::mem::align_of::<T>().max(8))
}

impl<T: Pod> Elements<T> {
    /// Zeroed room for `len` elements after `offset` bytes (0, or [`header`]), in a region
    /// of heap kind `kind`.
    fn zeroed_at(len: usize, offset: usize, kind: u8) -> std::io::Result<Elements<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| std::io::Error::other("array too large"))?;
        let region = Region::new_kind(bytes, std::mem::align_of::<T>().max(8), kind)?;
        Ok(Elements {
            region,
            offset,
            len,
            _t: PhantomData,
        })
    }

    /// Zeroed room for `len` elements.
    pub(crate) fn zeroed(len: usize) -> std::io::Result<Elements<T>> {
        Elements::zeroed_at(len, 0, RAW_KIND)
    }

    /// Elements over a region received from another process, if it is of heap kind `kind`
    /// (made by the same kind of handle: the bytes of a locked array never become a raw one's,
    /// nor a lock's words an array's) and fits `T` after `offset`.
    fn from_region_at(region: Region, offset: usize, kind: u8) -> Option<Elements<T>> {
        let size = std::mem::size_of::<T>();
        let fits = region.kind() == kind
            && size != 0
            && region.len() >= offset
            && (region.len() - offset) % size == 0
            && (region.as_ptr() as usize).wrapping_add(offset) % std::mem::align_of::<T>() == 0;
        fits.then(|| Elements {
            len: (region.len() - offset) / size,
            region,
            offset,
            _t: PhantomData,
        })
    }

    /// Elements over a region received from another process, if it fits `T`.
    pub(crate) fn from_region(region: Region) -> Option<Elements<T>> {
        Elements::from_region_at(region, 0, RAW_KIND)
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first element (in bounds: `offset + len * size <= region.len()`).
    fn base(&self) -> *mut T {
        self.region.as_ptr().wrapping_add(self.offset).cast::<T>()
    }

    fn ptr(&self, i: usize) -> *mut T {
        assert!(
            i < self.len,
            "index {i} out of range for {} elements",
            self.len
        );
        self.base().wrapping_add(i)
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

/// How long to wait for a lock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Until it is free.
    Forever,
    /// Not at all.
    No,
    /// At most this long.
    For(Duration),
}

/// Elements behind the borrow word, and the lock that every access to them takes
/// ([`Value`](crate::Value) and [`Array`](crate::Array) expose no other path), so the holder of
/// the lock may view them as `&mut [T]` once the borrow word says no guard of it lives.
#[derive(Clone)]
pub(crate) struct Locked<T: Pod> {
    elems: Elements<T>,
    lock: AnyLock,
}

impl<T: Pod> Locked<T> {
    /// `len` zeroed elements behind a clear borrow word, guarded by `lock`.
    pub(crate) fn zeroed(len: usize, lock: AnyLock) -> std::io::Result<Locked<T>> {
        let locked = Locked {
            elems: Elements::zeroed_at(len, header::<T>(), LOCKED_KIND)?,
            lock,
        };
        let (l, e) = locked.lock.identity();
        for (word, v) in locked.identity_words().iter().zip([
            l as u64,
            (l >> 64) as u64,
            e as u64,
            (e >> 64) as u64,
        ]) {
            word.store(v, Relaxed);
        }
        Ok(locked)
    }

    /// Over a region received from another process, if it is a locked array's region that
    /// fits a header and `T`s, and `lock` is the lock it was made with. A value paired with
    /// another lock (bytes spliced together) would let two guards hand out `&mut` to the same
    /// elements: refused.
    pub(crate) fn from_region(region: Region, lock: AnyLock) -> Option<Locked<T>> {
        let locked = Locked {
            elems: Elements::from_region_at(region, header::<T>(), LOCKED_KIND)?,
            lock,
        };
        let w = locked.identity_words();
        let recorded = (
            u128::from(w[0].load(Relaxed)) | u128::from(w[1].load(Relaxed)) << 64,
            u128::from(w[2].load(Relaxed)) | u128::from(w[3].load(Relaxed)) << 64,
        );
        (recorded == locked.lock.identity()).then_some(locked)
    }

    /// The four words of the lock's and epoch's identities in the header.
    fn identity_words(&self) -> &[AtomicU64; 4] {
        // SAFETY: the region (of the locked kind, so made by `Locked::zeroed`) starts with a
        // header of at least `IDENTITY_AT + 32` bytes, aligned to at least 8 (the heap aligns
        // regions to 64, `IDENTITY_AT` is 16); these bytes are accessed only through these
        // atomics, by every process, and no `&mut` covers them (guards cover the elements
        // after the header).
        unsafe {
            &*self
                .elems
                .region
                .as_ptr()
                .add(IDENTITY_AT)
                .cast::<[AtomicU64; 4]>()
        }
    }

    pub(crate) fn elems(&self) -> &Elements<T> {
        &self.elems
    }

    pub(crate) fn lock(&self) -> &AnyLock {
        &self.lock
    }

    /// The borrow word: 0, or the lock epoch's tag of the guard of these elements that lives
    /// (or that died with its process).
    #[inline]
    fn borrow_word(&self) -> &AtomicU32 {
        // SAFETY: the region starts with `header::<T>() >= 4` bytes in front of the elements,
        // at an address aligned to at least 8 (the heap aligns regions to 64); they are
        // accessed only through this atomic, by every process, and no `&mut` covers them.
        unsafe { &*self.elems.region.as_ptr().cast::<AtomicU32>() }
    }

    /// Takes the lock and views the elements, waiting as `wait` says. `None` when the wait
    /// ended first, or (for `Wait::No`/`Wait::For`) when a guard of these elements already
    /// lives on this thread.
    ///
    /// # Panics
    ///
    /// With `Wait::Forever`, when a guard of these elements already lives on this thread (an
    /// `RLock` lets the thread in again; a second `&mut [T]` would alias the first).
    #[inline]
    pub(crate) fn guard(&self, wait: Wait) -> Option<Guard<'_, T>> {
        let (held, owner_died, tag) = self.lock.hold(wait)?;
        let word = self.borrow_word();
        // The lock is held, so the word is either clear, or was written by a guard that lives
        // on this thread (an `RLock` let the thread in again) in this epoch, or is stale: left
        // by a guard whose process died holding the lock, after which the takeover started a
        // new epoch. (Safe code cannot release the lock under a live guard.)
        if word.load(Relaxed) == tag {
            drop(held);
            if let Wait::Forever = wait {
                panic!(
                    "already locked: a guard of this Value/Array lives on this thread \
                     (drop it before locking again; its RLock lets the thread in, but a \
                     second guard would alias the first)"
                );
            }
            return None;
        }
        word.store(tag, Relaxed);
        // SAFETY: the region holds `len` elements of `T` after the header, aligned (checked on
        // construction) and alive as long as `self`. `held` keeps the lock that every access
        // to them takes for the guard's whole lifetime, and the borrow word did not hold this
        // epoch's tag (it was clear, or left by a guard that died with its process), so no
        // other `&mut` to them lives in this process; the guard clears the word before its
        // `held` releases the lock.
        let slice = unsafe { std::slice::from_raw_parts_mut(self.elems.base(), self.elems.len) };
        Some(Guard {
            _held: held,
            word,
            slice,
            owner_died,
        })
    }
}

/// Clears the borrow word of a guard that ends (before its lock is released).
#[inline]
pub(crate) fn end_borrow(word: &AtomicU32) {
    word.store(0, Relaxed);
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
        unsafe { std::slice::from_raw_parts(self.elems.base(), self.elems.len) }
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
        atomic_copy(
            self.0.as_ptr().wrapping_add(offset),
            out.as_mut_ptr(),
            out.len(),
            Side::Src,
        );
    }

    /// Copies `data` to `offset`; panics when out of range.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset
                .checked_add(data.len())
                .is_some_and(|end| end <= self.0.len()),
            "write out of range"
        );
        atomic_copy(
            data.as_ptr(),
            self.0.as_ptr().wrapping_add(offset),
            data.len(),
            Side::Dst,
        );
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

/// Which side of a copy is the shared mapping (reached only atomically).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

const WORD: usize = std::mem::size_of::<usize>();

/// Copies `len` bytes from `src` to `dst`, where the `shared` side lies in a mapping that
/// other threads and processes may read and write at the same time: that side is accessed
/// only with relaxed atomic loads or stores, by aligned words in the middle and by bytes at
/// the unaligned edges (the approach of the `atomic-memcpy` crate, for a length known only at
/// run time); the private side with plain unaligned accesses. The caller (this module) passes
/// ranges that are in bounds and do not overlap: one is a Rust slice, the other the mapping.
fn atomic_copy(src: *const u8, dst: *mut u8, len: usize, shared: Side) {
    let shared_ptr = match shared {
        Side::Src => src,
        Side::Dst => dst.cast_const(),
    };
    let head = shared_ptr.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    let tail = head + words * WORD;
    for i in (0..head).chain(tail..len) {
        copy_byte(src.wrapping_add(i), dst.wrapping_add(i), shared);
    }
    let (src, dst) = (src.wrapping_add(head), dst.wrapping_add(head));
    match shared {
        Side::Src if words * WORD >= STREAM_MIN && (dst as usize) % WORD == 0 => {
            read_words_streaming(src, dst, words)
        }
        Side::Src => {
            for k in 0..words {
                let at = k * WORD;
                // SAFETY: `src + at` is a word-aligned address inside the mapping (the head
                // was skipped to alignment, `at + WORD <= len - head`), accessed by every
                // thread only atomically; the mapping outlives the call.
                let v = unsafe { AtomicUsize::from_ptr(src.wrapping_add(at).cast_mut().cast()) }
                    .load(Relaxed);
                // SAFETY: `dst + at .. + WORD` lies inside the caller's private slice.
                unsafe { dst.wrapping_add(at).cast::<usize>().write_unaligned(v) };
            }
        }
        Side::Dst => {
            for k in 0..words {
                let at = k * WORD;
                // SAFETY: `src + at .. + WORD` lies inside the caller's private slice.
                let v = unsafe { src.wrapping_add(at).cast::<usize>().read_unaligned() };
                // SAFETY: `dst + at` is a word-aligned address inside the mapping, accessed
                // only atomically; the mapping outlives the call.
                unsafe { AtomicUsize::from_ptr(dst.wrapping_add(at).cast()) }.store(v, Relaxed);
            }
        }
    }
}

/// From this many bytes on, a read out of the mapping writes the private side with
/// non-temporal stores where the target has them, as glibc's `memcpy` does for large copies:
/// the destination's cache lines are then not read first (measured on 256 MiB: 3.2 GB/s with
/// plain stores into a buffer allocated just above the mapping, 10 GB/s streaming, memcpy 10-14).
const STREAM_MIN: usize = 4 << 20;

/// The middle words of a large read: relaxed atomic loads, non-temporal stores to the
/// word-aligned private side, then a store fence so later stores (a release that publishes
/// the buffer) are ordered after them.
#[cfg(target_arch = "x86_64")]
fn read_words_streaming(src: *const u8, dst: *mut u8, words: usize) {
    use std::arch::x86_64::{_mm_sfence, _mm_stream_si64};
    for k in 0..words {
        let at = k * WORD;
        // SAFETY: as in `atomic_copy`: a word-aligned address inside the mapping, accessed
        // only atomically.
        let v =
            unsafe { AtomicUsize::from_ptr(src.wrapping_add(at).cast_mut().cast()) }.load(Relaxed);
        // SAFETY: `dst + at .. + WORD` lies inside the caller's private slice and is 8-byte
        // aligned (`dst` is, checked by the caller); SSE2 is part of x86_64.
        unsafe { _mm_stream_si64(dst.wrapping_add(at).cast::<i64>(), v as i64) };
    }
    // SAFETY: a store fence has no precondition (SSE, part of x86_64).
    unsafe { _mm_sfence() };
}

/// Elsewhere: plain stores.
#[cfg(not(target_arch = "x86_64"))]
fn read_words_streaming(src: *const u8, dst: *mut u8, words: usize) {
    for k in 0..words {
        let at = k * WORD;
        // SAFETY: as in `atomic_copy`.
        let v =
            unsafe { AtomicUsize::from_ptr(src.wrapping_add(at).cast_mut().cast()) }.load(Relaxed);
        // SAFETY: `dst + at .. + WORD` lies inside the caller's private slice.
        unsafe { dst.wrapping_add(at).cast::<usize>().write_unaligned(v) };
    }
}

/// One byte of [`atomic_copy`].
fn copy_byte(src: *const u8, dst: *mut u8, shared: Side) {
    match shared {
        Side::Src => {
            // SAFETY: `src` is in bounds of the mapping (see `atomic_copy`), reached atomically.
            let b = unsafe { AtomicU8::from_ptr(src.cast_mut()) }.load(Relaxed);
            // SAFETY: `dst` is in bounds of the caller's private slice.
            unsafe { dst.write(b) };
        }
        Side::Dst => {
            // SAFETY: `src` is in bounds of the caller's private slice.
            let b = unsafe { src.read() };
            // SAFETY: `dst` is in bounds of the mapping, reached atomically.
            unsafe { AtomicU8::from_ptr(dst) }.store(b, Relaxed);
        }
    }
}

impl AnyLock {
    /// Releases the lock without a guard (Python's bare `lock.release()`), after an acquire
    /// whose guard was given up with [`std::mem::forget`].
    ///
    /// Errors as [`Lock::release`](multiproc_sync::Lock::release) and
    /// [`RLock::release`](multiproc_sync::RLock::release) do (an `RLock` only by the thread
    /// that owns it).
    ///
    /// # Safety
    ///
    /// No guard of this lock may live (in any thread or process): neither an
    /// [`AnyLockGuard`](crate::AnyLockGuard) nor a [`Guard`]/[`ValueGuard`](crate::ValueGuard) of a value that uses it, whose `&mut` access relies on
    /// the lock staying held until it is dropped.
    pub unsafe fn release(&self) -> Result<(), multiproc_sync::Error> {
        match &self.kind {
            Kind::RLock(l) => l.release(),
            Kind::Lock(l) => l.release(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    #[test]
    fn issue_6_forgotten_guard_then_unsafe_release() {
        let lock = AnyLock::new_lock().unwrap();
        let v = Value::with_lock(3u16, lock.clone()).unwrap();
        assert!(!lock.is_reentrant());
        std::mem::forget(lock.acquire());
        assert!(v.try_lock().is_none());
        // SAFETY: the only guard was forgotten; none lives.
        unsafe { lock.release() }.unwrap();
        assert_eq!(v.get(), 3);
        // SAFETY: as above; releasing an unheld Lock is Python's error, not UB.
        let again = unsafe { lock.release() };
        assert!(matches!(again, Err(multiproc_sync::Error::NotHeld)));
    }

    #[test]
    fn atomic_copy_matches_a_plain_copy_at_every_alignment() {
        let shared: Vec<u8> = (0..64u8).collect();
        for shared_at in 0..WORD + 1 {
            for private_at in 0..3 {
                for len in 0..40 {
                    let mut out = vec![0xffu8; len + 3];
                    atomic_copy(
                        shared[shared_at..].as_ptr(),
                        out[private_at..].as_mut_ptr(),
                        len,
                        Side::Src,
                    );
                    assert_eq!(
                        &out[private_at..private_at + len],
                        &shared[shared_at..][..len]
                    );
                    assert!(out[..private_at].iter().all(|&b| b == 0xff));
                    assert!(out[private_at + len..].iter().all(|&b| b == 0xff));
                    let mut back = [0xeeu8; 64];
                    atomic_copy(
                        out[private_at..].as_ptr(),
                        back[shared_at..].as_mut_ptr(),
                        len,
                        Side::Dst,
                    );
                    assert_eq!(
                        &back[shared_at..shared_at + len],
                        &shared[shared_at..][..len]
                    );
                    assert!(back[..shared_at].iter().all(|&b| b == 0xee));
                    assert!(back[shared_at + len..].iter().all(|&b| b == 0xee));
                }
            }
        }
    }

    #[test]
    fn atomic_copy_streams_large_reads_exactly() {
        let len = STREAM_MIN + 3 * WORD + 5;
        let shared: Vec<u8> = (0..len + 8).map(|i| (i % 251) as u8).collect();
        for (shared_at, private_at) in [(0, 0), (3, 3), (1, 2)] {
            let mut out = vec![0u8; len + 8];
            atomic_copy(
                shared[shared_at..].as_ptr(),
                out[private_at..].as_mut_ptr(),
                len,
                Side::Src,
            );
            assert!(out[private_at..private_at + len] == shared[shared_at..shared_at + len]);
            assert!(out[..private_at].iter().all(|&b| b == 0));
            assert!(out[private_at + len..].iter().all(|&b| b == 0));
        }
    }
}
