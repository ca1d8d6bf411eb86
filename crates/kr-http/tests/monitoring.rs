//! The monitoring files in deploy/ cannot drift from the server: every `kr_*` metric that
//! the Prometheus alert rules or the Grafana dashboard reference must be a series on the
//! /metrics page of a running server.

mod common;

use common::{engine, get, shared, smollm2, spawn, MODEL};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `kr_*` identifiers of a PromQL expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("kr_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
}

/// Series names on a Prometheus text page (samples only, not HELP/TYPE lines).
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn alert_exprs() -> Vec<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&repo_file("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml is YAML");
    let groups = doc["groups"].as_sequence().expect("groups");
    let mut exprs = Vec::new();
    for g in groups {
        for r in g["rules"].as_sequence().expect("rules") {
            assert!(
                r["alert"].as_str().is_some(),
                "every rule is an alert: {r:?}"
            );
            exprs.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

fn dashboard_exprs() -> Vec<String> {
    let d: Value = serde_json::from_str(&repo_file("deploy/grafana/kr-serve-dashboard.json"))
        .expect("dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect()
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_only_exported_metrics() {
    let Some(_) = smollm2() else { return };
    let (status, page) = get(shared(), "/metrics").await;
    assert_eq!(status, 200);
    let have = exported(&page);
    for (file, exprs) in [
        ("deploy/prometheus/alerts.yml", alert_exprs()),
        ("deploy/grafana/kr-serve-dashboard.json", dashboard_exprs()),
    ] {
        let mut used = BTreeSet::new();
        for e in &exprs {
            metric_names(e, &mut used);
        }
        assert!(used.len() >= 5, "{file}: too few metrics found: {used:?}");
        let missing: Vec<_> = used.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the server does not export: {missing:?}"
        );
    }
    // The check itself can fail.
    let mut bogus = BTreeSet::new();
    metric_names("rate(kr_not_a_metric_total[5m]) / my_kr_other", &mut bogus);
    assert_eq!(
        bogus.into_iter().collect::<Vec<_>>(),
        vec!["kr_not_a_metric_total"]
    );
    assert!(!have.contains("kr_not_a_metric_total"));
}

#[test]
fn alert_rules_cover_queue_ttft_kv_and_errors() {
    let all = alert_exprs().join("\n");
    for needle in [
        "kr_requests_waiting",
        "kr_time_to_first_token_seconds_bucket",
        "kr_kv_blocks_used",
        "outcome=\"error\"",
    ] {
        assert!(all.contains(needle), "no alert on {needle}");
    }
}

/// `vllm_metrics` adds the gauges the Gateway API Inference Extension's endpoint picker reads,
/// under vLLM's names; off (the default), none appear. The HPA's metric is exported.
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_metric_aliases_follow_the_flag() {
    let Some(_) = smollm2() else { return };
    let plain = get(shared(), "/metrics").await.1;
    assert!(!plain.contains("vllm:"), "aliases without the flag");
    let hpa = repo_file("deploy/k8s/base/hpa.yaml");
    assert!(hpa.contains("name: kr_requests_waiting"), "{hpa}");
    assert!(exported(&plain).contains("kr_requests_waiting"));
    let cfg = kr_http::ServerConfig {
        vllm_metrics: true,
        ..Default::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let page = get(&server.base, "/metrics").await.1;
    for name in [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
    ] {
        let line = format!("{name}{{model_name=\"{MODEL}\"}} 0");
        assert!(page.contains(&line), "{line} missing:\n{page}");
    }
    server.join().expect("server stops");
}
