//! Python's authkey challenge/response over a [`Connection`]: [`deliver_challenge`] and
//! [`answer_challenge`] (`multiprocessing.connection.deliver_challenge` /
//! `answer_challenge`), byte-compatible with CPython 3.11 (HMAC-MD5) and 3.12+ (`{sha256}`).
//!
//! The deliverer sends `#CHALLENGE#` and a random message, the answerer replies with an HMAC
//! of that message under the shared key, and the deliverer answers `#WELCOME#` or
//! `#FAILURE#`. A [`Listener`](crate::Listener) delivers then answers; a
//! [`Client`](crate::Client) answers then delivers, so both ends prove they hold the key.
//!
//! The challenge sent here is CPython 3.12's: `{sha256}` followed by 40 random bytes. Its
//! answers may be a `{sha256}` (or `{sha384}`) HMAC of the whole message, prefix included, or
//! the raw 16-byte HMAC-MD5 that a Python 3.11 client computes over the same bytes. A 20-byte
//! challenge from a Python 3.11 peer is answered with a raw HMAC-MD5; a prefixed one with the
//! digest it names. Digests are compared in constant time.
//!

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};

use crate::{Connection, Error};

/// The first bytes of a challenge message.
pub(crate) const CHALLENGE: &[u8] = b"#CHALLENGE#";
/// The deliverer's answer to a right digest.
pub(crate) const WELCOME: &[u8] = b"#WELCOME#";
/// The deliverer's answer to a wrong digest.
pub(crate) const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge (CPython 3.12's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// A challenge of a Python 3.11 deliverer: 20 random bytes, no prefix.
const MD5ONLY_MESSAGE_LENGTH: usize = 20;
/// A raw HMAC-MD5 answer.
const MD5_DIGEST_LEN: usize = 16;
/// The longest digest name CPython accepts (`sha3_256`, `sha3_384`).
const MAX_DIGEST_NAME: usize = 8;
/// The longest handshake message read (CPython's `recv_bytes(256)`).
pub(crate) const MAX_HANDSHAKE_MESSAGE: usize = 256;

/// A digest of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    /// Raw HMAC-MD5, no prefix (Python ≤ 3.11, and what 3.12+ accepts from it).
    LegacyMd5,
    /// `{md5}`: HMAC-MD5 with the prefix.
    Md5,
    /// `{sha256}`, what CPython 3.12+ offers.
    Sha256,
    /// `{sha384}`.
    Sha384,
}

impl Digest {
    fn name(self) -> &'static [u8] {
        match self {
            Digest::LegacyMd5 | Digest::Md5 => b"md5",
            Digest::Sha256 => b"sha256",
            Digest::Sha384 => b"sha384",
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length.
            let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::LegacyMd5 | Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
        }
    }

    /// Checks `mac` against the HMAC of `message` in constant time.
    fn verify(self, key: &[u8], message: &[u8], mac: &[u8]) -> bool {
        fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8], mac: &[u8]) -> bool {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(message);
            m.verify_slice(mac).is_ok()
        }
        match self {
            Digest::LegacyMd5 | Digest::Md5 => run::<Hmac<md5::Md5>>(key, message, mac),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message, mac),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message, mac),
        }
    }

    fn len(self) -> usize {
        match self {
            Digest::LegacyMd5 | Digest::Md5 => 16,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
        }
    }
}

/// Splits a challenge or a response into its digest and payload (CPython's
/// `_get_digest_name_and_payload`): 16 or 20 bytes are the legacy form, otherwise a
/// `{name}` prefix names the digest.
fn digest_and_payload(message: &[u8]) -> Result<(Digest, &[u8]), Error> {
    if message.len() == MD5ONLY_MESSAGE_LENGTH || message.len() == MD5_DIGEST_LEN {
        return Ok((Digest::LegacyMd5, message));
    }
    let close = message
        .iter()
        .take(MAX_DIGEST_NAME + 2)
        .position(|&b| b == b'}');
    if let (Some(b'{'), Some(close)) = (message.first(), close) {
        let digest = match &message[1..close] {
            b"md5" => Some(Digest::Md5),
            b"sha256" => Some(Digest::Sha256),
            b"sha384" => Some(Digest::Sha384),
            b"sha3_256" | b"sha3_384" => {
                return Err(Error::Authentication(format!(
                    "the digest {} is not supported here (md5, sha256 and sha384 are)",
                    String::from_utf8_lossy(&message[1..close])
                )));
            }
            _ => None,
        };
        if let Some(digest) = digest {
            return Ok((digest, &message[close + 1..]));
        }
    }
    Err(Error::Authentication(format!(
        "unsupported message length, missing digest prefix, or unsupported digest: message={}",
        escape(message)
    )))
}

