//! The pre-`main` hook: an `.init_array` entry that catches a spawned child (or the forkserver)
//! before the parent's `main` could run again in it.
//!
//! It must live in the crate that defines `Process::start`, so it is linked whenever a process
//! can be started (a crate that is a dependency but never named is not linked at all).

use std::ffi::CStr;
use std::sync::atomic::Ordering;

use crate::launch::spawn::HOOK_RAN;
use crate::sys::CHILD_MARKER;

type InitFn = extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

#[used]
// SAFETY: `.init_array` holds pointers to functions glibc calls before `main` with
// (argc, argv, envp); `pre_main` has exactly that signature and never unwinds.
#[unsafe(link_section = ".init_array")]
static PRE_MAIN: InitFn = pre_main;

extern "C" fn pre_main(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    HOOK_RAN.store(true, Ordering::Relaxed);
    // With `manual-dispatch`, `init()` dispatches the child once the program's own
    // constructors have run; `start()` then requires `init()` (see `launch::spawn`).
    if cfg!(feature = "manual-dispatch") || argc != 3 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the process's own argc/argv to `.init_array` functions: `argv` holds
    // `argc` valid NUL-terminated strings, and argc == 3 was checked above.
    let marker = unsafe { CStr::from_ptr(*argv.add(1)) };
    if marker != CHILD_MARKER {
        return;
    }
    // SAFETY: as above, index 2 < argc.
    let fd = unsafe { CStr::from_ptr(*argv.add(2)) };
    let fd = fd.to_str().ok().and_then(|s| s.parse().ok());
    crate::runtime::bootstrap::run_spawned(fd);
}
