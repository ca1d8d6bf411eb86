//! The engine loop: one OS thread owns the model and the KV cache; handles talk to it over a
//! channel. Each turn: drain the inbox, schedule, run the batch, sample, emit events.
//!
//! Invariants:
//! - only this thread touches the backend and the scheduler;
//! - the engine never blocks on a client: events go to unbounded per-request channels, and
//!   a closed channel means the client is gone, so the request is aborted at once;
//! - an idle engine parks on the inbox and starts a new request in the turn it arrives
//!   (the fast path); otherwise the admission policies (`admission.rs`) may hold
//!   new requests for a short window while the engine is busy (S2–S5);
//! - a request that asks for prompt logprobs gets a logit row for every prompt position
//!   (each prefill chunk's rows; positions served from the prefix cache are recomputed
//!   from the cached keys into a scratch block no sequence owns), all sent with its first
//!   token.

use crate::admission::AdmissionPolicies;
use crate::batch::{build_batch, RowUse, Wanted};
use crate::error::{EngineError, Result};
use crate::handle::{EngineHandle, Event, ModelInfo, Usage};
use crate::model::load_model;
use crate::runner::{DTypeChoice, DeviceChoice, KvCacheDtype, Runner, RunnerConfig};
use crate::sampler::{Sampler, TokenLogprobs};
use crate::stats::EngineStats;
use crate::stop::StopMatcher;
use embed::{has_embed_rows, EmbedState, Pooling};
use kr_core::policy::{Gate, PolicyConfig, Priority};
use kr_core::scheduler::NewRequest;
use kr_core::{
    FinishReason, RequestId, SamplingParams, Scheduler, SchedulerConfig, SeqUpdate, StepPlan,
};
use kr_model::{ChatTemplate, IncrementalDecoder, RenderSandbox, TemplateLimits, Tokenizer};
use prompt_logprobs::PromptLogprobs;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use supervise::{Breaker, BreakerConfig, FaultHook, Retry};
use tokio::sync::mpsc::UnboundedSender;

/// How to start an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: PathBuf,
    /// Memory for the KV cache, in MiB.
    pub kv_cache_mib: usize,
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Context limit; `None` uses the model's own.
    pub max_model_len: Option<usize>,
    pub enable_prefix_caching: bool,
    /// Exact number of KV blocks, overriding `kv_cache_mib` (tests use tiny pools).
    pub num_kv_blocks: Option<usize>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub kv_cache_dtype: KvCacheDtype,
    /// On CUDA: the share of GPU memory for weights, KV cache and workspace together.
    pub gpu_memory_fraction: f64,
    /// On CUDA: replay decode steps from captured graphs.
    pub cuda_graphs: bool,
    /// A request's numbers do not depend on what runs beside it: the scheduler's
    /// batch-invariant steps, and on CUDA the backend's batch-invariant kernels.
    pub batch_invariant: bool,
    /// On CUDA: launch decode step N+1 before step N's tokens reach the host.
    pub overlap_steps: bool,
    /// Scheduler policies (fast path, admission window, latency controller, aging).
    pub policy: PolicyConfig,
    /// The sandbox limits of chat-template rendering.
    pub template_limits: TemplateLimits,
    /// Where chat templates render; `None`: on a thread of this process.
    pub template_sandbox: Option<Arc<dyn RenderSandbox>>,
    /// A Jinja chat template file used instead of the model's own.
    pub chat_template_file: Option<PathBuf>,
    /// When failing steps stop new requests (`supervise.rs`).
    pub breaker: BreakerConfig,
    /// Exit the process on a fatal GPU error (the CUDA context is lost), so that it is
    /// restarted; off, the engine fails every later step instead.
    pub exit_on_fatal_device_error: bool,
    /// Tests: makes chosen steps fail (called only with the `fault-injection` feature).
    pub fault_hook: Option<FaultHook>,
}

