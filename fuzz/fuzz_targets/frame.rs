//! libFuzzer entry of the `frame` target (see `src/targets/frame.rs`).
#![no_main]

#[global_allocator]
static ALLOC: multiproc_fuzz::Counting = multiproc_fuzz::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| multiproc_fuzz::targets::frame::run(data));
