//! [`Process`]: Python's `multiprocessing.Process`, and the table of this process's children.

use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Once};
use std::time::Duration;

use parking_lot::Mutex;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::method::{StartMethod, get_start_method};
use crate::reduction::{self, ReductionError};
use crate::state::{self, ChildInfo};
use crate::sys::fnptr::Entry;
use crate::{child, forkserver, spawn, sys};

/// What a process runs: a `fn(A)` and its arguments.
pub(crate) trait Target: Send {
    /// Where the child jumps after exec, or `None` if the fn is not in the main image.
    fn entry(&self) -> Option<Entry>;
    /// The arguments, encoded with their fds.
    fn encode_args(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ReductionError>;
    /// Runs in a fork child, on the inherited memory.
    fn run(self: Box<Self>);
}

struct FnTarget<A> {
    f: fn(A),
    args: A,
}

impl<A: Serialize + DeserializeOwned + Send + 'static> Target for FnTarget<A> {
    fn entry(&self) -> Option<Entry> {
        Entry::new(self.f)
    }

    fn encode_args(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ReductionError> {
        reduction::encode(&self.args)
    }

    fn run(self: Box<Self>) {
        (self.f)(self.args)
    }
}

/// A child process: `Process::new(target, args)` then [`start`](Process::start) and
/// [`join`](Process::join), as in Python.
///
/// The target is a `fn(A)`: a function, a non-capturing closure, or a method taking `self`
/// (Python's "subclass of Process with `run()`" becomes a struct with a `run(self)` method).
/// The arguments are moved into the child: under fork they are the parent's memory, under spawn
/// and forkserver they travel postcard-encoded, with the fds of handles such as a
/// `Connection` passed alongside.
///
/// ```
/// use multiproc_core::Process;
///
/// fn greet(name: String) {
///     println!("hello, {name}");
/// }
///
/// multiproc_core::init();
/// let mut p = Process::new(greet, "bob".to_string());
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), 0);
/// assert_eq!(p.exitcode(), Some(0));
/// ```
///
/// ```python
/// from multiprocessing import Process
///
/// def greet(name):
///     print('hello,', name)
///
/// if __name__ == '__main__':
///     p = Process(target=greet, args=('bob',))
///     p.start()
///     p.join()
/// ```
pub struct Process {
    name: String,
    daemon: bool,
    method: Option<StartMethod>,
    identity: Vec<u32>,
    target: Option<Box<dyn Target>>,
    child: Option<ProcessHandle>,
    closed: bool,
}

