//! The client side: connections to servers, references, and the untyped object handle that
//! every proxy wraps.
//!
//! A process keeps, per server address and thread, one authenticated connection for calls (as
//! Python does: the server serves each in its own thread, so a blocking call holds only its
//! own, and the owner of an `RLock` or `Condition` is the connection, that is the thread), and
//! one *lifeline* connection on which it takes and drops references. It
//! counts its proxies of each object itself: the server hears of the first (`Incref`) and of
//! the last (`Decref`), not of clones. When the process ends, however it ends, the lifeline
//! closes and the server drops every reference it held.
//!
//! After a `fork` the child inherits copies of the parent's connections; an after-fork hook
//! forgets them (closing only the child's copies) and takes, on a lifeline of its own, a
//! reference to every object the child has proxies of (Python's `BaseProxy._after_fork`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use multiproc_ipc::{Address, Client, Connection};
use parking_lot::Mutex;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ManagerError, RemoteError, RemoteErrorKind, Result};
use crate::mailbox::{self, Found, Mailbox};
use crate::protocol::{ERR, Kind, OK, Request};
use crate::server::MAILBOX_REQUEST;

/// How long connecting to a server (and its handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request on the lifeline (references, creation, names) may wait for its answer.
const LIFELINE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a proxy carries across processes: where its object lives and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    pub(crate) address: Address,
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) types: String,
    /// References held for this proxy while it travels (see `Request::Transfer`).
    pub(crate) ticket: Option<u64>,
}

/// One server, as this process sees it.
pub(crate) struct ServerHandle {
    pub(crate) address: Address,
    authkey: Mutex<Option<Vec<u8>>>,
    /// Tells this handle's connections in the threads' caches from others'.
    uid: u64,
    lifeline: Mutex<Option<Connection>>,
    /// Set when the manager that owned the server shut it down: nothing more is sent.
    closed: std::sync::atomic::AtomicBool,
    /// This process's proxies of each object of the server (and the object's kind and
    /// types, to take references again after a fork).
    counts: Mutex<HashMap<u64, (usize, Kind, String)>>,
}

static SERVERS: Mutex<Option<HashMap<Address, Arc<ServerHandle>>>> = Mutex::new(None);
static NEXT_HANDLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
/// Counts forks of this process's line: a thread's cached connections made before the last
/// fork are the parent's, not ours.
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// This thread's connections for calls: `(handle uid, fork generation, link)`.
    static LINKS: RefCell<Vec<(u64, u64, Link)>> = const { RefCell::new(Vec::new()) };
}
static HOOK: Once = Once::new();

/// The handle of the server at `address` (made on first use). `authkey` replaces the key
/// remembered for it; without one, the key remembered or this process tree's authkey.
pub(crate) fn server(address: &Address, authkey: Option<&[u8]>) -> Arc<ServerHandle> {
    HOOK.call_once(|| {
        multiproc_core::register_before_fork(before_fork);
        multiproc_core::register_after_fork(after_fork);
    });
    let _fork = multiproc_core::fork_guard();
    let mut servers = SERVERS.lock();
    let map = servers.get_or_insert_with(HashMap::new);
    let handle = map
        .entry(address.clone())
        .or_insert_with(|| {
            Arc::new(ServerHandle {
                address: address.clone(),
                authkey: Mutex::new(None),
                uid: NEXT_HANDLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                lifeline: Mutex::new(None),
                closed: std::sync::atomic::AtomicBool::new(false),
                counts: Mutex::new(HashMap::new()),
            })
        })
        .clone();
    if let Some(key) = authkey {
        *handle.authkey.lock() = Some(key.to_vec());
    }
    handle
}

/// Tickets taken by [`before_fork`] for the child about to be forked, by server.
static PENDING: Mutex<Vec<(Address, u64)>> = Mutex::new(Vec::new());

