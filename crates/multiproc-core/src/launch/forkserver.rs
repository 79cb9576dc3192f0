//! The forkserver start method, client side: a small single-threaded server, spawned on first
//! use, forks children on request and reports their exit codes (the server's loop is
//! [`crate::runtime::serve`]).
//!
//! Protocol, over the server's bootstrap socket (the only way to reach it: it listens on
//! nothing, so no other local user can ask it to run code). The server keeps one child forked
//! ahead of time, a *spare*, and announces it to the client before anyone asks:
//! - announcement, server → client: `[pid: i32 LE][errno: i32 LE]` with the fds
//!   `[pidfd, job, status]` attached: the spare's pidfd, the client's end of the spare's job
//!   socket and the client's end of its status socket (pid 0, an errno and no fds if the fork
//!   failed);
//! - `start()` takes the announcement, sends the job (a [`Boot`](crate::boot::Boot) record of
//!   kind `Run` with the arguments' fds) straight to the spare, then one byte, [`TAKEN`], to the
//!   server, which forks and announces the next spare while the job runs;
//! - the server reaps every child it forked and writes its `[exit code: i32 LE]` on its status
//!   socket, on which the client waits (then on the pidfd, if the server died first).
//!
//! So a start wakes only the spare, and a join only the client: the request never waits for
//! the server, which a request/reply protocol would wake once more before the child runs.
//! A spare watches the server's pidfd until its job comes and leaves if the server dies
//! first; the client checks the server's pidfd before taking an announcement, which may
//! still be queued after the server's death.
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

/// The byte that tells the server its announced spare was taken (whether or not the job
/// reached it): fork and announce the next one.
pub(crate) const TAKEN: u8 = 1;

/// Starts `target` as a child of the forkserver.
pub(crate) fn start(mut info: ChildInfo, target: &dyn Target) -> Result<Child> {
    // The server's working directory is the one it was launched in; send the current one.
    info.cwd = std::env::current_dir().ok();
    let (record, fds) = spawn::job(info.clone(), target)?;
    let fds = fdpass::borrow_all(&fds);
    // A server that died (killed, or the machine's OOM killer) is replaced once; a spare that
    // died before its job reached it (killed by someone) is replaced by the next one.
    let mut server_deaths = 0;
    for _ in 0..4 {
        let _fork = crate::atfork::hold();
        let mut guard = SERVER.lock();
        let spare = match next_spare(&mut guard)? {
            Some(spare) => spare,
            None if server_deaths == 0 => {
                server_deaths += 1;
                continue;
            }
            None => break,
        };
        let delivered = fdpass::send_msg(spare.job.as_fd(), &record, &fds).is_ok();
        drop(spare.job);
        // Whatever became of the job, the server forks the next spare now, while it runs.
        if !taken(guard.as_ref().expect("a spare came from it")) {
            retire(guard.take().expect("present"));
        }
        if delivered {
            return Ok(Child::new(
                spare.pid,
                spare.pidfd,
                Waiter::Served {
                    status: spare.status,
                },
                &info,
            ));
        }
    }
    Err(Error::Forkserver(
        "the forkserver died twice while handling a request".into(),
    ))
}

/// Tells `server` its announced spare was taken; `false` if it is gone.
fn taken(server: &Server) -> bool {
    rustix::net::send(
        server.control.as_fd(),
        &[TAKEN],
        rustix::net::SendFlags::NOSIGNAL,
    )
    .is_ok()
}

/// A spare the server announced: the job goes to `job`, the exit code comes on `status`.
struct Announced {
    pid: Pid,
    pidfd: OwnedFd,
    job: OwnedFd,
    status: OwnedFd,
}

/// Takes the server's announced spare (launching the server first if there is none, or if
/// this process is a fork child of the one that launched it); `Ok(None)` if the server turned
/// out to be dead (it was retired, so the next call launches a new one).
fn next_spare(guard: &mut Option<Server>) -> Result<Option<Announced>> {
    if guard
        .as_ref()
        .is_some_and(|s| s.owner != sys::current_pid())
    {
        *guard = None;
    }
    if let Some(server) = guard.as_ref() {
        // Its announcement may still be queued after its death (its spare then died with it).
        if crate::wait::readable(server.pidfd.as_fd(), Some(std::time::Duration::ZERO))
            .unwrap_or(true)
        {
            retire(guard.take().expect("present"));
            return Ok(None);
        }
    }
    if guard.is_none() {
        *guard = Some(launch()?);
    }
    let server = guard.as_ref().expect("just launched");
    let mut msg = [0u8; 8];
    let got = fdpass::recv_with_fds(server.control.as_fd(), &mut msg)
        .map_err(|e| Error::Forkserver(e.to_string()))?;
    let Some(got) = got else {
        // End-of-file: the server died.
        retire(guard.take().expect("present"));
        return Ok(None);
    };
    let pid = i32::from_le_bytes(msg[..4].try_into().expect("4 bytes"));
    let errno = i32::from_le_bytes(msg[4..].try_into().expect("4 bytes"));
    let mut got = got.into_iter();
    match (Pid::from_raw(pid), got.next(), got.next(), got.next()) {
        (Some(pid), Some(pidfd), Some(job), Some(status)) => Ok(Some(Announced {
            pid,
            pidfd,
            job,
            status,
        })),
        (pid, ..) => {
            // Either the fork failed, or the kernel could not give us the fds (none left in
            // this process): that spare is lost (its job socket closes with what we dropped).
            // Either way the server announces another for the next start.
            taken(server);
            Err(match pid {
                None => Error::Os {
                    op: "fork (in the forkserver)",
                    source: std::io::Error::from_raw_os_error(errno),
                },
                Some(_) => Error::Forkserver(
                    "the forkserver's new child came without its fds (no fd left in this \
                     process?)"
                        .into(),
                ),
            })
        }
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
