//! The shared heap: memory that every process of a program can map, for the futex words of
//! locks and for shared values (Python's `multiprocessing.heap`).
//!
//! Objects live in anonymous shared segments (`memfd_create` + `mmap(MAP_SHARED)`): no file
//! system name, nothing left behind once every process that maps a segment has exited. Every
//! segment is sealed against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`)
//! as soon as it is sized, and a segment received from another process is mapped only if it
//! carries the shrink seal, so no process can truncate memory under another's mapping.
//!
//! Small objects (below 256 KiB) share 1 MiB arenas: size classes, cache-line aligned, carved
//! from the arena's end and kept on a free list per class when freed. Large objects get a
//! segment of their own, kept in a small cache when freed and handed to the next large object
//! that fits. Every object has a header in shared memory (a side table at the start of an
//! arena, the first page of a large segment) with a generation and a reference count across
//! processes, so memory is reused only when no process can reach it any more, and is zeroed
//! before it is handed out again. How the counts work, and which process reuses what:
//! `docs/decisions.md` ("Heap (issue 6)").
//!
//! A [`Shared<T>`] is a handle on one object: cloning it shares the object within the process
//! (no shared-memory traffic), dropping the last handle of a process releases that process's
//! reference.
//!
//! A handle implements serde: handed to a spawn or forkserver child, its segment's fd travels in
//! the fd table of [`reduction`] and the child maps it (once per segment,
//! however many handles point into it); the encoded handle carries a reference, which the
//! receiver takes over. A fork child inherits the mappings at the same addresses, and the heap
//! takes a reference for it on every object the parent holds at the fork (a `pthread_atfork`
//! handler), released when the child and every process forked from it have exited. Segments
//! may map at different addresses in different processes, so objects in the heap never hold
//! pointers, only values.
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
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst,
};
use std::sync::{Arc, Once, Weak};

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

/// Size of the data area of the arenas small objects share.
const ARENA: usize = 1 << 20;
/// Objects start on their own cache line, so two locks never share one; the arena's unit.
const ALIGN: usize = 64;
/// Bytes of one object header (generation word, reference word).
const HEADER: usize = 16;
/// The side table of headers at the start of an arena: one header per 64-byte unit of data.
const TABLE: usize = ARENA / ALIGN * HEADER;
/// Length of an arena segment: the side table, then the data.
const ARENA_SEG: usize = TABLE + ARENA;
/// Objects at least this large get a segment of their own.
const LARGE: usize = ARENA / 4;
/// Where the object starts in a large segment (its header is at offset 0).
const LARGE_DATA: usize = 4096;
/// The size-class tag of a large segment in its header's generation word.
const LARGE_CLASS: u64 = 255;
/// Freed large segments kept for reuse by their carver, at most this many bytes in all.
const LARGE_CACHE: usize = 64 << 20;
/// And at most this many segments.
const LARGE_CACHED: usize = 16;

/// The size class of an object of `len` bytes below [`LARGE`]: multiples of 64 bytes up to
/// 1 KiB, then four classes per power of two. Returns the class and its block size.
fn class_of(len: usize) -> (u8, usize) {
    let size = len.max(1).next_multiple_of(ALIGN);
    if size <= 1024 {
        let class = size / ALIGN - 1;
        return (class as u8, size);
    }
    let p = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let step = 1usize << (p - 2);
    let rounded = size.next_multiple_of(step);
    let class = 16 + (p - 10) * 4 + (rounded - (1 << p)) / step - 1;
    (class as u8, rounded)
}

