//! Counting global allocator: mimalloc underneath, plus counters of how many heap
//! allocations were made and how many bytes they asked for.
//!
//! Owns: the process-wide counters and a per-thread counter. The binary installs
//! [`CountingAlloc`] as `#[global_allocator]` only under the `count-alloc` feature (plain
//! `MiMalloc` otherwise); tests that prove a code path allocates nothing install it
//! themselves. It is always compiled because it costs nothing unless installed.
//!
//! Invariants:
//! - `alloc`, `alloc_zeroed` and `realloc` each count as one allocation; `dealloc` is
//!   not counted (the counters say how often the hot path asks for memory, not how much
//!   is live).
//! - Counting never allocates and never takes a lock: relaxed atomics for the process
//!   totals, a const-initialised thread-local `Cell` (no destructor, so no lazy
//!   registration that could itself allocate) for the calling thread's count.
//! - The counters only grow; measure a code path by taking the difference of two reads.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use mimalloc::MiMalloc;

/// Allocations made by every thread since start (alloc, alloc_zeroed, realloc).
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes requested by those allocations (the new size, for a realloc).
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Allocations made by this thread, so a test can measure its own code path while
    /// the test harness and other tests allocate on other threads.
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// A `GlobalAlloc` that forwards to mimalloc and counts every allocation.
pub struct CountingAlloc;

#[inline]
fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    // `try_with`: during thread teardown the slot may be gone; the global count is enough.
    let _ = THREAD_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `MiMalloc`, which upholds the `GlobalAlloc` contract;
// the counting around it touches only atomics and a destructor-less thread-local.
unsafe impl GlobalAlloc for CountingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from MiMalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from this allocator, i.e. from MiMalloc; same contract.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made by all threads since start (0 unless [`CountingAlloc`] is installed).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes requested by all allocations since start (0 unless [`CountingAlloc`] is installed).
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.load(Ordering::Relaxed)
}

/// Allocations made by the calling thread since it started (0 unless [`CountingAlloc`]
/// is installed). Immune to what other threads do, so tests can assert on it.
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}
