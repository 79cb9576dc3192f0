//! The fuzz targets, one module each (a new target: a file here, a line in
//! [`TARGETS`](crate::TARGETS), a three-line `fuzz_targets/<name>.rs` and its `[[bin]]`).

pub mod frame;
pub mod handshake;
pub mod queue_records;
