//! multiproc facade.