/// The answer to a challenge message (CPython's `_create_response`): a raw HMAC-MD5 for a
/// legacy challenge, `{name}` and the named HMAC of the whole message otherwise.
fn create_response(authkey: &[u8], message: &[u8]) -> Result<Vec<u8>, Error> {
    let (digest, _) = digest_and_payload(message)?;
    let mac = digest.mac(authkey, message);
    if digest == Digest::LegacyMd5 {
        return Ok(mac);
    }
    let mut response = Vec::with_capacity(mac.len() + MAX_DIGEST_NAME + 2);
    response.push(b'{');
    response.extend_from_slice(digest.name());
    response.push(b'}');
    response.extend_from_slice(&mac);
    Ok(response)
}

/// Checks the answer to our challenge `message` (CPython's `_verify_challenge`): the answer
/// may use any supported digest, since its MAC covers the whole challenge, prefix included.
fn verify_response(authkey: &[u8], message: &[u8], response: &[u8]) -> Result<(), Error> {
    let (digest, mac) = digest_and_payload(response)?;
    if mac.len() != digest.len() {
        return Err(Error::Authentication(format!(
            "expected '{}' of length {} got {}",
            String::from_utf8_lossy(digest.name()),
            digest.len(),
            mac.len()
        )));
    }
    if !digest.verify(authkey, message, mac) {
        return Err(Error::Authentication("digest received was wrong".into()));
    }
    Ok(())
}

/// Proves to the peer that we hold `authkey` by checking it holds the same (Python's
/// `multiprocessing.connection.deliver_challenge(connection, authkey)`), with the `{sha256}`
/// challenge of CPython 3.12+.
///
/// Sends a challenge, checks the answer (a `{sha256}`/`{sha384}`/`{md5}` HMAC, or the raw
/// HMAC-MD5 a Python 3.11 peer sends) in constant time, and sends `#WELCOME#` or
/// `#FAILURE#`. Handshake messages longer than 256 bytes are refused, as in Python. Waits for
/// the peer without a deadline; a [`Listener`](crate::Listener) applies one (see
/// [`server_handshake`]). `authkey` may be empty (a valid key in Python too).
///
/// Both sides of the handshake, as a listener and a client run it:
///
/// ```
/// use std::thread;
/// use multiproc_ipc::{answer_challenge, deliver_challenge, socketpair};
///
/// let (mut server, mut client) = socketpair()?;
/// let t = thread::spawn(move || -> Result<_, multiproc_ipc::Error> {
///     answer_challenge(&mut client, b"secret")?;
///     deliver_challenge(&mut client, b"secret")?;
///     Ok(client)
/// });
/// deliver_challenge(&mut server, b"secret")?;
/// answer_challenge(&mut server, b"secret")?;
/// let mut client = t.join().unwrap()?;
/// client.send_bytes(b"authenticated")?;
/// assert_eq!(server.recv_bytes()?, b"authenticated");
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Authentication`] when the answer is wrong (the peer was told `#FAILURE#`) or is
/// not a handshake message; [`Error::Eof`] / [`Error::Io`] … when the connection fails.
pub fn deliver_challenge(conn: &mut Connection, authkey: &[u8]) -> Result<(), Error> {
    deliver(conn, authkey, None)
}

/// Proves to the peer that we hold `authkey` by answering its challenge (Python's
/// `multiprocessing.connection.answer_challenge(connection, authkey)`).
///
/// Answers a `{sha256}` (or `{md5}`, `{sha384}`) challenge of Python 3.12+ with the prefixed
/// HMAC, and a 20-byte challenge of Python 3.11 with the raw HMAC-MD5, then waits for
/// `#WELCOME#`.
///
/// See [`deliver_challenge`] for an example.
///
/// # Errors
///
/// [`Error::Authentication`] when the peer rejected our answer (another key), when the first
/// message is not a challenge, or names an unsupported digest; [`Error::Eof`] /
/// [`Error::Io`] … when the connection fails.
pub fn answer_challenge(conn: &mut Connection, authkey: &[u8]) -> Result<(), Error> {
    answer(conn, authkey, None)
}