/// In the parent, before a fork: hold a reference to every object this process has proxies
/// of, under a ticket the child claims ([`after_fork`]), so that the parent dropping its
/// proxies right after the fork cannot free an object the child's copies still name.
fn before_fork() {
    let handles: Vec<Arc<ServerHandle>> = match &*SERVERS.lock() {
        Some(map) => map.values().cloned().collect(),
        None => return,
    };
    let mut pending = Vec::new();
    for h in handles {
        let ids: Vec<u64> = h.counts.lock().keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        if let Ok(body) = h.lifeline_request_raw(&Request::Transfer { ids })
            && let Ok(ticket) = postcard::from_bytes::<u64>(&body)
        {
            pending.push((h.address.clone(), ticket));
        }
    }
    *PENDING.lock() = pending;
}

/// In a forked child: forget the parent's connections and take references of our own.
fn after_fork() {
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pending = std::mem::take(&mut *PENDING.lock());
    let handles: Vec<Arc<ServerHandle>> = match &*SERVERS.lock() {
        Some(map) => map.values().cloned().collect(),
        None => return,
    };
    for h in handles {
        *h.lifeline.lock() = None;
        let held: Vec<(u64, Kind, String)> = h
            .counts
            .lock()
            .iter()
            .map(|(id, (_, kind, types))| (*id, kind.clone(), types.clone()))
            .collect();
        let ticket = pending
            .iter()
            .find(|(a, _)| *a == h.address)
            .map(|(_, t)| *t);
        for (id, kind, types) in held {
            let r = h.lifeline_request_raw(&Request::Incref {
                id,
                kind,
                types: &types,
                ticket,
            });
            match r {
                Ok(_) => {}
                // Gone meanwhile: the child's proxies of it fail when used.
                Err(ManagerError::Remote(_)) => {}
                // The server is unreachable: nothing more to do.
                Err(_) => break,
            }
        }
    }
}

fn gone(address: &Address, reason: impl fmt::Display) -> ManagerError {
    ManagerError::ServerGone {
        address: address.to_string(),
        reason: reason.to_string(),
    }
}

/// Splits a reply into its result bytes or the server's error.
fn parse_reply(address: &Address, reply: &[u8]) -> Result<()> {
    match reply.first() {
        Some(&OK) => Ok(()),
        Some(&ERR) => {
            let err: RemoteError = postcard::from_bytes(&reply[1..])
                .map_err(|e| ManagerError::Decode(format!("an error reply: {e}")))?;
            Err(ManagerError::Remote(err))
        }
        _ => Err(gone(address, "the server sent a malformed reply")),
    }
}

impl ServerHandle {
    fn key(&self) -> Vec<u8> {
        self.authkey
            .lock()
            .clone()
            .unwrap_or_else(|| multiproc_core::current_process().authkey.to_vec())
    }

    fn connect(&self) -> Result<Connection> {
        Client::builder(self.address.clone())
            .authkey(self.key())
            .timeout(CONNECT_TIMEOUT)
            .connect()
            .map_err(|e| match e {
                multiproc_ipc::Error::Authentication(_) => ManagerError::Connection(e),
                e => gone(&self.address, e),
            })
    }

    /// A connection for calls: with a mailbox when the server is on this machine.
    fn link(&self) -> Result<Link> {
        let mut conn = self.connect()?;
        let mailbox = match self.address {
            Address::Tcp(_) => None,
            _ => offer_mailbox(&mut conn),
        };
        Ok(Link { conn, mailbox })
    }

    /// Sends `request` on this thread's connection and returns the reply (status byte first).
    ///
    /// A connection that turns out dead before any reply (its server went away since it was
    /// last used) is replaced by a fresh one once: nothing was served on it.
    pub(crate) fn request(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        self.request_then(request, reply, |_| Ok(()))
    }

