//! The forkserver's loop (in a spawned child): keep a spare child forked ahead of requests and
//! announced to the client, fork the next one when the client takes it, report every child's
//! exit code after reaping it. The protocol is described in [`crate::launch::forkserver`].

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use crate::boot::{Boot, BootKind, MAX_BOOT_RECORD};
use crate::launch::forkserver;
use crate::runtime::bootstrap::{self, Launch};
use crate::{fdpass, sys};

struct Served {
    pidfd: OwnedFd,
    status: OwnedFd,
}

/// A child forked ahead of time, waiting on `sock` for its job, which the client sends it
/// directly (the server hands the client `sock`): the fork is off the request's path.
struct Spare {
    pid: Pid,
    pidfd: OwnedFd,
    sock: OwnedFd,
}

impl Spare {
    /// Kills and reaps a spare that cannot be announced.
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
    // The client holds the other end of the job socket, so the server's death alone does not
    // end a spare: it also watches the server, and leaves if the server dies before a job
    // came (a job already there is run: its start has returned, as for any child started
    // just before its server died).
    if !job_or_server_gone(&sock, server) {
        sys::exit_child(0);
    }
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
        // The client ended (or dropped the spare) before giving it any work.
        _ => sys::exit_child(0),
    }
}

/// Waits until the job socket is readable (`true`: a job, or the client's end closed) or the
/// server has ended (`false`).
fn job_or_server_gone(sock: &OwnedFd, server: i32) -> bool {
    let Some(server) = Pid::from_raw(server)
        .and_then(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok())
    else {
        // Gone already (or no fd left to watch it): only the job socket can say more.
        return true;
    };
    loop {
        let mut fds = [
            PollFd::new(sock, PollFlags::IN),
            PollFd::new(&server, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return true,
        }
        if !fds[0].revents().is_empty() {
            return true;
        }
        if !fds[1].revents().is_empty() {
            return false;
        }
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
    // The first spare at once; each next one when the client says it took the last.
    let mut spare_wanted = true;
    loop {
        if std::mem::take(&mut spare_wanted)
            && let Some(sock) = announce(&control, &mut children)
        {
            // In the new spare: only the server keeps the control socket and the children.
            drop(control);
            drop(children);
            run_spare(sock, me)
        }
        let (control_ready, ready) = {
            let mut fds = Vec::with_capacity(children.len() + 1);
            fds.push(PollFd::new(&control, PollFlags::IN));
            fds.extend(
                children
                    .iter()
                    .map(|c| PollFd::new(&c.pidfd, PollFlags::IN)),
            );
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => sys::exit_child(1),
            }
            let ready: Vec<usize> = (1..fds.len())
                .filter(|&i| !fds[i].revents().is_empty())
                .collect();
            (!fds[0].revents().is_empty(), ready)
        };
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
            let mut byte = [0u8; 1];
            match rustix::io::read(&control, &mut byte) {
                Ok(1) if byte[0] == forkserver::TAKEN => spare_wanted = true,
                Err(rustix::io::Errno::INTR) => {}
                // EOF (the client process ended) or a byte that is not ours. Daemon children
                // die with us; a spare not yet taken sees its job socket close and exits.
                _ => sys::exit_child(0),
            }
        }
    }
}

/// Forks the next spare and announces it to the client: its pid, with its pidfd, the client's
/// end of its job socket and of its status socket (pid 0 and the errno if the fork failed).
/// In the spare, returns its job socket.
fn announce(control: &OwnedFd, children: &mut Vec<Served>) -> Option<OwnedFd> {
    let spare = match fork_spare() {
        Ok(Forked::Child(sock)) => return Some(sock),
        Ok(Forked::Server(spare)) => Ok(spare),
        Err(e) => Err(e),
    };
    let announced = spare.and_then(|spare| match fdpass::socketpair() {
        Ok(pair) => Ok((spare, pair)),
        Err(e) => {
            spare.discard();
            Err(e)
        }
    });
    let mut msg = [0u8; 8];
    match announced {
        Ok((spare, (status, theirs))) => {
            msg[..4].copy_from_slice(&spare.pid.as_raw_nonzero().get().to_le_bytes());
            let fds = [spare.pidfd.as_fd(), spare.sock.as_fd(), theirs.as_fd()];
            let _ = fdpass::send_bytes_with_fds(control.as_fd(), &msg, &fds);
            children.push(Served {
                pidfd: spare.pidfd,
                status,
            });
        }
        Err(e) => {
            msg[4..].copy_from_slice(&e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes());
            let _ = fdpass::send_bytes_with_fds(control.as_fd(), &msg, &[]);
        }
    }
    None
}
