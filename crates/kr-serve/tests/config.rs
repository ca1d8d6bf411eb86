//! The config as a user meets it: `kr-serve config` prints each value's source (table and
//! JSON), a bad value is an error naming key, value and range, and SIGHUP re-reads the
//! file of a running `kr-serve serve` (a valid file changes a limit live; an invalid one is
//! rejected and the old config stays).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn yaml(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("kr-serve-cfg-{}-{name}.yaml", std::process::id()));
    std::fs::write(&p, text).expect("write yaml");
    p
}

fn kr(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kr-serve"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

#[test]
fn config_command_shows_values_and_sources() {
    let file = yaml(
        "show",
        "preset: latency_sensitive\nmax_queue: 10\nmax_tokens_cap: 100\nstream_interval: 3\n",
    );
    let f = file.to_str().expect("utf-8 path");
    let env = [
        ("KR_SERVE_MAX_QUEUE", "20"),
        ("KR_SERVE_MAX_TOKENS_CAP", "200"),
    ];
    let out = kr(
        &["config", "--config", f, "--max-queue", "30", "--json"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let expect = [
        ("max_queue", 30, "flag"),
        ("max_tokens_cap", 200, "env"),
        ("stream_interval", 3, "file"),
        ("max_running", 16, "preset"),
        ("port", 8080, "default"),
    ];
    for (k, value, source) in expect {
        assert_eq!(v["config"][k], value, "{k}");
        assert_eq!(v["sources"][k], source, "{k}");
    }
    let out = kr(&["config", "--config", f], &env);
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("max_tokens_cap"))
        .expect("a row");
    assert!(line.contains("200") && line.contains("env"), "{table}");

    let out = kr(&["config", "--max-running", "0"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_running") && err.contains('0') && err.contains("1..=4096"),
        "{err}"
    );
    let bad = yaml("unknown", "max_qeue: 1\n");
    let out = kr(&["config", "--config", bad.to_str().expect("utf-8")], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_qeue"));
}

fn admin_config(addr: &str) -> Value {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /admin/config HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer boss\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let body = out.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("json")
}

fn hup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    assert!(ok.expect("kill runs").success());
}

#[test]
fn sighup_reloads_a_valid_file_and_rejects_an_invalid_one() {
    let file = yaml("hup", "max_tokens_cap: 5\nport: 0\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .args([
            "serve",
            "--kv-cache-mib",
            "16",
            "--admin-key",
            "boss",
            "--config",
        ])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_for = |needle: &str| loop {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a stderr line");
        if l.contains(needle) {
            break l;
        }
    };
    let ready = wait_for("http://");
    let addr = ready
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("addr")
        .to_string();
    assert_eq!(admin_config(&addr)["config"]["max_tokens_cap"], 5);

    std::fs::write(&file, "max_tokens_cap: 7\nport: 0\n").expect("rewrite");
    hup(child.id());
    wait_for("config reloaded");
    assert_eq!(admin_config(&addr)["config"]["max_tokens_cap"], 7);

    std::fs::write(&file, "max_tokens_cap: 0\nport: 0\n").expect("rewrite");
    hup(child.id());
    let l = wait_for("rejected");
    assert!(l.contains("max_tokens_cap"), "{l}");
    assert_eq!(
        admin_config(&addr)["config"]["max_tokens_cap"],
        7,
        "the old config stays"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().expect("exits").success());
}

#[test]
fn original_mlx_env_names_set_the_scheduler_keys() {
    let env = [
        ("MLX_GPU_SCHEDULER_WINDOW_MS", "1.5"),
        ("MLX_ADAPTIVE_WINDOW", "on"),
        ("MLX_AUTO_TUNE", "on"),
        ("MLX_AUTO_TUNE_MAX_BATCH", "16"),
        ("MLX_FAST_PATH", "off"),
    ];
    let out = kr(&["config", "--json"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    for (k, value) in [
        ("scheduler_window_ms", Value::from(1.5)),
        ("adaptive_window", Value::from(true)),
        ("auto_tune", Value::from(true)),
        ("auto_tune_max_batch", Value::from(16)),
        ("fast_path", Value::from(false)),
    ] {
        assert_eq!(v["config"][k], value, "{k}");
        assert_eq!(v["sources"][k], "env", "{k}");
    }
    let out = kr(&["config"], &[("MLX_ADAPTIVE_WINDOW_HIGH_MS", "9")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("adaptive_window_high_ms") && err.contains("0..=5"),
        "{err}"
    );
}
