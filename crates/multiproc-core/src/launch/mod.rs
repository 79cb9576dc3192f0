//! Making children: spawn (`posix_spawn` of this executable), the forkserver client, fork, and
//! the table of children this process has started.

pub(crate) mod children;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod launcher;
pub(crate) mod spawn;
