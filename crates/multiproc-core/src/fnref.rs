//! [`FnRef`]: a checked, serialisable reference to a `fn(A) -> R` that any process running the
//! same executable can call.
//!
//! It is what a [`Process`](crate::Process) target, a Pool task, a Barrier action or a
//! manager's registered method travels as: the offsets of the function and of a trampoline
//! monomorphised for `(A, R)` from one anchor in the executable image (procspawn's and
//! crossmist's scheme), plus the executable's identity, a fingerprint of the types and a tag
//! keyed with a secret shared by the process tree. Every reference is checked where it arrives
//! (same executable, same types, a tag only this process tree can make, both addresses inside
//! the executable image) before any address is turned back into code; calling it runs the
//! function under `catch_unwind` and turns a panic into [`CallError::Panicked`] with its
//! message and location.
//!
//! ```
//! use multiproc_core::{CallError, FnRef};
//!
//! fn halve(n: u32) -> Result<u32, String> {
//!     if n % 2 == 0 { Ok(n / 2) } else { Err(format!("{n} is odd")) }
//! }
//! fn boom(_: ()) -> u8 {
//!     panic!("no luck")
//! }
//!
//! let f = FnRef::new(halve).unwrap();
//! // What another process would receive: serde data, checked when decoded.
//! let bytes = postcard::to_allocvec(&f).unwrap();
//! let g: FnRef<u32, Result<u32, String>> = postcard::from_bytes(&bytes).unwrap();
//! assert_eq!(g.call(10).unwrap(), Ok(5));
//! assert_eq!(g.call(3).unwrap(), Err("3 is odd".to_string()));
//!
//! let p = FnRef::new(boom).unwrap();
//! match p.call(()) {
//!     Err(CallError::Panicked(panic)) => assert_eq!(panic.message(), "no luck"),
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! The tag's secret is made by the main process and inherited by every child, whatever the
//! start method; a reference made by an unrelated run of the same program is refused
//! ([`FnRefError::Foreign`]), as is one into another executable ([`FnRefError::OtherExecutable`]).

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;

use parking_lot::Mutex;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::exe::{self, ExeId};
use crate::reduction;
use crate::sys::fnptr;

/// Why a function reference cannot be made or used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FnRefError {
    /// The function (or its trampoline) is not code of the main executable (a fn in a dylib).
    #[error(
        "the function is not in the main executable (a function from a dynamic library cannot be named \
         by offset in another process); wrap it in a function or closure of your program"
    )]
    OutsideExecutable,
    /// This program cannot be re-executed, so its code cannot be named across processes.
    #[error("{0}")]
    NotReexecutable(String),
    /// The reference was made by another executable (or another build of this one).
    #[error(
        "the function reference was made by another executable; it can only be called by processes running the same binary"
    )]
    OtherExecutable,
    /// The reference was made for other argument or result types.
    #[error("the function reference was made for other argument or result types than {expected}")]
    TypeMismatch {
        /// The types this side expected, `fn(A) -> R`.
        expected: &'static str,
    },
    /// The reference does not carry this process tree's tag: corrupt, forged, or made by an
    /// unrelated run of the program.
    #[error(
        "the function reference was not made by this process tree (corrupt data or an unrelated process); refusing to call it"
    )]
    Foreign,
}

/// A panic caught while calling a function reference: its message and where it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Panicked {
    message: String,
    location: Option<String>,
}

impl Panicked {
    /// The panic message (`"<non-string panic payload>"` if it was not a string).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `file:line:column` of the panic, when it was recorded.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(at) => write!(f, "panicked at {at}: {}", self.message),
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

impl std::error::Error for Panicked {}

/// Why a call through a [`FnRef`] did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CallError {
    /// The function panicked.
    #[error("the called function {0}")]
    Panicked(Panicked),
    /// The arguments could not be encoded or decoded.
    #[error("cannot pass the arguments: {0}")]
    Args(String),
    /// The result could not be encoded or decoded.
    #[error("cannot return the result: {0}")]
    Result(String),
    /// The reference itself was refused.
    #[error("cannot call the function reference: {0}")]
    Reference(String),
}