impl EngineConfig {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            kv_cache_mib: 1024,
            block_size: 16,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            max_model_len: None,
            enable_prefix_caching: true,
            num_kv_blocks: None,
            device: DeviceChoice::Cpu,
            dtype: DTypeChoice::Auto,
            kv_cache_dtype: KvCacheDtype::Auto,
            gpu_memory_fraction: 0.9,
            cuda_graphs: true,
            batch_invariant: false,
            overlap_steps: true,
            policy: PolicyConfig::default(),
            template_limits: TemplateLimits::default(),
            template_sandbox: None,
            chat_template_file: None,
            breaker: BreakerConfig::default(),
            exit_on_fatal_device_error: true,
            fault_hook: None,
        }
    }

    /// The runner's part of this config, for a context limit of `max_model_len`.
    pub fn runner_config(&self, max_model_len: usize) -> RunnerConfig {
        RunnerConfig {
            device: self.device,
            dtype: self.dtype,
            kv_cache_dtype: self.kv_cache_dtype,
            kv_cache_mib: self.kv_cache_mib,
            block_size: self.block_size,
            num_kv_blocks: self.num_kv_blocks,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            max_model_len,
            gpu_memory_fraction: self.gpu_memory_fraction,
            cuda_graphs: self.cuda_graphs,
            batch_invariant: self.batch_invariant,
        }
    }
}

pub(crate) enum Command {
    Add {
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        prompt_logprobs: Option<u32>,
        priority: Priority,
        grammar: Option<crate::grammar::CompiledGrammar>,
        /// An embedding request: pool the prompt's hidden states this way, generate nothing.
        embed: Option<Pooling>,
        events: UnboundedSender<Event>,
    },
    Abort(RequestId),
    /// Ends every request with `Event::Error(reason)` and frees its blocks.
    AbortAll(String),
    SetPolicy(PolicyConfig),
    /// Stops the engine thread; `done` hears the KV blocks still in use, once stopped.
    Shutdown(Option<std::sync::mpsc::Sender<u64>>),
}

/// Output-side state of one live request.
struct RequestState {
    events: UnboundedSender<Event>,
    sampler: Sampler,
    ids: Vec<u32>,
    prompt_len: usize,
    detok: IncrementalDecoder,
    stops: StopMatcher,
    /// When the request reached the engine; `None` once it has been scheduled.
    queued_since: Option<Instant>,
    /// Prompt tokens whose keys and values came from the prefix cache when the request
    /// was first scheduled.
    cached_prompt_tokens: usize,
    /// Prompt logprobs being gathered; taken when the first token is sent.
    prompt_lp: Option<PromptLogprobs>,
    /// The pooling of an embedding request (`embed.rs`).
    embed: Option<EmbedState>,
    /// The request as first queued, until it has been retried once (`supervise.rs`).
    retry: Retry,
}

impl RequestState {
    /// Back to the state of a request not yet scheduled (before a retry: no token was
    /// produced, so only what its prompt's steps gathered is dropped).
    fn restart(&mut self) {
        self.queued_since = Some(Instant::now());
        self.cached_prompt_tokens = 0;
        if let Some(p) = &mut self.prompt_lp {
            p.next = 0;
            p.rows.iter_mut().for_each(|r| *r = None);
        }
        if let Some(e) = &mut self.embed {
            *e = EmbedState::new(e.pooling(), self.prompt_len);
        }
    }
}

