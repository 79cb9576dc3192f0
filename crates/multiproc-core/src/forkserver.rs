//! The forkserver start method: a small single-threaded server, spawned on first use, forks
//! children on request and reports their exit codes.
//!
//! Protocol, over the server's bootstrap socket (the only way to reach it: it listens on
//! nothing, so no other local user can ask it to run code):
//! - request: a [`Boot`](crate::child::Boot) record of kind `Run`, with fds `[status, arg fds…]`
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
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use crate::child::{self, Boot, BootKind, Launch, MAX_BOOT_RECORD};
use crate::error::{Error, Result};
use crate::process::{Child, Target, Waiter};
use crate::state::ChildInfo;
use crate::{exe, fdpass, spawn, sys};

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
    if let Some(mut guard) = SERVER.try_lock() {
        *guard = None;
    }
}

/// The pid of the running forkserver, if this process started one.
pub fn forkserver_pid() -> Option<u32> {
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

/// The exit code of a forkserver child whose pidfd is readable (it has ended), as the server
/// reports it once it has reaped the child (so no zombie is left when `join` returns). An error
/// if the server died without reporting.
pub(crate) fn exit_code(status: &OwnedFd, pid: Pid) -> Result<i32> {
    let mut code = [0u8; 4];
    match fdpass::read_exact(status.as_fd(), &mut code) {
        Ok(true) => Ok(i32::from_le_bytes(code)),
        Ok(false) | Err(_) => Err(Error::Forkserver(format!(
            "the forkserver died before reporting the exit status of pid {pid}"
        ))),
    }
}

struct Served {
    pidfd: OwnedFd,
    status: OwnedFd,
}

/// A child forked ahead of time, waiting on `sock` for the job of the next request: the
/// server answers a request by handing it over, so the fork is off the request's path.
struct Spare {
    pid: Pid,
    pidfd: OwnedFd,
    sock: OwnedFd,
}

impl Spare {
    /// Kills and reaps a spare that can no longer take work.
    fn discard(self) {
        crate::wait::kill_and_reap(self.pidfd.as_fd());
    }
}

/// What `fork` made of the server: still the server, or the new spare child.
enum Forked<T> {
    Server(T),
    Child(OwnedFd),
}

/// Forks a spare child. In the child, returns `Forked::Child` with its end of the job socket.
fn fork_spare() -> std::io::Result<Forked<Spare>> {
    let (mine, theirs) = fdpass::socketpair()?;
    match sys::fork()? {
        None => {
            drop(mine);
            Ok(Forked::Child(theirs))
        }
        Some(pid) => {
            drop(theirs);
            match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
                Ok(pidfd) => Ok(Forked::Server(Spare {
                    pid,
                    pidfd,
                    sock: mine,
                })),
                Err(e) => {
                    // Cannot track it: closing `mine` makes it exit; reap it.
                    drop(mine);
                    let _ =
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                    Err(e.into())
                }
            }
        }
    }
}

/// A spare child: waits for its job, then runs it. Never returns.
fn run_spare(sock: OwnedFd, server: i32) -> ! {
    match fdpass::recv_msg(sock.as_fd(), MAX_BOOT_RECORD) {
        Ok(Some((record, fds))) => match postcard::from_bytes::<Boot>(&record) {
            Ok(Boot {
                kind: BootKind::Run(job),
                ..
            }) => {
                drop(sock);
                child::run_job(job, fds, Launch::Served { server })
            }
            _ => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"multiproc: a forkserver child received a malformed record\n",
                );
                sys::exit_child(1)
            }
        },
        // The server ended before giving this spare any work.
        _ => sys::exit_child(0),
    }
}

