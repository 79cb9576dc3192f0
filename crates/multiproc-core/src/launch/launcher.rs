//! The launcher thread: daemon children started from a thread other than the main thread are
//! created from here, because the kernel's parent-death signal (`PR_SET_PDEATHSIG`) follows the
//! *thread* that created a child: a daemon forked or spawned by a short-lived thread (a pool's
//! helper replacing a worker) would be killed when that thread ends, not when its parent
//! process does. This thread lives as long as the process, so its children die with the
//! process. It is a fork-safe library thread: it does not make the fork method unusable.

use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};
use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Whether the calling thread is the process's main thread.
pub(crate) fn on_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// Runs `f` on the launcher thread and returns its result.
pub(crate) fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> std::io::Result<R> {
    let sender = {
        let _fork = crate::atfork::hold();
        let mut launcher = LAUNCHER.lock();
        match launcher.as_ref() {
            Some(s) => s.clone(),
            None => {
                let (tx, rx) = bounded::<Job>(0);
                spawn_fork_safe_thread("multiproc-launcher".into(), move || {
                    for job in rx {
                        job();
                    }
                })?;
                *launcher = Some(tx.clone());
                tx
            }
        }
    };
    let (reply, result) = bounded(1);
    sender
        .send(Box::new(move || {
            let _ = reply.send(f());
        }))
        .map_err(|_| std::io::Error::other("the launcher thread has ended"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("the launcher thread panicked"))
}

/// In a fork child: the launcher thread did not survive the fork.
pub(crate) fn forget_in_fork_child() {
    *LAUNCHER.lock() = None;
}

/// Starts a thread of the library itself that does not count against the fork start
/// method's thread check, for the threads a layer above core runs on behalf of the user (a
/// queue's feeder, a pool's result handler).
///
/// Python's pools and queues run such threads and still fork; multiproc's fork refuses a
/// parent with other threads unless they are of this kind. The contract, which makes a fork
/// while such a thread runs safe for the child: the thread holds no lock that a fork child
/// could need at the moment of a fork (it blocks only in system calls, futexes of the shared
/// heap, channels it alone uses, or core's own locked sections, which the fork lock
/// excludes), and it does not print while holding std's stdout lock. Breaking it cannot cause
/// undefined behaviour, but can leave a fork child blocked on a lock no thread will release.
pub fn spawn_fork_safe_thread<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            crate::launch::fork::library_thread(-1);
        }
    }
    crate::launch::fork::library_thread(1);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _counted = Counted;
            f()
        })
        .inspect_err(|_| crate::launch::fork::library_thread(-1))
}
