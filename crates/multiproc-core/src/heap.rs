//! The shared heap: memory that every process of a program can map, for the futex words of
//! locks and for shared values (Python's `multiprocessing.heap`).
//!
//! Objects live in anonymous shared segments (`memfd_create` + `mmap(MAP_SHARED)`): no file
//! system name, nothing left behind once every process that maps a segment has exited. Small
//! objects share 1 MiB arenas (bump allocation, cache-line aligned); large ones get a segment
//! of their own. A [`Shared<T>`] is a handle on one object: cloning it shares the object,
//! dropping the last handle of a segment in a process unmaps it there.
//!
//! A handle implements serde: handed to a spawn or forkserver child, its segment's fd travels in
//! the fd table of [`reduction`](crate::reduction) and the child maps it (once per segment,
//! however many handles point into it). A fork child inherits the mappings at the same
//! addresses. Segments may map at different addresses in different processes, so objects in
//! the heap never hold pointers, only values.
//!
//! Only [`ShmSafe`] types live there: valid for every bit pattern (another process may write
//! any), meaningful when all-zero (new memory is zeroed), and changed only through atomics, so
//! the heap never hands out `&mut` to memory another process can write.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use multiproc_core::heap::Shared;
//!
//! let counter: Shared<AtomicU64> = Shared::new().unwrap();
//! let same = counter.clone();
//! same.fetch_add(2, Ordering::SeqCst);
//! assert_eq!(counter.load(Ordering::SeqCst), 2);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reduction;

/// Types that may live in the shared heap.
///
/// # Safety
///
/// Implementors must be valid for every bit pattern (another process may have written any),
/// meaningful when all-zero (new heap memory is zeroed), free of pointers and references
/// (segments map at different addresses in different processes), and mutable only through
/// interior atomics (several processes access them at once through shared references).
pub unsafe trait ShmSafe: Sync + Send + 'static {}

macro_rules! shm_safe {
    ($($t:ty),*) => { $(
        // SAFETY: an atomic integer is valid for every bit pattern, zero is a value, it holds
        // no pointer and is mutated only atomically.
        unsafe impl ShmSafe for $t {}
    )* };
}
shm_safe!(
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicI32,
    AtomicI64,
    AtomicUsize
);
// SAFETY: an array of `ShmSafe` elements has each property element-wise.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}

/// Size of the arenas small objects share.
const ARENA: usize = 1 << 20;
/// Objects at least this large get a segment of their own.
const LARGE: usize = ARENA / 4;
/// Objects start on their own cache line, so two locks never share one.
const ALIGN: usize = 64;

/// A shared, read-write mapping of a whole fd (a memfd here, a POSIX shared memory object in
/// `multiproc-shm`), unmapped when dropped. It only gives out the address: every access through
/// it is its user's `unsafe`, as for [`Region`].
pub struct SharedMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory reached only through raw pointers or `ShmSafe` types by
// shared reference; the pointer itself is never written after creation.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd` shared and read-write (`len` > 0, at most the
    /// object's size).
    pub fn new(fd: &OwnedFd, len: usize) -> std::io::Result<SharedMapping> {
        let size = rustix::fs::fstat(fd)?.st_size;
        if len == 0 || (size as u64) < len as u64 {
            return Err(std::io::Error::other(
                "shared memory object smaller than announced",
            ));
        }
        // SAFETY: a fresh shared mapping of an fd we hold, at an address the kernel picks; no
        // existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let base =
            NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(SharedMapping { base, len })
    }

    /// The first byte; valid for [`len`](SharedMapping::len) bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping has no bytes (never: mappings are not empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `new`; every user keeps the
        // mapping alive while it holds a pointer into it.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl fmt::Debug for SharedMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMapping")
            .field("len", &self.len)
            .finish()
    }
}

/// One memfd mapping in this process.
struct Segment {
    id: u64,
    fd: OwnedFd,
    map: SharedMapping,
}

impl Segment {
    /// A new zero-filled segment of `len` bytes.
    fn create(len: usize) -> std::io::Result<Arc<Segment>> {
        let fd = rustix::fs::memfd_create("multiproc-heap", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        let mut id = [0u8; 8];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())?;
        let seg = Segment::map(u64::from_le_bytes(id), fd, len)?;
        remember(&mut SEGMENTS.lock(), seg.id, &seg);
        Ok(seg)
    }

