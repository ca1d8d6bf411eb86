//! `kr-serve serve` as a user runs it: prints the URL when ready, answers HTTP, checks the
//! keys of `--api-key-file`; on SIGTERM during a stream it refuses new connections, lets
//! the stream finish and exits 0.

use std::io::{Read, Write};

mod server_process;
#[path = "../../../tests/support/test_models.rs"]
mod test_models;
use server_process::spawn_server;

fn http_get(addr: &str, path: &str, key: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let auth = format!("Authorization: Bearer {key}\r\n");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Sends a streamed chat request of 100 tokens; the response is read by the caller.
fn start_stream(addr: &str, key: &str) -> std::net::TcpStream {
    let body = r#"{"model":"SmolLM2-135M-Instruct.Q4_1","stream":true,"max_tokens":100,"ignore_eos":true,"messages":[{"role":"user","content":"Count to fifty."}]}"#;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    s
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn serve_answers_and_exits_zero_on_sigterm() {
    let Some(smollm2) = test_models::path(test_models::SMOLLM2) else {
        return;
    };
    let keys = std::env::temp_dir().join(format!("kr-serve-keys-{}", std::process::id()));
    std::fs::write(&keys, "# API keys\nk1\n\nk2\n").expect("key file");
    let model = smollm2.to_string_lossy().into_owned();
    let key_file = keys.to_string_lossy().into_owned();
    let args = [
        "--model",
        &model,
        "--kv-cache-mib",
        "64",
        "--api-key-file",
        &key_file,
    ];
    let (mut child, addr, _lines) = spawn_server(&args, &[]);
    let status = |resp: &str| resp.split_whitespace().nth(1).unwrap_or("").to_string();
    let health = http_get(&addr, "/health", "");
    assert_eq!(status(&health), "200", "{health}");
    assert_eq!(status(&http_get(&addr, "/v1/models", "nope")), "401");
    assert!(http_get(&addr, "/v1/models", "k2").contains("SmolLM2-135M-Instruct.Q4_1"));
    // SIGTERM during a stream: the stream completes, new connections are refused, exit 0.
    let mut stream = start_stream(&addr, "k1");
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).contains(" 200 "));
    child.sigterm();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    let mut rest = String::new();
    stream
        .read_to_string(&mut rest)
        .expect("the stream finishes");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert_eq!(child.wait().code(), Some(0));
    let _ = std::fs::remove_file(keys);
}

/// Whether the server closed `s` within `within` (EOF or reset while reading).
fn closed_within(s: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn half_sent_requests_and_idle_connections_are_closed_and_do_not_block_others() {
    let env = [("KR_SERVE_HEADER_READ_TIMEOUT", "1")];
    let (mut child, addr, _lines) = spawn_server(&[], &env);
    // 200 clients that send half their headers and stall.
    let mut stalled: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            write!(s, "GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").expect("write");
            s
        })
        .collect();
    let t0 = std::time::Instant::now();
    let health = http_get(&addr, "/health", "");
    assert!(health.contains(" 200 "), "{health}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    // Each stalled connection is closed once its header time is up (1 s).
    for s in stalled.iter_mut().take(5) {
        assert!(closed_within(s, std::time::Duration::from_secs(3)));
    }
    // An idle keep-alive connection is closed the same way.
    let mut idle = std::net::TcpStream::connect(&addr).expect("connect");
    write!(idle, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
    let mut first = [0u8; 256];
    let n = idle.read(&mut first).expect("the response");
    assert!(String::from_utf8_lossy(&first[..n]).contains(" 200 "));
    assert!(closed_within(&mut idle, std::time::Duration::from_secs(3)));
    child.sigterm();
    assert_eq!(child.wait().code(), Some(0));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn sigterm_with_a_stalled_stream_exits_zero_by_the_deadline_with_its_blocks_freed() {
    let Some(smollm2) = test_models::path(test_models::SMOLLM2) else {
        return;
    };
    let model = smollm2.to_string_lossy().into_owned();
    let env = [("KR_SERVE_SHUTDOWN_TIMEOUT", "2")];
    let (mut child, addr, lines) = spawn_server(&["--model", &model, "--kv-cache-mib", "64"], &env);
    // A long stream whose client reads the first bytes and then nothing more.
    let body = r#"{"model":"SmolLM2-135M-Instruct.Q4_1","stream":true,"max_tokens":1000,"ignore_eos":true,"messages":[{"role":"user","content":"Count to a thousand."}]}"#;
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).contains(" 200 "));
    let t0 = std::time::Instant::now();
    child.sigterm();
    let status = child.wait();
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < std::time::Duration::from_secs(4),
        "exit took {took:?}"
    );
    let stderr: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("kr-serve stopped (KV blocks in use: 0)")),
        "{stderr:?}"
    );
    drop(stream);
}

/// `--model` twice and `--models-dir`: every model is listed, the first is loaded at start,
/// the others on first use, each answering under its file name.
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn serve_several_models_from_flags_and_a_folder() {
    let Some(smollm2) = test_models::path(test_models::SMOLLM2) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kr-serve-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder");
    let linked = dir.join("second.gguf");
    let _ = std::fs::remove_file(&linked);
    std::os::unix::fs::symlink(&smollm2, &linked).expect("a link");
    let model = smollm2.to_string_lossy().into_owned();
    let folder = dir.to_string_lossy().into_owned();
    let args = [
        "--model",
        "builtin:stories260K",
        "--model",
        &model,
        "--models-dir",
        &folder,
        "--kv-cache-mib",
        "16",
    ];
    let (_child, addr, _lines) = spawn_server(&args, &[]);
    let ps = http_get(&addr, "/api/ps", "");
    assert!(
        ps.contains("builtin:stories260K") && !ps.contains("second"),
        "{ps}"
    );
    let tags = http_get(&addr, "/api/tags", "");
    for name in [
        "builtin:stories260K",
        "SmolLM2-135M-Instruct.Q4_1",
        "second",
    ] {
        assert!(tags.contains(name), "{name} missing from {tags}");
    }
    for name in ["SmolLM2-135M-Instruct.Q4_1", "second"] {
        let body = format!(r#"{{"model":"{name}","prompt":"Hello","max_tokens":3}}"#);
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            s,
            "POST /v1/completions HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.0 200"), "{name}: {out}");
    }
    let ps = http_get(&addr, "/api/ps", "");
    assert!(ps.contains("second"), "{ps}");
    let _ = std::fs::remove_dir_all(&dir);
}
