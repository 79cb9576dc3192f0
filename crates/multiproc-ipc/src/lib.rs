//! Connection and pipe().
#![forbid(unsafe_code)]
