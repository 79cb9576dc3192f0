//! The two ends of a one-way channel from [`simplex`](crate::simplex()): [`Reader`] and
//! [`Writer`].

use std::os::fd::BorrowedFd;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Connection, Error};

/// The receiving end of a one-way channel (the `r` of Python's `r, w = Pipe(duplex=False)`).
///
/// It has the receiving half of [`Connection`]'s methods, and no way to send. It travels to
/// a child as a `Process` argument like a `Connection`.
///
/// ```
/// let (mut r, mut w) = multiproc_ipc::simplex()?;
/// w.send(&[1u16, 2, 3])?;
/// assert_eq!(r.recv::<[u16; 3]>()?, [1, 2, 3]);
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reader(pub(crate) Connection);

/// The sending end of a one-way channel (the `w` of Python's `r, w = Pipe(duplex=False)`).
///
/// It has the sending half of [`Connection`]'s methods, and no way to receive. It travels to
/// a child as a `Process` argument like a `Connection`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Writer(pub(crate) Connection);

impl Reader {
    /// See [`Connection::recv_bytes`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::recv_bytes`].
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.0.recv_bytes()
    }

    /// See [`Connection::recv_bytes_into`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::recv_bytes_into`].
    pub fn recv_bytes_into(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.0.recv_bytes_into(buf)
    }

    /// See [`Connection::recv`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::recv`].
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.0.recv()
    }

    /// See [`Connection::recv_timeout`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::recv_timeout`] ([`Error::Timeout`] when no whole message came).
    pub fn recv_timeout<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, Error> {
        self.0.recv_timeout(timeout)
    }

    /// See [`Connection::recv_bytes_timeout`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::recv_bytes_timeout`].
    pub fn recv_bytes_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.0.recv_bytes_timeout(timeout)
    }

    /// See [`Connection::poll`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::poll`].
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.0.poll(timeout)
    }

    /// See [`Connection::set_max_message_size`].
    pub fn set_max_message_size(&mut self, limit: Option<usize>) {
        self.0.set_max_message_size(limit);
    }

    /// See [`Connection::max_message_size`].
    pub fn max_message_size(&self) -> Option<usize> {
        self.0.max_message_size()
    }

    /// See [`Connection::try_clone`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::try_clone`].
    pub fn try_clone(&self) -> Result<Reader, Error> {
        self.0.try_clone().map(Reader)
    }

    /// Closes the fd (Python's `close`); dropping does the same.
    pub fn close(&mut self) {
        self.0.close();
    }

    /// Returns whether the end is closed (Python's `closed`).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// The fd messages are read from (see [`Connection::read_fd`]).
    pub fn read_fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.read_fd()
    }

    /// The untyped [`Connection`] (read-only), for code written against `Connection`.
    pub fn into_connection(self) -> Connection {
        self.0
    }
}

impl Writer {
    /// See [`Connection::send_bytes`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::send_bytes`].
    pub fn send_bytes(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.0.send_bytes(buf)
    }

    /// See [`Connection::send`] (a pipe: a value that holds handles is refused with
    /// [`Error::HandlesNeedSocket`]).
    ///
    /// # Errors
    ///
    /// Those of [`Connection::send`].
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.0.send(value)
    }

    /// See [`Connection::try_clone`].
    ///
    /// # Errors
    ///
    /// Those of [`Connection::try_clone`].
    pub fn try_clone(&self) -> Result<Writer, Error> {
        self.0.try_clone().map(Writer)
    }

    /// Closes the fd (Python's `close`); dropping does the same. The reader then sees
    /// [`Error::Eof`] once every message was read.
    pub fn close(&mut self) {
        self.0.close();
    }

    /// Returns whether the end is closed (Python's `closed`).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// The fd messages are written to (see [`Connection::write_fd`]).
    pub fn write_fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.write_fd()
    }

    /// The untyped [`Connection`] (write-only), for code written against `Connection`.
    pub fn into_connection(self) -> Connection {
        self.0
    }
}
