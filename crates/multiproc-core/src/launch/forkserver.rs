//! The forkserver start method, client side: a small single-threaded server, spawned on first
//! use, forks children on request and reports their exit codes (the server's loop is
//! [`crate::runtime::serve`]).
//!
//! Protocol, over the server's bootstrap socket (the only way to reach it: it listens on
//! nothing, so no other local user can ask it to run code):
//! - request: a [`Boot`](crate::boot::Boot) record of kind `Run`, with fds `[status, arg fds…]`
//!   where `status` is one end of a fresh socketpair whose other end the client keeps;
//! - on `status` the server answers `[pid: i32 LE][errno: i32 LE]` with the child's pidfd
//!   attached (pid 0 and an errno if fork failed), and, once it has reaped the child,
//!   `[exit code: i32 LE]`. The client waits on the pidfd (readable when the child ends), then
//!   reads the code.
//!
//! The server exits when the control socket reaches EOF (the client process ended); daemon
//! children die with it (their parent-death signal).

use std::os::fd::{AsFd, OwnedFd};

use parking_lot::Mutex;
use rustix::process::{Pid, PidfdFlags};

use crate::boot::{Boot, BootKind, ChildInfo, Target};
use crate::error::{Error, Result};
use crate::launch::children::{Child, Waiter};
use crate::launch::spawn;
use crate::{exe, fdpass, sys};

struct Server {
    control: OwnedFd,
    pid: Pid,
    pidfd: OwnedFd,
    /// The process that started the server; a fork child inheriting this must not use it.
    owner: u32,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

fn launch() -> Result<Server> {
    spawn::check_reexecutable()?;
    let boot = Boot {
        exe: exe::parent_exe_id().map_err(Error::NotReexecutable)?,
        kind: BootKind::Forkserver,
    };
    let record = postcard::to_allocvec(&boot).map_err(|e| Error::Forkserver(e.to_string()))?;
    let (pid, control) = spawn::spawn_raw(&record, &[])?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
        .map_err(Error::errno("pidfd_open"))?;
    Ok(Server {
        control,
        pid,
        pidfd,
        owner: sys::current_pid(),
    })
}

/// Stops and reaps a server that stopped answering.
fn retire(server: Server) {
    drop(server.control);
    crate::wait::kill_and_reap(server.pidfd.as_fd());
}

/// In a fork child: close the inherited connection to the parent's server (so the server still
/// sees EOF when the parent ends) without touching the server itself.
pub(crate) fn forget_inherited() {
    // No thread held it at the fork (the fork lock), so this never blocks.
    *SERVER.lock() = None;
}

/// The pid of the running forkserver, if this process started one.
pub fn forkserver_pid() -> Option<u32> {
    let _fork = crate::atfork::hold();
    SERVER
        .lock()
        .as_ref()
        .filter(|s| s.owner == sys::current_pid())
        .map(|s| s.pid.as_raw_nonzero().get() as u32)
}

/// Starts `target` as a child of the forkserver.
pub(crate) fn start(mut info: ChildInfo, target: &dyn Target) -> Result<Child> {
    // The server's working directory is the one it was launched in; send the current one.
    info.cwd = std::env::current_dir().ok();
    let (record, fds) = spawn::job(info.clone(), target)?;
    // A server that died (killed, or the machine's OOM killer) is replaced once: when sending
    // fails, or when it closes a request without answering.
    for attempt in 0..2 {
        match request(&record, &fds)? {
            Some((pid, pidfd, status)) => {
                return Ok(Child::new(pid, pidfd, Waiter::Served { status }, &info));
            }
            None if attempt == 0 => continue,
            None => break,
        }
    }
    Err(Error::Forkserver(
        "the forkserver died twice while handling a request".into(),
    ))
}

/// Sends one request; `Ok(None)` if the server turned out to be dead (it was retired, so the
/// next request starts a new one).
fn request(record: &[u8], fds: &[OwnedFd]) -> Result<Option<(Pid, OwnedFd, OwnedFd)>> {
    let (mine, theirs) = fdpass::socketpair().map_err(Error::os("socketpair"))?;
    let mut passed = vec![theirs.as_fd()];
    passed.extend(fdpass::borrow_all(fds));
    let server_pid = {
        let _fork = crate::atfork::hold();
        let mut guard = SERVER.lock();
        if guard
            .as_ref()
            .is_some_and(|s| s.owner != sys::current_pid())
        {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(launch()?);
        }
        let server = guard.as_ref().expect("just launched");
        if fdpass::send_msg(server.control.as_fd(), record, &passed).is_err() {
            retire(guard.take().expect("present"));
            return Ok(None);
        }
        server.pid
    };
    drop(passed);
    drop(theirs);
    let mut reply = [0u8; 8];
    let got = fdpass::recv_with_fds(mine.as_fd(), &mut reply)
        .map_err(|e| Error::Forkserver(e.to_string()))?;
    let Some(got) = got else {
        // The server closed our status socket unanswered: it died with the request queued.
        let _fork = crate::atfork::hold();
        let mut guard = SERVER.lock();
        if guard.as_ref().is_some_and(|s| s.pid == server_pid) {
            retire(guard.take().expect("present"));
        }
        return Ok(None);
    };
    let pid = i32::from_le_bytes(reply[..4].try_into().expect("4 bytes"));
    let errno = i32::from_le_bytes(reply[4..].try_into().expect("4 bytes"));
    match (Pid::from_raw(pid), got.into_iter().next()) {
        (Some(pid), Some(pidfd)) => Ok(Some((pid, pidfd, mine))),
        _ => Err(Error::Os {
            op: "fork (in the forkserver)",
            source: std::io::Error::from_raw_os_error(errno),
        }),
    }
}

/// Exit code recorded for a forkserver child whose server died before reporting its status
/// (the child was re-parented and reaped by someone else; CPython records 255 too).
pub const LOST_STATUS: i32 = 255;

/// The exit code of a forkserver child whose pidfd is readable (it has ended), as the server
/// reports it once it has reaped the child (so no zombie is left when `join` returns);
/// [`LOST_STATUS`] if the server died without reporting.
pub(crate) fn exit_code(status: &OwnedFd) -> i32 {
    let mut code = [0u8; 4];
    match fdpass::read_exact(status.as_fd(), &mut code) {
        Ok(true) => i32::from_le_bytes(code),
        Ok(false) | Err(_) => LOST_STATUS,
    }
}
