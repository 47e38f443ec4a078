//! Memory hints: touching reserved memory up front, so the first events
//! after start-up do not pay for page faults (on virtual machines, a first
//! touch can cost several microseconds per 4 KiB page), and prefetching.

/// Hints the CPU to load the cache line holding `value`; a no-op where unsupported.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch takes any address, never faults and has no
    // architectural effect; this one points at a live reference.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Page granularity for touching memory.
const PAGE_SIZE: usize = 4096;

/// Writes one byte per page of `vec`'s unused capacity (the contents stay
/// uninitialised as far as `vec` is concerned: its length does not change).
pub fn spare_capacity<T>(vec: &mut Vec<T>) {
    let spare = vec.spare_capacity_mut();
    let bytes = core::mem::size_of_val(spare);
    let base = spare.as_mut_ptr().cast::<u8>();
    let mut offset = 0;
    while offset < bytes {
        // SAFETY: `offset < bytes`, inside the spare capacity that `vec`
        // owns; writing to MaybeUninit memory is always allowed, and a
        // volatile write is not optimised away.
        unsafe { core::ptr::write_volatile(base.add(offset), 0) };
        offset += PAGE_SIZE;
    }
}

/// Touches one byte per page of an initialised slice without changing it.
pub fn slice<T: Copy>(items: &mut [T]) {
    let bytes = core::mem::size_of_val(items);
    let base = items.as_mut_ptr().cast::<u8>();
    let mut offset = 0;
    while offset < bytes {
        // SAFETY: in bounds of `items`; reads then writes back the same byte.
        unsafe {
            let byte = core::ptr::read_volatile(base.add(offset));
            core::ptr::write_volatile(base.add(offset), byte);
        }
        offset += PAGE_SIZE;
    }
}
