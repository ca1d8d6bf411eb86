//! Jinja chat templates rendered the way Hugging Face's `apply_chat_template` does, with
//! minijinja plus Python-compatible string methods (`.strip()`, `.startswith()` …), in a
//! sandbox: a template is code from the model file, so every render runs on its own
//! thread under [`TemplateLimits`] — fuel (instructions), recursion depth, output bytes,
//! memory (see `template_budget.rs`) and wall-clock time.
//!
//! Invariants: on a thread, a render returns within `timeout` (plus one poll interval; the
//! process sandbox of the binary adds a second) whatever the
//! template does; a template that exhausted its memory budget once is disabled for good
//! (its thread stays parked holding at most that budget), and later renders fail at once
//! with the reason.

use crate::error::{ModelError, Result};
use crate::template_budget::Budget;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One chat message. The tool fields appear to the template only when set, as in
/// Hugging Face's message dicts: an assistant's `tool_calls` (`[{"type": "function",
/// "function": {"name", "arguments": {…}}, "id"}]`, arguments as an object) and a tool
/// result's `tool_call_id` and `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// What a render sees besides the messages: the request's `tools` (function definitions, as
/// the template's `tools` variable) and `chat_template_kwargs` (extra variables such as
/// `enable_thinking`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// What one render may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateLimits {
    /// Template instructions per render.
    pub fuel: u64,
    /// Nesting depth of loops, conditions, macro calls and includes.
    pub recursion_limit: usize,
    /// Bytes of rendered text.
    pub max_output_bytes: usize,
    /// Bytes the rendering thread may allocate (enforced where `BudgetedAllocator` is the
    /// global allocator).
    pub max_memory_bytes: usize,
    /// Wall-clock time per render.
    pub timeout: Duration,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        Self {
            fuel: 5_000_000,
            recursion_limit: 100,
            max_output_bytes: 16 << 20,
            max_memory_bytes: 256 << 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Stack of a render thread.
const RENDER_STACK_BYTES: usize = 64 << 20;

/// Where renders run when not on a thread of this process: somewhere a crash of the
/// template engine (a stack overflow aborts the whole process) cannot take the caller
/// down. `kr-serve` renders in a child process.
pub trait RenderSandbox: Send + Sync + std::fmt::Debug {
    fn render(&self, job: &RenderJobSpec) -> Result<String>;
}

/// Everything one render needs, for a sandbox elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderJobSpec {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    pub limits: TemplateLimits,
    pub messages: Vec<ChatMessage>,
    pub add_generation_prompt: bool,
    #[serde(default)]
    pub context: ChatContext,
}

impl RenderJobSpec {
    /// Renders on a thread of this process (what a sandbox process does inside). Going
    /// over the memory budget is [`ModelError::TemplateMemory`]: the caller decides whether
    /// the template can be trusted again.
    pub fn render_here(&self) -> Result<String> {
        ChatTemplate::with_limits(
            &self.source,
            &self.bos_token,
            &self.eos_token,
            self.limits.clone(),
        )?
        .render_on_thread(&self.messages, self.add_generation_prompt, &self.context)
    }
}

/// A compiled chat template and the special-token strings it may reference.
pub struct ChatTemplate {
    source: String,
    env: Arc<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    limits: TemplateLimits,
    /// Why the template no longer renders (it broke a budget it cannot be trusted with).
    disabled: Arc<OnceLock<String>>,
    /// Where renders run; `None`: on a thread of this process.
    sandbox: Option<Arc<dyn RenderSandbox>>,
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python's whitespace (`str.isspace`, what `str.strip()` removes): Unicode's White_Space
/// plus the separators U+001C to U+001F, which Rust's `trim` keeps.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip` / `lstrip` / `rstrip` (`which`): `chars` or, when none, whitespace.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, which: &str) -> &'a str {
    let set: Vec<char> = chars.map(|c| c.chars().collect()).unwrap_or_default();
    let strip = |c: char| match chars {
        Some(_) => set.contains(&c),
        None => py_space(c),
    };
    match which {
        "lstrip" => s.trim_start_matches(strip),
        "rstrip" => s.trim_end_matches(strip),
        _ => s.trim_matches(strip),
    }
}

/// Jinja's `trim` filter as transformers runs it (`str(value).strip(chars)`): minijinja's
/// trims Rust's whitespace, which keeps U+001C to U+001F.
fn trim(value: Value, chars: Option<String>) -> Value {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    let out = py_strip(&text, chars.as_deref(), "strip").to_string();
    match value.is_safe() {
        true => Value::from_safe_string(out),
        false => Value::from(out),
    }
}

