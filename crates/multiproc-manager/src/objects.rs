//! The objects a server holds, and their operations on encoded values.
//!
//! Values are kept as the bytes the client encoded (`Blob`), with the references that proxies
//! inside them hold. Keys compare by their bytes: two keys are the same key when they encode
//! the same (true of every type whose equal values encode alike; not of floats, where `0.0`
//! and `-0.0` are two keys and NaN equals itself, see docs/decisions.md).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use multiproc_core::AnyFnRef;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::custom::CustomReq;
use crate::error::RemoteErrorKind as K;
use crate::protocol::{Kind, op, put_varint};
use crate::server::{Alive, CallCtx, slice_end};

/// A stored value: its encoding and the objects that proxies inside it name.
#[derive(Debug, Default)]
pub(crate) struct Blob {
    bytes: Vec<u8>,
    refs: Vec<u64>,
}

impl Blob {
    pub(crate) fn new(bytes: &[u8], refs: Vec<u64>) -> Blob {
        Blob {
            bytes: bytes.to_vec(),
            refs,
        }
    }
}

/// How an operation ended.
pub(crate) enum Outcome {
    /// Done; `released` are references it dropped (values replaced or removed), `locked`
    /// tells whether the calling connection now holds (`Some(true)`) or no longer holds
    /// (`Some(false)`) the object's lock.
    Done {
        released: Vec<u64>,
        locked: Option<bool>,
    },
    /// Done, and the reply holds the removed value whose references are `held`: the server
    /// keeps them until the client's next request on this connection (by then the client has
    /// decoded the reply and taken references of its own for the proxies in it).
    Returned { held: Vec<u64> },
    /// Failed with an error for the client; references it dropped.
    Failed(K, String, Vec<u64>),
}

fn done() -> Outcome {
    Outcome::Done {
        released: Vec::new(),
        locked: None,
    }
}

fn released(blob: Option<Blob>) -> Outcome {
    Outcome::Done {
        released: blob.map(|b| b.refs).unwrap_or_default(),
        locked: None,
    }
}

fn returned(blob: Option<Blob>) -> Outcome {
    Outcome::Returned {
        held: blob.map(|b| b.refs).unwrap_or_default(),
    }
}

fn fail(kind: K, msg: impl Into<String>) -> Outcome {
    Outcome::Failed(kind, msg.into(), Vec::new())
}

/// The lock part of a `Lock`, `RLock` or `Condition`: which connection holds it, how often.
#[derive(Debug, Default)]
struct Owner {
    conn: Option<u64>,
    count: u32,
}

#[derive(Debug)]
struct Barrier {
    parties: u64,
    count: u64,
    generation: u64,
    broken: bool,
    /// The generation a `reset` ended while threads waited in it.
    reset_generation: Option<u64>,
}

#[derive(Debug)]
enum State {
    Dict(IndexMap<Vec<u8>, Blob>),
    List {
        items: Vec<Blob>,
        fixed: bool,
    },
    Namespace(IndexMap<String, (String, Blob)>),
    Value(Blob),
    Queue {
        items: VecDeque<Blob>,
        maxsize: usize,
        unfinished: u64,
    },
    Lock {
        owner: Owner,
        recursive: bool,
    },
    Semaphore {
        value: u64,
        bound: Option<u64>,
    },
    Condition {
        owner: Owner,
        next_ticket: u64,
        waiting: VecDeque<u64>,
        notified: Vec<u64>,
    },
    Event {
        flag: bool,
        generation: u64,
    },
    Barrier(Barrier),
    Custom(AnyFnRef),
}

/// An object of the server.
pub(crate) struct Obj {
    id: u64,
    kind: Kind,
    types: String,
    state: Mutex<State>,
    cv: Condvar,
}

/// A protocol argument decoded by the server.
fn arg<'a, T: serde::Deserialize<'a>>(args: &[&'a [u8]], i: usize) -> Result<T, Outcome> {
    let bytes = args
        .get(i)
        .ok_or_else(|| fail(K::Protocol, format!("argument {i} is missing")))?;
    postcard::from_bytes(bytes).map_err(|e| fail(K::Protocol, format!("argument {i}: {e}")))
}

fn raw<'a>(args: &[&'a [u8]], i: usize) -> Result<&'a [u8], Outcome> {
    args.get(i)
        .copied()
        .ok_or_else(|| fail(K::Protocol, format!("argument {i} is missing")))
}

/// `(block, timeout in ns)` → a deadline (`None`: forever).
fn deadline(args: &[&[u8]], i: usize) -> Result<Option<Instant>, Outcome> {
    let (block, timeout): (bool, Option<u64>) = arg(args, i)?;
    let now = Instant::now();
    Ok(if !block {
        Some(now)
    } else {
        timeout.and_then(|ns| now.checked_add(Duration::from_nanos(ns)))
    })
}