impl From<FnRefError> for CallError {
    fn from(e: FnRefError) -> CallError {
        CallError::Reference(e.to_string())
    }
}

/// The encoded form shared by every `FnRef<A, R>`: what crosses process boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RawFnRef {
    tramp: i64,
    target: i64,
    types: u64,
    exe: ExeId,
    tag: u64,
}

/// What a trampoline returns: the encoded result with its fds, or why there is none.
type Encoded = Result<(Vec<u8>, Vec<OwnedFd>), CallError>;

/// `trampoline::<A, R>` as a pointer: decode `A`, call the `fn(A) -> R` at the address, append
/// the encoded `R` to the buffer and return its fds.
type Trampoline =
    unsafe fn(usize, &[u8], Vec<OwnedFd>, bool, &mut Vec<u8>) -> Result<Vec<OwnedFd>, CallError>;

/// Decodes `A`, calls the `fn(A) -> R` at `target` (catching a panic when `capture` is set)
/// and encodes the result.
///
/// # Safety
///
/// `target` must be the address of a `fn(A) -> R` with exactly these `A` and `R`.
unsafe fn trampoline<A: DeserializeOwned, R: Serialize>(
    target: usize,
    args: &[u8],
    fds: Vec<OwnedFd>,
    capture: bool,
    out: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>, CallError> {
    let args: A = reduction::decode(args, fds).map_err(|e| CallError::Args(e.to_string()))?;
    // SAFETY: the caller guarantees that `target` is a `fn(A) -> R` of these types.
    let f = unsafe { fnptr::fn_at::<fn(A) -> R>(target) };
    let result = if capture {
        capture_panic(move || f(args))?
    } else {
        f(args)
    };
    reduction::encode_into(&result, out).map_err(|e| CallError::Result(e.to_string()))
}

/// A reference to a `fn(A) -> R` that processes running the same executable can call: a
/// [`Process`](crate::Process) target, a Pool task, a Barrier action. See the
/// [module docs](self).
pub struct FnRef<A, R = ()> {
    raw: RawFnRef,
    types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for FnRef<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R> Copy for FnRef<A, R> {}

impl<A, R> fmt::Debug for FnRef<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnRef")
            .field("type", &std::any::type_name::<fn(A) -> R>())
            .field("offset", &self.raw.target)
            .finish()
    }
}

impl<A, R> FnRef<A, R>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    /// A reference to `f` (a function or a non-capturing closure).
    ///
    /// Errors: [`FnRefError::OutsideExecutable`] for code outside the main executable,
    /// [`FnRefError::NotReexecutable`] when this program's code cannot be named by offset.
    pub fn new(f: fn(A) -> R) -> Result<FnRef<A, R>, FnRefError> {
        let exe = exe::parent_exe_id().map_err(FnRefError::NotReexecutable)?;
        let tramp = trampoline::<A, R> as Trampoline as usize;
        let target = f as usize;
        if !is_code(tramp)? || !is_code(target)? {
            return Err(FnRefError::OutsideExecutable);
        }
        let base = fnptr::anchor() as i64;
        let mut raw = RawFnRef {
            tramp: tramp as i64 - base,
            target: target as i64 - base,
            types: fingerprint::<A, R>(),
            exe,
            tag: 0,
        };
        raw.tag = tag(&raw);
        Ok(FnRef {
            raw,
            types: PhantomData,
        })
    }

    /// Calls the function in this process with `args`, through the same encode/decode path a
    /// remote call takes; a panic becomes [`CallError::Panicked`] (and is not printed).
    pub fn call(&self, args: A) -> Result<R, CallError> {
        let (bytes, fds) = reduction::encode(&args).map_err(|e| CallError::Args(e.to_string()))?;
        let (out, out_fds) = self.call_encoded(&bytes, fds)?;
        reduction::decode(&out, out_fds).map_err(|e| CallError::Result(e.to_string()))
    }

    /// Calls the function with arguments already encoded by [`reduction::encode`]; returns the
    /// result encoded the same way. For workers that pass bytes through without decoding them.
    pub fn call_encoded(&self, args: &[u8], fds: Vec<OwnedFd>) -> Encoded {
        self.raw.call(args, fds, true)
    }

    pub(crate) fn raw(&self) -> RawFnRef {
        self.raw
    }

    /// The reference without its types: what a worker that runs many kinds of functions
    /// receives and calls with encoded arguments ([`AnyFnRef::call_encoded`]).
    pub fn erase(self) -> AnyFnRef {
        AnyFnRef { raw: self.raw }
    }

    /// The function itself, after the reference is checked against this process once more:
    /// for a caller that calls it many times (a pool worker running a chunk of tasks) without
    /// encoding each argument. A panic in it is not caught.
    pub fn as_fn(&self) -> Result<fn(A) -> R, FnRefError> {
        let (_, target) = self.raw.check()?;
        // SAFETY: `check` passed, so `target` is the address of the `fn(A) -> R` that
        // `FnRef::new` was given in this process tree (see `RawFnRef::call`), and the typed
        // wrapper's types were compared with the fingerprint when it was made or decoded.
        Ok(unsafe { fnptr::fn_at::<fn(A) -> R>(target) })
    }
}

