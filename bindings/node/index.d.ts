// Types of the kr-serve package: kr-serve's LLM engine for Node.js.

/** Options of createEngine(). */
export interface EngineOptions {
  /** Models known by name before any is loaded. */
  models?: ModelEntry[]
  /** Host memory the loaded models may hold together, in MiB (default: 80% of RAM). */
  memoryBudgetMib?: number
  /** KV cache per model, in MiB (default 1024). */
  kvCacheMib?: number
  /** Sequences one model runs at once (default 64). */
  maxNumSeqs?: number
  /** `auto`, `cpu` (default), `cuda` or `cuda:N`. */
  device?: string
  /** How long an idle model stays loaded when the budget needs room (`5m`, `30s`); `-1` (default): until unloaded or evicted. */
  keepAlive?: string
}

/** A model configured by name. */
export interface ModelEntry {
  name: string
  /** A GGUF file, a Hugging Face model directory, a llama2.c checkpoint, or `builtin:…`. */
  model: string
  aliases?: string[]
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | (string & {})
  content: string
}

/** Options of createGenerator() and generate(): exactly one of `prompt` and `messages`. */
export interface GenerateOptions {
  /** A loaded or configured model; may be left out when the engine has one model. */
  model?: string
  /** Raw text, tokenised as is. */
  prompt?: string
  /** A conversation, rendered through the model's chat template. */
  messages?: ChatMessage[]
  /** Most tokens to generate (default: as many as the context window leaves). */
  maxTokens?: number
  /** 0 is greedy (default 1). */
  temperature?: number
  topP?: number
  topK?: number
  /** Makes sampling reproducible. */
  seed?: number
  /** Strings that end the generation (not included in the text). */
  stop?: string[]
  /** Attach each token's log-probability to its chunk. */
  logprobs?: boolean
  /** Aborting it cancels the generation; the loop then throws the signal's reason. */
  signal?: AbortSignal
}

export interface Usage {
  promptTokens: number
  completionTokens: number
  cachedPromptTokens: number
}

/** One generated token. */
export interface Chunk {
  /** The text it completes (empty while a character or a possible stop string is held back). */
  text: string
  tokenId: number
  logprob?: number
  /** On the last chunk: `stop` (end of sequence or a stop string) or `length`. */
  finishReason?: 'stop' | 'length' | 'abort'
  /** On the last chunk. */
  usage?: Usage
}

export interface GenerateResult {
  text: string
  tokenIds: number[]
  finishReason?: Chunk['finishReason']
  usage?: Usage
}

export interface ModelDescription {
  name: string
  path: string
  loaded: boolean
  /** Memory it holds (measured once loaded; the estimate otherwise). */
  bytes: number
  /** Generations in flight on it. */
  active: number
}

/** Scheduler statistics, as kr-serve's GET /v1/scheduler/stats reports them. */
export interface SchedulerStats {
  loaded?: false
  model?: string
  fast_path?: { enabled: boolean; executions: number; requests_started: number; rate: number; fast_path_rate: number }
  window?: { mode: 'off' | 'fixed' | 'adaptive'; current_ms: number; transitions: Record<string, number>; [key: string]: unknown }
  queue?: { waiting: number; running: number }
  engine?: { kv_blocks_used: number; kv_blocks_total: number; requests_finished: number; requests_aborted: number; [key: string]: number }
  [key: string]: unknown
}

export declare class Engine {
  /** Loads a model: a path, or a name configured in createEngine({ models }). */
  loadModel(options: { model: string; name?: string }): Promise<ModelDescription>
  /** Unloads a model now; false if it was not loaded. */
  unloadModel(options: { model: string } | string): Promise<boolean>
  listModels(): Promise<ModelDescription[]>
  /** Streams a generation; `break` or the signal cancels it. */
  createGenerator(options: GenerateOptions): AsyncGenerator<Chunk, void, undefined>
  /** Runs a generation to its end. */
  generate(options: GenerateOptions): Promise<GenerateResult>
  tokenize(options: { text: string; model?: string }): Promise<{ tokens: number[] }>
  getSchedulerStats(options?: { model?: string }): Promise<SchedulerStats>
  /** Stops every model; later calls fail. */
  dispose(): Promise<void>
}

export declare function createEngine(options?: EngineOptions): Promise<Engine>
