//! Pools under every start method.
fn main() {}
