//! Processes and start methods: the base layer of multiproc, Python's `multiprocessing` for
//! Rust.
//!
//! | Python | multiproc |
//! |---|---|
//! | `Process(target=f, args=(a,))` | [`Process::new(f, a)`](Process::new) |
//! | `p.start()`, `p.join()`, `p.join(t)` | [`start`](Process::start), [`join`](Process::join), [`join_timeout`](Process::join_timeout) |
//! | `p.is_alive()`, `p.exitcode`, `p.pid` | [`is_alive`](Process::is_alive), [`exitcode`](Process::exitcode), [`pid`](Process::pid) |
//! | `p.terminate()`, `p.kill()`, `p.close()` | [`terminate`](Process::terminate), [`kill`](Process::kill), [`close`](Process::close) |
//! | `p.name`, `p.daemon`, `p.sentinel` | [`name`](Process::name), [`daemon`](Process::daemon), [`sentinel`](Process::sentinel) |
//! | `set_start_method('spawn')` | [`set_start_method(StartMethod::Spawn)`](set_start_method) |
//! | `get_context('fork')` | [`get_context(StartMethod::Fork)`](get_context) |
//! | `current_process()`, `parent_process()` | [`current_process`], [`parent_process`] |
//! | `active_children()`, `cpu_count()` | [`active_children`], [`cpu_count`] |
//! | `if __name__ == '__main__':` | [`init()`] (optional: a pre-`main` hook does it) |
//!
//! ```
//! use multiproc_core::{get_context, StartMethod};
//!
//! fn square(n: u64) {
//!     assert_eq!(n * n, 49);
//! }
//!
//! multiproc_core::init();
//! for method in [StartMethod::Forkserver, StartMethod::Spawn, StartMethod::Fork] {
//!     let mut p = get_context(method).process(square, 7);
//!     p.start().unwrap();
//!     assert_eq!(p.join().unwrap(), 0);
//! }
//! ```
//!
//! How the start methods work, and what a child inherits: `docs/start-methods.md`.
//!
//! ## Where the code is
//!
//! The modules read bottom-up: `sys` (system calls, nothing else of the crate), plain data
//! (`boot`: what a parent tells a child; [`fnref`]; [`reduction`]; [`heap`]), `launch` (spawn,
//! the forkserver client, fork, the table of children), `runtime` (a child from its first
//! instruction to `_exit`: the pre-`main` hook, the bootstrap, the forkserver's loop, the
//! after-fork hooks), and [`Process`] on top. `docs/ARCHITECTURE.md` has the map.
//!
//! ## Running your own constructors first
//!
//! A spawned child is dispatched by a pre-`main` (`.init_array`) hook of this crate, before
//! the program's own constructors may have run. A program whose constructors must run first
//! enables the cargo feature `manual-dispatch`: the hook then only records that it ran, and
//! [`init()`] (which such a program must call first thing in `main`) dispatches the child.
#![deny(unsafe_code)]

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "multiproc-core supports Linux with glibc only: it relies on fork/posix_spawn semantics, pidfds, \
     futexes, memfd and glibc's convention of passing (argc, argv, envp) to .init_array functions"
);

mod atfork;
mod boot;
mod error;
mod exe;
mod fdpass;
#[allow(unsafe_code)] // Fn pointers from checked offsets; see docs/unsafe.md.
pub mod fnref;
#[allow(unsafe_code)] // Turning a shared mapping into `&T`; see the module docs.
pub mod heap;
mod launch;
mod method;
mod process;
pub mod reduction;
mod runtime;
mod state;
#[allow(unsafe_code)]
// The system-call layer (docs/unsafe.md lists every unsafe module of the crate).
mod sys;
mod wait;
mod wire;

pub use crate::atfork::{
    ForkGuard, fork_guard, register_after_fork, register_at_child_exit, register_before_fork,
};
pub use crate::error::{Error, Result};
pub use crate::fnref::{AnyFnRef, CallError, FnRef, FnRefError, Panicked, catch_panic};
pub use crate::launch::children::{ProcessHandle, active_children, set_exit_join_timeout};
pub use crate::launch::forkserver::{LOST_STATUS, forkserver_pid};
pub use crate::launch::launcher::spawn_fork_safe_thread;
pub use crate::method::{
    DEFAULT_START_METHOD, StartMethod, force_start_method, get_all_start_methods, get_start_method,
    set_start_method, start_method_if_set,
};
pub use crate::process::{Context, Process, get_context, spawn_helper};
pub use crate::state::{CurrentProcess, ParentProcess, current_process, parent_process};
pub use crate::sys::{
    allow_fork_with_threads, current_pid, ignore_interrupts, retain_freed_memory,
};

/// Dispatches a spawned child before the rest of `main` runs; a no-op in the parent.
///
/// The pre-`main` hook of this crate already does this in ordinary binaries, test binaries and
/// doctests, so calling `init()` is optional there; it is the explicit form of Python's
/// `if __name__ == '__main__':` guard and is idempotent. It is required where the hook cannot
/// run (a platform without `.init_array`).
pub fn init() {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<_> = std::env::args_os().take(4).collect();
    if args.len() == 3 && args[1].as_bytes() == sys::CHILD_MARKER.to_bytes() {
        let fd = args[2].to_str().and_then(|s| s.parse().ok());
        runtime::bootstrap::run_spawned(fd);
    }
    launch::spawn::INIT_CALLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The number of CPUs this process may run on.
///
/// Python: `multiprocessing.cpu_count()` (this follows the CPU affinity mask, as Python 3.13's
/// `os.process_cpu_count()`).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
