//! Scheduler tests with a fake model: the "model" samples a token derived from the request
//! id and position, so outputs are checkable without tensors.

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg(num_blocks: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: 8,
        block_size: 4,
        num_blocks,
        max_model_len: 256,
        enable_prefix_caching: true,
        sliding_window: None,
        batch_invariant: false,
    }
}

fn req(id: RequestId, len: usize, max_tokens: usize) -> NewRequest {
    NewRequest {
        id,
        prompt: (0..len as u32).map(|t| t % 50 + 1).collect(),
        max_tokens,
        stop_token_ids: vec![0],
        priority: Priority::Normal,
        arrival: Duration::ZERO,
    }
}

/// Deterministic fake model: the next token depends only on the sequence so far.
fn fake_token(s: &ScheduledSeq) -> u32 {
    let pos = (s.start + s.tokens.len()) as u32;
    100 + (pos * 7 + s.tokens.last().copied().unwrap_or(0)) % 50
}

/// Runs until every request finishes; returns tokens per request and checks invariants.
fn drain(sched: &mut Scheduler) -> HashMap<RequestId, Vec<u32>> {
    let mut out: HashMap<RequestId, Vec<u32>> = HashMap::new();
    for _ in 0..10_000 {
        if sched.is_idle() {
            break;
        }
        let plan = sched.schedule();
        sched.check_invariants();
        assert!(plan.num_tokens() <= sched.config().max_num_batched_tokens);
        let sampled: Vec<u32> = plan
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(fake_token)
            .collect();
        for u in sched.update(&plan, &sampled) {
            out.entry(u.id).or_default().push(u.token);
        }
        sched.check_invariants();
    }
    assert!(sched.is_idle(), "scheduler did not drain");
    assert_eq!(
        sched.pool().num_free(),
        sched.pool().num_blocks(),
        "blocks leaked"
    );
    out
}

#[test]
fn chunked_prefill_respects_budget_and_mixes_with_decode() {
    let mut s = Scheduler::new(cfg(64, 8));
    s.add(req(1, 3, 4)).unwrap();
    let p = s.schedule();
    assert_eq!(p.seqs.len(), 1);
    assert!(p.seqs[0].sample);
    s.update(&p, &[100]);
    s.add(req(2, 20, 2)).unwrap();
    let p = s.schedule();
    // One decode token for request 1 plus a 7-token prefill chunk of request 2.
    assert_eq!(p.seqs.len(), 2);
    assert_eq!(p.seqs[0].tokens.len(), 1);
    assert_eq!(p.seqs[1].tokens.len(), 7);
    assert!(!p.seqs[1].sample);
    s.update(&p, &[101]);
    drain(&mut s);
}

#[test]
fn finishes_on_stop_token_and_max_tokens() {
    let mut s = Scheduler::new(cfg(64, 64));
    s.add(req(1, 5, 3)).unwrap();
    s.add(req(2, 5, 10)).unwrap();
    let p = s.schedule();
    let u = s.update(&p, &[7, 0]);
    assert_eq!(u[1].finish, Some(FinishReason::Stop));
    assert_eq!(u[0].finish, None);
    let out = drain(&mut s);
    assert_eq!(out[&1].len(), 2, "request 1 stops after 3 tokens in all");
}

#[test]
fn outputs_do_not_depend_on_batching_or_preemption() {
    let alone: Vec<Vec<u32>> = (0..6)
        .map(|i| {
            let mut s = Scheduler::new(cfg(64, 512));
            s.add(req(i, 5 + 3 * i as usize, 12)).unwrap();
            drain(&mut s).remove(&i).unwrap()
        })
        .collect();
    // A pool too small for all six at once forces preemptions and chunking.
    let mut s = Scheduler::new(cfg(14, 9));
    for i in 0..6 {
        s.add(req(i, 5 + 3 * i as usize, 12)).unwrap();
    }
    let together = drain(&mut s);
    assert!(
        s.counters().preemptions > 0,
        "the test must exercise preemption"
    );
    for i in 0..6 {
        assert_eq!(together[&i], alone[i as usize], "request {i}");
    }
}

