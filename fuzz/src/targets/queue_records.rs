//! The `queue_records` target: the queue's record decoder, reading a ring whose producers
//! wrote arbitrary words ([`multiproc_ipc::queue::fuzz_records`]).
//!
//! Input: the ring's first bytes (at most 4 KiB, the smallest ring), published as written.
//! Rules checked: no panic, no hang (a chunked item that no producer holds open is reported
//! corrupt), no single allocation beyond 2 MiB whatever a record claims (the decoder reserves
//! at most 1 MiB ahead of the chunks that arrived), and no more items than records fit.

/// Runs one input; panics when it breaks a rule.
pub fn run(data: &[u8]) {
    crate::reset_largest_allocation();
    let items = multiproc_ipc::queue::fuzz_records(data);
    let largest = crate::largest_allocation();
    assert!(largest <= 2 << 20, "an allocation of {largest} bytes");
    assert!(
        items <= data.len() / 8,
        "{items} items out of {} bytes",
        data.len()
    );
}