    /// Maps `len` bytes of the memfd `fd`.
    fn map(id: u64, fd: OwnedFd, len: usize) -> std::io::Result<Arc<Segment>> {
        let map = SharedMapping::new(&fd, len)?;
        Ok(Arc::new(Segment { id, fd, map }))
    }
}

/// Segments mapped in this process, by id, so a handle received twice maps its segment once.
static SEGMENTS: Mutex<SegmentMap> = Mutex::new(None);

type SegmentMap = Option<HashMap<u64, Weak<Segment>>>;

/// Records a mapped segment (and forgets those no handle uses any more).
fn remember(map: &mut SegmentMap, id: u64, seg: &Arc<Segment>) {
    let map = map.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(id, Arc::downgrade(seg));
}

/// The segment `id` if it is mapped in this process.
fn find(map: &SegmentMap, id: u64) -> Option<Arc<Segment>> {
    map.as_ref()?.get(&id)?.upgrade()
}

/// The arena small objects are carved from, with the next free offset and the pid of the
/// process that carves it (a fork child must not hand out its parent's next offsets).
static ARENA_NOW: Mutex<Option<(Arc<Segment>, usize, u32)>> = Mutex::new(None);

/// Reserves `size` bytes aligned to `align` (both at most a page for arena objects).
fn allocate(size: usize, align: usize) -> std::io::Result<(Arc<Segment>, usize)> {
    let align = align.max(ALIGN);
    if size >= LARGE {
        let len = size.div_ceil(4096) * 4096;
        return Ok((Segment::create(len)?, 0));
    }
    let me = crate::sys::current_pid();
    let mut arena = ARENA_NOW.lock();
    if let Some((seg, next, owner)) = arena.as_mut() {
        let offset = next.div_ceil(align) * align;
        if *owner == me && offset + size <= seg.map.len() {
            *next = offset + size;
            return Ok((seg.clone(), offset));
        }
    }
    let seg = Segment::create(ARENA)?;
    *arena = Some((seg.clone(), size, me));
    Ok((seg, 0))
}

/// A region of raw bytes in the shared heap, for data that is not [`ShmSafe`]: plain values
/// guarded by a lock, or read and written with atomic operations (`multiproc-shm`'s `Value` and
/// `Array`). The heap gives its address and length; every access is the user's `unsafe`.
///
/// Cloning shares the region; serde hands it to a child like a [`Shared`].
#[derive(Clone)]
pub struct Region {
    seg: Arc<Segment>,
    offset: usize,
    len: usize,
}

impl Region {
    /// `len` zeroed bytes aligned to `align` (a power of two, at most 4096).
    pub fn new(len: usize, align: usize) -> std::io::Result<Region> {
        if !align.is_power_of_two() || align > 4096 {
            return Err(std::io::Error::other(
                "region alignment must be a power of two up to 4096",
            ));
        }
        let (seg, offset) = allocate(len.max(1), align)?;
        Ok(Region { seg, offset, len })
    }