#[test]
fn prefix_cache_reuses_full_blocks() {
    let mut s = Scheduler::new(cfg(64, 512));
    s.add(req(1, 13, 1)).unwrap();
    drain(&mut s);
    s.add(req(2, 13, 1)).unwrap();
    let p = s.schedule();
    // 12 of 13 tokens are in 3 cached full blocks; 1 token is computed.
    assert_eq!(p.seqs[0].start, 12);
    assert_eq!(p.seqs[0].tokens.len(), 1);
    assert_eq!(s.counters().prefix_hit_tokens, 12);
    let sampled = [fake_token(&p.seqs[0])];
    s.update(&p, &sampled);
    drain(&mut s);
}

#[test]
fn rejects_requests_that_can_never_run() {
    let mut s = Scheduler::new(cfg(4, 64));
    assert!(matches!(
        s.add(req(1, 0, 1)),
        Err(CoreError::PromptTooLong { .. })
    ));
    assert!(matches!(
        s.add(req(2, 300, 1)),
        Err(CoreError::PromptTooLong { .. })
    ));
    assert!(matches!(
        s.add(req(3, 10, 100)),
        Err(CoreError::PoolTooSmall { .. })
    ));
    s.add(req(4, 2, 1)).unwrap();
    assert!(matches!(
        s.add(req(4, 2, 1)),
        Err(CoreError::DuplicateRequest(4))
    ));
}

/// Seeded random workload: adds, aborts mid-flight, preemption pressure. Every block is
/// back in the pool at the end and invariants hold after every operation.
#[test]
fn seeded_random_workload_returns_every_block() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut s = Scheduler::new(cfg(24, 16));
    let mut next_id = 0;
    for _ in 0..3_000 {
        match rng.random_range(0..10) {
            0..=2 => {
                let _ = s.add(req(
                    next_id,
                    rng.random_range(1..40),
                    rng.random_range(1..20),
                ));
                next_id += 1;
            }
            3 => {
                let victim = rng.random_range(0..next_id.max(1));
                s.finish(victim);
            }
            _ => {
                let plan = s.schedule();
                s.check_invariants();
                let sampled: Vec<u32> = plan
                    .seqs
                    .iter()
                    .filter(|x| x.sample)
                    .map(fake_token)
                    .collect();
                s.update(&plan, &sampled);
            }
        }
        s.check_invariants();
    }
    drain(&mut s);
}

fn fake_step(plan: &StepPlan) -> Vec<u32> {
    plan.seqs
        .iter()
        .filter(|s| s.sample)
        .map(fake_token)
        .collect()
}

/// `drain` with overlapped steps: while a step is "on the device" the next one is
/// planned with `schedule_ahead`, and its placeholder tokens are replaced by the in-flight
/// step's samples, as the device does. Returns the outputs and how many steps went ahead.
fn drain_overlapped(sched: &mut Scheduler) -> (HashMap<RequestId, Vec<u32>>, usize) {
    let mut out: HashMap<RequestId, Vec<u32>> = HashMap::new();
    let mut ahead_steps = 0;
    for _ in 0..10_000 {
        if sched.is_idle() {
            break;
        }
        let mut plan = sched.schedule();
        let mut sampled = fake_step(&plan);
        loop {
            let ahead = sched.schedule_ahead(&plan);
            sched.check_invariants();
            for u in sched.update(&plan, &sampled) {
                out.entry(u.id).or_default().push(u.token);
            }
            sched.check_invariants();
            let Some(mut next) = ahead else { break };
            ahead_steps += 1;
            assert_eq!(next.seqs.len(), sampled.len());
            for (s, &t) in next.seqs.iter_mut().zip(&sampled) {
                assert_eq!(s.tokens, [AHEAD_TOKEN]);
                s.tokens = vec![t];
            }
            sampled = fake_step(&next);
            plan = next;
        }
    }
    assert!(sched.is_idle(), "scheduler did not drain");
    assert_eq!(
        sched.pool().num_free(),
        sched.pool().num_blocks(),
        "blocks leaked"
    );
    (out, ahead_steps)
}

#[test]
fn overlapped_steps_give_the_same_tokens() {
    let add_all = |s: &mut Scheduler| {
        for i in 0..6 {
            let mut r = req(i, 3 + 5 * i as usize, 4 + 7 * i as usize);
            // Some requests end on a token the fake model produces (a stop mid-flight).
            r.stop_token_ids.push(100 + (i as u32 * 13) % 50);
            s.add(r).unwrap();
        }
    };
    for (blocks, budget) in [(64, 512), (64, 8), (20, 16)] {
        let mut plain = Scheduler::new(cfg(blocks, budget));
        add_all(&mut plain);
        let want = drain(&mut plain);
        let mut overlapped = Scheduler::new(cfg(blocks, budget));
        add_all(&mut overlapped);
        let (got, ahead) = drain_overlapped(&mut overlapped);
        assert_eq!(got, want, "{blocks} blocks, budget {budget}");
        assert!(
            ahead > 0,
            "no step went ahead with {blocks} blocks, budget {budget}"
        );
    }
}

