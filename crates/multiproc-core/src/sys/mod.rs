//! The system-call layer of multiproc-core: fork, `_exit`, `posix_spawn`, signal dispositions,
//! `atexit`, the inherited bootstrap fd, and turning checked addresses into fn pointers.
//!
//! Nothing here imports from the rest of the crate, so this layer can be audited alone. Each
//! `unsafe` block carries a `// SAFETY:` comment; see `docs/unsafe.md` for the invariants these
//! rely on (the other opted-in modules are listed there too).

pub(crate) mod fnptr;

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::process::Pid;

static FORK_WITH_THREADS_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Allows the fork start method in a parent that runs other threads.
///
/// By default starting a process with [`StartMethod::Fork`](crate::StartMethod::Fork) while the
/// parent has more than one thread fails with [`Error::ForkWithThreads`](crate::Error): the child
/// gets a copy of memory in which another thread may hold a lock (std's stdout lock, a user
/// mutex, an allocator arena) that no thread of the child will ever release.
///
/// # Safety
///
/// The caller promises that, whenever a fork child is started, no other thread of this process
/// holds a lock or is in a state that the child's target could depend on (printing, allocating
/// with a non-fork-safe allocator, using a mutex it shares with other threads).
pub unsafe fn allow_fork_with_threads(allow: bool) {
    FORK_WITH_THREADS_ALLOWED.store(allow, Ordering::Relaxed);
}

/// Whether [`allow_fork_with_threads`] opted in.
pub(crate) fn fork_with_threads_allowed() -> bool {
    FORK_WITH_THREADS_ALLOWED.load(Ordering::Relaxed)
}

/// `fork()`: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Callers check the thread count first (or the user opted in through the `unsafe`
/// [`allow_fork_with_threads`]); the child must leave through [`exit_child`].
pub(crate) fn fork() -> io::Result<Option<Pid>> {
    // SAFETY: glibc's fork runs its atfork handlers, so malloc stays usable in the child. The
    // child only runs code of this crate that neither unwinds into the caller's frames nor
    // returns (it ends in `exit_child`), and the callers make sure no other thread exists (or the
    // user took responsibility through `allow_fork_with_threads`).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(
            Pid::from_raw(pid).expect("fork returned a positive pid"),
        )),
    }
}

