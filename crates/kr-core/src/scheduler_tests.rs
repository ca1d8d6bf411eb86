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
