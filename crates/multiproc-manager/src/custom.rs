//! Registered user types (Python's `BaseManager.register`): a type whose methods the server
//! runs, called through a typed proxy that [`managed!`](crate::managed) writes.
//!
//! The server keeps no code of its own for a registered type: the manager hands it a
//! [`FnRef`](multiproc_core::FnRef) of `handle::<T>`, a function of the same executable
//! monomorphised for the type, which keeps the objects of that type and runs their methods.
//! Only the methods listed in the `managed!` block can be called; any other name is refused
//! with [`RemoteErrorKind::NotExposed`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RemoteErrorKind;

/// A request to a registered type's handler (in the server process).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CustomReq {
    Create {
        id: u64,
        init: Vec<u8>,
    },
    Call {
        id: u64,
        method: String,
        args: Vec<u8>,
    },
    Drop {
        id: u64,
    },
    Get {
        id: u64,
    },
}

/// A type a manager can hold and serve: written by [`managed!`](crate::managed).
///
/// The initial object is sent to the server by value (so the type is serde), and
/// `_getvalue` ([`Proxy::get_value`](crate::ObjectRef)) copies it back.
pub trait Managed: Serialize + DeserializeOwned + Send + 'static {
    /// The proxy type that calls this type's methods.
    type Proxy: crate::Proxy;
    /// The methods a proxy may call.
    const METHODS: &'static [&'static str];
    /// Runs `method` with its encoded arguments; the encoded result, or a message.
    ///
    /// # Errors
    ///
    /// A method that is not exposed, or arguments that do not decode.
    fn dispatch(&mut self, method: &str, args: &[u8])
    -> Result<Vec<u8>, (RemoteErrorKind, String)>;
}

type Objects = Mutex<HashMap<u64, Arc<dyn Any + Send + Sync>>>;

/// The registered objects of this (server) process, by id.
static OBJECTS: LazyLock<Objects> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The server-side handler of `T`: what the manager names by `FnRef` when `T` is registered.
pub(crate) fn handle<T: Managed>(req: CustomReq) -> Result<Vec<u8>, (RemoteErrorKind, String)> {
    let get = |id: u64| -> Result<Arc<Mutex<T>>, (RemoteErrorKind, String)> {
        OBJECTS
            .lock()
            .get(&id)
            .cloned()
            .and_then(|o| o.downcast::<Mutex<T>>().ok())
            .ok_or((
                RemoteErrorKind::NoSuchObject,
                format!("object {id} no longer exists"),
            ))
    };
    match req {
        CustomReq::Create { id, init } => {
            let value: T = postcard::from_bytes(&init).map_err(|e| {
                (
                    RemoteErrorKind::Protocol,
                    format!(
                        "cannot decode the initial {}: {e}",
                        std::any::type_name::<T>()
                    ),
                )
            })?;
            OBJECTS.lock().insert(id, Arc::new(Mutex::new(value)));
            Ok(Vec::new())
        }
        CustomReq::Call { id, method, args } => {
            let obj = get(id)?;
            let mut obj = obj.lock();
            match multiproc_core::catch_panic(|| obj.dispatch(&method, &args)) {
                Ok(r) => r,
                Err(panic) => Err((
                    RemoteErrorKind::Method,
                    format!("method {method:?} panicked: {panic}"),
                )),
            }
        }
        CustomReq::Drop { id } => {
            OBJECTS.lock().remove(&id);
            Ok(Vec::new())
        }
        CustomReq::Get { id } => {
            let obj = get(id)?;
            let obj = obj.lock();
            let mut out = Vec::new();
            multiproc_core::reduction::append(&*obj, &mut out)
                .map_err(|e| (RemoteErrorKind::Method, e.to_string()))?;
            Ok(out)
        }
    }
}

/// Decodes a method's arguments (used by [`managed!`](crate::managed)).
#[doc(hidden)]
pub fn decode_args<A: DeserializeOwned>(
    method: &str,
    args: &[u8],
) -> Result<A, (RemoteErrorKind, String)> {
    postcard::from_bytes(args).map_err(|e| {
        (
            RemoteErrorKind::Protocol,
            format!("the arguments of {method:?} do not decode: {e}"),
        )
    })
}

/// Encodes a method's result (used by [`managed!`](crate::managed)).
#[doc(hidden)]
pub fn encode_result<R: Serialize>(
    method: &str,
    r: &R,
) -> Result<Vec<u8>, (RemoteErrorKind, String)> {
    let mut out = Vec::new();
    multiproc_core::reduction::append(r, &mut out).map_err(|e| {
        (
            RemoteErrorKind::Method,
            format!("the result of {method:?} does not encode: {e}"),
        )
    })?;
    Ok(out)
}

