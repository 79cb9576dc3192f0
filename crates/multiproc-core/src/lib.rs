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
#![deny(unsafe_code)]

mod child;
mod error;
mod exe;
mod fdpass;
mod forkserver;
#[allow(unsafe_code)] // Turning a shared mapping into `&T`; see the module docs.
pub mod heap;
mod method;
mod process;
pub mod reduction;
mod spawn;
mod state;
#[allow(unsafe_code)]
// All the unsafe_code of this crate lives in sys/ (docs/ARCHITECTURE.md lists it).
mod sys;
mod wait;

pub use crate::error::{Error, Result};
pub use crate::forkserver::forkserver_pid;
pub use crate::method::{
    Context, DEFAULT_START_METHOD, StartMethod, force_start_method, get_all_start_methods,
    get_context, get_start_method, set_start_method, start_method_if_set,
};
pub use crate::process::{Process, ProcessHandle, active_children, spawn_helper};
pub use crate::state::{CurrentProcess, ParentProcess, current_process, parent_process};
pub use crate::sys::{allow_fork_with_threads, current_pid};

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
        child::run_spawned(fd);
    }
    spawn::INIT_CALLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The number of CPUs this process may run on.
///
/// Python: `multiprocessing.cpu_count()` (this follows the CPU affinity mask, as Python 3.13's
/// `os.process_cpu_count()`).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
