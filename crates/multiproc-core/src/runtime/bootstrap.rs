//! The child's side: from the bootstrap record (or the fork) to `_exit`.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;

use crate::boot::{Boot, BootKind, ChildInfo, Job, MAX_BOOT_RECORD, Target};
use crate::exe::ExeId;
use crate::launch::{children, forkserver};
use crate::{atfork, fdpass, state, sys};

/// Entry of a spawned child, from the pre-`main` hook or `init()`. Never returns.
#[allow(unsafe_code)] // Taking ownership of the inherited bootstrap fd (one block, below).
pub(crate) fn run_spawned(fd: Option<RawFd>) -> ! {
    sys::ignore_sigpipe();
    // This process was dispatched before `main`: its own children (and, for the forkserver,
    // the children it forks) may be spawned too, also under `manual-dispatch`, where `start()`
    // otherwise requires that `init()` was called.
    crate::launch::spawn::INIT_CALLED.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(|| -> Result<(), String> {
        // SAFETY: argv says this process was started by `spawn_self` as a multiproc child, which
        // installs the bootstrap socket as fd 3 for this process alone; nothing of ours refers
        // to that number, and user code cannot have opened a file there while it was occupied.
        // This runs once: from the pre-`main` hook, or from `init()`, neither of which returns
        // in a child.
        let sock = fd
            .and_then(|fd| unsafe { sys::owned_fd_from_inherited(fd) })
            .ok_or("started as a multiproc child without its bootstrap socket")?;
        let (bytes, fds) = fdpass::recv_msg(sock.as_fd(), MAX_BOOT_RECORD)
            .map_err(|e| format!("cannot read the bootstrap record: {e}"))?
            .ok_or("the parent closed the bootstrap socket before sending the record")?;
        let boot: Boot = postcard::from_bytes(&bytes)
            .map_err(|e| format!("cannot decode the bootstrap record: {e}"))?;
        if ExeId::current()? != boot.exe {
            return Err(
                "the executable changed on disk since the parent started; refusing to run".into(),
            );
        }
        match boot.kind {
            BootKind::Run(job) => {
                drop(sock);
                let parent = job.info.parent_pid;
                run_job(*job, fds, Launch::Spawned { parent })
            }
            BootKind::Forkserver => crate::runtime::serve::serve(sock),
        }
    });
    let msg = match outcome {
        Ok(Err(msg)) => msg,
        _ => "bootstrap panicked".to_string(),
    };
    let _ = writeln!(
        std::io::stderr(),
        "multiproc: a spawned child cannot start: {msg}"
    );
    sys::exit_child(1)
}

/// How a child that runs a decoded job came to be.
pub(crate) enum Launch {
    /// Re-executed by its parent (spawn).
    Spawned { parent: i32 },
    /// Forked by the forkserver `server`.
    Served { server: i32 },
}

/// Runs a decoded job in a fresh child. Never returns.
pub(crate) fn run_job(job: Job, fds: Vec<OwnedFd>, launch: Launch) -> ! {
    let (os_parent, served) = match launch {
        Launch::Spawned { parent } => (parent, false),
        Launch::Served { server } => (server, true),
    };
    let Job {
        mut info,
        entry,
        args,
    } = job;
    // The forkserver put its own stdin on /dev/null once for all its children.
    begin(&mut info, os_parent, !served);
    let code = run_catching(move || {
        // The reference is checked (executable, tag, image range) before anything is called.
        entry
            .call(&args, fds, false)
            .map(drop)
            .map_err(|e| format!("cannot start the target: {e}"))
    });
    finish(code)
}

/// Runs the target in a fork child. Never returns. `info` is borrowed (its strings taken), not
/// moved: a move of it would call `memcpy`, whose code page the child has not mapped yet.
pub(crate) fn run_forked(info: &mut ChildInfo, target: Box<dyn Target>) -> ! {
    let parent = info.parent_pid;
    begin(info, parent, true);
    let code = run_catching(move || {
        target.run();
        Ok(())
    });
    finish(code)
}

/// Identity, children table, forkserver client, after-fork hooks, daemon death signal, stdin
/// and panic banner.
fn begin(info: &mut ChildInfo, os_parent: i32, reopen_stdin: bool) {
    let daemon = info.daemon;
    install_panic_banner();
    state::become_child(info);
    children::reset_registry();
    forkserver::forget_inherited();
    crate::launch::fork::forget_library_threads();
    crate::launch::launcher::forget_in_fork_child();
    atfork::run_after_fork_hooks();
    if daemon {
        // A daemon dies with its parent. If the parent is already gone, so are we.
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(os_parent) {
            sys::exit_child(1);
        }
    }
    if reopen_stdin {
        stdin_to_dev_null();
    }
}

/// Installs, once per process image, the panic hook that prints `Process NAME:` above a
/// child's panic (Python prints the process name above the traceback). `Process::start` calls
/// it in the parent, so a fork child inherits it and allocates nothing for it (every page a
/// fork child writes costs a copy); a spawned child installs it in `begin`.
pub(crate) fn install_panic_banner() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |panic| {
            // A panic inside a capturing FnRef call (a pool task) is returned, not printed.
            if !crate::fnref::capturing()
                && let Some(name) = state::child_name_for_panic()
            {
                let _ = writeln!(std::io::stderr(), "Process {name}:");
            }
            previous(panic);
        }));
    });
}

/// Python closes a child's stdin and reopens it on /dev/null: two system calls and no path
/// conversion on the stack (in a fork child every page written is a copy).
pub(crate) fn stdin_to_dev_null() {
    sys::stdin_to_dev_null();
}

/// 0 on return, 1 after a panic (the hook printed it) or a start failure (printed here).
fn run_catching(f: impl FnOnce() -> Result<(), String>) -> i32 {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            let name = state::current_process().name;
            let _ = writeln!(std::io::stderr(), "Process {name}: {msg}");
            1
        }
        Err(_) => 1,
    }
}

/// Runs the exit hooks, joins the child's own children, flushes stdio and leaves with `_exit`.
fn finish(code: i32) -> ! {
    atfork::run_exit_hooks();
    let _ = std::panic::catch_unwind(children::exit_cleanup);
    // std's stderr is unbuffered: only stdout can hold output.
    let _ = std::io::stdout().flush();
    sys::exit_child(code)
}
