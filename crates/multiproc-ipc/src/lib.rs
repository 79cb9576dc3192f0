//! Message channels between processes: [`pipe`] and [`Connection`], Python's
//! `multiprocessing.Pipe` and `multiprocessing.connection.Connection`.
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
//! The same in Python:
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

mod connection;
mod error;
pub mod frame;
mod oneway;
#[cfg(test)]
mod tests;
mod wait;

pub use connection::{Connection, MAX_HANDLE_FDS, pipe, simplex, socketpair};
pub use error::Error;
pub use oneway::{Reader, Writer};
pub use wait::{Waitable, wait};