/// Waits on `cv` for one slice; `Err` when the deadline passed or the client went away.
fn block(
    cv: &Condvar,
    g: &mut MutexGuard<'_, State>,
    deadline: Option<Instant>,
    alive: &Alive<'_>,
) -> Result<(), Wait> {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(Wait::TimedOut);
    }
    if cv.wait_until(g, slice_end(deadline)).timed_out() && !alive.check() {
        return Err(Wait::Gone);
    }
    Ok(())
}

enum Wait {
    TimedOut,
    Gone,
}

impl Wait {
    /// The outcome of a wait for a flag (`acquire`, `join`, an event's `wait`): `false` on a
    /// timeout, the client's absence as an error.
    fn flag(r: Result<(), Wait>, out: &mut Vec<u8>) -> Result<Outcome, Outcome> {
        match r {
            Ok(()) => {
                put_bool(out, true);
                Ok(done())
            }
            Err(Wait::TimedOut) => {
                put_bool(out, false);
                Ok(done())
            }
            Err(Wait::Gone) => Err(gone()),
        }
    }
}

fn gone() -> Outcome {
    fail(K::RuntimeError, "the client went away while it waited")
}

/// Python's index rule: negative counts from the end; `None` when out of range.
fn index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 { i + len as i64 } else { i };
    (0..len as i64).contains(&i).then_some(i as usize)
}

/// Python's slice bound rule (clamped).
fn bound(i: Option<i64>, len: usize, default: usize) -> usize {
    match i {
        None => default,
        Some(i) if i < 0 => (i + len as i64).max(0) as usize,
        Some(i) => (i as usize).min(len),
    }
}

fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

fn put_option(out: &mut Vec<u8>, b: Option<&Blob>) {
    match b {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&b.bytes);
        }
        None => out.push(0),
    }
}

/// The refs that came with argument `i`.
fn refs_of(ctx: &mut CallCtx<'_>, i: u32) -> Vec<u64> {
    let mut mine = Vec::new();
    ctx.refs.retain(|&(a, id)| {
        if a == i {
            mine.push(id);
            false
        } else {
            true
        }
    });
    mine
}

fn blob_of(args: &[&[u8]], ctx: &mut CallCtx<'_>, i: usize) -> Result<Blob, Outcome> {
    Ok(Blob::new(raw(args, i)?, refs_of(ctx, i as u32)))
}

/// Calls a function reference (sent as an argument) with `input`; its encoded result.
fn call_fn(f: &[u8], input: &[u8]) -> Result<Vec<u8>, Outcome> {
    let f: AnyFnRef = postcard::from_bytes(f).map_err(|e| {
        fail(
            K::Function,
            format!("the function cannot be called here: {e}"),
        )
    })?;
    f.call_encoded(input, Vec::new())
        .map(|(bytes, _fds)| bytes)
        .map_err(|e| fail(K::Function, e.to_string()))
}

