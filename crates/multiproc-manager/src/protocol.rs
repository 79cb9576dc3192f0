//! What travels between a proxy and the server.
//!
//! Every message is one frame of the connection (Python's 4-byte length prefix). A request is
//! the postcard encoding of [`Request`]; a reply is one status byte and a body: [`OK`] and the
//! result's bytes, typed by the operation (the server builds them from stored encodings: a
//! `Vec<(K, V)>` is the count as a varint followed by each stored key and value, exactly what
//! postcard decodes), or [`ERR`] and a postcard [`RemoteError`].
//!
//! The server never decodes a user value: it stores each argument's encoding as it came and
//! compares keys by their bytes. Only the arguments of the protocol itself (indices, counts,
//! timeouts, flags) are decoded by the server.

use serde::{Deserialize, Serialize};

use crate::error::{RemoteError, RemoteErrorKind};

/// A reply's first byte: the body is the result.
pub(crate) const OK: u8 = 0;
/// A reply's first byte: the body is a [`RemoteError`].
pub(crate) const ERR: u8 = 1;

/// The kinds of object a server holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `dict` ([`DictProxy`](crate::DictProxy)).
    Dict,
    /// `list` ([`ListProxy`](crate::ListProxy)).
    List,
    /// `Namespace` ([`NamespaceProxy`](crate::NamespaceProxy)).
    Namespace,
    /// `Value` ([`ValueProxy`](crate::ValueProxy)).
    Value,
    /// `Array` ([`ArrayProxy`](crate::ArrayProxy)).
    Array,
    /// `Queue` ([`QueueProxy`](crate::QueueProxy)).
    Queue,
    /// `JoinableQueue` ([`JoinableQueueProxy`](crate::JoinableQueueProxy)).
    JoinableQueue,
    /// `Lock` ([`LockProxy`](crate::LockProxy)).
    Lock,
    /// `RLock` ([`RLockProxy`](crate::RLockProxy)).
    RLock,
    /// `Semaphore` ([`SemaphoreProxy`](crate::SemaphoreProxy)).
    Semaphore,
    /// `BoundedSemaphore` ([`SemaphoreProxy`](crate::SemaphoreProxy), bounded).
    BoundedSemaphore,
    /// `Condition` ([`ConditionProxy`](crate::ConditionProxy)).
    Condition,
    /// `Event` ([`EventProxy`](crate::EventProxy)).
    Event,
    /// `Barrier` ([`BarrierProxy`](crate::BarrierProxy)).
    Barrier,
    /// A registered user type, by its type id ([`Managed`](crate::Managed)).
    Custom(String),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Custom(name) => write!(f, "{name}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A request from a proxy (or a manager handle) to the server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request<'a> {
    /// Makes an object; the connection that asks holds the first reference. `init` are the
    /// encoded initial contents, as the kind takes them.
    Create {
        kind: Kind,
        types: &'a str,
        #[serde(borrow)]
        init: Vec<&'a [u8]>,
        embedded: Vec<(u32, u64)>,
    },
    /// One more reference to `id`, held by this connection; refused when the object is gone or
    /// has another kind or other types than the proxy expects. With a `ticket` (see
    /// [`Request::Transfer`]) that holds a reference to `id`, that reference becomes this
    /// connection's instead of a new one.
    Incref {
        id: u64,
        kind: Kind,
        types: &'a str,
        ticket: Option<u64>,
    },
    /// References to `ids` held for a proxy in transit (sent to a child, over a pipe …) until
    /// the receiver claims them with an `Incref` naming the ticket this returns, or until
    /// they expire (a minute). So a proxy whose sender drops it right after sending still
    /// finds its object.
    Transfer { ids: Vec<u64> },
    /// The receiver of a ticket already had a reference: drop the ticket's one for `id` (no
    /// reply).
    DropTicket { ticket: u64, id: u64 },
    /// One reference fewer (no reply).
    Decref { id: u64 },
    /// An operation on an object: `op` is one of [`op`]'s codes, `args` the encoded arguments
    /// and `embedded` the objects of this server that proxies inside the arguments name.
    Call {
        id: u64,
        op: u8,
        #[serde(borrow)]
        args: Vec<&'a [u8]>,
        embedded: Vec<(u32, u64)>,
    },
    /// A method of a registered type ([`Managed`](crate::Managed)).
    Method {
        id: u64,
        method: &'a str,
        #[serde(borrow)]
        args: &'a [u8],
        embedded: Vec<(u32, u64)>,
    },
    /// Gives an object a name on the server (which then holds a reference for the name).
    Publish { name: &'a str, id: u64 },
    /// The object published under `name`; a reference for this connection.
    Lookup {
        name: &'a str,
        kind: Kind,
        types: &'a str,
    },
    /// How many objects the server holds (Python's `number_of_objects`, for tests).
    NumberOfObjects,
    /// Stops the server (a shared-memory manager's first unlinks the segments it tracks).
    Shutdown,
    /// Tracks a shared-memory segment: the server unlinks it when it stops
    /// ([`SharedMemoryManager`](crate::SharedMemoryManager); Python's `track_segment`).
    TrackSegment { name: &'a str },
    /// Stops tracking a segment (Python's `release_segment`).
    ReleaseSegment { name: &'a str },
    /// The names of the tracked segments (Python's `list_segments`).
    ListSegments,
    /// Nothing (Python's `dummy`): checks the connection.
    Ping,
}

/// Operation codes of [`Request::Call`], by kind.
pub(crate) mod op {
    // dict
    pub(crate) const DICT_GET: u8 = 1;
    pub(crate) const DICT_GET_ITEM: u8 = 2;
    pub(crate) const DICT_SET: u8 = 3;
    pub(crate) const DICT_INSERT: u8 = 4;
    pub(crate) const DICT_REMOVE: u8 = 5;
    pub(crate) const DICT_POP: u8 = 6;
    pub(crate) const DICT_CONTAINS: u8 = 7;
    pub(crate) const LEN: u8 = 8;
    pub(crate) const DICT_KEYS: u8 = 9;
    pub(crate) const DICT_VALUES: u8 = 10;
    pub(crate) const DICT_ITEMS: u8 = 11;
    pub(crate) const DICT_UPDATE: u8 = 12;
    pub(crate) const CLEAR: u8 = 13;
    pub(crate) const DICT_SETDEFAULT: u8 = 14;
    pub(crate) const DICT_UPDATE_WITH: u8 = 15;
    // list and array
    pub(crate) const LIST_APPEND: u8 = 20;
    pub(crate) const LIST_EXTEND: u8 = 21;
    pub(crate) const LIST_GET: u8 = 22;
    pub(crate) const LIST_SET: u8 = 23;
    pub(crate) const LIST_INSERT: u8 = 24;
    pub(crate) const LIST_POP: u8 = 25;
    pub(crate) const LIST_REMOVE: u8 = 26;
    pub(crate) const LIST_INDEX: u8 = 27;
    pub(crate) const LIST_RANGE: u8 = 28;
    pub(crate) const LIST_SORT: u8 = 29;
    pub(crate) const LIST_COUNT: u8 = 30;
    pub(crate) const LIST_CONTAINS: u8 = 31;
    // value
    pub(crate) const VALUE_GET: u8 = 40;
    pub(crate) const VALUE_SET: u8 = 41;
    pub(crate) const VALUE_UPDATE_WITH: u8 = 42;
    // namespace
    pub(crate) const NS_GET: u8 = 45;
    pub(crate) const NS_SET: u8 = 46;
    pub(crate) const NS_DEL: u8 = 47;
    pub(crate) const NS_NAMES: u8 = 48;
    // queues
    pub(crate) const Q_PUT: u8 = 50;
    pub(crate) const Q_GET: u8 = 51;
    pub(crate) const Q_QSIZE: u8 = 52;
    pub(crate) const Q_TASK_DONE: u8 = 53;
    pub(crate) const Q_JOIN: u8 = 54;
    pub(crate) const Q_MAXSIZE: u8 = 55;
    // lock, rlock, semaphore, condition
    pub(crate) const ACQUIRE: u8 = 60;
    pub(crate) const RELEASE: u8 = 61;
    pub(crate) const LOCKED: u8 = 62;
    pub(crate) const SEM_VALUE: u8 = 63;
    pub(crate) const COND_WAIT: u8 = 64;
    pub(crate) const COND_NOTIFY: u8 = 65;
    // event
    pub(crate) const EVENT_SET: u8 = 70;
    pub(crate) const EVENT_CLEAR: u8 = 71;
    pub(crate) const EVENT_IS_SET: u8 = 72;
    pub(crate) const EVENT_WAIT: u8 = 73;
    // barrier
    pub(crate) const BARRIER_WAIT: u8 = 80;
    pub(crate) const BARRIER_ABORT: u8 = 81;
    pub(crate) const BARRIER_RESET: u8 = 82;
    pub(crate) const BARRIER_STATE: u8 = 83;
    // any object: a copy of the whole referent (Python's `_getvalue`)
    pub(crate) const GET_VALUE: u8 = 90;
}

/// Appends the error reply for `kind` and `message` to `out`.
pub(crate) fn error_reply(out: &mut Vec<u8>, kind: RemoteErrorKind, message: impl Into<String>) {
    out.clear();
    out.push(ERR);
    let err = RemoteError {
        kind,
        message: message.into(),
    };
    // A RemoteError always encodes.
    let _ = multiproc_core::reduction::append(&err, out);
}

/// Appends `v` as a postcard varint (what postcard writes for a `usize`, `u64` or a length).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