/// The block size of size class `class` (the inverse of [`class_of`]).
fn class_size(class: u8) -> Option<usize> {
    let class = class as usize;
    match class {
        0..16 => Some((class + 1) * ALIGN),
        16..48 => {
            let k = class - 16;
            let p = 10 + k / 4;
            Some((1 << p) + (k % 4 + 1) * (1 << (p - 2)))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------- headers ----

/// The header of one object, in shared memory.
///
/// `generation` is the object's size class (top 8 bits) and its generation (low 56 bits), bumped each
/// time the block is reused, so a handle of a previous object can never be taken for the new
/// one. `refs` holds the count of references (low 32 bits: processes holding the object plus
/// encoded handles not yet decoded) and the number of those that are encoded handles in
/// flight (high 32 bits). The block is free when the count is zero; nothing but its carver
/// touches a free block's header.
#[repr(C)]
struct Header {
    generation: AtomicU64,
    refs: AtomicU64,
}

/// Where a block's kind (chosen by the layer that allocates it, see [`Region::new_kind`]) sits
/// in its header's generation word: bits 48..56, below the size class.
const KIND_SHIFT: u32 = 48;
const KIND_MASK: u64 = 0xff << KIND_SHIFT;

/// One reference in the low half of `refs`.
const REF: u64 = 1;
/// One encoded handle in flight: a reference and an in-flight mark.
const TICKET: u64 = (1 << 32) | 1;
/// Counts stop well before they would overflow into each other.
const REF_LIMIT: u64 = u32::MAX as u64 / 2;

/// Why a received handle cannot be taken.
#[derive(Debug)]
enum Redeem {
    /// The object was freed (and perhaps reused) since the handle was encoded.
    Expired,
    /// The reference count is at its limit.
    Overflow,
}

impl Header {
    /// Takes a reference for an encoded handle; the caller holds a reference.
    fn ticket(&self) -> Result<(), &'static str> {
        self.refs
            .fetch_update(SeqCst, SeqCst, |r| {
                ((r & 0xffff_ffff) < REF_LIMIT && (r >> 32) < REF_LIMIT).then_some(r + TICKET)
            })
            .map(|_| ())
            .map_err(|_| "too many references to one shared heap object")
    }

    /// Takes over the reference of an encoded handle of generation `generation`: one in flight if
    /// there is one, else a new reference if the object is still alive.
    fn redeem(&self, generation: u64) -> Result<(), Redeem> {
        if self.generation.load(SeqCst) != generation {
            return Err(Redeem::Expired);
        }
        let mut adopted = false;
        let r = self.refs.fetch_update(SeqCst, SeqCst, |r| {
            let (inflight, count) = (r >> 32, r & 0xffff_ffff);
            if inflight > 0 {
                adopted = true;
                Some(r - (1 << 32))
            } else if count > 0 && count < REF_LIMIT {
                adopted = false;
                Some(r + REF)
            } else {
                None
            }
        });
        if let Err(r) = r {
            return Err(if r & 0xffff_ffff == 0 {
                Redeem::Expired
            } else {
                Redeem::Overflow
            });
        }
        // The generation only grows; unchanged after the update means the update was made on
        // this generation's counts.
        if self.generation.load(SeqCst) != generation {
            if adopted {
                self.refs.fetch_add(1 << 32, SeqCst);
            } else {
                self.refs.fetch_sub(REF, SeqCst);
            }
            return Err(Redeem::Expired);
        }
        Ok(())
    }

    /// Drops one reference; returns the references left.
    fn release(&self) -> u64 {
        (self.refs.fetch_sub(REF, SeqCst) - REF) & 0xffff_ffff
    }

    /// Whether no process holds the object and no handle of it is in flight.
    fn is_free(&self) -> bool {
        self.refs.load(SeqCst) == 0
    }
}

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
    #[inline]
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

// ---------------------------------------------------------------------------- segments ----

/// One memfd mapping in this process.
struct Segment {
    id: u64,
    fd: OwnedFd,
    map: SharedMapping,
    /// A segment of one large object (else an arena of small ones).
    large: bool,
    /// The [`incarnation`] that created the segment and alone carves and reuses it (0: received).
    carver: u64,
    /// The carver's index of the arena in its [`Carver::arenas`].
    slot: usize,
}

impl Segment {
    /// A new zero-filled segment of `len` bytes, sealed against resizing, carved by this process.
    fn create(len: usize, large: bool, slot: usize) -> std::io::Result<Arc<Segment>> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "multiproc-heap",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let mut id = [0u8; 8];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())?;
        let map = SharedMapping::new(&fd, len)?;
        let seg = Arc::new(Segment {
            id: u64::from_le_bytes(id),
            fd,
            map,
            large,
            carver: incarnation(),
            slot,
        });
        remember(&mut SEGMENTS.lock(), seg.id, &seg);
        Ok(seg)
    }

    /// Maps `len` bytes of the memfd `fd` received from another process, if it is sealed
    /// against shrinking (else another process could truncate it under our mapping).
    fn receive(id: u64, fd: OwnedFd, len: usize, large: bool) -> Result<Arc<Segment>, String> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| format!("shared heap segment without seals: {e}"))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err("shared heap segment is not sealed against shrinking".into());
        }
        let map =
            SharedMapping::new(&fd, len).map_err(|e| format!("cannot map shared heap: {e}"))?;
        Ok(Arc::new(Segment {
            id,
            fd,
            map,
            large,
            carver: 0,
            slot: usize::MAX,
        }))
    }

    /// The header at byte `at` of the segment.
    fn header(&self, at: usize) -> &Header {
        assert!(at % HEADER == 0 && at + HEADER <= self.map.len());
        // SAFETY: `at` is a 16-byte-aligned offset inside the mapping (checked; the mapping is
        // page-aligned), which lives as long as `self`. A header is two atomics, valid for
        // every bit pattern, changed only atomically, in every process.
        unsafe { &*self.map.as_ptr().add(at).cast::<Header>() }
    }

    /// The offset of the header of the object at `offset`.
    fn header_off(&self, offset: usize) -> usize {
        if self.large {
            0
        } else {
            (offset - TABLE) / ALIGN * HEADER
        }
    }

    /// The header of the object at `offset`.
    fn header_of(&self, offset: usize) -> &Header {
        self.header(self.header_off(offset))
    }

    /// Hands out the free block at `offset` as a new object of `len` zeroed bytes; false if
    /// the block is not free after all.
    fn reuse(&self, offset: usize, len: usize) -> bool {
        let h = self.header_of(offset);
        if !h.is_free() {
            return false;
        }
        assert!(offset + len <= self.map.len());
        // SAFETY: the range lies in the mapping (checked). No process holds a reference to the
        // block and no encoded handle of it is in flight (its count is zero), and only this
        // process, its carver, hands it out again, so no safe code anywhere can read or write
        // these bytes while they are zeroed. Handles of the previous object that are decoded
        // later fail on the generation bumped below.
        unsafe { std::ptr::write_bytes(self.map.as_ptr().add(offset), 0, len) };
        h.generation.fetch_add(1, SeqCst);
        h.refs.store(REF, SeqCst);
        true
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

// ------------------------------------------------------------------- process-local state ----

/// A block the carver can find again: an arena block (arena slot, data offset) or a large
/// segment (by id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    Small(usize, usize),
    Large(u64),
}

/// One arena carved by this process.
struct Arena {
    seg: Arc<Segment>,
    /// The next offset never handed out.
    next: usize,
    /// Blocks carved and not on a free list (held here or elsewhere, or pending).
    live: usize,
}

