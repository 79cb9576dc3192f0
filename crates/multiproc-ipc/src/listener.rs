//! [`Listener`] and [`Client`]: connections between processes that do not share a parent,
//! over Unix sockets (a path or a Linux abstract name) or TCP, authenticated with a shared
//! key (Python's `multiprocessing.connection.Listener` / `Client`).
//!
//! The connections are [`Connection`]s framed as Python's, and the authkey handshake is
//! Python's (see [`deliver_challenge`](crate::deliver_challenge)), so a Python `Client` can
//! connect to a Rust `Listener` and a Rust `Client` to a Python `Listener`.
//!
//! See [`Listener`] for an example.

use std::ffi::OsStr;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use serde::{Deserialize, Serialize};

use crate::auth::{client_handshake, server_handshake};
use crate::{Connection, Error};

/// How long [`Listener::accept`] waits, by default, for a client to complete the authkey
/// handshake before dropping it.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The default length of a listener's queue of connections not yet accepted.
pub const DEFAULT_BACKLOG: u32 = 128;

/// The longest Unix socket path or abstract name (`sun_path` holds 108 bytes, one of them
/// the terminating NUL of a path or the leading NUL of an abstract name).
const MAX_UNIX_NAME: usize = 107;

/// Where a [`Listener`] listens and a [`Client`] connects (Python's `address` with its
/// `family`).
///
/// | Python | here |
/// |---|---|
/// | `'/tmp/sock'` (`AF_UNIX`) | `Address::Unix("/tmp/sock".into())` |
/// | `'\0name'` (Linux abstract namespace) | `Address::Abstract(b"name".to_vec())` |
/// | `('127.0.0.1', 6000)` (`AF_INET`) | `Address::Tcp("127.0.0.1:6000".parse()?)` |
///
/// Parsing a string ([`FromStr`]) reads `\0name` or `@name` as an abstract name (`@` is how
/// `ss` shows them), `host:port` with a literal IP (or `localhost`) as TCP, and anything
/// else as a Unix socket path. [`Display`](fmt::Display) writes the same forms (`@name`).
/// For a host name, use [`Address::tcp`]. An address is `Serialize`/`Deserialize`, so it can
/// be handed to a child process that will connect to it.
///
/// ```
/// use multiproc_ipc::Address;
///
/// let tcp: Address = "127.0.0.1:6000".parse()?;
/// assert!(matches!(tcp, Address::Tcp(a) if a.port() == 6000));
/// let abstract_name: Address = "@my-server".parse()?;
/// assert_eq!(abstract_name, Address::Abstract(b"my-server".to_vec()));
/// let path: Address = "/tmp/my-server.sock".parse()?;
/// assert_eq!(path.to_string(), "/tmp/my-server.sock");
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Address {
    /// A Unix socket bound to a file system path. The peer of an accepted connection, whose
    /// socket has no name, is an empty path (Python's `''`).
    Unix(PathBuf),
    /// A Unix socket in Linux's abstract namespace: a name, not a file (Python's string
    /// starting with `'\0'`; the NUL is not part of the name here).
    Abstract(Vec<u8>),
    /// A TCP socket (Python's `(host, port)` tuple, `AF_INET` or `AF_INET6`).
    Tcp(SocketAddr),
}

