//! A memory budget for chat-template rendering, enforced by a global allocator.
//!
//! A chat template is code from the model file. Fuel bounds how many instructions it runs
//! and a bounded writer how much it prints, but a few instructions can still build a huge
//! string (`{% set ns.s = ns.s ~ ns.s %}` in a loop doubles it each time). So the thread
//! that renders a template carries a byte budget: [`BudgetedAllocator`] (installed with
//! `#[global_allocator]` by the binary and by the tests that check this) charges every
//! allocation of that thread against it. An allocation over the budget never returns: the
//! thread raises its flag and sleeps for good, holding what it has (at most the budget);
//! the renderer sees the flag, answers with an error and disables the template, so one
//! hostile template costs one parked thread and at most one budget of memory.
//!
//! Invariants: threads without a budget are charged nothing (one thread-local read per
//! allocation); the allocator itself never allocates; without the allocator installed the
//! budget is simply not enforced (fuel, output and time limits still are).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Bytes this thread may still allocate; `usize::MAX`: no budget.
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Raised when this thread's budget ran out.
    static FLAG: Cell<*const AtomicBool> = const { Cell::new(std::ptr::null()) };
}

/// The system allocator with per-thread budgets for template rendering.
pub struct BudgetedAllocator;

/// Takes `bytes` from the current thread's budget; parks the thread for good when it
/// runs out.
fn charge(bytes: usize) {
    let over = LEFT
        .try_with(|left| {
            let l = left.get();
            if l == usize::MAX {
                return false;
            }
            match l.checked_sub(bytes) {
                Some(rest) => {
                    left.set(rest);
                    false
                }
                None => true,
            }
        })
        .unwrap_or(false);
    if over {
        if let Ok(flag) = FLAG.try_with(Cell::get) {
            // SAFETY: the flag outlives the budget that points at it (see `Budget`), and
            // a thread that gets here never returns to drop its budget.
            if let Some(flag) = unsafe { flag.as_ref() } {
                flag.store(true, Ordering::SeqCst);
            }
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Gives `bytes` back to the current thread's budget, if it has one.
fn refund(bytes: usize) {
    let _ = LEFT.try_with(|left| {
        let l = left.get();
        if l != usize::MAX {
            left.set(l.saturating_add(bytes).min(usize::MAX - 1));
        }
    });
}

// SAFETY: every call is forwarded to `System` with the same layout; the bookkeeping
// touches only const-initialised thread-locals without destructors and never allocates.
unsafe impl GlobalAlloc for BudgetedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        refund(layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
        } else {
            refund(layout.size() - new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// The current thread's budget while it lives; the thread has none again after.
pub struct Budget {
    _flag: std::sync::Arc<AtomicBool>,
}

impl Budget {
    /// Gives the current thread `bytes` to allocate; `flag` is raised if it runs out.
    pub fn enter(bytes: usize, flag: std::sync::Arc<AtomicBool>) -> Self {
        FLAG.with(|f| f.set(std::sync::Arc::as_ptr(&flag)));
        LEFT.with(|l| l.set(bytes.min(usize::MAX - 1)));
        Self { _flag: flag }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        LEFT.with(|l| l.set(usize::MAX));
        FLAG.with(|f| f.set(std::ptr::null()));
    }
}
