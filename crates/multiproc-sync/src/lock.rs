//! [`Lock`] and [`RLock`]: futex words in the shared heap holding the owner's pid, so that a
//! process dying with the lock held does not deadlock the others.
//!
//! Word layout: bits 0..31 the owning process's pid (0: unlocked), bit 31 "waiters may sleep".
//! Beside it the owner records its token (its pid and a 32-bit token, see `futex::own_token`:
//! the low bits of its pidfs inode, or its start time before Linux 6.9; written token first,
//! pid last), and a release clears the recorded pid before it frees the word. A waiter sleeps
//! in slices, starting at [`SLICE`] and doubling up to [`MAX_SLICE`] while the same owner
//! lives; after each slice it checks the owner through a pidfd (gone, exited, or a different
//! process that reused the pid) and takes the lock over if the owner died. The uncontended
//! path is one compare-and-swap and two stores, and a release one store and one swap.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use serde::{Deserialize, Serialize};

use crate::error::{Error, LockResult, OwnerDied, TryAcquireError, TryLockResult};
use crate::futex::{self, Owner, Woke};

const WAITERS: u32 = 1 << 31;
const PID: u32 = !WAITERS;
/// How long a waiter first sleeps before it checks whether the owner still lives.
pub const SLICE: Duration = Duration::from_millis(20);
/// The longest sleep between two checks: a waiter doubles its slice after each check that
/// finds the same owner alive, up to this, so that many idle waiters behind a lock held for
/// long cost a few system calls per second each. A dead owner is noticed within about this
/// long (within about [`SLICE`] when it dies soon after the waiter started waiting).
pub const MAX_SLICE: Duration = Duration::from_millis(320);

/// `[word, owner token, owner pid, RLock owner thread, RLock depth, ..]`.
type State = Shared<[AtomicU32; 8]>;
const WORD: usize = 0;
const TOKEN: usize = 1;
const TOKEN_PID: usize = 2;
const OWNER_TID: usize = 3;
const DEPTH: usize = 4;

/// How an acquire ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is now held by the caller.
    Yes,
    /// The lock is now held by the caller, taken over from the process (pid) that died
    /// holding it.
    OwnerDied(u32),
    /// The deadline passed (or, for a non-blocking acquire, the lock was held).
    TimedOut,
}

fn allocate() -> Result<State, Error> {
    Shared::new().map_err(Error::Heap)
}

/// Records the caller as owner: token first, pid last, so a reader that sees the pid twice
/// around the token read has a consistent pair.
#[inline]
fn stamp(s: &[AtomicU32; 8], me: u32) {
    s[TOKEN].store(futex::own_token_for(me), Relaxed);
    s[TOKEN_PID].store(me, Release);
}

/// The recorded `(pid, token)`; `(u32::MAX, 0)` when a stamp was being written meanwhile.
fn recorded(s: &[AtomicU32; 8]) -> (u32, u32) {
    let p1 = s[TOKEN_PID].load(Acquire);
    let token = s[TOKEN].load(Acquire);
    let p2 = s[TOKEN_PID].load(Acquire);
    if p1 == p2 { (p1, token) } else { (u32::MAX, 0) }
}

/// Whether the calling process (`me`), which the word names as owner, is the one that
/// recorded itself (and not a dead process that had its pid): the recorded token is its own.
/// (While the word names `me`, only `me` writes the record, so its token alone tells.)
#[inline]
fn recorded_by_caller(s: &[AtomicU32; 8], me: u32) -> bool {
    s[TOKEN].load(Relaxed) == futex::own_token_for(me)
}

/// Whether the owner `owner` of the word, whose record was `rec`, has died.
fn judge(owner: u32, rec: (u32, u32), me: u32) -> Owner {
    if owner == me {
        // Our own pid: either this process holds it (a `Lock` acquired twice, another thread)
        // or a dead process that had our pid before us does (only one live process has a pid).
        return if rec.0 == me && rec.1 != futex::own_token_for(me) {
            Owner::Reused
        } else {
            Owner::Alive
        };
    }
    futex::owner(owner, if rec.0 == owner { rec.1 } else { 0 })
}

