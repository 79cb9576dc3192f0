//! The server: a table of objects, a thread per connection, reference counts per connection.
//!
//! It runs in the manager's server process ([`Manager::start`](crate::Manager::start)) or in
//! the calling process ([`ManagerBuilder::serve`](crate::ManagerBuilder::serve)). Each accepted
//! connection is authenticated and then served by its own thread, so a call that blocks (a
//! queue `get`, a lock `acquire`) holds only its own connection.
//!
//! References: a proxy's process holds one reference per object it has proxies of, counted on
//! the connection it made them on (its *lifeline*, see `client.rs`). When that connection
//! closes (the process exited, or was killed) every reference it held is dropped, so a dead
//! client's proxies do not keep objects alive (Python's manager leaks them). A value stored
//! in a container holds a reference to each object of this server that a proxy inside it
//! names, until the value is replaced or removed. A published name holds one more.

use std::collections::{HashMap, HashSet};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multiproc_ipc::{Connection, Listener};
use parking_lot::Mutex;

use crate::error::RemoteErrorKind as K;
use crate::mailbox::{self, Found, Mailbox};
use crate::objects::{Obj, Outcome};
use crate::protocol::{Kind, OK, Request, error_reply};

/// How long a connecting client may take to complete the authkey handshake, by default.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The frame a client sends to hand over a mailbox (not a valid [`Request`]: a variant index
/// no request has).
pub(crate) const MAILBOX_REQUEST: [u8; 2] = [0xff, 0x01];

/// References taken for the proxies inside a call's arguments: `(argument index, object id)`.
pub(crate) type Embedded = Vec<(u32, u64)>;

/// The largest request the server accepts (a bigger frame closes the connection).
const MAX_REQUEST: usize = 1 << 30;

/// What the server needs to run user code: registered types by type id.
pub(crate) type Registry = HashMap<String, multiproc_core::AnyFnRef>;

struct Entry {
    obj: Arc<Obj>,
    refs: usize,
}

#[derive(Default)]
struct Table {
    objects: HashMap<u64, Entry>,
    names: HashMap<String, u64>,
    /// References held for proxies in transit, by ticket: the ids and when they were taken.
    transfers: HashMap<u64, (Vec<u64>, Instant)>,
}

/// How long a transfer ticket holds its references if nobody claims them.
const TICKET_TTL: Duration = Duration::from_secs(60);

/// Object ids and tickets: unique in the process, whatever the number of servers in it (the
/// handlers of registered types keep their objects by id, process-wide).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The state every connection thread shares.
pub(crate) struct Shared {
    table: Mutex<Table>,
    next_conn: AtomicU64,
    registry: Registry,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Duration,
    stop: AtomicBool,
    listener: Listener,
    /// Shared-memory segments to unlink when the server stops.
    segments: Mutex<Vec<String>>,
}

impl Shared {
    pub(crate) fn new(
        listener: Listener,
        authkey: Option<Vec<u8>>,
        handshake_timeout: Duration,
        registry: Registry,
    ) -> Self {
        Shared {
            table: Mutex::new(Table::default()),
            next_conn: AtomicU64::new(1),
            registry,
            authkey,
            handshake_timeout,
            stop: AtomicBool::new(false),
            listener,
            segments: Mutex::new(Vec::new()),
        }
    }

