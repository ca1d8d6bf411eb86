//! Unit tests of the schema: precedence, error messages, PATCH and reload.

use super::*;
use std::time::Duration;

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn yaml(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kr-cfg-unit-{}-{name}.yaml", std::process::id()));
    std::fs::write(&p, text).expect("write yaml");
    p
}

#[test]
fn each_level_overrides_the_one_below() {
    let file = yaml(
        "prec",
        "preset: throughput_optimized\nmax_queue: 10\nmax_tokens_cap: 100\nstream_interval: 3\n",
    );
    let inputs = Inputs {
        flags: kv(&[("max_queue", "30")]),
        env: kv(&[("max_queue", "20"), ("max_tokens_cap", "200")]),
        file: Some(file),
    };
    let e = resolve(&inputs).expect("valid");
    assert_eq!(
        (e.config.max_queue, e.sources["max_queue"]),
        (30, Source::Flag)
    );
    assert_eq!(
        (e.config.max_tokens_cap, e.sources["max_tokens_cap"]),
        (200, Source::Env)
    );
    assert_eq!(
        (e.config.stream_interval, e.sources["stream_interval"]),
        (3, Source::File)
    );
    assert_eq!(
        (e.config.max_running, e.sources["max_running"]),
        (256, Source::Preset)
    );
    assert_eq!((e.config.port, e.sources["port"]), (8080, Source::Default));
    assert_eq!(e.preset.as_deref(), Some("throughput_optimized"));
}

#[test]
fn errors_name_key_value_and_range() {
    let bad = Inputs {
        env: kv(&[("max_queue", "-3")]),
        ..Inputs::default()
    };
    let msg = resolve(&bad).expect_err("negative").to_string();
    assert!(
        msg.contains("max_queue") && msg.contains("-3") && msg.contains("0..=1000000"),
        "{msg}"
    );
    let file = yaml("unknown", "max_qeue: 3\n");
    let msg = resolve(&Inputs {
        file: Some(file),
        ..Inputs::default()
    })
    .expect_err("unknown key")
    .to_string();
    assert!(msg.contains("max_qeue"), "{msg}");
    let msg = resolve(&Inputs {
        flags: kv(&[("preset", "fast")]),
        ..Inputs::default()
    })
    .expect_err("preset")
    .to_string();
    assert!(msg.contains("fast") && msg.contains("balanced"), "{msg}");
}

