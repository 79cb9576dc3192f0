//! Typed proxies of the objects a manager holds.
//!
//! Every proxy is a serde handle: pass it as a `Process` or Pool task argument, send it over
//! a connection, or store it inside another managed object; the receiving process gets a
//! working proxy of the same object. Every operation is one request to the server and waits
//! for its answer; an error the server raised comes back as [`ManagerError::Remote`](crate::ManagerError::Remote) with its
//! kind ([`RemoteErrorKind`](crate::RemoteErrorKind)) and message.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::time::Duration;

use multiproc_core::FnRef;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::client::{ObjectRef, Token};
use crate::error::Result;
use crate::protocol::{Kind, op};

/// What every proxy type is: a typed wrapper of an [`ObjectRef`].
pub trait Proxy: Sized + Clone + Serialize + DeserializeOwned {
    /// The kind of object this proxy uses.
    fn kind() -> Kind;
    /// The proxy's type parameters, as the server compares them (e.g. `"alloc::string::String, u64"`).
    fn types() -> String;
    /// Wraps an object reference (of the right kind and types).
    #[doc(hidden)]
    fn from_object(obj: ObjectRef) -> Self;
    /// The untyped reference.
    fn object(&self) -> &ObjectRef;
}

/// The type name of `T`, as a proxy's types string carries it.
fn tn<T: ?Sized>() -> &'static str {
    std::any::type_name::<T>()
}

/// `(block, timeout in ns)` as the server takes it.
fn wait(block: bool, timeout: Option<Duration>) -> (bool, Option<u64>) {
    (
        block,
        timeout.map(|d| d.as_nanos().min(u64::MAX as u128) as u64),
    )
}

fn ns(timeout: Option<Duration>) -> Option<u64> {
    timeout.map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
}

impl ObjectRef {
    /// Decodes a proxy for a proxy type of `kind` and `types`: the server checks that the
    /// object is of that kind and those types.
    #[doc(hidden)]
    pub fn __deserialize_as<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
        types: String,
    ) -> std::result::Result<ObjectRef, D::Error> {
        let token = Token::deserialize(d)?;
        ObjectRef::attach_as(token, kind, types).map_err(D::Error::custom)
    }

    /// Calls a registered type's method (used by [`managed!`](crate::managed)).
    #[doc(hidden)]
    pub fn __method<A: Serialize, R: DeserializeOwned>(&self, method: &str, args: &A) -> Result<R> {
        self.method(method, args)
    }

    /// A copy of the whole object (Python's `_getvalue()`).
    #[doc(hidden)]
    pub fn __get_value<R: DeserializeOwned>(&self) -> Result<R> {
        self.call(op::GET_VALUE, &self.args())
    }
}

macro_rules! proxy_type {
    (
        $(#[$meta:meta])*
        $name:ident < $($g:ident),* > , $kind:expr, $types:expr
    ) => {
        $(#[$meta])*
        pub struct $name<$($g),*> {
            obj: ObjectRef,
            _t: PhantomData<fn() -> ($($g,)*)>,
        }

        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                $name { obj: self.obj.clone(), _t: PhantomData }
            }
        }

        impl<$($g),*> fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("address", self.obj.address())
                    .field("id", &self.obj.id())
                    .finish()
            }
        }

        impl<$($g: Serialize + DeserializeOwned),*> Proxy for $name<$($g),*> {
            fn kind() -> Kind {
                $kind
            }
            fn types() -> String {
                $types
            }
            fn from_object(obj: ObjectRef) -> Self {
                $name { obj, _t: PhantomData }
            }
            fn object(&self) -> &ObjectRef {
                &self.obj
            }
        }

        impl<$($g),*> Serialize for $name<$($g),*> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.obj.serialize(s)
            }
        }

        impl<'de, $($g: Serialize + DeserializeOwned),*> Deserialize<'de> for $name<$($g),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let obj = ObjectRef::__deserialize_as(d, <Self as Proxy>::kind(), <Self as Proxy>::types())?;
                Ok($name { obj, _t: PhantomData })
            }
        }
    };
}

