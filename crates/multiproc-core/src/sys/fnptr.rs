//! Function identity across exec: a target and its monomorphised trampoline travel as offsets
//! from one anchor `static` (procspawn's and crossmist's scheme), valid because the child runs
//! the very same executable image (`/proc/self/exe`, checked by [`crate::exe`]).

use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::reduction::{self, ReductionError};

/// The anchor: a `static` has one address per image (an `#[inline]` fn may have several).
static ANCHOR: u8 = 0;

fn anchor() -> usize {
    std::ptr::addr_of!(ANCHOR) as usize
}

/// Address of [`ANCHOR`], for [`crate::exe`] to find the image that holds this code.
pub(crate) fn anchor_addr() -> usize {
    anchor()
}

type Trampoline = unsafe fn(usize, &[u8], Vec<OwnedFd>) -> Result<(), ReductionError>;

/// Decodes `A` and calls the `fn(A)` at `target`.
///
/// # Safety
///
/// `target` must be the address of a `fn(A)` with exactly this `A`.
unsafe fn trampoline<A: DeserializeOwned>(
    target: usize,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(), ReductionError> {
    let args: A = reduction::decode(args, fds)?;
    // SAFETY: the caller guarantees `target` is a `fn(A)` for this `A`; fn pointers and usize
    // have the same size on every target Rust supports for this crate (Linux).
    let f = unsafe { std::mem::transmute::<usize, fn(A)>(target) };
    f(args);
    Ok(())
}

/// Where to jump in the child: offsets of the trampoline and of the target from the anchor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Entry {
    tramp: isize,
    target: isize,
}

impl Entry {
    /// The entry for `f`, or `None` if `f` or its trampoline lies outside the main executable
    /// image (a std fn in a dylib under `-C prefer-dynamic`, a cdylib plugin): such an offset
    /// would point elsewhere in the child.
    pub(crate) fn new<A: DeserializeOwned>(f: fn(A)) -> Option<Entry> {
        let tramp = trampoline::<A> as Trampoline as usize;
        let target = f as usize;
        let image = crate::exe::image_range().ok()?;
        if !image.contains(&tramp) || !image.contains(&target) {
            return None;
        }
        let base = anchor() as isize;
        Some(Entry {
            tramp: tramp as isize - base,
            target: target as isize - base,
        })
    }

    /// Runs the target with the encoded arguments, in the child.
    ///
    /// Only ever called on an entry received from the parent over the bootstrap socket, after
    /// the child checked that it runs the parent's executable (`child::run_spawned`).
    pub(crate) fn call(self, args: &[u8], fds: Vec<OwnedFd>) -> Result<(), ReductionError> {
        let base = anchor() as isize;
        let (tramp, target) = ((base + self.tramp) as usize, (base + self.target) as usize);
        // SAFETY: the parent built this entry with `Entry::new::<A>` from a `fn(A)` and
        // `trampoline::<A>` of the same `A`, and checked that both lie inside the main image; the
        // child runs the same image (exec of `/proc/self/exe`, its identity compared with the
        // parent's in `child::run_spawned`), which ASLR moves as a whole, so anchor-relative
        // offsets name the same two functions here. (Checking the range again here would cost
        // a parse of /proc/self/maps in every child.)
        let tramp = unsafe { std::mem::transmute::<usize, Trampoline>(tramp) };
        // SAFETY: `tramp` is `trampoline::<A>` and `target` a `fn(A)` of the same `A` (above).
        unsafe { tramp(target, args, fds) }
    }
}
