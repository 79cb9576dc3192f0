//! What a parent tells a new child: plain data, encoded into the bootstrap record (spawn,
//! forkserver) or handed over in memory (fork).

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::exe::ExeId;
use crate::fnref::{FnRefError, RawFnRef};
use crate::method::StartMethod;
use crate::reduction::ReductionError;

/// Largest bootstrap record a child accepts (arguments included).
pub(crate) const MAX_BOOT_RECORD: usize = u32::MAX as usize;

/// What a child learns about itself from its parent.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ChildInfo {
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) authkey: [u8; 32],
    /// The secret that tags this process tree's function references.
    pub(crate) fn_key: [u64; 2],
    pub(crate) parent_pid: i32,
    pub(crate) parent_name: String,
    /// How this child is started.
    pub(crate) method: StartMethod,
    /// The method of the [`Context`](crate::Context) that made the `Process`, if any: the
    /// child's `get_start_method()` (as CPython's `_bootstrap` forces `_start_method`).
    pub(crate) context_method: Option<StartMethod>,
    /// The parent's `set_start_method` choice, inherited as in Python.
    pub(crate) global_method: Option<StartMethod>,
    /// The parent's working directory, for forkserver children (the server's may differ).
    pub(crate) cwd: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ChildInfo {
    /// Everything but the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildInfo")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("daemon", &self.daemon)
            .field("parent_pid", &self.parent_pid)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// What a re-executed child (or a forkserver child) is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Boot {
    /// The parent's executable; the child refuses to run if its own differs.
    pub(crate) exe: ExeId,
    pub(crate) kind: BootKind,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BootKind {
    /// Run a target.
    Run(Box<Job>),
    /// Become the forkserver.
    Forkserver,
}

/// A target to run: who the child is, what to call, and its encoded arguments (the fds travel
/// beside the record).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) info: ChildInfo,
    pub(crate) entry: RawFnRef,
    pub(crate) args: Vec<u8>,
}

/// What a process runs: a `fn(A)` and its arguments.
pub(crate) trait Target: Send {
    /// The checked reference to the function, for a child that is not a fork.
    fn entry(&self) -> Result<RawFnRef, FnRefError>;
    /// The arguments, encoded with their fds.
    fn encode_args(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ReductionError>;
    /// Runs in a fork child, on the inherited memory.
    fn run(self: Box<Self>);
}