impl Process {
    /// A new, not yet started process that will run `target(args)` with the start method in
    /// force when [`start`](Process::start) is called.
    pub fn new<A>(target: fn(A), args: A) -> Process
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        Process::with_method(target, args, None)
    }

    pub(crate) fn with_method<A>(target: fn(A), args: A, method: Option<StartMethod>) -> Process
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let (identity, daemon) = state::next_child_identity();
        let class = method.map_or("Process", StartMethod::process_class);
        let numbers: Vec<String> = identity.iter().map(u32::to_string).collect();
        Process {
            name: format!("{class}-{}", numbers.join(":")),
            daemon,
            method,
            identity,
            target: Some(Box::new(FnTarget { f: target, args })),
            child: None,
            closed: false,
        }
    }

    /// The process name (`Process-1`, `Process-2:1`, `SpawnProcess-3` … by default).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the process; the child sees the new name if this happens before `start`.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Whether the process is a daemon: terminated when the parent exits, and not allowed to
    /// start children of its own. Inherited from the creating process by default.
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// Sets the daemon flag; only before `start`.
    pub fn set_daemon(&mut self, daemon: bool) -> Result<()> {
        if self.child.is_some() {
            return Err(Error::AlreadyStartedSetting);
        }
        self.daemon = daemon;
        Ok(())
    }

    /// The start method fixed for this process (by a [`Context`](crate::Context)), if any.
    pub fn start_method(&self) -> Option<StartMethod> {
        self.method
    }

    /// Starts the child.
    ///
    /// Errors: [`Error::AlreadyStarted`], [`Error::Closed`], [`Error::DaemonCannotHaveChildren`]
    /// in a daemon, [`Error::ForkWithThreads`] for fork in a threaded parent, and the OS errors
    /// of creating it. Finished children are reaped first, as Python does.
    pub fn start(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        if self.child.is_some() || self.target.is_none() {
            return Err(Error::AlreadyStarted);
        }
        if state::current_process().daemon {
            return Err(Error::DaemonCannotHaveChildren);
        }
        let method = self.method.unwrap_or_else(get_start_method);
        reap_finished();
        install_exit_handler();
        let info = state::child_info(&self.name, &self.identity, self.daemon, method);
        let child = match method {
            StartMethod::Fork => fork_child(info, &mut self.target)?,
            StartMethod::Spawn => {
                spawn::start(info, self.target.as_deref().expect("checked above"))?
            }
            StartMethod::Forkserver => {
                forkserver::start(info, self.target.as_deref().expect("checked above"))?
            }
        };
        // Python drops its references to target and args once started.
        self.target = None;
        let handle = ProcessHandle(Arc::new(child));
        REGISTRY.lock().push(handle.clone());
        self.child = Some(handle);
        Ok(())
    }

    fn started(&self) -> Result<&ProcessHandle> {
        if self.closed {
            return Err(Error::Closed);
        }
        self.child.as_ref().ok_or(Error::NotStarted)
    }

    /// Waits for the child to exit and returns its exit code (see [`exitcode`](Self::exitcode)).
    /// May be called any number of times.
    pub fn join(&self) -> Result<i32> {
        let child = self.started()?;
        let code = child.join()?;
        Ok(code)
    }

    /// Waits at most `timeout`; `Ok(None)` if the child is still running.
    pub fn join_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.started()?.join_timeout(timeout)
    }

    /// Whether the child has started and not yet exited; reaps it if it has exited.
    pub fn is_alive(&self) -> bool {
        self.started().is_ok_and(ProcessHandle::is_alive)
    }

    /// `None` while running or before start; `0` after a normal return, `n` after
    /// `std::process::exit(n)`, `1` after a panic, `-N` after being killed by signal N.
    pub fn exitcode(&self) -> Option<i32> {
        self.started().ok().and_then(ProcessHandle::exitcode)
    }

    /// The child's pid once started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ProcessHandle::pid)
    }

    /// Sends SIGTERM (a no-op once the child has been reaped).
    pub fn terminate(&self) -> Result<()> {
        self.started()?.terminate()
    }

    /// Sends SIGKILL (a no-op once the child has been reaped).
    pub fn kill(&self) -> Result<()> {
        self.started()?.kill()
    }

    /// An fd that becomes readable when the child ends (Python's `sentinel`), to wait for it
    /// together with other fds (`poll`). It is the child's pidfd under fork and spawn, and the
    /// status socket on which the forkserver reports the exit code under forkserver.
    pub fn sentinel(&self) -> Result<BorrowedFd<'_>> {
        Ok(self.started()?.0.sentinel())
    }

    /// A cloneable handle on the started child (the same thing `active_children` returns).
    pub fn handle(&self) -> Option<ProcessHandle> {
        self.child.clone()
    }

    /// Releases the process's resources; an error while the child runs. Idempotent.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        if let Some(child) = &self.child {
            if child.exitcode().is_none() {
                return Err(Error::StillRunning);
            }
        }
        self.child = None;
        self.target = None;
        self.closed = true;
        Ok(())
    }
}

