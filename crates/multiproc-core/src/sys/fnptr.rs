//! Code addresses as numbers and back: the anchor every function offset is measured from, and
//! the one `transmute` that turns a checked address into a function pointer.
//!
//! No knowledge of what the functions do lives here: [`crate::fnref`] builds and checks the
//! offsets, this module only converts.

/// The anchor: a `static` has one address per image (an `#[inline]` fn may have several).
static ANCHOR: u8 = 0;

/// The address of the anchor in this process.
pub(crate) fn anchor() -> usize {
    std::ptr::addr_of!(ANCHOR) as usize
}

/// An address inside this crate's code (a function of it), to find the loaded object that holds
/// it.
#[inline(never)]
pub(crate) fn anchor_code() -> usize {
    anchor_code as fn() -> usize as usize
}

/// Turns a code address back into a function pointer of type `F`.
///
/// # Safety
///
/// `addr` must be the address of a function whose type is exactly `F` (a `fn(..) -> ..`
/// pointer type), in this process's image.
pub(crate) unsafe fn fn_at<F: Copy>(addr: usize) -> F {
    const { assert!(size_of::<F>() == size_of::<usize>()) };
    // SAFETY: `F` is a fn pointer type of the size of `usize` (asserted at compile time), and
    // the caller guarantees that `addr` is a function of exactly that type.
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}
