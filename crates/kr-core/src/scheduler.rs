//! The iteration-level token-budget scheduler, after vLLM v1's model.
//!
//! Each request has `tokens` (prompt + generated so far) and `num_computed` (tokens whose KV
//! is in the cache). A step gives tokens to requests under `max_num_batched_tokens`: running
//! requests first (decodes and unfinished prefill chunks, in admission order), then waiting
//! ones: the highest effective priority first (base priority raised by aging, see
//! [`crate::policy::Priority`]), FCFS within a rank, preempted requests ahead of new ones of
//! the same rank. With every request at the default priority this is plain FCFS. Chunked prefill, mixed prefill/decode steps, prefix-cache hits and
//! preemption are all cases of that one rule.
//!
//! Invariants:
//! - a request is in exactly one of `waiting` / `running`, and is in `seqs` while it lives;
//! - a request holds exactly `ceil(num_computed_after_step / block_size)` blocks for the
//!   tokens it was scheduled; a waiting request that was never started or was preempted
//!   holds none;
//! - when a request ends for any reason its blocks go back to the pool.
//!
//! The scheduler is a pure state machine: no clocks, channels or threads.

use crate::block_pool::{chain_hash, BlockId, BlockPool};
use crate::policy::Priority;
use crate::CoreError;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

mod invariant;

pub type RequestId = u64;

/// The placeholder id of a token planned by [`Scheduler::schedule_ahead`] before it is known.
pub const AHEAD_TOKEN: u32 = 0;

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached or the context window is full.
    Length,
    /// The client went away or asked to stop.
    Abort,
}

/// Sizes and limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_model_len: usize,
    pub enable_prefix_caching: bool,
    /// Every layer attends only to this many keys back (itself included): the blocks behind
    /// a request's window are released as it moves on. `None`: full attention.
    pub sliding_window: Option<usize>,
    /// Compose steps so that a sequence's numbers do not depend on what runs beside it (see
    /// `scheduler/invariant.rs`): decode-only steps alternate with one-sequence prefill chunks
    /// that start at multiples of `max_num_batched_tokens`.
    pub batch_invariant: bool,
}

/// The block-table entry of a block released because it fell behind the sliding window; the
/// attention never reads it.
pub const NO_BLOCK: BlockId = BlockId::MAX;

/// What a new request brings to the scheduler.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Tokens that end the request (EOS unless ignored, plus the request's stop ids).
    pub stop_token_ids: Vec<u32>,
    pub priority: Priority,
    /// When the request arrived, on the caller's clock (used for aging and the window).
    pub arrival: Duration,
}

#[derive(Debug)]
struct Seq {
    tokens: Vec<u32>,
    num_prompt: usize,
    num_computed: usize,
    blocks: Vec<BlockId>,
    /// Chained hashes of the full blocks already computed (prefix caching).
    block_hashes: Vec<u64>,
    max_tokens: usize,
    stop_token_ids: Vec<u32>,
    priority: Priority,
    arrival: Duration,
}

impl Seq {
    fn num_output(&self) -> usize {
        self.tokens.len() - self.num_prompt
    }
}

/// One request's share of a step: compute `tokens` at positions `start..start+len`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    pub start: usize,
    pub tokens: Vec<u32>,
    pub block_table: Vec<BlockId>,
    /// True when this chunk reaches the end of the known tokens, so a token is sampled.
    pub sample: bool,
}

/// Everything the model runner needs for one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepPlan {
    pub seqs: Vec<ScheduledSeq>,
    /// Requests preempted (blocks freed, to be recomputed) while planning this step.
    pub preempted: Vec<RequestId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
    pub fn num_sampled(&self) -> usize {
        self.seqs.iter().filter(|s| s.sample).count()
    }
}

/// The token a request got this step and whether it is now finished.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqUpdate {
    pub id: RequestId,
    pub token: u32,
    pub finish: Option<FinishReason>,
}