proxy_type!(
    /// A `dict` held by a manager (Python's `DictProxy`), keys `K` and values `V`.
    ///
    /// Keeps insertion order, as Python's dict. Keys are compared by their encoding (see the
    /// crate docs).
    ///
    /// ```
    /// let mgr = multiproc_manager::Manager::start()?;
    /// let d = mgr.dict::<String, u32>()?;
    /// d.set("a", &1)?;
    /// assert_eq!(d.get("a")?, Some(1));
    /// assert_eq!(d.get("b")?, None);
    /// assert_eq!(d.items()?, vec![("a".to_string(), 1)]);
    /// # Ok::<(), multiproc_manager::ManagerError>(())
    /// ```
    DictProxy<K, V>, Kind::Dict, format!("{}, {}", tn::<K>(), tn::<V>())
);

impl<K, V> DictProxy<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    fn key_op<Q, R>(&self, op: u8, key: &Q, value: Option<&V>) -> Result<R>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let mut a = self.obj.args();
        a.value(key)?;
        if let Some(v) = value {
            a.value(v)?;
        }
        self.obj.call(op, &a)
    }

    /// Sets `key` to `value` (Python's `d[key] = value`).
    pub fn set<Q>(&self, key: &Q, value: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_SET, key, Some(value))
    }

    /// Sets `key` to `value` and returns the value it had.
    pub fn insert<Q>(&self, key: &Q, value: &V) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_INSERT, key, Some(value))
    }

    /// The value of `key`, if any (Python's `d.get(key)`).
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_GET, key, None)
    }

    /// The value of `key` (Python's `d[key]`): a missing key is a
    /// [`KeyError`](crate::RemoteErrorKind::KeyError).
    pub fn get_item<Q>(&self, key: &Q) -> Result<V>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_GET_ITEM, key, None)
    }

    /// Removes `key`; the value it had, if any.
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_REMOVE, key, None)
    }

    /// Removes `key` and returns its value (Python's `d.pop(key)`): a missing key is a
    /// [`KeyError`](crate::RemoteErrorKind::KeyError).
    pub fn pop<Q>(&self, key: &Q) -> Result<V>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_POP, key, None)
    }

    /// Whether `key` is in the dict (Python's `key in d`).
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_CONTAINS, key, None)
    }

    /// The value of `key`, set to `default` first if the key is missing (Python's
    /// `setdefault`).
    pub fn setdefault<Q>(&self, key: &Q, default: &V) -> Result<V>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_op(op::DICT_SETDEFAULT, key, Some(default))
    }

    /// Replaces the value of `key` with `f(old value)`, atomically: the server runs `f` (a
    /// function of this program, see [`FnRef`]) while it holds the dict, so no other
    /// operation on the dict comes between the read and the write. Returns the new value.
    ///
    /// ```
    /// use multiproc_core::FnRef;
    /// fn incr(v: Option<u64>) -> u64 {
    ///     v.unwrap_or(0) + 1
    /// }
    /// let mgr = multiproc_manager::Manager::start()?;
    /// let d = mgr.dict::<String, u64>()?;
    /// let f = FnRef::new(incr)?;
    /// assert_eq!(d.update_with("hits", &f)?, 1);
    /// assert_eq!(d.update_with("hits", &f)?, 2);
    /// # Ok::<(), multiproc_manager::ManagerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Function`](crate::RemoteErrorKind::Function) when `f` panics or cannot be called by
    /// the server (a server started by another program, see docs/decisions.md).
    pub fn update_with<Q>(&self, key: &Q, f: &FnRef<Option<V>, V>) -> Result<V>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let mut a = self.obj.args();
        a.value(key)?;
        a.value(f)?;
        self.obj.call(op::DICT_UPDATE_WITH, &a)
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        self.obj
            .call::<u64>(op::LEN, &self.obj.args())
            .map(|n| n as usize)
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.obj.call(op::DICT_KEYS, &self.obj.args())
    }

    /// The values, in insertion order.
    pub fn values(&self) -> Result<Vec<V>> {
        self.obj.call(op::DICT_VALUES, &self.obj.args())
    }

    /// The entries, in insertion order: a snapshot to iterate.
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        self.obj.call(op::DICT_ITEMS, &self.obj.args())
    }

    /// A snapshot of the entries, to iterate (Python's `for k, v in d.items()`).
    pub fn iter(&self) -> Result<std::vec::IntoIter<(K, V)>> {
        self.items().map(Vec::into_iter)
    }

    /// Sets every `(key, value)` of `entries` (Python's `update`), in one request.
    pub fn update<I, A, B>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (A, B)>,
        A: Borrow<K>,
        B: Borrow<V>,
    {
        let mut a = self.obj.args();
        for (k, v) in entries {
            a.value(k.borrow())?;
            a.value(v.borrow())?;
        }
        self.obj.call(op::DICT_UPDATE, &a)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<()> {
        self.obj.call(op::CLEAR, &self.obj.args())
    }
}

