//! Chat templates render in a child process (`kr-serve __render-chat-template`), so that
//! a template that crashes the template engine — a namespace that contains itself makes
//! minijinja recurse until the stack overflows, which aborts the whole process — ends only
//! that child. The child renders under the same limits (fuel, depth, output, memory
//! budget, time) and answers one JSON line; the parent kills it at the time limit (plus a
//! second) and disables a template whose child crashed (died of SIGSEGV, SIGABRT and the
//! like). A child that could not start or ended otherwise is the server's failure (500),
//! not the template's.
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

/// What the child answers. Going over the memory budget is a `Limit` here: the child
/// exits, so the template holds nothing and may run again.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Text(String),
    Limit(String),
    Error(String),
}

/// Renders in a fresh child process of this binary.
#[derive(Debug, Default)]
pub struct ProcessSandbox;

fn sandbox_error(what: impl std::fmt::Display) -> ModelError {
    ModelError::TemplateSandbox(format!("the template sandbox process failed: {what}"))
}

/// A child that is killed and reaped however the render ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This binary: `/proc/self/exe` stays valid when the file was replaced on disk.
fn this_binary() -> std::io::Result<std::path::PathBuf> {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    match proc_exe.exists() {
        true => Ok(proc_exe.to_path_buf()),
        false => std::env::current_exe(),
    }
}

/// Whether the child died of a signal a crash sends (not a kill from outside).
fn crashed(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    // SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV.
    matches!(status.signal(), Some(4 | 5 | 6 | 7 | 8 | 11))
}

impl RenderSandbox for ProcessSandbox {
    fn render(&self, job: &RenderJobSpec) -> Result<String, ModelError> {
        let child = Command::new(this_binary().map_err(sandbox_error)?)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(sandbox_error)?;
        let mut child = Reaped(child);
        let request = serde_json::to_vec(job).map_err(sandbox_error)?;
        let mut stdin = child
            .0
            .stdin
            .take()
            .ok_or_else(|| sandbox_error("no stdin"))?;
        let mut stdout = child
            .0
            .stdout
            .take()
            .ok_or_else(|| sandbox_error("no stdout"))?;
        // The reply is read on its own thread so the wait below can give up on time.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("template-sandbox-io".into())
            .spawn(move || {
                let _ = stdin.write_all(&request);
                drop(stdin);
                let mut out = Vec::new();
                let _ = stdout.read_to_end(&mut out);
                let _ = tx.send(out);
            })
            .map_err(sandbox_error)?;
        let Ok(out) = rx.recv_timeout(job.limits.timeout + Duration::from_secs(1)) else {
            return Err(ModelError::TemplateLimit(format!(
                "the chat template did not finish within its time limit of {} ms",
                job.limits.timeout.as_millis()
            )));
        };
        let status = child.0.wait().map_err(sandbox_error)?;
        match serde_json::from_slice::<Reply>(&out) {
            Ok(Reply::Text(t)) => Ok(t),
            Ok(Reply::Limit(m)) => Err(ModelError::TemplateLimit(m)),
            Ok(Reply::Error(m)) => Err(ModelError::Template(m)),
            Err(_) if crashed(status) => Err(ModelError::TemplateDisabled(format!(
                "the chat template crashed its sandbox process ({status}); it is disabled for this model"
            ))),
            Err(_) => Err(sandbox_error(format_args!("it ended without an answer ({status})"))),
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
                Err(ModelError::TemplateLimit(m) | ModelError::TemplateMemory(m)) => {
                    Reply::Limit(m)
                }
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