    /// Accepts connections until a shutdown request; each is served by its own thread.
    pub(crate) fn serve_forever(self: &Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok(conn) => {
                    let shared = self.clone();
                    let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
                    let spawned = std::thread::Builder::new()
                        .name(format!("manager-conn-{id}"))
                        .spawn(move || shared.serve_connection(conn, id));
                    if spawned.is_err() {
                        // Out of threads: the client sees its connection closed.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(multiproc_ipc::Error::ListenerClosed) => break,
                Err(_) => {
                    // A client that went away before it was taken, or too many open files:
                    // go on (briefly backing off so a persistent error does not spin).
                    if self.stop.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Unlinks the tracked segments, then stops accepting (the server process ends when its
    /// accept loop does, so the segments go first).
    fn stop(&self) {
        for name in std::mem::take(&mut *self.segments.lock()) {
            if let Ok(shm) = multiproc_shm::SharedMemory::attach(&name) {
                let _ = shm.unlink();
            }
        }
        self.stop.store(true, Ordering::Release);
        self.listener.close();
    }

    fn serve_connection(self: Arc<Self>, mut conn: Connection, conn_id: u64) {
        if let Some(key) = &self.authkey
            && multiproc_ipc::server_handshake(&mut conn, key, Some(self.handshake_timeout))
                .is_err()
        {
            return;
        }
        conn.set_max_message_size(Some(MAX_REQUEST));
        let mut st = ConnState {
            id: conn_id,
            deferred: Vec::new(),
            held: HashMap::new(),
            locks: HashSet::new(),
        };
        let mut out = Vec::with_capacity(256);
        let mut buf = vec![0u8; 4096];
        while let Some(n) = recv_into(&mut conn, &mut buf) {
            if buf[..n] == MAILBOX_REQUEST[..] {
                // The client hands over a mailbox (next message, with its fd) and from now
                // on talks through it.
                let mailbox: Option<Mailbox> = conn.recv().ok().filter(mailbox::valid);
                out.clear();
                match &mailbox {
                    Some(_) => out.push(OK),
                    None => error_reply(&mut out, K::Protocol, "not a mailbox"),
                }
                if conn.send_bytes(&out).is_err() {
                    break;
                }
                if let Some(m) = mailbox {
                    self.serve_mailbox(&mut conn, &m, &mut st, &mut buf, &mut out);
                    break;
                }
                continue;
            }
            let reply = self.process(&buf[..n], &mut conn, &mut st, &mut out);
            if !matches!(reply, Reply::None) && conn.send_bytes(&out).is_err() {
                break;
            }
            if matches!(reply, Reply::Stop) {
                self.stop();
                break;
            }
            if buf.len() > 1 << 20 {
                buf = vec![0u8; 4096];
            }
        }
        self.release_connection(st);
    }

    /// Serves requests that come through `m` (and large ones on the socket) until the client
    /// goes or the server stops.
    fn serve_mailbox(
        &self,
        conn: &mut Connection,
        m: &Mailbox,
        st: &mut ConnState,
        buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        loop {
            let found = {
                let fd = conn.read_fd();
                mailbox::wait_request(m, &|| mailbox::peer_open(fd))
            };
            match found {
                Found::Gone => return,
                Found::Here(n) => mailbox::read_bytes(m, n, buf),
                Found::OnSocket => match conn.recv_bytes() {
                    Ok(r) => *buf = r,
                    Err(_) => return,
                },
            }
            let reply = self.process(buf, conn, st, out);
            if matches!(reply, Reply::None) {
                // Every request through a mailbox is answered.
                out.clear();
                out.push(OK);
            }
            if !mailbox::send_reply(m, out) && conn.send_bytes(out).is_err() {
                return;
            }
            if matches!(reply, Reply::Stop) {
                self.stop();
                return;
            }
            if buf.capacity() > 1 << 20 {
                *buf = Vec::with_capacity(4096);
            }
        }
    }

    /// Decodes and runs one request; the reply is in `out`.
    fn process(
        &self,
        req: &[u8],
        conn: &mut Connection,
        st: &mut ConnState,
        out: &mut Vec<u8>,
    ) -> Reply {
        out.clear();
        let request: Request<'_> = match postcard::from_bytes(req) {
            Ok(r) => r,
            Err(e) => {
                error_reply(out, K::Protocol, format!("undecodable request: {e}"));
                return Reply::Some;
            }
        };
        if !st.deferred.is_empty() {
            self.release(std::mem::take(&mut st.deferred));
        }
        let alive = Alive(conn.read_fd());
        self.handle(request, st, &alive, out)
    }

    fn handle(
        &self,
        request: Request<'_>,
        st: &mut ConnState,
        alive: &Alive<'_>,
        out: &mut Vec<u8>,
    ) -> Reply {
        match request {
            Request::Call {
                id,
                op,
                args,
                embedded,
            } => {
                let Some((obj, refs)) = self.target(id, &embedded, out) else {
                    return Reply::Some;
                };
                out.push(OK);
                let mut ctx = CallCtx {
                    conn: st.id,
                    alive,
                    refs,
                };
                let outcome = obj.call(op, &args, &mut ctx, out);
                // References for arguments the operation did not store.
                self.release(ctx.refs.iter().map(|&(_, id)| id).collect());
                self.finish(outcome, id, st, out);
                Reply::Some
            }
            Request::Method {
                id,
                method,
                args,
                embedded,
            } => {
                let Some((obj, refs)) = self.target(id, &embedded, out) else {
                    return Reply::Some;
                };
                // A registered type's methods keep no proxies: release what came along.
                self.release(refs.into_iter().map(|(_, id)| id).collect());
                out.push(OK);
                let outcome = obj.method(method, args, out);
                self.finish(outcome, id, st, out);
                Reply::Some
            }
            Request::Create {
                kind,
                types,
                init,
                embedded,
            } => {
                let refs = match self.take_refs(&embedded) {
                    Ok(r) => r,
                    Err(e) => {
                        error_reply(out, K::NoSuchObject, e);
                        return Reply::Some;
                    }
                };
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let handler = match &kind {
                    Kind::Custom(name) => match self.registry.get(name) {
                        Some(h) => Some(*h),
                        None => {
                            self.release(refs.into_iter().map(|(_, id)| id).collect());
                            error_reply(
                                out,
                                K::NotExposed,
                                format!("type id {name:?} is not registered with this manager"),
                            );
                            return Reply::Some;
                        }
                    },
                    _ => None,
                };
                match Obj::create(id, kind, types.to_string(), &init, refs, handler) {
                    Ok(obj) => {
                        self.table.lock().objects.insert(
                            id,
                            Entry {
                                obj: Arc::new(obj),
                                refs: 1,
                            },
                        );
                        *st.held.entry(id).or_insert(0) += 1;
                        out.push(OK);
                        crate::protocol::put_varint(out, id);
                    }
                    Err((kind, msg, refs)) => {
                        self.release(refs);
                        error_reply(out, kind, msg);
                    }
                }
                Reply::Some
            }
            Request::Incref {
                id,
                kind,
                types,
                ticket,
            } => {
                let mut t = self.table.lock();
                let claimed = ticket.is_some_and(|ticket| claim(&mut t, ticket, id));
                match t.objects.get_mut(&id) {
                    None => {
                        drop(t);
                        error_reply(
                            out,
                            K::NoSuchObject,
                            format!("object {id} no longer exists"),
                        );
                    }
                    Some(e) => {
                        if let Err(msg) = e.obj.check_type(&kind, types) {
                            drop(t);
                            if claimed {
                                self.release(vec![id]);
                            }
                            error_reply(out, K::TypeMismatch, msg);
                        } else {
                            if !claimed {
                                e.refs += 1;
                            }
                            drop(t);
                            *st.held.entry(id).or_insert(0) += 1;
                            out.push(OK);
                        }
                    }
                }
                Reply::Some
            }
            Request::Transfer { ids } => {
                let ticket = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let mut t = self.table.lock();
                let now = Instant::now();
                let expired: Vec<u64> = t
                    .transfers
                    .iter()
                    .filter(|(_, (_, at))| now.duration_since(*at) > TICKET_TTL)
                    .map(|(k, _)| *k)
                    .collect();
                let mut stale = Vec::new();
                for k in expired {
                    stale.extend(
                        t.transfers
                            .remove(&k)
                            .map(|(ids, _)| ids)
                            .unwrap_or_default(),
                    );
                }
                let ids: Vec<u64> = ids
                    .into_iter()
                    .filter(|id| match t.objects.get_mut(id) {
                        Some(e) => {
                            e.refs += 1;
                            true
                        }
                        None => false,
                    })
                    .collect();
                t.transfers.insert(ticket, (ids, now));
                drop(t);
                self.release(stale);
                out.push(OK);
                crate::protocol::put_varint(out, ticket);
                Reply::Some
            }
            Request::DropTicket { ticket, id } => {
                let claimed = claim(&mut self.table.lock(), ticket, id);
                if claimed {
                    self.release(vec![id]);
                }
                Reply::None
            }
            Request::Decref { id } => {
                if let Some(n) = st.held.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        st.held.remove(&id);
                    }
                    self.release(vec![id]);
                }
                Reply::None
            }
            Request::Publish { name, id } => {
                let mut t = self.table.lock();
                match t.objects.get_mut(&id) {
                    None => {
                        drop(t);
                        error_reply(
                            out,
                            K::NoSuchObject,
                            format!("object {id} no longer exists"),
                        );
                    }
                    Some(e) => {
                        e.refs += 1;
                        let old = t.names.insert(name.to_string(), id);
                        drop(t);
                        if let Some(old) = old {
                            self.release(vec![old]);
                        }
                        out.push(OK);
                    }
                }
                Reply::Some
            }
            Request::Lookup { name, kind, types } => {
                let mut t = self.table.lock();
                let Some(&id) = t.names.get(name) else {
                    drop(t);
                    error_reply(
                        out,
                        K::NoSuchName,
                        format!("no object is published under the name {name:?}"),
                    );
                    return Reply::Some;
                };
                let e = t.objects.get_mut(&id).expect("a published object exists");
                if let Err(msg) = e.obj.check_type(&kind, types) {
                    drop(t);
                    error_reply(out, K::TypeMismatch, msg);
                } else {
                    e.refs += 1;
                    drop(t);
                    *st.held.entry(id).or_insert(0) += 1;
                    out.push(OK);
                    crate::protocol::put_varint(out, id);
                }
                Reply::Some
            }
            Request::NumberOfObjects => {
                let n = self.table.lock().objects.len();
                out.push(OK);
                crate::protocol::put_varint(out, n as u64);
                Reply::Some
            }
            Request::Shutdown => {
                out.push(OK);
                Reply::Stop
            }
            Request::Ping => {
                out.push(OK);
                Reply::Some
            }
            Request::TrackSegment { name } => {
                self.segments.lock().push(name.to_string());
                out.push(OK);
                Reply::Some
            }
            Request::ReleaseSegment { name } => {
                self.segments.lock().retain(|n| n != name);
                out.push(OK);
                Reply::Some
            }
            Request::ListSegments => {
                out.push(OK);
                let names = self.segments.lock().clone();
                let _ = multiproc_core::reduction::append(&names, out);
                Reply::Some
            }
        }
    }

    /// After a call: keep track of the locks this connection holds, release references the
    /// operation dropped, and turn an error into an error reply.
    fn finish(&self, outcome: Outcome, id: u64, st: &mut ConnState, out: &mut Vec<u8>) {
        match outcome {
            Outcome::Done { released, locked } => {
                match locked {
                    Some(true) => {
                        st.locks.insert(id);
                    }
                    Some(false) => {
                        st.locks.remove(&id);
                    }
                    None => {}
                }
                self.release(released);
            }
            Outcome::Returned { held } => st.deferred.extend(held),
            Outcome::Failed(kind, msg, released) => {
                self.release(released);
                error_reply(out, kind, msg);
            }
        }
    }

    /// The object of a call and the references for the proxies in its arguments; `None`
    /// (with the error reply in `out`) when either is gone.
    fn target(
        &self,
        id: u64,
        embedded: &[(u32, u64)],
        out: &mut Vec<u8>,
    ) -> Option<(Arc<Obj>, Embedded)> {
        let Some(obj) = self.get(id) else {
            error_reply(
                out,
                K::NoSuchObject,
                format!("object {id} no longer exists"),
            );
            return None;
        };
        match self.take_refs(embedded) {
            Ok(refs) => Some((obj, refs)),
            Err(e) => {
                error_reply(out, K::NoSuchObject, e);
                None
            }
        }
    }

    fn get(&self, id: u64) -> Option<Arc<Obj>> {
        self.table.lock().objects.get(&id).map(|e| e.obj.clone())
    }

    /// Takes a reference to each object that a proxy inside an argument names (values about
    /// to be stored), as `(argument index, object id)`.
    fn take_refs(&self, ids: &[(u32, u64)]) -> Result<Embedded, String> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut t = self.table.lock();
        if let Some((_, missing)) = ids.iter().find(|(_, id)| !t.objects.contains_key(id)) {
            return Err(format!(
                "object {missing} (named by a proxy inside the value) no longer exists"
            ));
        }
        for (_, id) in ids {
            t.objects.get_mut(id).expect("checked").refs += 1;
        }
        Ok(ids.to_vec())
    }

    /// Drops one reference to each object in `ids`; objects left without references are
    /// dropped, and with them the references their contents held.
    pub(crate) fn release(&self, mut ids: Vec<u64>) {
        while let Some(id) = ids.pop() {
            let freed = {
                let mut t = self.table.lock();
                match t.objects.get_mut(&id) {
                    Some(e) if e.refs > 1 => {
                        e.refs -= 1;
                        None
                    }
                    Some(_) => t.objects.remove(&id).map(|e| e.obj),
                    None => None,
                }
            };
            if let Some(obj) = freed {
                ids.extend(obj.drop_contents());
            }
        }
    }

    fn release_connection(&self, mut st: ConnState) {
        self.release(std::mem::take(&mut st.deferred));
        for id in &st.locks {
            if let Some(obj) = self.get(*id) {
                obj.abandon(st.id);
            }
        }
        let mut ids = Vec::new();
        for (id, n) in st.held {
            ids.extend(std::iter::repeat_n(id, n));
        }
        self.release(ids);
    }
}

/// Takes `id` out of `ticket`'s references (it then belongs to the claimant); whether it was
/// there.
fn claim(t: &mut Table, ticket: u64, id: u64) -> bool {
    let Some((ids, _)) = t.transfers.get_mut(&ticket) else {
        return false;
    };
    let Some(pos) = ids.iter().position(|&i| i == id) else {
        return false;
    };
    ids.swap_remove(pos);
    if ids.is_empty() {
        t.transfers.remove(&ticket);
    }
    true
}

/// What to send back.
enum Reply {
    Some,
    None,
    Stop,
}

/// One connection's references and held locks.
struct ConnState {
    id: u64,
    /// References of values just returned, dropped at the next request (see
    /// `Outcome::Returned`).
    deferred: Vec<u64>,
    held: HashMap<u64, usize>,
    locks: HashSet<u64>,
}

/// What an operation knows of its caller.
pub(crate) struct CallCtx<'a> {
    /// The connection (the owner of a lock it takes).
    pub(crate) conn: u64,
    /// Whether the client still waits for the answer.
    pub(crate) alive: &'a Alive<'a>,
    /// References taken for proxies inside the arguments (stored with the value).
    pub(crate) refs: Embedded,
}