proxy_type!(
    /// A `list` held by a manager (Python's `ListProxy`) of `T`.
    ///
    /// Indices follow Python: a negative index counts from the end.
    ///
    /// ```
    /// let mgr = multiproc_manager::Manager::start()?;
    /// let l = mgr.list::<i32>()?;
    /// l.extend([3, 1, 2])?;
    /// l.append(&0)?;
    /// assert_eq!(l.get(-1)?, 0);
    /// l.sort()?;
    /// assert_eq!(l.to_vec()?, vec![0, 1, 2, 3]);
    /// assert_eq!(l.range(1..3)?, vec![1, 2]);
    /// # Ok::<(), multiproc_manager::ManagerError>(())
    /// ```
    ListProxy<T>, Kind::List, tn::<T>().to_string()
);

fn range_args<R: RangeBounds<i64>>(r: &R) -> (Option<i64>, Option<i64>) {
    let start = match r.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => Some(s.saturating_add(1)),
        Bound::Unbounded => None,
    };
    let end = match r.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

fn sort_permutation<T: Ord>(items: Vec<T>) -> Vec<u32> {
    let mut order: Vec<u32> = (0..items.len() as u32).collect();
    order.sort_by(|&a, &b| items[a as usize].cmp(&items[b as usize]));
    order
}

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    fn one<R: DeserializeOwned>(&self, op: u8, value: &T) -> Result<R> {
        let mut a = self.obj.args();
        a.value(value)?;
        self.obj.call(op, &a)
    }

    /// Appends `value`.
    pub fn append(&self, value: &T) -> Result<()> {
        self.one(op::LIST_APPEND, value)
    }

    /// Appends every value of `values`, in one request.
    pub fn extend<I, B>(&self, values: I) -> Result<()>
    where
        I: IntoIterator<Item = B>,
        B: Borrow<T>,
    {
        let mut a = self.obj.args();
        for v in values {
            a.value(v.borrow())?;
        }
        self.obj.call(op::LIST_EXTEND, &a)
    }

    /// The item at `index` ([`IndexError`](crate::RemoteErrorKind::IndexError) out of range).
    pub fn get(&self, index: i64) -> Result<T> {
        let mut a = self.obj.args();
        a.plain(&index);
        self.obj.call(op::LIST_GET, &a)
    }

    /// Replaces the item at `index`.
    pub fn set(&self, index: i64, value: &T) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(&index);
        a.value(value)?;
        self.obj.call(op::LIST_SET, &a)
    }

    /// Inserts `value` before `index` (clamped to the list, as Python's `insert`).
    pub fn insert(&self, index: i64, value: &T) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(&index);
        a.value(value)?;
        self.obj.call(op::LIST_INSERT, &a)
    }

    /// Removes and returns the last item ([`IndexError`](crate::RemoteErrorKind::IndexError)
    /// when empty).
    pub fn pop(&self) -> Result<T> {
        let mut a = self.obj.args();
        a.plain(&None::<i64>);
        self.obj.call(op::LIST_POP, &a)
    }

    /// Removes and returns the item at `index`.
    pub fn pop_at(&self, index: i64) -> Result<T> {
        let mut a = self.obj.args();
        a.plain(&Some(index));
        self.obj.call(op::LIST_POP, &a)
    }

    /// Removes the first item equal to `value` ([`ValueError`](crate::RemoteErrorKind::ValueError)
    /// when there is none).
    pub fn remove(&self, value: &T) -> Result<()> {
        self.one(op::LIST_REMOVE, value)
    }

    /// The index of the first item equal to `value`
    /// ([`ValueError`](crate::RemoteErrorKind::ValueError) when there is none).
    pub fn index(&self, value: &T) -> Result<usize> {
        self.one::<u64>(op::LIST_INDEX, value).map(|i| i as usize)
    }

    /// How many items equal `value`.
    pub fn count(&self, value: &T) -> Result<usize> {
        self.one::<u64>(op::LIST_COUNT, value).map(|i| i as usize)
    }

    /// Whether an item equals `value`.
    pub fn contains(&self, value: &T) -> Result<bool> {
        self.one(op::LIST_CONTAINS, value)
    }

    /// The number of items.
    pub fn len(&self) -> Result<usize> {
        self.obj
            .call::<u64>(op::LEN, &self.obj.args())
            .map(|n| n as usize)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The items of `range` (Python's slice `l[a:b]`; negative bounds count from the end).
    pub fn range<R: RangeBounds<i64>>(&self, range: R) -> Result<Vec<T>> {
        let mut a = self.obj.args();
        a.plain(&range_args(&range));
        self.obj.call(op::LIST_RANGE, &a)
    }

    /// Every item: a snapshot.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.range(..)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<()> {
        self.obj.call(op::CLEAR, &self.obj.args())
    }

    /// Sorts the list in place, on the server (atomically).
    ///
    /// # Errors
    ///
    /// [`Function`](crate::RemoteErrorKind::Function) when the server cannot run this
    /// program's code (a server started by another program).
    pub fn sort(&self) -> Result<()>
    where
        T: Ord,
    {
        let f = FnRef::new(sort_permutation::<T>)?;
        let mut a = self.obj.args();
        a.value(&f)?;
        self.obj.call(op::LIST_SORT, &a)
    }
}