/// What a process knows of the blocks it carves: free lists, the arenas, blocks it dropped
/// that other processes still hold.
#[derive(Default)]
struct Carver {
    arenas: Vec<Option<Arena>>,
    current: Option<usize>,
    /// Free small blocks (arena slot, offset) by size class and alignment: see [`Carver::list`].
    free: Vec<Vec<(usize, usize)>>,
    /// Blocks this process dropped while others held them; freed when found at count zero.
    pending: HashMap<Key, Option<Arc<Segment>>>,
    /// Pending size at which the next allocation scans it.
    scan_at: usize,
    /// Free large segments, at most [`LARGE_CACHE`] bytes.
    large_free: Vec<Arc<Segment>>,
}

impl Carver {
    /// The free list of size class `class` and alignment `2^align_log` (6..=12).
    fn list(&mut self, class: u8, align_log: u8) -> &mut Vec<(usize, usize)> {
        const ALIGNS: usize = 7;
        if self.free.is_empty() {
            self.free.resize_with(48 * ALIGNS, Vec::new);
        }
        &mut self.free[usize::from(class) * ALIGNS + usize::from(align_log - 6)]
    }
}

/// A reference this process holds on an object (see [`Block`]).
struct Entry {
    seg: Arc<Segment>,
    /// The header's offset in the segment.
    header: usize,
    /// The [`incarnation`] whose reference it is: a fork child inherits its parent's entries,
    /// covered by the parent's fork token.
    owner: u64,
}

/// References held by a [`Token`]: a segment and the offset of the object's header.
type Refs = Vec<(Arc<Segment>, usize)>;

/// References taken for a fork child, released when the child and everything forked from it
/// are gone: the read end of a pipe whose write end only those processes hold.
struct Token {
    eof: OwnedFd,
    refs: Refs,
}

/// The heap's process-local state, under one lock (also held across `fork()`).
#[derive(Default)]
struct State {
    /// The [`incarnation`] this state belongs to (a fork child resets what is its parent's).
    me: u64,
    carver: Carver,
    /// Every reference held in this process, for the fork handler.
    registry: Vec<Option<Entry>>,
    vacant: Vec<usize>,
    tokens: Vec<Token>,
    /// A fork in progress: the token's pipe (read end, write end) and references.
    forking: Option<(Option<(OwnedFd, OwnedFd)>, Refs)>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// This process's identity in the heap: random, renewed in every fork child (a pid would not
/// do: a grandchild may get the pid of a dead grandparent whose references it inherited).
static INCARNATION: AtomicU64 = AtomicU64::new(0);

/// A random non-zero 64-bit id.
fn random_id() -> u64 {
    let mut id = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Mixed with the pid and the time, should getrandom fail.
    (u64::from_le_bytes(id)
        ^ nanos
        ^ u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32))
        | 1
}

/// This process's [`INCARNATION`].
fn incarnation() -> u64 {
    match INCARNATION.load(SeqCst) {
        0 => {
            let id = random_id();
            match INCARNATION.compare_exchange(0, id, SeqCst, SeqCst) {
                Ok(_) => id,
                Err(other) => other,
            }
        }
        id => id,
    }
}

static ATFORK: Once = Once::new();

/// Runs `f` on the heap's state, creating it (and registering the fork handlers) first.
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    ATFORK.call_once(|| {
        // SAFETY: the three handlers are `extern "C" fn()`s that catch every panic; `prepare`
        // takes the state lock and leaves it held, `parent` and `child` release it, as
        // `pthread_atfork` runs them in pairs around every `fork()`.
        unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
    let mut guard = STATE.lock();
    let st = guard.get_or_insert_with(State::default);
    let me = incarnation();
    if st.me != me {
        // The first use (the fork child handler renews both): nothing carved belongs to us.
        st.me = me;
        st.carver = Carver::default();
        st.tokens.clear();
    }
    f(st)
}

extern "C" fn fork_prepare() {
    let _ = std::panic::catch_unwind(|| {
        let mut guard = STATE.lock();
        if let Some(st) = guard.as_mut() {
            let me = incarnation();
            st.reap_tokens();
            let mut refs = Vec::new();
            for e in st.registry.iter().flatten() {
                if e.owner == me {
                    e.seg.header(e.header).refs.fetch_add(REF, SeqCst);
                    refs.push((e.seg.clone(), e.header));
                }
            }
            if !refs.is_empty() {
                // Without a pipe the child's references are never released: a leak, not a
                // reuse under a live child.
                let pipe = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok();
                st.forking = Some((pipe, refs));
            }
        }
        std::mem::forget(guard);
    });
}

extern "C" fn fork_parent() {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `fork_prepare` on this thread locked the mutex and forgot its guard.
        unsafe { STATE.force_unlock() };
        let mut guard = STATE.lock();
        if let Some(st) = guard.as_mut()
            && let Some((pipe, refs)) = st.forking.take()
            && let Some((eof, write)) = pipe
        {
            drop(write);
            st.tokens.push(Token { eof, refs });
        }
    });
}

extern "C" fn fork_child() {
    let _ = std::panic::catch_unwind(|| {
        INCARNATION.store(random_id(), SeqCst);
        // SAFETY: `fork_prepare` on the thread that forked, the one thread of this child,
        // locked the mutex and forgot its guard.
        unsafe { STATE.force_unlock() };
        let mut guard = STATE.lock();
        if let Some(st) = guard.as_mut() {
            if let Some((pipe, _refs)) = st.forking.take()
                && let Some((eof, write)) = pipe
            {
                drop(eof);
                // Held until this process and all it forks have exited (or exec'd).
                let _ = write.into_raw_fd();
            }
            // The parent's tokens and everything it carves are the parent's business. The
            // registry stays: its entries are the parent's references, covered by its token.
            st.tokens.clear();
            st.carver = Carver::default();
            st.me = incarnation();
        }
    });
}

