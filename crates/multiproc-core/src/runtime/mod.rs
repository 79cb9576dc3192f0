//! The child runtime: what runs in a new child from its first instruction to `_exit` (the
//! pre-`main` hook, the bootstrap, the forkserver's loop).

pub(crate) mod bootstrap;
#[allow(unsafe_code)] // An `.init_array` entry and reading argv before `main`; see docs/unsafe.md.
mod hook;
pub(crate) mod serve;