proxy_type!(
    /// A fixed-length array held by a manager (Python's `ArrayProxy`), of `T`.
    ArrayProxy<T>, Kind::Array, tn::<T>().to_string()
);

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    /// The item at `index`.
    pub fn get(&self, index: i64) -> Result<T> {
        let mut a = self.obj.args();
        a.plain(&index);
        self.obj.call(op::LIST_GET, &a)
    }

    /// Replaces the item at `index`.
    pub fn set(&self, index: i64, value: &T) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(&index);
        a.value(value)?;
        self.obj.call(op::LIST_SET, &a)
    }

    /// The length.
    pub fn len(&self) -> Result<usize> {
        self.obj
            .call::<u64>(op::LEN, &self.obj.args())
            .map(|n| n as usize)
    }

    /// Whether the array has no items.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The items of `range`.
    pub fn range<R: RangeBounds<i64>>(&self, range: R) -> Result<Vec<T>> {
        let mut a = self.obj.args();
        a.plain(&range_args(&range));
        self.obj.call(op::LIST_RANGE, &a)
    }

    /// Every item.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.range(..)
    }
}

proxy_type!(
    /// A value held by a manager (Python's `ValueProxy`).
    ValueProxy<T>, Kind::Value, tn::<T>().to_string()
);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The value (Python's `.value` / `get()`).
    pub fn get(&self) -> Result<T> {
        self.obj.call(op::VALUE_GET, &self.obj.args())
    }

    /// Sets the value.
    pub fn set(&self, value: &T) -> Result<()> {
        let mut a = self.obj.args();
        a.value(value)?;
        self.obj.call(op::VALUE_SET, &a)
    }

    /// Replaces the value with `f(value)` on the server, atomically; the new value.
    pub fn update_with(&self, f: &FnRef<T, T>) -> Result<T> {
        let mut a = self.obj.args();
        a.value(f)?;
        self.obj.call(op::VALUE_UPDATE_WITH, &a)
    }
}

proxy_type!(
    /// A namespace held by a manager (Python's `NamespaceProxy`): named fields of any serde
    /// type. A field read as another type than it was written is a
    /// [`TypeMismatch`](crate::RemoteErrorKind::TypeMismatch).
    ///
    /// ```
    /// let mgr = multiproc_manager::Manager::start()?;
    /// let ns = mgr.namespace()?;
    /// ns.set("name", &"Bob".to_string())?;
    /// ns.set("age", &42u32)?;
    /// assert_eq!(ns.get::<String>("name")?, "Bob");
    /// assert!(ns.get::<u64>("age").is_err()); // written as a u32
    /// # Ok::<(), multiproc_manager::ManagerError>(())
    /// ```
    NamespaceProxy<>, Kind::Namespace, String::new()
);

impl NamespaceProxy {
    /// The field `name` ([`AttributeError`](crate::RemoteErrorKind::AttributeError) when it is
    /// not set).
    pub fn get<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<T> {
        let mut a = self.obj.args();
        a.plain(name).plain(tn::<T>());
        self.obj.call(op::NS_GET, &a)
    }

