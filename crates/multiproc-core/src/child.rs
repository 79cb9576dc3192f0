//! The child's side: the bootstrap record, and running a target until `_exit`.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;

use serde::{Deserialize, Serialize};

use crate::exe::ExeId;
use crate::process::{self, Target};
use crate::state::{self, ChildInfo};
use crate::sys::fnptr::Entry;
use crate::{fdpass, forkserver, sys};

/// Largest bootstrap record a child accepts (arguments included).
pub(crate) const MAX_BOOT_RECORD: usize = u32::MAX as usize;

/// What a re-executed child (or a forkserver child) is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Boot {
    /// The parent's executable; the child refuses to run if its own differs.
    pub(crate) exe: ExeId,
    pub(crate) kind: BootKind,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BootKind {
    /// Run a target.
    Run(Job),
    /// Become the forkserver.
    Forkserver,
}

/// A target to run: who the child is, where to jump, and its encoded arguments (the fds travel
/// beside the record).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) info: ChildInfo,
    pub(crate) entry: Entry,
    pub(crate) args: Vec<u8>,
}

/// Entry of a spawned child, from the pre-`main` hook or `init()`. Never returns.
pub(crate) fn run_spawned(fd: Option<RawFd>) -> ! {
    sys::ignore_sigpipe();
    let outcome = std::panic::catch_unwind(|| -> Result<(), String> {
        let sock = fd
            .and_then(sys::owned_fd_from_inherited)
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
                run_job(job, fds, Launch::Spawned { parent })
            }
            BootKind::Forkserver => forkserver::serve(sock),
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
    // The forkserver put its own stdin on /dev/null once for all its children.
    begin(&job.info, os_parent, !served);
    let Job { entry, args, .. } = job;
    let code = run_catching(&job.info.name, move || {
        entry
            .call(&args, fds)
            .map_err(|e| format!("cannot start the target: {e}"))
    });
    finish(code)
}

/// Runs the target in a fork child. Never returns.
pub(crate) fn run_forked(info: &ChildInfo, target: Box<dyn Target>) -> ! {
    begin(info, info.parent_pid, true);
    let code = run_catching(&info.name, move || {
        target.run();
        Ok(())
    });
    finish(code)
}

/// Identity, children table, forkserver client, daemon death signal, stdin and panic hook.
fn begin(info: &ChildInfo, os_parent: i32, reopen_stdin: bool) {
    state::become_child(info);
    process::reset_registry();
    forkserver::forget_inherited();
    if info.daemon {
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
    let name = info.name.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |panic| {
        let _ = writeln!(std::io::stderr(), "Process {name}:");
        previous(panic);
    }));
}

/// Python closes a child's stdin and reopens it on /dev/null.
pub(crate) fn stdin_to_dev_null() {
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        0.into(),
    ) {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
}

/// 0 on return, 1 after a panic (the hook printed it) or a start failure (printed here).
fn run_catching(name: &str, f: impl FnOnce() -> Result<(), String>) -> i32 {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            let _ = writeln!(std::io::stderr(), "Process {name}: {msg}");
            1
        }
        Err(_) => 1,
    }
}

/// Joins the child's own children, flushes stdio and leaves with `_exit`.
fn finish(code: i32) -> ! {
    let _ = std::panic::catch_unwind(process::exit_cleanup);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_child(code)
}