/// Takes the lock over from a dead owner: `held` is the exact word value (owner and waiters
/// bit) that was judged, `rec` the record read before judging. Whether it is now ours.
///
/// Two waiters that both judged the owner dead race on one compare-and-swap of the word from
/// `held`: the loser sees the winner's pid and goes on waiting. The exact value can come
/// back, though, when the dead owner's pid is reused: a process with that pid took the lock
/// after the winner released it, or is itself taking it over (its swap from its own pid to
/// its own pid changes nothing). So the word alone does not decide: the taker then swaps the
/// recorded token from the judged one to its own, which only one taker can do (a dead
/// process's token is never written again, every acquisition writes its own token, and every
/// release clears the recorded pid). A taker that loses this second swap, or finds the
/// recorded pid changed, undoes its swap of the word; if the word changed under it, the live
/// holder it displaced has released the lock meanwhile. Either way it goes on waiting, and
/// nobody is ever admitted twice. What is left needs a reused pid and a take-over in the same
/// few instructions: a live holder that looks at the word in between sees another pid (an
/// `RLock` re-entry there would wait for itself); and an owner that died between taking the
/// word and writing its record, whose lock a third process then released (a release leaves
/// the token), could be taken twice by a later holder with its pid and a waiter.
fn take_over(s: &[AtomicU32; 8], held: u32, rec: (u32, u32), me: u32) -> bool {
    if s[WORD]
        .compare_exchange(held, me | WAITERS, Acquire, Relaxed)
        .is_err()
    {
        return false;
    }
    let (pid, token) = rec;
    if pid != u32::MAX
        && s[TOKEN]
            .compare_exchange(token, futex::own_token_for(me), AcqRel, Acquire)
            .is_ok()
    {
        if s[TOKEN_PID].load(Acquire) == pid {
            s[TOKEN_PID].store(me, Release);
            return true;
        }
        // The recorded pid was cleared or rewritten: released (and maybe taken) meanwhile,
        // not ours. Put the judged token back unless a new holder already wrote its own.
        let _ = s[TOKEN].compare_exchange(futex::own_token_for(me), token, AcqRel, Acquire);
    }
    let _ = s[WORD].compare_exchange(me | WAITERS, held, Release, Relaxed);
    false
}