    /// Sets the field `name`.
    pub fn set<T: Serialize + DeserializeOwned>(&self, name: &str, value: &T) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(name).plain(tn::<T>());
        a.value(value)?;
        self.obj.call(op::NS_SET, &a)
    }

    /// Removes the field `name`.
    pub fn del(&self, name: &str) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(name);
        self.obj.call(op::NS_DEL, &a)
    }

    /// The names of the fields, in the order they were first set.
    pub fn names(&self) -> Result<Vec<String>> {
        self.obj.call(op::NS_NAMES, &self.obj.args())
    }
}

/// The queue operations both queue proxies share.
macro_rules! queue_ops {
    ($name:ident) => {
        impl<T: Serialize + DeserializeOwned> $name<T> {
            fn put_by(&self, value: &T, block: bool, timeout: Option<Duration>) -> Result<()> {
                let mut a = self.obj.args();
                a.value(value)?;
                a.plain(&wait(block, timeout));
                self.obj.call(op::Q_PUT, &a)
            }

            fn get_by(&self, block: bool, timeout: Option<Duration>) -> Result<T> {
                let mut a = self.obj.args();
                a.plain(&wait(block, timeout));
                self.obj.call(op::Q_GET, &a)
            }

            /// Puts `value`, waiting for room in a bounded queue.
            pub fn put(&self, value: &T) -> Result<()> {
                self.put_by(value, true, None)
            }

            /// Puts `value`, waiting at most `timeout` for room
            /// ([`Full`](crate::RemoteErrorKind::Full) then).
            pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
                self.put_by(value, true, Some(timeout))
            }

            /// Puts `value` if there is room now ([`Full`](crate::RemoteErrorKind::Full)
            /// otherwise).
            pub fn try_put(&self, value: &T) -> Result<()> {
                self.put_by(value, false, None)
            }

            /// Takes the next item, waiting for one.
            pub fn get(&self) -> Result<T> {
                self.get_by(true, None)
            }

            /// Takes the next item, waiting at most `timeout`
            /// ([`Empty`](crate::RemoteErrorKind::Empty) then).
            pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
                self.get_by(true, Some(timeout))
            }

            /// Takes the next item if there is one now
            /// ([`Empty`](crate::RemoteErrorKind::Empty) otherwise).
            pub fn try_get(&self) -> Result<T> {
                self.get_by(false, None)
            }

            /// The number of items (Python's `qsize()`).
            pub fn qsize(&self) -> Result<usize> {
                self.obj
                    .call::<u64>(op::Q_QSIZE, &self.obj.args())
                    .map(|n| n as usize)
            }

            /// Whether the queue is empty now.
            pub fn empty(&self) -> Result<bool> {
                self.qsize().map(|n| n == 0)
            }

            /// The bound of the queue (0: unbounded).
            pub fn maxsize(&self) -> Result<usize> {
                self.obj
                    .call::<u64>(op::Q_MAXSIZE, &self.obj.args())
                    .map(|n| n as usize)
            }

            /// Whether a bounded queue is full now.
            pub fn full(&self) -> Result<bool> {
                let max = self.maxsize()?;
                Ok(max > 0 && self.qsize()? >= max)
            }
        }
    };
}

proxy_type!(
    /// A queue held by a manager (Python's `Manager().Queue()`), of `T`.
    ///
    /// ```
    /// let mgr = multiproc_manager::Manager::start()?;
    /// let q = mgr.queue::<String>()?;
    /// q.put(&"hello".to_string())?;
    /// assert_eq!(q.get()?, "hello");
    /// assert!(q.try_get().is_err()); // Empty
    /// # Ok::<(), multiproc_manager::ManagerError>(())
    /// ```
    QueueProxy<T>, Kind::Queue, tn::<T>().to_string()
);
queue_ops!(QueueProxy);

proxy_type!(
    /// A joinable queue held by a manager (Python's `Manager().JoinableQueue()`).
    JoinableQueueProxy<T>, Kind::JoinableQueue, tn::<T>().to_string()
);
queue_ops!(JoinableQueueProxy);

impl<T: Serialize + DeserializeOwned> JoinableQueueProxy<T> {
    /// Marks one item taken as done ([`ValueError`](crate::RemoteErrorKind::ValueError) when
    /// called more often than items were put).
    pub fn task_done(&self) -> Result<()> {
        self.obj.call(op::Q_TASK_DONE, &self.obj.args())
    }

    /// Waits until every item put was marked done.
    pub fn join(&self) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(&wait(true, None));
        self.obj.call::<bool>(op::Q_JOIN, &a).map(drop)
    }

    /// [`join`](Self::join) for at most `timeout`; whether every item was done.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        let mut a = self.obj.args();
        a.plain(&wait(true, Some(timeout)));
        self.obj.call(op::Q_JOIN, &a)
    }
}

