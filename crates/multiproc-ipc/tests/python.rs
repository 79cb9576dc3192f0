//! Interoperability with Python's own `multiprocessing.connection.Connection`, both ways.
//!
//! A `python3` child reads messages from its stdin and answers on its stdout, each wrapped in a
//! Python `Connection`. The pipe fds reach the child as its stdin and stdout (std's `Command`
//! installs them with `dup2`, which leaves them inheritable), so no other fd is made
//! inheritable: nothing leaks into processes that other tests of this binary start meanwhile.
//! Skipped, with a note, when `python3` cannot be started, except under CI (`CI` set to
//! `true` or `1`, as CI services and `.ci/run` set it), where a missing `python3` fails.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use multiproc_ipc::{Connection, Error};
use rustix::pipe::{PipeFlags, pipe_with};

const SCRIPT: &str = r#"
from multiprocessing.connection import Connection
r = Connection(0, writable=False)
w = Connection(1, readable=False)
while True:
    try:
        message = r.recv_bytes()
    except EOFError:
        break
    w.send_bytes(b"py:" + message)
w.send_bytes(b"")
w.send_bytes(bytes(range(256)) * 400)
w.send(None)
"#;

/// Kills and reaps the child if the test fails midway.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn write_raw(fd: impl AsFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = rustix::io::write(&fd, bytes).unwrap();
        bytes = &bytes[n..];
    }
}

fn prefixed(message: &[u8]) -> Vec<u8> {
    [b"py:".as_slice(), message].concat()
}

#[test]
fn python_connection_reads_and_writes_our_messages() {
    let (child_in, to_child): (OwnedFd, OwnedFd) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    let (from_child, child_out): (OwnedFd, OwnedFd) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    let to_python = Connection::from_fds(None, Some(to_child));
    let from_python = Connection::from_fds(Some(from_child), None);
    interop(child_in, child_out, to_python, from_python);
}

/// The same over a socketpair (what Python's own `Pipe()` is, and what
/// `multiproc_ipc::socketpair()` makes): Python's `Connection` reads and writes one socket.
#[test]
fn python_connection_over_a_socketpair() {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (mine, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let theirs_out = rustix::io::fcntl_dupfd_cloexec(&theirs, 0).unwrap();
    let mine_write = rustix::io::fcntl_dupfd_cloexec(&mine, 0).unwrap();
    let conn = Connection::from_fds(Some(mine), Some(mine_write));
    assert!(conn.carries_handles());
    let to_python = conn.try_clone().unwrap();
    interop(theirs, theirs_out, to_python, conn);
}

/// Runs the script with `child_in`/`child_out` as its stdin/stdout; sends on `to_python`
/// (from a thread, then shuts its write direction down), checks what comes on `from_python`.
fn interop(
    child_in: OwnedFd,
    child_out: OwnedFd,
    mut to_python: Connection,
    mut from_python: Connection,
) {
    // The Command is dropped right after spawning, closing our copies of the child's ends.
    let spawned = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::from(child_in))
        .stdout(Stdio::from(child_out))
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => Reap(child),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "python3 cannot be started ({e}), and CI is set: the interop test must run"
            );
            eprintln!("note: python3 cannot be started ({e}); skipping the interop test");
            return;
        }
    };

    let sent: Vec<Vec<u8>> = vec![
        b"abc".to_vec(),
        Vec::new(),
        payload(16384),
        payload(16385),
        payload(1 << 20),
    ];
    let expected: Vec<Vec<u8>> = sent.iter().map(|m| prefixed(m)).collect();
    // A writer thread, so that Python's answers never wait for our sends to finish.
    let writer = thread::spawn(move || {
        for message in &sent {
            to_python.send_bytes(message).unwrap();
        }
        // The 12-byte large-message header is accepted by Python for any length.
        write_raw(
            to_python.write_fd().unwrap(),
            b"\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x05hello",
        );
        // Python sees EOF only when no write direction to it is left open (a socket's read
        // side stays open in `from_python`).
        let fd = to_python.write_fd().unwrap();
        if rustix::fs::fstat(fd)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_socket())
        {
            rustix::net::shutdown(fd, rustix::net::Shutdown::Write).unwrap();
        }
    });

    let mut recv = |what: &str| {
        assert!(
            from_python.poll(Some(Duration::from_secs(60))).unwrap(),
            "no answer from python for {what}"
        );
        from_python.recv_bytes()
    };
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&recv("an echo").unwrap(), want, "echo {i}");
    }
    assert_eq!(recv("the large-header echo").unwrap(), b"py:hello");
    writer.join().unwrap();

    assert_eq!(recv("an empty message").unwrap(), b"");
    let big: Vec<u8> = (0..=255u8).cycle().take(256 * 400).collect();
    assert_eq!(recv("a 102400-byte message").unwrap(), big);
    // `send(None)` pickles with protocol 4 on Python 3.11 to 3.13.
    assert_eq!(recv("a pickle").unwrap(), b"\x80\x04N.");
    assert!(matches!(recv("the end"), Err(Error::Eof)));

    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "python failed: {status}\n{stderr}");
}
