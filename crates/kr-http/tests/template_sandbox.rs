//! A chat template is code from the model file: templates that loop, recurse or run long
//! each get a 4xx naming the model and the limit, within the time limit, while other
//! requests are served. (The memory budget has its own test binary, `template_memory.rs`,
//! so that the RSS it measures is its own.) This binary installs the allocator the server
//! binary installs.

mod common;
use common::template::*;
use common::*;

#[global_allocator]
static ALLOCATOR: kr_engine::BudgetedAllocator = kr_engine::BudgetedAllocator;

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_looping_template_runs_out_of_fuel() {
    let Some(_) = smollm2() else { return };
    let looping =
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    expect_limit(looping, "loop", "hi", "instructions").await;
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_recursing_template_hits_the_depth_limit() {
    let Some(_) = smollm2() else { return };
    let recursing = "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}";
    expect_limit(recursing, "recursion", "hi", "nested deeper").await;
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_template_writing_too_much_hits_the_output_limit() {
    let Some(_) = smollm2() else { return };
    let verbose = "{% for i in range(100000) %}{{ messages|tojson }}{% endfor %}";
    let long = "a".repeat(1 << 10);
    expect_limit(verbose, "output", &long, "output limit").await;
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_template_is_answered_at_its_time_limit() {
    let Some(_) = smollm2() else { return };
    // Few instructions, each serialising a 256 KiB conversation: far past the time limit.
    let slow = "{% for i in range(20000) %}{% set x = messages|tojson %}{% endfor %}";
    let long = "a".repeat(256 << 10);
    expect_limit(slow, "slow", &long, "time limit of 1500 ms").await;
}