impl Obj {
    /// Waits on the object's condvar until `ready` gives a value (checked first, and after
    /// every wake-up), the deadline passes or the client goes.
    fn wait_until<R>(
        &self,
        st: &mut MutexGuard<'_, State>,
        deadline: Option<Instant>,
        alive: &Alive<'_>,
        mut ready: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R, Wait> {
        loop {
            if let Some(r) = ready(st) {
                return Ok(r);
            }
            block(&self.cv, st, deadline, alive)?;
        }
    }

    pub(crate) fn create(
        id: u64,
        kind: Kind,
        types: String,
        init: &[&[u8]],
        mut refs: Vec<(u32, u64)>,
        handler: Option<AnyFnRef>,
    ) -> Result<Obj, (K, String, Vec<u64>)> {
        let mut take = |i: usize| {
            let mut mine = Vec::new();
            refs.retain(|&(a, r)| {
                if a as usize == i {
                    mine.push(r);
                    false
                } else {
                    true
                }
            });
            Blob::new(init[i], mine)
        };
        let protocol = |what: &str| {
            (
                K::Protocol,
                format!("bad initial value for a {what}"),
                Vec::new(),
            )
        };
        let state = match &kind {
            Kind::Dict => {
                let mut map = IndexMap::with_capacity(init.len() / 2);
                let mut released = Vec::new();
                for i in (0..init.len() / 2 * 2).step_by(2) {
                    let key = init[i].to_vec();
                    let _ = take(i);
                    let value = take(i + 1);
                    if let Some(old) = map.insert(key, value) {
                        released.extend(old.refs);
                    }
                }
                if !released.is_empty() {
                    return Err((K::Protocol, "duplicate keys".into(), released));
                }
                State::Dict(map)
            }
            Kind::List | Kind::Array => State::List {
                items: (0..init.len()).map(&mut take).collect(),
                fixed: kind == Kind::Array,
            },
            Kind::Namespace => State::Namespace(IndexMap::new()),
            Kind::Value => {
                if init.len() != 1 {
                    return Err(protocol("value"));
                }
                State::Value(take(0))
            }
            Kind::Queue | Kind::JoinableQueue => {
                let maxsize = init
                    .first()
                    .and_then(|b| postcard::from_bytes::<u64>(b).ok())
                    .ok_or_else(|| protocol("queue"))?;
                State::Queue {
                    items: VecDeque::new(),
                    maxsize: maxsize as usize,
                    unfinished: 0,
                }
            }
            Kind::Lock | Kind::RLock => State::Lock {
                owner: Owner::default(),
                recursive: kind == Kind::RLock,
            },
            Kind::Semaphore | Kind::BoundedSemaphore => {
                let value = init
                    .first()
                    .and_then(|b| postcard::from_bytes::<u64>(b).ok())
                    .ok_or_else(|| protocol("semaphore"))?;
                State::Semaphore {
                    value,
                    bound: (kind == Kind::BoundedSemaphore).then_some(value),
                }
            }
            Kind::Condition => State::Condition {
                owner: Owner::default(),
                next_ticket: 0,
                waiting: VecDeque::new(),
                notified: Vec::new(),
            },
            Kind::Event => State::Event {
                flag: false,
                generation: 0,
            },
            Kind::Barrier => {
                let parties = init
                    .first()
                    .and_then(|b| postcard::from_bytes::<u64>(b).ok())
                    .filter(|&n| n > 0)
                    .ok_or((
                        K::ValueError,
                        "a barrier needs at least one party".to_string(),
                        Vec::new(),
                    ))?;
                State::Barrier(Barrier {
                    parties,
                    count: 0,
                    generation: 0,
                    broken: false,
                    reset_generation: None,
                })
            }
            Kind::Custom(_) => {
                let handler = handler.expect("the server looked the handler up");
                let init = init.first().copied().unwrap_or_default();
                custom_call(
                    &handler,
                    &CustomReq::Create {
                        id,
                        init: init.to_vec(),
                    },
                )
                .map_err(|(k, m)| (k, m, Vec::new()))?;
                State::Custom(handler)
            }
        };
        Ok(Obj {
            id,
            kind,
            types,
            state: Mutex::new(state),
            cv: Condvar::new(),
        })
    }

    /// `Err` with a message naming both when a proxy of `kind<types>` cannot use this object.
    pub(crate) fn check_type(&self, kind: &Kind, types: &str) -> Result<(), String> {
        if *kind == self.kind && types == self.types {
            Ok(())
        } else {
            Err(format!(
                "object {} is a {}<{}>, not a {}<{}>",
                self.id, self.kind, self.types, kind, types
            ))
        }
    }

    /// Empties the object (it is being dropped); the references its contents held.
    pub(crate) fn drop_contents(&self) -> Vec<u64> {
        let mut st = self.state.lock();
        let mut refs = Vec::new();
        match &mut *st {
            State::Dict(map) => map.drain(..).for_each(|(_, b)| refs.extend(b.refs)),
            State::List { items, .. } => items.drain(..).for_each(|b| refs.extend(b.refs)),
            State::Namespace(map) => map.drain(..).for_each(|(_, (_, b))| refs.extend(b.refs)),
            State::Value(b) => refs.append(&mut b.refs),
            State::Queue { items, .. } => items.drain(..).for_each(|b| refs.extend(b.refs)),
            State::Custom(handler) => {
                let _ = custom_call(handler, &CustomReq::Drop { id: self.id });
            }
            _ => {}
        }
        self.cv.notify_all();
        refs
    }

    /// Releases the lock if connection `conn` (which closed) held it.
    pub(crate) fn abandon(&self, conn: u64) {
        let mut st = self.state.lock();
        if let State::Lock { owner, .. } | State::Condition { owner, .. } = &mut *st
            && owner.conn == Some(conn)
        {
            *owner = Owner::default();
            self.cv.notify_all();
        }
    }

    /// A registered type's method.
    pub(crate) fn method(&self, method: &str, args: &[u8], out: &mut Vec<u8>) -> Outcome {
        let handler = match &*self.state.lock() {
            State::Custom(h) => *h,
            _ => {
                return fail(
                    K::NotExposed,
                    format!("a {} has no method {method:?}", self.kind),
                );
            }
        };
        let req = CustomReq::Call {
            id: self.id,
            method: method.to_string(),
            args: args.to_vec(),
        };
        match custom_call(&handler, &req) {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                done()
            }
            Err((k, m)) => fail(k, m),
        }
    }

