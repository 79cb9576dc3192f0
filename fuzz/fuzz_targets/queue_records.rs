//! libFuzzer entry of the `queue_records` target (see `src/targets/queue_records.rs`).
#![no_main]

#[global_allocator]
static ALLOC: multiproc_fuzz::Counting = multiproc_fuzz::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| multiproc_fuzz::targets::queue_records::run(data));
