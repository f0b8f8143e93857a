//! The global allocator: mimalloc, reached through its plain entry points whenever a layout
//! allows.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`. In mimalloc v3
//! that call only stays on the fast path while the size class's page has a free block at
//! hand; once the page's free list is empty it falls to the over-allocating path for every
//! size that is not a power of two (24, 40, 48, 80 bytes, ...), which costs about 190
//! instructions a call and never refills the page's list. On the request path that was 2.4
//! calls and 450 instructions per proxied request (benches/README.md, "Issue 15, fifth
//! pass"). Plain `mi_malloc` satisfies any alignment up to 16 bytes for a size that is a
//! multiple of it: mimalloc's size classes are multiples of 8 bytes, multiples of 16 above
//! 64 bytes, and every page's first block is at least 16-byte aligned.
//!
//! This is the one module of the crate with `unsafe` code: `GlobalAlloc` is an unsafe trait
//! and the entry points are C functions.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// `MI_MAX_ALIGN_SIZE`: the alignment mimalloc's size classes give without asking.
const NATURAL_ALIGN: usize = 16;

/// True when plain `mi_malloc` of `size` bytes is already aligned to `align`.
#[inline(always)]
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && size & (align - 1) == 0
}

pub struct MiMalloc;

// SAFETY: every method hands mimalloc the layout it was given, and asks for an explicit
// alignment unless `natural` says a plain allocation already has it; memory is freed with
// `mi_free`, which accepts pointers from every mimalloc allocation function.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; null on failure is what `GlobalAlloc` expects.
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `ptr` came from this allocator with `layout`.
        unsafe {
            if natural(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 4 KiB and every alignment up to 64, plain or aligned path, filled,
    /// grown, zeroed and freed: each block has the alignment its layout asked for.
    #[test]
    fn every_block_has_the_alignment_its_layout_asks_for() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64] {
            let mut live = Vec::new();
            for size in (1..=4096usize).filter(|s| s % align == 0 || *s < align || s % 7 == 0) {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero size; each block is used within its size and freed once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{layout:?}");
                    assert_eq!(p as usize % align, 0, "{layout:?} gave {p:p}");
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {layout:?} gave {z:p}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    let grown = a.realloc(p, layout, size * 2 + 8);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc of {layout:?} gave {grown:p}"
                    );
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|b| *b == 0xa5));
                    live.push((z, layout));
                    a.dealloc(
                        grown,
                        Layout::from_size_align_unchecked(size * 2 + 8, align),
                    );
                }
            }
            for (p, layout) in live {
                // SAFETY: allocated above with this layout, freed once.
                unsafe { a.dealloc(p, layout) }
            }
        }
    }
}
