//! A chat template that doubles a string until it is huge (`{% set ns.s = ns.s ~ ns.s %}`
//! in a loop: few instructions, 2^40 bytes) is stopped at its memory budget: a 4xx naming
//! the model and the budget, the template disabled, other requests served, and this
//! process's RSS — server, engine and SmolLM2 included — under 512 MiB. Alone in its test
//! binary so that the RSS is its own.

mod common;
use common::template::*;
use common::*;

#[global_allocator]
static ALLOCATOR: kr_engine::BudgetedAllocator = kr_engine::BudgetedAllocator;

/// Resident memory of this process, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_template_building_a_huge_string_is_stopped_at_its_memory_budget() {
    let Some(_) = smollm2() else { return };
    let doubling = "{% set ns = namespace(s='x') %}{% for i in range(40) %}\
                    {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
    let msg = expect_limit(doubling, "huge", "hi", "memory budget of 64 MiB").await;
    assert!(msg.contains("disabled"), "{msg}");
    let rss = rss();
    eprintln!("RSS after the hostile template: {} MiB", rss >> 20);
    assert!(rss < 512 << 20, "RSS {} MiB", rss >> 20);
}