struct EngineLoop {
    runner: Runner,
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    /// A KV block beyond the scheduler's pool: the write target of prompt-logprob replays.
    scratch_block: u32,
    sched: Scheduler,
    live: HashMap<RequestId, RequestState>,
    eos: Vec<u32>,
    inbox: Receiver<Command>,
    /// A command taken from the inbox during overlapped steps, handled first next turn.
    deferred: Option<Command>,
    /// Launch decode step N+1 before step N's tokens reach the host (see `overlap.rs`).
    overlap_steps: bool,
    stats: Arc<EngineStats>,
    admission: AdmissionPolicies,
    breaker: Arc<Breaker>,
    /// The requests of the step being run (failed together if it panics).
    in_step: Vec<RequestId>,
    /// Requests of failed steps waiting to be queued again, one at a time, and the one
    /// queued last until it has run a step (`supervise.rs`).
    held_retries: std::collections::VecDeque<NewRequest>,
    retrying: Option<RequestId>,
    exit_on_fatal: bool,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    fault_hook: Option<FaultHook>,
}

/// Loads the model, sizes the KV pool and starts the engine thread.
pub fn start(mut cfg: EngineConfig) -> Result<EngineHandle> {
    let mut model = load_model(&cfg.model)?;
    let max_model_len;
    (cfg.device, max_model_len) = placement::device_and_context(&cfg, &model);
    placement::rotate_for_context(&mut model.weights.config, max_model_len);
    let mc = model.config().clone();
    if cfg.block_size == 0 || cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
        return Err(EngineError::Config(
            "block_size, max_num_seqs and max_num_batched_tokens must be at least 1".into(),
        ));
    }
    let runner = Runner::place(&model.weights, &cfg.runner_config(max_model_len))?;
    let info = ModelInfo {
        name: crate::model::served_name(&cfg.model.to_string_lossy()),
        config: mc,
        max_model_len,
        num_kv_blocks: runner.num_blocks(),
        block_size: cfg.block_size,
        weight_bytes: model.weight_bytes,
        pooling: model.pooling,
        device: runner.describe(),
    };
    let template = match (&cfg.chat_template_file, &model.chat_template) {
        (Some(path), _) => {
            let t = template_from_file(path, &model.tokenizer)?;
            Some(Arc::new(sandboxed_template(&t, &cfg, &info.name)?))
        }
        (None, Some(t)) => Some(Arc::new(sandboxed_template(t, &cfg, &info.name)?)),
        (None, None) => None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = EngineLoop::new(&cfg, &info, runner, model.tokenizer.clone(), rx);
    let stats = engine.stats.clone();
    let breaker = engine.breaker.clone();
    std::thread::Builder::new()
        .name("kr-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
    Ok(EngineHandle {
        inbox: tx,
        tokenizer: model.tokenizer,
        template,
        info: Arc::new(info),
        stats,
        next_id: Arc::new(AtomicU64::new(1)),
        grammars: Arc::default(),
        breaker,
    })
}

impl EngineLoop {
    /// The loop of a placed model: its scheduler over the runner's KV blocks (the cache
    /// holds one more, the replays' scratch block), policies and statistics.
    fn new(
        cfg: &EngineConfig,
        info: &ModelInfo,
        runner: Runner,
        tokenizer: Arc<Tokenizer>,
        inbox: Receiver<Command>,
    ) -> Self {
        let num_blocks = info.num_kv_blocks;
        let mut sched = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            block_size: cfg.block_size,
            num_blocks,
            max_model_len: info.max_model_len,
            enable_prefix_caching: cfg.enable_prefix_caching,
            sliding_window: placement::window_on_every_layer(&info.config),
            batch_invariant: cfg.batch_invariant,
        });
        let stats = Arc::new(EngineStats::default());
        stats.kv_blocks_total.store(num_blocks as u64, Relaxed);
        let admission = AdmissionPolicies::new(cfg.policy.clone(), &mut sched, &stats.sched);
        Self {
            runner,
            eos: tokenizer.eos_ids.clone(),
            tokenizer,
            vocab_size: info.config.vocab_size,
            scratch_block: num_blocks as u32,
            sched,
            live: HashMap::new(),
            inbox,
            deferred: None,
            overlap_steps: cfg.overlap_steps,
            stats,
            admission,
            breaker: Arc::new(Breaker::new(cfg.breaker)),
            in_step: Vec::new(),
            held_retries: Default::default(),
            retrying: None,
            exit_on_fatal: cfg.exit_on_fatal_device_error,
            fault_hook: cfg.fault_hook.clone(),
        }
    }
}

