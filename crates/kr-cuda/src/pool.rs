//! The step workspace: a first-fit allocator over one device allocation made at load time, so
//! no device memory is allocated inside a step (P1).
//!
//! Invariants: free ranges are sorted, disjoint and coalesced; every offset is a multiple of
//! [`ALIGN`]. The allocator is deterministic: the same sequence of allocations and frees from
//! the same state returns the same offsets, which is what lets a captured CUDA graph replay
//! a step with the addresses it was captured with.

use std::sync::{Arc, Mutex};

/// Alignment of every allocation (the widest vector load is 16 bytes; 256 matches cudaMalloc).
pub const ALIGN: usize = 256;

#[derive(Debug)]
pub struct FirstFit {
    capacity: usize,
    /// Free `(offset, len)` ranges, sorted by offset.
    free: Vec<(usize, usize)>,
    used: usize,
    peak: usize,
}

impl FirstFit {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity / ALIGN * ALIGN;
        Self {
            capacity,
            free: vec![(0, capacity)],
            used: 0,
            peak: 0,
        }
    }

    /// Offset of a new block of `bytes` (rounded up to [`ALIGN`]), or `None` when no free range
    /// is large enough.
    pub fn alloc(&mut self, bytes: usize) -> Option<usize> {
        let size = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let i = self.free.iter().position(|&(_, len)| len >= size)?;
        let (off, len) = self.free[i];
        if len == size {
            self.free.remove(i);
        } else {
            self.free[i] = (off + size, len - size);
        }
        self.used += size;
        self.peak = self.peak.max(self.used);
        Some(off)
    }

    /// Returns the block at `offset` of `bytes` (as passed to `alloc`).
    pub fn free(&mut self, offset: usize, bytes: usize) {
        let size = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let i = self.free.partition_point(|&(o, _)| o < offset);
        self.free.insert(i, (offset, size));
        self.used -= size;
        // Coalesce with the right neighbour, then the left one.
        if i + 1 < self.free.len() && offset + size == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == offset {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn used(&self) -> usize {
        self.used
    }
    /// Most bytes in use at once since creation.
    pub fn peak(&self) -> usize {
        self.peak
    }
    /// True when everything is free (between steps).
    pub fn is_empty(&self) -> bool {
        self.used == 0 && self.free == [(0, self.capacity)]
    }
}

/// A shared handle to the workspace allocator; tensors return their block on drop.
pub type SharedPool = Arc<Mutex<FirstFit>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny seeded generator so the test needs no dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_alloc_free_keeps_invariants_and_returns_everything() {
        let mut pool = FirstFit::new(1 << 20);
        let mut live: Vec<(usize, usize)> = Vec::new();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            if live.is_empty() || next(&mut s) % 3 != 0 {
                let bytes = (next(&mut s) % 20_000) as usize + 1;
                if let Some(off) = pool.alloc(bytes) {
                    assert_eq!(off % ALIGN, 0);
                    let end = off + bytes.div_ceil(ALIGN) * ALIGN;
                    assert!(end <= pool.capacity());
                    for &(o, b) in &live {
                        let e = o + b.div_ceil(ALIGN) * ALIGN;
                        assert!(end <= o || off >= e, "overlap");
                    }
                    live.push((off, bytes));
                }
            } else {
                let i = (next(&mut s) as usize) % live.len();
                let (o, b) = live.swap_remove(i);
                pool.free(o, b);
            }
            assert!(pool.free.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
        }
        for (o, b) in live.drain(..) {
            pool.free(o, b);
        }
        assert!(pool.is_empty());
    }

    #[test]
    fn same_sequence_gives_same_offsets() {
        let run = || {
            let mut p = FirstFit::new(1 << 16);
            let a = p.alloc(1000).unwrap();
            let b = p.alloc(3000).unwrap();
            p.free(a, 1000);
            let c = p.alloc(500).unwrap();
            p.free(b, 3000);
            p.free(c, 500);
            (a, b, c, p.is_empty())
        };
        assert_eq!(run(), run());
        assert!(run().3);
    }

    #[test]
    fn exhaustion_is_none_not_a_panic() {
        let mut p = FirstFit::new(4 * ALIGN);
        assert!(p.alloc(3 * ALIGN).is_some());
        assert!(p.alloc(2 * ALIGN).is_none());
    }
}
