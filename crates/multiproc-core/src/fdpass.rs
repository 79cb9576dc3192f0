//! Length-prefixed messages with file descriptors attached (`SCM_RIGHTS`) over a Unix stream
//! socket: the bootstrap record of a spawned child and the requests to the forkserver.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The kernel's limit on fds in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Sends `payload` with a 4-byte little-endian length and `fds` attached to its first byte.
pub(crate) fn send_msg(
    sock: BorrowedFd<'_>,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "cannot pass {} fds at once (limit {MAX_FDS})",
            fds.len()
        )));
    }
    let len =
        u32::try_from(payload.len()).map_err(|_| io::Error::other("record larger than 4 GiB"))?;
    let header = len.to_le_bytes();
    send_parts_with_fds(sock, &header, payload, fds)
}

/// Sends `data` with `fds` attached to its first byte.
pub(crate) fn send_bytes_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_parts_with_fds(sock, data, &[], fds)
}

fn send_parts_with_fds(
    sock: BorrowedFd<'_>,
    header: &[u8],
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(header), IoSlice::new(payload)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    // The fds went with the first bytes; the rest is plain data.
    let total = header.len() + payload.len();
    let mut done = sent;
    while done < total {
        let n = if done < header.len() {
            write(sock, &header[done..])?
        } else {
            write(sock, &payload[done - header.len()..])?
        };
        done += n;
    }
    Ok(())
}

fn write(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(sock, buf, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Reads into `buf` until it is full; `Ok(false)` on EOF before the first byte.
pub(crate) fn read_exact(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::read(sock, &mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed inside a record",
                ));
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Receives `header` bytes plus any fds attached to them; `Ok(None)` on clean EOF.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    header: &mut [u8],
) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        let mut iov = [IoSliceMut::new(header)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?.bytes,
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() && !read_exact(sock, &mut header[got..])? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed inside a record",
        ));
    }
    Ok(Some(fds))
}

/// Receives one message sent by [`send_msg`]; `Ok(None)` on clean EOF.
pub(crate) fn recv_msg(
    sock: BorrowedFd<'_>,
    max_len: usize,
) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut header = [0u8; 4];
    let Some(fds) = recv_with_fds(sock, &mut header)? else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header) as usize;
    if len > max_len {
        return Err(io::Error::other(format!(
            "record of {len} bytes exceeds the limit of {max_len}"
        )));
    }
    let mut payload = vec![0u8; len];
    if !read_exact(sock, &mut payload)? && len > 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed inside a record",
        ));
    }
    Ok(Some((payload, fds)))
}

/// A connected pair of close-on-exec Unix stream sockets.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Borrows every fd of a slice.
pub(crate) fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_with_fds_round_trips() {
        let (a, b) = socketpair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let big = vec![7u8; 300_000];
        let writer = std::thread::spawn(move || {
            send_msg(a.as_fd(), &big, &[r.as_fd(), w.as_fd()]).unwrap();
            send_msg(a.as_fd(), b"", &[]).unwrap();
        });
        let (payload, fds) = recv_msg(b.as_fd(), 1 << 20).unwrap().unwrap();
        assert_eq!(payload.len(), 300_000);
        assert_eq!(fds.len(), 2);
        rustix::io::write(&fds[1], b"x").unwrap();
        let mut one = [0u8];
        rustix::io::read(&fds[0], &mut one).unwrap();
        assert_eq!(&one, b"x");
        let (payload, fds) = recv_msg(b.as_fd(), 1 << 20).unwrap().unwrap();
        assert!(payload.is_empty() && fds.is_empty());
        writer.join().unwrap();
        assert!(recv_msg(b.as_fd(), 1 << 20).unwrap().is_none());
    }
}