/// The model's chat template under `limits`, checked on a one-message conversation: a
/// template that fails is reported now (chat requests then get the same error).
fn sandboxed_template(t: &ChatTemplate, cfg: &EngineConfig, model: &str) -> Result<ChatTemplate> {
    let t = t.relimited(cfg.template_limits.clone(), cfg.template_sandbox.clone())?;
    if let Err(e) = t.check() {
        tracing::warn!("model {model}: its chat template fails on a one-message conversation: {e}");
    }
    Ok(t)
}

/// `--chat-template FILE`: a Jinja template with the model's BOS and EOS strings.
fn template_from_file(path: &std::path::Path, tok: &Tokenizer) -> Result<ChatTemplate> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        EngineError::Config(format!("cannot read chat template {}: {e}", path.display()))
    })?;
    let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
    ChatTemplate::new(
        &source,
        &text(tok.bos_id),
        &text(tok.eos_ids.first().copied()),
    )
    .map_err(|e| EngineError::Config(format!("chat template {}: {e}", path.display())))
}

/// The text a new token adds, after stop-string matching, and the request's final state.
/// A stop token contributes no text; a stop string ends the text right before it; any other
/// end releases everything still held back.
fn output_text(
    live: &mut RequestState,
    tok: &Tokenizer,
    finish: Option<FinishReason>,
) -> kr_model::Result<(String, Option<FinishReason>)> {
    let mut text = String::new();
    if finish != Some(FinishReason::Stop) {
        let scan = live.stops.push(&live.detok.step(tok, &live.ids)?);
        text = scan.emit;
        if scan.stopped {
            return Ok((text, Some(FinishReason::Stop)));
        }
    }
    if finish.is_some() {
        let scan = live.stops.push(&live.detok.flush(tok, &live.ids)?);
        text.push_str(&scan.emit);
        if scan.stopped {
            return Ok((text, Some(FinishReason::Stop)));
        }
        text.push_str(&live.stops.finish());
    }
    Ok((text, finish))
}

impl EngineLoop {
    fn run(mut self) {
        loop {
            let mut fast = false;
            self.release_retry();
            if self.sched.is_idle() {
                let Some(cmd) = self.deferred.take().or_else(|| self.inbox.recv().ok()) else {
                    return;
                };
                if !self.handle(cmd) {
                    return;
                }
                fast = !self.sched.is_idle() && self.admission.fast_path();
                if fast {
                    self.stats.fast_path.fetch_add(1, Relaxed);
                }
            }
            loop {
                match self
                    .deferred
                    .take()
                    .map_or_else(|| self.inbox.try_recv(), Ok)
                {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                    Err(TryRecvError::Disconnected) if self.sched.is_idle() => return,
                    Err(_) => break,
                }
            }
            self.admission.observe_turn(&self.sched, &self.stats.sched);
            // The fast path skips the window: the request starts in this very turn.
            let admit = match fast {
                true => true,
                false => match self.admit() {
                    Some(admit) => admit,
                    None => return,
                },
            };
            self.supervised_step(admit);
            self.publish_gauges();
        }
    }

    /// The admission window (S2/S3): whether waiting requests may start in this turn's step.
    /// While it holds and nothing runs, waits on the inbox (gathering arrivals, handling
    /// aborts) until the window ends. `None` on shutdown.
    fn admit(&mut self) -> Option<bool> {
        let mut held = false;
        loop {
            let until = match self.admission.gate(&self.sched) {
                Gate::Admit => return Some(true),
                Gate::HoldUntil(until) => until,
            };
            if !held {
                held = true;
                self.stats.sched.window_holds.fetch_add(1, Relaxed);
            }
            if self.sched.num_running() > 0 {
                return Some(false);
            }
            match self
                .inbox
                .recv_timeout(until.saturating_sub(self.admission.now()))
            {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Some(true),
            }
        }
    }