#[test]
fn patch_is_all_or_nothing_and_only_runtime_safe() {
    let e = Effective::default_config();
    let ok: serde_json::Map<_, _> =
        serde_json::from_str(r#"{"max_tokens_cap": 7, "strict": true}"#).expect("json");
    let next = e.patch(&ok).expect("valid patch");
    assert_eq!((next.config.max_tokens_cap, next.config.strict), (7, true));
    assert_eq!(next.sources["strict"], Source::Admin);
    let unsafe_key: serde_json::Map<_, _> = serde_json::from_str(r#"{"port": 1}"#).expect("json");
    assert!(matches!(
        e.patch(&unsafe_key),
        Err(ConfigError::NotRuntimeSafe { .. })
    ));
    let bad: serde_json::Map<_, _> =
        serde_json::from_str(r#"{"max_tokens_cap": 0}"#).expect("json");
    assert!(matches!(e.patch(&bad), Err(ConfigError::Invalid { .. })));
}

#[test]
fn reload_takes_safe_keys_and_keeps_the_others() {
    let file = yaml("reload", "max_queue: 5\nport: 9\n");
    let inputs = Inputs {
        file: Some(file),
        ..Inputs::default()
    };
    let (next, ignored) = Effective::default_config().reload(&inputs).expect("valid");
    assert_eq!(next.config.max_queue, 5);
    assert_eq!(next.config.port, 8080);
    assert_eq!(ignored, vec!["port"]);
    assert!(next.to_table().contains("max_queue"));
}

#[test]
fn original_env_names_are_aliases_and_kr_serve_names_win() {
    let env: std::collections::HashMap<&str, &str> = [
        ("MLX_GPU_SCHEDULER_WINDOW_MS", "1.5"),
        ("MLX_GPU_SCHEDULER_BATCH_SIZE", "4"),
        ("MLX_ADAPTIVE_WINDOW", "on"),
        ("MLX_AUTO_TUNE", "on"),
        ("MLX_AUTO_TUNE_MAX_BATCH", "16"),
        ("MLX_FAST_PATH", "off"),
        ("MLX_GPU_SCHEDULER_P99_THRESHOLD_MS", "50"),
        ("KR_SERVE_P99_THRESHOLD_MS", "80"),
    ]
    .into_iter()
    .collect();
    let vars = env_vars_from(|n| env.get(n).map(|v| v.to_string()));
    let e = resolve(&Inputs {
        env: vars,
        ..Inputs::default()
    })
    .expect("valid");
    let c = &e.config;
    assert_eq!(c.scheduler_window_ms, 1.5);
    assert_eq!(c.max_running, 4);
    assert!(c.adaptive_window && c.auto_tune && !c.fast_path);
    assert_eq!(c.auto_tune_max_batch, 16);
    assert_eq!(c.p99_threshold_ms, 80.0, "KR_SERVE_ wins over the alias");
    assert_eq!(e.sources["scheduler_window_ms"], Source::Env);
    let p = c.policy();
    assert!(!p.fast_path);
    assert!(p.adaptive.is_some());
    let lat = p.latency.expect("auto_tune on");
    assert_eq!((lat.max_batch, lat.target), (16, Duration::from_millis(80)));
    // Every alias names a real key.
    assert!(ENV_ALIASES.iter().all(|(_, k)| key(k).is_some()));
}

#[test]
fn defaults_and_balanced_keep_continuous_batching_as_is() {
    let d = Config::default().policy();
    assert_eq!(d, kr_engine::PolicyConfig::default());
    for preset in ["balanced", "latency_sensitive", "throughput_optimized"] {
        let e = resolve(&Inputs {
            flags: kv(&[("preset", preset)]),
            ..Inputs::default()
        })
        .expect("preset");
        let p = e.config.policy();
        assert!(p.fast_path, "{preset}: the fast path stays on");
        match preset {
            "balanced" => {
                assert!(p.window.is_zero() && p.adaptive.is_none() && p.latency.is_none())
            }
            "latency_sensitive" => assert!(p.window.is_zero() && p.latency.is_some()),
            _ => assert!(p.adaptive.is_some() && p.latency.is_none()),
        }
        assert_eq!(e.sources["fast_path"], Source::Preset);
    }
}

#[test]
fn scheduler_keys_are_checked_alone_and_together() {
    let msg = resolve(&Inputs {
        flags: kv(&[("scheduler_window_ms", "9")]),
        ..Inputs::default()
    })
    .expect_err("too long")
    .to_string();
    assert!(
        msg.contains("scheduler_window_ms") && msg.contains("0..=5"),
        "{msg}"
    );
    let msg = resolve(&Inputs {
        flags: kv(&[("auto_tune_min_batch", "8"), ("auto_tune_max_batch", "4")]),
        ..Inputs::default()
    })
    .expect_err("min > max")
    .to_string();
    assert!(
        msg.contains("auto_tune_max_batch") && msg.contains("auto_tune_min_batch"),
        "{msg}"
    );
    let e = Effective::default_config();
    let live: serde_json::Map<_, _> =
        serde_json::from_str(r#"{"adaptive_window": true, "priority_aging_ms": 0}"#).expect("json");
    let next = e.patch(&live).expect("runtime-safe");
    assert!(next.config.policy().adaptive.is_some());
    assert_eq!(next.config.policy().aging_step, None);
}

#[test]
fn models_list_reads_names_aliases_and_keep_alive_and_names_bad_fields() {
    let path = yaml(
        "models",
        "models:\n  - model: builtin:stories260K\n    name: tiny\n    aliases: [story]\n    keep_alive: 5m\n  - model: org/repo:file.gguf\n",
    );
    let eff = resolve(&Inputs {
        file: Some(path),
        ..Inputs::default()
    })
    .expect("a valid list");
    let m = &eff.config.models;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].name.as_deref(), Some("tiny"));
    assert_eq!(m[0].aliases, ["story"]);
    assert_eq!(m[0].keep_alive.as_deref(), Some("5m"));
    assert_eq!(m[1].model, "org/repo:file.gguf");
    for (bad, why) in [
        ("models:\n  - model: a.gguf\n    colour: red\n", "colour"),
        (
            "models:\n  - model: a.gguf\n    keep_alive: soon\n",
            "keep_alive",
        ),
        ("models:\n  - name: x\n", "model"),
    ] {
        let msg = resolve(&Inputs {
            file: Some(yaml("bad-models", bad)),
            ..Inputs::default()
        })
        .expect_err(bad)
        .to_string();
        assert!(msg.contains("`models`") && msg.contains(why), "{msg}");
    }
}