/// The server's side of the handshake, as `Listener::accept` runs it: [`deliver_challenge`]
/// then [`answer_challenge`], all of it within `timeout` (`None`: no deadline).
///
/// For servers that accept connections themselves and authenticate each one in its own
/// thread, so that a slow client holds only that thread.
///
/// # Errors
///
/// [`Error::HandshakeTimeout`] when the peer did not complete in time, and those of
/// [`deliver_challenge`] and [`answer_challenge`].
pub fn server_handshake(
    conn: &mut Connection,
    authkey: &[u8],
    timeout: Option<Duration>,
) -> Result<(), Error> {
    let deadline = Deadline::new(timeout);
    deliver(conn, authkey, deadline)?;
    answer(conn, authkey, deadline)
}

/// The client's side of the handshake, as [`Client`](crate::Client) runs it:
/// [`answer_challenge`] then [`deliver_challenge`], all of it within `timeout` (`None`: no
/// deadline).
///
/// # Errors
///
/// [`Error::HandshakeTimeout`] when the peer did not complete in time, and those of
/// [`deliver_challenge`] and [`answer_challenge`].
pub fn client_handshake(
    conn: &mut Connection,
    authkey: &[u8],
    timeout: Option<Duration>,
) -> Result<(), Error> {
    let deadline = Deadline::new(timeout);
    answer(conn, authkey, deadline)?;
    deliver(conn, authkey, deadline)
}

/// A deadline for a whole handshake, and the timeout it came from (for the error).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `None` for no timeout, or one too long to represent.
    fn new(timeout: Option<Duration>) -> Option<Deadline> {
        let timeout = timeout?;
        Some(Deadline {
            at: Instant::now().checked_add(timeout)?,
            timeout,
        })
    }
}

fn deliver(conn: &mut Connection, authkey: &[u8], deadline: Option<Deadline>) -> Result<(), Error> {
    let mut message = Vec::with_capacity(CHALLENGE.len() + 8 + MESSAGE_LENGTH);
    message.extend_from_slice(CHALLENGE);
    message.extend_from_slice(b"{sha256}");
    let start = message.len();
    message.resize(start + MESSAGE_LENGTH, 0);
    random_bytes(&mut message[start..])?;
    conn.send_bytes(&message)?;
    let response = recv_handshake(conn, deadline)?;
    match verify_response(authkey, &message[CHALLENGE.len()..], &response) {
        Ok(()) => conn.send_bytes(WELCOME),
        Err(e) => {
            // The peer may already be gone; the authentication error is what matters.
            let _ = conn.send_bytes(FAILURE);
            Err(e)
        }
    }
}

fn answer(conn: &mut Connection, authkey: &[u8], deadline: Option<Deadline>) -> Result<(), Error> {
    let message = recv_handshake(conn, deadline)?;
    let Some(challenge) = message.strip_prefix(CHALLENGE) else {
        return Err(Error::Authentication(format!(
            "Protocol error, expected challenge: message={}",
            escape(&message)
        )));
    };
    if challenge.len() < MD5ONLY_MESSAGE_LENGTH {
        return Err(Error::Authentication(format!(
            "challenge too short: {} bytes",
            challenge.len()
        )));
    }
    let response = create_response(authkey, challenge)?;
    conn.send_bytes(&response)?;
    if recv_handshake(conn, deadline)? != WELCOME {
        return Err(Error::Authentication("digest sent was rejected".into()));
    }
    Ok(())
}

/// Receives one handshake message of at most [`MAX_HANDSHAKE_MESSAGE`] bytes by the deadline.
///
/// The handshake's limit replaces the connection's own, which is put back afterwards. A longer message, or a corrupt
/// header, is an authentication error (the peer does not speak the protocol).
fn recv_handshake(conn: &mut Connection, deadline: Option<Deadline>) -> Result<Vec<u8>, Error> {
    let limit = conn.max_message_size();
    conn.set_max_message_size(Some(MAX_HANDSHAKE_MESSAGE));
    let result = match deadline {
        None => conn.recv_bytes(),
        Some(d) => match d.at.checked_duration_since(Instant::now()) {
            Some(left) => conn.recv_bytes_timeout(left),
            None => Err(Error::Timeout(Duration::ZERO)),
        },
    };
    conn.set_max_message_size(limit);
    result.map_err(|e| match e {
        Error::Timeout(_) => {
            Error::HandshakeTimeout(deadline.map_or(Duration::ZERO, |d| d.timeout))
        }
        e @ (Error::MessageTooLarge { .. } | Error::InvalidLength(_)) => {
            Error::Authentication(format!("not a handshake message: {e}"))
        }
        e => e,
    })
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, like Python's `os.urandom`).
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
    Ok(())
}