    /// Applies one command; returns false on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Add {
                id,
                prompt,
                params,
                prompt_logprobs,
                priority,
                grammar,
                embed,
                events,
            } => self.add(
                id,
                prompt,
                params,
                (prompt_logprobs, priority, embed),
                grammar,
                events,
            ),
            Command::Abort(id) => self.abort(id),
            Command::AbortAll(reason) => self.abort_all(&reason),
            Command::SetPolicy(cfg) => self.admission.set(cfg, &mut self.sched, &self.stats.sched),
            Command::Shutdown(done) => {
                self.publish_gauges();
                if let Some(done) = done {
                    let _ = done.send(self.sched.pool().num_used() as u64);
                }
                return false;
            }
        }
        true
    }

    fn add(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        (prompt_logprobs, priority, embed): (Option<u32>, Priority, Option<Pooling>),
        grammar: Option<crate::grammar::CompiledGrammar>,
        events: UnboundedSender<Event>,
    ) {
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend(&self.eos);
        }
        let req = NewRequest {
            id,
            prompt: prompt.clone(),
            max_tokens: params.max_tokens as usize,
            stop_token_ids: stop_ids,
            priority,
            arrival: self.admission.now(),
        };
        if let Err(e) = self.sched.add(req.clone()) {
            let _ = events.send(Event::Error(e.to_string()));
            return;
        }
        self.stats.sched.requests_by_priority[priority as usize].fetch_add(1, Relaxed);
        self.stats
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Relaxed);
        let live = RequestState {
            events,
            sampler: Sampler::new(params.clone(), &prompt).with_grammar(
                // Ahead of the forward pass only where the host is idle during it (a GPU).
                grammar.map(|g| Box::new(g.start(self.runner.samples_on_device()))),
            ),
            detok: IncrementalDecoder::new(prompt.len()),
            stops: StopMatcher::new(&params.stop),
            queued_since: Some(Instant::now()),
            cached_prompt_tokens: 0,
            prompt_lp: prompt_logprobs.map(|n| PromptLogprobs {
                top_n: n as usize,
                next: 0,
                rows: vec![None; prompt.len()],
            }),
            embed: embed.map(|p| EmbedState::new(p, prompt.len())),
            retry: Some(req),
            prompt_len: prompt.len(),
            ids: prompt,
        };
        self.live.insert(id, live);
    }

    /// Ends every live request with an error event (shutdown past its deadline).
    fn abort_all(&mut self, reason: &str) {
        for (id, live) in std::mem::take(&mut self.live) {
            let _ = live.events.send(Event::Error(reason.to_string()));
            if self.sched.finish(id) {
                self.stats.requests_aborted.fetch_add(1, Relaxed);
            }
        }
        self.publish_gauges();
    }

    fn abort(&mut self, id: RequestId) {
        if self.sched.finish(id) {
            self.stats.requests_aborted.fetch_add(1, Relaxed);
        }
        self.live.remove(&id);
    }

    /// One iteration: schedule (admitting waiting requests only if `admit`), run the model,
    /// sample, emit.
    fn step(&mut self, admit: bool) {
        let plan = self.sched.schedule_at(self.admission.now(), admit);
        self.stats
            .preemptions
            .fetch_add(plan.preempted.len() as u64, Relaxed);
        if plan.is_empty() {
            return;
        }
        let t0 = Instant::now();
        self.in_step = plan.seqs.iter().map(|s| s.id).collect();
        for s in &plan.seqs {
            let Some(live) = self.live.get_mut(&s.id) else {
                continue;
            };
            if let Some(since) = live.queued_since.take() {
                self.stats.queue_seconds.observe(t0 - since);
                // A request's first chunk starts where its cached prefix ends.
                live.cached_prompt_tokens = s.start;
            }
        }
        self.replay_prompt_gaps(&plan);
        self.replay_embed_gaps(&plan);
        let (ids, meta, rows) = self.batch(&plan);
        if let Some(e) = self.injected_fault(&plan) {
            return self.fail_step(&plan, &e);
        }
        let hidden = self.hidden_rows(&plan, &meta);
        if !hidden.is_empty() || has_embed_rows(&rows) {
            let rows_at: Vec<usize> = hidden.iter().map(|h| h.row).collect();
            let outcome = self.runner.forward_with_hidden(&ids, &meta, &rows_at).map(
                |(mut logits, states)| {
                    self.pool_rows(&plan, &hidden, &states);
                    self.use_rows(&plan, &rows, &mut logits)
                },
            );
            return match outcome {
                Ok((sampled, logprobs)) => self.complete_step(&plan, &sampled, logprobs, t0),
                Err(e) => self.fail_step(&plan, &e),
            };
        }
        let outcome = match self.device_rows(&plan, &rows, false) {
            // Masked rows need each token on the host before the next step's mask.
            Some(seqs) if self.overlap_steps && !self.any_constrained(&seqs) => {
                let draws = device_rows::draw(&mut self.live, &seqs, self.vocab_size);
                return self.run_overlapped(plan, rows, &ids, &meta, &draws, t0);
            }
            // The rows are drawn (and masks waited for) while the GPU runs the forward pass.
            Some(seqs) => {
                let (live, vocab) = (&mut self.live, self.vocab_size);
                self.runner
                    .forward_sampled_with(&ids, &meta, || device_rows::draw(live, &seqs, vocab))
                    .map(|tokens| self.record_device_tokens(&plan, &rows, tokens))
            }
            None => self
                .runner
                .forward(&ids, &meta)
                .map(|mut logits| self.use_rows(&plan, &rows, &mut logits)),
        };
        match outcome {
            Ok((sampled, logprobs)) => self.complete_step(&plan, &sampled, logprobs, t0),
            Err(e) => self.fail_step(&plan, &e),
        }
    }

    /// The packed batch of `plan` (see [`build_batch`]).
    fn batch(&self, plan: &StepPlan) -> (Vec<u32>, kr_model::AttnMeta, Vec<RowUse>) {
        let live = &self.live;
        build_batch(plan, self.sched.config().block_size, |s| Wanted {
            prompt_rows: live.get(&s.id).map_or(0..0, |l| l.prompt_rows(s)),
            embed: live.get(&s.id).is_some_and(|l| l.embed.is_some()),
        })
    }

    /// Applies a step's tokens (plan order) to the scheduler and emits them; the step's
    /// time is measured from `t0`.
    fn complete_step(
        &mut self,
        plan: &StepPlan,
        sampled: &[u32],
        logprobs: Vec<Option<TokenLogprobs>>,
        t0: Instant,
    ) {
        let updates = self.sched.update(plan, sampled);
        self.breaker.step_succeeded();
        self.publish_breaker();
        self.step_ran(plan);
        let took = t0.elapsed();
        self.stats.step_seconds.observe(took);
        self.stats.sched.step_times.record(took);
        self.stats.sched.batch_size.observe(plan.seqs.len());
        self.admission
            .after_step(took, &mut self.sched, &self.stats.sched);
        self.stats.steps.fetch_add(1, Relaxed);
        self.stats
            .generation_tokens
            .fetch_add(updates.len() as u64, Relaxed);
        for (u, lp) in updates.into_iter().zip(logprobs) {
            self.emit(u, lp);
        }
    }

    /// A step the device could not run: its requests are retried or end with the error
    /// (`supervise.rs`), the engine goes on.
    fn fail_step(&mut self, plan: &kr_core::StepPlan, error: &EngineError) {
        tracing::error!("step failed: {error}");
        self.check_fatal(error);
        let ids: Vec<RequestId> = plan.seqs.iter().map(|s| s.id).collect();
        self.fail_requests(&ids, &format!("the model step failed: {error}"));
    }

    /// Samples the sampled rows (in plan order) and records the prompt-logprob rows.
    fn use_rows(
        &mut self,
        plan: &StepPlan,
        rows: &[RowUse],
        logits: &mut [f32],
    ) -> (Vec<u32>, Vec<Option<TokenLogprobs>>) {
        let vocab = self.vocab_size;
        let mut sampled = Vec::with_capacity(plan.num_sampled());
        let mut logprobs = Vec::with_capacity(plan.num_sampled());
        let mut logit_rows = logits.chunks_exact_mut(vocab);
        for u in rows {
            if let RowUse::Embed(_) = *u {
                sampled.push(0); // a placeholder: `emit` sends the pooled vector instead
                logprobs.push(None);
                continue;
            }
            let Some(row) = logit_rows.next() else { break };
            match *u {
                RowUse::Embed(_) => {}
                RowUse::Sample(i) => {
                    let (tok, lp) = self
                        .live
                        .get_mut(&plan.seqs[i].id)
                        .map_or((0, None), |l| l.sampler.sample(row));
                    sampled.push(tok);
                    logprobs.push(lp);
                }
                RowUse::Prompt { seq, pos } => {
                    if let Some(l) = self.live.get_mut(&plan.seqs[seq].id) {
                        l.record_prompt_row(pos, row);
                    }
                }
            }
        }
        (sampled, logprobs)
    }

    /// Detokenises, matches stop strings and sends the token's event (and the final one).
    fn emit(&mut self, u: SeqUpdate, logprobs: Option<TokenLogprobs>) {
        let Some(live) = self.live.get_mut(&u.id) else {
            return;
        };
        if live.embed.is_some() {
            return self.finish_embedding(u.id);
        }
        live.ids.push(u.token);
        let (text, finish) = match output_text(live, &self.tokenizer, u.finish) {
            Ok(out) => out,
            Err(e) => {
                let _ = live.events.send(Event::Error(e.to_string()));
                self.abort(u.id);
                return;
            }
        };
        let sent = live
            .events
            .send(Event::Token {
                id: u.token,
                text,
                logprobs,
                prompt_logprobs: live.prompt_lp.take().map(|p| p.rows),
                last: finish.is_some(),
            })
            .is_ok();
        if let Some(reason) = finish {
            let usage = Usage {
                prompt_tokens: live.prompt_len,
                completion_tokens: live.ids.len() - live.prompt_len,
                cached_prompt_tokens: live.cached_prompt_tokens,
            };
            let _ = live.events.send(Event::Finished { reason, usage });
            self.sched.finish(u.id);
            self.live.remove(&u.id);
            self.stats.requests_finished.fetch_add(1, Relaxed);
        } else if !sent {
            self.abort(u.id);
        }
    }

    fn publish_gauges(&self) {
        let s = &self.stats;
        s.running.store(self.sched.num_running() as u64, Relaxed);
        s.waiting.store(self.sched.num_waiting() as u64, Relaxed);
        s.kv_blocks_used
            .store(self.sched.pool().num_used() as u64, Relaxed);
        let c = self.sched.counters();
        s.prefix_query_tokens
            .store(c.prefix_queries_tokens, Relaxed);
        s.prefix_hit_tokens.store(c.prefix_hit_tokens, Relaxed);
    }
}

#[path = "overlap.rs"]
mod overlap;

#[path = "device_rows.rs"]
mod device_rows;

#[path = "embed.rs"]
pub(crate) mod embed;

#[path = "supervise.rs"]
pub(crate) mod supervise;

#[path = "prompt_logprobs.rs"]
mod prompt_logprobs;

#[path = "placement.rs"]
mod placement;