/// A [`FnRef`] whose argument and result types are erased: it is called with encoded
/// arguments and returns the encoded result, and the trampoline it names decodes them as the
/// types it was made for (bytes of other types are a decode error, never undefined
/// behaviour). Checked like a typed reference where it is decoded (same executable, a tag
/// only this process tree can make, addresses inside the image).
///
/// ```
/// use multiproc_core::{AnyFnRef, FnRef, reduction};
///
/// fn triple(n: u32) -> u32 {
///     n * 3
/// }
/// let any: AnyFnRef = FnRef::new(triple).unwrap().erase();
/// let bytes = postcard::to_allocvec(&any).unwrap();
/// let any: AnyFnRef = postcard::from_bytes(&bytes).unwrap();
/// let (args, fds) = reduction::encode(&7u32).unwrap();
/// let (out, out_fds) = any.call_encoded(&args, fds).unwrap();
/// assert_eq!(reduction::decode::<u32>(&out, out_fds).unwrap(), 21);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AnyFnRef {
    raw: RawFnRef,
}

impl fmt::Debug for AnyFnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyFnRef")
            .field("offset", &self.raw.target)
            .finish()
    }
}

impl AnyFnRef {
    /// Calls the function with arguments encoded by [`reduction::encode`] as its argument type
    /// and returns its result encoded the same way; a panic becomes [`CallError::Panicked`].
    pub fn call_encoded(&self, args: &[u8], fds: Vec<OwnedFd>) -> Encoded {
        self.raw.call(args, fds, true)
    }

    /// [`call_encoded`](Self::call_encoded), appending the encoded result to `out` (a worker
    /// that reuses one buffer for every call) and returning the result's fds.
    pub fn call_into(
        &self,
        args: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, CallError> {
        self.raw.call_into(args, fds, true, out)
    }
}

impl<'de> Deserialize<'de> for AnyFnRef {
    /// Decodes and checks a reference (everything but its types).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawFnRef::deserialize(deserializer)?;
        raw.check().map_err(|e| {
            reduction::note_refusal(e.clone());
            D::Error::custom(e)
        })?;
        Ok(AnyFnRef { raw })
    }
}

/// Runs `f`, turning a panic into [`CallError::Panicked`] with its message and location
/// (printed by nobody): what a [`FnRef`] call does around the function, for callers of
/// [`FnRef::as_fn`] that run many calls under one capture and resume after a panic.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    match capture_panic(f) {
        Ok(v) => Ok(v),
        Err(CallError::Panicked(p)) => Err(p),
        Err(other) => Err(Panicked {
            message: other.to_string(),
            location: None,
        }),
    }
}

