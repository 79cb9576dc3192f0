//! The `handshake` target: Python's authkey challenge/response ([`server_handshake`],
//! [`client_handshake`]) against a peer that sends arbitrary bytes.
//!
//! Input: `[mode] [stream …]`. Bit 0 of `mode` picks the side we play (the listener's, which
//! challenges first, or the client's, which answers first); the stream (at most 4 KiB, which a
//! socket buffer holds) is what the peer sends, written whole before the handshake starts and
//! followed by the end of the peer's writing.
//! Rules checked:
//! - no panic, no hang (the stream ends, so every read ends);
//! - the handshake fails (nobody can forge the answer to our random challenge), with a typed
//!   error: `Authentication`, the end of the stream, a bad or too long message;
//! - no single allocation beyond 64 KiB whatever a header claims (handshake messages are read
//!   with a 256-byte limit).

use std::time::Duration;

use multiproc_ipc::{Error, client_handshake, server_handshake, socketpair};

const KEY: &[u8] = b"fuzzing key";
const MAX_STREAM: usize = 4096;
const MAX_ALLOCATION: usize = 64 << 10;

/// Runs one input; panics when it breaks a rule.
pub fn run(data: &[u8]) {
    let (mode, stream) = data.split_first().unwrap_or((&0, &[]));
    let stream = &stream[..stream.len().min(MAX_STREAM)];
    let (mut ours, peer) = socketpair().expect("a socketpair");
    let peer_fd = peer.write_fd().expect("a duplex end");
    let mut written = 0;
    while written < stream.len() {
        written += rustix::io::write(peer_fd, &stream[written..]).expect("room in the buffer");
    }
    rustix::net::shutdown(peer_fd, rustix::net::Shutdown::Write).expect("shutdown");
    crate::reset_largest_allocation();
    let timeout = Some(Duration::from_secs(10));
    let result = if mode & 1 == 0 {
        server_handshake(&mut ours, KEY, timeout)
    } else {
        client_handshake(&mut ours, KEY, timeout)
    };
    let largest = crate::largest_allocation();
    assert!(
        largest <= MAX_ALLOCATION,
        "an allocation of {largest} bytes during a handshake"
    );
    match result {
        Ok(()) => panic!("a handshake succeeded against a peer that cannot know the key"),
        Err(
            Error::Authentication(_)
            | Error::Eof
            | Error::Truncated { .. }
            | Error::MessageTooLarge { .. }
            | Error::InvalidLength(_)
            | Error::Poisoned
            | Error::BrokenPipe,
        ) => {}
        Err(e) => panic!("an untyped or unexpected handshake error: {e:?}"),
    }
    drop(peer);
}
