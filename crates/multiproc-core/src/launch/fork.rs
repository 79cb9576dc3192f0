//! The fork start method's launch: the thread check, stdio flush and `fork()` under the fork
//! lock. What the child then runs is the caller's business (`runtime::bootstrap::run_forked`).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::process::Pid;

use crate::error::{Error, Result};
use crate::{atfork, sys};

/// Threads of this process. procfs gives `/proc/self/task` a link count of 2 plus the number
/// of threads: one `stat`, no allocation (listing the directory cost ~10x more per start).
pub(crate) fn thread_count() -> usize {
    match rustix::fs::stat("/proc/self/task") {
        Ok(st) if st.st_nlink >= 3 => st.st_nlink as usize - 2,
        _ => std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count),
    }
}

/// Threads the library itself runs that are fork-safe (they hold no lock a child could need
/// outside core's locked sections, which the fork lock excludes); not counted by the check.
static LIBRARY_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Counts a fork-safe library thread in (`+1`) or out (`-1`).
pub(crate) fn library_thread(delta: isize) {
    if delta >= 0 {
        LIBRARY_THREADS.fetch_add(delta as usize, Ordering::Relaxed);
    } else {
        LIBRARY_THREADS.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// In a fork child: the library's threads did not survive the fork.
pub(crate) fn forget_library_threads() {
    LIBRARY_THREADS.store(0, Ordering::Relaxed);
}

/// Forks: `Ok(None)` in the child, `Ok(Some(pid))` in the parent. Refused with
/// [`Error::ForkWithThreads`] when other threads than the library's own run (unless the program
/// opted in); stdout is flushed first; core's locks are free at the fork.
pub(crate) fn fork() -> Result<Option<Pid>> {
    if !sys::fork_with_threads_allowed() {
        let others = || thread_count().saturating_sub(LIBRARY_THREADS.load(Ordering::Relaxed));
        let mut threads = others();
        // A thread that was just joined can still be counted for a moment: the kernel wakes
        // its joiner (clearing its tid) before the thread leaves the thread group. A pool
        // dropped right before the next one is created joins two threads this way. Give such
        // threads a moment to go before refusing.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while threads > 1 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
            threads = others();
        }
        if threads > 1 {
            return Err(Error::ForkWithThreads { threads });
        }
    }
    atfork::run_before_fork_hooks();
    // std's stderr is unbuffered (flushing it would only write its lock's page, which the
    // fork then makes a copy-on-write fault).
    let _ = std::io::stdout().flush();
    let exclusive = atfork::exclusive();
    let forked = sys::fork().map_err(Error::os("fork"));
    // In the child too: the copy of the guard unlocks the child's copy of the lock.
    drop(exclusive);
    forked
}
