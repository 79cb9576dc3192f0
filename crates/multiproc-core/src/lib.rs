//! Processes and start methods for multiproc.
#![deny(unsafe_code)]

pub mod reduction;