/// Acquires the word for this process, waiting until `deadline` (`None`: forever).
fn lock_word(s: &[AtomicU32; 8], deadline: Option<Instant>) -> Acquired {
    let me = multiproc_core::current_pid();
    if s[WORD].compare_exchange(0, me, Acquire, Relaxed).is_ok() {
        stamp(s, me);
        return Acquired::Yes;
    }
    // A reused pid is believed only when seen twice in a row (a token being rewritten by a
    // new owner can look inconsistent once). `alive`: checks that found this owner alive,
    // for the back-off of the slice.
    let (mut reused, mut alive, mut last_owner) = (0u32, 0u32, 0u32);
    loop {
        let v = s[WORD].load(Relaxed);
        let owner = v & PID;
        if owner == 0 {
            if s[WORD]
                .compare_exchange(v, me | WAITERS, Acquire, Relaxed)
                .is_ok()
            {
                stamp(s, me);
                return Acquired::Yes;
            }
            continue;
        }
        if owner != last_owner {
            (reused, alive, last_owner) = (0, 0, owner);
        }
        if v & WAITERS == 0
            && s[WORD]
                .compare_exchange(v, v | WAITERS, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        let left = futex::left(deadline);
        let expired = left == Some(Duration::ZERO);
        if !expired {
            let slice = SLICE.saturating_mul(1 << alive.min(4)).min(MAX_SLICE);
            let nap = left.map_or(slice, |l| l.min(slice));
            if let Woke::Retry = futex::wait(&s[WORD], v | WAITERS, Some(nap)) {
                continue;
            }
        }
        // A slice passed without a wake-up (or the deadline did): does the owner still live?
        let rec = recorded(s);
        let verdict = judge(owner, rec, me);
        reused = if verdict == Owner::Reused {
            reused + 1
        } else {
            0
        };
        if verdict == Owner::Alive {
            alive = alive.saturating_add(1);
        }
        if (verdict == Owner::Dead || reused >= 2) && take_over(s, v | WAITERS, rec, me) {
            return Acquired::OwnerDied(owner);
        }
        if expired {
            return Acquired::TimedOut;
        }
    }
}

/// Releases the word whoever holds it; an error if nobody does.
#[inline]
fn unlock_word(s: &[AtomicU32; 8]) -> Result<(), Error> {
    if s[WORD].load(Relaxed) & PID == 0 {
        return Err(Error::NotHeld);
    }
    // The record goes first: a record names a holder only while it holds (see `take_over`).
    s[TOKEN_PID].store(0, Relaxed);
    let v = s[WORD].swap(0, Release);
    if v & PID == 0 {
        return Err(Error::NotHeld);
    }
    if v & WAITERS != 0 {
        futex::wake(&s[WORD], 1);
    }
    Ok(())
}

/// The test hooks `Lock` and `RLock` share (their state has the same layout).
macro_rules! test_hooks {
    () => {
        /// Whether the word's "waiters may sleep" bit is set: some process or thread found the
        /// lock held and is waiting (or gave up after a timed attempt). For tests that must know
        /// a waiter is blocked.
        #[doc(hidden)]
        pub fn waiters_flagged(&self) -> bool {
            self.state[WORD].load(Relaxed) & WAITERS != 0
        }

        /// The token the holder recorded (0: none); see [`testing`](crate::testing).
        #[doc(hidden)]
        pub fn owner_token(&self) -> u32 {
            self.state[TOKEN].load(Acquire)
        }

        /// Overwrites the holder's recorded token: simulates a holder that died and whose pid
        /// another process got (the live process at the pid no longer matches the record).
        #[doc(hidden)]
        pub fn overwrite_owner_token(&self, token: u32) {
            self.state[TOKEN].store(token, Release);
        }
    };
}

/// A lock shared by processes (Python's `multiprocessing.Lock`).
///
/// Clone it or pass it to a child process (it implements serde): every copy is the same lock.
/// As in Python, a `Lock` is not owned by a thread: [`release`](Lock::release) may be called by
/// any thread or process. Beyond Python, if a process dies while holding it, the next acquirer
/// takes it over and is told so ([`OwnerDied`]) within about [`SLICE`] to [`MAX_SLICE`]
/// (see there). A process that got the dead owner's pid is not taken for the owner, on
/// kernels without pidfs inodes too (the owner's start time tells them apart).
///
/// ```
/// use multiproc_sync::{Lock, TryAcquireError};
///
/// let lock = Lock::new()?;
/// {
///     let _guard = lock.acquire().unwrap();
///     assert!(matches!(lock.try_acquire(), Err(TryAcquireError::WouldBlock)));
/// }
/// assert!(lock.try_acquire().is_ok());
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Lock {
    state: State,
}

impl Lock {
    /// A new, unlocked lock in the shared heap.
    pub fn new() -> Result<Lock, Error> {
        Ok(Lock { state: allocate()? })
    }

    /// The lock's identity, the same in every process that holds it (its object in the shared
    /// heap): what a `Value` records to check, when it is received, that it comes with the
    /// lock it was made with.
    pub fn identity(&self) -> u128 {
        self.state.identity()
    }

    fn guard(&self, got: Acquired) -> TryLockResult<LockGuard<'_>> {
        match got {
            Acquired::Yes => Ok(LockGuard { lock: self }),
            Acquired::OwnerDied(owner) => Err(TryAcquireError::OwnerDied(OwnerDied {
                guard: LockGuard { lock: self },
                owner,
            })),
            Acquired::TimedOut => Err(TryAcquireError::WouldBlock),
        }
    }

    /// Waits for the lock. `Err` carries the guard when the previous owner died holding it.
    pub fn acquire(&self) -> LockResult<LockGuard<'_>> {
        match self.guard(lock_word(&self.state, None)) {
            Ok(g) => Ok(g),
            Err(TryAcquireError::OwnerDied(e)) => Err(e),
            Err(TryAcquireError::WouldBlock) => unreachable!("no deadline"),
        }
    }

    /// Takes the lock if it is free (Python's `acquire(block=False)`); a lock held by a dead
    /// process is taken over.
    pub fn try_acquire(&self) -> TryLockResult<LockGuard<'_>> {
        self.guard(lock_word(&self.state, Some(Instant::now())))
    }

    /// Waits at most `timeout` for the lock (Python's `acquire(timeout=t)`).
    pub fn acquire_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        self.guard(lock_word(&self.state, futex::deadline(timeout)))
    }

    /// Acquires without a guard (Python's `acquire()`), waiting at most `timeout` (`None`:
    /// forever); pair it with [`release`](Lock::release), from any thread or process.
    pub fn acquire_raw(&self, timeout: Option<Duration>) -> Acquired {
        lock_word(&self.state, timeout.and_then(futex::deadline))
    }

    /// Acquires without a guard if the lock is free now (a lock held by a dead process is
    /// taken over), without reading the clock when it is free: the fast path of a queue's
    /// `put`. Pair it with [`release`](Lock::release).
    pub fn try_acquire_raw(&self) -> Acquired {
        static PAST: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        lock_word(&self.state, Some(*PAST.get_or_init(Instant::now)))
    }

    /// Releases the lock, whoever holds it (Python's `release()`); an error if it is not held.
    pub fn release(&self) -> Result<(), Error> {
        unlock_word(&self.state)
    }

    /// Whether the calling process holds the lock (a `Lock` has no owning thread).
    pub(crate) fn is_mine(&self) -> bool {
        let me = multiproc_core::current_pid();
        self.state[WORD].load(Relaxed) & PID == me && recorded_by_caller(&self.state, me)
    }

    /// Whether some process holds the lock right now (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.state[WORD].load(Relaxed) & PID != 0
    }

    test_hooks!();
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = self.state[WORD].load(Relaxed) & PID;
        f.debug_struct("Lock")
            .field("owner", &(owner != 0).then_some(owner))
            .finish()
    }
}

