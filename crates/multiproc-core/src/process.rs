//! [`Process`]: Python's `multiprocessing.Process`, and [`Context`]: `get_context(method)`.

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::boot::ChildInfo;
use crate::boot::Target;
use crate::error::{Error, Result};
use crate::fnref::{FnRef, FnRefError, RawFnRef};
use crate::launch::children::{self, Child, ProcessHandle};
use crate::launch::{fork, forkserver, launcher, spawn};
use crate::method::{StartMethod, get_start_method};
use crate::reduction::{self, ReductionError};
use crate::runtime::bootstrap;
use crate::state;

struct FnTarget<A> {
    f: fn(A),
    args: A,
}

impl<A: Serialize + DeserializeOwned + Send + 'static> Target for FnTarget<A> {
    fn entry(&self) -> Result<RawFnRef, FnRefError> {
        FnRef::new(self.f).map(|r| r.raw())
    }

    fn encode_args(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ReductionError> {
        reduction::encode(&self.args)
    }

    fn run(self: Box<Self>) {
        // Not freed: in a fork child a free writes pages shared with the parent (page faults),
        // and the process ends when the target returns.
        let FnTarget { f, args } = crate::sys::take_leaking(self);
        f(args)
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
        children::reap_finished();
        children::install_exit_handler();
        bootstrap::install_panic_banner();
        let info = state::child_info(&self.name, &self.identity, self.daemon, method, self.method);
        let target = self.target.take().expect("checked above");
        // A daemon's parent-death signal follows the creating thread: create daemons from a
        // thread that lives as long as the process (the forkserver's children are the
        // server's, whose only thread is that).
        let started =
            if self.daemon && method != StartMethod::Forkserver && !launcher::on_main_thread() {
                launcher::run(move || start_child(method, info, target))
                    .map_err(Error::os("starting a daemon on the launcher thread"))?
            } else {
                start_child(method, info, target)
            };
        let child = match started {
            Ok(child) => child,
            Err((e, target)) => {
                self.target = Some(target);
                return Err(e);
            }
        };
        let handle = ProcessHandle(Arc::new(child));
        children::register(handle.clone());
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
    /// together with other fds (`poll`, [`multiproc::wait`]). It is the child's pidfd under
    /// every start method (under forkserver the server hands it over with the child's pid).
    ///
    /// [`multiproc::wait`]: ../multiproc/fn.wait.html
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

/// Creates the child under `method`; on failure hands the target back (the `Process` can be
/// started again). In a fork child this never returns.
#[allow(clippy::type_complexity)]
fn start_child(
    method: StartMethod,
    mut info: ChildInfo,
    target: Box<dyn Target>,
) -> std::result::Result<Child, (Error, Box<dyn Target>)> {
    let made = match method {
        StartMethod::Fork => match fork::fork() {
            Ok(None) => bootstrap::run_forked(&mut info, target),
            Ok(Some(pid)) => Child::own(pid, &info),
            Err(e) => Err(e),
        },
        StartMethod::Spawn => spawn::start(info, &*target),
        StartMethod::Forkserver => forkserver::start(info, &*target),
    };
    // Python drops its references to target and args once started.
    made.map_err(|e| (e, target))
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
    let info = state::child_info("Helper", &[], false, StartMethod::Spawn, None);
    let child = spawn::start(info, &FnTarget { f: target, args })?;
    let pid = child.pid.as_raw_nonzero().get() as u32;
    // Kept (not reaped here) so that its pidfd stays open; it is reaped by whoever inherits it.
    let _fork = crate::atfork::hold();
    HELPERS.lock().push(child);
    Ok(pid)
}

/// Creates processes (and, in later layers, every other object) with one start method.
///
/// Python: `multiprocessing.get_context(method)`.
///
/// ```
/// use multiproc_core::{get_context, StartMethod};
///
/// let ctx = get_context(StartMethod::Spawn);
/// let mut p = ctx.process(|n: u32| assert_eq!(n, 7), 7);
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), 0);
/// assert_eq!(p.name(), "SpawnProcess-1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// The [`Context`] of a start method.
pub fn get_context(method: StartMethod) -> Context {
    Context { method }
}

impl Context {
    /// The start method of this context.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A new, not yet started process that will run `target(args)` with this context's method.
    pub fn process<A>(&self, target: fn(A), args: A) -> Process
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        Process::with_method(target, args, Some(self.method))
    }
}