#[test]
fn schedule_ahead_declines_what_is_not_a_plain_continuation() {
    let mut s = Scheduler::new(cfg(64, 64));
    s.add(req(1, 5, 3)).unwrap();
    let p = s.schedule();
    let ahead = s.schedule_ahead(&p).expect("a decode continuation");
    assert_eq!((ahead.seqs[0].start, ahead.seqs[0].tokens.len()), (5, 1));
    s.update(&p, &[101]);
    s.update(&ahead, &[102]);
    // The token in flight is the request's last (max_tokens 3): nothing to plan after it.
    let p = s.schedule();
    assert_eq!(s.schedule_ahead(&p), None);
    s.update(&p, &[103]);
    assert!(s.is_idle());
    // A waiting request that could start goes through the normal path.
    s.add(req(2, 5, 10)).unwrap();
    let p = s.schedule();
    s.add(req(3, 5, 10)).unwrap();
    assert_eq!(s.schedule_ahead(&p), None);
    // A step that only prefills part of a prompt samples nothing to continue from.
    let mut s = Scheduler::new(cfg(64, 4));
    s.add(req(4, 10, 5)).unwrap();
    let p = s.schedule();
    assert!(!p.seqs[0].sample);
    assert_eq!(s.schedule_ahead(&p), None);
    s.check_invariants();
}

#[test]
fn blocks_behind_a_sliding_window_are_released() {
    let windowed = |window| SchedulerConfig {
        sliding_window: window,
        ..cfg(64, 8)
    };
    // Without the window a 60-token request holds 15 blocks at the end; with a window of 6
    // (block size 4) it never holds more than the blocks of its last 6 keys plus a chunk.
    let mut s = Scheduler::new(windowed(Some(6)));
    s.add(req(1, 20, 40)).unwrap();
    s.add(req(2, 9, 30)).unwrap();
    let mut most_used = 0;
    let mut out: HashMap<RequestId, Vec<u32>> = HashMap::new();
    while !s.is_idle() {
        let plan = s.schedule();
        for seq in &plan.seqs {
            let first_needed = (seq.start + 1).saturating_sub(6);
            assert!(
                seq.block_table[first_needed / 4..]
                    .iter()
                    .all(|&b| b != NO_BLOCK),
                "a block the window still needs was released"
            );
        }
        let sampled: Vec<u32> = plan
            .seqs
            .iter()
            .filter(|q| q.sample)
            .map(fake_token)
            .collect();
        for u in s.update(&plan, &sampled) {
            out.entry(u.id).or_default().push(u.token);
        }
        s.check_invariants();
        most_used = most_used.max(s.pool().num_used());
    }
    assert!(
        most_used <= 2 * 4,
        "at most (6 + 8) / 4 + 1 blocks a request: {most_used}"
    );
    assert_eq!(s.pool().num_free(), s.pool().num_blocks(), "blocks leaked");
    // The window frees memory, not tokens: the fake model gives the same outputs.
    let mut full = Scheduler::new(windowed(None));
    full.add(req(1, 20, 40)).unwrap();
    full.add(req(2, 9, 30)).unwrap();
    assert_eq!(drain(&mut full), out);
}

fn invariant_cfg(num_blocks: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        batch_invariant: true,
        ..cfg(num_blocks, budget)
    }
}