    /// Runs operation `op` with `args`, appending the result's encoding to `out`.
    pub(crate) fn call(
        &self,
        op: u8,
        args: &[&[u8]],
        ctx: &mut CallCtx<'_>,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match self.call_inner(op, args, ctx, out) {
            Ok(o) | Err(o) => o,
        }
    }

    fn call_inner(
        &self,
        op: u8,
        args: &[&[u8]],
        ctx: &mut CallCtx<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, Outcome> {
        let mut st = self.state.lock();
        if op == op::GET_VALUE {
            return self.get_value(&st, out);
        }
        let bad_op = || {
            fail(
                K::Protocol,
                format!("operation {op} is not one of a {}", self.kind),
            )
        };
        Ok(match &mut *st {
            State::Dict(map) => match op {
                op::DICT_GET => {
                    put_option(out, map.get(raw(args, 0)?));
                    done()
                }
                op::DICT_GET_ITEM => match map.get(raw(args, 0)?) {
                    Some(b) => {
                        out.extend_from_slice(&b.bytes);
                        done()
                    }
                    None => fail(K::KeyError, "the key is not in the dict"),
                },
                op::DICT_SET => {
                    let key = raw(args, 0)?.to_vec();
                    let value = blob_of(args, ctx, 1)?;
                    released(map.insert(key, value))
                }
                op::DICT_INSERT => {
                    let key = raw(args, 0)?.to_vec();
                    let value = blob_of(args, ctx, 1)?;
                    let old = map.insert(key, value);
                    put_option(out, old.as_ref());
                    returned(old)
                }
                op::DICT_REMOVE => {
                    let old = map.shift_remove(raw(args, 0)?);
                    put_option(out, old.as_ref());
                    returned(old)
                }
                op::DICT_POP => match map.shift_remove(raw(args, 0)?) {
                    Some(b) => {
                        out.extend_from_slice(&b.bytes);
                        returned(Some(b))
                    }
                    None => fail(K::KeyError, "the key is not in the dict"),
                },
                op::DICT_CONTAINS => {
                    put_bool(out, map.contains_key(raw(args, 0)?));
                    done()
                }
                op::LEN => {
                    put_varint(out, map.len() as u64);
                    done()
                }
                op::DICT_KEYS | op::DICT_VALUES | op::DICT_ITEMS => {
                    put_varint(out, map.len() as u64);
                    for (k, v) in map.iter() {
                        if op != op::DICT_VALUES {
                            out.extend_from_slice(k);
                        }
                        if op != op::DICT_KEYS {
                            out.extend_from_slice(&v.bytes);
                        }
                    }
                    done()
                }
                op::DICT_UPDATE => {
                    let mut rel = Vec::new();
                    for i in (0..args.len() / 2 * 2).step_by(2) {
                        let value = blob_of(args, ctx, i + 1)?;
                        if let Some(old) = map.insert(args[i].to_vec(), value) {
                            rel.extend(old.refs);
                        }
                    }
                    Outcome::Done {
                        released: rel,
                        locked: None,
                    }
                }
                op::CLEAR => {
                    let mut rel = Vec::new();
                    map.drain(..).for_each(|(_, b)| rel.extend(b.refs));
                    Outcome::Done {
                        released: rel,
                        locked: None,
                    }
                }
                op::DICT_SETDEFAULT => {
                    let key = raw(args, 0)?;
                    if let Some(b) = map.get(key) {
                        out.extend_from_slice(&b.bytes);
                    } else {
                        let value = blob_of(args, ctx, 1)?;
                        out.extend_from_slice(&value.bytes);
                        map.insert(key.to_vec(), value);
                    }
                    done()
                }
                op::DICT_UPDATE_WITH => {
                    let key = raw(args, 0)?;
                    let mut input = Vec::new();
                    put_option(&mut input, map.get(key));
                    let new = call_fn(raw(args, 1)?, &input)?;
                    out.extend_from_slice(&new);
                    match map.get_mut(key) {
                        // The old value's proxies stay referenced: the new value may still
                        // hold them (the function cannot say).
                        Some(b) => b.bytes = new,
                        None => {
                            map.insert(
                                key.to_vec(),
                                Blob {
                                    bytes: new,
                                    refs: Vec::new(),
                                },
                            );
                        }
                    }
                    done()
                }
                _ => bad_op(),
            },
            State::List { items, fixed } => {
                let resize = matches!(
                    op,
                    op::LIST_APPEND
                        | op::LIST_EXTEND
                        | op::LIST_INSERT
                        | op::LIST_POP
                        | op::LIST_REMOVE
                        | op::CLEAR
                );
                if *fixed && resize {
                    return Err(fail(K::ValueError, "an array's length is fixed"));
                }
                match op {
                    op::LIST_APPEND => {
                        items.push(blob_of(args, ctx, 0)?);
                        done()
                    }
                    op::LIST_EXTEND => {
                        for i in 0..args.len() {
                            items.push(blob_of(args, ctx, i)?);
                        }
                        done()
                    }
                    op::LIST_GET => {
                        let i: i64 = arg(args, 0)?;
                        match index(i, items.len()) {
                            Some(i) => {
                                out.extend_from_slice(&items[i].bytes);
                                done()
                            }
                            None => fail(
                                K::IndexError,
                                format!("index {i} out of range (length {})", items.len()),
                            ),
                        }
                    }
                    op::LIST_SET => {
                        let i: i64 = arg(args, 0)?;
                        match index(i, items.len()) {
                            Some(i) => {
                                let value = blob_of(args, ctx, 1)?;
                                released(Some(std::mem::replace(&mut items[i], value)))
                            }
                            None => fail(
                                K::IndexError,
                                format!(
                                    "assignment index {i} out of range (length {})",
                                    items.len()
                                ),
                            ),
                        }
                    }
                    op::LIST_INSERT => {
                        let i: i64 = arg(args, 0)?;
                        let at = bound(Some(i), items.len(), items.len());
                        items.insert(at, blob_of(args, ctx, 1)?);
                        done()
                    }
                    op::LIST_POP => {
                        let i: Option<i64> = arg(args, 0)?;
                        if items.is_empty() {
                            return Err(fail(K::IndexError, "pop from an empty list"));
                        }
                        match index(i.unwrap_or(-1), items.len()) {
                            Some(i) => {
                                let b = items.remove(i);
                                out.extend_from_slice(&b.bytes);
                                returned(Some(b))
                            }
                            None => fail(K::IndexError, "pop index out of range"),
                        }
                    }
                    op::LIST_REMOVE => {
                        let v = raw(args, 0)?;
                        match items.iter().position(|b| b.bytes == v) {
                            Some(i) => released(Some(items.remove(i))),
                            None => fail(K::ValueError, "list.remove(x): x not in list"),
                        }
                    }
                    op::LIST_INDEX => {
                        let v = raw(args, 0)?;
                        match items.iter().position(|b| b.bytes == v) {
                            Some(i) => {
                                put_varint(out, i as u64);
                                done()
                            }
                            None => fail(K::ValueError, "x is not in list"),
                        }
                    }
                    op::LIST_COUNT => {
                        let v = raw(args, 0)?;
                        put_varint(out, items.iter().filter(|b| b.bytes == v).count() as u64);
                        done()
                    }
                    op::LIST_CONTAINS => {
                        let v = raw(args, 0)?;
                        put_bool(out, items.iter().any(|b| b.bytes == v));
                        done()
                    }
                    op::LIST_RANGE => {
                        let (start, end): (Option<i64>, Option<i64>) = arg(args, 0)?;
                        let len = items.len();
                        let (s, e) = (bound(start, len, 0), bound(end, len, len));
                        let range = if s < e { &items[s..e] } else { &[][..] };
                        put_varint(out, range.len() as u64);
                        for b in range {
                            out.extend_from_slice(&b.bytes);
                        }
                        done()
                    }
                    op::LEN => {
                        put_varint(out, items.len() as u64);
                        done()
                    }
                    op::CLEAR => {
                        let mut rel = Vec::new();
                        items.drain(..).for_each(|b| rel.extend(b.refs));
                        Outcome::Done {
                            released: rel,
                            locked: None,
                        }
                    }
                    op::LIST_SORT => {
                        let mut input = Vec::new();
                        put_varint(&mut input, items.len() as u64);
                        for b in items.iter() {
                            input.extend_from_slice(&b.bytes);
                        }
                        let perm = call_fn(raw(args, 0)?, &input)?;
                        let perm: Vec<u32> = postcard::from_bytes(&perm)
                            .map_err(|e| fail(K::Function, format!("bad permutation: {e}")))?;
                        let mut seen = vec![false; items.len()];
                        let ok = perm.len() == items.len()
                            && perm.iter().all(|&i| {
                                let i = i as usize;
                                i < seen.len() && !std::mem::replace(&mut seen[i], true)
                            });
                        if !ok {
                            return Err(fail(K::Function, "the sort returned no permutation"));
                        }
                        let mut old: Vec<Option<Blob>> = items.drain(..).map(Some).collect();
                        items.extend(
                            perm.iter()
                                .map(|&i| old[i as usize].take().expect("a permutation")),
                        );
                        done()
                    }
                    _ => bad_op(),
                }
            }
            State::Value(b) => match op {
                op::VALUE_GET => {
                    out.extend_from_slice(&b.bytes);
                    done()
                }
                op::VALUE_SET => {
                    let value = blob_of(args, ctx, 0)?;
                    released(Some(std::mem::replace(b, value)))
                }
                op::VALUE_UPDATE_WITH => {
                    let new = call_fn(raw(args, 0)?, &b.bytes)?;
                    out.extend_from_slice(&new);
                    b.bytes = new;
                    done()
                }
                _ => bad_op(),
            },
            State::Namespace(map) => match op {
                op::NS_GET => {
                    let name: &str = arg(args, 0)?;
                    let ty: &str = arg(args, 1)?;
                    match map.get(name) {
                        None => fail(
                            K::AttributeError,
                            format!("the namespace has no attribute {name:?}"),
                        ),
                        Some((t, _)) if t != ty => fail(
                            K::TypeMismatch,
                            format!("attribute {name:?} is a {t}, not a {ty}"),
                        ),
                        Some((_, b)) => {
                            out.extend_from_slice(&b.bytes);
                            done()
                        }
                    }
                }
                op::NS_SET => {
                    let name: &str = arg(args, 0)?;
                    let ty: &str = arg(args, 1)?;
                    let value = blob_of(args, ctx, 2)?;
                    released(
                        map.insert(name.to_string(), (ty.to_string(), value))
                            .map(|(_, b)| b),
                    )
                }
                op::NS_DEL => {
                    let name: &str = arg(args, 0)?;
                    match map.shift_remove(name) {
                        Some((_, b)) => released(Some(b)),
                        None => fail(
                            K::AttributeError,
                            format!("the namespace has no attribute {name:?}"),
                        ),
                    }
                }
                op::NS_NAMES => {
                    put_varint(out, map.len() as u64);
                    for name in map.keys() {
                        let _ = multiproc_core::reduction::append(name.as_str(), out);
                    }
                    done()
                }
                _ => bad_op(),
            },
            State::Queue {
                items,
                maxsize,
                unfinished,
            } => match op {
                op::Q_PUT => {
                    let deadline = deadline(args, 1)?;
                    let value = blob_of(args, ctx, 0)?;
                    let mut value = Some(value);
                    let put = self.wait_until(&mut st, deadline, ctx.alive, |s| {
                        let State::Queue {
                            items,
                            maxsize,
                            unfinished,
                        } = s
                        else {
                            unreachable!()
                        };
                        (*maxsize == 0 || items.len() < *maxsize).then(|| {
                            items.push_back(value.take().expect("put once"));
                            *unfinished += 1;
                        })
                    });
                    match put {
                        Ok(()) => {
                            self.cv.notify_all();
                            done()
                        }
                        Err(w) => {
                            // The value was not stored: its references go.
                            let refs = value.map(|b| b.refs).unwrap_or_default();
                            let (kind, msg) = match w {
                                Wait::TimedOut => (K::Full, "the queue is full"),
                                Wait::Gone => {
                                    (K::RuntimeError, "the client went away while it waited")
                                }
                            };
                            Outcome::Failed(kind, msg.into(), refs)
                        }
                    }
                }
                op::Q_GET => {
                    let deadline = deadline(args, 0)?;
                    let got = self.wait_until(&mut st, deadline, ctx.alive, |s| {
                        let State::Queue { items, .. } = s else {
                            unreachable!()
                        };
                        items.pop_front()
                    });
                    match got {
                        Ok(b) => {
                            out.extend_from_slice(&b.bytes);
                            self.cv.notify_all();
                            returned(Some(b))
                        }
                        Err(Wait::TimedOut) => fail(K::Empty, "the queue is empty"),
                        Err(Wait::Gone) => gone(),
                    }
                }
                op::Q_QSIZE => {
                    put_varint(out, items.len() as u64);
                    done()
                }
                op::Q_MAXSIZE => {
                    put_varint(out, *maxsize as u64);
                    done()
                }
                op::Q_TASK_DONE if self.kind == Kind::JoinableQueue => {
                    if *unfinished == 0 {
                        return Err(fail(K::ValueError, "task_done() called too many times"));
                    }
                    *unfinished -= 1;
                    if *unfinished == 0 {
                        self.cv.notify_all();
                    }
                    done()
                }
                op::Q_JOIN if self.kind == Kind::JoinableQueue => {
                    let deadline = deadline(args, 0)?;
                    let r = self.wait_until(&mut st, deadline, ctx.alive, |s| {
                        let State::Queue { unfinished, .. } = s else {
                            unreachable!()
                        };
                        (*unfinished == 0).then_some(())
                    });
                    return Wait::flag(r, out);
                }
                _ => bad_op(),
            },
            State::Lock { .. } | State::Condition { .. } => {
                return self.lock_op(st, op, args, ctx, out);
            }
            State::Semaphore { value, bound } => match op {
                op::ACQUIRE => {
                    let deadline = deadline(args, 0)?;
                    let r = self.wait_until(&mut st, deadline, ctx.alive, |s| {
                        let State::Semaphore { value, .. } = s else {
                            unreachable!()
                        };
                        (*value > 0).then(|| *value -= 1)
                    });
                    return Wait::flag(r, out);
                }
                op::RELEASE => {
                    if bound.is_some_and(|b| *value >= b) {
                        return Err(fail(K::ValueError, "Semaphore released too many times"));
                    }
                    *value = value.saturating_add(1);
                    self.cv.notify_all();
                    done()
                }
                op::SEM_VALUE => {
                    put_varint(out, *value);
                    done()
                }
                _ => bad_op(),
            },
            State::Event { flag, generation } => match op {
                op::EVENT_SET => {
                    if !*flag {
                        *flag = true;
                        *generation += 1;
                        self.cv.notify_all();
                    }
                    done()
                }
                op::EVENT_CLEAR => {
                    *flag = false;
                    done()
                }
                op::EVENT_IS_SET => {
                    put_bool(out, *flag);
                    done()
                }
                op::EVENT_WAIT => {
                    let deadline = deadline(args, 0)?;
                    let start = *generation;
                    let r = self.wait_until(&mut st, deadline, ctx.alive, |s| {
                        let State::Event { flag, generation } = s else {
                            unreachable!()
                        };
                        // Woken by a set() even if a clear() followed (Python's rule).
                        (*flag || *generation != start).then_some(())
                    });
                    return Wait::flag(r, out);
                }
                _ => bad_op(),
            },
            State::Barrier(b) => match op {
                op::BARRIER_WAIT => {
                    let deadline = deadline(args, 0)?;
                    if b.broken {
                        return Err(fail(K::BrokenBarrier, "the barrier is broken"));
                    }
                    let index = b.count;
                    b.count += 1;
                    if b.count == b.parties {
                        b.count = 0;
                        b.generation += 1;
                        self.cv.notify_all();
                        put_varint(out, index);
                        return Ok(done());
                    }
                    let generation = b.generation;
                    loop {
                        let State::Barrier(b) = &mut *st else {
                            unreachable!()
                        };
                        if b.generation != generation {
                            if b.reset_generation == Some(generation) {
                                return Err(fail(K::BrokenBarrier, "the barrier was reset"));
                            }
                            put_varint(out, index);
                            return Ok(done());
                        }
                        if b.broken {
                            return Err(fail(K::BrokenBarrier, "the barrier is broken"));
                        }
                        match block(&self.cv, &mut st, deadline, ctx.alive) {
                            Ok(()) => {}
                            Err(w) => {
                                // A waiter that times out or goes away breaks the barrier.
                                let State::Barrier(b) = &mut *st else {
                                    unreachable!()
                                };
                                b.broken = true;
                                b.count = b.count.saturating_sub(1);
                                self.cv.notify_all();
                                return Err(match w {
                                    Wait::TimedOut => {
                                        fail(K::BrokenBarrier, "timed out; the barrier is broken")
                                    }
                                    Wait::Gone => gone(),
                                });
                            }
                        }
                    }
                }
                op::BARRIER_ABORT => {
                    b.broken = true;
                    self.cv.notify_all();
                    done()
                }
                op::BARRIER_RESET => {
                    if b.count > 0 {
                        b.reset_generation = Some(b.generation);
                    }
                    b.generation += 1;
                    b.count = 0;
                    b.broken = false;
                    self.cv.notify_all();
                    done()
                }
                op::BARRIER_STATE => {
                    put_varint(out, b.parties);
                    put_varint(out, if b.broken { 0 } else { b.count });
                    put_bool(out, b.broken);
                    done()
                }
                _ => bad_op(),
            },
            State::Custom(_) => bad_op(),
        })
    }

    /// `Lock`, `RLock` and `Condition` operations.
    fn lock_op(
        &self,
        mut st: MutexGuard<'_, State>,
        op: u8,
        args: &[&[u8]],
        ctx: &mut CallCtx<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, Outcome> {
        let me = ctx.conn;
        let recursive = match &*st {
            State::Lock { recursive, .. } => *recursive,
            _ => true,
        };
        fn owner_of<'a>(st: &'a mut MutexGuard<'_, State>) -> &'a mut Owner {
            match &mut **st {
                State::Lock { owner, .. } | State::Condition { owner, .. } => owner,
                _ => unreachable!("a lock"),
            }
        }
        let holds = |o: &Owner| o.conn == Some(me);
        match op {
            op::ACQUIRE => {
                let deadline = deadline(args, 0)?;
                let r = self.wait_until(&mut st, deadline, ctx.alive, |s| {
                    let (State::Lock { owner: o, .. } | State::Condition { owner: o, .. }) = s
                    else {
                        unreachable!("a lock")
                    };
                    if o.conn.is_none() {
                        *o = Owner {
                            conn: Some(me),
                            count: 1,
                        };
                        Some(())
                    } else if recursive && holds(o) {
                        o.count += 1;
                        Some(())
                    } else {
                        None
                    }
                });
                let acquired = r.is_ok();
                let outcome = Wait::flag(r, out)?;
                Ok(if acquired {
                    Outcome::Done {
                        released: Vec::new(),
                        locked: Some(true),
                    }
                } else {
                    outcome
                })
            }
            op::RELEASE => {
                let o = owner_of(&mut st);
                if o.conn.is_none() {
                    return Err(fail(K::RuntimeError, "release unlocked lock"));
                }
                if recursive && !holds(o) {
                    return Err(fail(K::RuntimeError, "cannot release un-acquired lock"));
                }
                o.count -= 1;
                let free = o.count == 0 || !recursive;
                if free {
                    *o = Owner::default();
                    self.cv.notify_all();
                }
                Ok(Outcome::Done {
                    released: Vec::new(),
                    locked: free.then_some(false),
                })
            }
            op::LOCKED => {
                let o = owner_of(&mut st);
                put_bool(out, o.conn.is_some());
                Ok(done())
            }
            op::COND_WAIT => {
                let timeout: Option<u64> = arg(args, 0)?;
                let deadline =
                    timeout.and_then(|ns| Instant::now().checked_add(Duration::from_nanos(ns)));
                let State::Condition {
                    owner,
                    next_ticket,
                    waiting,
                    ..
                } = &mut *st
                else {
                    return Err(fail(K::Protocol, "not a condition"));
                };
                if owner.conn != Some(me) {
                    return Err(fail(K::RuntimeError, "cannot wait on un-acquired lock"));
                }
                let saved = owner.count;
                *owner = Owner::default();
                let ticket = *next_ticket;
                *next_ticket += 1;
                waiting.push_back(ticket);
                self.cv.notify_all();
                let mut notified = false;
                let mut gone_away = false;
                loop {
                    let State::Condition { notified: n, .. } = &mut *st else {
                        unreachable!()
                    };
                    if let Some(pos) = n.iter().position(|&t| t == ticket) {
                        n.swap_remove(pos);
                        notified = true;
                        break;
                    }
                    match block(&self.cv, &mut st, deadline, ctx.alive) {
                        Ok(()) => {}
                        Err(w) => {
                            let State::Condition {
                                waiting,
                                notified: n,
                                ..
                            } = &mut *st
                            else {
                                unreachable!()
                            };
                            waiting.retain(|&t| t != ticket);
                            // A notify that raced with the timeout still counts.
                            if let Some(pos) = n.iter().position(|&t| t == ticket) {
                                n.swap_remove(pos);
                                notified = true;
                            }
                            gone_away = matches!(w, Wait::Gone);
                            break;
                        }
                    }
                }
                if gone_away {
                    return Err(gone());
                }
                // Take the lock back, as many times as it was held.
                loop {
                    let o = owner_of(&mut st);
                    if o.conn.is_none() {
                        *o = Owner {
                            conn: Some(me),
                            count: saved,
                        };
                        break;
                    }
                    if let Err(Wait::Gone) = block(&self.cv, &mut st, None, ctx.alive) {
                        return Err(gone());
                    }
                }
                put_bool(out, notified);
                Ok(done())
            }
            op::COND_NOTIFY => {
                let n: u64 = arg(args, 0)?;
                let State::Condition {
                    owner,
                    waiting,
                    notified,
                    ..
                } = &mut *st
                else {
                    return Err(fail(K::Protocol, "not a condition"));
                };
                if owner.conn != Some(me) {
                    return Err(fail(K::RuntimeError, "cannot notify on un-acquired lock"));
                }
                for _ in 0..n {
                    match waiting.pop_front() {
                        Some(t) => notified.push(t),
                        None => break,
                    }
                }
                self.cv.notify_all();
                Ok(done())
            }
            _ => Err(fail(
                K::Protocol,
                format!("operation {op} is not one of a {}", self.kind),
            )),
        }
    }

    fn get_value(&self, st: &State, out: &mut Vec<u8>) -> Result<Outcome, Outcome> {
        match st {
            State::Dict(map) => {
                put_varint(out, map.len() as u64);
                for (k, v) in map {
                    out.extend_from_slice(k);
                    out.extend_from_slice(&v.bytes);
                }
            }
            State::List { items, .. } => {
                put_varint(out, items.len() as u64);
                for b in items {
                    out.extend_from_slice(&b.bytes);
                }
            }
            State::Value(b) => out.extend_from_slice(&b.bytes),
            State::Custom(handler) => match custom_call(handler, &CustomReq::Get { id: self.id }) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err((k, m)) => return Err(fail(k, m)),
            },
            _ => {
                return Err(fail(
                    K::Protocol,
                    format!("a {} has no value to copy", self.kind),
                ));
            }
        }
        Ok(done())
    }
}

/// Runs a request of a registered type's handler (in this process).
fn custom_call(handler: &AnyFnRef, req: &CustomReq) -> Result<Vec<u8>, (K, String)> {
    let bytes = postcard::to_allocvec(req).map_err(|e| (K::Protocol, e.to_string()))?;
    let (reply, _) = handler
        .call_encoded(&bytes, Vec::new())
        .map_err(|e| (K::Method, e.to_string()))?;
    let reply: Result<Vec<u8>, (K, String)> =
        postcard::from_bytes(&reply).map_err(|e| (K::Protocol, e.to_string()))?;
    reply
}
