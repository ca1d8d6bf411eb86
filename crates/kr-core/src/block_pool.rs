//! The paged KV block pool: fixed-size blocks with reference counts, and a prefix
//! cache keyed by chained block hashes with LRU eviction of cached free blocks.
//!
//! Invariants (checked by [`BlockPool::check_invariants`], run after every mutation in tests):
//! - a block is in the free queue exactly when its reference count is 0;
//! - the free queue is ordered by release time, so the front is the least recently used;
//! - every entry of the hash index points at a block that carries that hash, and a block
//!   carries a hash only while it is in the index (a block that lost the race to register a
//!   duplicate hash keeps none);
//! - handing out a free block for new use evicts its hash first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Index of a block in the pool (and in every backend's KV tensors).
pub type BlockId = u32;

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    ref_count: u32,
    hash: Option<u64>,
    /// Position in the free queue while free.
    free_stamp: Option<u64>,
}

/// Reference-counted blocks plus the prefix-cache index.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    blocks: Vec<BlockMeta>,
    /// Free blocks by release stamp: first = least recently released = evicted first.
    free_queue: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    cached: HashMap<u64, BlockId>,
}

/// Hash of a full block of tokens, chained to the hash of the block before it, so equal
/// hashes mean equal whole prefixes.
pub fn chain_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.unwrap_or(0x9e37_79b9_7f4a_7c15).hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks of `block_size` tokens each.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let mut pool = Self {
            block_size,
            blocks: vec![BlockMeta::default(); num_blocks],
            free_queue: BTreeMap::new(),
            next_stamp: 0,
            cached: HashMap::new(),
        };
        for id in 0..num_blocks as BlockId {
            pool.push_free(id);
        }
        pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out now (free, cached or not).
    pub fn num_free(&self) -> usize {
        self.free_queue.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_count
    }

    fn push_free(&mut self, id: BlockId) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.blocks[id as usize].free_stamp = Some(stamp);
        self.free_queue.insert(stamp, id);
    }

    fn take_from_free(&mut self, id: BlockId) {
        if let Some(stamp) = self.blocks[id as usize].free_stamp.take() {
            self.free_queue.remove(&stamp);
        }
    }

    /// Takes `n` blocks for new content, evicting the least recently used cached ones.
    /// Returns `None` (and changes nothing) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free_queue.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (_, id) = self.free_queue.pop_first()?;
            let meta = &mut self.blocks[id as usize];
            meta.free_stamp = None;
            meta.ref_count = 1;
            if let Some(h) = meta.hash.take() {
                self.cached.remove(&h);
            }
            out.push(id);
        }
        Some(out)
    }

    /// The cached block holding the prefix that ends with this hash, if any.
    pub fn lookup(&self, hash: u64) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Adds a reference to a block found by [`lookup`](Self::lookup) (a prefix-cache hit).
    pub fn acquire(&mut self, id: BlockId) {
        if self.blocks[id as usize].ref_count == 0 {
            self.take_from_free(id);
        }
        self.blocks[id as usize].ref_count += 1;
    }

    /// Drops one reference; a block whose count reaches 0 becomes free but keeps its hash,
    /// so a later request with the same prefix can still reuse it until it is evicted.
    pub fn release(&mut self, id: BlockId) {
        let meta = &mut self.blocks[id as usize];
        assert!(meta.ref_count > 0, "double release of block {id}");
        meta.ref_count -= 1;
        if meta.ref_count == 0 {
            self.push_free(id);
        }
    }

    /// Records that a held block is full and its content ends the prefix with `hash`.
    /// If another block already caches that prefix, this one stays unhashed.
    pub fn register_full(&mut self, id: BlockId, hash: u64) {
        if self.blocks[id as usize].hash.is_some() || self.cached.contains_key(&hash) {
            return;
        }
        self.blocks[id as usize].hash = Some(hash);
        self.cached.insert(hash, id);
    }

    /// Panics with a description if any invariant of the module header is broken.
    pub fn check_invariants(&self) {
        let mut free_seen = 0;
        for (id, meta) in self.blocks.iter().enumerate() {
            let in_queue = meta
                .free_stamp
                .map(|s| self.free_queue.get(&s) == Some(&(id as BlockId)))
                .unwrap_or(false);
            assert_eq!(
                meta.ref_count == 0,
                in_queue,
                "block {id}: ref_count {} but in free queue = {in_queue}",
                meta.ref_count
            );
            assert_eq!(
                meta.free_stamp.is_some(),
                in_queue,
                "block {id}: stale free stamp"
            );
            free_seen += in_queue as usize;
            if let Some(h) = meta.hash {
                assert_eq!(
                    self.cached.get(&h),
                    Some(&(id as BlockId)),
                    "block {id}: hash not indexed"
                );
            }
        }
        assert_eq!(
            free_seen,
            self.free_queue.len(),
            "free queue holds unknown entries"
        );
        for (h, &id) in &self.cached {
            assert_eq!(
                self.blocks[id as usize].hash,
                Some(*h),
                "index entry for block {id} is stale"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn allocate_release_and_reuse_cached_prefix() {
        let mut pool = BlockPool::new(4, 16);
        let a = pool.allocate(2).unwrap();
        let h0 = chain_hash(None, &[1; 16]);
        pool.register_full(a[0], h0);
        pool.release(a[0]);
        pool.release(a[1]);
        pool.check_invariants();
        assert_eq!(pool.num_free(), 4);
        let hit = pool.lookup(h0).unwrap();
        pool.acquire(hit);
        assert_eq!(pool.num_free(), 3);
        pool.release(hit);
        // Allocating everything evicts the cached block.
        let all = pool.allocate(4).unwrap();
        assert!(pool.lookup(h0).is_none());
        assert!(pool.allocate(1).is_none());
        all.iter().for_each(|&b| pool.release(b));
        pool.check_invariants();
    }

    #[test]
    fn lru_evicts_oldest_released_first() {
        let mut pool = BlockPool::new(3, 1);
        let blocks = pool.allocate(3).unwrap();
        for (i, &b) in blocks.iter().enumerate() {
            pool.register_full(b, i as u64);
        }
        for &b in &blocks {
            pool.release(b);
        }
        pool.allocate(1).unwrap();
        assert!(pool.lookup(0).is_none());
        assert!(pool.lookup(1).is_some() && pool.lookup(2).is_some());
    }

    /// TGI-style seeded stress: 100k random operations, invariants checked after each.
    #[test]
    fn seeded_stress_keeps_invariants() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut pool = BlockPool::new(64, 4);
        let mut held: Vec<BlockId> = Vec::new();
        for _ in 0..100_000u64 {
            match rng.random_range(0..4) {
                0 => {
                    let n = rng.random_range(1..6);
                    if let Some(b) = pool.allocate(n) {
                        held.extend(b);
                    }
                }
                1 if !held.is_empty() => {
                    let i = rng.random_range(0..held.len());
                    pool.release(held.swap_remove(i));
                }
                2 if !held.is_empty() => {
                    let i = rng.random_range(0..held.len());
                    pool.register_full(held[i], rng.random_range(0..32));
                }
                _ => {
                    if let Some(b) = pool.lookup(rng.random_range(0..32)) {
                        pool.acquire(b);
                        held.push(b);
                    }
                }
            }
            pool.check_invariants();
            assert_eq!(pool.num_used(), {
                let mut u = held.clone();
                u.sort_unstable();
                u.dedup();
                u.len()
            });
        }
        for b in held.drain(..) {
            pool.release(b);
        }
        pool.check_invariants();
        assert_eq!(pool.num_free(), pool.num_blocks());
    }
}
