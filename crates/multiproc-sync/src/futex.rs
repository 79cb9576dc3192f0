//! Futex waits with deadlines, and the liveness of a lock's owner process.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// Outcome of one futex sleep.
pub(crate) enum Woke {
    /// Woken, or the word had already changed: look again.
    Retry,
    /// The sleep's time ran out.
    TimedOut,
}

/// Sleeps while `word == expected`, at most `nap` (forever with `None`). Shared (not
/// PRIVATE) futex: waiters and wakers are different processes.
pub(crate) fn wait(word: &AtomicU32, expected: u32, nap: Option<Duration>) -> Woke {
    let ts = nap.map(|d| {
        rustix::time::Timespec::try_from(d).unwrap_or(rustix::time::Timespec {
            tv_sec: i64::MAX / 2,
            tv_nsec: 0,
        })
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Err(rustix::io::Errno::TIMEDOUT) => Woke::TimedOut,
        _ => Woke::Retry,
    }
}

/// Wakes up to `n` waiters (clamped to 1..=i32::MAX: the kernel reads the count as a C int,
/// and 0 or u32::MAX would wake one).
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    if n == 0 {
        return;
    }
    let _ = futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32));
}

/// Time left before `deadline` (`None`: no deadline); `Some(ZERO)` once it passed.
pub(crate) fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// A deadline `timeout` from now (`None` if it cannot be represented: no deadline).
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The low 32 bits of the pidfs inode of the calling process (0 if unknown): with the pid, a
/// token that tells a live owner from an unrelated process that got its pid after it died.
pub(crate) fn own_inode() -> u32 {
    use std::sync::atomic::Ordering;
    static CACHE: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
    let me = multiproc_core::current_pid();
    if CACHE[0].load(Ordering::Acquire) == me {
        return CACHE[1].load(Ordering::Relaxed);
    }
    let ino = rustix::process::Pid::from_raw(me as i32)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok())
        .and_then(|fd| rustix::fs::fstat(&fd).ok())
        .map_or(0, |st| st.st_ino as u32);
    CACHE[1].store(ino, Ordering::Relaxed);
    CACHE[0].store(me, Ordering::Release);
    ino
}

/// What a liveness check of a lock owner found.
#[derive(PartialEq, Eq)]
pub(crate) enum Owner {
    Alive,
    Dead,
    /// The pid runs, but its pidfs inode differs from the one the owner recorded: reused.
    Reused,
}

/// Checks the process `pid` that holds a lock (`inode`: what it recorded, 0 if unknown).
/// Only called after a waiter slept a while: it costs a few system calls.
pub(crate) fn owner(pid: u32, inode: u32) -> Owner {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return Owner::Dead;
    };
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Owner::Dead,
        // EPERM and the like: we cannot tell; assume it lives.
        Err(_) => return Owner::Alive,
    };
    // An exited process that was not reaped yet (a zombie) polls readable.
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(0) > 0 {
        return Owner::Dead;
    }
    match rustix::fs::fstat(&fd) {
        Ok(st) if inode != 0 && st.st_ino as u32 != inode => Owner::Reused,
        _ => Owner::Alive,
    }
}