/// Held while a manager lock is acquired: releases it when dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AcquireGuard<'a> {
    obj: &'a ObjectRef,
}

impl fmt::Debug for AcquireGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireGuard")
            .field("id", &self.obj.id())
            .finish()
    }
}

impl Drop for AcquireGuard<'_> {
    fn drop(&mut self) {
        let _ = self.obj.call::<()>(op::RELEASE, &self.obj.args());
    }
}

/// The acquire/release operations of lock-like proxies.
macro_rules! acquirer_ops {
    ($name:ident) => {
        impl $name {
            fn acquire_by(&self, block: bool, timeout: Option<Duration>) -> Result<bool> {
                let mut a = self.obj.args();
                a.plain(&wait(block, timeout));
                self.obj.call(op::ACQUIRE, &a)
            }

            /// Acquires, waiting as long as it takes.
            pub fn acquire(&self) -> Result<()> {
                self.acquire_by(true, None).map(drop)
            }

            /// Acquires, waiting at most `timeout`; whether it was acquired.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
                self.acquire_by(true, Some(timeout))
            }

            /// Acquires if that is possible now; whether it was acquired.
            pub fn try_acquire(&self) -> Result<bool> {
                self.acquire_by(false, None)
            }

            /// Releases ([`RuntimeError`](crate::RemoteErrorKind::RuntimeError) when not held,
            /// [`ValueError`](crate::RemoteErrorKind::ValueError) for a bounded semaphore
            /// released too often).
            pub fn release(&self) -> Result<()> {
                self.obj.call(op::RELEASE, &self.obj.args())
            }

            /// Acquires and returns a guard that releases when dropped (Python's `with`).
            pub fn lock(&self) -> Result<AcquireGuard<'_>> {
                self.acquire()?;
                Ok(AcquireGuard { obj: &self.obj })
            }
        }
    };
}

proxy_type!(
    /// A lock held by a manager (Python's `Manager().Lock()`, an `AcquirerProxy`).
    ///
    /// Any process may release it (as `threading.Lock`). Beyond Python: a lock held by a
    /// process that died (its connection closed) is released by the server.
    ///
    /// ```
    /// let mgr = multiproc_manager::Manager::start()?;
    /// let lock = mgr.lock()?;
    /// {
    ///     let _held = lock.lock()?;
    ///     assert!(!lock.try_acquire()?);
    /// }
    /// assert!(lock.try_acquire()?);
    /// lock.release()?;
    /// # Ok::<(), multiproc_manager::ManagerError>(())
    /// ```
    LockProxy<>, Kind::Lock, String::new()
);
acquirer_ops!(LockProxy);

impl LockProxy {
    /// Whether the lock is held.
    pub fn locked(&self) -> Result<bool> {
        self.obj.call(op::LOCKED, &self.obj.args())
    }
}

proxy_type!(
    /// A re-entrant lock held by a manager (Python's `Manager().RLock()`): the connection
    /// (process and thread) that holds it may acquire it again.
    RLockProxy<>, Kind::RLock, String::new()
);
acquirer_ops!(RLockProxy);

proxy_type!(
    /// A semaphore held by a manager (Python's `Manager().Semaphore(n)`).
    SemaphoreProxy<>, Kind::Semaphore, String::new()
);
acquirer_ops!(SemaphoreProxy);

impl SemaphoreProxy {
    /// The counter's value now.
    pub fn value(&self) -> Result<u64> {
        self.obj.call(op::SEM_VALUE, &self.obj.args())
    }
}

proxy_type!(
    /// A bounded semaphore held by a manager (Python's `Manager().BoundedSemaphore(n)`):
    /// releasing it above its initial value is a
    /// [`ValueError`](crate::RemoteErrorKind::ValueError).
    BoundedSemaphoreProxy<>, Kind::BoundedSemaphore, String::new()
);
acquirer_ops!(BoundedSemaphoreProxy);

impl BoundedSemaphoreProxy {
    /// The counter's value now.
    pub fn value(&self) -> Result<u64> {
        self.obj.call(op::SEM_VALUE, &self.obj.args())
    }
}

