//! `kr-serve bench serve | compare | plot` as a user runs them, against a kr-http started
//! in this test process on 127.0.0.1:0 with the built-in stories260K model (fast).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sharegpt_sample.json"
);

/// Starts kr-http with the built-in model on a free port; returns its URL and model name.
fn start_server() -> (String, String) {
    let engine = kr_engine::start(kr_engine::EngineConfig::new(kr_engine::BUILTIN_MODEL))
        .expect("builtin model loads");
    let name = engine.info().name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            let _ = kr_http::serve(
                listener,
                engine,
                kr_http::ServerConfig::default(),
                std::future::pending(),
            )
            .await;
        });
    });
    let addr = rx.recv().expect("server address");
    (format!("http://{addr}"), name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kr-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn kr_serve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("report written"))
        .expect("report is JSON")
}

fn is_png(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn bench_serve_end_to_end_then_compare_gates_a_planted_regression() {
    let (url, model) = start_server();
    let dir = tmp("serve");
    let out = dir.join("serve.json");
    let o = kr_serve(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        &model,
        "--endpoint",
        "completions",
        "--dataset",
        "random",
        "--random-input-len",
        "6",
        "--num-prompts",
        "6",
        "--max-tokens",
        "8",
        "--concurrency",
        "1,3",
        "--request-rate",
        "50",
        "--warmup",
        "1",
        "--seed",
        "3",
        "--slo-ttft-ms",
        "60000",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_json(&out);
    assert_eq!(r["benchmark"], "serve");
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(r["commit"].is_string() && r["settings"]["seed"] == 3);
    let levels = r["levels"].as_array().unwrap();
    assert_eq!(
        levels
            .iter()
            .map(|l| l["concurrency"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 3]
    );
    for l in levels {
        assert_eq!(
            (l["completed"].as_u64(), l["failed"].as_u64()),
            (Some(6), Some(0)),
            "{l}"
        );
        // ignore_eos: every request generates exactly max_tokens, counted from `usage`.
        assert_eq!(l["total_output_tokens"], 48);
        assert_eq!(l["requests"].as_array().unwrap().len(), 6);
        assert!(l["requests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["output_tokens"] == 8));
        // A generous SLO: every request meets it.
        assert_eq!(l["slo_met"], 6);
        let t = &l["ttft_ms"];
        assert!(t["p50"].as_f64().unwrap() <= t["p99"].as_f64().unwrap());
        assert!(l["itl_ms"]["count"].as_u64().unwrap() > 0);
    }
    let md = std::fs::read_to_string(dir.join("serve.md")).expect("markdown report");
    assert!(
        md.contains("| concurrency |") && md.contains("| 3 | 6 / 0 |"),
        "{md}"
    );
    for p in [
        "serve-latency-cdf.png",
        "serve-throughput.png",
        "serve-p99.png",
    ] {
        assert!(is_png(&dir.join(p)), "{p} is a PNG");
    }

    // The gate: a report against itself passes; a planted 30% throughput drop fails.
    let same = kr_serve(&[
        "bench",
        "compare",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
        "--tolerance",
        "5%",
    ]);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    assert!(String::from_utf8_lossy(&same.stdout).contains("0 of "));
    let mut worse = r.clone();
    let tput = worse["levels"][1]["output_throughput"].as_f64().unwrap();
    worse["levels"][1]["output_throughput"] = (tput * 0.7).into();
    let worse_path = dir.join("worse.json");
    std::fs::write(&worse_path, worse.to_string()).unwrap();
    let bad = kr_serve(&[
        "bench",
        "compare",
        out.to_str().unwrap(),
        worse_path.to_str().unwrap(),
        "--tolerance",
        "5%",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let table = String::from_utf8_lossy(&bad.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("c=3,rate=50 output_throughput") && l.ends_with("REGRESSION")),
        "{table}"
    );
    assert!(table.contains("1 of "), "{table}");
    // Within tolerance it passes.
    let ok = kr_serve(&[
        "bench",
        "compare",
        out.to_str().unwrap(),
        worse_path.to_str().unwrap(),
        "--tolerance",
        "35%",
    ]);
    assert!(ok.status.success());

    // `bench plot` overlays two reports.
    let prefix = dir.join("both");
    let p = kr_serve(&[
        "bench",
        "plot",
        out.to_str().unwrap(),
        worse_path.to_str().unwrap(),
        "--out-prefix",
        prefix.to_str().unwrap(),
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    assert!(is_png(&dir.join("both-p99.png")));
}

#[test]
fn bench_serve_sharegpt_and_questions_workloads() {
    let (url, model) = start_server();
    let dir = tmp("sharegpt");
    let out = dir.join("s.json");
    let o = kr_serve(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        &model,
        "--endpoint",
        "completions",
        "--dataset",
        "sharegpt",
        "--dataset-path",
        FIXTURE,
        "--warmup",
        "0",
        "--no-plots",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = &read_json(&out)["levels"][0];
    // Three usable conversations; max_tokens from the replies: 10 + 3 + 11.
    assert_eq!(
        (l["completed"].as_u64(), l["total_output_tokens"].as_u64()),
        (Some(3), Some(24))
    );

    let q = dir.join("q.txt");
    std::fs::write(&q, "Once upon a time\n\nThe end\n").unwrap();
    let out = dir.join("q.json");
    let o = kr_serve(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        &model,
        "--endpoint",
        "completions",
        "--dataset-path",
        q.to_str().unwrap(),
        "--num-prompts",
        "5",
        "--max-tokens",
        "4",
        "--concurrency",
        "2",
        "--no-plots",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = &read_json(&out)["levels"][0];
    assert_eq!(
        (l["completed"].as_u64(), l["total_output_tokens"].as_u64()),
        (Some(5), Some(20))
    );
}

#[test]
fn bench_serve_counts_failures_and_rejects_bad_flags() {
    let (url, _) = start_server();
    let dir = tmp("fail");
    let out = dir.join("f.json");
    // An unknown model: every request fails with 404; failures are counted, not timed.
    let o = kr_serve(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        "no-such-model",
        "--num-prompts",
        "3",
        "--warmup",
        "0",
        "--no-plots",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = &read_json(&out)["levels"][0];
    assert_eq!(
        (l["completed"].as_u64(), l["failed"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(l["errors"][0].as_str().unwrap().contains("404"), "{l}");
    assert!(l["ttft_ms"].is_null());

    let bad = kr_serve(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--model",
        "m",
        "--concurrency",
        "0",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--concurrency"));
    let bad = kr_serve(&["bench", "compare", "a.json", "b.json", "--tolerance", "5"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn bench_overhead_runs_both_sides_on_the_same_work() {
    let dir = tmp("overhead");
    let out = dir.join("o.json");
    let q = dir.join("q.txt");
    std::fs::write(&q, "Once upon a time\nThe little dog\nA big red ball\n").unwrap();
    let o = kr_serve(&[
        "bench",
        "overhead",
        "--questions",
        q.to_str().unwrap(),
        "--max-tokens",
        "6",
        "--concurrency",
        "1,2",
        "--repeat",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_json(&out);
    assert_eq!(r["benchmark"], "overhead");
    assert!(r["overhead_percent"].is_f64());
    let levels = r["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for l in levels {
        // Greedy, same seeds, ignore_eos: both paths generate the same text and counts.
        assert_eq!(l["identical_outputs"], true, "{l}");
        assert_eq!(l["identical_token_counts"], true);
        assert_eq!(
            l["overhead_percent_per_repeat"].as_array().unwrap().len(),
            2
        );
        for side in ["engine", "http"] {
            assert_eq!(l[side]["output_tokens_per_repeat"], 18, "{side}");
            assert_eq!(l[side]["latency_ms"]["count"], 6);
        }
        // Alternation: the side that starts differs between the two repeats.
        let first = l["first_side_of_first_chunk_per_repeat"]
            .as_array()
            .unwrap();
        assert_ne!(first[0], first[1]);
    }
    // Fast path at concurrency 1: every request started on an idle engine.
    assert_eq!(
        levels[0]["engine"]["fast_path_per_repeat"],
        serde_json::json!([3, 3])
    );
    let same = kr_serve(&[
        "bench",
        "compare",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
}