impl RawFnRef {
    /// Checks the reference against this process: executable, tag and image range. The types
    /// are checked by the typed wrapper.
    pub(crate) fn check(&self) -> Result<(usize, usize), FnRefError> {
        let exe = exe::current_id().map_err(FnRefError::NotReexecutable)?;
        if exe != self.exe {
            return Err(FnRefError::OtherExecutable);
        }
        if tag(self) != self.tag {
            return Err(FnRefError::Foreign);
        }
        let base = fnptr::anchor() as i64;
        let tramp = base.wrapping_add(self.tramp) as usize;
        let target = base.wrapping_add(self.target) as usize;
        if !is_code(tramp)? || !is_code(target)? {
            return Err(FnRefError::Foreign);
        }
        Ok((tramp, target))
    }

    /// Calls through the trampoline after [`check`](Self::check).
    pub(crate) fn call(&self, args: &[u8], fds: Vec<OwnedFd>, capture: bool) -> Encoded {
        let mut out = Vec::new();
        let fds = self.call_into(args, fds, capture, &mut out)?;
        Ok((out, fds))
    }

    /// [`call`](Self::call), appending the encoded result to `out`.
    pub(crate) fn call_into(
        &self,
        args: &[u8],
        fds: Vec<OwnedFd>,
        capture: bool,
        out: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, CallError> {
        let (tramp, target) = self.check()?;
        // SAFETY: `check` passed: the tag can only have been made by `FnRef::new` in this
        // process tree (its key is a secret no other program has and no safe API exposes),
        // for this executable (`exe` compared), so `tramp` is `trampoline::<A, R>` and
        // `target` a `fn(A) -> R` of the same `A` and `R`, at offsets from the anchor that are
        // valid in every process running this image (ASLR moves the image as a whole); both
        // addresses were checked to lie inside the image once more.
        let tramp = unsafe { fnptr::fn_at::<Trampoline>(tramp) };
        // SAFETY: `tramp` is `trampoline::<A, R>` and `target` is a `fn(A) -> R` (above).
        unsafe { tramp(target, args, fds, capture, out) }
    }

    /// The typed reference, if the types agree.
    fn typed<A, R>(self) -> Result<FnRef<A, R>, FnRefError> {
        if self.types != fingerprint::<A, R>() {
            return Err(FnRefError::TypeMismatch {
                expected: std::any::type_name::<fn(A) -> R>(),
            });
        }
        self.check()?;
        Ok(FnRef {
            raw: self,
            types: PhantomData,
        })
    }
}

impl<A, R> Serialize for FnRef<A, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de, A, R> Deserialize<'de> for FnRef<A, R> {
    /// Decodes and checks a reference: a refused one is a decode error naming the reason.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawFnRef::deserialize(deserializer)?.typed().map_err(|e| {
            reduction::note_refusal(e.clone());
            D::Error::custom(e)
        })
    }
}

fn is_code(addr: usize) -> Result<bool, FnRefError> {
    exe::is_code(addr).map_err(FnRefError::NotReexecutable)
}

/// A fingerprint of `fn(A) -> R`: its type name, sizes and alignments.
fn fingerprint<A, R>() -> u64 {
    let mut h = siphasher::sip::SipHasher13::new();
    h.write(std::any::type_name::<fn(A) -> R>().as_bytes());
    for n in [
        size_of::<A>(),
        align_of::<A>(),
        size_of::<R>(),
        align_of::<R>(),
    ] {
        h.write_u64(n as u64);
    }
    h.finish()
}

/// The secret of this process tree, made by the main process and inherited by every child.
static KEY: Mutex<Option<[u64; 2]>> = Mutex::new(None);

/// The key of this process tree (made on first use in the main process); a child is started
/// with it.
pub(crate) fn tree_key() -> [u64; 2] {
    let _fork = crate::atfork::hold();
    *KEY.lock().get_or_insert_with(|| {
        let mut bytes = [0u8; 16];
        // getrandom only fails on ancient kernels; fall back to a time-and-pid mix.
        if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            bytes[..8].copy_from_slice(&now.to_le_bytes());
            bytes[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        }
        [
            u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        ]
    })
}

