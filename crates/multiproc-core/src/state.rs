//! Identity of the calling process: Python's `current_process()` and `parent_process()`.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use parking_lot::RwLock;

use crate::boot::ChildInfo;
use crate::method::StartMethod;

struct State {
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    authkey: [u8; 32],
    parent: Option<ParentProcess>,
    method: Option<StartMethod>,
    /// Children created so far (Python's `_process_counter`), for `Process-N` names.
    counter: u32,
}

static STATE: RwLock<Option<State>> = RwLock::new(None);

fn main_state() -> State {
    let mut authkey = [0u8; 32];
    // getrandom only fails on ancient kernels; a zero key is then still a valid key.
    let _ = rustix::rand::getrandom(&mut authkey, rustix::rand::GetRandomFlags::empty());
    State {
        name: "MainProcess".into(),
        identity: Vec::new(),
        daemon: false,
        authkey,
        parent: None,
        method: None,
        counter: 0,
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let _fork = crate::atfork::hold();
    let mut guard = STATE.write();
    f(guard.get_or_insert_with(main_state))
}

/// Installs the identity a child received from its parent, taking its strings (in a fork
/// child every allocation, free or large move touches a page shared with the parent or a code
/// page not yet mapped, each a fault: this writes the parent's state in place and frees
/// nothing).
pub(crate) fn become_child(info: &mut ChildInfo) {
    // As CPython's `_bootstrap`: a Process made by a context forces that context's method.
    crate::method::force_start_method(info.context_method.or(info.global_method));
    crate::fnref::set_tree_key(info.fn_key);
    if let Some(cwd) = &info.cwd {
        // As Python's spawn preparation does; a directory that vanished is not fatal.
        let _ = std::env::set_current_dir(cwd);
    }
    // A forkserver child's OS parent is the server, so the logical parent's pidfd is opened
    // now, while the parent is known to be alive (it is waiting for our pid). Fork and spawn
    // children are the parent's own: their pidfd is opened on first use, and checked then
    // against getppid() (a parent that died meanwhile re-parented us).
    let pidfd = match info.method {
        StartMethod::Forkserver => {
            let fd = rustix::process::Pid::from_raw(info.parent_pid).and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            });
            ParentFd::Opened(fd)
        }
        StartMethod::Fork | StartMethod::Spawn => ParentFd::Lazy,
    };
    let parent_pid = info.parent_pid as u32;
    let _fork = crate::atfork::hold();
    // A pidfd this process held of its own parent is closed (nothing to free: `ParentFd` owns
    // no memory). The parent's strings below are forgotten, not freed: a free would only cost
    // page faults in a fork child.
    *PARENT_FD.lock() = (parent_pid, pidfd);
    let mut guard = STATE.write();
    // A spawned child has no state yet; a fork child overwrites its parent's in place.
    let state = guard.get_or_insert_with(|| State {
        name: String::new(),
        identity: Vec::new(),
        daemon: false,
        authkey: [0; 32],
        parent: None,
        method: None,
        counter: 0,
    });
    std::mem::forget(std::mem::replace(
        &mut state.name,
        std::mem::take(&mut info.name),
    ));
    std::mem::forget(std::mem::replace(
        &mut state.identity,
        std::mem::take(&mut info.identity),
    ));
    state.daemon = info.daemon;
    state.authkey = info.authkey;
    std::mem::forget(state.parent.replace(ParentProcess {
        name: std::mem::take(&mut info.parent_name),
        pid: parent_pid,
    }));
    state.method = Some(info.method);
    state.counter = 0;
}

/// The name to print above a child's panic (`Process NAME:`), if this process is a child;
/// `None` also if the state is busy (the panic happened while it was locked).
pub(crate) fn child_name_for_panic() -> Option<String> {
    let state = STATE.try_read()?;
    let state = state.as_ref()?;
    state.parent.as_ref().map(|_| state.name.clone())
}

/// The next child identity (`[.., n]`) and the parent's daemon flag.
pub(crate) fn next_child_identity() -> (Vec<u32>, bool) {
    with(|s| {
        s.counter += 1;
        let mut id = s.identity.clone();
        id.push(s.counter);
        (id, s.daemon)
    })
}