    /// [`request`](Self::request), running `then` on the reply's body before the next request
    /// can go on this connection: references for proxies in the reply are taken before that
    /// next request lets the server drop the ones it held for them.
    pub(crate) fn request_then<R>(
        &self,
        request: &[u8],
        reply: &mut Vec<u8>,
        then: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(gone(&self.address, "the manager was shut down"));
        }
        let generation = FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed);
        // Taken out of the cache for the call (a nested call on this thread makes its own).
        let cached = LINKS.with(|links| {
            let mut links = links.borrow_mut();
            // Connections inherited from before a fork belong to the parent: drop our copies.
            links.retain(|(_, g, _)| *g == generation);
            let i = links.iter().position(|(uid, _, _)| *uid == self.uid)?;
            Some(links.swap_remove(i).2)
        });
        let (mut link, mut fresh) = match cached {
            Some(l) => (l, false),
            None => (self.link()?, true),
        };
        loop {
            match link.exchange(request, reply) {
                Ok(()) => break,
                Err(e) if fresh => return Err(gone(&self.address, e)),
                Err(_) => {
                    link = self.link()?;
                    fresh = true;
                }
            }
        }
        let r = parse_reply(&self.address, reply).and_then(|()| then(&reply[1..]));
        LINKS.with(|links| {
            let mut links = links.borrow_mut();
            if !links.iter().any(|(uid, _, _)| *uid == self.uid) {
                links.push((self.uid, generation, link));
            }
        });
        r
    }

    /// Forgets the server's connections (its manager shut it down): later calls fail at once.
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let _fork = multiproc_core::fork_guard();
        *self.lifeline.lock() = None;
        let uid = self.uid;
        LINKS.with(|links| links.borrow_mut().retain(|(u, _, _)| *u != uid));
    }

    /// A request on the lifeline (opened on first use); the reply's body.
    fn lifeline_request_raw(&self, request: &Request<'_>) -> Result<Vec<u8>> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(gone(&self.address, "the manager was shut down"));
        }
        let bytes = encode_request(request)?;
        let _fork = multiproc_core::fork_guard();
        let mut lifeline = self.lifeline.lock();
        if lifeline.is_none() {
            *lifeline = Some(self.connect()?);
        }
        let conn = lifeline.as_mut().expect("opened above");
        let sent = conn.send_bytes(&bytes);
        if matches!(request, Request::Decref { .. } | Request::DropTicket { .. }) {
            return sent
                .map(|()| Vec::new())
                .map_err(|e| gone(&self.address, e));
        }
        // Lifeline requests are quick table updates: a server that does not answer within the
        // limit is taken for hung (this may run before a fork, which must not wait forever).
        let reply = sent
            .and_then(|()| conn.recv_bytes_timeout(LIFELINE_TIMEOUT))
            .map_err(|e| {
                *lifeline = None;
                gone(&self.address, e)
            })?;
        parse_reply(&self.address, &reply)?;
        Ok(reply[1..].to_vec())
    }

    /// Makes an object; the new reference is this process's.
    pub(crate) fn create(
        self: &Arc<Self>,
        kind: Kind,
        types: String,
        init: &Args,
    ) -> Result<ObjectRef> {
        let body = self.lifeline_request_raw(&Request::Create {
            kind: kind.clone(),
            types: &types,
            init: init.blobs(),
            embedded: init.embedded.clone(),
        })?;
        let id: u64 =
            postcard::from_bytes(&body).map_err(|e| ManagerError::Decode(e.to_string()))?;
        self.counted(id, &kind, &types);
        Ok(ObjectRef::new(self.clone(), id, kind, types))
    }

    /// The object published under `name`, as a new reference of this process.
    pub(crate) fn lookup(
        self: &Arc<Self>,
        name: &str,
        kind: Kind,
        types: String,
    ) -> Result<ObjectRef> {
        let body = self.lifeline_request_raw(&Request::Lookup {
            name,
            kind: kind.clone(),
            types: &types,
        })?;
        let id: u64 =
            postcard::from_bytes(&body).map_err(|e| ManagerError::Decode(e.to_string()))?;
        if self.counted(id, &kind, &types) {
            // The process already had a reference: the server counted a second one.
            let _ = self.lifeline_request_raw(&Request::Decref { id });
        }
        Ok(ObjectRef::new(self.clone(), id, kind, types))
    }

    pub(crate) fn publish(&self, name: &str, id: u64) -> Result<()> {
        self.lifeline_request_raw(&Request::Publish { name, id })
            .map(drop)
    }

    /// Counts one more local proxy of `id`; whether the process already had one.
    fn counted(&self, id: u64, kind: &Kind, types: &str) -> bool {
        let _fork = multiproc_core::fork_guard();
        let mut counts = self.counts.lock();
        let n = counts
            .entry(id)
            .or_insert_with(|| (0, kind.clone(), types.to_string()));
        n.0 += 1;
        n.0 > 1
    }

    /// A proxy decoded in this process: count it, and take a reference if it is the first
    /// (the server checks the kind and types); later ones are checked against the first.
    fn attach(&self, token: &Token) -> Result<()> {
        let first = {
            let _fork = multiproc_core::fork_guard();
            let mut counts = self.counts.lock();
            match counts.get_mut(&token.id) {
                Some((n, kind, types)) => {
                    if *kind != token.kind || *types != token.types {
                        return Err(ManagerError::Remote(RemoteError {
                            kind: RemoteErrorKind::TypeMismatch,
                            message: format!(
                                "object {} is a {kind}<{types}>, not a {}<{}>",
                                token.id, token.kind, token.types
                            ),
                        }));
                    }
                    *n += 1;
                    false
                }
                None => {
                    counts.insert(token.id, (1, token.kind.clone(), token.types.clone()));
                    true
                }
            }
        };
        if first {
            let r = self.lifeline_request_raw(&Request::Incref {
                id: token.id,
                kind: token.kind.clone(),
                types: &token.types,
                ticket: token.ticket,
            });
            if let Err(e) = r {
                let _fork = multiproc_core::fork_guard();
                let mut counts = self.counts.lock();
                if let Some(n) = counts.get_mut(&token.id) {
                    n.0 -= 1;
                    if n.0 == 0 {
                        counts.remove(&token.id);
                    }
                }
                return Err(e);
            }
        } else if let Some(ticket) = token.ticket {
            let _ = self.lifeline_request_raw(&Request::DropTicket {
                ticket,
                id: token.id,
            });
        }
        Ok(())
    }

    /// A ticket holding a reference to `id` for a proxy about to travel.
    fn transfer(&self, id: u64) -> Result<u64> {
        let body = self.lifeline_request_raw(&Request::Transfer { ids: vec![id] })?;
        postcard::from_bytes(&body).map_err(|e| ManagerError::Decode(e.to_string()))
    }

    /// One proxy of `id` fewer in this process; the last one drops the reference.
    fn detach(&self, id: u64) {
        let last = {
            let _fork = multiproc_core::fork_guard();
            let mut counts = self.counts.lock();
            match counts.get_mut(&id) {
                Some(n) if n.0 > 1 => {
                    n.0 -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(&id);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.lifeline_request_raw(&Request::Decref { id });
        }
    }

    /// Stops the server (it replies before it stops).
    /// Waits `timeout` for the answer (the owner then terminates a server that did not give
    /// one).
    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<()> {
        let mut conn = self.connect()?;
        let bytes = encode_request(&Request::Shutdown)?;
        conn.send_bytes(&bytes)
            .map_err(|e| gone(&self.address, e))?;
        let reply = conn
            .recv_bytes_timeout(timeout)
            .map_err(|e| gone(&self.address, e))?;
        parse_reply(&self.address, &reply)
    }

    /// A request whose reply body is a count (`NumberOfObjects`) or nothing (`Ping`).
    pub(crate) fn simple(&self, request: &Request<'_>) -> Result<Vec<u8>> {
        let bytes = encode_request(request)?;
        let mut reply = Vec::new();
        self.request(&bytes, &mut reply)?;
        reply.remove(0);
        Ok(reply)
    }
}

/// A connection for calls: the socket, and the mailbox that carries its messages (see
/// `mailbox.rs`) when the server is local.
pub(crate) struct Link {
    conn: Connection,
    mailbox: Option<Mailbox>,
}

impl Link {
    /// One request and its reply.
    fn exchange(&mut self, request: &[u8], reply: &mut Vec<u8>) -> std::result::Result<(), String> {
        let Some(m) = &self.mailbox else {
            self.conn.send_bytes(request).map_err(|e| e.to_string())?;
            *reply = self.conn.recv_bytes().map_err(|e| e.to_string())?;
            return Ok(());
        };
        if !mailbox::send_request(m, request) {
            self.conn.send_bytes(request).map_err(|e| e.to_string())?;
        }
        let found = {
            let fd = self.conn.read_fd();
            mailbox::wait_reply(m, &|| mailbox::peer_open(fd))
        };
        let r = match found {
            Found::Here(n) => {
                mailbox::read_bytes(m, n, reply);
                Ok(())
            }
            Found::OnSocket => match self.conn.recv_bytes() {
                Ok(r) => {
                    *reply = r;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Found::Gone => Err("the connection closed".to_string()),
        };
        mailbox::done(m);
        r
    }
}

/// Hands the server a mailbox for this connection; `None` (the socket alone is used) when it
/// cannot be made or is refused.
fn offer_mailbox(conn: &mut Connection) -> Option<Mailbox> {
    let m = mailbox::new().ok()?;
    conn.send_bytes(&MAILBOX_REQUEST).ok()?;
    conn.send(&m).ok()?;
    let reply = conn.recv_bytes().ok()?;
    (reply.first() == Some(&OK)).then_some(m)
}

fn encode_request(request: &Request<'_>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    multiproc_core::reduction::append(request, &mut out)
        .map_err(|e| ManagerError::Encode(e.to_string()))?;
    Ok(out)
}

thread_local! {
    /// Set while a value is encoded for a server: the objects named by proxies inside it.
    static EMBEDDED: RefCell<Option<Vec<(Address, u64)>>> = const { RefCell::new(None) };
    /// The server's refusal of a proxy decoded in a reply (to report it typed).
    static ATTACH_ERROR: RefCell<Option<ManagerError>> = const { RefCell::new(None) };
}

/// The encoded arguments of a call, with the objects that proxies inside them name.
#[derive(Debug, Default)]
pub(crate) struct Args {
    buf: Vec<u8>,
    ends: Vec<usize>,
    embedded: Vec<(u32, u64)>,
    address: Option<Address>,
}

impl Args {
    pub(crate) fn for_server(address: &Address) -> Args {
        Args {
            address: Some(address.clone()),
            ..Args::default()
        }
    }

    /// Appends a user value.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<&mut Self> {
        let previous = EMBEDDED.with(|e| e.borrow_mut().replace(Vec::new()));
        let r = multiproc_core::reduction::append(value, &mut self.buf);
        let found = EMBEDDED.with(|e| std::mem::replace(&mut *e.borrow_mut(), previous));
        r.map_err(|e| ManagerError::Encode(e.to_string()))?;
        let index = self.ends.len() as u32;
        for (address, id) in found.unwrap_or_default() {
            if Some(&address) == self.address.as_ref() {
                self.embedded.push((index, id));
            }
        }
        self.ends.push(self.buf.len());
        Ok(self)
    }

    /// Appends a protocol argument (no proxies inside).
    pub(crate) fn plain<T: Serialize + ?Sized>(&mut self, value: &T) -> &mut Self {
        // Protocol arguments (numbers, flags, strings) always encode.
        let _ = multiproc_core::reduction::append(value, &mut self.buf);
        self.ends.push(self.buf.len());
        self
    }

    pub(crate) fn blobs(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let b = &self.buf[start..end];
                start = end;
                b
            })
            .collect()
    }
}

