//! The children this process started: how each one's end is learnt ([`Child`]), the
//! cloneable [`ProcessHandle`], the table behind `active_children()`, and the exit handler.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Once};
use std::time::Duration;

use parking_lot::Mutex;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::boot::ChildInfo;
use crate::error::{Error, Result};
use crate::launch::forkserver;
use crate::{atfork, sys};

/// How to learn that a child ended and with which code.
pub(crate) enum Waiter {
    /// Our own OS child (fork, spawn): wait on its pidfd.
    Own,
    /// A child of the forkserver: the server writes the exit code on `status`.
    Served { status: OwnedFd },
}

/// A started child, shared by its [`Process`], [`ProcessHandle`]s and the registry.
pub(crate) struct Child {
    pub(crate) pid: Pid,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) pidfd: OwnedFd,
    pub(crate) waiter: Waiter,
    pub(crate) exitcode: Mutex<Option<i32>>,
}

impl Child {
    pub(crate) fn new(pid: Pid, pidfd: OwnedFd, waiter: Waiter, info: &ChildInfo) -> Child {
        Child {
            pid,
            name: info.name.clone(),
            daemon: info.daemon,
            pidfd,
            waiter,
            exitcode: Mutex::new(None),
        }
    }

    /// Our own OS child, just created: opens its pidfd.
    ///
    /// Race-free: until we reap it, the child's pid cannot be reused (it is a zombie at worst),
    /// and the library never waits for "any child". The one way around that is a program that
    /// lets the kernel reap children itself (SIGCHLD ignored, `SA_NOCLDWAIT`): the pidfd is then
    /// checked to be our child (`waitid(WNOWAIT)` on it fails with ECHILD otherwise), and a child
    /// already gone is recorded as ended with the code 255 (its status is lost, as in Python).
    /// If the pidfd cannot be opened (EMFILE …), the child is killed and reaped before the
    /// error is returned: it never runs untracked.
    pub(crate) fn own(pid: Pid, info: &ChildInfo) -> Result<Child> {
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => {
                // Already gone and reaped by the kernel (the program ignores SIGCHLD): its
                // status is lost. The sentinel is a pipe at end-of-file (always readable).
                let (ended, _) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(Error::errno("pipe"))?;
                let child = Child::new(pid, ended, Waiter::Own, info);
                *child.exitcode.lock() = Some(crate::LOST_STATUS);
                return Ok(child);
            }
            Err(e) => {
                // Still unreaped, so the pid is still our child's.
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                return Err(Error::errno("pidfd_open")(e));
            }
        };
        let child = Child::new(pid, pidfd, Waiter::Own, info);
        let probe = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        if let Err(rustix::io::Errno::CHILD) =
            retry(|| rustix::process::waitid(WaitId::PidFd(child.pidfd.as_fd()), probe))
        {
            // Reaped by the kernel before we could open it: the pidfd names a stranger or
            // nothing. Never signal it.
            *child.exitcode.lock() = Some(crate::LOST_STATUS);
        }
        Ok(child)
    }

    /// Readable once the child has ended (whatever the start method: we hold its pidfd).
    pub(crate) fn sentinel(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The exit code if the child has ended (reaping it), without blocking.
    fn try_wait(&self) -> Result<Option<i32>> {
        let mut code = self.exitcode.lock();
        if code.is_some() {
            return Ok(*code);
        }
        *code = match &self.waiter {
            Waiter::Own => {
                let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
                match retry(|| rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), options))
                {
                    Ok(Some(status)) => {
                        Some(match (status.exit_status(), status.terminating_signal()) {
                            (Some(c), _) => c,
                            (None, Some(sig)) => -sig,
                            (None, None) => return Ok(None),
                        })
                    }
                    Ok(None) => None,
                    // Reaped by the kernel (the program ignores SIGCHLD): the status is lost.
                    Err(rustix::io::Errno::CHILD) => Some(crate::LOST_STATUS),
                    Err(e) => {
                        return Err(Error::Os {
                            op: "waitid",
                            source: e.into(),
                        });
                    }
                }
            }
            Waiter::Served { status } => {
                if !crate::wait::readable(self.pidfd.as_fd(), Some(Duration::ZERO))
                    .map_err(Error::os("poll"))?
                {
                    return Ok(None);
                }
                // 255 if the server died before reporting (as CPython records it).
                Some(forkserver::exit_code(status))
            }
        };
        Ok(*code)
    }

    /// Waits up to `timeout` (forever with `None`).
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<i32>> {
        if let Some(code) = *self.exitcode.lock() {
            return Ok(Some(code));
        }
        let start = std::time::Instant::now();
        // A forkserver child: the status socket becomes readable once the server has reaped
        // the child and written its code, one wake-up instead of two (the pidfd, then the
        // code). It is also readable (end-of-file) if the server died: then the child's pidfd
        // says when the child itself ends.
        let first = match &self.waiter {
            Waiter::Own => self.sentinel(),
            Waiter::Served { status } => status.as_fd(),
        };
        if !crate::wait::readable(first, timeout).map_err(Error::os("poll"))? {
            return Ok(None);
        }
        let mut code = self.try_wait()?;
        if code.is_none() {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            if !crate::wait::readable(self.sentinel(), left).map_err(Error::os("poll"))? {
                return Ok(None);
            }
            code = self.try_wait()?;
        }
        if code.is_some() {
            forget_child(self);
        }
        Ok(code)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        if self.exitcode.lock().is_some() {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(&self.pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::Os {
                op: "pidfd_send_signal",
                source: e.into(),
            }),
        }
    }
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// A cloneable handle on a started child: what [`active_children`] returns, and what
/// [`Process::handle`](crate::Process::handle) gives to other threads.
#[derive(Clone)]
pub struct ProcessHandle(pub(crate) Arc<Child>);

