//! Unit tests of the schema: precedence, error messages, PATCH and reload.

use super::*;

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