/// Python's string methods (minijinja-contrib's `pycompat`), with `strip`, `lstrip`,
/// `rstrip` and `isspace` on Python's whitespace rather than Rust's.
fn py_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<&str>,) = minijinja::value::from_args(args)?;
                return Ok(Value::from(py_strip(s, chars, method)));
            }
            "isspace" => {
                let () = minijinja::value::from_args(args)?;
                return Ok(Value::from(!s.is_empty() && s.chars().all(py_space)));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// JSON the way transformers' templates write it (`json.dumps(x, ensure_ascii=False)`): keys
/// in their order, `", "` and `": "` between items, or `indent` spaces per level.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let f = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                &value,
                &mut serde_json::Serializer::with_formatter(&mut out, f),
            )
        }
        None => serde::Serialize::serialize(
            &value,
            &mut serde_json::Serializer::with_formatter(&mut out, PySeparators),
        ),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Python's default JSON separators.
struct PySeparators;

/// `", "` before every item but the first.
fn py_item_separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    match first {
        true => Ok(()),
        false => w.write_all(b", "),
    }
}

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        py_item_separator(w, first)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        py_item_separator(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Collects rendered text, failing once it passes `limit` bytes.
struct BoundedText {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("output limit"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn compile(source: &str, limits: &TemplateLimits) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(py_methods);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", crate::strftime::strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(limits.fuel));
    // No source excerpts in errors: the excerpt code of minijinja 2.24 underflows on some
    // spans (found by fuzzing), and a message needs only the error itself.
    env.set_debug(false);
    env.set_recursion_limit(limits.recursion_limit);
    env.add_template_owned("chat", source.to_string())
        .map_err(|e| ModelError::Template(e.to_string()))?;
    Ok(env)
}

impl ChatTemplate {
    /// Compiles `source` with the default limits.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::with_limits(source, bos_token, eos_token, TemplateLimits::default())
    }

    pub fn with_limits(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        limits: TemplateLimits,
    ) -> Result<Self> {
        Ok(Self {
            source: source.to_string(),
            env: Arc::new(compile(source, &limits)?),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            limits,
            disabled: Arc::new(OnceLock::new()),
            sandbox: None,
        })
    }

    /// The same template under other limits, rendered in `sandbox` when given.
    pub fn relimited(
        &self,
        limits: TemplateLimits,
        sandbox: Option<Arc<dyn RenderSandbox>>,
    ) -> Result<Self> {
        let mut t = Self::with_limits(&self.source, &self.bos_token, &self.eos_token, limits)?;
        t.sandbox = sandbox;
        Ok(t)
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a one-message conversation: a template that cannot is reported at load.
    pub fn check(&self) -> Result<()> {
        self.render(&[ChatMessage::new("user", "Hello")], true)
            .map(|_| ())
    }

    /// Renders a conversation, optionally opening the assistant's turn, in the sandbox.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &ChatContext::default())
    }

    /// [`ChatTemplate::render`] with tools and extra template variables.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        context: &ChatContext,
    ) -> Result<String> {
        if let Some(why) = self.disabled.get() {
            return Err(ModelError::TemplateDisabled(why.clone()));
        }
        let out = match &self.sandbox {
            Some(sandbox) => sandbox.render(&RenderJobSpec {
                source: self.source.clone(),
                bos_token: self.bos_token.clone(),
                eos_token: self.eos_token.clone(),
                limits: self.limits.clone(),
                messages: messages.to_vec(),
                add_generation_prompt,
                context: context.clone(),
            }),
            // On a thread of this process a render over its memory budget stays parked
            // holding it, so the template cannot be run again.
            None => match self.render_on_thread(messages, add_generation_prompt, context) {
                Err(ModelError::TemplateMemory(m)) => Err(ModelError::TemplateDisabled(format!(
                    "{m}; it is disabled for this model"
                ))),
                other => other,
            },
        };
        if let Err(ModelError::TemplateDisabled(why)) = &out {
            let _ = self.disabled.set(why.clone());
        }
        out
    }

    /// Renders on a thread of this process, under the limits.
    fn render_on_thread(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        context: &ChatContext,
    ) -> Result<String> {
        let exceeded = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = RenderJob {
            env: self.env.clone(),
            messages: messages.to_vec(),
            add_generation_prompt,
            context: context.clone(),
            bos_token: self.bos_token.clone(),
            eos_token: self.eos_token.clone(),
            limits: self.limits.clone(),
        };
        let flag = exceeded.clone();
        std::thread::Builder::new()
            .name("chat-template".into())
            // Deep expressions recurse in minijinja's parser and evaluator beyond what a
            // 2 MiB thread stack holds (found by fuzzing); the stack is reserved, not used.
            .stack_size(RENDER_STACK_BYTES)
            .spawn(move || {
                let budget = Budget::enter(job.limits.max_memory_bytes, flag);
                let out = job.run();
                drop(budget);
                let _ = tx.send(out);
            })
            .map_err(|e| ModelError::Template(format!("cannot start a render thread: {e}")))?;
        self.wait(&rx, &exceeded)
    }

    /// Waits for the render thread's answer, watching its memory flag and the clock.
    fn wait(
        &self,
        rx: &std::sync::mpsc::Receiver<Result<String>>,
        exceeded: &AtomicBool,
    ) -> Result<String> {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = Instant::now() + self.limits.timeout;
        loop {
            let poll =
                Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(poll) {
                Ok(out) => return out,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ModelError::Template("the render thread failed".into()))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if exceeded.load(Ordering::SeqCst) {
                return Err(ModelError::TemplateMemory(format!(
                    "the chat template used more than its memory budget of {} MiB",
                    self.limits.max_memory_bytes >> 20
                )));
            }
            if Instant::now() >= deadline {
                return Err(ModelError::TemplateLimit(format!(
                    "the chat template did not finish within its time limit of {} ms",
                    self.limits.timeout.as_millis()
                )));
            }
        }
    }
}

