//! Start methods and contexts: Python's `set_start_method`, `get_start_method`,
//! `get_all_start_methods` (contexts are in `process.rs`).

use std::fmt;
use std::str::FromStr;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a child process is created.
///
/// | method | how | cost | safe in a threaded parent |
/// |---|---|---|---|
/// | [`Fork`](StartMethod::Fork) | `fork()`; the child runs the target on a copy of the parent's memory | grows with the parent's memory | no (refused unless opted in) |
/// | [`Spawn`](StartMethod::Spawn) | re-executes this binary; the target and its arguments travel encoded | flat, about one exec | yes |
/// | [`Forkserver`](StartMethod::Forkserver) | a small server (started once, by spawn) forks children on request | flat, cheaper than spawn | yes |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// `fork()` the calling process.
    Fork,
    /// Re-execute the current binary.
    Spawn,
    /// Ask the forkserver to fork a child (the default, as in Python 3.14 on Linux).
    Forkserver,
}

impl StartMethod {
    /// The name Python uses: `"fork"`, `"spawn"` or `"forkserver"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
        }
    }

    /// Prefix of default process names for processes of a context (`ForkProcess-1` …).
    pub(crate) fn process_class(self) -> &'static str {
        match self {
            StartMethod::Fork => "ForkProcess",
            StartMethod::Spawn => "SpawnProcess",
            StartMethod::Forkserver => "ForkServerProcess",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::Forkserver),
            other => Err(Error::UnknownStartMethod(other.to_string())),
        }
    }
}

/// The default start method when none was set.
pub const DEFAULT_START_METHOD: StartMethod = StartMethod::Forkserver;

static METHOD: Mutex<Option<StartMethod>> = Mutex::new(None);

/// Fixes the start method used by [`Process::new`](crate::Process::new); a second call is an error
/// ([`Error::StartMethodAlreadySet`]) unless it goes through [`force_start_method`].
///
/// Python: `multiprocessing.set_start_method(method)`.
pub fn set_start_method(method: StartMethod) -> Result<()> {
    let _fork = crate::atfork::hold();
    let mut m = METHOD.lock();
    if m.is_some() {
        return Err(Error::StartMethodAlreadySet);
    }
    *m = Some(method);
    Ok(())
}

/// Sets (or with `None` un-sets) the start method even if it was set before.
///
/// Python: `multiprocessing.set_start_method(method, force=True)`.
pub fn force_start_method(method: Option<StartMethod>) {
    let _fork = crate::atfork::hold();
    *METHOD.lock() = method;
}

/// The start method in use; if none was set, fixes it to [`DEFAULT_START_METHOD`].
///
/// Python: `multiprocessing.get_start_method()`.
pub fn get_start_method() -> StartMethod {
    let _fork = crate::atfork::hold();
    *METHOD.lock().get_or_insert(DEFAULT_START_METHOD)
}

/// The start method if one was set or fixed, without fixing it.
///
/// Python: `multiprocessing.get_start_method(allow_none=True)`.
pub fn start_method_if_set() -> Option<StartMethod> {
    let _fork = crate::atfork::hold();
    *METHOD.lock()
}

/// Every start method available here, the default first.
///
/// Python: `multiprocessing.get_all_start_methods()`.
pub fn get_all_start_methods() -> Vec<StartMethod> {
    vec![
        StartMethod::Forkserver,
        StartMethod::Spawn,
        StartMethod::Fork,
    ]
}