impl ProcessHandle {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.pid.as_raw_nonzero().get() as u32
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether the child is a daemon.
    pub fn daemon(&self) -> bool {
        self.0.daemon
    }

    /// Whether the child is still running (reaps it if not).
    pub fn is_alive(&self) -> bool {
        matches!(self.exitcode_result(), Ok(None))
    }

    /// The exit code, if the child has ended (reaps it).
    pub fn exitcode(&self) -> Option<i32> {
        self.exitcode_result().ok().flatten()
    }

    pub(crate) fn exitcode_result(&self) -> Result<Option<i32>> {
        let code = self.0.try_wait()?;
        if code.is_some() {
            forget_child(&self.0);
        }
        Ok(code)
    }

    /// Waits for the child to end; returns its exit code.
    pub fn join(&self) -> Result<i32> {
        Ok(self
            .0
            .wait(None)?
            .expect("waiting without a deadline ends with an exit code"))
    }

    /// Waits at most `timeout`; `Ok(None)` if still running.
    pub fn join_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.0.wait(Some(timeout))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        self.0.signal(Signal::TERM)
    }

    /// Sends SIGKILL.
    pub fn kill(&self) -> Result<()> {
        self.0.signal(Signal::KILL)
    }
}

impl fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("name", &self.0.name)
            .field("pid", &self.pid())
            .finish()
    }
}

/// Children started by this process and not yet known to have ended.
static REGISTRY: Mutex<Vec<ProcessHandle>> = Mutex::new(Vec::new());

/// Adds a started child to the table.
pub(crate) fn register(handle: ProcessHandle) {
    let _fork = atfork::hold();
    REGISTRY.lock().push(handle);
}

fn forget_child(child: &Child) {
    let _fork = atfork::hold();
    REGISTRY
        .lock()
        .retain(|h| !std::ptr::eq(Arc::as_ptr(&h.0), child));
}

/// Reaps children that have ended (Python's `process._cleanup()`).
pub(crate) fn reap_finished() {
    let children = {
        let _fork = atfork::hold();
        REGISTRY.lock().clone()
    };
    for child in children {
        let _ = child.exitcode_result();
    }
}

/// The children of this process that are still running; reaps those that have ended.
///
/// Python: `multiprocessing.active_children()`.
pub fn active_children() -> Vec<ProcessHandle> {
    reap_finished();
    let _fork = atfork::hold();
    REGISTRY.lock().clone()
}

/// In a new child: it has no children yet (a fork child inherited its parent's table).
pub(crate) fn reset_registry() {
    let _fork = atfork::hold();
    REGISTRY.lock().clear();
}

/// How long the exit handler waits for each non-daemon child (`None`: as long as it takes).
static EXIT_JOIN_TIMEOUT: Mutex<Option<Duration>> = Mutex::new(None);

/// Bounds how long the exit handler waits for each non-daemon child still running when the
/// program exits; a child still running after that is killed (SIGKILL), with a line on stderr.
///
/// By default (`None`) the handler waits as long as it takes, as Python's does. Test
/// harnesses set a bound so that a child left blocked by a failed check is reported instead of
/// hanging the run (multiproc's own test harness sets 60 s).
pub fn set_exit_join_timeout(timeout: Option<Duration>) {
    let _fork = atfork::hold();
    *EXIT_JOIN_TIMEOUT.lock() = timeout;
}

/// Python's `util._exit_function`: terminate daemon children, then join every child.
/// A daemon that ignores SIGTERM for 5 s is killed; a non-daemon is waited for as long as
/// [`set_exit_join_timeout`] allows.
pub(crate) fn exit_cleanup() {
    let children = {
        let _fork = atfork::hold();
        let mut registry = REGISTRY.lock();
        if registry.is_empty() {
            // Nothing to free either: in a fork child the table's allocation is the parent's
            // (a free would cost page faults).
            return;
        }
        std::mem::take(&mut *registry)
    };
    for child in children.iter().filter(|c| c.daemon()) {
        let _ = child.terminate();
    }
    let bound = {
        let _fork = atfork::hold();
        *EXIT_JOIN_TIMEOUT.lock()
    };
    for child in &children {
        if child.daemon() && matches!(child.join_timeout(Duration::from_secs(5)), Ok(None)) {
            let _ = child.kill();
        }
        if let Some(bound) = bound.filter(|_| !child.daemon()) {
            if matches!(child.join_timeout(bound), Ok(None)) {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "multiproc: {} (pid {}) still running {bound:?} after the program's end; killed",
                    child.name(),
                    child.pid()
                );
                let _ = child.kill();
            }
        }
        let _ = child.join();
    }
}

extern "C" fn exit_handler() {
    let _ = std::panic::catch_unwind(exit_cleanup);
}

pub(crate) fn install_exit_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = sys::register_atexit(exit_handler);
    });
}