/// The untyped core of every proxy: a counted reference to one object of one server.
///
/// Cloning it is local (no message to the server); the last clone in a process, when
/// dropped, drops the process's reference.
#[derive(Clone)]
pub struct ObjectRef {
    inner: Arc<RefInner>,
}

struct RefInner {
    server: Arc<ServerHandle>,
    token: Token,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        self.server.detach(self.token.id);
    }
}

impl fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectRef")
            .field("address", &self.inner.token.address)
            .field("id", &self.inner.token.id)
            .field("kind", &self.inner.token.kind)
            .field("types", &self.inner.token.types)
            .finish()
    }
}

impl ObjectRef {
    fn new(server: Arc<ServerHandle>, id: u64, kind: Kind, types: String) -> ObjectRef {
        ObjectRef {
            inner: Arc::new(RefInner {
                token: Token {
                    address: server.address.clone(),
                    id,
                    kind,
                    types,
                    ticket: None,
                },
                server,
            }),
        }
    }

    /// The object's id on its server.
    pub fn id(&self) -> u64 {
        self.inner.token.id
    }

    /// The address of the object's server.
    pub fn address(&self) -> &Address {
        &self.inner.token.address
    }

    /// The object's kind.
    pub fn kind(&self) -> &Kind {
        &self.inner.token.kind
    }

