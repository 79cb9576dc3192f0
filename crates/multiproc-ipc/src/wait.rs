//! [`wait`]: block until any of several connections, process sentinels or fds is ready
//! (Python's `multiprocessing.connection.wait`).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::{Connection, Error, Reader};

/// Something [`wait`] can wait on: a [`Connection`], a [`Reader`], or anything that is
/// [`AsFd`] (a process sentinel from `Process::sentinel()`, a socket, a pipe end …), which is
/// ready when its fd is readable or at its end.
pub trait Waitable {
    /// The fd whose readability means ready.
    ///
    /// # Errors
    ///
    /// Why the object cannot be waited on (a closed or write-only connection).
    fn wait_fd(&self) -> Result<BorrowedFd<'_>, Error>;

    /// Whether the object is ready without looking at its fd (a connection with a whole
    /// message already read ahead). `false` by default.
    fn ready_now(&self) -> bool {
        false
    }
}

impl<T: AsFd + ?Sized> Waitable for T {
    fn wait_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        Ok(self.as_fd())
    }
}

impl Waitable for Connection {
    fn wait_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.readable_fd()
    }

    fn ready_now(&self) -> bool {
        self.has_buffered_message()
    }
}

impl Waitable for Reader {
    fn wait_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.0.wait_fd()
    }

    fn ready_now(&self) -> bool {
        self.0.ready_now()
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no timeout);
/// returns the indices of the ready ones, in order (empty on timeout). Python's
/// `multiprocessing.connection.wait(object_list, timeout)`, which returns the objects.
///
/// A [`Connection`] is ready when a message (or the end of the stream) can be received: a
/// whole message it already read ahead counts without looking at the fd. A process sentinel
/// is ready when the process has ended. Mix kinds with `&dyn Waitable`:
///
/// ```
/// use std::time::Duration;
/// use multiproc_ipc::{Waitable, pipe, wait};
///
/// let (mut a, b) = pipe()?;
/// let (c, mut d) = pipe()?;
/// let (r, _w) = rustix::pipe::pipe().unwrap();
/// d.send_bytes(b"for c")?;
/// let objects: [&dyn Waitable; 3] = [&b, &c, &r];
/// assert_eq!(wait(&objects, Some(Duration::from_secs(60)))?, [1]);
/// assert!(wait(&objects, Some(Duration::ZERO)).is_ok());
/// a.send_bytes(b"for b")?;
/// assert_eq!(wait(&[&b, &c], None)?, [0, 1]);
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// ```python
/// from multiprocessing.connection import wait
/// ready = wait([b, c, p.sentinel], timeout=60)
/// ```
///
/// # Errors
///
/// The error of an object that cannot be waited on (a closed or write-only connection:
/// [`Error::Closed`], [`Error::NotReadable`], [`Error::Poisoned`]); [`Error::Io`] when
/// `poll()` fails.
pub fn wait<T: Waitable + ?Sized>(
    objects: &[&T],
    timeout: Option<Duration>,
) -> Result<Vec<usize>, Error> {
    let fds = objects
        .iter()
        .map(|o| o.wait_fd())
        .collect::<Result<Vec<_>, _>>()?;
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let buffered: Vec<bool> = objects.iter().map(|o| o.ready_now()).collect();
    // Something already buffered: report it with whatever else is ready now.
    let deadline = if buffered.contains(&true) {
        Some(Instant::now())
    } else {
        // A deadline too far to represent is no deadline.
        timeout.and_then(|t| Instant::now().checked_add(t))
    };
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timespec = remaining.and_then(|r| Timespec::try_from(r).ok());
        match rustix::event::poll(&mut polls, timespec.as_ref()) {
            Ok(_) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
    Ok(polls
        .iter()
        .zip(buffered)
        .enumerate()
        .filter(|(_, (p, buffered))| *buffered || !p.revents().is_empty())
        .map(|(i, _)| i)
        .collect())
}
