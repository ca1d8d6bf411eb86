//! The scheduler policies in a real engine (the built-in stories260K model): fast path
//! with and without a window, the window holding arrivals while busy, urgent requests
//! skipping it and starting first, the latency controller cutting the batch, live changes.
//! Assertions are on behaviour and counters, never on timings.

use kr_engine::{
    EngineConfig, EngineHandle, Event, GenerateRequest, LatencyConfig, PolicyConfig, Priority,
    Prompt, RequestStream, SamplingParams, BUILTIN_MODEL,
};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(max_seqs: usize, policy: PolicyConfig) -> EngineHandle {
    let mut cfg = EngineConfig::new(BUILTIN_MODEL);
    cfg.kv_cache_mib = 16;
    cfg.max_num_seqs = max_seqs;
    cfg.policy = policy;
    kr_engine::start(cfg).expect("engine starts")
}

fn submit(e: &EngineHandle, tokens: u32, p: Priority) -> RequestStream {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(tokens)
    };
    let prompt = Prompt::Tokens(vec![1, 400, 300, 200]);
    e.submit_with(
        GenerateRequest { prompt, params },
        kr_engine::RequestOptions {
            priority: p,
            ..Default::default()
        },
    )
    .expect("submit")
}

fn finish(mut s: RequestStream) -> usize {
    let mut n = 0;
    while let Some(ev) = s.next_blocking() {
        match ev {
            Event::Token { .. } => n += 1,
            Event::Finished { .. } => return n,
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Embedding { .. } => panic!("an embedding event in a generation"),
        }
    }
    panic!("stream ended without Finished");
}

fn window(ms: u64) -> PolicyConfig {
    PolicyConfig {
        window: Duration::from_millis(ms),
        ..PolicyConfig::default()
    }
}

#[test]
fn idle_engine_starts_at_once_even_with_a_window() {
    let e = start(8, window(200));
    assert_eq!(finish(submit(&e, 4, Priority::Normal)), 4);
    let s = e.stats();
    assert_eq!(s.fast_path.load(Relaxed), 1);
    assert_eq!(
        s.sched.window_holds.load(Relaxed),
        0,
        "the window never applies at idle"
    );
    assert_eq!(s.sched.window_ns.load(Relaxed), 200_000_000);
}

#[test]
fn without_the_fast_path_the_window_applies_at_idle_too() {
    let e = start(
        8,
        PolicyConfig {
            fast_path: false,
            ..window(100)
        },
    );
    assert_eq!(finish(submit(&e, 4, Priority::Normal)), 4);
    assert_eq!(e.stats().fast_path.load(Relaxed), 0);
    assert!(e.stats().sched.window_holds.load(Relaxed) >= 1);
}

#[test]
fn window_holds_arrivals_while_busy_and_urgent_skips_it() {
    let e = start(8, window(200));
    let long = submit(&e, 300, Priority::Normal);
    let urgent = submit(&e, 4, Priority::Urgent);
    assert_eq!(finish(urgent), 4);
    assert_eq!(
        e.stats().sched.window_holds.load(Relaxed),
        0,
        "urgent skips it"
    );
    let normal = submit(&e, 4, Priority::Normal);
    assert_eq!(finish(normal), 4);
    assert!(e.stats().sched.window_holds.load(Relaxed) >= 1);
    assert_eq!(finish(long), 300);
    let by_prio = &e.stats().sched.requests_by_priority;
    assert_eq!(by_prio[Priority::Urgent as usize].load(Relaxed), 1);
    assert_eq!(by_prio[Priority::Normal as usize].load(Relaxed), 2);
}

#[test]
fn urgent_request_starts_before_an_earlier_normal_one() {
    let e = start(1, PolicyConfig::default());
    let long = submit(&e, 300, Priority::Normal);
    let normal = submit(&e, 4, Priority::Normal);
    let urgent = submit(&e, 4, Priority::Urgent);
    let order = Arc::new(AtomicUsize::new(0));
    let run = |s: RequestStream| {
        let order = order.clone();
        std::thread::spawn(move || {
            finish(s);
            order.fetch_add(1, Relaxed)
        })
    };
    let (n, u) = (run(normal), run(urgent));
    assert_eq!(finish(long), 300);
    let (n, u) = (n.join().expect("normal"), u.join().expect("urgent"));
    assert!(u < n, "urgent finished {u}th, normal {n}th");
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn latency_controller_cuts_the_batch_when_the_target_is_missed() {
    let unreachable = LatencyConfig {
        target: Duration::from_nanos(1),
        min_batch: 1,
        max_batch: 4,
        interval: 1,
        alpha: 1.0,
    };
    let e = start(
        8,
        PolicyConfig {
            latency: Some(unreachable.clone()),
            ..PolicyConfig::default()
        },
    );
    let s = &e.stats().sched;
    assert_eq!(s.max_batch.load(Relaxed), 4);
    assert_eq!(finish(submit(&e, 8, Priority::Normal)), 8);
    assert_eq!(s.max_batch.load(Relaxed), 1);
    assert_eq!(s.latency_degrades.load(Relaxed), 2, "4 -> 2 -> 1");
    // A live change to a target every step meets: the controller starts again at its max.
    let easy = LatencyConfig {
        target: Duration::from_secs(3600),
        ..unreachable
    };
    e.set_policy(PolicyConfig {
        latency: Some(easy),
        ..PolicyConfig::default()
    })
    .expect("set policy");
    wait_until("the new max batch", || s.max_batch.load(Relaxed) == 4);
    // Without a controller the cap is the engine's max_num_seqs again.
    e.set_policy(PolicyConfig::default()).expect("set policy");
    wait_until("max_num_seqs", || s.max_batch.load(Relaxed) == 8);
}