impl State {
    /// Records a reference held by this process; returns its registry slot.
    fn register(&mut self, seg: &Arc<Segment>, header: usize) -> usize {
        let e = Entry {
            seg: seg.clone(),
            header,
            owner: self.me,
        };
        match self.vacant.pop() {
            Some(i) => {
                self.registry[i] = Some(e);
                i
            }
            None => {
                self.registry.push(Some(e));
                self.registry.len() - 1
            }
        }
    }

    /// Releases the references of fork children that are gone.
    fn reap_tokens(&mut self) {
        if self.tokens.is_empty() {
            return;
        }
        use rustix::event::{PollFd, PollFlags};
        let gone: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = self
                .tokens
                .iter()
                .map(|t| PollFd::new(&t.eof, PollFlags::IN))
                .collect();
            if rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())).is_err() {
                return;
            }
            fds.iter().map(|p| !p.revents().is_empty()).collect()
        };
        let mut i = 0;
        self.tokens.retain(|t| {
            let keep = !gone[i];
            i += 1;
            if !keep {
                for (seg, at) in &t.refs {
                    seg.header(*at).release();
                }
            }
            keep
        });
    }
}

// -------------------------------------------------------------------------- allocation ----

impl State {
    /// A new zeroed object of `len` bytes aligned to `align` (a power of two, at most 4096),
    /// with one reference held by this process.
    fn allocate(&mut self, len: usize, align: usize, kind: u8) -> std::io::Result<Block> {
        let (seg, offset) = if len >= LARGE {
            self.allocate_large(len)?
        } else {
            self.allocate_small(len, align.max(ALIGN))?
        };
        let header = seg.header_off(offset);
        // The block is ours alone (just allocated, count 1): set its kind for receivers.
        let h = seg.header(header);
        let g = h.generation.load(SeqCst);
        h.generation
            .store(g & !KIND_MASK | u64::from(kind) << KIND_SHIFT, SeqCst);
        let slot = self.register(&seg, header);
        Ok(Block {
            seg,
            offset,
            header,
            slot,
        })
    }