    /// The first byte. Valid for [`len`](Region::len) bytes as long as this handle (or a clone)
    /// lives; other processes may read and write the same bytes at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        // In bounds: `offset + len <= seg.map.len()` was checked on allocation and deserialisation.
        self.seg.map.as_ptr().wrapping_add(self.offset)
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether two handles name the same bytes.
    pub fn ptr_eq(a: &Region, b: &Region) -> bool {
        a.seg.id == b.seg.id && a.offset == b.offset
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("segment", &format_args!("{:016x}", self.seg.id))
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// The wire form of a [`Region`]: its segment's fd (through the fd table), the segment's id
/// and length, the offset and length of the region.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "reduction::fd")]
    fd: OwnedFd,
    id: u64,
    seg_len: u64,
    offset: u64,
    len: u64,
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct WireRef<'a> {
            #[serde(serialize_with = "ser_fd")]
            fd: &'a OwnedFd,
            id: u64,
            seg_len: u64,
            offset: u64,
            len: u64,
        }
        fn ser_fd<S: Serializer>(fd: &&OwnedFd, s: S) -> Result<S::Ok, S::Error> {
            reduction::serialize_fd(fd.as_fd(), s)
        }
        WireRef {
            fd: &self.seg.fd,
            id: self.seg.id,
            seg_len: self.seg.map.len() as u64,
            offset: self.offset as u64,
            len: self.len as u64,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(deserializer)?;
        let (seg_len, offset, len) = (w.seg_len as usize, w.offset as usize, w.len as usize);
        let end = offset
            .checked_add(len)
            .ok_or_else(|| D::Error::custom("bad region"))?;
        if end > seg_len {
            return Err(D::Error::custom("shared heap region out of its segment"));
        }
        let mut segments = SEGMENTS.lock();
        let seg = match find(&segments, w.id) {
            Some(seg) if seg.map.len() == seg_len => seg,
            _ => {
                let seg = Segment::map(w.id, w.fd, seg_len)
                    .map_err(|e| D::Error::custom(format!("cannot map shared heap: {e}")))?;
                remember(&mut segments, w.id, &seg);
                seg
            }
        };
        Ok(Region { seg, offset, len })
    }
}

/// A handle on one `T` in the shared heap; derefs to `&T`.
pub struct Shared<T: ShmSafe> {
    region: Region,
    _t: PhantomData<T>,
}

impl<T: ShmSafe> Shared<T> {
    /// A new, zero-initialised `T` in the shared heap.
    pub fn new() -> std::io::Result<Shared<T>> {
        let region = Region::new(std::mem::size_of::<T>(), std::mem::align_of::<T>())?;
        Ok(Shared {
            region,
            _t: PhantomData,
        })
    }

    /// Whether two handles point at the same object.
    pub fn ptr_eq(a: &Shared<T>, b: &Shared<T>) -> bool {
        Region::ptr_eq(&a.region, &b.region)
    }
}

impl<T: ShmSafe> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the region holds `size_of::<T>()` bytes inside the mapping, aligned for `T`
        // (checked on allocation and on deserialisation), and lives as long as `self`;
        // `T: ShmSafe` is valid for every bit pattern and only mutated through atomics, so a
        // shared reference is sound even while other processes write it.
        unsafe { &*self.region.as_ptr().cast::<T>() }
    }
}

impl<T: ShmSafe> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            region: self.region.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: ShmSafe> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shared").field(&self.region).finish()
    }
}

impl<T: ShmSafe> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(serializer)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let region = Region::deserialize(deserializer)?;
        if region.len != std::mem::size_of::<T>()
            || (region.as_ptr() as usize) % std::mem::align_of::<T>() != 0
        {
            return Err(D::Error::custom("shared heap handle of another type"));
        }
        Ok(Shared {
            region,
            _t: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn objects_are_zeroed_aligned_and_distinct() {
        let a: Shared<AtomicU64> = Shared::new().unwrap();
        let b: Shared<AtomicU64> = Shared::new().unwrap();
        assert_eq!(a.load(Ordering::Relaxed), 0);
        assert!(!Shared::ptr_eq(&a, &b));
        assert_eq!((&*a as *const AtomicU64 as usize) % ALIGN, 0);
        a.store(7, Ordering::Relaxed);
        assert_eq!(b.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn round_trip_through_the_fd_table_maps_the_same_memory() {
        let a: Shared<[AtomicU32; 4]> = Shared::new().unwrap();
        a[2].store(42, Ordering::SeqCst);
        let (bytes, fds) = reduction::encode(&a).unwrap();
        // In this process the segment is found by id and not mapped again.
        let b: Shared<[AtomicU32; 4]> = reduction::decode(&bytes, fds).unwrap();
        assert!(Shared::ptr_eq(&a, &b));
        b[2].fetch_add(1, Ordering::SeqCst);
        assert_eq!(a[2].load(Ordering::SeqCst), 43);
    }

    #[test]
    fn large_objects_get_their_own_segment() {
        let big: Shared<[AtomicU64; 65536]> = Shared::new().unwrap();
        big[65535].store(1, Ordering::Relaxed);
        assert_eq!(big[65535].load(Ordering::Relaxed), 1);
    }
}