/// Installs the key received from the parent (in a new child, before any reference is checked).
pub(crate) fn set_tree_key(k: [u64; 2]) {
    let _fork = crate::atfork::hold();
    *KEY.lock() = Some(k);
}

fn tag(raw: &RawFnRef) -> u64 {
    let [k0, k1] = tree_key();
    let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
    h.write_i64(raw.tramp);
    h.write_i64(raw.target);
    h.write_u64(raw.types);
    raw.exe.hash(&mut h);
    h.finish()
}

thread_local! {
    /// Set while a call runs in capture mode; the panic hook records into it instead of printing.
    static CAPTURED: RefCell<Option<Option<Panicked>>> = const { RefCell::new(None) };
}

/// Whether the current thread is inside a capturing call (the child's "Process NAME:" panic
/// banner is skipped then).
pub(crate) fn capturing() -> bool {
    CAPTURED.with(|c| c.borrow().is_some())
}

fn install_capture_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = CAPTURED.with(|c| {
                let mut slot = c.borrow_mut();
                match slot.as_mut() {
                    Some(panic) => {
                        *panic = Some(Panicked {
                            message: payload_message(info.payload()),
                            location: info.location().map(ToString::to_string),
                        });
                        true
                    }
                    None => false,
                }
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

/// Runs `f`, turning a panic into [`CallError::Panicked`] without printing it.
fn capture_panic<T>(f: impl FnOnce() -> T) -> Result<T, CallError> {
    install_capture_hook();
    let outer = CAPTURED.with(|c| c.borrow_mut().replace(None));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let recorded = CAPTURED.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    result.map_err(|payload| {
        CallError::Panicked(recorded.flatten().unwrap_or_else(|| Panicked {
            message: payload_message(&*payload),
            location: None,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(n: u64) -> u64 {
        n * 2
    }

    fn explode(_: ()) -> u8 {
        panic!("boom {}", 42)
    }

    #[test]
    fn round_trip_and_call() {
        let f = FnRef::new(double).unwrap();
        let bytes = postcard::to_allocvec(&f).unwrap();
        let g: FnRef<u64, u64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(g.call(21).unwrap(), 42);
    }

    #[test]
    fn panic_is_an_error_value_with_location() {
        let f = FnRef::new(explode).unwrap();
        let Err(CallError::Panicked(p)) = f.call(()) else {
            panic!("expected a panic")
        };
        assert_eq!(p.message(), "boom 42");
        assert!(p.location().unwrap().contains("fnref.rs"), "{p}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let f = FnRef::new(double).unwrap();
        let bytes = postcard::to_allocvec(&f).unwrap();
        let err = reduction::decode::<FnRef<u32, u64>>(&bytes, Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                reduction::ReductionError::FnRef(FnRefError::TypeMismatch { .. })
            ),
            "{err}"
        );
        let raw: RawFnRef = postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(
            raw.typed::<u32, u64>(),
            Err(FnRefError::TypeMismatch { .. })
        ));
    }

    #[test]
    fn forged_offsets_are_refused() {
        let f = FnRef::new(double).unwrap();
        let mut raw = f.raw();
        raw.target += 16;
        assert_eq!(raw.check(), Err(FnRefError::Foreign));
        assert!(matches!(
            raw.call(&[], Vec::new(), true),
            Err(CallError::Reference(_))
        ));
    }

    #[test]
    fn another_executable_is_refused() {
        let f = FnRef::new(double).unwrap();
        let mut raw = f.raw();
        raw.exe = ExeId::other_for_tests();
        assert_eq!(raw.check(), Err(FnRefError::OtherExecutable));
        assert!(matches!(
            raw.typed::<u64, u64>(),
            Err(FnRefError::OtherExecutable)
        ));
    }
}
