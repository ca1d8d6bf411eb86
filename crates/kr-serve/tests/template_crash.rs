//! A chat template that crashes the template engine (a namespace that contains itself:
//! minijinja recurses until the stack overflows, which aborts a process) ends only the
//! render's child process: the server answers a 400 naming the model, keeps serving, and
//! exits 0 on SIGTERM.

use std::io::{Read, Write};

#[path = "../../../tests/support/gguf_template.rs"]
mod gguf_template;
mod server_process;
use server_process::spawn_server;
#[path = "../../../tests/support/test_models.rs"]
mod test_models;

fn post(addr: &str, path: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn a_template_that_crashes_the_engine_gets_a_400_and_the_server_lives() {
    let Some(smollm2) = test_models::path(test_models::SMOLLM2) else {
        return;
    };
    let name = format!("kr-crash-{}", std::process::id());
    let gguf = std::env::temp_dir().join(format!("{name}.gguf"));
    let cyclic = "{% set ns = namespace(n=0) %}{% set ns.n = (ns, 1) %}{{ ns.n }}";
    gguf_template::with_template(&smollm2, cyclic, &gguf);
    let model = gguf.to_string_lossy().into_owned();
    let args = ["--kv-cache-mib", "64", "--model", &model];
    let (mut child, addr, _lines) = spawn_server(&args, &[]);
    let chat = format!(r#"{{"model":"{name}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let answer = post(&addr, "/v1/chat/completions", &chat);
    let raw = format!(r#"{{"model":"{name}","prompt":"Paris is","max_tokens":2}}"#);
    let served = post(&addr, "/v1/completions", &raw);
    child.sigterm();
    let status = child.wait();
    let _ = std::fs::remove_file(&gguf);
    assert!(answer.contains(" 400 "), "{answer}");
    assert!(answer.contains(&format!("model `{name}`")), "{answer}");
    assert!(answer.contains("crashed its sandbox process"), "{answer}");
    assert!(served.contains(" 200 "), "{served}");
    assert_eq!(status.code(), Some(0));
}
