//! Message channels between processes: [`pipe`], [`socketpair`], [`simplex`] and
//! [`Connection`], Python's `multiprocessing.Pipe` and `multiprocessing.connection.Connection`;
//! [`Listener`] and [`Client`] with an authkey, Python's `multiprocessing.connection.Listener`
//! and `Client`; and [`wait`], Python's `multiprocessing.connection.wait`.
//!
//! | Python | here |
//! |---|---|
//! | `a, b = Pipe()` | [`pipe()`] (two OS pipes, plus a socket for large messages and handles) or [`socketpair()`] (one socket, as Python's; for a Python peer) |
//! | `r, w = Pipe(duplex=False)` | [`simplex()`] → ([`Reader`], [`Writer`]) |
//! | `Listener(address, authkey=k)` | [`Listener::bind(address, Some(k))`](Listener::bind) (Unix path, abstract name or TCP: [`Address`]) |
//! | `Client(address, authkey=k)` | [`Client::connect(address, Some(k))`](Client::connect) |
//! | `deliver_challenge(c, k)`, `answer_challenge(c, k)` | [`deliver_challenge`], [`answer_challenge`] |
//! | `wait([a, p.sentinel], t)` | [`wait(&[&a as &dyn Waitable, &sentinel], Some(t))`](wait()) → indices |
//!
//! A [`Connection`] sends and receives whole messages. The framing on the wire is Python's
//! (see [`frame`]), so [`Connection::send_bytes`] / [`Connection::recv_bytes`] talk to a Python
//! `Connection` byte for byte; [`Connection::send`] / [`Connection::recv`] carry any serde type
//! encoded with postcard. A connection is handed to a child process as a `Process` argument
//! (it implements `Serialize`/`Deserialize` through `multiproc_core::reduction`).
//!
//! ```
//! use multiproc_ipc::pipe;
//!
//! let (mut parent, mut child) = pipe()?;
//! parent.send_bytes(b"hello")?;
//! assert_eq!(child.recv_bytes()?, b"hello");
//!
//! child.send(&(3u32, "three"))?;
//! assert!(parent.poll(Some(std::time::Duration::ZERO))?);
//! let (n, word): (u32, String) = parent.recv()?;
//! assert_eq!((n, word.as_str()), (3, "three"));
//!
//! drop(child);
//! assert!(matches!(parent.recv_bytes(), Err(multiproc_ipc::Error::Eof)));
//! # Ok::<(), multiproc_ipc::Error>(())
//! ```
//!
//! Over a [`pipe`] or a [`socketpair`], a value holding handles (a `Connection`, a
//! `multiproc_sync::Lock` …) arrives as working handles, as Python sends a `Connection` over a
//! `Connection`:
//!
//! ```
//! use std::time::Duration;
//! use multiproc_ipc::{Connection, pipe, socketpair, wait};
//!
//! let (mut a, mut b) = socketpair()?;
//! let (mut x, y) = pipe()?;
//! a.send(&("take this end", &y))?;
//! drop(y);
//! let (_, mut y2): (String, Connection) = b.recv()?;
//! x.send(&1u8)?;
//! assert_eq!(wait(&[&b, &y2], Some(Duration::from_secs(60)))?, [1]);
//! assert_eq!(y2.recv::<u8>()?, 1);
//! # Ok::<(), multiproc_ipc::Error>(())
//! ```
//!
//! The first example in Python:
//!
//! ```python
//! from multiprocessing import Pipe
//!
//! parent, child = Pipe()
//! parent.send_bytes(b"hello")
//! assert child.recv_bytes() == b"hello"
//! child.send((3, "three"))
//! assert parent.poll(0)
//! assert parent.recv() == (3, "three")
//! child.close()
//! parent.recv_bytes()  # raises EOFError
//! ```
#![forbid(unsafe_code)]

mod auth;
mod connection;
mod error;
pub mod frame;
mod listener;
mod oneway;
pub mod queue;
#[cfg(test)]
mod tests;
mod wait;

pub use auth::{answer_challenge, client_handshake, deliver_challenge, server_handshake};
pub use connection::{Connection, MAX_HANDLE_FDS, pipe, simplex, socketpair};
pub use error::Error;
pub use listener::{
    Address, Client, ClientBuilder, DEFAULT_BACKLOG, DEFAULT_HANDSHAKE_TIMEOUT, Listener,
    ListenerBuilder,
};
pub use oneway::{Reader, Writer};
pub use queue::{
    GetError, JoinThreadError, JoinableQueue, PutError, Queue, QueueBuilder, SimpleQueue,
    TaskDoneError,
};
pub use wait::{Waitable, wait};