/// The identity a child of this process is started with.
pub(crate) fn child_info(
    name: &str,
    identity: &[u32],
    daemon: bool,
    method: StartMethod,
    context_method: Option<StartMethod>,
) -> ChildInfo {
    let fn_key = crate::fnref::tree_key();
    with(|s| ChildInfo {
        name: name.to_string(),
        identity: identity.to_vec(),
        daemon,
        authkey: s.authkey,
        fn_key,
        parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
        parent_name: s.name.clone(),
        method,
        context_method,
        global_method: crate::method::start_method_if_set(),
        cwd: None,
    })
}

/// The calling process, as Python's `multiprocessing.current_process()` describes it.
#[derive(Clone)]
#[non_exhaustive]
pub struct CurrentProcess {
    /// `"MainProcess"` in the main process, the child's name in a child.
    pub name: String,
    /// The OS process id.
    pub pid: u32,
    /// Whether this process is a daemon (daemons may not start children).
    pub daemon: bool,
    /// The position in the process tree: `[]` for the main process, `[2]` for its second child,
    /// `[2, 1]` for that child's first child.
    pub identity: Vec<u32>,
    /// 32 random bytes made by the main process and inherited by every child (used to
    /// authenticate connections between them).
    pub authkey: [u8; 32],
    /// How this process was started (`None` in the main process).
    pub start_method: Option<StartMethod>,
}

impl std::fmt::Debug for CurrentProcess {
    /// Every field but the authkey, which is a secret (printed as `<hidden>`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentProcess")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("daemon", &self.daemon)
            .field("identity", &self.identity)
            .field("authkey", &"<hidden>")
            .field("start_method", &self.start_method)
            .finish()
    }
}

/// The calling process: name, pid, daemon flag, identity and authkey.
///
/// ```
/// let me = multiproc_core::current_process();
/// assert_eq!(me.name, "MainProcess");
/// assert_eq!(me.pid, std::process::id());
/// ```
pub fn current_process() -> CurrentProcess {
    with(|s| CurrentProcess {
        name: s.name.clone(),
        pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
        daemon: s.daemon,
        identity: s.identity.clone(),
        authkey: s.authkey,
        start_method: s.method,
    })
}

/// The process that started this one; `None` in the main process.
///
/// Python: `multiprocessing.parent_process()`.
pub fn parent_process() -> Option<ParentProcess> {
    with(|s| s.parent.clone())
}

/// The parent of the calling process (the process that created it, also under the forkserver
/// method, where the OS parent is the server).
#[derive(Debug, Clone)]
pub struct ParentProcess {
    name: String,
    pid: u32,
}

/// The pid of this process's parent and its pidfd (one per process, so a child allocates
/// nothing for it).
static PARENT_FD: parking_lot::Mutex<(u32, ParentFd)> =
    parking_lot::Mutex::new((0, ParentFd::Lazy));

/// The parent's pidfd: opened at start (forkserver children), or on first use.
#[derive(Debug)]
enum ParentFd {
    Lazy,
    Opened(Option<OwnedFd>),
}

impl ParentProcess {
    /// The parent's name (`"MainProcess"` for children of the main process).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the parent is still running.
    pub fn is_alive(&self) -> bool {
        !self.join_timeout(Duration::ZERO)
    }

    /// Waits up to `timeout` for the parent to exit; returns whether it did.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        let fd = {
            // As every state lock: never held across a fork (a fork child would find it taken).
            let _fork = crate::atfork::hold();
            let mut slot = PARENT_FD.lock();
            if slot.0 != self.pid {
                // A value carried over a fork: it names the parent of the process that
                // forked, which is not ours, so it is looked up by its pid.
                rustix::process::Pid::from_raw(self.pid as i32).and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
                })
            } else {
                if let ParentFd::Lazy = slot.1 {
                    slot.1 = ParentFd::Opened(self.open_own_parent());
                }
                match &slot.1 {
                    ParentFd::Opened(Some(fd)) => fd.try_clone().ok(),
                    _ => None,
                }
            }
        };
        match fd {
            Some(fd) => crate::wait::readable(fd.as_fd(), Some(timeout)).unwrap_or(true),
            None => true,
        }
    }

    /// The pidfd of our OS parent (fork and spawn children), if it is still the parent: a
    /// parent that died re-parented us, and its pid may since name another process.
    fn open_own_parent(&self) -> Option<OwnedFd> {
        let pid = rustix::process::Pid::from_raw(self.pid as i32)?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
        (rustix::process::getppid() == Some(pid)).then_some(fd)
    }
}