proxy_type!(
    /// A condition variable held by a manager (Python's `Manager().Condition()`), with its
    /// own re-entrant lock.
    ConditionProxy<>, Kind::Condition, String::new()
);
acquirer_ops!(ConditionProxy);

impl ConditionProxy {
    fn wait_by(&self, timeout: Option<Duration>) -> Result<bool> {
        let mut a = self.obj.args();
        a.plain(&ns(timeout));
        self.obj.call(op::COND_WAIT, &a)
    }

    /// Releases the lock, waits for a notification, takes the lock back (the lock must be
    /// held: [`RuntimeError`](crate::RemoteErrorKind::RuntimeError) otherwise).
    pub fn wait(&self) -> Result<()> {
        self.wait_by(None).map(drop)
    }

    /// [`wait`](Self::wait) for at most `timeout`; whether it was notified.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_by(Some(timeout))
    }

    /// Waits until `predicate()` is true (checked with the lock held), for at most
    /// `timeout`; the predicate's last value (Python's `wait_for`).
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> Result<bool>,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if predicate()? {
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    Some(left)
                }
                None => None,
            };
            self.wait_by(left)?;
        }
    }

    /// Wakes one waiter (the lock must be held).
    pub fn notify(&self) -> Result<()> {
        self.notify_n(1)
    }

    /// Wakes up to `n` waiters.
    pub fn notify_n(&self, n: usize) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(&(n as u64));
        self.obj.call(op::COND_NOTIFY, &a)
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<()> {
        self.notify_n(usize::MAX >> 1)
    }
}

proxy_type!(
    /// An event held by a manager (Python's `Manager().Event()`).
    ///
    /// Every process blocked in `wait` when `set` is called returns `true`, even if `clear`
    /// follows at once.
    EventProxy<>, Kind::Event, String::new()
);

impl EventProxy {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<()> {
        self.obj.call(op::EVENT_SET, &self.obj.args())
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        self.obj.call(op::EVENT_CLEAR, &self.obj.args())
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        self.obj.call(op::EVENT_IS_SET, &self.obj.args())
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<()> {
        let mut a = self.obj.args();
        a.plain(&wait(true, None));
        self.obj.call::<bool>(op::EVENT_WAIT, &a).map(drop)
    }

    /// Waits at most `timeout`; whether the flag was set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        let mut a = self.obj.args();
        a.plain(&wait(true, Some(timeout)));
        self.obj.call(op::EVENT_WAIT, &a)
    }
}

proxy_type!(
    /// A barrier held by a manager (Python's `Manager().Barrier(n)`).
    BarrierProxy<>, Kind::Barrier, String::new()
);

impl BarrierProxy {
    /// Waits until `parties` callers wait; returns this caller's index (0 … parties-1).
    /// A broken or reset barrier is a [`BrokenBarrier`](crate::RemoteErrorKind::BrokenBarrier).
    pub fn wait(&self) -> Result<usize> {
        let mut a = self.obj.args();
        a.plain(&wait(true, None));
        self.obj
            .call::<u64>(op::BARRIER_WAIT, &a)
            .map(|i| i as usize)
    }

    /// [`wait`](Self::wait) for at most `timeout`; a timeout breaks the barrier (as in
    /// Python) and is a [`BrokenBarrier`](crate::RemoteErrorKind::BrokenBarrier).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        let mut a = self.obj.args();
        a.plain(&wait(true, Some(timeout)));
        self.obj
            .call::<u64>(op::BARRIER_WAIT, &a)
            .map(|i| i as usize)
    }

    /// Breaks the barrier: current and later waiters fail.
    pub fn abort(&self) -> Result<()> {
        self.obj.call(op::BARRIER_ABORT, &self.obj.args())
    }

    /// Returns the barrier to its empty state; current waiters fail.
    pub fn reset(&self) -> Result<()> {
        self.obj.call(op::BARRIER_RESET, &self.obj.args())
    }

    fn state(&self) -> Result<(u64, u64, bool)> {
        self.obj.call(op::BARRIER_STATE, &self.obj.args())
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<usize> {
        self.state().map(|s| s.0 as usize)
    }

    /// How many wait now.
    pub fn n_waiting(&self) -> Result<usize> {
        self.state().map(|s| s.1 as usize)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> Result<bool> {
        self.state().map(|s| s.2)
    }
}

/// Builds a proxy of a new object (for the manager's constructors).
pub(crate) fn wrap<P: Proxy>(obj: ObjectRef) -> P {
    P::from_object(obj)
}
