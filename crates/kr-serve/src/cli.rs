//! Command-line definitions (clap).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "kr-serve", version, about = "LLM inference server and engine", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from one prompt and stream it to stdout.
    #[command(
        after_help = "Examples:\n  kr-serve run --raw --prompt \"Once upon a time\"   (the built-in stories260K model)\n  kr-serve run --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt \"What is the capital of France?\" --temperature 0"
    )]
    Run(RunArgs),
    /// Serve the model over OpenAI- and Ollama-compatible HTTP APIs.
    #[command(
        after_help = "Example:\n  kr-serve serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8080\n  curl localhost:8080/v1/chat/completions -d '{\"model\":\"SmolLM2-135M-Instruct.Q4_1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'"
    )]
    Serve(ServeArgs),
    /// Print the effective serve config and where each value comes from (default, preset,
    /// file, env, flag); takes the same flags as `serve`.
    #[command(
        after_help = "Examples:\n  kr-serve config --config kr-serve.yaml --max-queue 8\n  KR_SERVE_MAX_QUEUE=8 kr-serve config --json"
    )]
    Config(ConfigArgs),
    /// Benchmarks that write JSON reports.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Download a model from the Hugging Face Hub into its cache ($HF_HOME/hub), from
    /// $HF_ENDPOINT with $HF_TOKEN: resumable (run it again after an interruption) and
    /// checked against the Hub's sha256. Then `serve --model ORG/REPO[:FILE]` serves it.
    #[command(
        after_help = "Examples:\n  kr-serve pull bartowski/SmolLM2-135M-Instruct-GGUF:SmolLM2-135M-Instruct-Q4_K_M.gguf\n  kr-serve pull Qwen/Qwen3-0.6B          (a Hugging Face model directory)"
    )]
    Pull(PullArgs),
    /// Look at model files.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Architecture, parameters, tensor types, context length, tokenizer, chat template and
    /// memory needed: a quick check before loading. Exit code 1 when it would not load.
    #[command(
        after_help = "Examples:\n  kr-serve models inspect SmolLM2-135M-Instruct.Q4_1.gguf\n  kr-serve models inspect builtin:stories260K --json"
    )]
    Inspect(InspectArgs),
    /// The models pulled into the Hugging Face cache, with their size on disk.
    List,
    /// Delete a pulled model (ORG/REPO) from the Hugging Face cache.
    Delete(DeleteArgs),
}

#[derive(Args)]
pub struct PullArgs {
    /// ORG/REPO (its one GGUF file, its Q4_K_M, or its safetensors) or ORG/REPO:FILE.
    pub model: String,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// ORG/REPO.
    pub model: String,
}

#[derive(Args)]
pub struct InspectArgs {
    /// A GGUF file, a llama2.c .bin checkpoint, or builtin:stories260K.
    pub path: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Offline engine throughput: prefill and decode tokens/s per batch size, TTFT.
    Engine(BenchEngineArgs),
    /// HTTP server vs in-process engine on the same prompts: the server's overhead in %.
    #[command(
        after_help = "Example:\n  kr-serve bench overhead --model SmolLM2-135M-Instruct.Q4_1.gguf --concurrency 1,8 --repeat 3 --out overhead.json"
    )]
    Overhead(BenchOverheadArgs),
    /// Load-test any OpenAI-compatible server: TTFT / TPOT / ITL / E2E, throughput, goodput.
    #[command(
        after_help = "Examples:\n  kr-serve bench serve --url http://127.0.0.1:8080 --model SmolLM2-135M-Instruct.Q4_1 --concurrency 1,4,8 --out serve.json\n  kr-serve bench serve --url http://127.0.0.1:8080 --model m --dataset random --random-input-len 256 --random-output-len 64 --request-rate 2 --num-prompts 100\n  kr-serve bench serve --url http://127.0.0.1:8080 --model m --dataset sharegpt --dataset-path sharegpt.json --slo-ttft-ms 500 --slo-tpot-ms 50"
    )]
    Serve(BenchServeArgs),
    /// Compare two reports; exit code 1 when NEW regressed beyond the tolerance.
    #[command(after_help = "Example:\n  kr-serve bench compare old.json new.json --tolerance 5%")]
    Compare(BenchCompareArgs),
    /// Plot several `bench serve` reports on shared axes (e.g. two servers, same workload).
    #[command(
        after_help = "Example:\n  kr-serve bench plot kr-serve.json llama-server.json --out-prefix docs/img/serve"
    )]
    Plot(BenchPlotArgs),
    /// Perplexity of a model on a text, computed as llama.cpp's llama-perplexity does.
    #[command(
        after_help = "Example:\n  kr-serve bench perplexity --model SmolLM2-135M-Instruct.Q4_1.gguf --text docs/texts/sherlock.txt --ctx 256 --out ppl.json"
    )]
    Perplexity(BenchPerplexityArgs),
}

