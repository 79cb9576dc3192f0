//! The forkserver's loop (in a spawned child): keep a spare child forked ahead of requests,
//! hand each request to it, report every child's exit code after reaping it. The protocol is
//! described in [`crate::launch::forkserver`].

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use crate::boot::{Boot, BootKind, MAX_BOOT_RECORD};
use crate::runtime::bootstrap::{self, Launch};
use crate::{fdpass, sys};

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
                bootstrap::run_job(*job, fds, Launch::Served { server })
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

/// Does once in the server what every child would otherwise do for itself, so that the
/// children inherit it done: each page a fork child writes is a copy-on-write fault (~3 µs
/// here), and `perf record -e page-faults` showed a third of a child's faults in these two.
fn warm_up_for_children() {
    // The panic banner's hook (a `Once`, the hook lock, an allocation).
    bootstrap::install_panic_banner();
    // glibc binds `calloc` and `_dl_find_dso_for_object` lazily inside
    // `__cxa_thread_atexit_impl` (on the first thread-local with a destructor): resolving
    // them in every child wrote the GOT and paged in the loader's lookup code.
    thread_local!(static REGISTERED: std::cell::RefCell<Vec<u8>> = const {
        std::cell::RefCell::new(Vec::new())
    });
    REGISTERED.with(|v| v.borrow_mut().clear());
}

/// The server's loop, in a spawned child. Never returns.
pub(crate) fn serve(control: OwnedFd) -> ! {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // Once for all children (Python gives every child a /dev/null stdin).
    bootstrap::stdin_to_dev_null();
    // Look the executable up once here (its identity, its code segments, the tree's key), so
    // that every forked child inherits the answers for the check of its job's function
    // reference instead of finding them again (every page a fork child writes is a copy).
    let _ = crate::exe::current_id();
    let _ = crate::exe::is_code(0);
    warm_up_for_children();
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
