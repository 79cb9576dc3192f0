//! Fuzz targets for multiproc's decoders, and what every target must survive: no panic, no
//! allocation beyond a stated bound, a typed error for every bad input.
//!
//! Each target is one module of [`targets`], a `run(&[u8])` that panics when an input breaks
//! a rule, registered in [`TARGETS`]. The libFuzzer binaries in `fuzz_targets/` call it
//! (`cargo fuzz run <target>`), and `tests/regressions.rs` replays every file of
//! `regressions/<target>/` through it under `cargo test --workspace`. See `docs/testing.md`.

pub mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A target: runs one input, panicking when it breaks a rule.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its binary and of its `regressions/` folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", targets::frame::run),
    ("handshake", targets::handshake::run),
    ("queue_records", targets::queue_records::run),
];

/// The system allocator, recording the largest single allocation, so that a target can check
/// that a header claiming a huge length made nothing allocate that much. Install it with
/// `#[global_allocator]` in each binary (the libFuzzer targets and the regression replay);
/// without it [`largest_allocation`] stays 0 and the bound checks pass vacuously.
#[derive(Debug)]
pub struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the only addition is an atomic maximum of the requested sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is `System.alloc_zeroed`'s.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller's contract for
        // `realloc` is `System.realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Forgets the largest allocation seen so far (call before running an input).
pub fn reset_largest_allocation() {
    LARGEST.store(0, Ordering::Relaxed);
}

/// The largest single allocation (or reallocation) since [`reset_largest_allocation`], in
/// bytes; 0 when [`Counting`] is not the global allocator.
pub fn largest_allocation() -> usize {
    LARGEST.load(Ordering::Relaxed)
}