/// Tells whether the client of a connection is still there (its end not closed).
pub(crate) struct Alive<'a>(Option<BorrowedFd<'a>>);

impl Alive<'_> {
    /// `false` once the client closed its end (it exited or died): a blocked call gives up
    /// instead of taking an item or a lock that nobody would receive.
    pub(crate) fn check(&self) -> bool {
        let Some(fd) = self.0 else { return true };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP,
        )];
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            // The protocol is request-reply: while a call is served the client sends nothing,
            // so anything readable is the end of the connection.
            Ok(n) if n > 0 => fds[0].revents().is_empty(),
            _ => true,
        }
    }
}

/// How long a blocked operation sleeps between checks that its client is still there.
pub(crate) const ALIVE_SLICE: Duration = Duration::from_millis(100);

/// The end of a slice of waiting: `deadline` or [`ALIVE_SLICE`] from now, whichever is first.
pub(crate) fn slice_end(deadline: Option<Instant>) -> Instant {
    let slice = Instant::now() + ALIVE_SLICE;
    match deadline {
        Some(d) if d < slice => d,
        _ => slice,
    }
}

/// Receives one frame into `buf` (grown as needed); `None` when the connection ended.
fn recv_into(conn: &mut Connection, buf: &mut Vec<u8>) -> Option<usize> {
    match conn.recv_bytes_into(buf) {
        Ok(n) => Some(n),
        Err(multiproc_ipc::Error::BufferTooShort(message)) => {
            let n = message.len();
            *buf = message;
            Some(n)
        }
        Err(_) => None,
    }
}