/// The workloads `bench serve` can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetKind {
    /// Prompts of random common words (`--random-input-len` words, about as many tokens).
    Random,
    /// One prompt a line (`--dataset-path`; default: the built-in 50 questions).
    Questions,
    /// A ShareGPT-format JSON file (`--dataset-path`).
    Sharegpt,
}

#[derive(Args)]
pub struct BenchServeArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// The `model` field sent with every request.
    #[arg(long)]
    pub model: String,
    #[arg(long, value_enum, default_value = "chat")]
    pub endpoint: crate::bench::client::Endpoint,
    #[arg(long, value_enum, default_value = "questions")]
    pub dataset: DatasetKind,
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// Requests per concurrency level (0 = the whole dataset; random: 100).
    #[arg(long, default_value_t = 0)]
    pub num_prompts: usize,
    /// Tokens to generate per request (questions default 64; sharegpt: the reply's length;
    /// random: --random-output-len).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    #[arg(long, default_value_t = 128)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Random lengths are drawn from len·(1−r) ..= len·(1+r).
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Concurrency levels to sweep (at most this many requests in flight).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Poisson arrival rate in requests/s (seeded); default: all at once.
    #[arg(long)]
    pub request_rate: Option<f64>,
    /// Send `ignore_eos: true` so every request generates exactly max_tokens.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ignore_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Warm-up requests before each level (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Seeds the dataset, the arrivals and the requests (request i gets seed+i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Goodput SLO: time to first token, ms.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// Goodput SLO: time per output token, ms.
    #[arg(long)]
    pub slo_tpot_ms: Option<f64>,
    /// Goodput SLO: end-to-end latency, ms.
    #[arg(long)]
    pub slo_e2e_ms: Option<f64>,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds before a request counts as failed.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Name of this run in tables and plots (default: the model).
    #[arg(long)]
    pub label: Option<String>,
    /// JSON report path; a Markdown report (.md) and PNG plots (-*.png) go beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub no_plots: bool,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args)]
pub struct BenchOverheadArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Questions, one a line (default: the built-in 50 questions).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// Questions per pass (0 = every line once).
    #[arg(long, default_value_t = 0)]
    pub num_prompts: usize,
    /// Tokens generated per question (ignore_eos, greedy).
    #[arg(long, default_value_t = 50)]
    pub max_tokens: u32,
    /// Concurrency levels (requests in flight on each side).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Paired repeats per level (each runs both sides, alternating which goes first).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Questions per interleaved chunk: each chunk runs through both sides back to back,
    /// alternating which goes first, so load from neighbours hits both alike. Raised to
    /// the concurrency (so batches stay full); 0 = whole passes.
    #[arg(long, default_value_t = 1)]
    pub interleave: usize,
    /// Worker threads of the async runtime shared by the server, the client and the
    /// engine-side tasks.
    #[arg(long, default_value_t = 2)]
    pub runtime_threads: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the JSON report here (default: print it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchCompareArgs {
    /// The baseline report.
    pub old: PathBuf,
    /// The report to check.
    pub new: PathBuf,
    /// Allowed change in the bad direction, as a ratio: 5% or 0.05.
    #[arg(long, default_value = "5%")]
    pub tolerance: String,
}

#[derive(Args)]
pub struct BenchPlotArgs {
    /// `bench serve` reports (each report's `label` names its lines).
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Plots are written as PREFIX-latency-cdf.png, PREFIX-throughput.png, PREFIX-p99.png.
    #[arg(long)]
    pub out_prefix: PathBuf,
}

/// Engine flags shared by every command that loads a model. Each flag named like a config
/// key sets that key (highest precedence; see `kr-serve config`), so its value is checked
/// by the key table, with the key's range in the error.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Model: a GGUF file, a Hugging Face directory, a llama2.c .bin checkpoint (tokenizer
    /// beside it), or `builtin:stories260K` (the default: a 1 MiB story model built in).
    /// `serve` takes it several times (or comma-separated) to serve several models.
    #[arg(long, action = clap::ArgAction::Append)]
    pub model: Vec<String>,
    /// Memory for the KV cache on the CPU in MiB [default: 1024].
    #[arg(long)]
    pub kv_cache_mib: Option<String>,
    /// Context limit (default: the model's).
    #[arg(long)]
    pub max_model_len: Option<String>,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<String>,
    /// Where to run: auto (CUDA when a GPU and its driver are present, else CPU), cpu,
    /// cuda or cuda:N [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// Compute type on the GPU: auto (bf16), f32 or bf16 (the CPU computes in f32).
    #[arg(long)]
    pub dtype: Option<String>,
    /// How the KV cache stores keys and values: auto (the compute type) or fp8 (E4M3 with
    /// per-token scales, half the bytes; CUDA with bf16 compute) [default: auto].
    #[arg(long)]
    pub kv_cache_dtype: Option<String>,
    /// Share of GPU memory for weights, KV cache and workspace (0.05-1) [default: 0.9].
    #[arg(long)]
    pub gpu_memory_fraction: Option<String>,
    /// Run every decode step eagerly instead of replaying CUDA graphs.
    #[arg(long)]
    pub no_cuda_graphs: bool,
    /// Make a request's tokens independent of what runs beside it (decode-only steps
    /// alternate with one prefill chunk; on CUDA, batch-invariant projections and attention).
    #[arg(long)]
    pub batch_invariant: bool,
    /// Wait for each decode step's tokens before launching the next, instead of launching
    /// step N+1 while the GPU runs step N.
    #[arg(long)]
    pub no_overlap: bool,
    /// Random weights of a published shape instead of --model (speed work; the text is noise).
    #[arg(long, requires = "arch", conflicts_with = "model")]
    pub random_weights: bool,
    /// With --random-weights: llama-3.1-8b, llama-3.2-1b, qwen2.5-7b or qwen2.5-0.5b.
    #[arg(long)]
    pub arch: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt: sent as one user message through the chat template unless --raw.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Tokenise the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Args)]
