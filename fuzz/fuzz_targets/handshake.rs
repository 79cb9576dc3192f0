//! libFuzzer entry of the `handshake` target (see `src/targets/handshake.rs`).
#![no_main]

#[global_allocator]
static ALLOC: multiproc_fuzz::Counting = multiproc_fuzz::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| multiproc_fuzz::targets::handshake::run(data));