/// Runs `sched` to the end, checking each plan of the batch-invariant mode (decode tokens
/// only, or one prefill chunk from a multiple of the budget); returns every request's tokens
/// and its prefill chunks as (start, len).
fn drain_invariant(
    sched: &mut Scheduler,
    prompt_len: &HashMap<RequestId, usize>,
) -> (
    HashMap<RequestId, Vec<u32>>,
    HashMap<RequestId, Vec<(usize, usize)>>,
) {
    let c = sched.config().max_num_batched_tokens;
    let (mut out, mut chunks) = (HashMap::new(), HashMap::<_, Vec<_>>::new());
    while !sched.is_idle() {
        let plan = sched.schedule();
        sched.check_invariants();
        for s in &plan.seqs {
            if s.start < prompt_len[&s.id] {
                assert_eq!(
                    plan.seqs.len(),
                    1,
                    "a prefill chunk shares its step: {plan:?}"
                );
                assert_eq!(s.start % c, 0, "chunk of {} starts at {}", s.id, s.start);
                chunks
                    .entry(s.id)
                    .or_default()
                    .push((s.start, s.tokens.len()));
            } else {
                assert_eq!(s.tokens.len(), 1, "a decode step with more than one token");
            }
        }
        for u in sched.update(&plan, &fake_step(&plan)) {
            out.entry(u.id).or_insert_with(Vec::new).push(u.token);
        }
    }
    assert_eq!(sched.pool().num_free(), sched.pool().num_blocks());
    (out, chunks)
}

#[test]
fn batch_invariant_steps_keep_a_requests_chunks_whatever_runs_beside_it() {
    let lens: HashMap<RequestId, usize> = [(1, 37), (2, 3), (3, 11), (4, 1), (5, 20)].into();
    // Request 1 shares no prefix with the others (whose prompts all begin alike).
    let long = || NewRequest {
        prompt: (200..237).collect(),
        ..req(1, 37, 6)
    };
    let alone = {
        let mut s = Scheduler::new(invariant_cfg(64, 8));
        s.add(long()).unwrap();
        drain_invariant(&mut s, &lens)
    };
    let mut s = Scheduler::new(invariant_cfg(64, 8));
    s.add(req(2, 3, 9)).unwrap();
    s.add(req(3, 11, 4)).unwrap();
    let p = s.schedule();
    let sampled = fake_step(&p);
    let first = s.update(&p, &sampled);
    s.add(long()).unwrap();
    s.add(req(4, 1, 5)).unwrap();
    s.add(req(5, 20, 7)).unwrap();
    let (mut beside, chunks) = drain_invariant(&mut s, &lens);
    for u in first {
        beside.entry(u.id).or_default().insert(0, u.token);
    }
    assert_eq!(
        chunks[&1], alone.1[&1],
        "request 1's chunks changed beside others"
    );
    assert_eq!(chunks[&1], [(0, 8), (8, 8), (16, 8), (24, 8), (32, 5)]);
    assert_eq!(beside[&1], alone.0[&1]);
    // The same tokens as the default composition (the fake model depends on nothing else).
    let mut plain = Scheduler::new(cfg(64, 8));
    for (id, len, max) in [(2, 3, 9), (3, 11, 4), (4, 1, 5), (5, 20, 7)] {
        plain.add(req(id, len, max)).unwrap();
    }
    plain.add(long()).unwrap();
    let want = drain(&mut plain);
    for id in 1..=5 {
        assert_eq!(beside[&id], want[&id], "request {id}");
    }
}

#[test]
fn batch_invariant_decode_and_prefill_steps_alternate() {
    let mut s = Scheduler::new(invariant_cfg(64, 8));
    s.add(req(1, 3, 20)).unwrap();
    let p = s.schedule();
    s.update(&p, &[100]);
    s.add(req(2, 30, 2)).unwrap();
    let mut kinds = String::new();
    for _ in 0..8 {
        let p = s.schedule();
        let prefill = p.seqs.iter().any(|q| q.id == 2 && q.start < 30);
        kinds.push(if prefill { 'P' } else { 'D' });
        let sampled = fake_step(&p);
        s.update(&p, &sampled);
    }
    // Request 1's first token came from a prefill step, so a decode step comes first; then
    // request 2's four chunks (8, 8, 8, 6 tokens) alternate with request 1's tokens.
    assert_eq!(kinds, "DPDPDPDP");
}

#[test]
fn batch_invariant_prefix_hits_are_cut_to_a_chunk_boundary() {
    let mut s = Scheduler::new(invariant_cfg(64, 8));
    s.add(req(1, 21, 2)).unwrap();
    drain(&mut s);
    s.add(req(2, 21, 2)).unwrap();
    let p = s.schedule();
    // 20 tokens are cached in full blocks; the step starts at 16, a multiple of the budget.
    assert_eq!((p.seqs[0].start, p.seqs[0].tokens.len()), (16, 5));
    assert_eq!(s.counters().prefix_hit_tokens, 16);
    let sampled = fake_step(&p);
    s.update(&p, &sampled);
    drain(&mut s);
}
