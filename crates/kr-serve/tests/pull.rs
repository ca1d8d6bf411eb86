//! `kr-serve pull` against a mock Hugging Face Hub on 127.0.0.1 (issue 21, must-show 2): a
//! download cut off part way fails, the next pull resumes from where it stopped (the mock
//! sees the range) and completes; a file whose bytes do not match the Hub's sha256 is
//! refused and deleted; progress is reported; `models list` shows the pull; `serve --model
//! ORG/REPO` serves it from the cache; `models delete` removes it. Then Ollama's
//! `/api/pull` on a running server streams its NDJSON progress and the model serves at once;
//! `/api/delete` removes it.

mod server_process;
#[path = "../../../tests/support/test_models.rs"]
mod test_models;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// The first full download of the good file stops after this many bytes.
const CUT_AT: usize = 5 << 20;

struct Repo {
    name: &'static str,
    bytes: Vec<u8>,
    etag: String,
}

#[derive(Default)]
struct Log {
    ranges: Vec<(String, String)>,
    cut_done: bool,
    /// The bearer tokens requests carried.
    tokens: Vec<String>,
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Serves the repos' `model.gguf` (ranges, the Hub's headers) and their listings.
fn mock_hub(repos: Vec<Repo>) -> (String, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let log = Arc::new(Mutex::new(Log::default()));
    let (repos, l) = (Arc::new(repos), log.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (repos, l) = (repos.clone(), l.clone());
            std::thread::spawn(move || answer(conn, &repos, &l));
        }
    });
    (base, log)
}

fn answer(mut conn: TcpStream, repos: &[Repo], log: &Mutex<Log>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut request = String::new();
    reader.read_line(&mut request).expect("request line");
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = v.trim().to_string();
        }
        let auth = line
            .split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let Some(token) = auth.and_then(|(_, v)| v.trim().strip_prefix("Bearer ")) {
            log.lock().expect("log").tokens.push(token.to_string());
        }
    }
    for repo in repos {
        if path == format!("/api/models/{}/revision/main", repo.name) {
            let body = format!(
                r#"{{"sha":"{COMMIT}","siblings":[{{"rfilename":"README.md"}},{{"rfilename":"model.gguf"}}]}}"#
            );
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
            return;
        }
        if path == format!("/{}/resolve/main/model.gguf", repo.name) {
            let total = repo.bytes.len();
            let start: usize = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let end = match range.strip_suffix("-0").is_some() && start == 0 {
                true => 0,
                false => total - 1,
            };
            let mut cut = false;
            {
                let mut l = log.lock().expect("log");
                l.ranges.push((repo.name.to_string(), range.clone()));
                if repo.name == "test/good" && end > 0 && start == 0 && !l.cut_done {
                    l.cut_done = true;
                    cut = true;
                }
            }
            let body = &repo.bytes[start..=end];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{total}\r\nETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                body.len(),
                repo.etag
            );
            let _ = conn.write_all(head.as_bytes());
            let sent = if cut { &body[..CUT_AT] } else { body };
            let _ = conn.write_all(sent);
            return;
        }
    }
    let _ =
        conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

fn kr_serve(args: &[&str], hub: &str, home: &std::path::Path) -> Output {
    kr_serve_with(args, hub, home, None)
}