/// Counters kept by the scheduler.
#[derive(Debug, Clone, Default)]
pub struct SchedulerCounters {
    pub preemptions: u64,
    pub prefix_queries_tokens: u64,
    pub prefix_hit_tokens: u64,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<RequestId, Seq>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    counters: SchedulerCounters,
    /// Running sequences allowed now (the latency controller's), <= `cfg.max_num_seqs`.
    max_running: usize,
    aging_step: Option<Duration>,
    /// Batch-invariant steps: whether the last planned step was the decode step (the next
    /// one then prefers a prefill chunk).
    last_step_decoded: bool,
}

fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let pool = BlockPool::new(cfg.num_blocks, cfg.block_size);
        Self {
            max_running: cfg.max_num_seqs,
            cfg,
            pool,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            counters: SchedulerCounters::default(),
            aging_step: None,
            last_step_decoded: false,
        }
    }

    /// Caps the running batch below `max_num_seqs` (the latency controller, S4); clamped to
    /// `1..=max_num_seqs`. Requests already running keep running; fewer are admitted.
    pub fn set_max_running(&mut self, n: usize) {
        self.max_running = n.clamp(1, self.cfg.max_num_seqs);
    }
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    /// Sets the aging of waiting requests (S5): one priority level per `step` of waiting.
    pub fn set_aging(&mut self, step: Option<Duration>) {
        self.aging_step = step;
    }

    /// Arrival of the longest-waiting request (preempted ones included).
    pub fn oldest_waiting_arrival(&self) -> Option<Duration> {
        self.waiting.iter().map(|id| self.seqs[id].arrival).min()
    }

    /// Whether an urgent request waits (it skips any admission window).
    pub fn urgent_waiting(&self) -> bool {
        self.waiting
            .iter()
            .any(|id| self.seqs[id].priority == Priority::Urgent)
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }
    pub fn counters(&self) -> &SchedulerCounters {
        &self.counters
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }
    pub fn contains(&self, id: RequestId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Queues a request. Fails when it can never run: empty, longer than the context, or
    /// needing more blocks than the whole pool.
    pub fn add(&mut self, req: NewRequest) -> Result<(), CoreError> {
        if self.seqs.contains_key(&req.id) {
            return Err(CoreError::DuplicateRequest(req.id));
        }
        let n = req.prompt.len();
        if n == 0 || n >= self.cfg.max_model_len {
            return Err(CoreError::PromptTooLong {
                prompt_tokens: n,
                max_model_len: self.cfg.max_model_len,
            });
        }
        let longest = (n + req.max_tokens).min(self.cfg.max_model_len);
        let needed = blocks_for(longest, self.cfg.block_size);
        if needed > self.pool.num_blocks() {
            return Err(CoreError::PoolTooSmall {
                needed,
                total: self.pool.num_blocks(),
            });
        }
        let seq = Seq {
            tokens: req.prompt,
            num_prompt: n,
            num_computed: 0,
            blocks: Vec::new(),
            block_hashes: Vec::new(),
            max_tokens: req.max_tokens,
            stop_token_ids: req.stop_token_ids,
            priority: req.priority,
            arrival: req.arrival,
        };
        self.seqs.insert(req.id, seq);
        self.waiting.push_back(req.id);
        Ok(())
    }

    /// Ends a request early (abort, stop string, client gone) and frees its blocks.
    /// Returns false if the request is unknown (already finished).
    pub fn finish(&mut self, id: RequestId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&r| r != id);
        Self::release_blocks(&mut self.pool, seq.blocks);
        true
    }

    /// Releases in reverse so the tail of a prefix is evicted before its head.
    fn release_blocks(pool: &mut BlockPool, blocks: Vec<BlockId>) {
        for b in blocks.into_iter().rev().filter(|&b| b != NO_BLOCK) {
            pool.release(b);
        }
    }

    /// Releases the blocks wholly behind `seq`'s window: its next query, at position
    /// `num_computed` or later, sees keys from `num_computed + 1 - window` on. Full blocks are
    /// registered for prefix caching before they can fall behind, so a released block stays
    /// findable until the pool reuses it.
    fn release_behind_window(pool: &mut BlockPool, seq: &mut Seq, window: usize, bs: usize) {
        let first_needed = (seq.num_computed + 1).saturating_sub(window);
        for b in seq.blocks.iter_mut().take(first_needed / bs) {
            if *b != NO_BLOCK {
                pool.release(*b);
                *b = NO_BLOCK;
            }
        }
    }

    /// Plans the next step. May preempt running requests when blocks run out.
    /// Without a clock there is no aging (see [`Scheduler::schedule_at`]).
    pub fn schedule(&mut self) -> StepPlan {
        self.schedule_at(Duration::ZERO, true)
    }

    /// Plans the next step at time `now` (for aging). With `admit` false no waiting request
    /// starts (the admission window holds them); running ones go on.
    pub fn schedule_at(&mut self, now: Duration, admit: bool) -> StepPlan {
        if self.cfg.batch_invariant {
            return self.schedule_invariant(now, admit);
        }
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        self.schedule_running(&mut plan, &mut budget);
        if plan.preempted.is_empty() && admit {
            self.schedule_waiting(&mut plan, &mut budget, now);
        }
        plan
    }

    /// Plans the step that follows `in_flight` before its sampled tokens are known, so the
    /// caller can start it while the device still runs `in_flight` (overlapped steps): each sequence of `in_flight`, in the same order, gets one token at the position
    /// after it, whose id is [`AHEAD_TOKEN`] here (the device copies in the token it sampled
    /// for that row). Blocks for the new positions are allocated now.
    ///
    /// `None`, with nothing planned, unless the next step is exactly that continuation:
    /// `in_flight` covers every running request (in running order), each samples and none
    /// ends by length with this token, no waiting request could start, the token budget holds
    /// them, and blocks are free without preempting. A block taken before a later one fails
    /// stays with its request, which needs it for its next token anyway.
    ///
    /// [`Scheduler::update`] must then see `in_flight` first, then the returned plan; a
    /// request that ends with `in_flight`'s token is skipped in the second update.
    pub fn schedule_ahead(&mut self, in_flight: &StepPlan) -> Option<StepPlan> {
        if in_flight.is_empty()
            || in_flight.seqs.len() != self.running.len()
            || in_flight.seqs.len() > self.cfg.max_num_batched_tokens
            || (!self.waiting.is_empty() && self.running.len() < self.max_running)
        {
            return None;
        }
        for (s, &id) in in_flight.seqs.iter().zip(&self.running) {
            let seq = self.seqs.get(&id)?;
            let next = s.start + s.tokens.len(); // the position of the token in flight
            if s.id != id
                || !s.sample
                || seq.tokens.len() != next
                || seq.num_output() + 1 >= seq.max_tokens
                || next + 1 >= self.cfg.max_model_len
            {
                return None;
            }
        }
        let mut plan = StepPlan::default();
        for s in &in_flight.seqs {
            let next = s.start + s.tokens.len();
            if !self.try_allocate_until(s.id, next + 1) {
                return None;
            }
            plan.seqs.push(ScheduledSeq {
                id: s.id,
                start: next,
                tokens: vec![AHEAD_TOKEN],
                block_table: self.seqs[&s.id].blocks.clone(),
                sample: true,
            });
        }
        Some(plan)
    }

    /// The position in `waiting` of the request to start next: highest effective rank,
    /// the earliest position (FCFS, preempted ones in front) among equals.
    fn next_waiting(&self, now: Duration) -> Option<usize> {
        let rank = |id: &RequestId| {
            let s = &self.seqs[id];
            s.priority.effective_rank(s.arrival, now, self.aging_step)
        };
        let mut best: Option<(usize, u64)> = None;
        for (i, id) in self.waiting.iter().enumerate() {
            let r = rank(id);
            if best.is_none_or(|(_, b)| r > b) {
                best = Some((i, r));
            }
        }
        best.map(|(i, _)| i)
    }

    fn schedule_running(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let n = (seq.tokens.len() - seq.num_computed).min(*budget);
            if !self.allocate_or_preempt(plan, id, n) {
                break;
            }
            plan.seqs.push(self.scheduled(id, n));
            *budget -= n;
            i += 1;
        }
    }

    /// Blocks for `n` more tokens of running request `id`, preempting the most recently
    /// started requests (recorded in `plan`) while the pool is short; false when `id` itself
    /// had to go or nothing is left to preempt.
    fn allocate_or_preempt(&mut self, plan: &mut StepPlan, id: RequestId, n: usize) -> bool {
        loop {
            if self.try_allocate(id, n) {
                return true;
            }
            let Some(victim) = self.running.pop() else {
                return false;
            };
            self.preempt(victim);
            plan.preempted.push(victim);
            if victim == id {
                return false;
            }
        }
    }

    fn schedule_waiting(&mut self, plan: &mut StepPlan, budget: &mut usize, now: Duration) {
        while *budget > 0 && self.running.len() < self.max_running {
            let Some(pos) = self.next_waiting(now) else {
                break;
            };
            let most = *budget;
            let left = |s: &Self, id| s.seqs[&id].tokens.len() - s.seqs[&id].num_computed;
            match self.start_waiting(plan, pos, |s, id| left(s, id).min(most)) {
                Some(n) => *budget -= n,
                // Head-of-line: lower-ranked requests do not overtake, so none starves.
                None => break,
            }
        }
    }

    /// Starts `waiting[pos]` with `len(self, id)` tokens, counted after its prefix-cache
    /// match, and plans them; `None`, the match undone, when their blocks do not fit.
    fn start_waiting(
        &mut self,
        plan: &mut StepPlan,
        pos: usize,
        len: impl Fn(&Self, RequestId) -> usize,
    ) -> Option<usize> {
        let id = self.waiting[pos];
        if self.cfg.enable_prefix_caching && self.seqs[&id].num_computed == 0 {
            self.match_prefix(id);
        }
        let n = len(self, id);
        if !self.try_allocate(id, n) {
            self.unmatch_prefix(id);
            return None;
        }
        self.waiting.remove(pos);
        self.running.push(id);
        plan.seqs.push(self.scheduled(id, n));
        Some(n)
    }

    fn scheduled(&self, id: RequestId, n: usize) -> ScheduledSeq {
        let seq = &self.seqs[&id];
        let start = seq.num_computed;
        ScheduledSeq {
            id,
            start,
            tokens: seq.tokens[start..start + n].to_vec(),
            block_table: seq.blocks.clone(),
            sample: start + n == seq.tokens.len(),
        }
    }

    /// Reuses cached blocks for the longest cached prefix of full blocks, always leaving at
    /// least one token to compute so the step produces logits.
    fn match_prefix(&mut self, id: RequestId) {
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let full = (seq.tokens.len() - 1) / bs;
        self.counters.prefix_queries_tokens += seq.tokens.len() as u64;
        let mut parent = None;
        for b in 0..full {
            let h = chain_hash(parent, &seq.tokens[b * bs..(b + 1) * bs]);
            let Some(block) = self.pool.lookup(h) else {
                break;
            };
            self.pool.acquire(block);
            seq.blocks.push(block);
            seq.block_hashes.push(h);
            parent = Some(h);
        }
        if self.cfg.batch_invariant {
            // Computing from a chunk boundary keeps the rest of the prompt in the chunks it
            // would have had without the cache.
            let c = self.cfg.max_num_batched_tokens;
            let keep = match c % bs {
                0 => seq.blocks.len() * bs / c * c / bs,
                _ => 0,
            };
            seq.block_hashes.truncate(keep);
            let dropped = seq.blocks.split_off(keep);
            Self::release_blocks(&mut self.pool, dropped);
        }
        seq.num_computed = seq.blocks.len() * bs;
        self.counters.prefix_hit_tokens += seq.num_computed as u64;
    }

    /// Gives back the prefix blocks of a waiting request that could not start after all.
    fn unmatch_prefix(&mut self, id: RequestId) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let blocks = std::mem::take(&mut seq.blocks);
        seq.block_hashes.clear();
        seq.num_computed = 0;
        Self::release_blocks(&mut self.pool, blocks);
    }

    fn try_allocate(&mut self, id: RequestId, n: usize) -> bool {
        match self.seqs.get(&id) {
            Some(seq) => self.try_allocate_until(id, seq.num_computed + n),
            None => false,
        }
    }

    /// Gives `id` the blocks for its first `tokens` positions; false when the pool is short.
    fn try_allocate_until(&mut self, id: RequestId, tokens: usize) -> bool {
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return false;
        };
        let needed = blocks_for(tokens, bs).saturating_sub(seq.blocks.len());
        if needed == 0 {
            return true;
        }
        match self.pool.allocate(needed) {
            Some(blocks) => {
                seq.blocks.extend(blocks);
                true
            }
            None => false,
        }
    }

    /// Preemption by recompute: free everything, keep the tokens, requeue at the front.
    fn preempt(&mut self, id: RequestId) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let blocks = std::mem::take(&mut seq.blocks);
        seq.block_hashes.clear();
        seq.num_computed = 0;
        Self::release_blocks(&mut self.pool, blocks);
        self.waiting.push_front(id);
        self.counters.preemptions += 1;
    }

    /// Applies a step's results. `sampled` holds one token per sampled sequence of `plan`,
    /// in plan order. Finished requests are removed and their blocks freed.
    pub fn update(&mut self, plan: &StepPlan, sampled: &[u32]) -> Vec<SeqUpdate> {
        let mut tokens = sampled.iter();
        let mut updates = Vec::with_capacity(sampled.len());
        for s in &plan.seqs {
            let token = if s.sample {
                tokens.next().copied()
            } else {
                None
            };
            let Some(seq) = self.seqs.get_mut(&s.id) else {
                continue;
            };
            seq.num_computed = s.start + s.tokens.len();
            if self.cfg.enable_prefix_caching {
                Self::register_full_blocks(&mut self.pool, seq, self.cfg.block_size);
            }
            if let Some(window) = self.cfg.sliding_window {
                Self::release_behind_window(&mut self.pool, seq, window, self.cfg.block_size);
            }
            let Some(token) = token else { continue };
            seq.tokens.push(token);
            let finish = if seq.stop_token_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if seq.num_output() >= seq.max_tokens
                || seq.tokens.len() >= self.cfg.max_model_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            if finish.is_some() {
                self.finish(s.id);
            }
            updates.push(SeqUpdate {
                id: s.id,
                token,
                finish,
            });
        }
        updates
    }

    fn register_full_blocks(pool: &mut BlockPool, seq: &mut Seq, bs: usize) {
        while (seq.block_hashes.len() + 1) * bs <= seq.num_computed {
            let b = seq.block_hashes.len();
            let h = chain_hash(
                seq.block_hashes.last().copied(),
                &seq.tokens[b * bs..(b + 1) * bs],
            );
            pool.register_full(seq.blocks[b], h);
            seq.block_hashes.push(h);
        }
    }

    /// Panics if the pool's invariants or the block accounting of live requests break.
    pub fn check_invariants(&self) {
        self.pool.check_invariants();
        let mut refs: HashMap<BlockId, u32> = HashMap::new();
        for (id, seq) in &self.seqs {
            let in_running = self.running.contains(id);
            let in_waiting = self.waiting.contains(id);
            assert!(
                in_running ^ in_waiting,
                "request {id} must be in exactly one queue"
            );
            if in_running {
                assert!(seq.blocks.len() >= blocks_for(seq.num_computed, self.cfg.block_size));
            } else {
                assert!(seq.blocks.is_empty(), "waiting request {id} holds blocks");
            }
            for &b in seq.blocks.iter().filter(|&&b| b != NO_BLOCK) {
                *refs.entry(b).or_default() += 1;
            }
        }
        for b in 0..self.pool.num_blocks() as BlockId {
            assert_eq!(
                self.pool.ref_count(b),
                refs.get(&b).copied().unwrap_or(0),
                "block {b} ref count"
            );
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