impl Address {
    /// The first address `addr` resolves to, as TCP (`"localhost:6000"`,
    /// `("example.org", 80)` …).
    ///
    /// ```
    /// let a = multiproc_ipc::Address::tcp(("localhost", 6000))?;
    /// assert!(matches!(a, multiproc_ipc::Address::Tcp(s) if s.port() == 6000));
    /// # Ok::<(), multiproc_ipc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the name cannot be resolved; [`Error::InvalidAddress`] when it
    /// resolves to nothing.
    pub fn tcp(addr: impl ToSocketAddrs) -> Result<Address, Error> {
        addr.to_socket_addrs()?
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| Error::InvalidAddress("the host name resolved to no address".into()))
    }

    /// A fresh Unix socket path in the temporary directory (Python's
    /// `arbitrary_address('AF_UNIX')`): `$TMPDIR/multiproc-listener-<pid>-<random>`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when no random bytes can be had.
    pub fn arbitrary_unix() -> Result<Address, Error> {
        let mut random = [0u8; 8];
        crate::auth::random_bytes(&mut random)?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Address::Unix(std::env::temp_dir().join(format!(
            "multiproc-listener-{}-{suffix}",
            std::process::id()
        ))))
    }

    fn family(&self) -> AddressFamily {
        match self {
            Address::Unix(_) | Address::Abstract(_) => AddressFamily::UNIX,
            Address::Tcp(SocketAddr::V4(_)) => AddressFamily::INET,
            Address::Tcp(SocketAddr::V6(_)) => AddressFamily::INET6,
        }
    }

    /// The address in the kernel's form, checked: a Unix name must be 1 to 107 bytes.
    fn sockaddr(&self) -> Result<SocketAddrAny, Error> {
        let name = match self {
            Address::Unix(path) => path.as_os_str().as_bytes(),
            Address::Abstract(name) => name,
            Address::Tcp(addr) => return Ok(SocketAddrAny::from(*addr)),
        };
        let what = match self {
            Address::Unix(_) => "Unix socket path",
            _ => "abstract socket name",
        };
        if name.is_empty() {
            return Err(Error::InvalidAddress(format!("an empty {what}")));
        }
        if name.len() > MAX_UNIX_NAME {
            return Err(Error::InvalidAddress(format!(
                "the {what} {self} has {} bytes; at most {MAX_UNIX_NAME} fit",
                name.len()
            )));
        }
        let made = match self {
            Address::Unix(path) => SocketAddrUnix::new(path.as_path()),
            _ => SocketAddrUnix::new_abstract_name(name),
        };
        made.map(SocketAddrAny::from)
            .map_err(|e| Error::InvalidAddress(format!("the {what} {self}: {e}")))
    }

    /// A new non-blocking, close-on-exec stream socket of this address's family.
    fn socket(&self) -> Result<OwnedFd, Error> {
        rustix::net::socket_with(
            self.family(),
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(os)
    }

    /// The address the kernel reports for a socket (ours, or a peer's).
    fn from_socket_addr(addr: SocketAddrAny) -> Option<Address> {
        match addr.address_family() {
            AddressFamily::UNIX => {
                let unix = SocketAddrUnix::try_from(addr).ok()?;
                // An unnamed socket (a client's) may read as an empty abstract name.
                if unix.is_unnamed() || unix.abstract_name() == Some(&[]) {
                    Some(Address::Unix(PathBuf::new()))
                } else if let Some(name) = unix.abstract_name() {
                    Some(Address::Abstract(name.to_vec()))
                } else if let Some(path) = unix.path_bytes() {
                    Some(Address::Unix(PathBuf::from(OsStr::from_bytes(path))))
                } else {
                    Some(Address::Unix(PathBuf::new()))
                }
            }
            _ => SocketAddr::try_from(addr).ok().map(Address::Tcp),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Address, Error> {
        if let Some(name) = s.strip_prefix('\0').or_else(|| s.strip_prefix('@')) {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(addr));
        }
        if let Some(port) = s.strip_prefix("localhost:")
            && let Ok(port) = port.parse::<u16>()
        {
            return Ok(Address::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        if s.is_empty() {
            return Err(Error::InvalidAddress("an empty string".into()));
        }
        Ok(Address::Unix(PathBuf::from(s)))
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp(addr)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Address {
        Address::Unix(path.to_path_buf())
    }
}

impl From<&Address> for Address {
    fn from(addr: &Address) -> Address {
        addr.clone()
    }
}

/// A server socket that accepts [`Connection`]s (Python's
/// `multiprocessing.connection.Listener`).
///
/// With an authkey, [`accept`](Self::accept) runs Python's handshake on every new connection
/// (challenging the client, then answering its challenge) and returns only authenticated
/// connections. The handshake has a deadline ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set with
/// [`ListenerBuilder::handshake_timeout`]), so a client that stalls cannot hold `accept`
/// forever. A client that fails makes `accept` return its error
/// ([`Error::Authentication`], [`Error::HandshakeTimeout`], [`Error::Eof`] …); the listener
/// stays usable, and the next `accept` serves the next client.
///
/// TCP listeners set `SO_REUSEADDR` (as Python does), so a restarted server can bind the same
/// address at once. A Unix socket file is removed when the listener is closed or dropped by
/// the process that created it. `accept` takes `&self`: a listener can be shared between
/// threads (in an `Arc`), and [`close`](Self::close) from one thread wakes an `accept` blocked
/// in another.
///
/// Over TCP, with a client in a thread (in practice, another process):
///
/// ```
/// use std::thread;
/// use multiproc_ipc::{Client, Listener};
///
/// let listener = Listener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>()?, Some(b"secret"))?;
/// let address = listener.address().clone();
/// let client = thread::spawn(move || -> Result<Vec<u8>, multiproc_ipc::Error> {
///     let mut conn = Client::connect(address, Some(b"secret"))?;
///     conn.send_bytes(b"hello")?;
///     conn.recv_bytes()
/// });
/// let mut conn = listener.accept()?;
/// let hello = conn.recv_bytes()?;
/// conn.send_bytes(&[b"echo: ".as_slice(), &hello].concat())?;
/// assert_eq!(client.join().unwrap()?, b"echo: hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The same in Python:
///
/// ```python
/// from multiprocessing.connection import Listener, Client
///
/// with Listener(("127.0.0.1", 0), authkey=b"secret") as listener:
///     # in another process: Client(listener.address, authkey=b"secret")
///     with listener.accept() as conn:
///         conn.send_bytes(b"echo: " + conn.recv_bytes())
/// ```
///
/// Over a Unix socket:
///
/// ```
/// use multiproc_ipc::{Client, Listener};
///
/// let listener = Listener::new()?; // a fresh socket path in the temporary directory
/// let mut client = Client::connect(listener.address(), None)?;
/// let mut server = listener.accept()?;
/// client.send(&"over a Unix socket")?;
/// assert_eq!(server.recv::<String>()?, "over a Unix socket");
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
pub struct Listener {
    socket: OwnedFd,
    address: Address,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Option<Duration>,
    last_accepted: Mutex<Option<Address>>,
    closed: AtomicBool,
    /// The socket file to remove on close, and the process that may remove it.
    unlink: Option<(PathBuf, u32)>,
}

/// Options of a [`Listener`]: address, backlog, authkey, handshake deadline.
///
/// ```
/// use std::time::Duration;
/// use multiproc_ipc::{Address, Listener};
///
/// let listener = Listener::builder()
///     .address("127.0.0.1:0".parse::<Address>()?)
///     .backlog(16)
///     .authkey(b"secret")
///     .handshake_timeout(Some(Duration::from_secs(5)))
///     .bind()?;
/// assert!(matches!(listener.address(), Address::Tcp(a) if a.port() != 0));
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
#[derive(Clone)]
pub struct ListenerBuilder {
    address: Option<Address>,
    backlog: u32,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Option<Duration>,
}

impl Default for ListenerBuilder {
    fn default() -> Self {
        ListenerBuilder {
            address: None,
            backlog: DEFAULT_BACKLOG,
            authkey: None,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }
}

impl ListenerBuilder {
    /// The address to listen on; without one, a fresh Unix socket path
    /// ([`Address::arbitrary_unix`]). A TCP port 0 picks a free port
    /// ([`Listener::address`] tells which).
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The length of the queue of connections not yet accepted ([`DEFAULT_BACKLOG`] by
    /// default; Python's default is 1). The kernel caps it at `net.core.somaxconn`.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// The key clients must prove they hold (Python's `authkey`); an empty key is a key.
    /// Without one (the default, as in Python), connections are not authenticated.
    pub fn authkey(mut self, authkey: impl AsRef<[u8]>) -> Self {
        self.authkey = Some(authkey.as_ref().to_vec());
        self
    }

    /// The most time a client may take for the whole handshake, after which `accept` drops it
    /// and returns [`Error::HandshakeTimeout`] ([`DEFAULT_HANDSHAKE_TIMEOUT`] by default;
    /// `None`: wait forever, as Python does).
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Creates the socket, binds it and listens.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for an empty or too long Unix name; [`Error::Io`] when the
    /// address is in use (`AddrInUse`, also for an existing Unix socket file) or cannot be
    /// bound.
    pub fn bind(self) -> Result<Listener, Error> {
        let address = match self.address {
            Some(address) => address,
            None => Address::arbitrary_unix()?,
        };
        let sockaddr = address.sockaddr()?;
        let socket = address.socket()?;
        sockopt::set_socket_reuseaddr(&socket, true).map_err(os)?;
        rustix::net::bind(&socket, &sockaddr).map_err(os)?;
        let unlink = match &address {
            Address::Unix(path) => Some((path.clone(), std::process::id())),
            _ => None,
        };
        let backlog = i32::try_from(self.backlog).unwrap_or(i32::MAX);
        let listener = Listener {
            address: match &address {
                // The port the kernel picked for port 0.
                Address::Tcp(_) => rustix::net::getsockname(&socket)
                    .ok()
                    .and_then(Address::from_socket_addr)
                    .unwrap_or(address),
                _ => address,
            },
            socket,
            authkey: self.authkey,
            handshake_timeout: self.handshake_timeout,
            last_accepted: Mutex::new(None),
            closed: AtomicBool::new(false),
            unlink,
        };
        // On failure the listener is dropped, which removes the socket file.
        rustix::net::listen(&listener.socket, backlog).map_err(os)?;
        Ok(listener)
    }
}

impl Listener {
    /// A listener on a fresh Unix socket path in the temporary directory, without an authkey
    /// (Python's `Listener()`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket cannot be created.
    pub fn new() -> Result<Listener, Error> {
        ListenerBuilder::default().bind()
    }

    /// A listener on `address`, with `authkey` or none (Python's
    /// `Listener(address, authkey=authkey)`), and the defaults of [`ListenerBuilder`].
    ///
    /// # Errors
    ///
    /// Those of [`ListenerBuilder::bind`].
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Listener, Error> {
        let mut builder = ListenerBuilder::default().address(address);
        builder.authkey = authkey.map(<[u8]>::to_vec);
        builder.bind()
    }

    /// The options of a listener, to set the backlog or the handshake timeout.
    pub fn builder() -> ListenerBuilder {
        ListenerBuilder::default()
    }

    /// Waits for a client and returns its connection, authenticated if the listener has an
    /// authkey (Python's `accept`).
    ///
    /// # Errors
    ///
    /// About the listener: [`Error::ListenerClosed`] after [`close`](Self::close);
    /// [`Error::Io`] when `accept` fails (for example too many open files).
    /// About the client that connected (the listener goes on): [`Error::Authentication`]
    /// (wrong key, or not the handshake protocol), [`Error::HandshakeTimeout`],
    /// [`Error::Eof`] / [`Error::Truncated`] / [`Error::Io`] when it went away mid-handshake.
    pub fn accept(&self) -> Result<Connection, Error> {
        self.accept_by(None, None)
    }

    /// Like [`accept`](Self::accept), but waits at most `timeout` for a client to connect
    /// (the handshake then has its own deadline).
    ///
    /// ```
    /// use std::time::Duration;
    /// let listener = multiproc_ipc::Listener::new()?;
    /// let err = listener.accept_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, multiproc_ipc::Error::ConnectTimeout(_)));
    /// # Ok::<(), multiproc_ipc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ConnectTimeout`] when no client connected in time, and those of
    /// [`accept`](Self::accept).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection, Error> {
        self.accept_by(Instant::now().checked_add(timeout), Some(timeout))
    }

    fn accept_by(
        &self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Connection, Error> {
        let (socket, peer) = loop {
            if self.is_closed() {
                return Err(Error::ListenerClosed);
            }
            match rustix::net::acceptfrom_with(&self.socket, SocketFlags::CLOEXEC) {
                Ok(accepted) => break accepted,
                // The client gave up before we took it, or nothing is there yet.
                Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => {}
                // A listening socket that was shut down by `close`.
                Err(Errno::INVAL) if self.is_closed() => return Err(Error::ListenerClosed),
                Err(e) => return Err(os(e)),
            }
            if !wait_fd(self.socket.as_fd(), PollFlags::IN, deadline)? {
                return Err(Error::ConnectTimeout(timeout.unwrap_or_default()));
            }
        };
        // As Python, the peer is recorded before the handshake.
        let peer = peer.and_then(Address::from_socket_addr);
        *self.last_accepted.lock().unwrap_or_else(|e| e.into_inner()) = peer;
        let mut conn = connection(socket, self.address.family())?;
        if let Some(key) = &self.authkey {
            server_handshake(&mut conn, key, self.handshake_timeout)?;
        }
        Ok(conn)
    }

    /// The address this listener is bound to (Python's `address`); for TCP port 0, with the
    /// port the kernel chose.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The address of the last client accepted, if any (Python's `last_accepted`): for TCP
    /// its IP and port, for a Unix socket usually an empty path (client sockets have no
    /// name). Set as soon as the client is taken, before the handshake, as in Python.
    pub fn last_accepted(&self) -> Option<Address> {
        self.last_accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this listener has an authkey.
    pub fn authenticates(&self) -> bool {
        self.authkey.is_some()
    }

    /// Stops listening (Python's `close`): clients can no longer connect, an `accept` blocked
    /// in another thread returns [`Error::ListenerClosed`], as do later ones, and a Unix
    /// socket file is removed. Idempotent; dropping the listener does the same. Connections
    /// already accepted are not affected.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes a poll or accept blocked on the socket in another thread.
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Read);
        if let Some((path, pid)) = &self.unlink {
            // Only the process that bound it: a forked child's copy must not remove the
            // parent's socket file (Python's `Finalize` checks the pid the same way).
            if *pid == std::process::id() {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The listening socket, to wait for a client together with other fds.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The key is not shown: `Debug` output ends up in logs.
fn key_shown(key: &Option<Vec<u8>>) -> Option<&'static str> {
    key.as_ref().map(|_| "<hidden>")
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("socket", &self.socket)
            .field("address", &self.address)
            .field("authkey", &key_shown(&self.authkey))
            .field("handshake_timeout", &self.handshake_timeout)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("address", &self.address)
            .field("backlog", &self.backlog)
            .field("authkey", &key_shown(&self.authkey))
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("address", &self.address)
            .field("authkey", &key_shown(&self.authkey))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connects to a [`Listener`] (Python's `multiprocessing.connection.Client`).
///
/// [`Client::connect`] is Python's `Client(address, authkey=authkey)`;
/// [`Client::builder`] adds a timeout.
///
/// ```
/// use multiproc_ipc::{Address, Client, Listener};
///
/// let name = format!("client-doc-{}", std::process::id()).into_bytes();
/// let listener = Listener::bind(Address::Abstract(name.clone()), Some(b"key"))?;
/// let t = std::thread::spawn(move || listener.accept().map(|mut c| c.recv::<u32>()));
/// let mut conn = Client::connect(Address::Abstract(name), Some(b"key"))?;
/// conn.send(&42u32)?;
/// assert_eq!(t.join().unwrap()??, 42);
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Client;

impl Client {
    /// Connects to `address` and, with an `authkey`, runs Python's handshake (answering the
    /// server's challenge, then challenging it). Waits as long as it takes; see
    /// [`Client::builder`] for a timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when nothing listens there (`ConnectionRefused`, `NotFound`);
    /// [`Error::Authentication`] when the server has another key (both sides fail, and
    /// nothing else is exchanged); [`Error::InvalidAddress`]; [`Error::Eof`] when the server
    /// closed the connection during the handshake.
    pub fn connect(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
    ) -> Result<Connection, Error> {
        ClientBuilder {
            address: address.into(),
            authkey: authkey.map(<[u8]>::to_vec),
            timeout: None,
        }
        .connect()
    }

    /// The options of a client connection: authkey and timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc_ipc::{Address, Client, Error};
    ///
    /// // Nothing listens on this name.
    /// let err = Client::builder(Address::Abstract(b"nobody-listens-here".to_vec()))
    ///     .timeout(Duration::from_secs(5))
    ///     .connect()
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused));
    /// ```
    pub fn builder(address: impl Into<Address>) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            authkey: None,
            timeout: None,
        }
    }
}

/// Options of a [`Client`] connection, made by [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    address: Address,
    authkey: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl ClientBuilder {
    /// The key to authenticate with (Python's `authkey`); an empty key is a key.
    pub fn authkey(mut self, authkey: impl AsRef<[u8]>) -> Self {
        self.authkey = Some(authkey.as_ref().to_vec());
        self
    }

    /// The most time to connect and complete the handshake (none by default, as in Python).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Connects, and authenticates if an authkey was given.
    ///
    /// # Errors
    ///
    /// Those of [`Client::connect`]; [`Error::ConnectTimeout`] when the connection was not
    /// established in time, [`Error::HandshakeTimeout`] when the handshake did not complete
    /// in time.
    pub fn connect(self) -> Result<Connection, Error> {
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let socket = connect_socket(&self.address, deadline, self.timeout)?;
        let mut conn = connection(socket, self.address.family())?;
        if let Some(key) = &self.authkey {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            client_handshake(&mut conn, key, left).map_err(|e| match (e, self.timeout) {
                (Error::HandshakeTimeout(_), Some(t)) => Error::HandshakeTimeout(t),
                (e, _) => e,
            })?;
        }
        Ok(conn)
    }
}

/// Connects a new socket to `address` by `deadline` (`None`: no deadline). The socket is
/// non-blocking while connecting, blocking when returned.
fn connect_socket(
    address: &Address,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
) -> Result<OwnedFd, Error> {
    let sockaddr = address.sockaddr()?;
    let timed_out = || Error::ConnectTimeout(timeout.unwrap_or_default());
    let mut backoff = Duration::from_millis(1);
    let socket = loop {
        let socket = address.socket()?;
        match rustix::net::connect(&socket, &sockaddr) {
            Ok(()) => break socket,
            // TCP: the handshake goes on; wait until the socket is writable.
            Err(Errno::INPROGRESS | Errno::INTR) => {
                if !wait_fd(socket.as_fd(), PollFlags::OUT, deadline)? {
                    return Err(timed_out());
                }
                match sockopt::socket_error(&socket).map_err(os)? {
                    Ok(()) => break socket,
                    Err(e) => return Err(os(e)),
                }
            }
            // A Unix listener whose backlog is full: try again a little later.
            Err(Errno::AGAIN) => {
                if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                    return Err(timed_out());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(os(e)),
        }
    };
    rustix::io::ioctl_fionbio(&socket, false).map_err(os)?;
    Ok(socket)
}

/// A [`Connection`] on a connected stream socket (read on one fd, write on a duplicate).
fn connection(socket: OwnedFd, family: AddressFamily) -> Result<Connection, Error> {
    if family != AddressFamily::UNIX {
        // Python leaves Nagle's algorithm on; small messages that follow each other
        // (a request in two sends) would then wait for the peer's delayed ACK.
        let _ = sockopt::set_tcp_nodelay(&socket, true);
    }
    let write = rustix::io::fcntl_dupfd_cloexec(&socket, 0).map_err(os)?;
    Ok(Connection::from_fds(Some(socket), Some(write)))
}

/// Waits until `fd` has one of `flags` (or an error or hang-up); `false` when `deadline`
/// passed first.
fn wait_fd(fd: BorrowedFd<'_>, flags: PollFlags, deadline: Option<Instant>) -> Result<bool, Error> {
    let mut fds = [PollFd::new(&fd, flags)];
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timespec = left.and_then(|l| Timespec::try_from(l).ok());
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            Ok(ready) => return Ok(ready > 0),
            Err(Errno::INTR) => {}
            Err(e) => return Err(os(e)),
        }
    }
}

fn os(e: Errno) -> Error {
    Error::Io(e.into())
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
