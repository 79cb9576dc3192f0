//! Unit tests of `Listener`, `Client` and the handshake, with clients in threads.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::auth::{CHALLENGE, FAILURE, WELCOME};
use crate::{Address, Client, Connection, Error, Listener, answer_challenge, deliver_challenge};

const LONG: Duration = Duration::from_secs(60);
const KEY: &[u8] = b"the key";

fn tcp() -> Address {
    "127.0.0.1:0".parse().unwrap()
}

fn abstract_name(tag: &str) -> Address {
    Address::Abstract(format!("multiproc-test-{}-{tag}", std::process::id()).into_bytes())
}

/// Connects with `key` in a thread, sends `message` and returns what comes back.
fn echo_client(
    address: Address,
    key: Option<&'static [u8]>,
    message: &'static [u8],
) -> thread::JoinHandle<Result<Vec<u8>, Error>> {
    thread::spawn(move || {
        let mut conn = Client::builder(address);
        if let Some(key) = key {
            conn = conn.authkey(key);
        }
        let mut conn = conn.timeout(LONG).connect()?;
        conn.send_bytes(message)?;
        conn.recv_bytes_timeout(LONG)
    })
}

fn serve_one(listener: &Listener) -> Result<(), Error> {
    let mut conn = listener.accept_timeout(LONG)?;
    let message = conn.recv_bytes_timeout(LONG)?;
    conn.send_bytes(&[b"echo:".as_slice(), &message].concat())
}

#[test]
fn echo_over_every_family_with_and_without_key() {
    let path = Address::arbitrary_unix().unwrap();
    for address in [
        tcp(),
        path,
        abstract_name("echo"),
        "[::1]:0".parse().unwrap(),
    ] {
        for key in [None, Some(KEY), Some(&b""[..])] {
            let listener = match Listener::bind(&address, key) {
                Ok(l) => l,
                // No IPv6 on this machine.
                Err(Error::Io(_)) if matches!(&address, Address::Tcp(a) if a.is_ipv6()) => {
                    continue;
                }
                Err(e) => panic!("bind {address}: {e}"),
            };
            let client = echo_client(listener.address().clone(), key, b"hi");
            serve_one(&listener).unwrap();
            assert_eq!(client.join().unwrap().unwrap(), b"echo:hi", "{address}");
        }
    }
}

#[test]
fn wrong_key_fails_on_both_sides_and_nothing_is_exchanged() {
    let listener = Listener::bind(tcp(), Some(KEY)).unwrap();
    let client = echo_client(listener.address().clone(), Some(b"another key"), b"secret");
    let err = listener.accept_timeout(LONG).unwrap_err();
    assert!(
        matches!(&err, Error::Authentication(s) if s.contains("digest received was wrong")),
        "{err}"
    );
    let err = client.join().unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Authentication(s) if s.contains("digest sent was rejected")),
        "{err}"
    );
    // The listener goes on.
    let client = echo_client(listener.address().clone(), Some(KEY), b"next");
    serve_one(&listener).unwrap();
    assert_eq!(client.join().unwrap().unwrap(), b"echo:next");
}

#[test]
fn client_without_key_against_a_listener_with_one() {
    let listener = Listener::bind(tcp(), Some(KEY)).unwrap();
    let address = listener.address().clone();
    let client = thread::spawn(move || -> Result<Vec<u8>, Error> {
        let mut conn = Client::connect(address, None)?;
        // The first message it sees is the challenge, not an echo.
        conn.send_bytes(b"hello")?;
        conn.recv_bytes_timeout(LONG)
    });
    let err = listener.accept_timeout(LONG).unwrap_err();
    assert!(matches!(err, Error::Authentication(_)), "{err}");
    assert!(client.join().unwrap().unwrap().starts_with(CHALLENGE));
}

#[test]
fn listener_without_key_against_a_client_with_one() {
    let listener = Listener::bind(tcp(), None).unwrap();
    let address = listener.address().clone();
    let client = thread::spawn(move || {
        Client::builder(address)
            .authkey(KEY)
            .timeout(Duration::from_millis(300))
            .connect()
    });
    let _conn = listener.accept_timeout(LONG).unwrap();
    let err = client.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::HandshakeTimeout(_)), "{err}");
}