/// One render, moved onto its own thread (its context is built there, inside the budget).
struct RenderJob {
    env: Arc<Environment<'static>>,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    context: ChatContext,
    bos_token: String,
    eos_token: String,
    limits: TemplateLimits,
}

impl RenderJob {
    fn run(self) -> Result<String> {
        // Extra variables first: the fixed ones win over a kwarg of the same name.
        let extra = Value::from_serialize(&self.context.kwargs);
        let ctx = minijinja::context! {
            messages => self.messages,
            add_generation_prompt => self.add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            tools => self.context.tools,
            ..extra
        };
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let mut out = BoundedText {
            text: Vec::new(),
            limit: self.limits.max_output_bytes,
        };
        if let Err(e) = tmpl.render_captured_to(ctx, &mut out) {
            return Err(self.explain(e));
        }
        String::from_utf8(out.text).map_err(|e| ModelError::Template(e.to_string()))
    }

    /// A render error in words, naming the limit it hit, if any.
    fn explain(&self, e: Error) -> ModelError {
        let l = &self.limits;
        match e.kind() {
            ErrorKind::OutOfFuel => ModelError::TemplateLimit(format!(
                "the chat template ran more than its {} instructions",
                l.fuel
            )),
            // The only write that fails is the one past the output limit.
            ErrorKind::WriteFailure => ModelError::TemplateLimit(format!(
                "the chat template wrote more than its output limit of {} bytes",
                l.max_output_bytes
            )),
            _ if e.to_string().contains("recursion limit") => ModelError::TemplateLimit(format!(
                "the chat template nested deeper than its limit of {}",
                l.recursion_limit
            )),
            _ => ModelError::Template(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, content: &str) -> String {
        ChatTemplate::new(source, "<s>", "</s>")
            .unwrap()
            .render(&[ChatMessage::new("user", content)], false)
            .unwrap()
    }

    /// `trim` and `.strip()` remove what Python's `str.strip()` removes: Unicode whitespace
    /// (no-break space, U+3000, U+0085, U+2028) and U+001C to U+001F, which Rust's `trim`
    /// keeps (Gemma 3's template trims every turn with `| trim`).
    #[test]
    fn trim_and_strip_use_pythons_whitespace() {
        let content = "\u{1f}\u{85} \u{a0}Hi\tthere\u{3000}\u{2028}\u{1c}\u{1d}\u{1e}\n";
        let m = "{{ messages[0]['content']";
        assert_eq!(render(&format!("{m} | trim }}}}"), content), "Hi\tthere");
        assert_eq!(render(&format!("{m}.strip() }}}}"), content), "Hi\tthere");
        assert_eq!(
            render(&format!("{m}.lstrip() }}}}|"), content),
            "Hi\tthere\u{3000}\u{2028}\u{1c}\u{1d}\u{1e}\n|"
        );
        assert_eq!(
            render(&format!("|{m}.rstrip() }}}}"), content),
            "|\u{1f}\u{85} \u{a0}Hi\tthere"
        );
        // With characters given, those only; an empty set strips nothing.
        assert_eq!(render(&format!("{m}.strip('xy') }}}}"), "yxay bxx"), "ay b");
        assert_eq!(render(&format!("{m} | trim('x') }}}}"), "x a x"), " a ");
        assert_eq!(render(&format!("{m}.strip('') }}}}"), " a "), " a ");
        assert_eq!(render(&format!("{m}.strip(none) }}}}"), "\u{1f}a "), "a");
        // isspace: Python's set, and false for the empty string.
        let isspace = format!("{m}.isspace() }}}}");
        assert_eq!(render(&isspace, " \u{1c}\n"), "True");
        assert_eq!(render(&isspace, ""), "False");
        assert_eq!(render(&isspace, " a"), "False");
        // Other methods still come from minijinja-contrib's pycompat.
        assert_eq!(render(&format!("{m}.upper() }}}}"), "ab"), "AB");
        // A non-string is trimmed as its text.
        assert_eq!(render("{{ 5 | trim }}", ""), "5");
    }
}