pub struct BenchEngineArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Write the JSON report here (default: print it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompt length in tokens for the decode runs.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated per request in the decode runs (ignore_eos).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: u32,
    /// Batch sizes to measure decode at.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub batch_sizes: Vec<usize>,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prefill_tokens: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also measure decode with every request held to this JSON schema (structured outputs),
    /// right after the unconstrained run of each batch size, through the engine on any
    /// device. Those requests stop at end-of-sequence instead of ignoring it, so use a schema
    /// that outlasts --gen-tokens (e.g. an array with a large minItems).
    #[arg(long)]
    pub json_schema: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchPerplexityArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The text to score (UTF-8; at least two contexts' worth of tokens).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c); the second half of each is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (llama-perplexity's --chunks).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Also compare every scored distribution with the log-probs llama-perplexity saved with
    /// `--kl-divergence-base FILE` (same text and -c): KL divergence, top-token agreement.
    #[arg(long)]
    pub kl_divergence_base: Option<PathBuf>,
    /// Write the JSON report here (default: print it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `serve` flags; every config key unset here falls back to env `KR_SERVE_<KEY>`, then the
/// `--config` file, then the preset, then the default (see `kr-serve config`).
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// YAML config file (keys as in `kr-serve config`); SIGHUP re-reads it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// latency_sensitive, balanced or throughput_optimized.
    #[arg(long)]
    pub preset: Option<String>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one) [default: 8080].
    #[arg(long)]
    pub port: Option<String>,
    /// Requests allowed to wait beyond the running batch; more get 429 [default: 256].
    #[arg(long)]
    pub max_queue: Option<String>,
    /// Requests run at once (the engine's batch limit) [default: 64].
    #[arg(long)]
    pub max_running: Option<String>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    /// Largest `max_tokens` a request may ask for (and the default) [default: 4096].
    #[arg(long)]
    pub max_tokens_cap: Option<String>,
    /// Require `Authorization: Bearer KEY` (repeatable; also env KR_SERVE_API_KEY).
    #[arg(long)]
    pub api_key: Vec<String>,
    /// File of accepted API keys, one per line (`#` starts a comment).
    #[arg(long)]
    pub api_key_file: Option<String>,
    /// A Jinja chat template file to use instead of the model's own.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Key for /admin/* (also env KR_SERVE_ADMIN_KEY). Without it /admin is open when no
    /// API key is set and disabled (403) when API keys are set.
    #[arg(long)]
    pub admin_key: Option<String>,
    /// Longest a request may run, in seconds (0 = no limit) [default: 0].
    #[arg(long)]
    pub request_timeout: Option<String>,
    /// Send streamed tokens in runs of N (1 = every token) [default: 1].
    #[arg(long)]
    pub stream_interval: Option<String>,
    /// Reject unknown request fields with 400 instead of ignoring them.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub strict: Option<String>,
    /// Also serve every GGUF file and Hugging Face model directory in this folder (each
    /// loaded on first use).
    #[arg(long)]
    pub models_dir: Option<String>,
    /// Memory for the loaded models in MiB; the least recently used idle one is unloaded
    /// when a load needs room [default: 0 = 80% of the machine's memory].
    #[arg(long)]
    pub memory_budget_mib: Option<String>,
    /// How long an idle model stays loaded: 5m, 1h, 30s, 0 or -1 (always) [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    pub keep_alive: Option<String>,
    /// Models loaded before the server listens: first, all or none [default: first].
    #[arg(long)]
    pub preload: Option<String>,
    /// Also export the queue and KV-usage gauges under vLLM's names (`vllm:…`), for the
    /// Gateway API Inference Extension's endpoint picker.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub vllm_metrics: Option<String>,
}