/// The server's loop, in a spawned child. Never returns.
pub(crate) fn serve(control: OwnedFd) -> ! {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // Once for all children (Python gives every child a /dev/null stdin).
    child::stdin_to_dev_null();
    let mut children: Vec<Served> = Vec::new();
    let mut spare: Option<Spare> = None;
    loop {
        // Without a spare, only look at what is ready; if nothing is, fork the spare.
        let idle_check = spare.is_none();
        let (control_ready, ready) = {
            let mut fds = Vec::with_capacity(children.len() + 1);
            fds.push(PollFd::new(&control, PollFlags::IN));
            fds.extend(
                children
                    .iter()
                    .map(|c| PollFd::new(&c.pidfd, PollFlags::IN)),
            );
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, idle_check.then_some(&zero)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => sys::exit_child(1),
            }
            let ready: Vec<usize> = (1..fds.len())
                .filter(|&i| !fds[i].revents().is_empty())
                .collect();
            (!fds[0].revents().is_empty(), ready)
        };
        if idle_check && !control_ready && ready.is_empty() {
            match fork_spare() {
                Ok(Forked::Server(s)) => spare = Some(s),
                Ok(Forked::Child(sock)) => {
                    // In the spare: drop the server's fds (control socket, the children's
                    // pidfds and status sockets) so only the server holds them.
                    drop(control);
                    drop(children);
                    run_spare(sock, me)
                }
                // Requests will fork on demand (and report the error).
                Err(_) => {}
            }
            continue;
        }
        for i in ready.into_iter().rev() {
            let child = children.swap_remove(i - 1);
            let status = loop {
                match rustix::process::waitid(
                    WaitId::PidFd(child.pidfd.as_fd()),
                    WaitIdOptions::EXITED,
                ) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other,
                }
            };
            let code = match status {
                Ok(Some(s)) => s
                    .exit_status()
                    .or(s.terminating_signal().map(|sig| -sig))
                    .unwrap_or(255),
                _ => 255,
            };
            let _ = rustix::net::send(
                &child.status,
                &code.to_le_bytes(),
                rustix::net::SendFlags::NOSIGNAL,
            );
        }
        if control_ready {
            match fdpass::recv_msg(control.as_fd(), MAX_BOOT_RECORD) {
                Ok(Some((record, fds))) => match handle(&record, fds, &mut spare) {
                    Some(Forked::Server(served)) => children.push(served),
                    Some(Forked::Child(sock)) => {
                        drop(control);
                        drop(children);
                        run_spare(sock, me)
                    }
                    None => {}
                },
                // EOF: the client process ended. Daemon children die with us; the spare sees
                // its socket close and exits.
                Ok(None) | Err(_) => sys::exit_child(0),
            }
        }
    }
}

/// Hands a request to the spare (forking one if there is none, or if it died) and answers
/// the client; `None` if the request was malformed or fork failed (reported to the client).
fn handle(
    record: &[u8],
    mut fds: Vec<OwnedFd>,
    spare: &mut Option<Spare>,
) -> Option<Forked<Served>> {
    if fds.is_empty() {
        return None;
    }
    let status = fds.remove(0);
    let reply = |pid: i32, errno: i32, pidfd: Option<&OwnedFd>| {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&pid.to_le_bytes());
        msg[4..].copy_from_slice(&errno.to_le_bytes());
        let fds: Vec<_> = pidfd.iter().map(|f| f.as_fd()).collect();
        let _ = fdpass::send_bytes_with_fds(status.as_fd(), &msg, &fds);
    };
    for _ in 0..2 {
        let worker = match spare.take() {
            Some(worker) => worker,
            None => match fork_spare() {
                Ok(Forked::Server(worker)) => worker,
                Ok(Forked::Child(sock)) => return Some(Forked::Child(sock)),
                Err(e) => {
                    reply(0, e.raw_os_error().unwrap_or(libc::EIO), None);
                    return None;
                }
            },
        };
        if fdpass::send_msg(worker.sock.as_fd(), record, &fdpass::borrow_all(&fds)).is_err() {
            // The spare died while waiting (killed by someone): replace it once.
            worker.discard();
            continue;
        }
        let Spare { pid, pidfd, sock } = worker;
        drop(sock);
        reply(pid.as_raw_nonzero().get(), 0, Some(&pidfd));
        return Some(Forked::Server(Served { pidfd, status }));
    }
    reply(0, libc::EAGAIN, None);
    None
}
