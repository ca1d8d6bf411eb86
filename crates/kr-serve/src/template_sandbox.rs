//! Chat templates render in a child process (`kr-serve __render-chat-template`), so that
//! a template that crashes the template engine — a namespace that contains itself makes
//! minijinja recurse until the stack overflows, which aborts the whole process — ends only
//! that child. The child renders under the same limits (fuel, depth, output, memory
//! budget, time) and answers one JSON line; the parent kills it at the time limit (plus a
//! second) and disables a template whose child crashed.
//!
//! Invariant: the child reads one request from stdin, writes at most one reply to stdout
//! and exits; it never touches the model or the network.

use kr_engine::{ModelError, RenderJobSpec, RenderSandbox};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "__render-chat-template";

/// What the child answers.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Text(String),
    Limit(String),
    Disabled(String),
    Error(String),
}

/// Renders in a fresh child process of this binary.
#[derive(Debug, Default)]
pub struct ProcessSandbox;

fn sandbox_error(what: impl std::fmt::Display) -> ModelError {
    ModelError::Template(format!("the template sandbox process failed: {what}"))
}

impl RenderSandbox for ProcessSandbox {
    fn render(&self, job: &RenderJobSpec) -> Result<String, ModelError> {
        let exe = std::env::current_exe().map_err(sandbox_error)?;
        let mut child = Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(sandbox_error)?;
        let request = serde_json::to_vec(job).map_err(sandbox_error)?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| sandbox_error("no stdin"))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| sandbox_error("no stdout"))?;
        // The reply is read on its own thread so the wait below can give up on time.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&request);
            drop(stdin);
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            let _ = tx.send(out);
        });
        let reply = rx.recv_timeout(job.limits.timeout + Duration::from_secs(1));
        let Ok(out) = reply else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ModelError::TemplateLimit(format!(
                "the chat template did not finish within its time limit of {} ms",
                job.limits.timeout.as_millis()
            )));
        };
        let status = child.wait().map_err(sandbox_error)?;
        match serde_json::from_slice::<Reply>(&out) {
            Ok(Reply::Text(t)) => Ok(t),
            Ok(Reply::Limit(m)) => Err(ModelError::TemplateLimit(m)),
            Ok(Reply::Disabled(m)) => Err(ModelError::TemplateDisabled(m)),
            Ok(Reply::Error(m)) => Err(ModelError::Template(m)),
            Err(_) => Err(ModelError::TemplateDisabled(format!(
                "the chat template crashed its sandbox process ({status}); it is disabled for this model"
            ))),
        }
    }
}

/// The child: reads one job from stdin, renders it on a thread of its own under the job's
/// limits, writes the reply and exits.
pub fn child_main() -> ! {
    let mut input = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut input) {
        Err(e) => Reply::Error(format!("cannot read the job: {e}")),
        Ok(_) => match serde_json::from_slice::<RenderJobSpec>(&input) {
            Err(e) => Reply::Error(format!("a malformed job: {e}")),
            Ok(job) => match job.render_here() {
                Ok(text) => Reply::Text(text),
                Err(ModelError::TemplateLimit(m)) => Reply::Limit(m),
                Err(ModelError::TemplateDisabled(m)) => Reply::Disabled(m),
                Err(e) => Reply::Error(e.to_string()),
            },
        },
    };
    let out = serde_json::to_vec(&reply).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
    // Exit at once: a render thread parked at its memory budget must not keep us alive.
    std::process::exit(0)
}