/// Holds a [`Lock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Keeps the lock held without a guard: release it later with [`Lock::release`] (from any
    /// thread or process).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = unlock_word(&self.lock.state);
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

thread_local! {
    /// (pid, tid) of the calling thread, refreshed when the pid changed (a fork child).
    static IDS: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

#[inline]
fn thread_id() -> u32 {
    let pid = multiproc_core::current_pid();
    IDS.with(|ids| {
        let (cached_pid, tid) = ids.get();
        if cached_pid == pid {
            return tid;
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        ids.set((pid, tid));
        tid
    })
}

/// A re-entrant lock shared by processes (Python's `multiprocessing.RLock`): the owning thread
/// may acquire it again, and must release it as many times; only the owner may release it.
///
/// A process dying while one of its threads holds it is detected like for [`Lock`].
///
/// ```
/// use multiproc_sync::RLock;
///
/// let lock = RLock::new()?;
/// let a = lock.acquire().unwrap();
/// let b = lock.acquire().unwrap(); // the same thread: re-entry
/// assert_eq!(lock.depth(), 2);
/// drop(b);
/// drop(a);
/// assert!(matches!(lock.release(), Err(multiproc_sync::Error::NotOwner))); // not held any more
/// # Ok::<(), multiproc_sync::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct RLock {
    state: State,
}

impl RLock {
    /// A new, unlocked re-entrant lock in the shared heap.
    pub fn new() -> Result<RLock, Error> {
        Ok(RLock { state: allocate()? })
    }

    /// The lock's identity, the same in every process that holds it (see [`Lock::identity`]).
    pub fn identity(&self) -> u128 {
        self.state.identity()
    }

    #[inline]
    fn owned_by_caller(&self) -> bool {
        // The record too: a dead process with our pid (and its main thread with our main
        // thread's id) may be the holder.
        let me = multiproc_core::current_pid();
        self.state[WORD].load(Relaxed) & PID == me
            && self.state[OWNER_TID].load(Relaxed) == thread_id()
            && recorded_by_caller(&self.state, me)
    }

    fn lock(&self, deadline: Option<Instant>) -> Acquired {
        let s = &*self.state;
        if self.owned_by_caller() {
            s[DEPTH].store(s[DEPTH].load(Relaxed) + 1, Relaxed);
            return Acquired::Yes;
        }
        let got = lock_word(s, deadline);
        if got != Acquired::TimedOut {
            s[OWNER_TID].store(thread_id(), Relaxed);
            s[DEPTH].store(1, Relaxed);
        }
        got
    }

    fn guard(&self, got: Acquired) -> TryLockResult<RLockGuard<'_>> {
        let guard = RLockGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        };
        match got {
            Acquired::Yes => Ok(guard),
            Acquired::OwnerDied(owner) => {
                Err(TryAcquireError::OwnerDied(OwnerDied { guard, owner }))
            }
            Acquired::TimedOut => {
                std::mem::forget(guard);
                Err(TryAcquireError::WouldBlock)
            }
        }
    }

    /// Waits for the lock (or re-enters it). `Err` carries the guard when the previous owner
    /// process died holding it.
    pub fn acquire(&self) -> LockResult<RLockGuard<'_>> {
        match self.guard(self.lock(None)) {
            Ok(g) => Ok(g),
            Err(TryAcquireError::OwnerDied(e)) => Err(e),
            Err(TryAcquireError::WouldBlock) => unreachable!("no deadline"),
        }
    }

    /// Takes or re-enters the lock if possible without waiting.
    pub fn try_acquire(&self) -> TryLockResult<RLockGuard<'_>> {
        self.guard(self.lock(Some(Instant::now())))
    }

    /// Waits at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        self.guard(self.lock(futex::deadline(timeout)))
    }

    /// Acquires without a guard, waiting at most `timeout` (`None`: forever); pair it with
    /// [`release`](RLock::release) on the same thread.
    pub fn acquire_raw(&self, timeout: Option<Duration>) -> Acquired {
        self.lock(timeout.and_then(futex::deadline))
    }

    /// Releases one level; an error ([`Error::NotOwner`]) unless the calling thread owns it.
    pub fn release(&self) -> Result<(), Error> {
        if !self.owned_by_caller() {
            return Err(Error::NotOwner);
        }
        let s = &*self.state;
        let depth = s[DEPTH].load(Relaxed).saturating_sub(1);
        s[DEPTH].store(depth, Relaxed);
        if depth == 0 {
            s[OWNER_TID].store(0, Relaxed);
            unlock_word(s)?;
        }
        Ok(())
    }

    /// Releases one level held through a guard: the guard proves that this thread acquired
    /// it, so only the word's owner is checked (a lock taken over meanwhile, because this
    /// process was judged dead, is not released again).
    #[inline]
    fn release_held(&self) {
        let s = &*self.state;
        if s[WORD].load(Relaxed) & PID != multiproc_core::current_pid() {
            return;
        }
        let depth = s[DEPTH].load(Relaxed).saturating_sub(1);
        s[DEPTH].store(depth, Relaxed);
        if depth == 0 {
            s[OWNER_TID].store(0, Relaxed);
            let _ = unlock_word(s);
        }
    }

    /// Releases every level the calling thread holds (for `Condition::wait`); the depth.
    pub(crate) fn release_all(&self) -> u32 {
        let s = &*self.state;
        let depth = s[DEPTH].load(Relaxed);
        s[DEPTH].store(0, Relaxed);
        s[OWNER_TID].store(0, Relaxed);
        let _ = unlock_word(s);
        depth
    }

    /// Takes the lock back at `depth` levels (after `release_all`).
    pub(crate) fn reacquire(&self, depth: u32) {
        let s = &*self.state;
        lock_word(s, None);
        s[OWNER_TID].store(thread_id(), Relaxed);
        s[DEPTH].store(depth.max(1), Relaxed);
    }

    /// Whether the calling thread owns the lock.
    pub(crate) fn is_mine(&self) -> bool {
        self.owned_by_caller()
    }

    test_hooks!();

    /// How many times the owner holds it (0: free; a snapshot when another thread owns it).
    pub fn depth(&self) -> u32 {
        if self.state[WORD].load(Relaxed) & PID == 0 {
            0
        } else {
            self.state[DEPTH].load(Relaxed)
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = self.state[WORD].load(Relaxed) & PID;
        f.debug_struct("RLock")
            .field("owner", &(owner != 0).then_some(owner))
            .field("depth", &self.depth())
            .finish()
    }
}

/// Holds one level of an [`RLock`]; releases it when dropped. Not `Send`: only the owning
/// thread may release.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RLockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.release_held();
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}