    pub(crate) fn args(&self) -> Args {
        Args::for_server(&self.inner.token.address)
    }

    /// Runs operation `op` and decodes its result as `R`.
    pub(crate) fn call<R: DeserializeOwned>(&self, op: u8, args: &Args) -> Result<R> {
        let request = Request::Call {
            id: self.inner.token.id,
            op,
            args: args.blobs(),
            embedded: args.embedded.clone(),
        };
        let bytes = encode_request(&request)?;
        let mut reply = Vec::new();
        self.inner.server.request_then(&bytes, &mut reply, decode)
    }

    /// Calls a method of a registered type.
    pub(crate) fn method<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R> {
        let mut a = self.args();
        a.value(args)?;
        let request = Request::Method {
            id: self.inner.token.id,
            method,
            args: a.blobs()[0],
            embedded: a.embedded.clone(),
        };
        let bytes = encode_request(&request)?;
        let mut reply = Vec::new();
        self.inner.server.request_then(&bytes, &mut reply, decode)
    }
}

/// Decodes a result; a proxy inside it that the server refused reports the server's error.
pub(crate) fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<R> {
    postcard::from_bytes(bytes).map_err(|e| {
        ATTACH_ERROR
            .with(|a| a.borrow_mut().take())
            .unwrap_or_else(|| ManagerError::Decode(e.to_string()))
    })
}

