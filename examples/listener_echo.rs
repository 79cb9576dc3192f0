//! A `Listener` with an authkey in the parent, a child process connecting as a `Client` and
//! echoing what it receives (Python's `multiprocessing.connection` example).
//!
//! ```python
//! from multiprocessing import Process
//! from multiprocessing.connection import Listener, Client
//!
//! def echo(address, authkey):
//!     with Client(address, authkey=authkey) as conn:
//!         while (msg := conn.recv_bytes()) != b'bye':
//!             conn.send_bytes(b'echo: ' + msg)
//!
//! with Listener(('127.0.0.1', 0), authkey=b'secret password') as listener:
//!     p = Process(target=echo, args=(listener.address, b'secret password'))
//!     p.start()
//!     with listener.accept() as conn:
//!         print('connection accepted from', listener.last_accepted)
//!         for msg in [b'hello', b'world']:
//!             conn.send_bytes(msg)
//!             print(conn.recv_bytes().decode())
//!         conn.send_bytes(b'bye')
//!     p.join()
//! ```
//!
//! The handshake is Python's: a Python `Client` could connect to this listener, and the
//! child could connect to a Python `Listener`. A client with the wrong key is refused on both
//! sides, and the listener goes on serving.
// expect: listening on 127.0.0.1:
// expect: connection accepted from 127.0.0.1:
// expect: echo: hello
// expect: echo: world
// expect: wrong key refused: authentication failed: digest received was wrong
// expect: child with the wrong key: refused
// expect-lines: 6

use multiproc::Process;
use multiproc::ipc::{Address, Client, Error, Listener};

const AUTHKEY: &[u8] = b"secret password";

fn echo((address, authkey): (Address, Vec<u8>)) {
    let mut conn = match Client::connect(address, Some(&authkey)) {
        Ok(conn) => conn,
        Err(Error::Authentication(_)) => {
            println!("child with the wrong key: refused");
            return;
        }
        Err(e) => panic!("cannot connect: {e}"),
    };
    loop {
        let msg = conn.recv_bytes().unwrap();
        if msg == b"bye" {
            break;
        }
        conn.send_bytes(&[b"echo: ".as_slice(), &msg].concat())
            .unwrap();
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let listener = Listener::bind("127.0.0.1:0".parse::<Address>()?, Some(AUTHKEY))?;
    println!("listening on {}", listener.address());

    let mut p = Process::new(echo, (listener.address().clone(), AUTHKEY.to_vec()));
    p.start()?;
    let mut conn = listener.accept()?;
    let peer = listener.last_accepted().expect("a client was accepted");
    println!("connection accepted from {peer}");
    for msg in [&b"hello"[..], b"world"] {
        conn.send_bytes(msg)?;
        println!("{}", String::from_utf8_lossy(&conn.recv_bytes()?));
    }
    conn.send_bytes(b"bye")?;
    assert_eq!(p.join()?, 0);

    // A client with another key: both sides fail, nothing is exchanged.
    let mut p = Process::new(echo, (listener.address().clone(), b"guess".to_vec()));
    p.start()?;
    match listener.accept() {
        Err(e @ Error::Authentication(_)) => println!("wrong key refused: {e}"),
        other => panic!("expected an authentication error, got {other:?}"),
    }
    assert_eq!(p.join()?, 0);
    Ok(())
}
