//! A `kr-serve serve` child process for the binary's tests: started on a free port, its
//! address read from the ready line, killed if a test ends without waiting for it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// A server process, killed if a test ends (or fails) without waiting for it.
pub struct ServerProcess(pub std::process::Child);

impl ServerProcess {
    pub fn sigterm(&self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("exit status")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kr-serve serve` on a free port with `args` and `env`; returns the process, its
/// address and its remaining stderr lines.
pub fn spawn_server(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    ServerProcess,
    String,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("http://"))
        .expect("a ready line with the URL");
    let addr = ready
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address")
        .to_string();
    (ServerProcess(child), addr, lines)
}
