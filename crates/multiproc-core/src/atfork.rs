//! After-fork hooks and the fork lock (Python's `util.register_after_fork`, std's env-lock
//! protocol).
//!
//! Linux has no close-on-fork: a fork child inherits every fd and every byte of its parent's
//! state, including what it must not keep (the resource tracker's pipe, a connection to the
//! parent's forkserver, a queue's feeder state, a pool's channels). Each layer registers a
//! hook with [`register_after_fork`]; every child that multiproc forks runs the hooks, in
//! registration order, before its target. Spawn and forkserver children start from a fresh
//! image and run them too (a hook must be harmless there; most find nothing to drop).
//!
//! The fork lock: every section of multiproc-core that holds one of its internal locks holds
//! [`hold`] (a shared, re-entrant read lock), and `fork()` is called under [`exclusive`]. So
//! even when a program forks with other threads running (after the `unsafe`
//! [`allow_fork_with_threads`](crate::allow_fork_with_threads) opt-in), no internal lock of
//! core is held at the moment of the fork, and the child never blocks on one.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! static IN_FORK_CHILD: AtomicBool = AtomicBool::new(false);
//! fn mark() {
//!     IN_FORK_CHILD.store(true, Ordering::Relaxed);
//! }
//!
//! multiproc_core::register_after_fork(mark);
//! assert!(!IN_FORK_CHILD.load(Ordering::Relaxed)); // runs only in children
//! ```

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

static FORK_LOCK: RwLock<()> = RwLock::new(());
static HOOKS: Hooks = Hooks::new("after-fork");
static BEFORE_HOOKS: Hooks = Hooks::new("before-fork");
static EXIT_HOOKS: Hooks = Hooks::new("exit");

/// A list of hooks, each registered once, run in registration order.
struct Hooks {
    what: &'static str,
    hooks: Mutex<Vec<fn()>>,
}

impl Hooks {
    const fn new(what: &'static str) -> Hooks {
        Hooks {
            what,
            hooks: Mutex::new(Vec::new()),
        }
    }

    fn register(&self, hook: fn()) {
        let _fork = hold();
        let mut hooks = self.hooks.lock();
        if !hooks.iter().any(|h| std::ptr::fn_addr_eq(*h, hook)) {
            hooks.push(hook);
        }
    }

    /// Runs every hook; one that panics is reported and the next still runs.
    fn run(&self) {
        let hooks = {
            let _fork = hold();
            self.hooks.lock().clone()
        };
        for hook in hooks {
            if std::panic::catch_unwind(hook).is_err() {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "multiproc: an {} hook panicked",
                    self.what
                );
            }
        }
    }
}

/// Held (shared) by every section of core that holds an internal lock.
///
/// Re-entrant: it never waits for a queued `fork`, so nesting it cannot deadlock.
pub(crate) fn hold() -> RwLockReadGuard<'static, ()> {
    FORK_LOCK.read_recursive()
}

/// Held (exclusively) across `fork()`: no other thread is inside core's locked sections.
///
/// The child drops its copy of the guard like any other value (a parking_lot `RwLock` does not
/// record which thread holds it), which leaves the lock free in the child.
pub(crate) fn exclusive() -> RwLockWriteGuard<'static, ()> {
    FORK_LOCK.write()
}

/// A shared hold on the fork lock, for the process-local locks of the layers above core.
///
/// A layer that keeps process-local state behind a lock (the shm resource tracker's pipe, a
/// queue's feeder state) takes this guard before its own lock and keeps it while it holds
/// that lock. A fork never happens while such a guard is held, so a fork child never finds
/// the layer's lock held by a thread that does not exist in the child. Re-entrant; cheap (one
/// atomic operation each way).
#[derive(Debug)]
#[must_use = "the fork lock is released when the guard is dropped"]
pub struct ForkGuard {
    _guard: RwLockReadGuard<'static, ()>,
}

/// Takes a [`ForkGuard`].
pub fn fork_guard() -> ForkGuard {
    ForkGuard { _guard: hold() }
}

/// Registers `hook` to run in every child multiproc forks, before its target; each function
/// is registered once (a second registration of the same `fn` is ignored).
///
/// Python: `multiprocessing.util.register_after_fork(obj, func)`. Hooks run in registration
/// order, on the child's only thread, after the child's identity (`current_process()`) is set.
/// A hook must not panic (a panic is caught and printed, and the next hook still runs).
pub fn register_after_fork(hook: fn()) {
    HOOKS.register(hook);
}

/// Registers `hook` to run in the parent just before multiproc forks a child (with the fork
/// start method), on the forking thread; each function is registered once.
///
/// Python: the `before` callback of `os.register_at_fork`. A hook may take locks and talk to
/// other processes (it runs before the fork lock is taken): a manager client uses it to hand
/// the references of its proxies over to the child (the child's copies of the proxies are
/// counted by the server before the parent could drop its own). A hook must not panic (a
/// panic is caught and printed).
pub fn register_before_fork(hook: fn()) {
    BEFORE_HOOKS.register(hook);
}

/// Runs the registered before-fork hooks (in the parent, before a fork).
pub(crate) fn run_before_fork_hooks() {
    BEFORE_HOOKS.run();
}

/// Runs the registered hooks (in a new child).
pub(crate) fn run_after_fork_hooks() {
    HOOKS.run();
}

/// Registers `hook` to run in every multiproc child (under any start method) once its target
/// has returned or panicked, before the child joins its own children and exits; each function
/// is registered once.
///
/// Python runs its finalizers there (`util._exit_function`): it is where a queue's feeder
/// thread writes what it still holds. Hooks run in registration order; a hook that panics is
/// reported and the next one still runs.
pub fn register_at_child_exit(hook: fn()) {
    EXIT_HOOKS.register(hook);
}

/// Runs the registered exit hooks (in a child whose target ended).
pub(crate) fn run_exit_hooks() {
    EXIT_HOOKS.run();
}