/// Leaves a child process at once with `code`, without running atexit handlers or destructors
/// (they belong to the parent's copy of the program).
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Moves the value out of `boxed` and leaks its allocation (for a fork child about to end,
/// where a free would only write pages shared with the parent: each a copy-on-write fault).
pub(crate) fn take_leaking<T>(boxed: Box<T>) -> T {
    let leaked: *mut T = Box::into_raw(boxed);
    // SAFETY: `leaked` comes from a live `Box`, so it is aligned and points to an initialised
    // `T`; the allocation is never used again (its only pointer goes out of scope here), so the
    // value read is its one owner and is never dropped twice.
    unsafe { leaked.read() }
}

/// Puts fd 0 on /dev/null, read-only and inherited across exec (Python: `os.close(0)`, then
/// `open(os.devnull)`, which takes the lowest free number). In a process with one thread.
///
/// Written for a fork child, where every code or data page touched for the first time faults:
/// the system calls are rustix's inline ones (no libc code page) and the path is built on the
/// stack (no read-only data page).
pub(crate) fn stdin_to_dev_null() {
    // Stored as immediates: "/dev/nul" and "l\0".
    let path: [u64; 2] = [
        u64::from_ne_bytes(*b"/dev/nul"),
        u64::from_ne_bytes([b'l', 0, 0, 0, 0, 0, 0, 0]),
    ];
    // SAFETY: the 16 bytes of `path` are initialised, live for the borrow, and `u8` has no
    // alignment or validity requirement; `from_ne_bytes` makes each word's bytes in memory the
    // given ones, so they read "/dev/null" and NUL bytes: the first 10 end with the first NUL,
    // a C string.
    let path = unsafe {
        let bytes = std::slice::from_raw_parts(path.as_ptr().cast::<u8>(), 10);
        std::ffi::CStr::from_bytes_with_nul_unchecked(bytes)
    };
    // SAFETY: called where this process runs one thread (a new child, the forkserver), so
    // nothing can take fd 0 between the two calls; fd 0 is stdin, which no `OwnedFd` of ours
    // holds, and replacing it is what `dup2` onto it would do.
    unsafe { rustix::io::close(0) };
    if let Ok(fd) = rustix::fs::open(path, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()) {
        if std::os::fd::AsRawFd::as_raw_fd(&fd) == 0 {
            // It stays open as stdin.
            std::mem::forget(fd);
        } else {
            // fd 0 was taken after all: move it there (and close this one).
            let _ = rustix::stdio::dup2_stdin(&fd);
        }
    }
}

/// Sets SIGPIPE to ignored, as std does before `main` (the pre-`main` hook runs earlier).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Sets SIGINT to ignored in this process: a pool worker's, so that Ctrl-C in a terminal
/// (which signals the whole foreground process group) reaches only the parent, which then
/// terminates its pool (Python's workers get a `KeyboardInterrupt` each and print it).
pub fn ignore_interrupts() {
    // SAFETY: installing SIG_IGN for SIGINT has no preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// Keeps freed memory of up to `bytes` in this process's allocator instead of returning it to
/// the kernel at once: for a pool worker, whose every chunk allocates and frees buffers of
/// the same size, and which otherwise pays page faults on fresh memory for each one (glibc
/// serves allocations above 128 KiB with `mmap` and trims its heap above 128 KiB free). A
/// no-op on other C libraries.
pub fn retain_freed_memory(bytes: usize) {
    #[cfg(target_env = "gnu")]
    {
        let v = i32::try_from(bytes).unwrap_or(i32::MAX);
        // SAFETY: `mallopt` only sets allocator parameters; any value is accepted or refused
        // with a return of 0, and no memory is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, v);
            libc::mallopt(libc::M_TRIM_THRESHOLD, v.saturating_mul(2));
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = bytes;
}

/// Registers `f` to run at normal process exit (`exit()` or return from `main`).
pub(crate) fn register_atexit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain `extern "C" fn()` that catches every panic before returning.
    match unsafe { libc::atexit(f) } {
        0 => Ok(()),
        _ => Err(io::Error::other("atexit registration failed")),
    }
}

/// Takes ownership of an fd number inherited through `exec` (the bootstrap socket); `None` if
/// the number is not open.
///
/// # Safety
///
/// `fd` must have been handed to this process for it alone to own (the bootstrap socket that
/// [`spawn_self`] installs as fd 3), no other `OwnedFd` or `File` of this process may refer to
/// it, and this may be called at most once per inherited fd.
pub(crate) unsafe fn owned_fd_from_inherited(fd: RawFd) -> Option<OwnedFd> {
    // fcntl(F_GETFD) tells whether the number is open at all.
    // SAFETY: F_GETFD only reads the descriptor flags; any int is an acceptable argument.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the fd is open (checked above) and the caller guarantees it is ours alone to own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The fd number the bootstrap socket has in a spawned child.
pub(crate) const BOOT_FD: RawFd = 3;
/// `argv[1]` of a spawned child.
pub(crate) const CHILD_MARKER: &CStr = c"--multiproc-child";

/// `posix_spawn`s `/proc/self/exe` as a multiproc child: argv `[argv0, --multiproc-child, 3]`,
/// `boot` becomes fd 3 and every other fd above 2 is closed, environment copied from std's view.
///
/// `posix_spawn` uses `CLONE_VFORK` in glibc, so its cost does not grow with the parent's
/// memory, unlike `Command` with a `pre_exec` hook (which falls back to fork+exec).
pub(crate) fn spawn_self(boot: BorrowedFd<'_>) -> io::Result<Pid> {
    let argv0 = std::env::args_os()
        .next()
        .and_then(|a| CString::new(a.as_bytes()).ok())
        .unwrap_or_else(|| c"multiproc-child".to_owned());
    let fd_arg = CString::new(BOOT_FD.to_string()).expect("no NUL in a number");
    let argv = [
        argv0.as_ptr(),
        CHILD_MARKER.as_ptr(),
        fd_arg.as_ptr(),
        std::ptr::null(),
    ];
    // The environment through std's lock-protected view, never a raw read of `environ`.
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv: OsString = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.as_bytes()).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());

    let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions and attributes are initialised before use and destroyed on
    // every path; `argv`/`envp` are NULL-terminated arrays of pointers into CStrings that
    // outlive the call; `boot` is an open fd. dup2(fd, 3) with fd == 3 clears FD_CLOEXEC
    // (glibc >= 2.29), so exactly fd 3 is inherited; closefrom(4) (glibc >= 2.34) drops
    // stray inherited fds.
    let rc = unsafe {
        let actions = actions.as_mut_ptr();
        let attr = attr.as_mut_ptr();
        let mut rc = libc::posix_spawn_file_actions_init(actions);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        rc = libc::posix_spawnattr_init(attr);
        if rc != 0 {
            libc::posix_spawn_file_actions_destroy(actions);
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if rc == 0 {
            rc = libc::posix_spawn_file_actions_adddup2(actions, boot.as_raw_fd(), BOOT_FD);
        }
        if rc == 0 {
            rc = libc::posix_spawn_file_actions_addclosefrom_np(actions, BOOT_FD + 1);
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setsigmask(attr, &empty);
        }
        if rc == 0 {
            rc =
                libc::posix_spawnattr_setflags(attr, libc::POSIX_SPAWN_SETSIGMASK as libc::c_short);
        }
        if rc == 0 {
            rc = libc::posix_spawn(
                &mut pid,
                c"/proc/self/exe".as_ptr(),
                actions,
                attr,
                argv.as_ptr() as *const *mut libc::c_char,
                envp.as_ptr() as *const *mut libc::c_char,
            );
        }
        libc::posix_spawnattr_destroy(attr);
        libc::posix_spawn_file_actions_destroy(actions);
        rc
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(Pid::from_raw(pid).expect("posix_spawn returned a positive pid"))
}

/// The pid of this process, cached (a `getpid` system call costs ~100 ns, a lock's fast path
/// ~10 ns). The cache is cleared in every fork child, whoever forks (a `pthread_atfork` child
/// handler), so a fork child never acts under its parent's pid.
#[inline]
pub fn current_pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => current_pid_slow(),
        pid => pid,
    }
}

/// The cached pid, cleared by a `pthread_atfork` child handler.
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[cold]
#[inline(never)]
fn current_pid_slow() -> u32 {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn forget_pid() {
        PID.store(0, Ordering::Relaxed);
    }
    REGISTERED.call_once(|| {
        // SAFETY: `forget_pid` is an `extern "C" fn()` that only stores to an atomic, which is
        // async-signal-safe and cannot unwind; no prepare/parent handlers.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_pid));
        }
    });
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// The executable (`PF_X`) load segments of the loaded object that contains `addr`, from the
/// dynamic loader's own table (`dl_iterate_phdr`: no system call, unlike reading
/// `/proc/self/maps`). Empty if no object contains it.
pub(crate) fn code_ranges_of_object_containing(addr: usize) -> Vec<std::ops::Range<usize>> {
    struct Search {
        addr: usize,
        found: Vec<std::ops::Range<usize>>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `info` for the duration of the call, and
        // `data` is the `&mut Search` given below, used by this callback alone.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        let mut ranges = Vec::new();
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers of this object.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
                ranges.push(start..start.wrapping_add(ph.p_memsz as usize));
            }
        }
        if ranges.iter().any(|r| r.contains(&search.addr)) {
            search.found = ranges;
            return 1; // stop
        }
        0
    }
    let mut search = Search {
        addr,
        found: Vec::new(),
    };
    // SAFETY: `visit` matches the callback type, never unwinds (it only reads the headers and
    // pushes to a Vec; an allocation failure aborts), and `search` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast());
    }
    search.found
}