/// Raw bytes from a client socket: a header that announces 4 GiB, a header of another
/// protocol, a frame cut short, and silence; the listener refuses each within its
/// handshake deadline, allocates nothing large, and serves the next client.
#[test]
fn bad_clients_do_not_stop_the_listener() {
    let listener = Listener::builder()
        .address(tcp())
        .authkey(KEY)
        .handshake_timeout(Some(Duration::from_millis(300)))
        .bind()
        .unwrap();
    let Address::Tcp(addr) = *listener.address() else {
        unreachable!()
    };
    let cases: [(&[u8], bool); 5] = [
        (b"\x7f\xff\xff\xff", false),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", false),
        (b"GET / HTTP/1.1\r\n\r\n", false),
        (b"\x00\x00\x00\x30abc", true),
        (b"", false),
    ];
    for (bytes, close) in cases {
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        raw.write_all(bytes).unwrap();
        if close {
            raw.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let started = Instant::now();
        let err = listener.accept_timeout(LONG).unwrap_err();
        match bytes {
            b"" => {
                assert!(matches!(err, Error::HandshakeTimeout(_)), "{err}");
                assert!(started.elapsed() >= Duration::from_millis(300));
            }
            _ if close => assert!(matches!(err, Error::Truncated { .. }), "{err}"),
            _ => assert!(matches!(err, Error::Authentication(_)), "{bytes:?}: {err}"),
        }
        drop(raw);
        let client = echo_client(listener.address().clone(), Some(KEY), b"still here");
        serve_one(&listener).unwrap();
        assert_eq!(client.join().unwrap().unwrap(), b"echo:still here");
    }
}

/// A server that stalls after the connection: the client's timeout bounds the handshake.
#[test]
fn client_timeout_bounds_a_stalled_server() {
    let listener = Listener::bind(abstract_name("stall"), None).unwrap();
    let started = Instant::now();
    let err = Client::builder(listener.address())
        .authkey(KEY)
        .timeout(Duration::from_millis(200))
        .connect()
        .unwrap_err();
    assert!(
        matches!(err, Error::HandshakeTimeout(t) if t == Duration::from_millis(200)),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn accept_timeout_and_close() {
    let listener = Arc::new(Listener::new().unwrap());
    let err = listener
        .accept_timeout(Duration::from_millis(20))
        .unwrap_err();
    assert!(matches!(err, Error::ConnectTimeout(_)), "{err}");
    let Address::Unix(path) = listener.address().clone() else {
        panic!("Listener::new gave {}", listener.address())
    };
    assert!(path.exists());
    // A blocked accept in another thread is woken by close.
    let blocked = {
        let listener = Arc::clone(&listener);
        thread::spawn(move || listener.accept().map(drop))
    };
    // Not a synchronisation: `close` before or during the accept gives the same result.
    thread::sleep(Duration::from_millis(50));
    listener.close();
    assert!(matches!(
        blocked.join().unwrap(),
        Err(Error::ListenerClosed)
    ));
    assert!(matches!(listener.accept(), Err(Error::ListenerClosed)));
    assert!(!path.exists(), "the socket file is removed on close");
    assert!(Client::connect(path, None).is_err());
}

#[test]
fn unix_file_removed_on_drop_and_existing_file_refused() {
    let listener = Listener::new().unwrap();
    let address = listener.address().clone();
    let Address::Unix(path) = &address else {
        unreachable!()
    };
    let err = Listener::bind(&address, None).unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::AddrInUse),
        "{err}"
    );
    drop(listener);
    assert!(!path.exists());
    // And it can be bound again.
    drop(Listener::bind(&address, None).unwrap());
}

/// A server restarted on the same TCP address binds at once, though its last connection is
/// in TIME_WAIT (SO_REUSEADDR).
#[test]
fn restart_on_the_same_tcp_address() {
    let listener = Listener::bind(tcp(), Some(KEY)).unwrap();
    let address = listener.address().clone();
    let client = echo_client(address.clone(), Some(KEY), b"one");
    serve_one(&listener).unwrap();
    client.join().unwrap().unwrap();
    // The server side closes first: its end goes to TIME_WAIT.
    drop(listener);
    let listener = Listener::bind(&address, Some(KEY)).unwrap();
    let client = echo_client(address, Some(KEY), b"two");
    serve_one(&listener).unwrap();
    assert_eq!(client.join().unwrap().unwrap(), b"echo:two");
}

#[test]
fn last_accepted_is_the_peer() {
    let listener = Listener::bind(tcp(), None).unwrap();
    assert_eq!(listener.last_accepted(), None);
    let conn = Client::connect(listener.address(), None).unwrap();
    let _server = listener.accept_timeout(LONG).unwrap();
    let local = rustix::net::getsockname(conn.read_fd().unwrap()).unwrap();
    let local = SocketAddr::try_from(local).unwrap();
    assert_eq!(listener.last_accepted(), Some(Address::Tcp(local)));

    let listener = Listener::new().unwrap();
    let _conn = Client::connect(listener.address(), None).unwrap();
    let _server = listener.accept_timeout(LONG).unwrap();
    assert_eq!(listener.last_accepted(), Some(Address::Unix("".into())));
}

/// Connections from a listener behave like `pipe()`'s: typed messages, poll, wait; over a
/// Unix socket they carry handles, over TCP they cannot.
#[test]
fn connections_carry_typed_messages_and_handles() {
    let listener = Listener::new().unwrap();
    let mut client = Client::connect(listener.address(), None).unwrap();
    let mut server = listener.accept_timeout(LONG).unwrap();
    assert!(server.carries_handles() && client.carries_handles());
    let (mut x, y) = crate::pipe().unwrap();
    client.send(&(7u32, &y)).unwrap();
    assert_eq!(crate::wait(&[&server], Some(LONG)).unwrap(), [0]);
    let (n, mut y2): (u32, Connection) = server.recv().unwrap();
    assert_eq!(n, 7);
    x.send_bytes(b"through").unwrap();
    assert_eq!(y2.recv_bytes().unwrap(), b"through");

    let listener = Listener::bind(tcp(), None).unwrap();
    let mut client = Client::connect(listener.address(), None).unwrap();
    let mut server = listener.accept_timeout(LONG).unwrap();
    assert!(!server.carries_handles() && !client.carries_handles());
    assert!(matches!(
        client.send(&y),
        Err(Error::HandlesNeedSocket { .. })
    ));
    client.send(&"typed").unwrap();
    assert!(server.poll(Some(LONG)).unwrap());
    assert_eq!(server.recv::<String>().unwrap(), "typed");
    drop(client);
    assert!(matches!(server.recv_bytes(), Err(Error::Eof)));
}

/// A Python 3.11 deliverer: 20 random bytes, no prefix; it expects the raw HMAC-MD5.
#[test]
fn client_answers_a_legacy_challenge() {
    let listener = Listener::bind(tcp(), None).unwrap();
    let address = listener.address().clone();
    let client = thread::spawn(move || {
        Client::builder(address)
            .authkey(KEY)
            .timeout(LONG)
            .connect()
    });
    let mut server = listener.accept_timeout(LONG).unwrap();
    let challenge: Vec<u8> = (0..20).collect();
    server
        .send_bytes(&[CHALLENGE, challenge.as_slice()].concat())
        .unwrap();
    let response = server.recv_bytes_timeout(LONG).unwrap();
    assert_eq!(response.len(), 16, "a raw MD5 digest");
    assert_eq!(response, legacy_md5(KEY, &challenge));
    server.send_bytes(WELCOME).unwrap();
    // Then the client challenges us in the modern form; a legacy server answers raw MD5.
    let message = server.recv_bytes_timeout(LONG).unwrap();
    let challenge = message.strip_prefix(CHALLENGE).unwrap();
    assert!(challenge.starts_with(b"{sha256}") && challenge.len() == 48);
    server.send_bytes(&legacy_md5(KEY, challenge)).unwrap();
    assert_eq!(server.recv_bytes_timeout(LONG).unwrap(), WELCOME);
    client.join().unwrap().unwrap();
}

/// A client that fails the listener's challenge reads `#FAILURE#`.
#[test]
fn failure_is_sent_to_a_wrong_answer() {
    let listener = Listener::bind(tcp(), Some(KEY)).unwrap();
    let address = listener.address().clone();
    let client = thread::spawn(move || -> Result<Vec<u8>, Error> {
        let mut conn = Client::connect(address, None)?;
        let message = conn.recv_bytes_timeout(LONG)?;
        let challenge = message.strip_prefix(CHALLENGE).unwrap().to_vec();
        conn.send_bytes(&legacy_md5(b"wrong", &challenge))?;
        conn.recv_bytes_timeout(LONG)
    });
    assert!(matches!(
        listener.accept_timeout(LONG),
        Err(Error::Authentication(_))
    ));
    assert_eq!(client.join().unwrap().unwrap(), FAILURE);
}

/// The public handshake functions over any connection, here a pipe pair.
#[test]
fn handshake_over_a_pipe() {
    let (mut a, mut b) = crate::pipe().unwrap();
    let t = thread::spawn(move || {
        answer_challenge(&mut b, KEY)?;
        deliver_challenge(&mut b, KEY)?;
        Ok::<_, Error>(b)
    });
    deliver_challenge(&mut a, KEY).unwrap();
    answer_challenge(&mut a, KEY).unwrap();
    let mut b = t.join().unwrap().unwrap();
    // A limit the connection had is kept.
    a.set_max_message_size(Some(10));
    let t = thread::spawn(move || answer_challenge(&mut b, KEY));
    deliver_challenge(&mut a, KEY).unwrap();
    assert_eq!(a.max_message_size(), Some(10));
    t.join().unwrap().unwrap();
}

#[test]
fn addresses_parse_and_display() {
    let cases = [
        (
            "127.0.0.1:80",
            Address::Tcp("127.0.0.1:80".parse().unwrap()),
        ),
        ("[::1]:80", Address::Tcp("[::1]:80".parse().unwrap())),
        (
            "localhost:80",
            Address::Tcp("127.0.0.1:80".parse().unwrap()),
        ),
        ("@name", Address::Abstract(b"name".to_vec())),
        ("\0name", Address::Abstract(b"name".to_vec())),
        ("/tmp/x.sock", Address::Unix("/tmp/x.sock".into())),
        ("relative:1x", Address::Unix("relative:1x".into())),
    ];
    for (text, want) in cases {
        let got: Address = text.parse().unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(got.to_string().parse::<Address>().unwrap(), want);
    }
    assert!("".parse::<Address>().is_err());
    let long = Address::Unix("/".repeat(200).into());
    assert!(matches!(
        Listener::bind(&long, None),
        Err(Error::InvalidAddress(_))
    ));
    assert!(matches!(
        Client::connect(Address::Abstract(Vec::new()), None),
        Err(Error::InvalidAddress(_))
    ));
}

fn legacy_md5(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[test]
fn listener_fd_is_waitable() {
    let listener = Listener::new().unwrap();
    assert!(
        crate::wait(&[&listener.as_fd()], Some(Duration::ZERO))
            .unwrap()
            .is_empty()
    );
    let _c = Client::connect(listener.address(), None).unwrap();
    assert_eq!(crate::wait(&[&listener.as_fd()], Some(LONG)).unwrap(), [0]);
}

/// `close` on a TCP listener: a blocked `accept` returns, clients are refused, and the
/// address can be bound again before the closed listener is dropped.
#[test]
fn close_a_tcp_listener() {
    let listener = Arc::new(Listener::bind(tcp(), Some(KEY)).unwrap());
    let address = listener.address().clone();
    let blocked = {
        let listener = Arc::clone(&listener);
        thread::spawn(move || listener.accept().map(drop))
    };
    listener.close();
    assert!(matches!(
        blocked.join().unwrap(),
        Err(Error::ListenerClosed)
    ));
    let err = Client::connect(&address, Some(KEY)).unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );
    let again = Listener::bind(&address, Some(KEY)).unwrap();
    let client = echo_client(address, Some(KEY), b"again");
    serve_one(&again).unwrap();
    assert_eq!(client.join().unwrap().unwrap(), b"echo:again");
    drop(listener);
}

#[test]
fn debug_hides_the_key() {
    let listener = Listener::bind(tcp(), Some(b"very secret")).unwrap();
    let shown = format!(
        "{listener:?} {:?} {:?}",
        Listener::builder().authkey(b"very secret"),
        Client::builder(tcp()).authkey(b"very secret")
    );
    assert!(
        !shown.contains("very secret") && !shown.contains("118, 101, 114, 121"),
        "{shown}"
    );
    assert!(shown.contains("<hidden>"));
}

/// Arbitrary bytes from the peer (random, or shaped like handshake frames) make the
/// handshake functions return, never panic or hang: the fuzz target's property, with a
/// fixed seed.
#[test]
fn handshake_survives_arbitrary_bytes() {
    use rustix::pipe::{PipeFlags, pipe_with};
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..600 {
        let mut bytes = Vec::new();
        for _ in 0..next() % 4 {
            let len = (next() % 300) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match next() % 5 {
                0 => body = [CHALLENGE, &body].concat(),
                1 => body
                    .splice(0..0, b"{sha256}".iter().copied())
                    .for_each(drop),
                2 => body = WELCOME.to_vec(),
                _ => {}
            }
            if next() % 4 == 0 {
                // Raw bytes, no frame.
                bytes.extend(body);
            } else {
                crate::frame::encode_header(body.len(), &mut bytes);
                bytes.extend(body);
            }
        }
        let (garbage_r, garbage_w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let (_sink_r, sink_w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let mut fed = &bytes[..];
        while !fed.is_empty() {
            let n = rustix::io::write(&garbage_w, fed).unwrap();
            fed = &fed[n..];
        }
        drop(garbage_w);
        let mut conn = Connection::from_fds(Some(garbage_r), Some(sink_w));
        let _ = if round % 2 == 0 {
            deliver_challenge(&mut conn, KEY)
        } else {
            answer_challenge(&mut conn, KEY)
        };
    }
}
