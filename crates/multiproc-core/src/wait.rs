//! Waiting on fds with deadlines (pidfds, sentinels, sockets).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// Waits until `fd` is readable (or hung up) or `timeout` passes; `None` waits forever.
/// Returns whether it became ready. EINTR is retried with the time left.
pub(crate) fn readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(|l| {
            Timespec::try_from(l).unwrap_or(Timespec {
                tv_sec: i64::MAX / 2,
                tv_nsec: 0,
            })
        });
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Kills the process behind `pidfd` and reaps it (it must be our child): for a child that can
/// no longer be used (it died before reading its record, a forkserver or spare that stopped
/// answering).
pub(crate) fn kill_and_reap(pidfd: BorrowedFd<'_>) {
    let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd),
        rustix::process::WaitIdOptions::EXITED,
    );
}