impl Serialize for ObjectRef {
    /// Inside a value sent to this proxy's server, the server takes the reference itself;
    /// anywhere else (a process argument, a pipe) the proxy travels with a ticket that holds
    /// a reference until the receiver claims it.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let token = &self.inner.token;
        let collected = EMBEDDED.with(|e| match e.borrow_mut().as_mut() {
            Some(v) => {
                v.push((token.address.clone(), token.id));
                true
            }
            None => false,
        });
        if collected {
            return token.serialize(s);
        }
        let ticket = self.inner.server.transfer(token.id).ok();
        Token {
            ticket,
            ..token.clone()
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ObjectRef {
    /// Decodes a proxy and takes a reference to its object for this process; refused (with
    /// the server's message) when the object is gone.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let token = Token::deserialize(d)?;
        let (kind, types) = (token.kind.clone(), token.types.clone());
        ObjectRef::attach_as(token, kind, types).map_err(D::Error::custom)
    }
}

impl ObjectRef {
    /// A proxy of `token`'s object for a proxy type of `kind` and `types`, counted in this
    /// process; the refusal is also kept for [`decode`] to report typed.
    pub(crate) fn attach_as(mut token: Token, kind: Kind, types: String) -> Result<ObjectRef> {
        token.kind = kind;
        token.types = types;
        let server = server(&token.address, None);
        if let Err(e) = server.attach(&token) {
            let msg = e.to_string();
            ATTACH_ERROR.with(|a| *a.borrow_mut() = Some(e));
            return Err(ManagerError::Decode(msg));
        }
        token.ticket = None;
        Ok(ObjectRef {
            inner: Arc::new(RefInner { server, token }),
        })
    }
}

/// Drops this process's handle of the server at `address` (its manager shut it down); a
/// later server at the same address gets a fresh one.
pub(crate) fn forget(address: &Address) {
    let _fork = multiproc_core::fork_guard();
    if let Some(map) = SERVERS.lock().as_mut() {
        map.remove(address);
    }
}
