//! TEMPORARY STUB (the multiproc API is not there yet).
use crate::report::{Bench, Res};
#[derive(Clone, Copy, Debug)]
pub(crate) enum Method { Fork, Forkserver, Spawn }
pub(crate) fn warm_up() -> Res<()> { Err("multiproc API not ready".into()) }
pub(crate) fn start_join(_m: Method, _n: usize, _s: &'static str) -> Box<dyn Bench> { unimplemented!() }
pub(crate) fn roundtrip(_d: bool, _m: usize, _i: usize) -> Box<dyn Bench> { unimplemented!() }
pub(crate) fn throughput(_d: bool, _s: usize, _c: usize, _l: &'static str) -> Box<dyn Bench> { unimplemented!() }