/// A message in an error, printable: Python's `bytes` repr without the quotes, cut at 64
/// bytes.
fn escape(message: &[u8]) -> String {
    let shown: String = message
        .iter()
        .take(64)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if message.len() > 64 {
        format!("b'{shown}'… ({} bytes)", message.len())
    } else {
        format!("b'{shown}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"supadupasecretkey";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn modern_message() -> Vec<u8> {
        let mut m = b"{sha256}".to_vec();
        m.extend(0..40u8);
        m
    }

    /// The vectors of PYTHON-REFERENCE.md §2.3, computed with CPython 3.13.
    #[test]
    fn sha256_vector() {
        let response = create_response(KEY, &modern_message()).unwrap();
        assert_eq!(&response[..8], b"{sha256}");
        assert_eq!(
            hex(&response[8..]),
            "8d546a07722430e6e36d9a1e16a2b23c30b7f555678dc9d50321e882a89160fc"
        );
        verify_response(KEY, &modern_message(), &response).unwrap();
    }

    #[test]
    fn challenge_frame_vector() {
        let mut frame = Vec::new();
        let mut message = CHALLENGE.to_vec();
        message.extend(modern_message());
        crate::frame::encode_header(message.len(), &mut frame);
        frame.extend(&message);
        let want = format!(
            "0000003b234348414c4c454e4745237b7368613235367d{}",
            hex(&(0..40u8).collect::<Vec<_>>())
        );
        assert_eq!(hex(&frame), want);
    }

    #[test]
    fn legacy_vector() {
        let message: Vec<u8> = (0..20u8).collect();
        let response = create_response(KEY, &message).unwrap();
        assert_eq!(hex(&response), "264a416e6bf8fbca704dd80d6acd61c2");
        verify_response(KEY, &message, &response).unwrap();
    }

    /// A Python 3.11 client MACs our whole `{sha256}` challenge with MD5: accepted.
    #[test]
    fn legacy_answer_to_a_modern_challenge_vector() {
        let legacy = Digest::LegacyMd5.mac(KEY, &modern_message());
        assert_eq!(hex(&legacy), "3dd4e9882f920c33ae4c8c27e52d30c6");
        verify_response(KEY, &modern_message(), &legacy).unwrap();
    }

    #[test]
    fn other_digests_accepted() {
        for digest in [Digest::Md5, Digest::Sha384] {
            let mut response =
                format!("{{{}}}", String::from_utf8_lossy(digest.name())).into_bytes();
            response.extend(digest.mac(KEY, &modern_message()));
            verify_response(KEY, &modern_message(), &response).unwrap();
        }
    }

    #[test]
    fn wrong_key_and_malformed_answers_refused() {
        let m = modern_message();
        let wrong = create_response(b"other", &m).unwrap();
        let err = verify_response(KEY, &m, &wrong).unwrap_err();
        assert!(matches!(&err, Error::Authentication(s) if s == "digest received was wrong"));
        // A wrong length for the named digest.
        let mut short = b"{sha256}".to_vec();
        short.extend([0; 31]);
        let err = verify_response(KEY, &m, &short).unwrap_err();
        assert!(
            matches!(&err, Error::Authentication(s) if s.contains("length 32 got 31")),
            "{err}"
        );
        for garbage in [
            &b""[..],
            b"x",
            b"{sha1}0123456789012345678901234567890123456789",
            b"{sha256",
            b"{sha3_256}0123456789012345678901234567890123456789",
            &[0xff; 300],
        ] {
            let err = verify_response(KEY, &m, garbage).unwrap_err();
            assert!(matches!(err, Error::Authentication(_)), "{err}");
        }
        // 20 bytes are taken as MD5, whose digest has 16.
        assert!(verify_response(KEY, &m, &[0; 20]).is_err());
        assert!(verify_response(KEY, &m, &[0; 16]).is_err());
    }

    #[test]
    fn empty_key_is_a_key() {
        let m = modern_message();
        let response = create_response(b"", &m).unwrap();
        verify_response(b"", &m, &response).unwrap();
        assert!(verify_response(b"x", &m, &response).is_err());
    }

    #[test]
    fn escape_is_bounded() {
        assert_eq!(escape(b"ab\x00"), "b'ab\\x00'");
        assert!(escape(&[b'a'; 1000]).ends_with("(1000 bytes)"));
    }
}
