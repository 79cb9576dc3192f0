//! The spawn start method: re-execute `/proc/self/exe`, send the bootstrap record.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::process::{Pid, PidfdFlags};

use crate::boot::{Boot, BootKind, ChildInfo, Job, Target};
use crate::error::{Error, Result};
use crate::fnref::FnRefError;
use crate::launch::children::Child;
use crate::{exe, fdpass, sys};

/// Set by [`init`](crate::init).
pub(crate) static INIT_CALLED: AtomicBool = AtomicBool::new(false);

/// Set by the pre-`main` hook in every process that links this crate; `start()` checks it (or
/// that [`init`](crate::init) was called) so a missing hook is a clear error, not a child that
/// runs the parent's `main`.
pub(crate) static HOOK_RAN: AtomicBool = AtomicBool::new(false);

/// Checks that a re-executed child will be dispatched before `main` and runs our code.
pub(crate) fn check_reexecutable() -> Result<()> {
    let dispatched_by_hook = HOOK_RAN.load(Ordering::Relaxed) && !cfg!(feature = "manual-dispatch");
    if !dispatched_by_hook && !INIT_CALLED.load(Ordering::Relaxed) {
        return Err(Error::HookNotRun);
    }
    exe::image_range().map(drop).map_err(Error::NotReexecutable)
}

/// Encodes a target into a job record and its fds.
pub(crate) fn job(info: ChildInfo, target: &dyn Target) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    check_reexecutable()?;
    let entry = target.entry().map_err(|e| match e {
        FnRefError::NotReexecutable(msg) => Error::NotReexecutable(msg),
        _ => Error::TargetOutsideExecutable,
    })?;
    let (args, fds) = target.encode_args()?;
    if fds.len() > fdpass::MAX_FDS {
        return Err(Error::TooManyFds(fds.len()));
    }
    let boot = Boot {
        exe: exe::parent_exe_id().map_err(Error::NotReexecutable)?,
        kind: BootKind::Run(Box::new(Job { info, entry, args })),
    };
    let bytes = postcard::to_allocvec(&boot)
        .map_err(|e| Error::Reduction(crate::reduction::ReductionError::Encode(e.to_string())))?;
    Ok((bytes, fds))
}

/// Re-executes this binary with `record` and `fds` on its bootstrap socket; returns the pid
/// and the parent's end of that socket.
pub(crate) fn spawn_raw(record: &[u8], fds: &[OwnedFd]) -> Result<(Pid, OwnedFd)> {
    let (mine, theirs) = fdpass::socketpair().map_err(Error::os("socketpair"))?;
    let pid = sys::spawn_self(theirs.as_fd()).map_err(Error::os("posix_spawn"))?;
    drop(theirs);
    if let Err(e) = fdpass::send_msg(mine.as_fd(), record, &fdpass::borrow_all(fds)) {
        // The child died before reading its record; reap it.
        if let Ok(pidfd) = rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            crate::wait::kill_and_reap(pidfd.as_fd());
        }
        return Err(Error::Os {
            op: "sending the bootstrap record",
            source: e,
        });
    }
    Ok((pid, mine))
}

/// Starts `target` in a re-executed child.
pub(crate) fn start(info: ChildInfo, target: &dyn Target) -> Result<Child> {
    let (record, fds) = job(info.clone(), target)?;
    let (pid, _sock) = spawn_raw(&record, &fds)?;
    Child::own(pid, &info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_hook_and_init_is_a_clear_error() {
        let hook = HOOK_RAN.swap(false, Ordering::Relaxed);
        let init = INIT_CALLED.swap(false, Ordering::Relaxed);
        let result = check_reexecutable();
        HOOK_RAN.store(hook, Ordering::Relaxed);
        INIT_CALLED.store(init, Ordering::Relaxed);
        assert!(hook, "the pre-main hook ran in this test binary");
        let err = result.unwrap_err();
        assert!(matches!(err, Error::HookNotRun));
        assert!(err.to_string().contains("multiproc::init()"), "{err}");
        assert!(check_reexecutable().is_ok());
    }
}