/// The refusal of a method that is not exposed (used by [`managed!`](crate::managed)).
#[doc(hidden)]
pub fn not_exposed<T>(method: &str, exposed: &[&str]) -> (RemoteErrorKind, String) {
    (
        RemoteErrorKind::NotExposed,
        format!(
            "method {method:?} of {} is not exposed (exposed: {exposed:?})",
            std::any::type_name::<T>()
        ),
    )
}

/// Serves a user type from a manager and writes its typed proxy.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Counter {
///     n: u64,
/// }
///
/// impl Counter {
///     fn add(&mut self, by: u64) -> u64 {
///         self.n += by;
///         self.n
///     }
///     fn get(&self) -> u64 {
///         self.n
///     }
/// }
///
/// multiproc_manager::managed! {
///     /// A `Counter` held by a manager.
///     pub proxy CounterProxy for Counter {
///         fn add(by: u64) -> u64;
///         fn get() -> u64;
///     }
/// }
///
/// # fn main() -> Result<(), multiproc_manager::ManagerError> {
/// let mgr = multiproc_manager::Manager::builder().register::<Counter>()?.start()?;
/// let c: CounterProxy = mgr.create(Counter { n: 1 })?;
/// assert_eq!(c.add(2)?, 3);
/// assert_eq!(c.get()?, 3);
/// # Ok(())
/// # }
/// ```
///
/// Each listed method becomes a method of the proxy with the same arguments, returning
/// `Result<R, ManagerError>`; a method returning `Result<T, E>` hands `E` back typed inside.
/// The server calls `value.method(args…)` on the object (a `&self` or `&mut self` method).
/// Only the listed methods can be called through the proxy.
#[macro_export]
macro_rules! managed {
    (
        $(#[$meta:meta])*
        $vis:vis proxy $proxy:ident for $ty:ty {
            $(
                $(#[$mmeta:meta])*
                fn $m:ident ( $($a:ident : $at:ty),* $(,)? ) $(-> $r:ty)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $proxy {
            obj: $crate::ObjectRef,
        }

        impl $proxy {
            $(
                #[doc = concat!("Calls `", stringify!($m), "` on the object, in the server.")]
                $(#[$mmeta])*
                #[allow(clippy::unused_unit)]
                pub fn $m(&self, $($a: $at),*) -> $crate::Result<$crate::__ret!($($r)?)> {
                    self.obj.__method(stringify!($m), &($($a,)*))
                }
            )*

            /// A copy of the object (Python's `_getvalue()`).
            pub fn get_value(&self) -> $crate::Result<$ty> {
                self.obj.__get_value()
            }
        }

        impl $crate::Proxy for $proxy {
            fn kind() -> $crate::Kind {
                $crate::Kind::Custom(::std::any::type_name::<$ty>().to_string())
            }
            fn types() -> ::std::string::String {
                ::std::string::String::new()
            }
            fn from_object(obj: $crate::ObjectRef) -> Self {
                $proxy { obj }
            }
            fn object(&self) -> &$crate::ObjectRef {
                &self.obj
            }
        }

        impl $crate::__private::serde::Serialize for $proxy {
            fn serialize<S: $crate::__private::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                $crate::__private::serde::Serialize::serialize(&self.obj, s)
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $proxy {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let obj = <$crate::ObjectRef as $crate::__private::serde::Deserialize>::deserialize(d)?;
                Ok($proxy { obj })
            }
        }

        impl $crate::Managed for $ty {
            type Proxy = $proxy;
            const METHODS: &'static [&'static str] = &[$(stringify!($m)),*];
            fn dispatch(&mut self, method: &str, args: &[u8]) -> ::std::result::Result<::std::vec::Vec<u8>, ($crate::RemoteErrorKind, ::std::string::String)> {
                match method {
                    $(
                        stringify!($m) => {
                            #[allow(unused_variables, clippy::let_unit_value)]
                            let ($($a,)*): ($($at,)*) = $crate::__private::decode_args(method, args)?;
                            #[allow(clippy::let_unit_value)]
                            let r = self.$m($($a),*);
                            $crate::__private::encode_result(method, &r)
                        }
                    )*
                    _ => Err($crate::__private::not_exposed::<$ty>(method, Self::METHODS)),
                }
            }
        }
    };
}

/// The return type of a `managed!` method (`()` when none is written).
#[doc(hidden)]
#[macro_export]
macro_rules! __ret {
    () => {
        ()
    };
    ($r:ty) => {
        $r
    };
}