    fn allocate_small(
        &mut self,
        len: usize,
        align: usize,
    ) -> std::io::Result<(Arc<Segment>, usize)> {
        let (class, size) = class_of(len);
        let want = align.trailing_zeros() as u8;
        for attempt in 0..2 {
            // A block on the list of a larger alignment serves a smaller one too.
            for a in want..=12 {
                while let Some((slot, offset)) = self.carver.list(class, a).pop() {
                    let Some(arena) = self.carver.arenas.get_mut(slot).and_then(Option::as_mut)
                    else {
                        continue;
                    };
                    if arena.seg.reuse(offset, len) {
                        arena.live += 1;
                        return Ok((arena.seg.clone(), offset));
                    }
                }
            }
            if attempt == 0 && self.carver.pending.len() >= self.carver.scan_at.max(64) {
                self.scan();
            } else {
                break;
            }
        }
        // Carve from the current arena, or a new one.
        if let Some(arena) = self
            .carver
            .current
            .and_then(|i| self.carver.arenas[i].as_mut())
        {
            let offset = arena.next.next_multiple_of(align);
            if offset + size <= ARENA_SEG {
                return Ok(carve(arena, offset, size, class));
            }
        }
        if !self.carver.pending.is_empty() {
            self.scan();
            if (want..=12).any(|a| !self.carver.list(class, a).is_empty()) {
                return self.allocate_small(len, align);
            }
        }
        let slot = match self.carver.arenas.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.carver.arenas.push(None);
                self.carver.arenas.len() - 1
            }
        };
        let seg = Segment::create(ARENA_SEG, false, slot)?;
        let old = self.carver.current.replace(slot);
        let arena = self.carver.arenas[slot].insert(Arena {
            seg,
            next: TABLE,
            live: 0,
        });
        let block = carve(arena, TABLE, size, class);
        if let Some(old) = old {
            self.retire_if_empty(old);
        }
        Ok(block)
    }

    fn allocate_large(&mut self, len: usize) -> std::io::Result<(Arc<Segment>, usize)> {
        let too_large = || std::io::Error::other("shared heap object too large");
        let data = len.checked_next_multiple_of(4096).ok_or_else(too_large)?;
        let seg_len = data.checked_add(LARGE_DATA).ok_or_else(too_large)?;
        let fits = |s: &Arc<Segment>| {
            let cap = s.map.len() - LARGE_DATA;
            cap >= data && cap / 2 <= data
        };
        if !self.carver.large_free.iter().any(fits) && !self.carver.pending.is_empty() {
            self.scan();
        }
        let mut best: Option<usize> = None;
        for (i, s) in self.carver.large_free.iter().enumerate() {
            if fits(s) && best.is_none_or(|b| s.map.len() < self.carver.large_free[b].map.len()) {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            let seg = self.carver.large_free.swap_remove(i);
            if seg.reuse(LARGE_DATA, len) {
                return Ok((seg, LARGE_DATA));
            }
        }
        let seg = Segment::create(seg_len, true, usize::MAX)?;
        seg.header(0).generation.store(LARGE_CLASS << 56, SeqCst);
        seg.header(0).refs.store(REF, SeqCst);
        Ok((seg, LARGE_DATA))
    }

    /// Moves pending blocks that nobody holds any more to the free lists (after releasing the
    /// references of fork children that are gone).
    fn scan(&mut self) {
        self.reap_tokens();
        let keys: Vec<Key> = self
            .carver
            .pending
            .iter()
            .filter(|(k, seg)| match (k, seg) {
                (Key::Large(_), Some(seg)) => seg.header(0).is_free(),
                (Key::Small(slot, offset), _) => self
                    .carver
                    .arenas
                    .get(*slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|a| a.seg.header_of(*offset).is_free()),
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let seg = self.carver.pending.remove(&k).flatten();
            self.free_block(k, seg);
        }
        self.carver.scan_at = (2 * self.carver.pending.len()).max(64);
    }

    /// This process, the carver, dropped its reference to `key`; `left` references remain.
    fn dropped(&mut self, key: Key, seg: &Arc<Segment>, left: u64) {
        if left > 0 {
            let keep = matches!(key, Key::Large(_)).then(|| seg.clone());
            self.carver.pending.insert(key, keep);
        } else {
            if !self.carver.pending.is_empty() {
                self.carver.pending.remove(&key);
            }
            self.free_block(key, Some(seg.clone()));
        }
    }

    /// Puts a block whose count reached zero on its free list.
    fn free_block(&mut self, key: Key, seg: Option<Arc<Segment>>) {
        match key {
            Key::Small(slot, offset) => {
                let Some(arena) = self.carver.arenas.get_mut(slot).and_then(Option::as_mut) else {
                    return;
                };
                let generation = arena.seg.header_of(offset).generation.load(SeqCst);
                let class = (generation >> 56) as u8;
                // Blocks are carved aligned to the largest power of two (up to 4096) that
                // their offset allows; serve that alignment again.
                let align = ((offset - TABLE) | 4096).trailing_zeros().min(12) as u8;
                let align = align.max(ALIGN.trailing_zeros() as u8);
                arena.live -= 1;
                self.carver.list(class, align).push((slot, offset));
                self.retire_if_empty(slot);
            }
            Key::Large(_) => {
                let Some(seg) = seg else { return };
                self.carver.large_free.push(seg);
                let mut total: usize = self.carver.large_free.iter().map(|s| s.map.len()).sum();
                while total > LARGE_CACHE || self.carver.large_free.len() > LARGE_CACHED {
                    let s = self.carver.large_free.remove(0);
                    total -= s.map.len();
                }
            }
        }
    }

    /// Unmaps (here) an arena that is not being carved and has no block out.
    fn retire_if_empty(&mut self, slot: usize) {
        if self.carver.current == Some(slot)
            || self
                .carver
                .arenas
                .get(slot)
                .and_then(Option::as_ref)
                .is_none_or(|a| a.live > 0)
        {
            return;
        }
        self.carver.arenas[slot] = None;
        for v in &mut self.carver.free {
            v.retain(|&(s, _)| s != slot);
        }
    }
}

/// Carves a fresh block at `offset` of the arena (its memory is still zero from the kernel).
fn carve(arena: &mut Arena, offset: usize, size: usize, class: u8) -> (Arc<Segment>, usize) {
    arena.next = offset + size;
    arena.live += 1;
    let h = arena.seg.header_of(offset);
    h.generation.store(u64::from(class) << 56, SeqCst);
    h.refs.store(REF, SeqCst);
    (arena.seg.clone(), offset)
}

/// One process's reference to one object; the last [`Region`] clone of it drops it.
struct Block {
    seg: Arc<Segment>,
    /// The object's offset in the segment.
    offset: usize,
    /// Its header's offset in the segment.
    header: usize,
    /// Its entry in the registry.
    slot: usize,
}

impl Drop for Block {
    fn drop(&mut self) {
        let me = incarnation();
        let mut guard = STATE.lock();
        let Some(st) = guard.as_mut() else { return };
        let Some(entry) = st.registry.get_mut(self.slot).and_then(Option::take) else {
            return;
        };
        st.vacant.push(self.slot);
        if entry.owner != me {
            // Inherited through fork: the parent's fork token holds the reference.
            return;
        }
        let left = self.seg.header(self.header).release();
        if self.seg.carver == me && st.me == me {
            let key = if self.seg.large {
                Key::Large(self.seg.id)
            } else {
                Key::Small(self.seg.slot, self.offset)
            };
            st.dropped(key, &self.seg, left);
        }
    }
}

// ---------------------------------------------------------------------------- handles ----

/// A region of raw bytes in the shared heap, for data that is not [`ShmSafe`]: plain values
/// guarded by a lock, or read and written with atomic operations (`multiproc-shm`'s `Value` and
/// `Array`). The heap gives its address and length; every access is the user's `unsafe`.
///
/// Cloning shares the region; serde hands it to a child like a [`Shared`]. The bytes are
/// zeroed when the region is created, and reused for another object only once no handle of
/// this one exists in any process.
#[derive(Clone)]
pub struct Region {
    block: Arc<Block>,
    /// The first byte, cached: the locks' fast paths reach their words through it (a chain of
    /// `Arc`s to the mapping cost them a third of their time).
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` points into the mapping that `block` keeps alive (an `Arc` shared by every
// clone); it is never written after construction, and the bytes behind it are reached only
// through raw pointers by their users (`unsafe`, with their own synchronisation) or as `ShmSafe`
// (atomic) types by shared reference, as for `SharedMapping`.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `len` zeroed bytes aligned to `align` (a power of two, at most 4096), of kind 0.
    pub fn new(len: usize, align: usize) -> std::io::Result<Region> {
        Region::new_kind(len, align, 0)
    }

    /// `len` zeroed bytes aligned to `align`, of `kind`: a tag the allocating layer chooses
    /// and checks when it receives a region ([`kind`](Region::kind)), so that bytes one type
    /// of handle owns can never be decoded as another type's (a `Value`'s elements as a
    /// `RawArray`, or a lock's words as a `Value`). Kind 0 is [`Shared`]'s; kinds from
    /// [`ATOMIC_KINDS`] up promise that the bytes are only ever accessed atomically (a
    /// [`SharedSlice`] may be decoded from such a region). The kind lives in the heap's own
    /// header, out of reach of the region's bytes.
    pub fn new_kind(len: usize, align: usize, kind: u8) -> std::io::Result<Region> {
        if !align.is_power_of_two() || align > 4096 {
            return Err(std::io::Error::other(
                "region alignment must be a power of two up to 4096",
            ));
        }
        let block = with_state(|st| st.allocate(len.max(1), align, kind))?;
        let ptr = block.seg.map.as_ptr().wrapping_add(block.offset);
        Ok(Region {
            block: Arc::new(block),
            ptr,
            len,
        })
    }

    /// The kind the region was created with ([`new_kind`](Region::new_kind)), read from the
    /// heap's header in shared memory (so a received handle cannot claim another).
    pub fn kind(&self) -> u8 {
        let g = self
            .block
            .seg
            .header(self.block.header)
            .generation
            .load(SeqCst);
        ((g & KIND_MASK) >> KIND_SHIFT) as u8
    }

    /// An identity of the object, equal in every process that holds a handle to it (its
    /// segment's random id and its offset), to record which object another one belongs to.
    pub fn identity(&self) -> u128 {
        u128::from(self.block.seg.id) << 64 | self.block.offset as u128
    }

    /// The first byte. Valid for [`len`](Region::len) bytes as long as this handle (or a clone)
    /// lives; other processes may read and write the same bytes at any time.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        // In bounds: `offset + len` lies in the segment (checked on allocation and
        // deserialisation); computed once at construction.
        self.ptr
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
        a.block.seg.id == b.block.seg.id && a.block.offset == b.block.offset
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("segment", &format_args!("{:016x}", self.block.seg.id))
            .field("offset", &self.block.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// The wire form of a [`Region`]: its segment's fd (through the fd table), the segment's id,
/// length and kind, the offset and length of the region, and the object's generation. An
/// encoded region holds a reference to the object, which the decoder takes over.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "reduction::fd")]
    fd: OwnedFd,
    id: u64,
    seg_len: u64,
    large: bool,
    offset: u64,
    len: u64,
    generation: u64,
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct WireRef<'a> {
            #[serde(serialize_with = "ser_fd")]
            fd: &'a OwnedFd,
            id: u64,
            seg_len: u64,
            large: bool,
            offset: u64,
            len: u64,
            #[serde(serialize_with = "ser_gen")]
            generation: &'a Header,
        }
        fn ser_fd<S: Serializer>(fd: &&OwnedFd, s: S) -> Result<S::Ok, S::Error> {
            reduction::serialize_fd(fd.as_fd(), s)
        }
        // Last, so that the reference is taken only once everything before it was encoded
        // (a failure after it leaks the object: it is never reused, never used after reuse).
        fn ser_gen<S: Serializer>(h: &&Header, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::Error as _;
            h.ticket().map_err(S::Error::custom)?;
            h.generation.load(SeqCst).serialize(s)
        }
        let seg = &self.block.seg;
        WireRef {
            fd: &seg.fd,
            id: seg.id,
            seg_len: seg.map.len() as u64,
            large: seg.large,
            offset: self.block.offset as u64,
            len: self.len as u64,
            generation: seg.header(self.block.header),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(deserializer)?;
        Region::receive(w).map_err(D::Error::custom)
    }
}

impl Region {
    /// Takes over the reference an encoded region carries.
    fn receive(w: Wire) -> Result<Region, String> {
        let bad = || "shared heap handle out of its segment".to_string();
        let seg_len = usize::try_from(w.seg_len).map_err(|_| bad())?;
        let offset = usize::try_from(w.offset).map_err(|_| bad())?;
        let len = usize::try_from(w.len).map_err(|_| bad())?;
        let class = w.generation >> 56;
        // The block's capacity, from the layout of its segment and its size class.
        let cap = if w.large {
            if class != LARGE_CLASS || offset != LARGE_DATA || seg_len <= LARGE_DATA {
                return Err(bad());
            }
            seg_len - LARGE_DATA
        } else {
            if seg_len != ARENA_SEG || offset < TABLE || (offset - TABLE) % ALIGN != 0 {
                return Err(bad());
            }
            class_size(class as u8).ok_or_else(bad)?
        };
        if len > cap || offset.checked_add(cap).is_none_or(|end| end > seg_len) {
            return Err(bad());
        }
        let seg = {
            let mut segments = SEGMENTS.lock();
            match find(&segments, w.id) {
                Some(seg) if seg.map.len() == seg_len && seg.large == w.large => seg,
                _ => {
                    let seg = Segment::receive(w.id, w.fd, seg_len, w.large)?;
                    remember(&mut segments, w.id, &seg);
                    seg
                }
            }
        };
        let header = seg.header_off(offset);
        seg.header(header)
            .redeem(w.generation)
            .map_err(|e| match e {
                Redeem::Expired => {
                    "shared heap object freed before its handle was received".to_string()
                }
                Redeem::Overflow => "too many references to one shared heap object".to_string(),
            })?;
        let slot = with_state(|st| st.register(&seg, header));
        let block = Block {
            seg,
            offset,
            header,
            slot,
        };
        let ptr = block.seg.map.as_ptr().wrapping_add(block.offset);
        Ok(Region {
            block: Arc::new(block),
            ptr,
            len,
        })
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

    /// The object's identity, the same in every process ([`Region::identity`]).
    pub fn identity(&self) -> u128 {
        self.region.identity()
    }
}

impl<T: ShmSafe> Deref for Shared<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the region holds `size_of::<T>()` bytes inside the mapping, aligned for `T`
        // (checked on allocation and on deserialisation), and lives as long as `self` (the
        // segment is sealed against shrinking, so the bytes stay backed); its block is not
        // reused while this handle exists. `T: ShmSafe` is valid for every bit pattern and only
        // mutated through atomics, so a shared reference is sound even while other processes
        // write it.
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
        if region.kind() != 0
            || region.len != std::mem::size_of::<T>()
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

/// The first region kind reserved for [`SharedSlice`]s: kinds `ATOMIC_KINDS..=255` name
/// regions whose bytes are only ever accessed as [`ShmSafe`] values (atomics), so a
/// `SharedSlice` may be decoded from them; kinds below it (and 0, [`Shared`]'s) may hold bytes
/// that a layer reads and writes without atomics under its own protocol, and are refused.
pub const ATOMIC_KINDS: u8 = 0x80;

/// A handle on a slice of `T`s in the shared heap, of a kind the allocating layer chooses;
/// derefs to `&[T]`.
///
/// For shared structures whose size is chosen at run time (a queue's ring of words). Like
/// [`Shared`] it clones within a process, travels to children through serde, and is freed
/// when no process holds a handle. Its kind (at least [`ATOMIC_KINDS`]) lives in the heap's
/// header: a receiver checks it with [`kind`](SharedSlice::kind) so that one layer's slices
/// are never taken for another's.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use multiproc_core::heap::{ATOMIC_KINDS, SharedSlice};
///
/// let words: SharedSlice<AtomicU64> = SharedSlice::new(512, ATOMIC_KINDS + 5).unwrap();
/// assert_eq!(words.len(), 512);
/// words[3].store(9, Ordering::Relaxed);
/// assert_eq!(words.clone()[3].load(Ordering::Relaxed), 9);
/// assert_eq!(words.kind(), ATOMIC_KINDS + 5);
/// ```
pub struct SharedSlice<T: ShmSafe> {
    region: Region,
    _t: PhantomData<T>,
}

impl<T: ShmSafe> SharedSlice<T> {
    /// `len` zeroed `T`s of `kind` (at least [`ATOMIC_KINDS`]), aligned for `T` and to a cache
    /// line.
    pub fn new(len: usize, kind: u8) -> std::io::Result<SharedSlice<T>> {
        if kind < ATOMIC_KINDS {
            return Err(std::io::Error::other(
                "a SharedSlice's kind must be at least ATOMIC_KINDS",
            ));
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| std::io::Error::other("shared slice too large"))?;
        let region = Region::new_kind(bytes, std::mem::align_of::<T>().max(ALIGN), kind)?;
        Ok(SharedSlice {
            region,
            _t: PhantomData,
        })
    }

    /// The kind the slice was created with, read from the heap's header.
    pub fn kind(&self) -> u8 {
        self.region.kind()
    }

    /// The slice's identity, the same in every process ([`Region::identity`]).
    pub fn identity(&self) -> u128 {
        self.region.identity()
    }

    /// Whether two handles name the same slice.
    pub fn ptr_eq(a: &SharedSlice<T>, b: &SharedSlice<T>) -> bool {
        Region::ptr_eq(&a.region, &b.region)
    }

    /// Maps the slice's pages into this process now, writable, without changing a byte
    /// (`MADV_POPULATE_WRITE`, Linux 5.14+; older kernels refuse it and nothing happens). Each
    /// process otherwise takes a page fault the first time it touches each page: a ring that
    /// a process streams through pays those faults over its first laps, spread over the
    /// first uses, instead of once up front.
    pub fn prefault(&self) {
        let page = rustix::param::page_size();
        let start = self.region.as_ptr() as usize;
        let first = start & !(page - 1);
        let end = (start + self.region.len()).next_multiple_of(page);
        // SAFETY: [first, end) is whole pages of the one segment mapping that holds the region
        // (mappings start on a page and span whole pages, and the region lies inside its
        // segment); MADV_POPULATE_WRITE faults those pages in as a write would, without writing
        // to them, so no byte that any process reads changes.
        let _ = unsafe {
            rustix::mm::madvise(
                first as *mut std::ffi::c_void,
                end - first,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }
}

impl<T: ShmSafe> Deref for SharedSlice<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        let n = self.region.len() / std::mem::size_of::<T>().max(1);
        // SAFETY: the region holds `region.len()` bytes inside the mapping (so `n` whole `T`s),
        // aligned for `T` (checked on allocation and on deserialisation), alive and backed as
        // long as `self` (sealed segment, block not reused while a handle exists). Its kind is
        // an atomic-only kind, so no layer accesses these bytes other than as `T`, and
        // `T: ShmSafe` is valid for every bit pattern and mutated only through atomics: shared
        // references are sound while other processes write.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().cast::<T>(), n) }
    }
}

impl<T: ShmSafe> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice {
            region: self.region.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: ShmSafe> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedSlice").field(&self.region).finish()
    }
}

impl<T: ShmSafe> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(serializer)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let region = Region::deserialize(deserializer)?;
        let size = std::mem::size_of::<T>().max(1);
        if region.kind() < ATOMIC_KINDS
            || region.len % size != 0
            || (region.as_ptr() as usize) % std::mem::align_of::<T>() != 0
        {
            return Err(D::Error::custom("shared heap handle of another type"));
        }
        Ok(SharedSlice {
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
        assert!(big.region.block.seg.large);
    }

    #[test]
    fn size_classes_round_up_and_invert() {
        let mut last = 0;
        for len in 1..LARGE {
            let (class, size) = class_of(len);
            assert!(size >= len && size % ALIGN == 0, "{len}: {size}");
            assert_eq!(class_size(class), Some(size), "{len}");
            assert!(
                size <= len.next_multiple_of(ALIGN) * 5 / 4 + ALIGN,
                "{len}: {size}"
            );
            assert!(class >= last);
            last = class;
        }
        assert!(class_size(last).unwrap() <= LARGE);
    }

    #[test]
    fn arenas_are_sealed_against_resizing() {
        let small: Shared<AtomicU64> = Shared::new().unwrap();
        let big = Region::new(LARGE + 4096 * 3, 8).unwrap();
        for fd in [&small.region.block.seg.fd, &big.block.seg.fd] {
            let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
            assert!(seals.contains(
                rustix::fs::SealFlags::SHRINK
                    | rustix::fs::SealFlags::GROW
                    | rustix::fs::SealFlags::SEAL
            ));
            assert_eq!(rustix::fs::ftruncate(fd, 0), Err(rustix::io::Errno::PERM));
            assert_eq!(
                rustix::fs::ftruncate(fd, 1 << 30),
                Err(rustix::io::Errno::PERM)
            );
        }
    }

    /// A wire form naming `fd` as a fresh arena segment.
    fn wire_for(fd: OwnedFd) -> Wire {
        let mut id = [0u8; 8];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty()).unwrap();
        Wire {
            fd,
            id: u64::from_le_bytes(id),
            seg_len: ARENA_SEG as u64,
            large: false,
            offset: TABLE as u64,
            len: 8,
            generation: 0,
        }
    }

    #[test]
    fn a_received_segment_without_the_shrink_seal_is_refused() {
        let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, ARENA_SEG as u64).unwrap();
        let err = Region::receive(wire_for(fd)).unwrap_err();
        assert!(err.contains("sealed"), "{err}");
        // The same through the decoder: a typed decode error (postcard drops the message).
        let fd = rustix::fs::memfd_create(
            "sealable",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, ARENA_SEG as u64).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::GROW).unwrap();
        let wire = wire_for(fd);
        let (bytes, fds) = reduction::encode(&wire).unwrap();
        let err = reduction::decode::<Region>(&bytes, fds).unwrap_err();
        assert!(
            matches!(&err, reduction::ReductionError::Decode(_)),
            "{err}"
        );
        // Sealed, but shorter than announced.
        let fd = rustix::fs::memfd_create(
            "short",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
        let err = Region::receive(wire_for(fd)).unwrap_err();
        assert!(err.contains("smaller"), "{err}");
    }

    #[test]
    fn freed_blocks_are_reused_zeroed() {
        // A size class no other test uses, so parallel tests do not take the block.
        type T = [AtomicU64; 52];
        let a: Shared<T> = Shared::new().unwrap();
        a[51].store(5, Ordering::SeqCst);
        let addr = a.region.as_ptr();
        drop(a);
        let b: Shared<T> = Shared::new().unwrap();
        assert_eq!(b.region.as_ptr(), addr);
        assert_eq!(b[51].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn large_segments_are_reused_zeroed() {
        let len = (3 << 20) + 4096 * 5;
        let a = Region::new(len, 8).unwrap();
        let id = a.block.seg.id;
        // SAFETY: the region is ours alone and `len` bytes long.
        unsafe { a.as_ptr().add(len - 1).write(9) };
        drop(a);
        let b = Region::new(len - 4096, 8).unwrap();
        assert_eq!(b.block.seg.id, id);
        // SAFETY: as above.
        assert_eq!(unsafe { b.as_ptr().add(len - 4097).read() }, 0);
    }

    #[test]
    fn an_encoded_handle_keeps_its_object_and_expires_after_use() {
        type T = [AtomicU64; 44];
        let a: Shared<T> = Shared::new().unwrap();
        a[0].store(3, Ordering::SeqCst);
        let (bytes, fds) = reduction::encode(&a).unwrap();
        let spare: Vec<OwnedFd> = fds.iter().map(|f| f.try_clone().unwrap()).collect();
        drop(a);
        // The encoded handle holds the object: new objects do not take its block.
        let others: Vec<Shared<T>> = (0..4).map(|_| Shared::new().unwrap()).collect();
        let b: Shared<T> = reduction::decode(&bytes, fds).unwrap();
        assert_eq!(b[0].load(Ordering::SeqCst), 3);
        assert!(others.iter().all(|o| !Shared::ptr_eq(o, &b)));
        drop(b);
        // Now the block is free (and reused); the same bytes decoded again are refused.
        let c: Shared<T> = Shared::new().unwrap();
        let err = reduction::decode::<Shared<T>>(&bytes, spare).unwrap_err();
        assert!(matches!(err, reduction::ReductionError::Decode(_)), "{err}");
        assert_eq!(c[0].load(Ordering::SeqCst), 0);
    }
}