fn kr_serve_with(args: &[&str], hub: &str, home: &std::path::Path, token: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kr-serve"));
    c.args(args).env("HF_ENDPOINT", hub).env("HF_HOME", home);
    match token {
        Some(t) => c.env("HF_TOKEN", t),
        None => c.env_remove("HF_TOKEN"),
    };
    c.output().expect("kr-serve runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn pull_resumes_verifies_and_serves() {
    let Some(model) = test_models::path(test_models::SMOLLM2) else {
        return;
    };
    let good = std::fs::read(&model).expect("the model file");
    let bad = vec![7u8; 1 << 20];
    let repos = vec![
        Repo {
            name: "test/good",
            etag: sha256(&good),
            bytes: good.clone(),
        },
        Repo {
            name: "test/bad",
            etag: sha256(b"something else"),
            bytes: bad,
        },
    ];
    let (hub, log) = mock_hub(repos);
    let home = std::env::temp_dir().join(format!("kr-hf-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);

    // Cut off after CUT_AT bytes: a clear error, the part kept.
    let first = kr_serve(&["pull", "test/good"], &hub, &home);
    assert!(!first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("resume"), "{}", text(&first));
    // Again, with a token: only the rest is asked for, the token is sent, and the file is
    // whole and verified.
    let second = kr_serve_with(&["pull", "test/good"], &hub, &home, Some("hf_secret"));
    assert!(second.status.success(), "{}", text(&second));
    let out = text(&second);
    assert!(
        out.contains("downloading model.gguf") && out.contains("verifying model.gguf"),
        "{out}"
    );
    let resumed = format!("bytes={CUT_AT}-");
    let ranges = log.lock().expect("log").ranges.clone();
    assert!(
        ranges
            .iter()
            .any(|(r, range)| r == "test/good" && *range == resumed),
        "{ranges:?}"
    );
    let tokens = log.lock().expect("log").tokens.clone();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t == "hf_secret"),
        "{tokens:?}"
    );
    let path = String::from_utf8_lossy(&second.stdout).trim().to_string();
    assert_eq!(std::fs::read(&path).expect("the pulled file"), good);

    // A digest that does not match: refused, nothing left in the snapshot.
    let refused = kr_serve(&["pull", "test/bad"], &hub, &home);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("checksum mismatch"),
        "{}",
        text(&refused)
    );
    let listed = text(&kr_serve(&["models", "list"], &hub, &home));
    assert!(listed.contains("test/good"), "{listed}");

    // Served from the cache by its Hub id, under the repository's name.
    let home_s = home.to_string_lossy().into_owned();
    let (_child, addr, _lines) = server_process::spawn_server(
        &["--model", "test/good", "--kv-cache-mib", "16"],
        &[
            ("HF_HOME", home_s.as_str()),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ],
    );
    let body = r#"{"model":"good","prompt":"Hello","max_tokens":3}"#;
    let mut s = TcpStream::connect(&addr).expect("connect");
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    drop(_child);

    let deleted = kr_serve(&["models", "delete", "test/good"], &hub, &home);
    assert!(deleted.status.success(), "{}", text(&deleted));
    let unknown = kr_serve(&["serve", "--model", "test/good"], &hub, &home);
    assert!(
        text(&unknown).contains("kr-serve pull test/good"),
        "{}",
        text(&unknown)
    );
    let _ = std::fs::remove_dir_all(&home);
    api_pull_then_serve(&hub);
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    resp
}

/// `/api/pull` on a server that did not have the model: progress lines, then it serves.
fn api_pull_then_serve(hub: &str) {
    let home = std::env::temp_dir().join(format!("kr-hf-home2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let home_s = home.to_string_lossy().into_owned();
    let (_child, addr, _lines) = server_process::spawn_server(
        &["--model", "builtin:stories260K", "--kv-cache-mib", "16"],
        &[("HF_HOME", home_s.as_str()), ("HF_ENDPOINT", hub)],
    );
    let resp = http(&addr, "POST", "/api/pull", r#"{"model":"test/good"}"#);
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let statuses: Vec<String> = resp
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["status"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        "pulling manifest",
        "downloading model.gguf",
        "verifying sha256 digest",
        "success",
    ] {
        assert!(
            statuses.iter().any(|s| s == want),
            "{want} missing: {statuses:?}"
        );
    }
    assert_eq!(statuses.last().map(String::as_str), Some("success"));
    assert!(http(&addr, "GET", "/api/tags", "").contains("\"good\""));
    let body = r#"{"model":"good","prompt":"Hello","max_tokens":3}"#;
    let resp = http(&addr, "POST", "/v1/completions", body);
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let resp = http(&addr, "DELETE", "/api/delete", r#"{"model":"test/good"}"#);
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let resp = http(&addr, "DELETE", "/api/delete", r#"{"model":"test/good"}"#);
    assert!(resp.starts_with("HTTP/1.0 404"), "{resp}");
    let _ = std::fs::remove_dir_all(&home);
}