impl fmt::Debug for Process {
    /// Python's repr: `<Process name='Process-1' pid=12 parent=10 started daemon>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Process name={:?}", self.name)?;
        match (&self.child, self.closed) {
            (_, true) => write!(f, " closed")?,
            (None, _) => write!(f, " initial")?,
            (Some(c), _) => match c.exitcode() {
                None => write!(f, " pid={} started", c.pid())?,
                Some(code) => write!(f, " pid={} stopped exitcode={code}", c.pid())?,
            },
        }
        if self.daemon {
            write!(f, " daemon")?;
        }
        write!(f, ">")
    }
}

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

    /// Our own OS child: opens its pidfd.
    pub(crate) fn own(pid: Pid, info: &ChildInfo) -> Result<Child> {
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
            .map_err(Error::errno("pidfd_open"))?;
        Ok(Child::new(pid, pidfd, Waiter::Own, info))
    }

    /// Readable once the child has ended (whatever the start method: we hold its pidfd).
    fn sentinel(&self) -> BorrowedFd<'_> {
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
                Some(forkserver::exit_code(status, self.pid)?)
            }
        };
        Ok(*code)
    }

    /// Waits up to `timeout` (forever with `None`).
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<i32>> {
        if let Some(code) = *self.exitcode.lock() {
            return Ok(Some(code));
        }
        if !crate::wait::readable(self.sentinel(), timeout).map_err(Error::os("poll"))? {
            return Ok(None);
        }
        let code = self.try_wait()?;
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
/// [`Process::handle`] gives to other threads.
#[derive(Clone)]
pub struct ProcessHandle(Arc<Child>);

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

    fn exitcode_result(&self) -> Result<Option<i32>> {
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

/// Starts `target(args)` in a re-executed (spawn) child that is a helper of this process, not
/// one of its children in Python's sense: `active_children` does not list it, the exit handler
/// neither terminates nor joins it, and it does not die with this process. Meant for services
/// that must outlive their creator, such as the resource tracker of named shared memory; the
/// helper must end by itself (for example when a pipe from its creator reaches end-of-file).
/// Returns its pid.
pub fn spawn_helper<A>(target: fn(A), args: A) -> Result<u32>
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    static HELPERS: Mutex<Vec<Child>> = Mutex::new(Vec::new());
    // Not numbered like processes (Python's resource tracker is not a Process either): the
    // names of the program's own children stay Process-1, Process-2, …
    let info = state::child_info("Helper", &[], false, StartMethod::Spawn);
    let child = spawn::start(info, &FnTarget { f: target, args })?;
    let pid = child.pid.as_raw_nonzero().get() as u32;
    // Kept (not reaped here) so that its pidfd stays open; it is reaped by whoever inherits it.
    HELPERS.lock().push(child);
    Ok(pid)
}

/// Children started by this process and not yet known to have ended.
static REGISTRY: Mutex<Vec<ProcessHandle>> = Mutex::new(Vec::new());

fn forget_child(child: &Child) {
    REGISTRY
        .lock()
        .retain(|h| !std::ptr::eq(Arc::as_ptr(&h.0), child));
}

/// Reaps children that have ended (Python's `process._cleanup()`).
fn reap_finished() {
    let children = REGISTRY.lock().clone();
    for child in children {
        let _ = child.exitcode_result();
    }
}

/// The children of this process that are still running; reaps those that have ended.
///
/// Python: `multiprocessing.active_children()`.
pub fn active_children() -> Vec<ProcessHandle> {
    reap_finished();
    REGISTRY.lock().clone()
}

/// In a new child: it has no children yet (a fork child inherited its parent's table).
pub(crate) fn reset_registry() {
    REGISTRY.lock().clear();
}

/// Python's `util._exit_function`: terminate daemon children, then join every child.
/// A daemon that ignores SIGTERM for 5 s is killed.
pub(crate) fn exit_cleanup() {
    let children = std::mem::take(&mut *REGISTRY.lock());
    for child in children.iter().filter(|c| c.daemon()) {
        let _ = child.terminate();
    }
    for child in &children {
        if child.daemon() && matches!(child.join_timeout(Duration::from_secs(5)), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.join();
    }
}

extern "C" fn exit_handler() {
    let _ = std::panic::catch_unwind(exit_cleanup);
}

fn install_exit_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = sys::register_atexit(exit_handler);
    });
}

/// Threads of this process. procfs gives `/proc/self/task` a link count of 2 plus the number
/// of threads: one `stat`, no allocation (listing the directory cost ~10x more per start).
fn thread_count() -> usize {
    match rustix::fs::stat("/proc/self/task") {
        Ok(st) if st.st_nlink >= 3 => st.st_nlink as usize - 2,
        _ => std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count),
    }
}

fn fork_child(info: ChildInfo, target: &mut Option<Box<dyn Target>>) -> Result<Child> {
    if !sys::fork_with_threads_allowed() {
        let threads = thread_count();
        if threads > 1 {
            return Err(Error::ForkWithThreads { threads });
        }
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    match sys::fork().map_err(Error::os("fork"))? {
        None => child::run_forked(&info, target.take().expect("start checked the target")),
        Some(pid) => Child::own(pid, &info),
    }
}
